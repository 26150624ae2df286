"""config.wandb: MetricWriter's scalars in Weights & Biases beside metrics.jsonl and TensorBoard, from process 0 only,
one W&B run per workdir across resumes. Run in W&B's offline mode; what it logged is read back from the run's .wandb
transaction log with `wandb leet inspect --json` (one JSON record a line)."""

import glob
import json
import os
import subprocess
import sys

import pytest

from rsclip_jax.config import base_config
from rsclip_jax.training.metrics import WANDB_RUN_ID, MetricWriter

TRAINING = [
    (2, {"loss": 2.5, "learning_rate": 1e-4, "logit_scale": 14.3, "skipped_records": 0}),
    (2, {"eval/heldout/image_to_text_R@1": 0.25, "eval/heldout/images": 16}),
    (4, {"loss": 1.75, "learning_rate": 2e-4, "logit_scale": 15.0, "skipped_records": 3}),
    (4, {"eval/heldout/image_to_text_R@1": 0.5, "eval/heldout/images": 16, "eval/shapes/top1": 0.75}),
]


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")  # whatever the config says: no test reaches a server
    monkeypatch.delenv("WANDB_DIR", raising=False)  # W&B's files go to DIR/wandb
    config = base_config()
    config.wandb.update(enabled=True, mode="offline", name="tiny-run", tags=("test",))
    config.batch_size = 8
    return config


def records(wandb_file: str) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", wandb_file],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def by_step(rows) -> dict[int, dict]:
    """{step: the numbers logged at it}, the W&B-internal keys (_step, _runtime, ...) left out."""
    merged = {}
    for step, metrics in rows:
        merged.setdefault(step, {}).update(
            {k: v for k, v in metrics.items() if not k.startswith("_") and isinstance(v, (int, float))}
        )
    return merged


def wandb_files(workdir) -> list[str]:
    return sorted(glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "run-*.wandb")))


def test_wandb_logs_what_metrics_jsonl_holds_and_resumes_the_same_run(tmp_path, offline):
    wandb = pytest.importorskip("wandb")  # the wandb extra
    config = offline
    workdir = str(tmp_path / "tiny-run")
    os.makedirs(workdir)
    # Another process of a pod (enabled=False): no W&B run, no id file, no files.
    other = MetricWriter(workdir, enabled=False, config=config)
    for step, metrics in TRAINING:
        other.write(step, metrics)
    other.close()
    assert wandb.run is None and os.listdir(workdir) == []

    writer = MetricWriter(workdir, enabled=True, config=config)
    for step, metrics in TRAINING:
        writer.write(step, metrics)
    writer.close()
    assert wandb.run is None  # finished

    run_id = open(os.path.join(workdir, WANDB_RUN_ID)).read().strip()
    [first] = wandb_files(workdir)
    logged = records(first)
    history = [(r["history"]["step"]["num"], r["history"]["item"]) for r in logged if r["type"] == "history"]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        jsonl = [json.loads(line) for line in f]
    assert by_step(history) == by_step((line.pop("step"), line) for line in jsonl)
    assert by_step(history)[4]["eval/shapes/top1"] == 0.75 and by_step(history)[2]["loss"] == 2.5
    [run] = [r["run"] for r in logged if r["type"] == "run"]
    assert run["run_id"] == run_id and run["project"] == "rsclip-jax" and run["display_name"] == "tiny-run"
    assert run["tags"] == ["test"]
    assert run["config"]["update"]["batch_size"] == 8 and run["config"]["update"]["wandb"]["mode"] == "offline"
    assert [r["exit"]["exit_code"] for r in logged if r["type"] == "exit"] == [0]

    # Resumed from the checkpoint of step 2, then stopped by an error: the same W&B run, marked failed. (The first
    # offline folder moved aside: W&B names them by the second they start in.)
    os.rename(os.path.join(workdir, "wandb"), os.path.join(workdir, "wandb-first"))
    resumed = MetricWriter(workdir, enabled=True, resumed_from_step=2, config=config)
    with pytest.raises(RuntimeError):
        try:
            resumed.write(6, {"loss": 1.5})
            raise RuntimeError("loss or gradients were not finite")
        finally:
            resumed.close()  # as the training loop's `finally`
    [second] = wandb_files(workdir)
    logged = records(second)
    [run] = [r["run"] for r in logged if r["type"] == "run"]
    assert run["run_id"] == run_id and run["resume"]
    assert [r["exit"]["exit_code"] for r in logged if r["type"] == "exit"] == [1]
    assert [(r["history"]["step"]["num"], r["history"]["item"]["loss"]) for r in logged if r["type"] == "history"] == [
        (6, 1.5)
    ]


def test_a_missing_wandb_package_names_the_key_and_the_extra(tmp_path, offline, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    for enabled in (True, False):  # every process stops, not process 0 alone
        with pytest.raises(ImportError, match=r"config\.wandb\.enabled .* pip install -e '\.\[wandb\]'"):
            MetricWriter(str(tmp_path), enabled=enabled, config=offline)
    offline.wandb.enabled = False
    MetricWriter(str(tmp_path), enabled=True, config=offline).close()  # off: wandb is never imported
