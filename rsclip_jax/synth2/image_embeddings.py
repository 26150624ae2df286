"""Caption shards -> the same records with a frozen CLIP image tower's embedding of each image, at a depth:
"final" (the L2-normalised projected embedding, what the contrastive loss compares) or "tokens:K" (the tokens
after the first K image blocks, where a synthetic row would enter the tower).

Each process embeds every P-th shard on a mesh of its own devices, in fixed-shape batches (one compile), and writes
each output shard whole (records.write_shard renames it into place): a restart skips the shards already written.
"""

import collections
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from rsclip_jax.data.preprocess import EncodedImage, UnreadableImageError, crop_like_open_clip, normalize_images
from rsclip_jax.data.records import (
    EMBEDDING_DTYPES,
    ImageEmbedding,
    RecordError,
    decode_record,
    embedding_depth,
    write_shard,
)


def check_settings(depth: str, dtype: str, image_layers: int) -> None:
    """ValueError naming --depth or --dtype where the tower or the record schema cannot give them."""
    blocks = embedding_depth(depth, "--depth")
    if blocks is not None and blocks > image_layers:
        raise ValueError(f"--depth {depth!r}: the image tower has {image_layers} blocks")
    if dtype not in EMBEDDING_DTYPES:
        raise ValueError(f"--dtype {dtype!r} must be one of {EMBEDDING_DTYPES}")


def image_embedder(graphdef, params, mesh, depth: str):
    """jit(images uint8 [B, S, S, 3]) -> float32 embeddings [B, D] at "final", tokens [B, T, width] at "tokens:K"."""
    blocks = embedding_depth(depth)
    batch = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))

    def embed(params, images):
        model = nnx.merge(graphdef, params)
        pixels = normalize_images(images)
        if blocks is None:
            return model.encode_image(pixels)
        return model.visual.tokens_after(pixels, blocks).astype(jnp.float32)

    embed = jax.jit(embed, out_shardings=batch)
    # Placed first: under jax.distributed, jit takes no host array with a sharding, even one of local devices.
    return lambda params, images: embed(params, jax.device_put(images, batch))


@dataclasses.dataclass
class Counts:
    shards_written: int = 0
    shards_already_written: int = 0
    records: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)


def embed_shards(paths, out: str, embed, params, *, image_size: int, depth: str, dtype: str, batch_size: int) -> Counts:
    """Writes out/<name of each shard> of this process's share of `paths` (every process_count-th from
    process_index); a record that cannot be read, or has no image, is skipped and counted."""
    counts = Counts()
    mine = paths[jax.process_index() :: jax.process_count()]
    for path in mine:
        target = os.path.join(out, os.path.basename(path))
        if epath.Path(target).exists():
            counts.shards_already_written += 1
            continue
        records, images = [], []
        for record in _records(path, counts.skipped):
            try:
                images.append(crop_like_open_clip(EncodedImage(record.image_jpeg), None, image_size))
            except UnreadableImageError as e:
                logging.warning("skipping %s in %s: image does not decode: %s", record.image_id, path, e)
                counts.skipped["bad_image"] += 1
                continue
            records.append(record)
        embeddings = _in_batches(embed, params, np.stack(images) if images else None, batch_size)
        embedded = (ImageEmbedding(depth, values.astype(dtype)) for values in embeddings)
        write_shard(target, (dataclasses.replace(r, image_embedding=e) for r, e in zip(records, embedded)))
        counts.shards_written += 1
        counts.records += len(records)
        logging.info("wrote %s: %d records", target, len(records))
    return counts


def _records(path: str, skipped: collections.Counter):
    """The records of a shard that hold an image; the others counted by why."""
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(path)
    try:
        for index in range(reader.num_records()):
            try:
                record = decode_record(reader.read([index])[0], shard=path, index=index)
            except RecordError as e:
                logging.warning("skipping a bad record: %s", e)
                skipped["bad_record"] += 1
                continue
            if record.image_jpeg is None:
                skipped["no_image"] += 1
                continue
            yield record
    finally:
        reader.close()


def _in_batches(embed, params, images: np.ndarray | None, batch_size: int) -> np.ndarray:
    """embed() over `images` in batches of `batch_size`, the last padded: one compiled shape."""
    if images is None:
        return np.zeros((0,))
    outputs = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        outputs.append(np.asarray(embed(params, padded))[: len(chunk)])
    return np.concatenate(outputs)
