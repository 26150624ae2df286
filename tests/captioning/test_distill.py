"""`python -m captioning distill`: a student trained on exported judgements, then served as the judge."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from test_filter import ROLE, SizeRecordingJudge, filter_with, run_filter, write_input
from test_images import SHAPES

from captioning.distill import load_judgements
from captioning.images import covering_short_side, load_image, record_for_captioner
from captioning.run import write_captioner_info
from rsclip_jax.data.records import Caption, CaptionRecord, write_shard

# The teacher's answer in the judge's JSON format (the random tiny model's own answers never parse).
TEACHER_ANSWER = '{"score": 87, "rationale": "the caption matches the role"}'
VLLM_FLAGS = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "512", "--max-num-seqs", "8"]


def run_distill(judgements, student, out, *extra):
    # One thread: the tiny model's steps gain nothing from more, and on a busy machine torch's threads waiting
    # for each other took 80 steps from 16 s to 105 s.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "captioning",
            "distill",
            "--judgements",
            judgements,
            "--student",
            student,
            "--out",
            out,
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads([line for line in result.stdout.splitlines() if line.startswith('{"steps"')][-1])


@pytest.fixture(scope="module")
def shards_and_judgements(tiny_model, tmp_path_factory):
    """Caption shards and the real filter's export of them, its answers replaced by a teacher's, and one
    judgement without a score, as an unparseable answer or a failed request leaves."""
    folder = tmp_path_factory.mktemp("judged")
    write_input(str(folder / "in"))
    export = str(folder / "exported.jsonl")
    run_filter(
        str(folder / "in"),
        str(folder / "out"),
        "--judge-engine",
        "transformers",
        "--judge-model",
        tiny_model,
        "--max-tokens",
        "4",
        "--export-judgements",
        export,
    )
    judgements = [json.loads(line) for line in open(export)]
    assert len(judgements) == 4 and all(os.path.isfile(j["shard"]) for j in judgements)
    path = str(folder / "judgements.jsonl")
    with open(path, "w") as f:
        for j in judgements:
            f.write(json.dumps({**j, "answer": TEACHER_ANSWER, "score": 87}) + "\n")
        f.write(json.dumps({**judgements[0], "answer": None, "error": "ValueError: refused", "score": None}) + "\n")
    return str(folder / "in"), path


def judge_with(student, shards, out, engine, *extra):
    summary = run_filter(
        shards,
        out,
        "--judge-engine",
        engine,
        "--judge-model",
        student,
        "--temperature",
        "0",
        "--max-tokens",
        "32",
        *extra,
    )
    assert summary["captions_judged"] + summary["dropped"].get("judge_unparseable", 0) == 4
    return summary


@pytest.fixture(scope="module")
def full_student(tiny_model, shards_and_judgements, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("student") / "full")
    summary = run_distill(
        shards_and_judgements[1], tiny_model, out, "--max-steps", "80", "--learning-rate", "1e-2", "--batch-size", "2"
    )
    return out, summary


def test_full_finetune_learns_the_answers_and_serves_as_judge(full_student, shards_and_judgements, tmp_path):
    out, summary = full_student
    assert summary == {**summary, "steps": 80, "examples": 4, "skipped_unscored": 1, "lora": False}
    assert summary["loss_end"] < 0.1 * summary["loss_start"], summary
    assert json.load(open(os.path.join(out, "distill.json"))) == summary
    judged = judge_with(out, shards_and_judgements[0], str(tmp_path / "filtered"), "transformers")
    assert judged["captions_judged"] == 4  # it answers in the teacher's format, which the random model never does


@pytest.mark.slow
def test_full_finetune_serves_as_vllm_judge(full_student, shards_and_judgements, tmp_path):
    judged = judge_with(full_student[0], shards_and_judgements[0], str(tmp_path / "filtered"), "vllm", *VLLM_FLAGS)
    assert judged["captions_judged"] == 4


def test_lora_is_merged_into_a_plain_model_folder(tiny_model, shards_and_judgements, tmp_path):
    out = str(tmp_path / "lora")
    summary = run_distill(
        shards_and_judgements[1],
        tiny_model,
        out,
        "--lora",
        "--lora-rank",
        "8",
        "--max-steps",
        "24",
        "--learning-rate",
        "1e-2",
        "--batch-size",
        "2",
    )
    # The tiny model's untrained lm_head caps its logits near 1.3, so no adapter of the layers below it can take
    # the loss much under 4.7 (from 6.0): 15% is what LoRA can show here; training that did nothing stays at 6.0.
    assert summary["lora"] and summary["loss_end"] < 0.85 * summary["loss_start"], summary
    assert not os.path.exists(os.path.join(out, "adapter_config.json"))
    assert weight_names(out) == weight_names(tiny_model)  # merged: the base model's tensors, no lora_A / lora_B
    judge_with(out, shards_and_judgements[0], str(tmp_path / "filtered"), "transformers")


def test_the_judge_and_its_student_see_the_captioners_image_size(tmp_path):
    """Shards captioned at another --max-pixels than the default, as `captioning run` writes them: the filter's
    judge is given each image at the size the captioner saw, and so is `distill`, from the export."""
    max_pixels, records, captioners = 320 * 320, [], {}
    for name, shape in SHAPES.items():
        path = str(tmp_path / f"{name}.jpg")
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (*shape[::-1], 3), np.uint8)).save(path)
        copy, jpeg, size = load_image(path, short_side=covering_short_side(max_pixels), max_pixels=max_pixels)
        captioners[name] = copy.size
        records.append(CaptionRecord(name, jpeg, size, (Caption(ROLE, "short", "a caption of four words", "m", "v1"),)))
    os.makedirs(tmp_path / "in")
    write_shard(str(tmp_path / "in" / "captions-00000.array_record"), records)
    write_captioner_info(str(tmp_path / "in"), 0, max_pixels)
    judge, export = SizeRecordingJudge(), str(tmp_path / "judgements.jsonl")
    filter_with(str(tmp_path / "in"), str(tmp_path / "out"), judge, export)
    assert {records[r].image_id: size for (_, r, _), size in judge.sizes.items()} == captioners
    examples, _ = load_judgements(export)
    # what the student's dataset (distill._Examples) gives the processor for each example
    assert {record.image_id: record_for_captioner(record, pixels).size for _, record, pixels, _ in examples} == (
        captioners
    )


def weight_names(folder):
    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
        return set(f.keys())


def write_lines(path, lines):
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))
    return str(path)


def test_bad_judgements_are_errors_naming_the_file_and_line(shards_and_judgements, tmp_path):
    good = open(shards_and_judgements[1]).readline().strip()
    cases = {
        "empty": ([], "holds no judgement"),
        "malformed": ([good, "{not json"], "line 2: not JSON"),
        "missing": (
            [json.dumps({k: v for k, v in json.loads(good).items() if k != "shard"})],
            "line 1: missing 'shard'",
        ),
        "no_shard": (
            [good, json.dumps({**json.loads(good), "shard": str(tmp_path / "gone.array_record")})],
            "line 2: shard",
        ),
        "no_record": ([json.dumps({**json.loads(good), "record": 9})], "line 1: shard"),
        "no_max_pixels": (
            [json.dumps({k: v for k, v in json.loads(good).items() if k != "max_pixels"})],
            "line 1: missing 'max_pixels'",
        ),
        "unscored_only": (
            [
                json.dumps({**json.loads(good), "score": None}),
                json.dumps({**json.loads(good), "answer": None, "error": "x", "score": None}),
            ],
            "holds no judgement with a score (2 without one)",
        ),
    }
    for name, (lines, message) in cases.items():
        path = write_lines(tmp_path / f"{name}.jsonl", lines)
        with pytest.raises((ValueError, FileNotFoundError)) as error:
            load_judgements(path)
        assert str(error.value).startswith(path) and message in str(error.value), (name, str(error.value))


def test_cli_reports_bad_input_without_a_traceback(tiny_model, tmp_path):
    path = write_lines(tmp_path / "empty.jsonl", [])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "captioning",
            "distill",
            "--judgements",
            path,
            "--student",
            tiny_model,
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert result.stderr.strip() == f"error: {path} holds no judgement with a score (0 without one)"
