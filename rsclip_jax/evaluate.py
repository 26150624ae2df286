"""Run the evaluators of a config on a checkpoint.

    python -m rsclip_jax.evaluate --workdir=DIR [--checkpoint=DIR/checkpoints/STEP] [--config=RECIPE[:ARG]]

Without --config, the config the workdir was trained with (DIR/config.json) names the model and the
evals. Without --checkpoint, the latest checkpoint of DIR is evaluated. Results are written to
DIR/eval/step_STEP.json (or --output) and printed as one JSON line, by process 0. Several processes: as
`rsclip_jax.train` (--coordinator_address, --num_processes, --process_id, or nothing on a TPU pod or under SLURM).
"""

import json
import os

import jax
import ml_collections
from absl import app, flags
from etils import epath
from ml_collections import config_flags

from rsclip_jax.accelerators.distributed import initialize_distributed
from rsclip_jax.accelerators.sharding import mesh_from_config
from rsclip_jax.config import parse_flags
from rsclip_jax.evals.evaluators import build_evaluators, run_evaluators
from rsclip_jax.training.checkpoints import restore_params
from rsclip_jax.training.train_setup import TrainSetup
from rsclip_jax.weights.trained import checkpoint_to_read, workdir_config

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Recipe; default: the workdir's config.json.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A step folder DIR/checkpoints/STEP; default: the latest.")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the results; default DIR/eval/step_STEP.json.")


def _config(workdir: str) -> ml_collections.ConfigDict:
    if _CONFIG.value is not None:
        return _CONFIG.value
    try:
        return workdir_config(workdir)
    except FileNotFoundError as e:
        raise app.UsageError(f"{e}: give --config") from None


def main(argv):
    del argv
    workdir = _WORKDIR.value
    if not workdir:
        raise app.UsageError("give --workdir=DIR (and optionally --checkpoint, --config)")
    initialize_distributed()
    config = _config(workdir)
    if not config.get("evals"):
        raise app.UsageError(
            "the config has no evals: add entries to config.evals (see rsclip_jax/evals/evaluators.py)"
        )
    try:
        folder, step = checkpoint_to_read(workdir, _CHECKPOINT.value)
        setup = TrainSetup.build(config, mesh_from_config(config.mesh))
        evaluators = build_evaluators(setup)
    except (ValueError, FileNotFoundError) as e:
        raise app.UsageError(str(e)) from None
    try:
        step, params = restore_params(folder, setup, step)
    except (FileNotFoundError, ValueError) as e:
        raise app.UsageError(str(e)) from None

    results = {"checkpoint": os.path.join(folder, str(step)), "step": step, "evals": run_evaluators(evaluators, params)}
    if jax.process_index() == 0:
        output = epath.Path(_OUTPUT.value or epath.Path(workdir) / "eval" / f"step_{step}.json")
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=1))
        print(json.dumps(results))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
