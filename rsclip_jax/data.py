"""Grain input pipeline: caption shards -> shuffled, per-process batches of images and K captions.

The order of work: shuffle and repeat the records (a fresh permutation each epoch), build each example
with a random map seeded by its global index (so what an example holds does not depend on how many
processes read), take this process's slice, decode in worker processes, then drop and count the
examples that could not be built, and batch.
"""

import bisect
import collections
import dataclasses
import glob
import os

import grain
import numpy as np
from absl import logging
from array_record.python.array_record_module import ArrayRecordReader

from rsclip_jax.captions import (
    ALT_SLOT, SLOT_KINDS, SUB_CAPTION_MODES, caption_tokens, eligible_captions, pick_for_slots, slot_tokens,
)
from rsclip_jax.preprocess import decode_image, random_resized_crop, resize_center_crop
from rsclip_jax.records import CAPTION_KINDS, RecordError, decode_record
from rsclip_jax.tokenizer import tokenize

SAMPLING_MODES = ("grouped", "rows")


class DataError(ValueError):
    """Shards or data settings that cannot work; raised before anything compiles."""


def resolve_shards(patterns, key: str) -> list[str]:
    """Paths matching `patterns` (a comma-separated string or a list of globs); each must hold records."""
    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(",") if p.strip()]
    if not patterns:
        raise DataError(f"{key} is empty: give caption shard paths or glob patterns")
    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern.strip())))
        if not matches:
            raise DataError(f"{key}: no caption shard matches {pattern!r}")
        paths += matches
    for path in paths:
        if os.path.getsize(path) == 0:
            raise DataError(f"{key}: caption shard {path} is an empty file")
        reader = ArrayRecordReader(path)
        num_records = reader.num_records()
        reader.close()
        if num_records == 0:
            raise DataError(f"{key}: caption shard {path} holds no records")
    return paths


def check_alt_text(paths: list[str], slot_kinds: tuple[str, ...], sample: int = 64) -> None:
    """DataError when an "alt" slot meets shards whose first records hold no alt text: every record would be
    skipped and no batch ever made."""
    if ALT_SLOT not in slot_kinds:
        return
    reader = ArrayRecordReader(paths[0])
    try:
        data = reader.read(list(range(min(sample, reader.num_records()))))
    finally:
        reader.close()
    for index, item in enumerate(data):
        try:
            if (decode_record(item, shard=paths[0], index=index).alt_text or "").strip():
                return
        except RecordError:
            continue
    raise DataError(
        f"config.data.slot_kinds {slot_kinds!r} has an {ALT_SLOT!r} slot, but none of the first {len(data)} records "
        f"of {paths[0]} holds alt text: caption the images with their alt text (`captioning run --alt-text FILE`, or "
        f"a .txt beside each image) or drop the {ALT_SLOT!r} slot"
    )


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
    """How a record becomes an example; sent to the worker processes, so plain values only."""

    image_size: int
    context_length: int
    sampling: str = "grouped"
    slot_kinds: tuple[str, ...] = ("any",)  # grouped: one caption per slot of the slot's kind; "alt": the alt text
    rows_per_image: int = 10  # rows: example i uses eligible caption i % rows_per_image of its image
    roles: tuple[str, ...] = ()  # empty: every role
    kinds: tuple[str, ...] = CAPTION_KINDS
    prefix: str = ""
    sub_caption: str = "none"
    sub_caption_tokens: int = 32
    random_resized_crop: bool = False
    crop_scale: tuple[float, float] = (0.9, 1.0)
    generator_caption_tokens: int = 0  # > 0: "caption_tokens", the first synthetic slot's whole caption, this long

    def __post_init__(self):
        checks = [
            (self.sampling in SAMPLING_MODES, f"sampling {self.sampling!r} must be one of {SAMPLING_MODES}"),
            (all(k in SLOT_KINDS for k in self.slot_kinds) and self.slot_kinds, f"slot_kinds {self.slot_kinds!r} must be a non-empty tuple of {SLOT_KINDS}"),
            (all(k in CAPTION_KINDS for k in self.kinds), f"kinds {self.kinds!r} must be drawn from {CAPTION_KINDS}"),
            (self.sub_caption in SUB_CAPTION_MODES, f"sub_caption {self.sub_caption!r} must be one of {SUB_CAPTION_MODES}"),
            (self.rows_per_image >= 1, f"rows_per_image must be >= 1, got {self.rows_per_image}"),
            (self.sub_caption == "none" or 1 <= self.sub_caption_tokens <= self.context_length - 2,
             f"sub_caption_tokens {self.sub_caption_tokens} must lie in [1, context_length - 2 = "
             f"{self.context_length - 2}] (start and end of text take two positions)"),
        ]
        for ok, message in checks:
            if not ok:
                raise DataError(f"config.data: {message}")
        if self.generator_caption_tokens:
            if self.sampling != "grouped":
                raise DataError("config.generator needs config.data.sampling='grouped': its target is the caption of "
                                "an image's first synthetic slot, and rows examples have no slots")
            if all(kind == ALT_SLOT for kind in self.slot_kinds):
                raise DataError(f"config.generator needs a synthetic caption to predict: config.data.slot_kinds "
                                f"{self.slot_kinds!r} has no slot other than {ALT_SLOT!r}")

    @property
    def captions_per_example(self) -> int:
        return 1 if self.sampling == "rows" else len(self.slot_kinds)

    @property
    def text_length(self) -> int:
        """Tokens per text row: under sub-caption sampling the budget plus start and end of text (CLIPS runs the
        text tower that short, its compute saving), else the model's context_length."""
        return self.context_length if self.sub_caption == "none" else self.sub_caption_tokens + 2


class IndexedRecords:
    """Record bytes with their global index; each record repeated `rows_per_image` times (rows mode)."""

    def __init__(self, paths: list[str], rows_per_image: int):
        self.source = grain.sources.ArrayRecordDataSource(paths)
        self.rows_per_image = rows_per_image

    def __len__(self):
        return len(self.source) * self.rows_per_image

    def __getitem__(self, index):
        record_index, slot = divmod(index, self.rows_per_image)
        return record_index, slot, self.source[record_index]


class MakeExample(grain.transforms.RandomMap):
    """(record index, slot, bytes) -> {"image", "tokens", "image_id"} (and "caption_tokens" for the generator), or
    {"skip": reason}."""

    def __init__(self, spec: ExampleSpec, paths: list[str], records_per_shard: list[int]):
        self.spec = spec
        self.paths = paths
        self.shard_starts = np.cumsum([0, *records_per_shard[:-1]]).tolist()

    def _where(self, record_index: int) -> tuple[str, int]:
        shard = bisect.bisect_right(self.shard_starts, record_index) - 1
        return self.paths[shard], record_index - self.shard_starts[shard]

    def random_map(self, element, rng: np.random.Generator):
        record_index, slot, data = element
        spec = self.spec
        shard, index_in_shard = self._where(record_index)
        try:
            record = decode_record(data, shard=shard, index=index_in_shard)
        except RecordError as e:
            logging.warning("skipping a bad record: %s", e)
            return {"skip": "bad_record"}
        captions = eligible_captions(record.captions, spec.roles, spec.kinds)
        if spec.sampling == "rows":
            if slot >= len(captions):
                return {"skip": "empty_slot"}  # the image has fewer captions than rows_per_image: expected
            chosen = [captions[slot]]
        else:
            chosen = pick_for_slots(captions, spec.slot_kinds, rng)
            if chosen is None:
                return {"skip": "no_captions"}
            if ALT_SLOT in spec.slot_kinds and not (record.alt_text or "").strip():
                return {"skip": "no_alt_text"}
        try:
            image = decode_image(record.image_jpeg)
        except Exception as e:  # PIL raises many types on corrupt bytes
            logging.warning("skipping record %d of %s: image does not decode: %s", index_in_shard, shard, e)
            return {"skip": "bad_image"}
        if spec.random_resized_crop:
            pixels = random_resized_crop(image, spec.image_size, rng, scale=spec.crop_scale)
        else:
            pixels = resize_center_crop(image, spec.image_size)
        text = dict(prefix=spec.prefix, sub_caption=spec.sub_caption, sub_caption_tokens=spec.sub_caption_tokens,
                    rng=rng)
        if spec.sampling == "rows":
            tokens = caption_tokens([c.text for c in chosen], context_length=spec.text_length, **text)
        else:
            tokens = slot_tokens(chosen, record.alt_text, spec.slot_kinds, text_length=spec.text_length, **text)
        example = {"image": pixels, "tokens": tokens, "image_id": np.int64(record_index)}
        if spec.generator_caption_tokens:  # the whole caption, as it was before sub-caption sampling
            example["caption_tokens"] = tokenize(chosen[0].text, spec.generator_caption_tokens)[0]
        return example


class SkipCounter:
    """Filter run in the main process: drops skip markers and counts them by reason."""

    def __init__(self):
        self.counts = collections.Counter()

    def __call__(self, element) -> bool:
        reason = element.get("skip")
        if reason is None:
            return True
        if reason != "empty_slot":
            self.counts[reason] += 1
        return False


def train_dataset(
    paths: list[str], spec: ExampleSpec, *, batch_size: int, seed: int, process_index: int = 0,
    process_count: int = 1, num_workers: int = 0,
) -> tuple[grain.IterDataset, SkipCounter]:
    """An endless dataset of this process's batches: image uint8 [b, S, S, 3], tokens int32 [b, K, L] (L =
    spec.text_length), image_id int64 [b], with the generator caption_tokens int32 [b, T] (T =
    spec.generator_caption_tokens); and the counter of skipped records."""
    records_per_shard = []
    for path in paths:
        reader = ArrayRecordReader(path)
        records_per_shard.append(reader.num_records())
        reader.close()
    dataset = (
        grain.MapDataset.source(IndexedRecords(paths, spec.rows_per_image if spec.sampling == "rows" else 1))
        .seed(seed)
        .shuffle()
        .repeat()
        .random_map(MakeExample(spec, paths, records_per_shard))
    )
    dataset = dataset[process_index::process_count].to_iter_dataset()
    if num_workers > 0:
        dataset = dataset.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(num_workers=num_workers))
    skips = SkipCounter()
    return dataset.filter(skips).batch(batch_size, drop_remainder=True), skips
