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
from concurrent.futures import ThreadPoolExecutor

import grain
import numpy as np
from absl import flags, logging
from array_record.python.array_record_module import ArrayRecordReader
from etils import epath

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
from rsclip_jax.data.shared_batches import SHARED_MEMORY_MIN_BYTES, SharedMemoryStacker
from rsclip_jax.data.tokenizer import tokenize

# What the records of a shard hold, by their content (records.CaptionRecord.content), for the error of a reader
# that expects another.
_CONTENT_ADVICE = {
    "captions only": "captions of imagined images (`captioning synthesize`) with no image_jpeg: they train a CLIP "
    "only once image embeddings have been made for them",
    "image_embedding": "synthetic pairs, image_embedding in place of image_jpeg, which the image pipeline cannot read",
    "image": "images (image_jpeg) where image embeddings were expected",
}


def resolve_shards(
    patterns, key: str, *, skip_bad: bool = False, content: str | None = "image"
) -> tuple[dict[str, int], list[str]]:
    """({shard: its record count} of the shards matching `patterns`, in order; the bad ones left out). `patterns`: a
    comma-separated string or a list of paths or globs, local or gs:// (listed through etils.epath, read by
    ArrayRecord's own Cloud Storage reader). A bad shard (empty, cut short, damaged, or holding no records) is a
    DataError, or with `skip_bad` a warning; so is one whose last record holds other than `content` ("image",
    "image_embedding": records.CaptionRecord.content; None: any). Each shard is opened once, here; the counts
    spare the data source opening them again."""
    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(",") if p.strip()]
    if not patterns:
        raise DataError(f"{key} is empty: give caption shard paths or glob patterns")
    paths = []
    for pattern in patterns:
        matches = _glob(pattern.strip(), key)
        if not matches:
            raise DataError(f"{key}: no caption shard matches {pattern!r}")
        paths += matches
    # In threads: on a bucket each check is a few round trips, and the reader lets go of the GIL while it waits.
    with ThreadPoolExecutor(min(16, len(paths))) as pool:
        records, problems = {}, {}
        for path, (count, problem) in zip(paths, pool.map(lambda path: _check_shard(path, content), paths)):
            records[path], problems[path] = count, problem
    bad = [path for path in paths if problems[path]]
    if bad and not skip_bad:
        more = f" (and {len(bad) - 1} more of the {len(paths)} shards)" if len(bad) > 1 else ""
        raise DataError(
            f"{key}: caption shard {bad[0]} {problems[bad[0]]}{more}: copy or write it again, or set "
            f"config.data.skip_bad_shards=True to train on the good shards"
        )
    good = {path: records[path] for path in paths if not problems[path]}
    if not good:
        raise DataError(
            f"{key}: none of its {len(paths)} caption shards can be read; the first, {bad[0]}, {problems[bad[0]]}"
        )
    for path in bad:
        logging.warning("skipping caption shard %s: it %s", path, problems[path])
    if bad:
        logging.warning(
            "skipped %d of %d caption shards of %s (config.data.skip_bad_shards)", len(bad), len(paths), key
        )
    return good, bad


def _glob(pattern: str, key: str) -> list[str]:
    """The sorted matches of one pattern, in a folder or a bucket."""
    path = epath.Path(pattern).expanduser()
    try:
        return sorted(str(match) for match in path.parent.glob(path.name))
    except ImportError as e:  # fsspec's, when gcsfs is missing
        raise DataError(f"{key}: listing {pattern!r} needs gcsfs: `pip install gcsfs` ({e})") from None


def _check_shard(path: str, content: str) -> tuple[int, str | None]:
    """(its record count, what makes it unusable or None). A cut or truncated file (an interrupted copy) fails the
    reader's own checks of the footer and index at its end; reading the last record also checks the chunk the index
    points to last (a cut before it moves it), and tells what the records hold. Neither reads the whole shard."""
    if epath.Path(path).stat().length == 0:
        return 0, "is an empty file"
    try:
        reader = ArrayRecordReader(path)
        count = reader.num_records() if reader.ok() else 0
        last = reader.read([count - 1])[0] if count else None
        reader.close()  # raises the reader's own account of a file it could not open
    except (RuntimeError, ValueError) as e:  # a damaged header can throw C++'s length_error: a ValueError here
        return 0, "is cut short or damaged (an interrupted copy?)" + (f": {e}" if str(e) else "")  # some say nothing
    if not count:
        return 0, "holds no records"
    try:
        found = decode_record(last, shard=path, index=count - 1).content
    except RecordError:
        return count, None  # one bad record: the pipeline skips and counts it
    return count, None if content in (None, found) else f"holds {_CONTENT_ADVICE[found]}"


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


def check_roles(paths: list[str], spec: ExampleSpec, sample: int = 64) -> None:
    """With `spec.roles` set: DataError when one of them has no caption among the first records of the shards (a
    misspelt role would train on none of its captions, or on nothing); in rows sampling, a warning when
    `rows_per_image` exceeds the eligible captions any of those records holds (the other row slots are empty, and
    each is filled with a row of a later epoch)."""
    if not spec.roles:
        return
    reader = ArrayRecordReader(paths[0])
    try:
        data = reader.read(list(range(min(sample, reader.num_records()))))
    finally:
        reader.close()
    found, most = set(), 0
    for index, item in enumerate(data):
        try:
            captions = decode_record(item, shard=paths[0], index=index).captions
        except RecordError:
            continue
        found.update(c.role for c in captions)
        most = max(most, len(eligible_captions(captions, spec.roles, spec.kinds)))
    missing = [role for role in spec.roles if role not in found]
    if missing:
        raise DataError(
            f"config.data.roles {spec.roles!r}: no caption of {', '.join(map(repr, missing))} among the first "
            f"{len(data)} records of {paths[0]}, whose roles are {sorted(found)!r}: name roles as the shards do"
        )
    if spec.sampling == "rows" and 0 < most < spec.rows_per_image:
        logging.warning(
            "config.data.rows_per_image is %d, but none of the first %d records of %s holds more than %d captions of "
            "config.data.roles %r and kinds %r: the other row slots of each image are empty, each filled with the row "
            "at its position in a later epoch (with examples_per_epoch, a repeat); set config.data.rows_per_image=%d",
            spec.rows_per_image,
            len(data),
            paths[0],
            most,
            spec.roles,
            spec.kinds,
            most,
        )


def check_image_embeddings(paths: list[str], depth: str, shape: tuple[int, ...], key: str) -> None:
    """DataError, before anything compiles, when the first record holds no image embedding at `depth` of `shape` (the
    model's): embedded by another CLIP, at another depth, or not at all. (Later records that do not are skipped and
    counted as no_embedding.)"""
    reader = ArrayRecordReader(paths[0])
    try:
        data = reader.read([0])[0]
    finally:
        reader.close()
    try:
        embedding = decode_record(data, shard=paths[0], index=0).image_embedding
    except RecordError:
        return  # a bad record: the pipeline skips and counts it
    if embedding is None:
        raise DataError(
            f"{key}: the records of {paths[0]} hold no image_embedding: embed them (python -m rsclip_jax.embed)"
        )
    if embedding.depth != depth or embedding.values.shape != tuple(shape):
        raise DataError(
            f"{key}: the image_embedding of {paths[0]} is at depth {embedding.depth!r} with shape "
            f"{list(embedding.values.shape)}; this model's at {depth!r} is {list(shape)}: embed the shards with this "
            f"model's CLIP at that depth, or set the depth they were embedded at"
        )


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
