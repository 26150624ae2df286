"""Train CLIP on caption shards.

    python -m rsclip_jax.train --config=configs/rsclip_b16.py --workdir=DIR [--config.optim.lr=1e-5 ...]

Starting with a workdir that holds checkpoints resumes from the latest one, data order included.
Several processes: --coordinator_address=host:port --num_processes=N --process_id=I, or nothing on a
TPU pod or under SLURM, where JAX finds the cluster itself.
"""

import logging as pylogging

from absl import app, flags, logging
from ml_collections import config_flags

from rsclip_jax.config import parse_flags
from rsclip_jax.training.loop import SetupError, TrainingError, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe: a Python file with get_config().", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl and TensorBoard files go here.")


def _quiet_orbax_info(record) -> bool:
    return record.levelno >= pylogging.WARNING or "orbax" not in record.pathname


def main(argv):
    del argv
    logging.get_absl_handler().python_handler.addFilter(_quiet_orbax_info)  # Orbax narrates every save at INFO
    if _CONFIG.value is None or not _WORKDIR.value:
        raise app.UsageError("give --config=configs/<recipe>.py and --workdir=DIR")
    try:
        train(_CONFIG.value, _WORKDIR.value)
    except SetupError as e:
        raise app.UsageError(str(e)) from None
    except TrainingError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
