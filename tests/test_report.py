"""`rsclip_jax.report`: the paper's table, with its Avg columns, from a workdir's metrics; a workdir in a bucket."""

import io
import json
import subprocess
import sys

import pytest
from etils import epath
from PIL import Image

from rsclip_jax import report
from rsclip_jax.evals.report import write_report


def test_paper_table_from_metrics_and_eval_files(tmp_path, monkeypatch, capsys):
    lines = [
        {"step": 10, "loss": 2.5, "learning_rate": 1e-6, "examples_per_sec": 90.0},
        {
            "step": 1000,
            "eval/coco/i2t_r1": 60.0,
            "eval/coco/t2i_r1": 40.0,
            "eval/imagenet_o/top1": 45.0,
            "eval/cifar100/top1": 65.0,
            "eval/urban1k/i2t_r1": 90.0,
        },
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (tmp_path / "eval").mkdir()
    evals = {
        "coco": {"i2t_r1": 62.0, "t2i_r1": 41.0},
        "flickr30k": {"i2t_r1": 80.0, "t2i_r1": 61.0},
        "urban1k": {"i2t_r1": 70.0, "t2i_r1": 55.0},
        "imagenet": {"top1": 63.5, "top5": 88.0},
        "imagenet_o": {"top1": 44.0},
        "cifar100": {"top1": 66.5},
    }
    (tmp_path / "eval" / "step_2000.json").write_text(json.dumps({"step": 2000, "evals": evals}))
    monkeypatch.setattr(sys, "argv", ["report", str(tmp_path)])
    report.main()

    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == str(tmp_path / "report")  # the folder stays last
    assert printed[0] == (
        "| model | COCO I->T | COCO T->I | Retrieval Avg | ImageNet-1k | ImageNet-O | CIFAR-100 | Zero-shot Avg |"
    )
    assert printed[2] == "| step 1000 | 60.00 | 40.00 | - | - | 45.00 | 65.00 | - |"  # a missing number: no Avg
    retrieval = (62.0 + 41.0 + 80.0 + 61.0 + 70.0 + 55.0) / 6
    zeroshot = (63.5 + 44.0 + 66.5) / 3
    assert printed[3] == f"| step 2000 | 62.00 | 41.00 | {retrieval:.2f} | 63.50 | 44.00 | 66.50 | {zeroshot:.2f} |"
    assert printed[4] == "| OpenAI CLIP B/16 (paper) | 53.10 | 32.70 | 58.87 | 68.30 | 40.40 | 66.70 | 70.30 |"
    assert printed[5] == "| Role-SynthCLIP B/16 (paper) | 64.10 | 43.20 | 77.01 | 64.80 | 44.50 | 68.20 | 69.62 |"
    summary = (tmp_path / "report" / "README.md").read_text()
    assert "## The paper's table" in summary and printed[3] in summary and "| coco | 2000 | i2t_r1 | 62.00 |" in summary


def test_no_paper_table_without_its_evals(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 4, "eval/heldout/i2t_r1": 10.0}) + "\n")
    _, table = write_report(str(tmp_path))
    assert table == [] and "paper's table" not in (tmp_path / "report" / "README.md").read_text()
    with pytest.raises(FileNotFoundError, match="metrics.jsonl does not exist"):
        write_report(str(tmp_path / "missing"))


def test_report_of_a_workdir_in_a_bucket(gcs_bucket):
    workdir = epath.Path(gcs_bucket) / "runs" / "report"
    (workdir / "metrics.jsonl").write_text(json.dumps({"step": 10, "loss": 2.5, "examples_per_sec": 90.0}) + "\n")
    (workdir / "eval" / "step_20.json").write_text(json.dumps({"step": 20, "evals": {"coco": {"i2t_r1": 62.0}}}))
    result = subprocess.run(
        [sys.executable, "-m", "rsclip_jax.report", str(workdir)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == f"{workdir}/report"
    summary = (workdir / "report" / "README.md").read_text()
    assert f"# Training report: {workdir}" in summary and "| coco | 20 | i2t_r1 | 62.00 |" in summary
    with Image.open(io.BytesIO((workdir / "report" / "training.png").read_bytes())) as image:
        assert image.format == "PNG"
    assert (workdir / "report" / "eval.png").exists()
