"""Parameter shardings from logical axis names and rules (logical name -> mesh axis)."""

import math

import jax
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import NamedSharding, PartitionSpec

# Examples are split over both data-parallel axes: `data` (replicated parameters) and `fsdp` (sharded ones).
BATCH_AXES = ("data", "fsdp")
# Fully sharded data parallel over `fsdp`, Megatron-style tensor parallel over `tensor`.
DEFAULT_RULES = (("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"), ("vocab", "tensor"))


def make_mesh(shape: tuple[int, ...], names: tuple[str, ...] = ("data", "fsdp", "tensor"),
              dcn_shape: tuple[int, ...] | None = None, devices=None) -> jax.sharding.Mesh:
    """A mesh of Auto axes (Explicit ones, jax.make_mesh's default, reject an fsdp-sharded contraction).

    `shape` lays the axes out within a slice (fast interconnect); `dcn_shape` multiplies them across
    slices (data-center network), so the mesh is their product. Slices are TPU slices, or processes
    where devices have no slice (GPU hosts, CPU tests).
    """
    axis_types = (jax.sharding.AxisType.Auto,) * len(names)
    devices = jax.devices() if devices is None else devices
    if dcn_shape is None or math.prod(dcn_shape) == 1:
        return jax.make_mesh(shape, names, axis_types=axis_types, devices=devices)
    slices = {getattr(device, "slice_index", None) for device in devices}
    grid = mesh_utils.create_hybrid_device_mesh(
        shape, dcn_shape, devices, process_is_granule=len(slices) != math.prod(dcn_shape)
    )
    return jax.sharding.Mesh(grid, names, axis_types=axis_types)


def mesh_shape(shape, num_devices: int) -> tuple[int, ...]:
    """`config.mesh.shape` with its one -1 replaced by the devices left over (per slice: divide
    num_devices by the slices first)."""
    known = math.prod(size for size in shape if size != -1)
    if list(shape).count(-1) > 1 or num_devices % known:
        raise ValueError(f"config.mesh.shape {tuple(shape)} does not fit {num_devices} devices")
    return tuple(num_devices // known if size == -1 else size for size in shape)


def mesh_from_config(mesh_config, devices=None) -> jax.sharding.Mesh:
    """The mesh of `config.mesh` (shape within a slice, dcn_shape across slices) over `devices` (all
    devices when None)."""
    devices = jax.devices() if devices is None else devices
    shape = (-1, 1, 1) if mesh_config.shape is None else tuple(mesh_config.shape)
    dcn_shape = tuple(mesh_config.get("dcn_shape", (1,) * len(shape)))
    slices = math.prod(dcn_shape)
    if len(devices) % slices:
        raise ValueError(f"config.mesh.dcn_shape {dcn_shape} does not divide {len(devices)} devices")
    return make_mesh(mesh_shape(shape, len(devices) // slices), dcn_shape=dcn_shape, devices=devices)


def constrain_batch(x):
    """Activations [batch, ...] split over BATCH_AXES when traced under a mesh (`jax.sharding.use_abstract_mesh`),
    so XLA keeps each device's examples on it rather than following the weights' fsdp sharding; unchanged
    elsewhere."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return x
    return jax.lax.with_sharding_constraint(x, PartitionSpec(BATCH_AXES))


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
