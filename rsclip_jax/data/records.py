"""The caption shard record: the one contract between `captioning/` and `rsclip_jax/`.

One record per image, msgpack-encoded (no pickle), stored one per ArrayRecord entry.
Importing this module pulls in neither JAX nor vLLM.

Schema version 1, a msgpack map:
  schema_version  int     SCHEMA_VERSION of the writer
  image_id        str     stable id of the source image (e.g. its relative path)
  image_jpeg      bytes   the (resized) image, JPEG-encoded
  original_size   [w, h]  size of the source image before resizing
  alt_text        str | nil   source alt-text, if the image came with one
  captions        list of maps:
    role            str     role name, e.g. "Observer of Details"
    kind            str     "long" or "short"
    text            str
    model           str     the captioning model
    prompt_version  str     version of the prompt templates
    judge_score     float | nil   role-aware judge score, 1..100
    judge_rationale str | nil
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
import os
from collections.abc import Iterable, Iterator

import msgpack

SCHEMA_VERSION = 1
CAPTION_KINDS = ("long", "short")


class RecordError(ValueError):
    """A caption record that cannot be read; the message names the shard and record index."""


@dataclasses.dataclass(frozen=True)
class Caption:
    role: str
    kind: str
    text: str
    model: str
    prompt_version: str
    judge_score: float | None = None
    judge_rationale: str | None = None


@dataclasses.dataclass(frozen=True)
class CaptionRecord:
    image_id: str
    image_jpeg: bytes
    original_size: tuple[int, int]
    captions: tuple[Caption, ...]
    alt_text: str | None = None


class _Fields:
    """The fields a map must have and the types each accepts (type(None): the field may be nil)."""

    def __init__(self, **types: tuple[type, ...]):
        self.types = types
        self.values = operator.itemgetter(*types)  # the fields' values, in order: a KeyError if one is missing
        # Every accepted combination of the values' exact types, as msgpack decodes them (a bool is no int here):
        # one set lookup checks a whole map.
        self._accepted = set(itertools.product(*types.values()))

    def check(self, obj: object, what: str, where: str) -> None:
        """RecordError naming `what` and `where` unless `obj` is a map holding every field with a type it accepts."""
        try:
            if tuple(map(type, self.values(obj))) in self._accepted:
                return
        except (KeyError, TypeError):  # TypeError: not a map
            pass
        if not isinstance(obj, dict):
            raise RecordError(f"{where}: {what} is a {type(obj).__name__}, expected a map")
        for name, types in self.types.items():
            if name not in obj:
                raise RecordError(f"{where}: {what} is missing field {name!r}")
            if type(obj[name]) not in types:
                raise RecordError(
                    f"{where}: {what} field {name!r} is {type(obj[name]).__name__}, expected "
                    + " or ".join(t.__name__ for t in types)
                )


_NIL = type(None)
# In the order of Caption's fields, which are built from the values positionally.
_CAPTION_FIELDS = _Fields(
    role=(str,),
    kind=(str,),
    text=(str,),
    model=(str,),
    prompt_version=(str,),
    judge_score=(int, float, _NIL),
    judge_rationale=(str, _NIL),
)
_RECORD_FIELDS = _Fields(
    schema_version=(int,),
    image_id=(str,),
    image_jpeg=(bytes,),
    original_size=(list,),
    alt_text=(str, _NIL),
    captions=(list,),
)


def encode_record(record: CaptionRecord) -> bytes:
    """Serialises a record with the current schema version."""
    for caption in record.captions:
        if caption.kind not in CAPTION_KINDS:
            raise ValueError(
                f"caption kind {caption.kind!r} of image {record.image_id!r} must be one of {CAPTION_KINDS}"
            )
    payload = {
        "schema_version": SCHEMA_VERSION,
        "image_id": record.image_id,
        "image_jpeg": bytes(record.image_jpeg),
        "original_size": [int(record.original_size[0]), int(record.original_size[1])],
        "alt_text": record.alt_text,
        "captions": [dataclasses.asdict(c) for c in record.captions],
    }
    return msgpack.packb(payload, use_bin_type=True)


def decode_record(data: bytes, *, shard: str = "<bytes>", index: int = 0) -> CaptionRecord:
    """Parses one record; raises RecordError naming `shard` and `index` on any defect."""
    where = f"shard {shard}, record {index}"
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types for truncated or garbled bytes
        raise RecordError(f"{where}: not a valid msgpack record (truncated or corrupt?): {e}") from None
    if isinstance(obj, dict) and isinstance(obj.get("schema_version"), int):
        if obj["schema_version"] > SCHEMA_VERSION:
            raise RecordError(
                f"{where}: written with schema version {obj['schema_version']}, this reader knows up to "
                f"{SCHEMA_VERSION}; upgrade rsclip-jax to read it"
            )
    _RECORD_FIELDS.check(obj, "record", where)
    size = obj["original_size"]
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise RecordError(f"{where}: original_size must be [width, height] > 0, got {size!r}")
    captions = []
    for i, c in enumerate(obj["captions"]):
        _CAPTION_FIELDS.check(c, f"caption {i}", where)
        if c["kind"] not in CAPTION_KINDS:
            raise RecordError(f"{where}: caption {i} has kind {c['kind']!r}, expected one of {CAPTION_KINDS}")
        captions.append(Caption(*_CAPTION_FIELDS.values(c)))
    return CaptionRecord(
        image_id=obj["image_id"],
        image_jpeg=obj["image_jpeg"],
        original_size=(size[0], size[1]),
        captions=tuple(captions),
        alt_text=obj["alt_text"],
    )


def write_shard(path: str | os.PathLike, records: Iterable[CaptionRecord]) -> int:
    """Writes records to one ArrayRecord shard; returns how many were written. The shard is written
    aside and renamed into place, so `path` never holds a partial shard."""
    from array_record.python.array_record_module import ArrayRecordWriter

    path = os.fspath(path)
    temporary = path + ".tmp"
    writer = ArrayRecordWriter(temporary, "group_size:1")
    count = 0
    try:
        for record in records:
            writer.write(encode_record(record))
            count += 1
    finally:
        writer.close()
    os.replace(temporary, path)
    return count


def read_shard(path: str | os.PathLike) -> Iterator[CaptionRecord]:
    """Yields every record of an ArrayRecord shard; a defective record raises RecordError."""
    from array_record.python.array_record_module import ArrayRecordReader

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"caption shard {path} does not exist")
    reader = ArrayRecordReader(path)
    try:
        for index in range(reader.num_records()):
            yield decode_record(reader.read([index])[0], shard=path, index=index)
    finally:
        reader.close()
