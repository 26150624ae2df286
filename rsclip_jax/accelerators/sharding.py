"""The device mesh, and the shardings of parameters and activations from logical axis names and rules
(logical name -> mesh axis, config.mesh)."""

import contextlib
import contextvars
import math

import jax
from absl import logging
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import NamedSharding, PartitionSpec

# Examples are split over both data-parallel axes: `data` (replicated parameters) and `fsdp` (sharded ones): the
# input batches, and the activations named "batch" (`activation_sharding` adds that rule itself).
BATCH_AXES = ("data", "fsdp")
# (mesh, rules) while a step is traced under `activation_sharding`.
_ACTIVATION_SHARDING = contextvars.ContextVar("activation_sharding", default=None)


def make_mesh(
    shape: tuple[int, ...],
    names: tuple[str, ...] = ("data", "fsdp", "tensor"),
    dcn_shape: tuple[int, ...] | None = None,
    devices=None,
) -> jax.sharding.Mesh:
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


@contextlib.contextmanager
def activation_sharding(mesh: jax.sharding.Mesh, rules):
    """Within it, `constrain` pins activations to mesh axes by their logical names (`rules`: name -> mesh
    axis or tuple of axes, config.mesh.activation_rules; "batch" is always BATCH_AXES); trace a step under it."""
    token = _ACTIVATION_SHARDING.set((mesh, {**dict(rules), "batch": BATCH_AXES}))
    try:
        yield
    finally:
        _ACTIVATION_SHARDING.reset(token)


def activation_mesh() -> jax.sharding.Mesh | None:
    """The mesh of the `activation_sharding` in force, or None."""
    current = _ACTIVATION_SHARDING.get()
    return current and current[0]


def constrain(x, *logical_axes):
    """`x` sharded by the logical names of its dimensions (None: not split) under the `activation_sharding`
    in force, so XLA keeps each device's examples (and heads) on it rather than following the weights'
    fsdp sharding; unchanged outside one (evaluation, tests of the model alone)."""
    current = _ACTIVATION_SHARDING.get()
    if current is None:
        return x
    mesh, rules = current
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, _partition_spec(logical_axes, x.shape, rules, mesh)))


def _partition_spec(logical_axes, shape, rules: dict, mesh, undivided: list | None = None) -> PartitionSpec:
    """The spec of one array; each dimension its rule's mesh axes do not divide is appended to `undivided` as
    (logical name, size, axes)."""
    spec, used = [], set()
    for name, size in zip(logical_axes or (None,) * len(shape), shape):
        rule = rules.get(name)
        axes = () if rule is None else (rule,) if isinstance(rule, str) else tuple(rule)
        # A dimension the mesh axes do not divide, or an axis already used, stays replicated.
        if not axes or not all(a in mesh.shape and a not in used for a in axes):
            spec.append(None)
        elif size % math.prod(mesh.shape[a] for a in axes):
            spec.append(None)
            if undivided is not None and math.prod(mesh.shape[a] for a in axes) > 1:
                undivided.append((name, size, axes))
        else:
            spec.append(axes[0] if len(axes) == 1 else axes)
            used.update(axes)
    return PartitionSpec(*spec)


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """Each message once a process: the setup is built again for evaluation, export and memory picking."""
    if message not in _WARNED:
        _WARNED.add(message)
        logging.warning("%s", message)


def param_shardings(state: nnx.State, mesh: jax.sharding.Mesh, rules) -> dict:
    """NamedShardings on `mesh` for the variables of `state` (abstract or concrete), as a pure dict
    shaped like `nnx.to_pure_dict(state)`."""
    rules = dict(rules)
    shardings: dict = {}
    for path, variable in nnx.to_flat_state(state):
        undivided = []
        spec = _partition_spec(variable.get_metadata().get("out_sharding"), variable.shape, rules, mesh, undivided)
        for name, size, axes in undivided:
            _warn_once(
                f"parameter {'.'.join(map(str, path))}: its {name!r} dimension ({size}) does not divide over mesh "
                f"axes {axes} of size {math.prod(mesh.shape[a] for a in axes)}, so it is replicated there (more "
                f"memory, no split); choose a config.mesh.shape that divides it, or a config.mesh.rules entry"
            )
        node = shardings
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = NamedSharding(mesh, spec)
    return shardings
