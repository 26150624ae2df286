"""A captioning run: images -> caption shards, resumable, split across workers without coordination.

Shard k is written aside and renamed into place (by `write_shard`), then its manifest entry (counts, config hash) is
written the same way; a shard counts as finished only when its manifest entry exists. A run killed at
any moment and started again redoes only unfinished shards: every (image, role, kind) ends up once.

The machinery (`open_run`, `stream_shards`, `ShardWriter`) serves `captioning synthesize` too, whose inputs are
concept lines instead of images (captioning/synthesize.py).
"""

import collections
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import time

from tqdm import tqdm

from captioning.engines import Request, request_seed
from captioning.images import shard_slices
from captioning.prompts import PROMPT_VERSION, caption_messages
from captioning.readahead import ReadAhead
from captioning.tally import CaptionTally
from rsclip_jax.data.records import CAPTION_KINDS, Caption, CaptionRecord, write_shard

_MANIFEST_ENTRY = re.compile(r"captions-(\d+)\.json")  # shard_name(k) + ".json"


def shard_name(index: int) -> str:
    return f"captions-{index:05d}"


def manifest_dir(out_dir: str) -> str:
    return os.path.join(out_dir, "manifest")


def manifest_path(out_dir: str, k: int) -> str:
    return os.path.join(manifest_dir(out_dir), shard_name(k) + ".json")


def manifest_shard(name: str) -> int | None:
    """The shard whose manifest entry is the file `name`; None for any other file (an entry still being written)."""
    match = _MANIFEST_ENTRY.fullmatch(name)
    return int(match[1]) if match else None


def run_info_path(out_dir: str) -> str:
    return os.path.join(out_dir, "run.json")


def _atomic_write(path: str, write, temporary: str | None = None) -> None:
    temporary = temporary or path + ".tmp"
    write(temporary)
    os.replace(temporary, path)


def _write_jsonl(path: str, rows) -> None:
    def write(temporary):
        with open(temporary, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)

    _atomic_write(path, write)


def _dump_json(path: str, payload) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)


def _write_json(path: str, payload) -> None:
    _atomic_write(path, lambda temporary: _dump_json(temporary, payload))


def captioner_info_path(shards_dir: str) -> str:
    """captioner.json beside a folder's shards: the captioner's --max-pixels, with which the judge and a distilled
    student rebuild the image the captioner saw (images.record_for_captioner), whatever the run's settings."""
    return os.path.join(shards_dir, "captioner.json")


def _write_once(path: str, worker_index: int, info: dict) -> None:
    """Workers may start together: each writes the same content under its own temporary name, so any rename
    leaves a whole file."""
    if not os.path.exists(path):
        _atomic_write(path, lambda temporary: _dump_json(temporary, info), temporary=f"{path}.{worker_index}.tmp")


def write_captioner_info(out_dir: str, worker_index: int, max_pixels: int) -> None:
    _write_once(captioner_info_path(out_dir), worker_index, {"max_pixels": max_pixels})


def read_json(path: str) -> dict | None:
    """A manifest entry, run.json or captioner.json; None where it is not written (yet)."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it, and a run started again redoes its shard") from e


def identity_hash(identity: dict) -> str:
    """The config hash of a run's identity (JSON-able): what its manifest entries and run.json carry."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def run_config_hash(settings: dict, inputs: list[tuple[str, str]], alt_texts: dict[str, str] | None = None) -> str:
    """Hash of everything that decides the output: settings, roles, prompts, the input list and the alt texts.

    The alt texts count by content, not by source: a run resumed with other alt text is refused (its shards
    would disagree), one resumed with the same text from another file or from sidecars is the same run. Without
    alt text the hash is what it was before runs kept alt text, so those runs still resume."""
    identity = {"settings": settings, "inputs": [image_id for image_id, _ in inputs]}
    if alt_texts:
        identity["alt_texts"] = alt_texts
    return identity_hash(identity)


class SkippedInput(Exception):
    """Raised by `stream_shards`' `ask` for an input that gets no request (a file that does not decode, a bad
    concept line): `row` goes to its shard's errors file and the shard completes without it."""

    def __init__(self, row: dict):
        super().__init__(row)
        self.row = row


@dataclasses.dataclass
class Shard:
    """A shard in flight: its inputs as they are asked about, and the engine's answers as they come back."""

    size: int
    loaded: list = dataclasses.field(default_factory=list)  # (input index, what `ask` kept of it)
    errors: list = dataclasses.field(default_factory=list)  # the rows of skipped inputs
    answers: dict = dataclasses.field(default_factory=dict)  # (input index, slot) -> (text, error)
    seen: int = 0
    asked: int = 0

    def complete(self) -> bool:
        return self.seen == self.size and len(self.answers) == self.asked


class _FollowUpsFirst:
    """The engine's request source: follow-ups queued from answers first, then the next input's requests. It may
    run dry and fill again (a follow-up is queued while the engine holds its parent's answer out), so it is no
    generator: the engines ask it again after it once had nothing."""

    def __init__(self, fresh):
        self.queue, self._fresh = collections.deque(), fresh

    def __iter__(self):
        return self

    def __next__(self):
        return self.queue.popleft() if self.queue else next(self._fresh)


def stream_shards(engine, sizes: dict, items, ask, finish, follow_up=None):
    """Yields (shard index, records, errors) as shards complete, streaming every shard's requests to `engine`.

    - `sizes`: shard index -> how many inputs it holds; `items` yields ((shard index, input index), input) in
      shard order.
    - `ask(i, input)` -> (kept, [(slot, Request)]): what `finish` will see of input i, and its requests; or it
      raises SkippedInput.
    - `follow_up(i, slot, text, error)` -> [(slot, Request)]: requests that an answer calls for (optional).
    - `finish(shard)` -> (records, errors) of a complete Shard.

    Each input's requests reach the engine as soon as it is read, across shard boundaries, so neither the host
    nor the slowest answer of a shard holds the engine up; a shard completes when every request asked for it,
    follow-ups included, is answered.
    """
    flight, touched = {}, set()  # shards with an input seen; those whose state changed since the last check

    def fresh():
        for (k, i), item in items:
            shard = flight.setdefault(k, Shard(sizes[k]))
            shard.seen += 1
            touched.add(k)
            try:
                kept, asked = ask(i, item)
            except SkippedInput as skipped:
                shard.errors.append(skipped.row)
                continue
            shard.loaded.append((i, kept))
            shard.asked += len(asked)  # all at once: the shard is not complete while any of them is unanswered
            for slot, request in asked:
                yield (k, i, slot), request

    def completed():
        for k in [k for k in touched if flight[k].complete()]:
            yield (k, *finish(flight.pop(k)))
        touched.clear()

    requests = _FollowUpsFirst(fresh())
    with contextlib.closing(engine.stream(requests)) as answers:  # closed early: the engine aborts what is left
        for (k, i, slot), text, error in answers:
            shard = flight[k]
            for next_slot, request in follow_up(i, slot, text, error) if follow_up else ():
                shard.asked += 1
                requests.queue.append(((k, i, next_slot), request))
            shard.answers[i, slot] = (text, error)
            touched.add(k)
            yield from completed()
    yield from completed()


def caption_shards(engine, inputs, shards, roles, images, *, seed, alt_texts=None):
    """Yields (shard index, records, errors) as shards complete; `shards` maps shard index -> input indices,
    `images` yields ((shard index, input index), load_image's result or its exception) in that order, and
    `alt_texts` maps image id -> the alt text its record keeps."""
    slots = [(role, kind) for role in roles.roles for kind in CAPTION_KINDS]
    alt_texts = alt_texts or {}

    def ask(i, loaded):
        image_id, path = inputs[i]
        if isinstance(loaded, Exception):
            raise SkippedInput({"image_id": image_id, "path": path, "reason": f"{type(loaded).__name__}: {loaded}"})
        image, jpeg, size = loaded  # the image itself stays with its requests only
        return (image_id, jpeg, size), [
            (s, Request(image, caption_messages(role, kind), request_seed(seed, image_id, role.name, kind)))
            for s, (role, kind) in enumerate(slots)
        ]

    def finish(shard):
        """The shard's records and errors; a caption the engine failed is an error, the image keeps the others."""
        records, errors = [], list(shard.errors)
        for i, (image_id, jpeg, size) in shard.loaded:
            captions = []
            for s, (role, kind) in enumerate(slots):
                text, error = shard.answers[i, s]
                if error is None:
                    captions.append(Caption(role.name, kind, text.strip(), engine.model_name, PROMPT_VERSION))
                else:
                    errors.append(
                        {"image_id": image_id, "path": inputs[i][1], "role": role.name, "kind": kind, "reason": error}
                    )
            if captions:
                records.append(CaptionRecord(image_id, jpeg, size, tuple(captions), alt_texts.get(image_id)))
        return records, errors

    yield from stream_shards(engine, {k: len(indices) for k, indices in shards.items()}, images, ask, finish)


def _unfinished_shards(out_dir, shards, config_hash, *, num_workers, worker_index) -> dict:
    """This worker's shards without a manifest entry; refuses an --out that holds another run."""
    info = read_json(run_info_path(out_dir))
    hashes = {info["config_hash"]} if info else set()
    todo = {}
    for k in range(worker_index, len(shards), num_workers):
        entry = read_json(manifest_path(out_dir, k))
        if entry is None:
            todo[k] = shards[k]
        else:
            hashes.add(entry["config_hash"])
    if hashes - {config_hash}:
        raise ValueError(
            f"{out_dir} holds shards of another run (config hash {(hashes - {config_hash}).pop()}, this "
            f"run {config_hash}: other inputs, alt text, model, roles or settings); use another --out"
        )
    return todo


def open_run(out_dir, shards, config_hash, *, num_workers, worker_index, info: dict) -> dict:
    """This worker's unfinished shards (shard index -> input indices), once run.json (the config hash, the number
    of shards, and `info`) is at the top of `out_dir`; refuses an --out that holds another run."""
    if not 0 <= worker_index < num_workers:
        raise ValueError(f"--worker-index {worker_index} must lie in [0, --num-workers={num_workers})")
    os.makedirs(manifest_dir(out_dir), exist_ok=True)
    todo = _unfinished_shards(out_dir, shards, config_hash, num_workers=num_workers, worker_index=worker_index)
    # run.json: the run's size and hash, for `captioning status` and later workers
    _write_once(run_info_path(out_dir), worker_index, {"config_hash": config_hash, "num_shards": len(shards), **info})
    return todo


class ShardWriter:
    """Writes each finished shard, its errors file and then its manifest entry, each aside and renamed into place;
    sums the entries' counts (`totals`; counts by key, such as skipped lines by reason, in `breakdowns`) and
    tallies the captions' words."""

    def __init__(self, out_dir: str, config_hash: str):
        self.out_dir, self.config_hash = out_dir, config_hash
        self.totals, self.tally = collections.Counter(), CaptionTally()
        self.breakdowns = collections.defaultdict(collections.Counter)

    def write(self, k: int, records: list, errors: list, counts: dict) -> dict:
        """The shard's manifest entry, once written: `counts` (its inputs, its errors) and its records and captions."""
        shard_path = os.path.join(self.out_dir, shard_name(k) + ".array_record")
        write_shard(shard_path, records)
        _write_jsonl(os.path.join(self.out_dir, shard_name(k) + ".errors.jsonl"), errors)
        shard_tally = CaptionTally().add(c for r in records for c in r.captions)
        entry = {
            "shard": os.path.basename(shard_path),
            "config_hash": self.config_hash,
            **counts,
            "records": len(records),
            "captions": shard_tally.counts(),
        }
        _write_json(manifest_path(self.out_dir, k), entry)
        for key, value in entry.items():
            if isinstance(value, int):
                self.totals[key] += value
            elif isinstance(value, dict) and key != "captions":
                self.breakdowns[key].update(value)
        self.tally += shard_tally
        return entry


def run(
    inputs,
    out_dir,
    make_engine,
    roles,
    *,
    settings: dict,
    images_per_shard: int,
    num_workers: int,
    worker_index: int,
    load,
    seed: int,
    host_threads: int,
    readahead: int,
    alt_texts: dict | None = None,
    max_pixels: int | None = None,
) -> dict:
    """Captions this worker's unfinished shards; returns the summary of what it wrote. `load(path)` reads an
    input (load_image with the run's sizes); `host_threads` threads run it `readahead` images ahead;
    `alt_texts` (image id -> text, captioning/alt_text.py) goes into the records as it is; `max_pixels`, the
    pixel cap `load` sizes the captioner's copy to, goes into captioner.json (not written without it)."""
    config_hash = run_config_hash(settings, inputs, alt_texts)
    shards = shard_slices(len(inputs), images_per_shard)
    todo = open_run(
        out_dir,
        shards,
        config_hash,
        num_workers=num_workers,
        worker_index=worker_index,
        info={"images_total": len(inputs), "images_with_alt_text": len(alt_texts or {})},
    )
    if max_pixels is not None:
        write_captioner_info(out_dir, worker_index, max_pixels)
    summary = {
        "shards_written": len(todo),
        "images": 0,
        "decode_errors": 0,
        "caption_errors": 0,
        "captions": {},
        "mean_words": {},
        "alt_texts": 0,
        "seconds": 0.0,
        "read_wait_share": None,
        "prefix_cache_hit_rate": None,
    }
    if not todo:
        return summary
    engine = make_engine()
    images = ReadAhead(
        lambda item: load(inputs[item[1]][1]),
        ((k, i) for k, indices in todo.items() for i in indices),
        threads=host_threads,
        depth=readahead,
    )
    writer, alt_texts_written = ShardWriter(out_dir, config_hash), 0
    start = time.perf_counter()
    with tqdm(total=sum(map(len, todo.values())), unit="img", desc=f"worker {worker_index}") as bar:
        for k, records, errors in caption_shards(engine, inputs, todo, roles, images, seed=seed, alt_texts=alt_texts):
            counts = {
                "images": len(shards[k]),
                "decode_errors": sum("role" not in e for e in errors),
                "caption_errors": sum("role" in e for e in errors),
            }
            writer.write(k, records, errors, counts)
            alt_texts_written += sum(r.alt_text is not None for r in records)
            bar.update(len(shards[k]))
    seconds = time.perf_counter() - start
    return {
        **summary,
        "images": writer.totals["records"],
        "decode_errors": writer.totals["decode_errors"],
        "caption_errors": writer.totals["caption_errors"],
        "captions": writer.tally.counts(),
        "mean_words": writer.tally.mean_words(),
        "alt_texts": alt_texts_written,
        "seconds": round(seconds, 1),
        # Time the feed blocked on an image still being read: the most the engine can have waited for the host,
        # less where it still had queued requests to run.
        "read_wait_share": round(images.wait_seconds / seconds, 4),
        "prefix_cache_hit_rate": engine.prefix_cache_hit_rate(),
    }
