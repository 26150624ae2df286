"""Training metrics: DIR/metrics.jsonl, TensorBoard event files and a console line (process 0 only).

The workdir may be a bucket: paths go through etils.epath (gs:// with gcsfs installed).
"""

import json

from absl import logging
from etils import epath
from tensorboardX import SummaryWriter


class MetricWriter:
    def __init__(self, workdir: str, *, enabled: bool, resumed_from_step: int = 0):
        self.enabled = enabled
        if not enabled:
            return
        self.path = epath.Path(workdir) / "metrics.jsonl"
        # A resumed run logs again the steps after its checkpoint: keep the lines up to the checkpoint.
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        self.lines = [line for line in lines if line.strip() and json.loads(line)["step"] <= resumed_from_step]
        self.tensorboard = SummaryWriter(str(epath.Path(workdir) / "tensorboard"))

    def write(self, step: int, metrics: dict):
        if not self.enabled:
            return
        self.lines.append(json.dumps({"step": step, **metrics}))
        # The whole file, written aside and renamed: a bucket has no append, and a crash leaves the old file.
        staged = self.path.with_name(self.path.name + ".tmp")
        staged.write_text("\n".join(self.lines) + "\n")
        staged.replace(self.path)
        for name, value in metrics.items():
            if isinstance(value, (int, float)):
                self.tensorboard.add_scalar(name, value, step)
        self.tensorboard.flush()

    def close(self):
        if self.enabled:
            self.tensorboard.close()


def console_line(step: int, total_steps: int, m: dict) -> str:
    """open_clip's spirit: progress, loss, lr, scale, throughput (with MFU when the device's peak is
    known) and the time spent waiting for data."""
    return (
        f"Train step {step}/{total_steps} ({100 * step / total_steps:.0f}%) | loss {m['loss']:.4f} | "
        f"lr {m['learning_rate']:.3e} | logit_scale {m['logit_scale']:.2f} | grad_norm {m['grad_norm']:.3f} | "
        f"{m['examples_per_sec']:.1f} samples/s | {m['tflops_per_device']:.2f} TFLOP/s/device"
        + (f" (MFU {100 * m['mfu']:.1f}%)" if "mfu" in m else "")
        + f" | data {m['data_wait_s']:.3f}s ({100 * m['data_wait_fraction']:.0f}%) | skipped {m['skipped_records']}"
    )


def log_console(step, total_steps, metrics):
    logging.info("%s", console_line(step, total_steps, metrics))
