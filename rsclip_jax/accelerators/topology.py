"""Accelerators to compile for without having them, with `jax.experimental.topologies`: Cloud TPU slices
through libtpu, by their accelerator type names (`v5e-8`, `v4-32`, `v5p-128`, `v6e-256`), and NVIDIA GPU
nodes (`h100-8`) through the CUDA plugin."""

import dataclasses
import importlib.util
import math
import os
import re
from importlib.resources import files

from jax.experimental import topologies

# HBM per chip that the TPU compiler lets a program use, GiB: the "available HBM" its out-of-memory
# error names (libtpu 0.0.42.1; tests/test_aot.py checks v5e's against the compiler).
TPU_HBM_GIB = {"v4": 30.75, "v5e": 15.75, "v5p": 95.74, "v6e": 31.25}
# Generation -> (libtpu topology prefix, chip config, TensorCores per chip as the type name counts them,
# smallest and largest chip count offered).
TPU_GENERATIONS = {
    "v4": ("v4", "megacore", 2, 4, 2048),
    "v5p": ("v5", "megacore", 2, 4, 4096),
    "v5e": ("v5e", "default", 1, 1, 256),
    "v6e": ("v6e", "default", 1, 1, 256),
}
LIBTPU_HINT = "libtpu is not installed: `pip install -e '.[tpu]'` (or `pip install \"jax[tpu]\"`) brings it"


@dataclasses.dataclass(frozen=True)
class Target:
    """The devices of an accelerator topology, and what the compiler lets each use."""

    name: str
    devices: tuple
    hbm_bytes: int
    slices: int = 1


def tpu_chip_grid(generation: str, chips: int) -> tuple[int, ...]:
    """The physical chip grid of a slice: 2-D for v5e/v6e (1x1, 2x2, 2x4, 4x4 ... 16x16), 3-D for v4/v5p
    (2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4 ...): each size doubles the shortest side of the one before."""
    three_d = TPU_GENERATIONS[generation][2] == 2
    grid = [1, 1, 1] if three_d else [1, 1]
    while math.prod(grid) < chips:
        grid[grid.index(min(grid))] *= 2
        grid.sort()
    if three_d and chips == 4:
        return (2, 2, 1)
    return tuple(grid)


def parse_tpu_name(name: str) -> tuple[str, int]:
    """'v5e-8' -> ('v5e', 8 chips); 'v4-8' -> ('v4', 4 chips): v4 and v5p names count TensorCores."""
    match = re.fullmatch(r"(v4|v5e|v5p|v6e)-(\d+)", name)
    if not match:
        raise ValueError(
            f"unknown topology {name!r}: give a Cloud TPU accelerator type such as v5e-8, v4-32, v5p-128 or v6e-256"
        )
    generation, cores = match.group(1), int(match.group(2))
    _, _, cores_per_chip, smallest, largest = TPU_GENERATIONS[generation]
    chips = cores // cores_per_chip
    if cores % cores_per_chip or chips & (chips - 1) or not smallest <= chips <= largest:
        raise ValueError(
            f"{name!r} is not a {generation} slice: give {generation}-N with N a power of two from "
            f"{smallest * cores_per_chip} to {largest * cores_per_chip}"
        )
    return generation, chips


def tpu_target(name: str, slices: int = 1) -> Target:
    """`slices` TPU slices of type `name` (e.g. 'v5e-256'), as devices to compile for on any machine."""
    generation, chips = parse_tpu_name(name)
    prefix, chip_config, _, _, _ = TPU_GENERATIONS[generation]
    grid = tpu_chip_grid(generation, chips)
    # libtpu reads these to find its own TPU; compiling for a described one needs neither, but without
    # them it prints a page of warnings.
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    # Compiling opens no TPU, so several compiling processes may hold libtpu at once (its lockfile refuses).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    if importlib.util.find_spec("libtpu") is None:
        raise RuntimeError(LIBTPU_HINT)
    description = topologies.get_topology_desc(
        platform="tpu",
        topology_name=f"{prefix}:{'x'.join(map(str, grid))}",
        chip_config_name=chip_config,
        chips_per_host_bounds=tuple(min(side, 2) for side in grid) + (1,) * (3 - len(grid)),
        num_slices=slices,
    )
    return Target(name, tuple(description.devices), int(TPU_HBM_GIB[generation] * 2**30), slices)


# NVIDIA GPUs: XLA target configurations of one card each (assets/gpu_targets/NAME.txtpb), compiled for by
# the CUDA plugin (`pip install -e '.[gpu]'`) on a machine without a GPU.
GPU_TARGETS = ("a100", "h100", "h200")
GPUS_PER_HOST = 8
GPU_HINT = "the CUDA plugin is not installed: `pip install -e '.[gpu]'` (or `pip install \"jax[cuda13]\"`) brings it"
# What a JAX process may allocate of a GPU's memory by default (it preallocates this share).
DEFAULT_GPU_MEMORY_FRACTION = 0.75


def _gpu_target_text(kind: str) -> str:
    return (files("rsclip_jax") / "assets" / "gpu_targets" / f"{kind}.txtpb").read_text()


def gpu_target(name: str) -> Target:
    """`name` = KIND-N: N GPUs of KIND (a100, h100, h200), 1 to 8 on one host or a multiple of 8 over hosts."""
    match = re.fullmatch(r"(a100|h100|h200)-(\d+)", name)
    count = int(match.group(2)) if match else 0
    if not match or not (1 <= count <= GPUS_PER_HOST or count % GPUS_PER_HOST == 0):
        raise ValueError(
            f"unknown GPU topology {name!r}: give {', '.join(k + '-8' for k in GPU_TARGETS)} (N GPUs, "
            f"1 to 8 on one host or a multiple of 8)"
        )
    text = _gpu_target_text(match.group(1))
    per_host = min(count, GPUS_PER_HOST)
    if importlib.util.find_spec("jax_cuda13_plugin") is None:
        raise RuntimeError(GPU_HINT)
    description = topologies.get_topology_desc(
        platform="cuda", target_config=text, topology=f"1x{count // per_host}x{per_host}"
    )
    memory = int(re.search(r"device_memory_size:\s*(\d+)", text).group(1))
    fraction = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", DEFAULT_GPU_MEMORY_FRACTION))
    return Target(name, tuple(description.devices), int(memory * fraction))


def target(name: str, slices: int = 1) -> Target:
    if name.split("-")[0] not in GPU_TARGETS:
        return tpu_target(name, slices)
    if slices != 1:
        raise ValueError(
            f"GPU nodes are counted in the topology name ({name.split('-')[0]}-16 for two nodes), not with --slices"
        )
    return gpu_target(name)
