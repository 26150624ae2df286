"""Grain input pipeline: caption shards -> shuffled, per-process batches of images and K captions.

The global batches are a function of the seed and the shards alone, not of how many processes, devices or workers
read them, so that a run restarted on another number of hosts or workers continues with exactly the batches it
would have seen. Everything up to the batch is a Grain MapDataset indexed by global position: shuffle and repeat
the records (a fresh permutation each epoch; with `examples_per_epoch`, of the same seeded subset of them each
epoch), build each example with a random map seeded by its position, put the same position of a later epoch where
an example could not be built (counting why), and cut the positions into rows of this process's batch size;
global batch g is rows g*P .. g*P + P-1 of P processes, process p's share row g*P + p. Batch g is then
row-indexed: a run resuming after step s starts at batch s; worker processes each make every Nth batch, and Grain
hands them back in order.
"""

import bisect
import collections
import multiprocessing
import multiprocessing.connection
import os
import threading

import grain
import numpy as np
from absl import flags, logging

from rsclip_jax.data.caption_sampling import ALT_SLOT, caption_tokens, eligible_captions, pick_for_slots, slot_tokens
from rsclip_jax.data.example_spec import DataError, ExampleSpec
from rsclip_jax.data.preprocess import (
    EncodedImage,
    UnreadableImageError,
    crop_like_open_clip,
    decode_crop,
    random_crop_box,
)
from rsclip_jax.data.records import RecordError, decode_record
from rsclip_jax.data.shards import check_roles, resolve_shards
from rsclip_jax.data.shared_batches import SHARED_MEMORY_MIN_BYTES, SharedMemoryStacker
from rsclip_jax.data.tokenizer import tokenize


class IndexedRecords:
    """Record bytes with their global index; each record repeated `rows_per_image` times (rows mode). Shards are
    named with their record counts (`path[0:N]`), so that ArrayRecord's source opens each only when it first reads
    it."""

    def __init__(self, paths: list[str], records_per_shard: list[int], rows_per_image: int):
        self.source = grain.sources.ArrayRecordDataSource(
            [f"{path}[0:{count}]" for path, count in zip(paths, records_per_shard)]
        )
        self.rows_per_image = rows_per_image
        # A batch's reads from a bucket go out at once, shard by shard in ArrayRecord's threads, which hide their round
        # trips; from a local disk one by one: a thread pool per batch cost a worker more than the reads.
        self.read_in_threads = any("://" in path for path in paths)

    def __len__(self):
        return len(self.source) * self.rows_per_image

    def __getitem__(self, index):
        return self._getitems([index])[0]

    def _getitems(self, indices):
        """A batch's records in one call (Grain's batched read, which the MapDatasets above pass down)."""
        places = [divmod(index, self.rows_per_image) for index in indices]
        if self.read_in_threads:
            data = self.source.__getitems__([record_index for record_index, _ in places])
        else:
            data = [self.source[record_index] for record_index, _ in places]
        return [(record_index, slot, item) for (record_index, slot), item in zip(places, data)]


class MakeExample(grain.transforms.RandomMap):
    """(record index, slot, bytes) -> {"image" (or "image_embedding"), "tokens", "image_id"} (and "caption_tokens"
    for the caption generator), or {"skip": reason}."""

    def __init__(self, spec: ExampleSpec, paths: list[str], records_per_shard: list[int]):
        self.spec = spec
        self.paths = paths
        self.crop = decode_crop if spec.crop_backend == "opencv" else crop_like_open_clip
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
        if spec.image_embedding:
            embedding = record.image_embedding
            if embedding is None or embedding.depth != spec.image_embedding:
                logging.warning(
                    "skipping record %d of %s: no image_embedding at %s", index_in_shard, shard, spec.image_embedding
                )
                return {"skip": "no_embedding"}
        elif record.image_jpeg is None:
            logging.warning("skipping record %d of %s: it has no image_jpeg", index_in_shard, shard)
            return {"skip": "bad_image"}
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
        if spec.image_embedding:
            picture = {"image_embedding": record.image_embedding.values.astype(np.float32)}
        else:
            try:
                image = EncodedImage(record.image_jpeg)
                box = random_crop_box(*image.size, rng, scale=spec.crop_scale) if spec.random_resized_crop else None
                picture = {"image": self.crop(image, box, spec.image_size)}
            except UnreadableImageError as e:
                logging.warning("skipping record %d of %s: image does not decode: %s", index_in_shard, shard, e)
                return {"skip": "bad_image"}
        text = dict(
            prefix=spec.prefix, sub_caption=spec.sub_caption, sub_caption_tokens=spec.sub_caption_tokens, rng=rng
        )
        if spec.sampling == "rows":
            tokens = caption_tokens([c.text for c in chosen], context_length=spec.text_length, **text)
        else:
            tokens = slot_tokens(chosen, record.alt_text, spec.slot_kinds, text_length=spec.text_length, **text)
        example = {**picture, "tokens": tokens, "image_id": np.int64(record_index)}
        if spec.generator_caption_tokens:  # the whole caption, as it was before sub-caption sampling
            example["caption_tokens"] = tokenize(chosen[0].text, spec.generator_caption_tokens)[0]
        return example


# What a skipped record is counted as ("empty_slot", an image with fewer captions than rows_per_image, is expected and
# not counted).
SKIP_REASONS = ("bad_record", "no_captions", "no_alt_text", "bad_image", "no_embedding")
# Later epochs tried for a position whose example cannot be built, before the shards are taken for unusable.
MAX_TRIES = 64


class UsableExamples(grain.MapDataset):
    """The examples of a repeated dataset, with each one that could not be built (a {"skip": reason} marker)
    replaced by the example at the same position of the next epoch that can: a record of another permutation. So
    every position holds an example, and which one is decided by the position alone, wherever it is read. Each
    example carries "skipped", the count by reason of the markers it replaced."""

    def __init__(self, parent: grain.MapDataset, epoch_length: int, shards_key: str):
        super().__init__(parent)
        self.epoch_length = epoch_length
        self.shards_key = shards_key

    def __len__(self):
        return len(self._parent)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._getitems([index])[0]

    def _getitems(self, indices):
        examples = list(self._parent._getitems(list(indices)))
        skipped = np.zeros((len(examples), len(SKIP_REASONS)), np.int64)
        for attempt in range(1, MAX_TRIES + 1):
            retry = [i for i, example in enumerate(examples) if "skip" in example]
            if not retry:
                break
            for i in retry:
                if examples[i]["skip"] in SKIP_REASONS:
                    skipped[i, SKIP_REASONS.index(examples[i]["skip"])] += 1
            later = self._parent._getitems([indices[i] + attempt * self.epoch_length for i in retry])
            for i, example in zip(retry, later):
                examples[i] = example
        else:
            raise DataError(
                f"{self.shards_key}: no example could be built at position {indices[retry[0]]} of the data order in "
                f"{MAX_TRIES} epochs (see the warnings for why): are most records of these shards unusable?"
            )
        for example, counts in zip(examples, skipped):
            example["skipped"] = counts
        return examples


class BatchesOfPositions(grain.MapDataset):
    """Batch g: positions g*b .. g*b + b - 1 of the parent, asked for in one call (so that the reads of a batch from a
    bucket go out together), made one by `batch_fn`. Grain's own batch asks for them one at a time."""

    def __init__(self, parent: grain.MapDataset, batch_size: int, batch_fn):
        super().__init__(parent)
        self.batch_size, self.batch_fn = batch_size, batch_fn

    def __len__(self):
        return len(self._parent) // self.batch_size

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        start = index * self.batch_size
        return self.batch_fn(self._parent._getitems(list(range(start, start + self.batch_size))))


class BatchWithSkips:
    """Grain's batch_fn: stacks examples into a batch and sums their skip counts. In a worker, the big arrays are
    stacked straight into shared memory, which Grain hands over as it is, with no second copy
    (rsclip_jax/data/shared_batches.py)."""

    def __init__(self):
        self.stacker = SharedMemoryStacker()

    def enable_shared_memory_output(self) -> None:
        self.stacker.enable()

    def __call__(self, examples: list[dict]) -> dict:
        batch = {key: self.stacker.stack([example[key] for example in examples]) for key in examples[0]}
        batch["skipped"] = batch["skipped"].sum(axis=0)
        return batch


class SkipCounter:
    """In the training process: takes each batch's skip counts off it and adds them up by reason, so the counts are
    those of the batches the run has received, with or without workers."""

    def __init__(self):
        self.counts = collections.Counter()

    def __call__(self, batch: dict) -> dict:
        for reason, count in zip(SKIP_REASONS, batch.pop("skipped")):
            if count:
                self.counts[reason] += int(count)
        return batch


def _exit_with_the_training_process(worker_index: int, worker_count: int) -> None:
    """In each worker: ends it when the training process ends, however that ends. Killed (SIGKILL, preemption,
    out of memory), the training process cannot stop its workers, which would wait for ever, each holding its
    memory, beside the run that restarts."""
    parent = multiprocessing.parent_process()
    if parent is not None:

        def exit_when_the_parent_has():
            multiprocessing.connection.wait([parent.sentinel])
            os._exit(0)

        threading.Thread(target=exit_when_the_parent_has, name="exit-with-the-training-process", daemon=True).start()


def _read_options(paths: list[str], num_workers: int) -> grain.ReadOptions:
    """Workers reading local shards make their batches without threads: the workers are the parallelism, and
    threads contending for the GIL cost more than they overlap (bench/README.md). Otherwise two threads, each making
    a batch, to hide reads behind the step; a batch's records are read shard by shard in ArrayRecord's own threads.
    Grain's default buffer of 500 elements would be 500 batches."""
    if num_workers and not any("://" in path for path in paths):
        return grain.ReadOptions(num_threads=0)
    return grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)


def _check_examples_per_epoch(spec: ExampleSpec, examples: int, global_batch: int) -> None:
    """DataError naming config.data.examples_per_epoch when the shards hold fewer examples than it keeps, or a
    global batch would span epochs (and could hold one example twice)."""
    what = "caption rows (images x config.data.rows_per_image)" if spec.sampling == "rows" else "images"
    if spec.examples_per_epoch > examples:
        raise DataError(
            f"config.data.examples_per_epoch {spec.examples_per_epoch} exceeds the {examples} {what} the shards "
            f"hold: lower it, or train on more shards"
        )
    if spec.examples_per_epoch < global_batch:
        raise DataError(
            f"config.data.examples_per_epoch {spec.examples_per_epoch} must be at least the global batch, "
            f"config.batch_size {global_batch}"
        )


def train_dataset(
    paths: list[str],
    spec: ExampleSpec,
    *,
    batch_size: int,
    seed: int,
    records_per_shard: list[int] | None = None,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 0,
    start_batch: int = 0,
    shards_key: str = "config.data.train_shards",
) -> tuple[grain.IterDataset, SkipCounter]:
    """An endless dataset of this process's batches from global batch `start_batch` on: image uint8 [b, S, S, 3],
    tokens int32 [b, K, L] (L = spec.text_length), image_id int64 [b], with the generator caption_tokens int32
    [b, T] (T = spec.generator_caption_tokens); and the counter of skipped records. `batch_size` is this process's
    share of a global batch of batch_size * process_count; `records_per_shard` (resolve_shards' counts) spares
    opening the shards to count them."""
    paths = list(paths)
    if records_per_shard is None:
        records_per_shard = list(resolve_shards(paths, shards_key)[0].values())
    check_roles(paths, spec)
    records = IndexedRecords(paths, records_per_shard, spec.rows_per_image if spec.sampling == "rows" else 1)
    epoch_length = spec.examples_per_epoch or len(records)
    examples = grain.MapDataset.source(records).seed(seed).shuffle()
    if spec.examples_per_epoch:
        _check_examples_per_epoch(spec, len(records), batch_size * process_count)
        # The same examples every epoch: the first N of the first epoch's permutation (`repeat(1, reseed_each_epoch=
        # False)` reads that permutation at index % N, never a later epoch's), in a fresh order each epoch.
        examples = examples[:epoch_length].repeat(1, reseed_each_epoch=False).shuffle()
    examples = examples.repeat().random_map(MakeExample(spec, paths, records_per_shard))
    batch_fn = BatchWithSkips()
    batches = BatchesOfPositions(UsableExamples(examples, epoch_length, shards_key), batch_size, batch_fn)
    dataset = grain.experimental.WithOptionsIterDataset(
        batches[process_index::process_count][start_batch:].to_iter_dataset(_read_options(paths, num_workers)),
        grain.experimental.DatasetOptions(min_shm_size=SHARED_MEMORY_MIN_BYTES),
    )
    if num_workers > 0:
        if not flags.FLAGS.is_parsed():
            # Grain reads its absl flags when the workers start; a program that absl's app.run did not start (a
            # notebook, a script) has parsed none, and their defaults are what it means.
            flags.FLAGS.mark_as_parsed()
        # Each worker makes whole batches (decode, crop, tokenize, stack) and hands each over in one piece, its
        # arrays in shared memory: a transfer per batch, not per example.
        batch_fn.enable_shared_memory_output()
        dataset = dataset.mp_prefetch(
            grain.multiprocessing.MultiprocessingOptions(num_workers=num_workers),
            worker_init_fn=_exit_with_the_training_process,
        )
    skips = SkipCounter()
    return dataset.map(skips), skips
