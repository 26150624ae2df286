"""`python -m captioning synthesize`: captions of imagined photos from a text-only LLM, on a tiny random Qwen2
through the real vLLM (one engine for the module) and transformers engines, and on a scripted engine for the
answers a random model seldom gives (empty ones)."""

import collections
import contextlib
import glob
import json
import os

import pytest

import captioning.cli
from captioning.cli import main
from captioning.engines import make_engine
from captioning.prompts import SCENE_ROLE, SYNTH_PROMPT_VERSION
from captioning.roles import load_roles
from captioning.run import manifest_path
from captioning.synthesize import read_concepts, synthesize
from rsclip_jax.data.records import CAPTION_KINDS, read_shard

# 7 lines: 3 concepts; an empty line, a comment, one too long, one not UTF-8 (and a byte-order mark, a CRLF).
CONCEPTS = (
    b"\xef\xbb\xbfa red bicycle against a brick wall\n\n# water birds\na heron in shallow water\n"
    + b"y" * 301
    + b"\n\xff\xfe broken\n  two dogs on a beach  \r\n"
)
GOOD_LINES = {1: "a red bicycle against a brick wall", 4: "a heron in shallow water", 7: "two dogs on a beach"}
SKIPPED = {"empty": 1, "comment": 1, "too_long": 1, "not_utf8": 1}
ROLE_FILE = os.path.join(os.path.dirname(captioning.cli.__file__), "role_files", "default-v1.json")


@pytest.fixture
def concepts(tmp_path):
    path = tmp_path / "concepts.txt"
    path.write_bytes(CONCEPTS)
    return str(path)


def summary_of(stdout):
    """The command's JSON summary; vLLM writes its own log lines to stdout too."""
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def records_by_shard(out):
    paths = sorted(glob.glob(os.path.join(out, "*.array_record")))
    return {os.path.basename(path): list(read_shard(path)) for path in paths}


def error_rows(out):
    return [json.loads(line) for path in glob.glob(os.path.join(out, "*.errors.jsonl")) for line in open(path)]


def check_output(out, per_concept, roles):
    """Every imagined photo once: a record holding each (role, kind) asked for that the engine answered, every other
    one an error row, or the photo lost with its description; the bad lines listed. Returns the records by id."""
    slots = [(SCENE_ROLE, "long")] + [(role, kind) for role in roles for kind in CAPTION_KINDS]
    records = [r for shard in records_by_shard(out).values() for r in shard]
    by_id = {r.image_id: r for r in records}
    assert len(by_id) == len(records)  # no photo twice
    errors = error_rows(out)
    failed = collections.defaultdict(set)
    for e in errors:
        if "role" in e:
            failed[e["image_id"]].add((e["role"], e["kind"]))
    run_hash = json.load(open(os.path.join(out, "run.json")))["config_hash"]
    expected = {f"concept/{run_hash}/{line}/{n}" for line in GOOD_LINES for n in range(per_concept)}
    assert set(by_id) | set(failed) == expected
    for image_id in expected:
        if image_id not in by_id:  # lost with its description
            assert failed[image_id] == {(SCENE_ROLE, "long")}
            continue
        record = by_id[image_id]
        assert record.content == "captions only" and record.image_jpeg is None and record.original_size is None
        asked = {(c.role, c.kind) for c in record.captions} | failed[image_id]
        assert asked == set(slots) and len(record.captions) + len(failed[image_id]) == len(slots)
        assert all(c.text and c.model and c.prompt_version == SYNTH_PROMPT_VERSION for c in record.captions)
    assert sorted((e["line"], e["reason"]) for e in errors if "role" not in e) == [
        (2, "empty"),
        (3, "comment"),
        (5, "too_long"),
        (6, "not_utf8"),
    ]
    return by_id


def test_concept_lines_and_the_lines_skipped(concepts):
    lines, digest = read_concepts(concepts, max_chars=300)
    assert {line.number: line.concept for line in lines if line.concept} == GOOD_LINES
    assert {line.number: line.reason for line in lines if not line.concept} == {
        2: "empty",
        3: "comment",
        5: "too_long",
        6: "not_utf8",
    }
    assert read_concepts(concepts, max_chars=301)[0][4].concept == "y" * 301
    assert len(digest) == 64


class ScriptedEngine:
    """Answers by the prompt: every description of the heron empty, the Observer's short captions failed, the
    Narrative Setter's empty, every other answer its request's seed."""

    model_name = "scripted"

    def stream(self, requests):
        for key, request in requests:  # one at a time, as the transformers engine takes them
            prompt = request.messages[-1]["content"]
            if "Concept: a heron" in prompt:
                yield key, "  \n", None
            elif "You are the Observer of Details" in prompt and "one sentence" in prompt:
                yield key, None, "the engine refused it"
            elif "You are the Narrative Setter" in prompt:
                yield key, "", None
            else:
                yield key, f"answer {request.seed}", None

    def prefix_cache_hit_rate(self):
        return None


def test_empty_and_failed_generations_are_counted_and_the_rest_kept(concepts, tmp_path):
    roles = load_roles()
    out = str(tmp_path / "out")
    arguments = dict(settings={}, per_concept=2, concepts_per_shard=4, num_workers=1, worker_index=0, seed=0)
    summary = synthesize(concepts, out, ScriptedEngine, roles, **arguments)
    names = [role.name for role in roles.roles]
    by_id = check_output(out, 2, names)
    assert len(by_id) == 4  # the heron's two photos are lost: they have no description
    for record in by_id.values():
        assert {(c.role, c.kind) for c in record.captions} == {(SCENE_ROLE, "long")} | {
            (role, kind)
            for role in names
            for kind in CAPTION_KINDS
            if role != "Narrative Setter" and (role, kind) != ("Observer of Details", "short")
        }
    assert summary["caption_errors"] == 2 + 4 * 3 and summary["records"] == 4 and summary["skipped_lines"] == SKIPPED
    assert summary["captions"][f"{SCENE_ROLE}/long"] == 4 and summary["shards_written"] == 2
    again = synthesize(concepts, out, ScriptedEngine, roles, **arguments)
    assert again["shards_written"] == 0
    with pytest.raises(ValueError, match="holds shards of another run"):
        synthesize(concepts, out, ScriptedEngine, roles, **{**arguments, "per_concept": 3})


def synth_command(concepts, out, model, *extra):
    return ["synthesize", "--concepts", concepts, "--out", out, "--model", model, "--max-tokens", "6", *extra]


def test_transformers_engine_through_the_cli_resumes_and_status_counts(concepts, tiny_text_model, tmp_path, capsys):
    roles = tmp_path / "roles.json"  # one role: three requests a photo
    roles.write_text(json.dumps({"version": "one", "roles": [vars(load_roles().roles[0])]}))
    out = str(tmp_path / "out")
    command = synth_command(
        concepts, out, tiny_text_model, "--engine", "transformers", "--roles", str(roles), "--concepts-per-shard", "3"
    )
    with pytest.raises(SystemExit, match="needs --temperature above 0"):
        main([*command, "--per-concept", "2", "--temperature", "0"])
    main([*command, "--per-concept", "2"])
    summary = summary_of(capsys.readouterr().out)
    assert summary["shards_written"] == 3 and summary["lines"] == 7 and summary["concepts"] == 3
    assert summary["skipped_lines"] == SKIPPED
    by_id = check_output(out, 2, ["Observer of Details"])
    assert summary["records"] == len(by_id)
    main([*command, "--per-concept", "2"])  # finished: nothing to do
    assert summary_of(capsys.readouterr().out)["shards_written"] == 0
    main(["status", "--out", out])
    captured = capsys.readouterr()
    status = summary_of(captured.out)
    assert (status["shards_done"], status["shards_total"], status["missing"]) == (3, 3, [])
    assert (status["lines"], status["lines_total"], status["concepts"], status["concepts_total"]) == (7, 7, 3, 3)
    assert status["records"] == len(by_id) and status["skipped_lines"] == SKIPPED
    assert status["captions"] == summary["captions"]
    assert "lines     7 of 7 (3 concepts)" in captured.err and "skipped   comment 1, empty 1" in captured.err


@pytest.fixture(scope="module")
def vllm_engine(tiny_text_model):
    """One vLLM engine for the module's runs: its start is most of their time."""
    engine = make_engine(
        "vllm",
        tiny_text_model,
        sampling=None,  # each run sets its own
        text_only=True,
        dtype="float32",
        enforce_eager=True,
        max_model_len=512,
        max_num_seqs=8,
    )
    yield engine
    engine.llm.llm_engine.engine_core.shutdown()


@pytest.fixture
def shared_vllm(vllm_engine, monkeypatch):
    """The CLI's vLLM engine is the module's, with the run's sampling; `kill_after_first_shard` makes the next
    run's engine stop it once its first shard's manifest entry is written, as if the process had died there."""
    killing = {}

    def engine_for_run(name, model, *, sampling, text_only, **engine_args):
        assert name == "vllm" and text_only
        vllm_engine.sampling = sampling
        return KillAfterFirstShard(vllm_engine, killing.pop("out")) if killing else vllm_engine

    monkeypatch.setattr(captioning.cli, "make_engine", engine_for_run)
    return killing


class Killed(Exception):
    pass


class KillAfterFirstShard:
    def __init__(self, engine, out):
        self.engine, self.out = engine, out

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def stream(self, requests):
        with contextlib.closing(self.engine.stream(requests)) as answers:
            for answer in answers:
                if os.path.exists(manifest_path(self.out, 0)):
                    raise Killed  # with requests in flight, which the engine must abort to serve the next run
                yield answer


def vllm_command(concepts, out, model):
    """Five roles, two photos a concept (66 requests), in three shards."""
    extra = ["--roles", ROLE_FILE, "--per-concept", "2", "--concepts-per-shard", "3", "--temperature", "0.8"]
    return synth_command(concepts, out, model, "--engine", "vllm", "--max-model-len", "512", *extra)


@pytest.mark.slow
def test_vllm_writes_records_without_images_and_status_counts_them(
    concepts, tiny_text_model, shared_vllm, tmp_path, capsys
):
    out = str(tmp_path / "out")
    main(vllm_command(concepts, out, tiny_text_model))
    summary = summary_of(capsys.readouterr().out)
    roles = [role.name for role in load_roles().roles]
    by_id = check_output(out, 2, roles)
    shards = records_by_shard(out)
    assert sorted(shards) == [f"captions-0000{k}.array_record" for k in range(3)]
    assert {r.image_id.split("/")[2] for r in shards["captions-00001.array_record"]} <= {"4"}  # lines 4-6
    assert summary["records"] == len(by_id) and summary["skipped_lines"] == SKIPPED
    assert sum(summary["captions"].values()) + summary["caption_errors"] == 6 * 11 - 10 * (6 - len(by_id))
    assert summary["prefix_cache_hit_rate"] > 0.3  # a photo's role requests share its description
    assert {c.model for r in by_id.values() for c in r.captions} == {os.path.basename(tiny_text_model)}
    main(["status", "--out", out])
    status = summary_of(capsys.readouterr().out)
    assert status["shards_done"] == 3 and status["records"] == len(by_id) and status["captions"] == summary["captions"]
    assert status["errors"] == {"caption_errors": summary["caption_errors"]}


@pytest.mark.slow
def test_vllm_run_killed_after_a_shard_resumes_with_the_same_captions_once(
    concepts, tiny_text_model, shared_vllm, tmp_path, capsys
):
    """Killed after its first shard, the run resumes with the other two, and seeded sampling gives every caption the
    text an uninterrupted run gives it."""
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    main(vllm_command(concepts, whole, tiny_text_model))
    shared_vllm["out"] = killed
    with pytest.raises(Killed):
        main(vllm_command(concepts, killed, tiny_text_model))
    assert os.listdir(os.path.join(killed, "manifest")) == ["captions-00000.json"]
    first_shard = os.stat(os.path.join(killed, "captions-00000.array_record"))
    capsys.readouterr()
    main(vllm_command(concepts, killed, tiny_text_model))  # the same engine: what the kill left in it was aborted
    assert summary_of(capsys.readouterr().out)["shards_written"] == 2
    assert os.stat(os.path.join(killed, "captions-00000.array_record")).st_mtime_ns == first_shard.st_mtime_ns
    main(vllm_command(concepts, killed, tiny_text_model))
    assert summary_of(capsys.readouterr().out)["shards_written"] == 0
    roles = [role.name for role in load_roles().roles]
    texts = [
        {(r.image_id, c.role, c.kind): c.text for r in check_output(out, 2, roles).values() for c in r.captions}
        for out in (whole, killed)
    ]
    assert texts[0] == texts[1] and len(texts[0]) > 30
