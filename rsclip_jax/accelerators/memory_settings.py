"""The training step compiled ahead of time for a set of devices, its memory per device, and the memory
settings a config leaves unset picked so that the step fits: the fastest candidate that compiles with
HEADROOM to spare."""

import dataclasses
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from rsclip_jax.accelerators.sharding import mesh_from_config
from rsclip_jax.data.example_spec import ExampleSpec
from rsclip_jax.data.records import embedding_depth
from rsclip_jax.synth2.generator_training import frozen_clip_setup, make_generator_step
from rsclip_jax.synth2.mixing import synthetic_rows
from rsclip_jax.training.step import batch_sharding, make_train_step
from rsclip_jax.training.train_setup import TrainSetup

HEADROOM = 0.10
# Remat policies from fastest to leanest: each keeps less for the backward pass and recomputes more.
REMAT_LADDER = ("off", "dots_no_batch", "nothing")
# Gradient-cache chunk counts tried when no remat policy alone fits.
GRAD_CACHE_LADDER = (2, 4, 8, 16, 32)
# Parameters, gradients and AdamW moments replicated on every chip may take this share of its memory;
# beyond it they are sharded over the slice (fsdp) instead.
REPLICATED_STATE_SHARE = 0.10
# Fused attention per platform; cuDNN's takes half-precision inputs only. Not Pallas flash attention on TPUs:
# at CLIP's 197 and 248 tokens the score matrices are small, and padding to its 128-token blocks costs more
# than they do (B/16, 256 examples a v5e chip, scanned, remat "nothing": 6.10 GiB of temporaries against
# 5.17 with XLA's attention; bench/README.md).
ATTENTION_BY_PLATFORM = {"gpu": "cudnn", "tpu": "xla"}


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """Bytes per device of a compiled step, as XLA's memory analysis counts them."""

    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    hbm_bytes: int

    @property
    def total_bytes(self) -> int:  # donated state: outputs reuse the arguments' buffers
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    @property
    def headroom(self) -> float:
        return 1.0 - self.total_bytes / self.hbm_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.hbm_bytes


@dataclasses.dataclass(frozen=True)
class CompiledStep:
    compiled: jax.stages.Compiled | None  # None when the compiler refused it for lack of memory
    memory: StepMemory | None
    seconds: float
    error: str = ""  # the compiler's reason when it refused

    @property
    def fits_with_headroom(self) -> bool:
        return bool(self.memory) and self.memory.headroom >= HEADROOM


def abstract_batch(config: ml_collections.ConfigDict, model, spec, mesh) -> dict:
    """ShapeDtypeStructs of one global training batch of `config`, sharded as the trainer shards it."""
    sharding = batch_sharding(mesh)
    synthetic = synthetic_rows(config)
    size, batch = model.image_size, config.batch_size - synthetic
    if spec.image_embedding:  # the generator's examples (synth2/generator_training.py)
        shape = model.image_embedding_shape(embedding_depth(spec.image_embedding))
        image = {"image_embedding": jax.ShapeDtypeStruct((batch, *shape), jnp.float32, sharding=sharding)}
    else:
        image = {"image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8, sharding=sharding)}
    arrays = {
        **image,
        "tokens": jax.ShapeDtypeStruct(
            (batch, spec.captions_per_example, spec.text_length), jnp.int32, sharding=sharding
        ),
        "image_id": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=sharding),
    }
    if spec.generator_caption_tokens:
        arrays["caption_tokens"] = jax.ShapeDtypeStruct(
            (batch, spec.generator_caption_tokens), jnp.int32, sharding=sharding
        )
    if synthetic:  # Synth²'s rows (synth2/mixing.py)
        shape = model.image_embedding_shape(embedding_depth(config.data.synthetic_depth))
        arrays["synthetic"] = {
            "image_embedding": jax.ShapeDtypeStruct((synthetic, *shape), jnp.float32, sharding=sharding),
            "tokens": jax.ShapeDtypeStruct(
                (synthetic, spec.captions_per_example, spec.text_length), jnp.int32, sharding=sharding
            ),
            "image_id": jax.ShapeDtypeStruct((synthetic,), jnp.int32, sharding=sharding),
        }
    return arrays


def compile_train_step(config: ml_collections.ConfigDict, devices, hbm_bytes: int) -> CompiledStep:
    """The real training step of `config` (model, loss, optimizer, mesh, shardings) compiled for `devices`."""
    mesh = mesh_from_config(config.mesh, devices)
    setup = TrainSetup.build(config, mesh)
    spec = ExampleSpec.from_config(config, setup.model)
    batch = abstract_batch(config, setup.model, spec, mesh)
    if config.get("task") == "synth2_generator":  # the frozen CLIP's parameters are an argument too
        clip_setup = frozen_clip_setup(config, mesh)
        arguments = (make_generator_step(setup, clip_setup), setup.state_target(), clip_setup.state_target("params"))
    else:
        arguments = (make_train_step(setup, spec.slot_kinds), setup.state_target())
    step, *inputs = arguments
    start = time.perf_counter()
    try:
        compiled = step.lower(*inputs, batch).compile()
    except Exception as e:  # XLA raises its own error type; only memory exhaustion is an answer, not a bug
        if "RESOURCE_EXHAUSTED" not in str(e) and "Ran out of memory" not in str(e):
            raise
        return CompiledStep(None, None, time.perf_counter() - start, _first_line_with(str(e), "HBM") or str(e)[:300])
    analysis = compiled.memory_analysis()
    memory = StepMemory(
        analysis.argument_size_in_bytes,
        analysis.output_size_in_bytes,
        analysis.alias_size_in_bytes,
        analysis.temp_size_in_bytes,
        hbm_bytes,
    )
    return CompiledStep(compiled, memory, time.perf_counter() - start)


def _first_line_with(text: str, word: str) -> str:
    return next((line.strip() for line in text.splitlines() if word in line), "")


def replicated_state_bytes(config: ml_collections.ConfigDict, devices) -> int:
    """Parameters, their gradients and the optimizer state, all in full on one device."""
    state = TrainSetup.build(config, mesh_from_config(config.mesh, devices)).abstract_state
    nbytes = lambda tree: sum(math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))
    return 2 * nbytes(state["params"]) + nbytes(state["opt_state"])


def pick_memory_settings(config: ml_collections.ConfigDict, devices, hbm_bytes: int):
    """-> (config with every unset memory setting filled in, {key: what was picked}, the CompiledStep of the
    result). Candidates are tried fastest first; the first that fits with HEADROOM to spare wins, else
    the leanest. Settings the config gives are kept as they are."""
    config = config.copy_and_resolve_references()
    platform = devices[0].platform
    picked = {}

    def pick(section, key, value):
        if config[section][key] is None:
            config[section][key] = value
            picked[f"{section}.{key}"] = value

    # The compute dtype the devices train in, also when compiling for them from a CPU host; on CPUs (picked for
    # with config.memory_limit_gib) float32, what config.model.dtype's None means there.
    pick("model", "dtype", "float32" if platform == "cpu" else "bfloat16")
    pick("model", "scan_layers", True)
    fused = ATTENTION_BY_PLATFORM.get(platform, "xla")
    pick("model", "attention", fused if config.model.dtype == "bfloat16" else "xla")
    slices = len({getattr(device, "slice_index", 0) for device in devices})
    if slices > 1 and math.prod(config.mesh.dcn_shape) == 1:  # data parallel across slices (docs/scaling.md)
        config.mesh.dcn_shape = (slices, 1, 1)
        picked["mesh.dcn_shape"] = config.mesh.dcn_shape
    if config.mesh.shape is None:
        fsdp = replicated_state_bytes(config, devices) > REPLICATED_STATE_SHARE * hbm_bytes
        pick("mesh", "shape", (1, -1, 1) if fsdp else (-1, 1, 1))
    unset = [key for key in ("model.remat_policy", "optim.grad_cache_chunks") if config[key] is None]
    for policy, chunks in _candidates(config, len(devices)):
        config.model.remat_policy, config.optim.grad_cache_chunks = policy, chunks
        result = compile_train_step(config, devices, hbm_bytes)
        if result.fits_with_headroom:
            break
    picked.update({key: config[key] for key in unset})
    return config, picked, result


def _candidates(config, devices: int):
    """(remat policy, gradient-cache chunks) from fastest to leanest, over the settings left unset: each remat
    policy in one pass, then the leanest in more and more chunks (each chunk 8 examples a device at least)."""
    policies = REMAT_LADDER if config.model.remat_policy is None else (config.model.remat_policy,)
    if config.optim.grad_cache_chunks is not None:
        return [(policy, config.optim.grad_cache_chunks) for policy in policies]
    if config.generator.weight or synthetic_rows(config):  # gradient caching takes neither (training/step.py)
        return [(policy, 1) for policy in policies]
    per_device = config.batch_size // devices // config.optim.accum_steps
    more_chunks = [c for c in GRAD_CACHE_LADDER if per_device % c == 0 and per_device // c >= 8]
    return [(policy, 1) for policy in policies] + [(policies[-1], chunks) for chunks in more_chunks]


def largest_batch(config, devices, hbm_bytes, granularity: int) -> int:
    """A multiple of `granularity` whose step fits with HEADROOM to spare, within an eighth of the largest such
    (0 if none): doubling from the config's batch, then bisecting (each try is a compile)."""
    config = config.copy_and_resolve_references()

    def fits(batch):
        config.batch_size = batch
        return compile_train_step(config, devices, hbm_bytes).fits_with_headroom

    low, high = 0, max(granularity, config.batch_size // granularity * granularity)
    while fits(high):
        low, high = high, 2 * high
    while high - low > max(granularity, low // 8):
        middle = (low + high) // 2 // granularity * granularity
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def pick_for_local_devices(config: ml_collections.ConfigDict, workdir: str | None = None):
    """`pick_memory_settings` for the devices this run trains on, within `memory_limit`; on a CPU without
    config.memory_limit_gib (no limit to fit) the config comes back unchanged. Every process compiles the
    candidates for all the run's devices, as the run compiles its step, within the least memory any process
    allows, and all must pick the same. With `workdir`, the compiles go to WORKDIR/jax-cache
    (`use_compilation_cache`). Process 0 logs the picks. -> (config, {key: what was picked})."""
    limit = memory_limit(config)
    if limit is None:
        return config, {}
    if workdir:
        use_compilation_cache(os.path.join(workdir, "jax-cache"))
    limit = min(_from_every_process(limit))
    devices = jax.devices()
    config, picked, result = pick_memory_settings(config, devices, limit)
    _check_same_picks(picked)
    if jax.process_index() == 0:
        _log_picks(config, picked, result, devices)
    return config, picked


def memory_limit(config: ml_collections.ConfigDict) -> int | None:
    """Bytes the step may take on each of this process's devices: the least any of them allows (bytes_limit; on
    GPUs the share of memory JAX preallocates), capped at config.memory_limit_gib; None on a CPU without a cap."""
    limits = [
        device.memory_stats()["bytes_limit"] for device in jax.local_devices() if device.platform in ("gpu", "tpu")
    ]
    if config.memory_limit_gib:
        limits.append(int(config.memory_limit_gib * 2**30))
    return min(limits, default=None)


def use_compilation_cache(directory: str) -> None:
    """JAX's persistent compilation cache in `directory`, unless the user chose one (JAX_COMPILATION_CACHE_DIR or
    jax_compilation_cache_dir): the run's own compile of the picked step then reads back what picking compiled, and
    a restart reads back both. JAX writes entries from process 0 only; on GPUs and TPUs the others read them from
    the shared workdir (on CPUs JAX's keys include the process's own devices, so they compile for themselves)."""
    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", directory)


def _from_every_process(value) -> list:
    """`value` (anything JSON holds) of every process, in process order."""
    if jax.process_count() == 1:
        return [value]
    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    size = int(multihost_utils.process_allgather(np.int32(data.size)).max())
    rows = multihost_utils.process_allgather(np.pad(data, (0, size - data.size)))
    return [json.loads(bytes(row).rstrip(b"\0")) for row in rows]


def _check_same_picks(picked: dict) -> None:
    """ValueError naming the settings the processes picked differently: one program runs on all of them. Having
    compiled the same candidates within the same limit, only other devices or another JAX make them differ."""
    picks = _from_every_process(picked)
    differ = sorted(
        {key for pick in picks for key in pick.keys() | picks[0].keys() if pick.get(key) != picks[0].get(key)}
    )
    if not differ:
        return
    described = []
    for key in differ:
        processes_by_value = {}
        for process, pick in enumerate(picks):
            processes_by_value.setdefault(json.dumps(pick.get(key)), []).append(process)
        described.append(f"{key}: " + ", ".join(f"{value} on processes {p}" for value, p in processes_by_value.items()))
    raise ValueError(
        f"the processes picked different memory settings ({'; '.join(described)}): their devices or JAX versions "
        f"differ; set these keys in the config"
    )


def _log_picks(config, picked: dict, result: CompiledStep, devices) -> None:
    where = f"memory settings for {len(devices)} x {devices[0].device_kind}"
    if result.memory is None:
        logging.warning("%s: the compiler found none that fits (%s); going on with %s", where, result.error, picked)
        return
    taken = f"{_gib(result.memory.total_bytes)} of {_gib(result.memory.hbm_bytes)} a device"
    if config.memory_limit_gib:
        taken += f" (config.memory_limit_gib {config.memory_limit_gib})"
    if result.fits_with_headroom:
        logging.info("%s: picked %s; the step takes %s", where, picked, taken)
    else:
        logging.warning(
            "%s: none leaves %d%% to spare; the leanest, %s, takes %s", where, 100 * HEADROOM, picked, taken
        )


def _gib(size: int) -> str:
    return f"{size / 2**30:.3g} GiB"
