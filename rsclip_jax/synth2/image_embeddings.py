"""Caption shards -> the same records with a frozen CLIP image tower's embedding of each image, at a depth:
"final" (the L2-normalised projected embedding, what the contrastive loss compares) or "tokens:K" (the tokens
after the first K image blocks, where a synthetic row would enter the tower).

Each process embeds every P-th shard on a mesh of its own devices, in fixed-shape batches (one compile), and writes
each output shard whole (records.write_shard renames it into place): a restart skips the shards already written.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from rsclip_jax.data.preprocess import EncodedImage, UnreadableImageError, crop_like_open_clip, normalize_images
from rsclip_jax.data.records import EMBEDDING_DTYPES, ImageEmbedding, embedding_depth, write_shard
from rsclip_jax.synth2.shard_jobs import Counts, in_batches, readable_records, unwritten_shards


def check_settings(depth: str, dtype: str, model) -> None:
    """ValueError naming --depth or --dtype where the CLIP `model` (its ModelConfig) or the record schema cannot give
    them."""
    blocks = embedding_depth(depth, "--depth")
    try:
        model.image_embedding_shape(blocks)
    except ValueError as e:
        raise ValueError(f"--depth {depth!r}: {e}") from None
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


def embed_shards(paths, out: str, embed, params, *, image_size: int, depth: str, dtype: str, batch_size: int) -> Counts:
    """Writes out/<name of each shard> of this process's share of `paths` (every process_count-th from
    process_index); a record that cannot be read, or has no image, is skipped and counted."""
    counts = Counts()
    for path, target in unwritten_shards(paths, out, counts):
        records, images = [], []
        for record in readable_records(path, counts.skipped, need_image=True):
            try:
                images.append(crop_like_open_clip(EncodedImage(record.image_jpeg), None, image_size))
            except UnreadableImageError as e:
                logging.warning("skipping %s in %s: image does not decode: %s", record.image_id, path, e)
                counts.skipped["bad_image"] += 1
                continue
            records.append(record)
        pixels = np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8)
        embeddings = in_batches(lambda batch, _: embed(params, batch), pixels, batch_size)
        embedded = (ImageEmbedding(depth, values.astype(dtype)) for values in embeddings)
        write_shard(target, (dataclasses.replace(r, image_embedding=e) for r, e in zip(records, embedded)))
        counts.shards_written += 1
        counts.records += len(records)
        logging.info("wrote %s: %d records", target, len(records))
    return counts
