"""Image and text embeddings of whole evaluation sets, in fixed-shape batches over the training mesh.

Every batch has the global eval batch size (the last one padded), so each encoder compiles once.
Each process loads only its share of every batch (Grain, threads); embeddings come back whole on
every process.
"""

import math
from typing import Callable

import grain
import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from rsclip_jax.accelerators.sharding import BATCH_AXES, activation_sharding
from rsclip_jax.data.preprocess import UnreadableImageError, normalize_images, resize_center_crop


class Embedder:
    def __init__(self, graphdef, params_sharding, mesh, *, batch_size: int, image_size: int, num_threads: int = 8):
        shares = jax.process_count() * mesh.shape["data"] * mesh.shape["fsdp"]
        if batch_size % shares:
            raise ValueError(
                f"eval batch_size {batch_size} must divide over {shares} processes x data-parallel devices"
            )
        self.batch_size, self.image_size, self.num_threads = batch_size, image_size, num_threads
        self.local_batch_size = batch_size // jax.process_count()
        self.sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXES))
        replicated = NamedSharding(mesh, PartitionSpec())

        # Traced with each device's examples pinned to it (activation_sharding's "batch" rule, with no other
        # rules), which also runs fused kernels (Pallas flash attention) per device.
        examples_per_device = ()

        def encode_images(params, batch):
            with activation_sharding(mesh, examples_per_device):
                embeddings = nnx.merge(graphdef, params).encode_image(normalize_images(batch.pop("image")))
            return embeddings.astype(np.float32), batch  # labels and validity ride along, gathered

        def encode_texts(params, tokens):
            with activation_sharding(mesh, examples_per_device):
                return nnx.merge(graphdef, params).encode_text(tokens).astype(np.float32)

        self._encode_images = jax.jit(
            encode_images, in_shardings=(params_sharding, self.sharding), out_shardings=replicated
        )
        self._encode_texts = jax.jit(
            encode_texts, in_shardings=(params_sharding, self.sharding), out_shardings=replicated
        )

    def _local_rows(self, count: int) -> list[int]:
        """This process's rows of every global batch; rows past `count` are padding."""
        offset = jax.process_index() * self.local_batch_size
        batches = math.ceil(count / self.batch_size)
        return [b * self.batch_size + offset + j for b in range(batches) for j in range(self.local_batch_size)]

    def _global(self, local):
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.sharding, x), local)

    def images(self, params, count: int, read: Callable[[int], tuple], description: str):
        """(embeddings [count, D], labels [count], valid [count]) of images `read(i)` -> (PIL image, label).

        An image `read` cannot decode (UnreadableImageError) is logged and marked invalid, its row a padding
        row: callers leave invalid rows out of their metrics."""
        size = self.image_size

        blank = {"image": np.zeros((size, size, 3), np.uint8), "label": np.int32(-1), "valid": np.bool_(False)}

        def load(row):
            if row >= count:
                return blank
            try:
                image, label = read(row)
                return {"image": resize_center_crop(image, size), "label": np.int32(label), "valid": np.bool_(True)}
            except UnreadableImageError as e:
                logging.warning("%s: image %d left out, counted in bad_images: %s", description, row, e)
                return blank

        batches = (
            grain.MapDataset.source(self._local_rows(count))
            .map(load)
            .batch(self.local_batch_size)
            .to_iter_dataset(
                grain.ReadOptions(num_threads=self.num_threads, prefetch_buffer_size=2 * self.local_batch_size)
            )
        )
        outputs = [
            jax.tree.map(_host, self._encode_images(params, self._global(batch)))
            for batch in _progress(batches, f"{description} images", total=math.ceil(count / self.batch_size))
        ]
        embeddings = np.concatenate([emb for emb, _ in outputs])[:count]
        extras = {key: np.concatenate([extra[key] for _, extra in outputs])[:count] for key in ("label", "valid")}
        return embeddings, extras["label"], extras["valid"]

    def texts(self, params, tokens: np.ndarray, description: str) -> np.ndarray:
        """Embeddings [N, D] of token rows [N, L]."""
        count = len(tokens)
        rows = np.asarray(self._local_rows(count))
        padded = np.concatenate([tokens, np.zeros((max(rows.max() + 1 - count, 0), tokens.shape[1]), tokens.dtype)])
        outputs = [
            _host(self._encode_texts(params, self._global(padded[rows[start : start + self.local_batch_size]])))
            for start in _progress(range(0, len(rows), self.local_batch_size), f"{description} texts")
        ]
        return np.concatenate(outputs)[:count]


def _progress(iterable, description: str, total: int | None = None):
    """A tqdm bar on the first process, kept when done so that it ends its line: a bar cleared on close ends in a
    bare carriage return, and the next line written to a file both streams go to (a command's JSON) would join it."""
    return tqdm(iterable, total=total, desc=description, disable=jax.process_index() != 0, leave=True)


def _host(array) -> np.ndarray:
    """A replicated global array as NumPy (on several processes each holds a full copy)."""
    return np.asarray(array.addressable_data(0))
