"""Image embeddings of caption shards from a trained CLIP's frozen image tower (Synth², docs/synth2.md).

    python -m rsclip_jax.embed --workdir=DIR --shards=PATTERN --out=OUT [--depth=final|tokens:K]
        [--checkpoint=DIR/checkpoints/STEP] [--config=RECIPE] [--batch_size=64] [--dtype=float16]

DIR is a training workdir or one made by `convert import` (give --config there: it has no config.json). Writes
OUT/NAME for each shard NAME: its records, each with its image's embedding; OUT/embeddings.json says what made
them, and a rerun into OUT must agree with it. Each process embeds every P-th shard on its own devices; a rerun
skips the shards already written. Prints one JSON line per process: shards written and skipped, records, and the
records left out by why.
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
from rsclip_jax.synth2.image_embeddings import check_settings, embed_shards, image_embedder
from rsclip_jax.synth2.shard_jobs import agree_with_earlier_runs
from rsclip_jax.training.checkpoints import restore_params
from rsclip_jax.training.train_setup import TrainSetup
from rsclip_jax.weights.trained import checkpoint_to_read, workdir_config

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Recipe; default: the workdir's config.json.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir, or one made by `convert import`.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A step folder DIR/checkpoints/STEP; default: the latest.")
_SHARDS = flags.DEFINE_string("shards", None, "Caption shards with images: comma-separated paths or globs.")
_OUT = flags.DEFINE_string("out", None, "Folder of the output shards, local or gs://.")
_DEPTH = flags.DEFINE_string("depth", "final", "'final' (the projected embedding) or 'tokens:K' (after block K).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Images per batch on this process's devices.")
_DTYPE = flags.DEFINE_string("dtype", "float16", "How the embeddings are stored: float16 or float32.")


def main(argv):
    del argv
    if not (_WORKDIR.value and _SHARDS.value and _OUT.value):
        raise app.UsageError("give --workdir=DIR --shards=PATTERN --out=OUT")
    initialize_distributed()
    try:
        config = _CONFIG.value if _CONFIG.value is not None else workdir_config(_WORKDIR.value)
        folder, step = checkpoint_to_read(_WORKDIR.value, _CHECKPOINT.value)
        shards, _ = resolve_shards(_SHARDS.value, "--shards")
        if len(set(map(os.path.basename, shards))) < len(shards):
            raise ValueError("--shards: two shards have the same file name, which would be one output shard")
        mesh = make_mesh((jax.local_device_count(), 1, 1), devices=jax.local_devices())  # no collectives
        setup = TrainSetup.build(config, mesh)
        check_settings(_DEPTH.value, _DTYPE.value, setup.model)
        if _BATCH_SIZE.value % jax.local_device_count():
            raise ValueError(f"--batch_size {_BATCH_SIZE.value} must divide over {jax.local_device_count()} devices")
        step, params = restore_params(folder, setup, step)
    except (ValueError, FileNotFoundError, DataError) as e:
        raise app.UsageError(str(e)) from None
    made_by = {
        "checkpoint": os.path.join(folder, str(step)),
        "variant": config.model.variant,
        "image_size": setup.model.image_size,
        "depth": _DEPTH.value,
        "dtype": _DTYPE.value,
    }
    agree_with_earlier_runs(epath.Path(_OUT.value) / "embeddings.json", made_by)
    counts = embed_shards(
        list(shards),
        _OUT.value,
        image_embedder(setup.graphdef, params, mesh, _DEPTH.value),
        params,
        image_size=setup.model.image_size,
        depth=_DEPTH.value,
        dtype=_DTYPE.value,
        batch_size=_BATCH_SIZE.value,
    )
    print(json.dumps({"process": jax.process_index(), **counts.summary()}))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
