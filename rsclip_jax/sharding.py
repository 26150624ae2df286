"""Parameter shardings from logical axis names and rules (logical name -> mesh axis)."""

import math

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

# Fully sharded data parallel over `fsdp`, Megatron-style tensor parallel over `tensor`.
DEFAULT_RULES = (("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"), ("vocab", "tensor"))


def make_mesh(shape: tuple[int, ...], names: tuple[str, ...] = ("data", "fsdp", "tensor")) -> jax.sharding.Mesh:
    """A mesh of Auto axes: Explicit ones (jax.make_mesh's default) reject an fsdp-sharded contraction."""
    return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(names))


def mesh_shape(shape, num_devices: int) -> tuple[int, ...]:
    """`config.mesh.shape` with its one -1 replaced by the devices left over."""
    known = math.prod(size for size in shape if size != -1)
    if list(shape).count(-1) > 1 or num_devices % known:
        raise ValueError(f"config.mesh.shape {tuple(shape)} does not fit {num_devices} devices")
    return tuple(num_devices // known if size == -1 else size for size in shape)


def _partition_spec(logical_axes, shape, rules: dict, mesh) -> PartitionSpec:
    spec, used = [], set()
    for name, size in zip(logical_axes or (None,) * len(shape), shape):
        axis = rules.get(name)
        # A dimension the mesh axis does not divide, or an axis already used, stays replicated.
        if axis is None or axis not in mesh.shape or axis in used or size % mesh.shape[axis]:
            spec.append(None)
        else:
            spec.append(axis)
            used.add(axis)
    return PartitionSpec(*spec)


def param_shardings(state: nnx.State, mesh: jax.sharding.Mesh, rules=DEFAULT_RULES) -> dict:
    """NamedShardings on `mesh` for the variables of `state` (abstract or concrete), as a pure dict
    shaped like `nnx.to_pure_dict(state)`."""
    rules = dict(rules)
    shardings: dict = {}
    for path, variable in nnx.to_flat_state(state):
        spec = _partition_spec(variable.get_metadata().get("out_sharding"), variable.shape, rules, mesh)
        node = shardings
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = NamedSharding(mesh, spec)
    return shardings
