"""metrics.jsonl grows by appending on a local disk, and a resumed run drops the steps after its checkpoint."""

import json
import os

from etils import epath

from rsclip_jax.training.metrics import MetricWriter


def steps(path) -> list[int]:
    return [json.loads(line)["step"] for line in epath.Path(path).read_text().splitlines()]


def test_a_local_file_grows_by_appending_and_a_resume_drops_the_steps_after_its_checkpoint(tmp_path):
    writer = MetricWriter(str(tmp_path), enabled=True)
    path = tmp_path / "metrics.jsonl"
    writer.write(1, {"loss": 1.0})
    inode = os.stat(path).st_ino
    writer.write(2, {"loss": 0.5})
    assert steps(path) == [1, 2] and os.stat(path).st_ino == inode  # the same file, appended to, not replaced
    writer.write(3, {"loss": 0.25})
    writer.close()

    resumed = MetricWriter(str(tmp_path), enabled=True, resumed_from_step=2)
    assert steps(path) == [1, 2]
    resumed.write(3, {"loss": 0.3})
    resumed.close()
    assert steps(path) == [1, 2, 3] and json.loads(path.read_text().splitlines()[-1])["loss"] == 0.3
