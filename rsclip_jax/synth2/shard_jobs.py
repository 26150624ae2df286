"""What `rsclip_jax.embed` and `rsclip_jax.generate` share: each process takes every P-th input shard, skips
those whose output shard is written (records.write_shard renames a whole shard into place), reads the records it
can and counts the rest by why, and runs a jitted function over fixed-shape batches (one compile)."""

import collections
import dataclasses
import json
import os
from collections.abc import Callable, Iterator

import jax
import numpy as np
from absl import app, logging
from array_record.python.array_record_module import ArrayRecordReader
from etils import epath

from rsclip_jax.data.records import CaptionRecord, RecordError, decode_record


@dataclasses.dataclass
class Counts:
    shards_written: int = 0
    shards_already_written: int = 0
    records: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def summary(self) -> dict:
        return {**vars(self), "skipped": dict(self.skipped)}


def agree_with_earlier_runs(path: epath.Path, made_by: dict) -> None:
    """Writes `path` (OUT/something.json: what made the shards of OUT), or checks that a run before wrote the same:
    one folder, one kind of output. A UsageError names what differs."""
    if path.exists():
        earlier = json.loads(path.read_text())
        differ = [
            f"{key}: now {value!r}, before {earlier.get(key)!r}"
            for key, value in made_by.items()
            if earlier.get(key) != value
        ]
        if differ:
            raise app.UsageError(
                f"{path.parent} holds shards made otherwise ({'; '.join(differ)}): give another --out, or the same "
                "settings"
            )
    elif jax.process_index() == 0:
        # Written aside and renamed into place: another process may be reading it as it appears.
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = path.parent / f".{path.name}.tmp"
        aside.write_text(json.dumps(made_by, indent=1))
        aside.rename(path)


def unwritten_shards(paths: list[str], out: str, counts: Counts) -> Iterator[tuple[str, str]]:
    """(input shard, output shard) of this process's share of `paths` whose output is not written yet."""
    for path in paths[jax.process_index() :: jax.process_count()]:
        target = os.path.join(out, os.path.basename(path))
        if epath.Path(target).exists():
            counts.shards_already_written += 1
            continue
        yield path, target


def readable_records(path: str, skipped: collections.Counter, *, need_image: bool) -> Iterator[CaptionRecord]:
    """The records of a shard that decode (and hold an image, with `need_image`); the others counted by why."""
    reader = ArrayRecordReader(path)
    try:
        for index in range(reader.num_records()):
            try:
                record = decode_record(reader.read([index])[0], shard=path, index=index)
            except RecordError as e:
                logging.warning("skipping a bad record: %s", e)
                skipped["bad_record"] += 1
                continue
            if need_image and record.image_jpeg is None:
                skipped["no_image"] += 1
                continue
            yield record
    finally:
        reader.close()


def in_batches(fn: Callable, inputs: np.ndarray, batch_size: int, *args) -> np.ndarray:
    """fn(inputs chunk, batch index, *args) over `inputs` in chunks of `batch_size`, the last padded with zeros:
    one compiled shape. Outputs concatenated, padding rows dropped."""
    outputs = []
    for number, start in enumerate(range(0, len(inputs), batch_size)):
        chunk = inputs[start : start + batch_size]
        padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        outputs.append(np.asarray(fn(padded, number, *args))[: len(chunk)])
    return np.concatenate(outputs) if outputs else np.zeros((0,))
