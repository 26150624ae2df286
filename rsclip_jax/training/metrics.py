"""Training metrics: DIR/metrics.jsonl, TensorBoard event files, Weights & Biases when config.wandb.enabled, and a
console line (process 0 only).

The workdir may be a bucket: paths go through etils.epath (gs:// with gcsfs installed).
"""

import importlib.util
import json
import os
import secrets
import string
import sys

from absl import logging
from etils import epath

# The W&B run of a workdir: its id, written by the first run and read by every resumed one.
WANDB_RUN_ID = "wandb_run_id"


def _tensorboard_writer(logdir: str):
    """tensorboardX's SummaryWriter, imported without torch: where torch is installed, tensorboardX imports it (about
    2 s of every trainer's start) only to accept torch tensors, and none is ever logged here."""
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter
    else:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX handles
        try:
            from tensorboardX import SummaryWriter
        finally:
            del sys.modules["torch"]
    return SummaryWriter(logdir)


class MetricWriter:
    """`write(step, metrics)` appends to DIR/metrics.jsonl and logs the numbers to TensorBoard and, where
    `config.wandb.enabled`, to W&B (with `config` as the run's config). Does nothing where not `enabled` (every
    process but 0); W&B is then never imported or started."""

    def __init__(self, workdir: str, *, enabled: bool, resumed_from_step: int = 0, config=None):
        self.enabled = enabled
        self.wandb = None
        use_wandb = config is not None and config.get("wandb") is not None and config.wandb.enabled
        if use_wandb:
            _check_wandb_installed()  # on every process, so that they all stop, not process 0 alone
        if not enabled:
            return
        self.path = epath.Path(workdir) / "metrics.jsonl"
        # A resumed run logs again the steps after its checkpoint: keep the lines up to the checkpoint.
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        self.lines = [line for line in lines if line.strip() and json.loads(line)["step"] <= resumed_from_step]
        if len(self.lines) != len(lines) or not self.path.exists():
            self._replace_file()
        # A local file grows by appending each line; a bucket has no append: its lines are buffered and the
        # file replaced by `flush`, with each checkpoint.
        self.appending = "://" not in str(workdir)
        self.file = open(self.path, "a") if self.appending else None
        self.tensorboard = _tensorboard_writer(str(epath.Path(workdir) / "tensorboard"))
        if use_wandb:
            self.wandb = _start_wandb(workdir, config)
            # Resumed, W&B holds the steps logged before the interruption and ignores earlier ones: skip those.
            self.wandb_from_step = self.wandb.starting_step if self.wandb.resumed else 0

    def write(self, step: int, metrics: dict):
        if not self.enabled:
            return
        line = json.dumps({"step": step, **metrics})
        if self.appending:
            self.file.write(line + "\n")
            self.file.flush()
        else:
            self.lines.append(line)
        scalars = {name: value for name, value in metrics.items() if isinstance(value, (int, float))}
        for name, value in scalars.items():
            self.tensorboard.add_scalar(name, value, step)
        self.tensorboard.flush()
        if self.wandb is not None and step >= self.wandb_from_step:
            # Not committed: the training and eval lines of one step make one W&B row, sent at the next step.
            self.wandb.log(scalars, step=step)

    def flush(self):
        """Writes the buffered lines to a bucket's metrics.jsonl (the loop calls it with each checkpoint)."""
        if self.enabled and not self.appending:
            self._replace_file()

    def _replace_file(self):
        # Written aside and renamed: a crash leaves the old file whole.
        staged = self.path.with_name(self.path.name + ".tmp")
        staged.write_text("".join(line + "\n" for line in self.lines))
        staged.replace(self.path)

    def close(self):
        if self.enabled:
            self.flush()
            if self.file is not None:
                self.file.close()
            self.tensorboard.close()
        if self.wandb is not None:
            # Called from the loop's `finally`: a run stopped by an exception is marked failed in W&B.
            self.wandb.finish(exit_code=1 if sys.exc_info()[0] is not None else 0)
            self.wandb = None


def _check_wandb_installed():
    if importlib.util.find_spec("wandb") is None:
        raise ImportError(
            "config.wandb.enabled is True but the wandb package is not installed: pip install -e '.[wandb]' "
            "(or set --config.wandb.enabled=False)"
        )


def _start_wandb(workdir: str, config):
    """wandb.init for the run of `workdir`: a new W&B run the first time, the same one (DIR/wandb_run_id) after."""
    import wandb  # only here: the extra is optional

    settings = config.wandb
    id_path = epath.Path(workdir) / WANDB_RUN_ID
    if id_path.exists():
        run_id = id_path.read_text().strip()
    else:  # as W&B's own ids: 8 lowercase letters and digits
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        id_path.write_text(run_id + "\n")
    local = "://" not in str(workdir)
    return wandb.init(
        project=settings.project,
        entity=settings.entity,
        name=settings.name or epath.Path(workdir).name,
        tags=list(settings.tags),
        mode=settings.mode,
        id=run_id,
        resume="allow",
        config=json.loads(config.to_json_best_effort()),  # as DIR/config.json holds it
        # W&B's files under DIR/wandb, beside the rest of the run; $WANDB_DIR or the current folder for a bucket.
        dir=str(workdir) if local and "WANDB_DIR" not in os.environ else None,
    )


def console_line(step: int, total_steps: int, m: dict) -> str:
    """open_clip's spirit: progress, loss, lr, scale, throughput (with MFU when the device's peak is
    known) and the time spent waiting for data. A window of the first step alone shows that step's time, compile
    included, in place of throughput."""
    if "examples_per_sec" in m:
        speed = (
            f"{m['examples_per_sec']:.1f} samples/s | {m['tflops_per_device']:.2f} TFLOP/s/device"
            + (f" (MFU {100 * m['mfu']:.1f}%)" if "mfu" in m else "")
            + f" | data {m['data_wait_s']:.3f}s ({100 * m['data_wait_fraction']:.0f}%)"
        )
    else:
        speed = f"first step {m['first_step_s']:.1f}s (compile included)"
    return (
        f"Train step {step}/{total_steps} ({100 * step / total_steps:.0f}%) | loss {m['loss']:.4f} | "
        f"lr {m['learning_rate']:.3e} | "
        + (f"logit_scale {m['logit_scale']:.2f} | " if "logit_scale" in m else "")
        + f"grad_norm {m['grad_norm']:.3f} | "
        f"{speed} | skipped {m['skipped_records']}"
    )


def log_console(step, total_steps, metrics):
    logging.info("%s", console_line(step, total_steps, metrics))
