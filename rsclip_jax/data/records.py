"""The caption shard record: the one contract between `captioning/` and `rsclip_jax/`.

One record per image, msgpack-encoded (no pickle), stored one per ArrayRecord entry.
Importing this module pulls in neither JAX nor vLLM.

Schema version 2, a msgpack map:
  schema_version  int     the lowest version that describes the record: 1 for an image with captions, so that
                          readers that predate version 2 read such shards; 2 otherwise
  image_id        str     stable id of the source image (e.g. its relative path), or of the imagined one
  image_jpeg      bytes | nil   the (resized) image, JPEG-encoded; nil for captions of an image that does not
                          exist (`captioning synthesize`) and for synthetic pairs
  original_size   [w, h] | nil  size of the source image before resizing; nil where there is no image
  image_embedding map | nil     (version 2) a CLIP image tower's output for the image: depth ("final", the
                          projected embedding [width]; "tokens:K", the tokens after block K [tokens, width]),
                          dtype ("float16" or "float32"), shape, data (the array's bytes, C order)
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
import numpy as np

SCHEMA_VERSION = 2
CAPTION_KINDS = ("long", "short")
EMBEDDING_DTYPES = ("float16", "float32")


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


def embedding_depth(depth: str, what: str = "depth") -> int | None:
    """None for "final", K for "tokens:K"; ValueError naming `what` for anything else."""
    if depth == "final":
        return None
    kind, _, block = depth.partition(":")
    if kind != "tokens" or not block.isdigit():
        raise ValueError(f"{what} {depth!r} must be 'final' or 'tokens:K' (the tokens after image block K)")
    return int(block)


@dataclasses.dataclass(frozen=True, eq=False)
class ImageEmbedding:
    """A CLIP image tower's output for one image: at "final" the projected embedding [width], at "tokens:K" the
    token sequence after block K [tokens, width]."""

    depth: str
    values: np.ndarray

    def __post_init__(self):
        embedding_depth(self.depth)
        if self.values.dtype.name not in EMBEDDING_DTYPES or self.values.ndim != (1 if self.depth == "final" else 2):
            raise ValueError(
                f"an image embedding at depth {self.depth!r} is a {'1' if self.depth == 'final' else '2'}-D array of "
                f"{' or '.join(EMBEDDING_DTYPES)}, got {self.values.ndim}-D {self.values.dtype}"
            )


@dataclasses.dataclass(frozen=True)
class CaptionRecord:
    image_id: str
    image_jpeg: bytes | None
    original_size: tuple[int, int] | None
    captions: tuple[Caption, ...]
    alt_text: str | None = None
    image_embedding: ImageEmbedding | None = None

    @property
    def content(self) -> str:
        """What stands for the image: "image", "image_embedding" or "captions only"."""
        if self.image_jpeg is not None:
            return "image"
        return "image_embedding" if self.image_embedding is not None else "captions only"


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
_RECORD_FIELDS = {
    1: _Fields(
        schema_version=(int,),
        image_id=(str,),
        image_jpeg=(bytes,),
        original_size=(list,),
        alt_text=(str, _NIL),
        captions=(list,),
    ),
    2: _Fields(
        schema_version=(int,),
        image_id=(str,),
        image_jpeg=(bytes, _NIL),
        original_size=(list, _NIL),
        image_embedding=(dict, _NIL),
        alt_text=(str, _NIL),
        captions=(list,),
    ),
}
_EMBEDDING_FIELDS = _Fields(depth=(str,), dtype=(str,), shape=(list,), data=(bytes,))


def encode_record(record: CaptionRecord) -> bytes:
    """Serialises a record with the current schema version."""
    for caption in record.captions:
        if caption.kind not in CAPTION_KINDS:
            raise ValueError(
                f"caption kind {caption.kind!r} of image {record.image_id!r} must be one of {CAPTION_KINDS}"
            )
    if (record.image_jpeg is None) != (record.original_size is None):
        raise ValueError(f"image {record.image_id!r}: image_jpeg and original_size go together")
    payload = {
        "schema_version": 1,
        "image_id": record.image_id,
        "image_jpeg": None if record.image_jpeg is None else bytes(record.image_jpeg),
        "original_size": None if record.original_size is None else [int(v) for v in record.original_size],
        "alt_text": record.alt_text,
        "captions": [dataclasses.asdict(c) for c in record.captions],
    }
    if record.image_jpeg is None or record.image_embedding is not None:
        embedding = record.image_embedding
        payload["schema_version"] = 2
        payload["image_embedding"] = embedding and {
            "depth": embedding.depth,
            "dtype": embedding.values.dtype.name,
            "shape": list(embedding.values.shape),
            "data": np.ascontiguousarray(embedding.values).tobytes(),
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
    version = obj.get("schema_version") if isinstance(obj, dict) else None
    _RECORD_FIELDS.get(version, _RECORD_FIELDS[SCHEMA_VERSION]).check(obj, "record", where)
    size = obj["original_size"]
    if (size is None) != (obj["image_jpeg"] is None):
        raise RecordError(f"{where}: image_jpeg and original_size must both be given or both be nil")
    if size is not None and (len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size)):
        raise RecordError(f"{where}: original_size must be [width, height] > 0, got {size!r}")
    embedding = obj.get("image_embedding") and _decode_embedding(obj["image_embedding"], where)
    captions = []
    for i, c in enumerate(obj["captions"]):
        _CAPTION_FIELDS.check(c, f"caption {i}", where)
        if c["kind"] not in CAPTION_KINDS:
            raise RecordError(f"{where}: caption {i} has kind {c['kind']!r}, expected one of {CAPTION_KINDS}")
        captions.append(Caption(*_CAPTION_FIELDS.values(c)))
    return CaptionRecord(
        image_id=obj["image_id"],
        image_jpeg=obj["image_jpeg"],
        original_size=None if size is None else (size[0], size[1]),
        captions=tuple(captions),
        alt_text=obj["alt_text"],
        image_embedding=embedding,
    )


def _decode_embedding(obj: dict, where: str) -> ImageEmbedding:
    _EMBEDDING_FIELDS.check(obj, "image_embedding", where)
    if obj["dtype"] not in EMBEDDING_DTYPES:
        raise RecordError(f"{where}: image_embedding dtype {obj['dtype']!r} must be one of {EMBEDDING_DTYPES}")
    try:
        values = np.frombuffer(obj["data"], obj["dtype"]).reshape(obj["shape"])
        return ImageEmbedding(obj["depth"], values)
    except (ValueError, TypeError) as e:
        raise RecordError(f"{where}: image_embedding does not hold its shape {obj['shape']}: {e}") from None


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
    """Yields every record of an ArrayRecord shard, local or gs://; a defective record raises RecordError."""
    from array_record.python.array_record_module import ArrayRecordReader

    path = os.fspath(path)
    if "://" not in path and not os.path.isfile(path):  # ArrayRecord reads a bucket's shards itself
        raise FileNotFoundError(f"caption shard {path} does not exist")
    reader = ArrayRecordReader(path)
    try:
        for index in range(reader.num_records()):
            yield decode_record(reader.read([index])[0], shard=path, index=index)
    finally:
        reader.close()
