"""`python -m captioning run` with the real engines on a tiny random Qwen2-VL."""

import collections
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from captioning.images import decode_record_image
from conftest import make_images
from rsclip_jax.records import read_shard


def caption_command(images, out, model, *extra):
    return [sys.executable, "-m", "captioning", "run", "--images", images, "--out", out, "--model", model,
            "--max-tokens", "6", *extra]


def summary_of(stdout):
    """The run's JSON summary; vLLM writes its own log lines to stdout too, some after it."""
    return json.loads([line for line in stdout.splitlines() if line.startswith('{"shards_written"')][-1])


def all_records(out):
    return [r for path in sorted(glob.glob(os.path.join(out, "*.array_record"))) for r in read_shard(path)]


def check_records(out, image_ids, short_side=256):
    records = all_records(out)
    assert sorted(r.image_id for r in records) == sorted(image_ids)
    for record in records:
        assert collections.Counter((c.role, c.kind) for c in record.captions) == collections.Counter(
            (role, kind) for role in ["Observer of Details", "Interpreter of Context", "Compositional Analyst",
                                      "Narrative Setter", "Emotional Responder"] for kind in ("long", "short"))
        assert all(c.model and c.prompt_version == "rs-prompts-v1" for c in record.captions)
        assert min(decode_record_image(record.image_jpeg).size) <= short_side  # the training copy, resized
        assert record.original_size[1] == 240
    return records


def expected_ids(images):
    return [os.path.relpath(p, images) for p in glob.glob(os.path.join(images, "**", "img*"), recursive=True)]


@pytest.mark.parametrize("engine", ["transformers", pytest.param("vllm", marks=pytest.mark.slow)])
def test_run_writes_every_role_and_kind_and_counts_bad_files(engine, images, tiny_model, tmp_path):
    out = str(tmp_path / "out")
    extra = ["--engine", engine, "--short-side", "128", "--images-per-shard", "4"]
    if engine == "vllm":
        extra += ["--dtype", "float32", "--enforce-eager", "--max-model-len", "512", "--max-num-seqs", "8"]
    result = subprocess.run(caption_command(images, out, tiny_model, *extra), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(result.stdout)
    assert summary["images"] == 6 and summary["decode_errors"] == 2
    check_records(out, expected_ids(images), short_side=128)
    errors = [json.loads(line) for path in glob.glob(os.path.join(out, "*.errors.jsonl")) for line in open(path)]
    assert sorted(e["image_id"] for e in errors) == ["broken.jpg", "notes.txt"]
    manifest = [json.load(open(p)) for p in glob.glob(os.path.join(out, "manifest", "*.json"))]
    assert sum(m["records"] for m in manifest) == 6 and len({m["config_hash"] for m in manifest}) == 1


def test_run_killed_midway_and_restarted_captions_everything_once(tiny_model, tmp_path):
    images = make_images(str(tmp_path / "images"), 40)
    out = str(tmp_path / "out")
    command = caption_command(images, out, tiny_model, "--engine", "transformers", "--images-per-shard", "3")
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(glob.glob(os.path.join(out, "manifest", "*.json"))) < 3:
        assert run.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.wait()
    finished = len(glob.glob(os.path.join(out, "manifest", "*.json")))
    assert finished < 14  # 42 inputs in shards of 3: it died mid-run
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary_of(result.stdout)["shards_written"] == 14 - finished
    check_records(out, expected_ids(images))


def test_workers_split_the_shards_and_a_different_run_is_refused(images, tiny_model, tmp_path):
    out = str(tmp_path / "out")
    for worker in range(2):
        command = caption_command(images, out, tiny_model, "--engine", "transformers", "--images-per-shard", "2",
                                  "--num-workers", "2", "--worker-index", str(worker))
        assert subprocess.run(command, capture_output=True, timeout=600).returncode == 0
    check_records(out, expected_ids(images))
    other = subprocess.run(caption_command(images, out, tiny_model, "--engine", "transformers", "--images-per-shard",
                                           "2", "--seed", "7"), capture_output=True, text=True, timeout=600)
    assert other.returncode != 0 and "holds shards of another run" in other.stderr


def test_missing_engine_says_how_to_install(images, tiny_model, tmp_path):
    code = ("import sys; sys.modules['vllm'] = None; from captioning.cli import main; "
            f"main(['run', '--images', {images!r}, '--out', {str(tmp_path / 'o')!r}, '--model', {tiny_model!r}])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "engine 'vllm' needs vllm" in result.stderr and "make captioning-env" in result.stderr
