"""Compile the training step of a recipe ahead of time for an accelerator this machine need not have, and
report its memory per chip.

    python -m rsclip_jax.aot --config=configs/rsclip_b16.py --topology=v5e-8 [--slices=2] [--max-batch] \
        [--config.batch_size=4096 ...]

Topologies: Cloud TPU accelerator types (v4-8 ... v4-512, v5e-1 ... v5e-256, v5p-8 ... v5p-256, v6e-1 ...
v6e-256; libtpu: `pip install -e '.[tpu]'`) and NVIDIA GPUs (a100-8, h100-8, h200-8 for a node, h100-16 for
two; the CUDA plugin: `pip install -e '.[gpu]'`). Memory settings the config leaves unset are picked as training
picks them (rsclip_jax.accelerators.memory_settings) and named in `picked`. Prints one JSON line; a step that does
not fit adds one line on
stderr saying what needs how much, and the exit status is 1.
"""

import importlib.metadata
import json
import os
import re
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from rsclip_jax.accelerators.flops import clip_training_flops_per_example
from rsclip_jax.accelerators.memory_settings import largest_batch, pick_memory_settings
from rsclip_jax.accelerators.topology import GPU_TARGETS, target
from rsclip_jax.config import parse_flags
from rsclip_jax.data.caption_sampling import ALT_SLOT
from rsclip_jax.data.example_spec import ExampleSpec
from rsclip_jax.model.config import ModelConfig
from rsclip_jax.synth2.generator_training import generator_training_flops_per_example
from rsclip_jax.training.step import check_loss_settings

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe: a Python file with get_config().", lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "v5e-8, v4-32, v5p-128, v6e-256, h100-8, ...")
_SLICES = flags.DEFINE_integer("slices", 1, "TPU slices joined over the data-center network (GPU nodes: h100-16).")
_MAX_BATCH = flags.DEFINE_boolean("max-batch", False, "Also find the largest global batch that fits, by compiling.")

GIB = 2**30


def _versions() -> dict:
    versions = {"jax": jax.__version__}
    for package in ("libtpu", "jax-cuda13-plugin"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _report(config, topology, result, picked) -> dict:
    model = ModelConfig.from_config(config)
    chips = len(topology.devices)
    spec = ExampleSpec.from_config(config, model)
    if config.get("task") == "synth2_generator":
        per_example = generator_training_flops_per_example(config, model, spec.text_length)
    else:
        per_example = clip_training_flops_per_example(
            model,
            spec.captions_per_example,
            config.batch_size,
            text_length=spec.text_length,
            web_caption=ALT_SLOT in spec.slot_kinds,
        )
    flops = config.batch_size * per_example
    memory = result.memory
    report = {
        "config": config_flags.get_config_filename(flags.FLAGS["config"]),
        "topology": topology.name,
        "slices": topology.slices,
        "chips": chips,
        "device_kind": topology.devices[0].device_kind,
        "batch_size": config.batch_size,
        "batch_per_chip": config.batch_size / chips,
        "settings": {
            "mesh.shape": tuple(config.mesh.shape),
            "mesh.dcn_shape": tuple(config.mesh.dcn_shape),
            "model.dtype": config.model.dtype,
            "model.remat_policy": config.model.remat_policy,
            "model.scan_layers": config.model.scan_layers,
            "model.attention": config.model.attention,
            "optim.mu_dtype": config.optim.mu_dtype,
            "optim.grad_cache_chunks": config.optim.grad_cache_chunks,
            "loss.sharded": config.loss.sharded,
        },
        "picked": picked,
        "argument_bytes": memory and memory.argument_bytes,
        "temp_bytes": memory and memory.temp_bytes,
        "total_bytes": memory and memory.total_bytes,
        "hbm_bytes": topology.hbm_bytes,
        "headroom_pct": memory and round(100 * memory.headroom, 1),
        "fits": bool(memory and memory.fits),
        "compile_s": round(result.seconds, 1),
        "tflops_per_step": round(flops / 1e12, 2),
        "tflops_per_chip": round(flops / 1e12 / chips, 3),
        **_versions(),
    }
    if result.error:
        report["compiler_error"] = result.error
    return report


def main(argv):
    del argv
    if _CONFIG.value is None or not _TOPOLOGY.value:
        raise app.UsageError("give --config=configs/<recipe>.py and --topology=NAME (e.g. v5e-8, h100-8)")
    try:
        check_loss_settings(_CONFIG.value)
        ExampleSpec.from_config(_CONFIG.value, ModelConfig.from_config(_CONFIG.value))
        topology = target(_TOPOLOGY.value, _SLICES.value)
    except (ValueError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    config, picked, result = pick_memory_settings(_CONFIG.value, topology.devices, topology.hbm_bytes)
    report = _report(config, topology, result, picked)
    if _MAX_BATCH.value:
        tensor = max(config.mesh.shape[2], 1)  # batches are split over the other two axes
        granularity = 8 * len(topology.devices) // tensor * config.optim.accum_steps * config.optim.grad_cache_chunks
        report["max_batch"] = largest_batch(config, topology.devices, topology.hbm_bytes, granularity)
        report["max_batch_granularity"] = granularity
    print(json.dumps(report), flush=True)
    if not report["fits"]:
        sys.exit(_does_not_fit(config, topology, result))


def _does_not_fit(config, topology, result) -> str:
    if result.memory:
        needs = (
            f"{result.memory.total_bytes / GIB:.2f} GiB (arguments {result.memory.argument_bytes / GIB:.2f}, "
            f"temporaries {result.memory.temp_bytes / GIB:.2f})"
        )
    else:  # the TPU compiler refused it and says what it needed
        match = re.search(r"required for (.+?) \(([\d.]+)G\)", result.error)
        needs = f"{match.group(2)} GiB of {match.group(1)}" if match else f"more than it has ({result.error})"
    remedies = ["lower config.batch_size"]
    if config.model.remat_policy != "nothing":
        remedies.append("set config.model.remat_policy=nothing")
    if config.mesh.shape[0] != 1:
        remedies.append("shard the state with config.mesh.shape='(1,-1,1)'")
    return (
        f"does not fit: the training step at batch {config.batch_size} on {topology.name} needs {needs} per chip, "
        f"of {topology.hbm_bytes / GIB:.2f} GiB; {', or '.join(remedies)}"
    )


def _cross_compile_environment(argv):
    """The local backend stays the CPU; the GPU compiler needs these flags to compile without a GPU."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    jax.config.update("jax_platforms", "cpu")
    if any(arg.split("=")[-1].split("-")[0] in GPU_TARGETS for arg in argv if arg.startswith("--topology")):
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_gpu_enable_triton_gemm=false --xla_gpu_autotune_level=0"
        ).strip()


if __name__ == "__main__":
    _cross_compile_environment(sys.argv)
    app.run(main, flags_parser=parse_flags)
