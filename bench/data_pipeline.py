"""The input pipeline alone: caption shards -> batches (JPEG decode, resize + crop to 224, caption
sampling, tokenization to 248), images/s in all and per worker process.

    .venv/bin/python bench/data_pipeline.py [--images 2000] [--batch 256] [--workers 0 2]

The shards hold 256-px JPEGs made photo-like (a rendered scene over blurred noise, about the size of a
photo's JPEG at 256 px) with the demo's 10 role captions each. Prints one JSON line.
"""

import argparse
import dataclasses
import io
import json
import os
import tempfile
import time

import numpy as np
from PIL import Image, ImageFilter

from rsclip_jax.data import train_dataset
from rsclip_jax.example_spec import ExampleSpec
from rsclip_jax.demo.corpus import random_scene, render, scene_record
from rsclip_jax.records import write_shard
from machine import cpu_name

SHORT_SIDE = 256


def photo_like_record(index: int, rng: np.random.Generator):
    record = scene_record(index, random_scene(rng))
    noise = Image.fromarray(rng.integers(0, 256, (SHORT_SIDE, SHORT_SIDE, 3), dtype=np.uint8))
    image = Image.blend(render(random_scene(rng), SHORT_SIDE), noise.filter(ImageFilter.GaussianBlur(1.5)), 0.35)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return dataclasses.replace(record, image_jpeg=buffer.getvalue(), original_size=(SHORT_SIDE, SHORT_SIDE))


def write_shards(directory: str, count: int, per_shard: int = 500) -> tuple[list[str], float]:
    rng = np.random.default_rng(0)
    paths, sizes = [], []
    for shard, start in enumerate(range(0, count, per_shard)):
        records = [photo_like_record(start + i, rng) for i in range(min(per_shard, count - start))]
        sizes += [len(r.image_jpeg) for r in records]
        paths.append(os.path.join(directory, f"bench-{shard:05d}.array_record"))
        write_shard(paths[-1], records)
    return paths, float(np.mean(sizes))


def images_per_second(paths, spec, batch: int, workers: int, batches: int) -> float:
    dataset, _ = train_dataset(paths, spec, batch_size=batch, seed=0, num_workers=workers)
    iterator = iter(dataset)
    next(iterator)  # worker start-up and the first batch are not throughput
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    spec = ExampleSpec(image_size=224, context_length=248, sampling="grouped", slot_kinds=("any",) * 5)
    with tempfile.TemporaryDirectory() as directory:
        paths, mean_jpeg_bytes = write_shards(directory, args.images)
        rates = {workers: images_per_second(paths, spec, args.batch, workers, args.batches) for workers in args.workers}
    print(json.dumps({
        "bench": "data_pipeline", "cpu": cpu_name(), "images_in_shards": args.images, "jpeg_short_side": SHORT_SIDE,
        "mean_jpeg_bytes": round(mean_jpeg_bytes), "crop": 224, "captions_per_image": 5, "context_length": 248,
        "batch": args.batch,
        "images_per_s": {str(w): round(r, 1) for w, r in rates.items()},
        # 0 workers: decoding in the main process, one core
        "images_per_s_per_worker": {str(w): round(r / max(w, 1), 1) for w, r in rates.items()},
    }))


if __name__ == "__main__":
    main()
