"""Caption shards as a run finds them: listed (local or gs://), each opened once to check it is whole and count its
records, and its first records checked against what the run expects (alt text, roles, image embeddings), so that a
shard that cannot work stops the run before anything compiles."""

from concurrent.futures import ThreadPoolExecutor

from absl import logging
from array_record.python.array_record_module import ArrayRecordReader
from etils import epath

from rsclip_jax.data.caption_sampling import ALT_SLOT, eligible_captions
from rsclip_jax.data.example_spec import DataError, ExampleSpec
from rsclip_jax.data.records import RecordError, decode_record

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
