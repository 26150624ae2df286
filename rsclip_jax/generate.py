"""Synthetic pairs from a trained Synth² generator (docs/synth2.md): each caption of the input shards with the
image embedding the generator makes from it.

    python -m rsclip_jax.generate --workdir=DIR --captions=PATTERN --out=OUT [--steps=25] [--guidance=3]
        [--checkpoint=DIR/checkpoints/STEP] [--config=RECIPE] [--batch_size=64] [--dtype=float16] [--seed=0]

DIR is the generator's training workdir (its config.json names the frozen CLIP). The captions may come from
`captioning synthesize` (captions of images that do not exist) or any caption shards. Writes OUT/NAME for each
shard NAME: its records with captions, each with the image embedding made from its first long caption in place of
image_jpeg (synth2/synthetic_pairs.py); OUT/pairs.json says what made
them, and a rerun into OUT must agree with it. Each process generates for every P-th shard on its own devices; a
rerun skips the shards already written. Prints one JSON line per process.
"""

import json
import os

import jax
from absl import app, flags
from etils import epath
from ml_collections import config_flags

from rsclip_jax.accelerators.distributed import initialize_distributed
from rsclip_jax.accelerators.sharding import make_mesh
from rsclip_jax.config import parse_flags
from rsclip_jax.data.example_spec import DataError
from rsclip_jax.data.shards import resolve_shards
from rsclip_jax.synth2.generator_training import frozen_clip
from rsclip_jax.synth2.shard_jobs import agree_with_earlier_runs
from rsclip_jax.synth2.synthetic_pairs import pair_sampler, write_pairs
from rsclip_jax.training.checkpoints import restore_params
from rsclip_jax.training.train_setup import TrainSetup
from rsclip_jax.weights.trained import checkpoint_to_read, workdir_config

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The generator's recipe; default: the workdir's config.json.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "The generator's training workdir.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A step folder DIR/checkpoints/STEP; default: the latest.")
_CAPTIONS = flags.DEFINE_string("captions", None, "Caption shards: comma-separated paths or globs.")
_OUT = flags.DEFINE_string("out", None, "Folder of the output shards.")
_STEPS = flags.DEFINE_integer("steps", 25, "Euler steps of the flow.")
_GUIDANCE = flags.DEFINE_float("guidance", 3.0, "Classifier-free guidance scale (1: the caption's velocity alone).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Captions per batch on this process's devices.")
_DTYPE = flags.DEFINE_string("dtype", "float16", "How the embeddings are stored: float16 or float32.")
_SEED = flags.DEFINE_integer("seed", 0, "The noise's seed.")


def main(argv):
    del argv
    if not (_WORKDIR.value and _CAPTIONS.value and _OUT.value):
        raise app.UsageError("give --workdir=DIR --captions=PATTERN --out=OUT")
    initialize_distributed()
    try:
        config = _CONFIG.value if _CONFIG.value is not None else workdir_config(_WORKDIR.value)
        if config.get("task") != "synth2_generator":
            raise ValueError(f"{_WORKDIR.value} trained config.task {config.get('task')!r}, not a Synth² generator")
        folder, step = checkpoint_to_read(_WORKDIR.value, _CHECKPOINT.value)
        shards, _ = resolve_shards(_CAPTIONS.value, "--captions", content=None)
        if len(set(map(os.path.basename, shards))) < len(shards):
            raise ValueError("--captions: two shards have the same file name, which would be one output shard")
        if _BATCH_SIZE.value % jax.local_device_count():
            raise ValueError(f"--batch_size {_BATCH_SIZE.value} must divide over {jax.local_device_count()} devices")
        mesh = make_mesh((jax.local_device_count(), 1, 1), devices=jax.local_devices())  # no collectives
        setup = TrainSetup.build(config, mesh)
        step, params = restore_params(folder, setup, step)
        clip_setup, clip_params = frozen_clip(config, mesh)
    except (ValueError, FileNotFoundError, DataError) as e:
        raise app.UsageError(str(e)) from None
    depth = config.synth2_generator.depth
    made_by = {
        "generator": os.path.join(folder, str(step)),
        "depth": depth,
        "steps": _STEPS.value,
        "guidance": _GUIDANCE.value,
        "seed": _SEED.value,
        "dtype": _DTYPE.value,
    }
    agree_with_earlier_runs(epath.Path(_OUT.value) / "pairs.json", made_by)
    run = pair_sampler(
        setup, params, clip_setup, clip_params, steps=_STEPS.value, guidance=_GUIDANCE.value, seed=_SEED.value
    )
    counts = write_pairs(
        list(shards),
        _OUT.value,
        run,
        context_length=setup.model.context_length,
        depth=depth,
        dtype=_DTYPE.value,
        batch_size=_BATCH_SIZE.value,
    )
    print(json.dumps({"process": jax.process_index(), **counts.summary()}))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
