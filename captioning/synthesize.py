"""`python -m captioning synthesize`: captions of photos that were never taken (Synth², docs/method.md, section 7).

A text-only LLM reads a file of concepts, one a line, and makes up `per_concept` photos of each: for every photo an
annotator's plain description (role "Annotator", kind "long"), and with roles one long and one short caption per
role, each written from that description, so that all of a record's captions describe the same imagined photo.
The records have no image (`CaptionRecord.content == "captions only"`); a generator of image embeddings later
gives each the embedding its photo would have.

The run is `captioning run`'s (captioning/run.py): the concept lines cut into shards, each shard and then its
manifest entry written aside and renamed into place, a restarted run redoing only the shards without an entry,
workers splitting the shards, the same config-hash check, and `captioning status` reading the folder. Bad lines
(empty, a comment, too long, not UTF-8) are skipped, counted by reason and listed in their shard's errors file.
"""

import codecs
import dataclasses
import hashlib
import os
import time

from tqdm import tqdm

from captioning.engines import Request, request_seed
from captioning.images import shard_slices
from captioning.prompts import SCENE_KIND, SCENE_ROLE, SYNTH_PROMPT_VERSION, role_messages, scene_messages
from captioning.run import ShardWriter, SkippedInput, identity_hash, open_run, stream_shards
from rsclip_jax.data.records import CAPTION_KINDS, Caption, CaptionRecord

COMMENT = "#"  # a line whose first character other than white space is this is a comment
DEFAULT_MAX_CONCEPT_CHARS = 300
SKIP_REASONS = ("empty", "comment", "too_long", "not_utf8")


@dataclasses.dataclass(frozen=True)
class ConceptLine:
    number: int  # from 1, as an editor shows it
    concept: str | None  # the line stripped of white space; None for a line that is skipped
    reason: str | None = None  # why it is skipped: one of SKIP_REASONS
    detail: str | None = None


def read_concepts(path: str, max_chars: int = DEFAULT_MAX_CONCEPT_CHARS) -> tuple[list[ConceptLine], str]:
    """Every line of `path` (ended by \\n, \\r\\n or \\r), each a concept or skipped with its reason, and the
    sha256 of the file's bytes. UTF-8; a byte-order mark before the first line is dropped."""
    with open(path, "rb") as f:
        data = f.read()
    lines = []
    for number, raw in enumerate(data.splitlines(), 1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            lines.append(ConceptLine(number, None, "not_utf8", f"{e.reason} at byte {e.start}: {raw[:60]!r}"))
            continue
        if not text:
            lines.append(ConceptLine(number, None, "empty"))
        elif text.startswith(COMMENT):
            lines.append(ConceptLine(number, None, "comment"))
        elif len(text) > max_chars:
            detail = f"{len(text)} characters, more than --max-concept-chars {max_chars}: {text[:60]!r}..."
            lines.append(ConceptLine(number, None, "too_long", detail))
        else:
            lines.append(ConceptLine(number, text))
    return lines, hashlib.sha256(data).hexdigest()


def synthesis_shards(engine, lines, shards, items, roles, *, per_concept, seed, id_prefix):
    """Yields (shard index, records, errors) as shards complete (run.stream_shards). `shards` maps shard index ->
    line indices, `items` yields ((shard index, line index), ConceptLine) in that order.

    Slots: (n,) asks for photo n's description; once it comes back, (n, role index, kind) ask each role for its
    captions of that description. A description the engine failed or left empty is an error, and its photo is
    lost with it (there is nothing for the roles to caption); an empty role caption is an error too."""
    role_slots = [(r, kind) for r in range(len(roles.roles)) for kind in CAPTION_KINDS] if roles else []

    def ask(i, line):
        if line.concept is None:
            detail = {"detail": line.detail} if line.detail else {}
            raise SkippedInput({"line": line.number, "reason": line.reason, **detail})
        messages = scene_messages(line.concept)
        seeds = [request_seed(seed, "synthesize", line.number, n) for n in range(per_concept)]
        return line, [((n,), Request(None, messages, seeds[n])) for n in range(per_concept)]

    def follow_up(i, slot, text, error):
        if len(slot) > 1 or error is not None or not text.strip():
            return []
        (n,), number = slot, lines[i].number
        return [
            (
                (n, r, kind),
                Request(
                    None,
                    role_messages(text.strip(), roles.roles[r], kind),
                    request_seed(seed, "synthesize", number, n, roles.roles[r].name, kind),
                ),
            )
            for r, kind in role_slots
        ]

    def finish(shard):
        records, errors = [], list(shard.errors)
        for i, line in shard.loaded:
            for n in range(per_concept):
                image_id = f"{id_prefix}/{line.number}/{n}"
                slots = [((n,), SCENE_ROLE, SCENE_KIND)]
                slots += [((n, r, kind), roles.roles[r].name, kind) for r, kind in role_slots]
                captions = []
                for slot, role, kind in slots:
                    if (i, slot) not in shard.answers:  # never asked: the description failed
                        continue
                    text, error = shard.answers[i, slot]
                    if error is None and not text.strip():
                        error = "empty generation"
                    if error is None:
                        captions.append(Caption(role, kind, text.strip(), engine.model_name, SYNTH_PROMPT_VERSION))
                        continue
                    if len(slot) == 1 and role_slots:
                        error += "; the photo is lost: there is no description for the roles to caption"
                    row = {"image_id": image_id, "line": line.number, "role": role, "kind": kind, "reason": error}
                    errors.append(row)
                if captions:
                    records.append(CaptionRecord(image_id, None, None, tuple(captions), None))
        return records, errors

    sizes = {k: len(indices) for k, indices in shards.items()}
    yield from stream_shards(engine, sizes, items, ask, finish, follow_up)


def synthesize(
    concepts_path: str,
    out_dir: str,
    make_engine,
    roles,
    *,
    settings: dict,
    per_concept: int,
    concepts_per_shard: int,
    num_workers: int,
    worker_index: int,
    seed: int,
    max_concept_chars: int = DEFAULT_MAX_CONCEPT_CHARS,
) -> dict:
    """Writes this worker's unfinished shards of captions for `per_concept` imagined photos per concept line;
    returns the summary of what it wrote. `roles` (a RoleSet or None) adds each role's long and short captions;
    `settings` (engine, model, sampling) enters the config hash with the concepts file's bytes and the arguments
    here. A record's image id is concept/<config hash>/<line number>/<n>: stable across restarts, and no two runs'
    photos share one (the trainer takes captions with the same id for captions of the same image)."""
    if per_concept < 1:
        raise ValueError(f"--per-concept {per_concept} must be at least 1")
    if roles and SCENE_ROLE in {role.name for role in roles.roles}:
        raise ValueError(f"role name {SCENE_ROLE!r} is taken by the description each role's captions follow")
    lines, digest = read_concepts(concepts_path, max_concept_chars)
    identity = {
        "command": "synthesize",
        "settings": settings,
        "roles": roles and [vars(role) for role in roles.roles],
        "roles_version": roles and roles.version,
        "prompt_version": SYNTH_PROMPT_VERSION,
        "per_concept": per_concept,
        "concepts_per_shard": concepts_per_shard,
        "max_concept_chars": max_concept_chars,
        "seed": seed,
        "concepts_sha256": digest,
    }
    config_hash = identity_hash(identity)
    shards = shard_slices(len(lines), concepts_per_shard)
    todo = open_run(
        out_dir,
        shards,
        config_hash,
        num_workers=num_workers,
        worker_index=worker_index,
        info={
            "command": "synthesize",
            "concepts_file": os.path.abspath(concepts_path),
            "lines_total": len(lines),
            "concepts_total": sum(line.concept is not None for line in lines),
            "per_concept": per_concept,
        },
    )
    summary = {
        "shards_written": len(todo),
        "lines": 0,
        "concepts": 0,
        "records": 0,
        "skipped_lines": {},
        "caption_errors": 0,
        "captions": {},
        "mean_words": {},
        "seconds": 0.0,
        "prefix_cache_hit_rate": None,
    }
    if not todo:
        return summary
    engine = make_engine()
    items = (((k, i), lines[i]) for k, indices in todo.items() for i in indices)
    writer = ShardWriter(out_dir, config_hash)
    start = time.perf_counter()
    with tqdm(total=sum(map(len, todo.values())), unit="line", desc=f"worker {worker_index}") as bar:
        shard_stream = synthesis_shards(
            engine, lines, todo, items, roles, per_concept=per_concept, seed=seed, id_prefix=f"concept/{config_hash}"
        )
        for k, records, errors in shard_stream:
            skipped = [lines[i].reason for i in shards[k] if lines[i].concept is None]
            counts = {
                "lines": len(shards[k]),
                "concepts": len(shards[k]) - len(skipped),
                "skipped_lines": {reason: skipped.count(reason) for reason in SKIP_REASONS if reason in skipped},
                "caption_errors": sum("role" in e for e in errors),
            }
            writer.write(k, records, errors, counts)
            bar.update(len(shards[k]))
    return {
        **summary,
        "lines": writer.totals["lines"],
        "concepts": writer.totals["concepts"],
        "records": writer.totals["records"],
        "skipped_lines": dict(writer.breakdowns["skipped_lines"]),
        "caption_errors": writer.totals["caption_errors"],
        "captions": writer.tally.counts(),
        "mean_words": writer.tally.mean_words(),
        "seconds": round(time.perf_counter() - start, 1),
        "prefix_cache_hit_rate": engine.prefix_cache_hit_rate(),
    }
