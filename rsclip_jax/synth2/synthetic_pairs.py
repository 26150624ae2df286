"""Captions -> synthetic pairs: each caption with an image embedding the trained generator makes from it (the
frozen CLIP text tower reading the caption, classifier-free guidance, a few Euler steps of the flow).

Each output record is its input record with `image_embedding` at the generator's depth in place of an image
(records.py, schema version 2): one imagined image per record, made from its first long caption, paired with
all of its captions (`captioning synthesize` writes every role's captions of a record from one description).
Input shards may hold captions only, or images too (which are dropped).
"""

import dataclasses

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from rsclip_jax.data.records import CaptionRecord, ImageEmbedding, write_shard
from rsclip_jax.data.tokenizer import tokenize
from rsclip_jax.synth2.flow_matching import sample
from rsclip_jax.synth2.shard_jobs import Counts, in_batches, readable_records, unwritten_shards


def pair_sampler(setup, params, clip_setup, clip_params, *, steps: int, guidance: float, seed: int):
    """(tokens int32 [B, L], batch number, shard number) -> image embeddings [B, *shape], float32. A batch's noise
    follows from (seed, shard, batch): a rerun of a shard makes the same pairs."""
    batch = NamedSharding(setup.mesh, PartitionSpec(setup.mesh.axis_names[0]))
    key = jax.random.key(seed)

    def generate(params, clip_params, tokens, rng):
        _, text_tokens = nnx.merge(clip_setup.graphdef, clip_params).text_features(tokens)
        generator = nnx.merge(setup.graphdef, params)
        return sample(generator, text_tokens, tokens != 0, rng, steps=steps, guidance=guidance)

    generate = jax.jit(generate, out_shardings=batch)

    def run(tokens, number, shard):
        rng = jax.random.fold_in(jax.random.fold_in(key, shard), number)
        return generate(params, clip_params, jax.device_put(tokens, batch), rng)

    return run


def conditioning_caption(record: CaptionRecord):
    """The caption an imagined image is made from: the first long one (`captioning synthesize` writes the
    annotator's description first, and every role's captions from it), else the first."""
    return next((caption for caption in record.captions if caption.kind == "long"), record.captions[0])


def write_pairs(paths, out: str, run, *, context_length: int, depth: str, dtype: str, batch_size: int) -> Counts:
    """Writes out/<name of each shard> of this process's share of `paths`: each record with captions, with the
    image embedding made from its conditioning caption in place of its image (if it had one)."""
    counts = Counts()
    for path, target in unwritten_shards(paths, out, counts):
        records = []
        for record in readable_records(path, counts.skipped, need_image=False):
            if record.captions:
                records.append(record)
            else:
                counts.skipped["no_captions"] += 1
        texts = [conditioning_caption(record).text for record in records]
        tokens = tokenize(texts, context_length) if texts else np.zeros((0, context_length), np.int32)
        embeddings = in_batches(run, tokens, batch_size, paths.index(path))
        pairs = (
            dataclasses.replace(
                record, image_jpeg=None, original_size=None, image_embedding=ImageEmbedding(depth, values.astype(dtype))
            )
            for record, values in zip(records, embeddings)
        )
        write_shard(target, pairs)
        counts.shards_written += 1
        counts.records += len(records)
        logging.info("wrote %s: %d synthetic pairs", target, len(records))
    return counts
