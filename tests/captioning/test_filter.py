"""`python -m captioning filter`: length rules, the judge's global quantile drop, unparseable answers."""

import io
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from captioning.cli import build_parser
from captioning.filter import filter_shards, lowest_fraction, parse_judgement
from captioning.images import DEFAULT_MAX_PIXELS
from captioning.prompts import JUDGE_SCHEMA, judge_messages
from captioning.roles import load_roles
from captioning.run import captioner_info_path, write_captioner_info
from rsclip_jax.data.records import Caption, CaptionRecord, read_shard, write_shard

ROLE = "Observer of Details"


def caption(kind, words):
    return Caption(ROLE, kind, " ".join(["word"] * words), "m", "v1")


def write_input(folder):
    os.makedirs(folder)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    records = [
        CaptionRecord(
            "a", jpeg, (64, 48), (caption("long", 12), caption("short", 5), caption("long", 9)), alt_text="a green card"
        ),
        CaptionRecord("b", jpeg, (64, 48), (caption("short", 3),)),  # nothing survives: dropped
        CaptionRecord("c", jpeg, (64, 48), (caption("long", 10), caption("short", 4))),
    ]
    write_shard(os.path.join(folder, "captions-00000.array_record"), records)
    write_captioner_info(folder, 0, DEFAULT_MAX_PIXELS)


class SizeRecordingJudge:
    """An engine that gives every request the same score and keeps the size of the image it was shown."""

    def __init__(self):
        self.sizes = {}

    def stream(self, keyed_requests):
        for key, request in keyed_requests:
            self.sizes[key] = request.image.size
            yield key, '{"score": 50, "rationale": "fine"}', None


def filter_with(in_dir, out_dir, judge, export_path=None):
    return filter_shards(
        in_dir,
        out_dir,
        load_roles(),
        min_long_words=10,
        min_short_words=4,
        make_judge=lambda: judge,
        drop_fraction=0.0,
        export_path=export_path,
        seed=0,
    )


def run_filter(in_dir, out_dir, *extra):
    result = subprocess.run(
        [sys.executable, "-m", "captioning", "filter", "--in", in_dir, "--out", out_dir, *extra],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads([line for line in result.stdout.splitlines() if line.startswith('{"dropped"')][-1])


def test_length_rules_drop_short_captions_and_empty_images(tmp_path):
    write_input(str(tmp_path / "in"))
    summary = run_filter(str(tmp_path / "in"), str(tmp_path / "out"))
    assert summary["dropped"] == {"too_short_long": 1, "too_short_short": 1, "images_without_captions": 1}
    kept = list(read_shard(tmp_path / "out" / "captions-00000.array_record"))
    assert [(r.image_id, [len(c.text.split()) for c in r.captions]) for r in kept] == [("a", [12, 5]), ("c", [10, 4])]
    assert [r.alt_text for r in kept] == ["a green card", None]  # carried through as it was


def test_the_judge_needs_the_captioners_max_pixels_and_the_filtered_shards_keep_it(tmp_path):
    write_input(str(tmp_path / "in"))
    filter_with(str(tmp_path / "in"), str(tmp_path / "out"), SizeRecordingJudge())
    assert json.load(open(captioner_info_path(str(tmp_path / "out")))) == {"max_pixels": DEFAULT_MAX_PIXELS}
    os.remove(captioner_info_path(str(tmp_path / "in")))
    with pytest.raises(ValueError, match=r"has no captioner.json.*\{\"max_pixels\": N\}"):
        filter_with(str(tmp_path / "in"), str(tmp_path / "judged"), SizeRecordingJudge())
    run_filter(str(tmp_path / "in"), str(tmp_path / "lengths only"))  # without a judge, none is needed


@pytest.mark.parametrize(
    "answer,expected",
    [
        ('{"score": 87, "rationale": "fits"}', (87.0, "fits")),
        ('```json\n{"score": 64, "rationale": "misses the mood"}\n```', (64.0, "misses the mood")),  # fenced
        ('noise {"score": 12} more', (12.0, "")),
        ('{"rationale": "fine", "score": 90.5}', (90.5, "fine")),
        ('{"score": "not a number"} Score: 40', (40.0, '{"score": "not a number"} Score: 40')),
        ("Score: 55 because it is fine", (55.0, "Score: 55 because it is fine")),
        (
            "**Score**: 72/100. The caption names every object.",
            (72.0, "**Score**: 72/100. The caption names every object."),
        ),
        ('{"score": 300}', None),
        ('{"score": true}', None),
        ("no idea", None),
        ("I would give it 80.", None),
        ("", None),
    ],
)
def test_parse_judgement_with_and_without_json(answer, expected):
    assert parse_judgement(answer) == expected


def test_judge_prompt_names_the_role_and_its_job_after_the_image_and_asks_for_json():
    role, caption = load_roles().roles[2], "A red cube sits left of a blue ball."
    messages = judge_messages(role, caption)
    system = messages[0]["content"]
    assert messages[0]["role"] == "system" and '{"score"' in system and "1 to 100" in system
    image, text = messages[1]["content"]
    assert image == {"type": "image"}  # the image first: its tokens are shared with its other captions' requests
    assert text["text"] == f"Role: {role.name}. Its job: {role.responsibilities}\nCaption: {caption}"
    assert JUDGE_SCHEMA["required"] == ["score", "rationale"]


def test_the_judge_is_greedy_unless_told_otherwise():
    parser = build_parser()
    assert parser.parse_args(["filter", "--in", "i", "--out", "o"]).temperature == 0.0
    assert parser.parse_args(["filter", "--in", "i", "--out", "o", "--temperature", "0.5"]).temperature == 0.5
    assert parser.parse_args(["run", "--images", "i", "--out", "o", "--model", "m"]).temperature == 0.7


def test_lowest_fraction_is_global_and_exact():
    scores = {(s, r, 0): (float(v), "") for s, row in enumerate([[50, 10], [90, 20, 70]]) for r, v in enumerate(row)}
    assert lowest_fraction(scores, 0.4) == {(0, 1, 0), (1, 1, 0)}  # 10 and 20, across both shards
    assert lowest_fraction(scores, 0.0) == set()


@pytest.mark.slow
def test_vllm_judge_scores_every_caption_and_drops_the_lowest_fraction(tiny_model, tmp_path):
    write_input(str(tmp_path / "in"))
    export = str(tmp_path / "judgements.jsonl")
    summary = run_filter(
        str(tmp_path / "in"),
        str(tmp_path / "out"),
        "--judge-engine",
        "vllm",
        "--judge-model",
        tiny_model,
        "--drop-fraction",
        "0.5",
        "--export-judgements",
        export,
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "512",
        "--max-tokens",
        "96",
        # sampled: greedy, the random model writes "{" and then whitespace, within the schema, until max-tokens
        "--temperature",
        "0.7",
    )
    judged = [json.loads(line) for line in open(export)]
    assert len(judged) == 4  # the captions that passed the length rules
    # Structured output holds even a random model to the JSON schema: every answer parses.
    assert all(j["score"] is not None for j in judged) and summary["captions_judged"] == 4
    assert summary["dropped"]["judge_low_score"] == 2
    kept = [c for r in read_shard(tmp_path / "out" / "captions-00000.array_record") for c in r.captions]
    assert all(c.judge_score is None or 1 <= c.judge_score <= 100 for c in kept)
    assert all(j["messages"][1]["content"][0] == {"type": "image"} for j in judged)


def test_unparseable_judge_answers_are_counted_not_fatal(tiny_model, tmp_path):
    write_input(str(tmp_path / "in"))
    summary = run_filter(
        str(tmp_path / "in"),
        str(tmp_path / "out"),
        "--judge-engine",
        "transformers",
        "--judge-model",
        tiny_model,
        "--drop-fraction",
        "0.5",
        "--max-tokens",
        "6",
    )
    # The random model's free text never parses: every judged caption is counted and kept unscored.
    assert summary["dropped"]["judge_unparseable"] == 4 and summary["captions_judged"] == 0
    assert summary["images_kept"] == 2
