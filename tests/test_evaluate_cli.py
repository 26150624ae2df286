"""Evals during training, `rsclip_jax.evaluate` on the checkpoints afterwards, `rs.load_model`, `rsclip_jax.report`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from recipes import REPO, one_device, run_command, write_recipe
from test_evaluators import write_retrieval_folder
from test_train import free_port

import rsclip_jax as rs
from rsclip_jax.data.records import read_shard
from rsclip_jax.evals.retrieval import retrieval_recall


def without_seconds(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "seconds"}


@pytest.mark.slow
def test_train_with_evals_then_evaluate_and_report(tmp_path, demo_shards, tiny_tfds):
    root = write_retrieval_folder(list(read_shard(demo_shards["heldout"][0])), str(tmp_path / "heldout"))
    recipe = write_recipe(
        tmp_path / "recipe.py",
        train_shards=demo_shards["train"],
        total_steps=4,
        batch_size=8,
        log_every_steps=2,
        checkpoint_every_steps=2,
        evals={
            "heldout": dict(
                kind="retrieval", dataset="jsonl", root=root, prefix="A photo of ", every_steps=2, batch_size=8
            ),
            "shapes": dict(kind="zeroshot", source="tfds:tiny_shapes", data_dir=tiny_tfds, every_steps=0, batch_size=8),
        },
    )
    workdir = str(tmp_path / "run")
    run_command("rsclip_jax.train", f"--config={recipe}", f"--workdir={workdir}")

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    training = [line for line in lines if "loss" in line]
    assert [line["step"] for line in training] == [2, 4]
    assert all(line["tflops_per_device"] > 0 and 0 <= line["data_wait_fraction"] <= 1 for line in training)
    assert all("mfu" not in line for line in training)  # no known peak for a CPU
    during = {}
    for line in lines:
        for key, value in line.items():
            if key.startswith("eval/"):
                _, name, metric = key.split("/")
                during.setdefault((line["step"], name), {})[metric] = value
    assert sorted(during) == [(2, "heldout"), (4, "heldout"), (4, "shapes")]
    assert during[(2, "heldout")]["images"] == 16 and during[(4, "shapes")]["classes"] == 2

    # Alone, on the workdir's config.json: the same numbers as during training, for each checkpoint.
    latest = json.loads(run_command("rsclip_jax.evaluate", f"--workdir={workdir}").stdout.strip().splitlines()[-1])
    assert latest["step"] == 4
    for name in ("heldout", "shapes"):
        assert without_seconds(latest["evals"][name]) == pytest.approx(without_seconds(during[(4, name)]))
    with open(os.path.join(workdir, "eval", "step_4.json")) as f:
        assert json.load(f)["evals"].keys() == {"heldout", "shapes"}
    earlier = run_command("rsclip_jax.evaluate", f"--workdir={workdir}", f"--checkpoint={workdir}/checkpoints/2")
    earlier = json.loads(earlier.stdout.strip().splitlines()[-1])
    assert without_seconds(earlier["evals"]["heldout"]) == pytest.approx(without_seconds(during[(2, "heldout")]))

    mismatch = run_command(
        "rsclip_jax.evaluate",
        f"--workdir={workdir}",
        f"--config={recipe}",
        "--config.model.context_length=16",
        check=False,
    )
    assert mismatch.returncode != 0 and f"the checkpoint {workdir}/checkpoints/4 does not fit" in mismatch.stderr

    # As a user loads it in Python: the same recalls from the model and preprocessing `load_model` gives.
    model, preprocess = rs.load_model(workdir)
    with open(os.path.join(root, "captions.jsonl")) as f:
        entries = [json.loads(line) for line in f]
    images = np.stack([preprocess(Image.open(os.path.join(root, entry["image"]))) for entry in entries])
    texts = ["A photo of " + text for entry in entries for text in entry["captions"]]
    text_image = [i for i, entry in enumerate(entries) for _ in entry["captions"]]
    loaded = retrieval_recall(
        model.encode_image(images),
        model.encode_text(np.asarray(rs.tokenize(texts, model.config.context_length))),
        text_image,
    )
    assert loaded["i2t_r1"] == pytest.approx(during[(4, "heldout")]["i2t_r1"])
    assert loaded["t2i_r1"] == pytest.approx(during[(4, "heldout")]["t2i_r1"])

    out = run_command("rsclip_jax.report", workdir).stdout.strip().splitlines()[-1]
    for name in ("training.png", "eval.png"):
        with Image.open(os.path.join(out, name)) as image:
            assert image.format == "PNG" and image.width > 500
    summary = open(os.path.join(out, "README.md")).read()
    assert "| heldout | 4 | i2t_r1 |" in summary and "| shapes | 4 | top1 |" in summary


def test_evaluate_names_what_is_missing(tmp_path):
    result = run_command("rsclip_jax.evaluate", f"--workdir={tmp_path}", check=False, timeout=300)
    assert result.returncode != 0 and "config.json does not exist" in result.stderr and "give --config" in result.stderr


def test_evaluate_on_two_processes_is_one_run(tmp_path, demo_shards):
    root = write_retrieval_folder(list(read_shard(demo_shards["heldout"][0])), str(tmp_path / "heldout"))
    heldout = dict(kind="retrieval", dataset="jsonl", root=root, every_steps=0, batch_size=8)  # at the last step
    recipe = write_recipe(
        tmp_path / "recipe.py",
        train_shards=demo_shards["train"],
        total_steps=1,
        batch_size=8,
        evals={"heldout": heldout},
    )
    workdir = str(tmp_path / "run")
    run_command("rsclip_jax.train", f"--config={recipe}", f"--workdir={workdir}")
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        during = {key.split("/")[-1]: value for line in f for key, value in json.loads(line).items() if "eval/" in key}

    port = free_port()
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rsclip_jax.evaluate",
                f"--workdir={workdir}",
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=one_device(),
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    for p, (_, stderr) in zip(processes, outputs):
        assert p.returncode == 0, stderr[-3000:]
    # Joined, the two are one run over two devices: only process 0 prints, and the numbers are those of training's.
    assert not [line for line in outputs[1][0].splitlines() if line.startswith("{")]
    result = json.loads(outputs[0][0].strip().splitlines()[-1])
    assert without_seconds(result["evals"]["heldout"]) == pytest.approx(without_seconds(during))
