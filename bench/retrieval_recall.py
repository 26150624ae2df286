"""Retrieval recall at COCO's size: time and peak memory of `retrieval_recall` over 5000 images and 25000 captions.

    .venv/bin/python bench/retrieval_recall.py [--images 5000] [--captions-per-image 5] [--dim 512]

Prints one JSON line: seconds (best of --repeats), the peak of NumPy's allocations during the call (tracemalloc),
and the CPU.
"""

import argparse
import json
import time
import tracemalloc

import numpy as np
from machine import cpu_name

from rsclip_jax.evals.retrieval import retrieval_recall


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    def unit(rows):
        x = rng.normal(size=(rows, args.dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    images = unit(args.images)
    texts = unit(args.images * args.captions_per_image)
    text_image = np.repeat(np.arange(args.images), args.captions_per_image)
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        retrieval_recall(images, texts, text_image)
        seconds.append(time.perf_counter() - start)
    tracemalloc.start()
    retrieval_recall(images, texts, text_image)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        json.dumps(
            {
                "bench": "retrieval_recall",
                "images": args.images,
                "captions": len(texts),
                "dim": args.dim,
                "seconds": round(min(seconds), 2),
                "peak_mib": round(peak / 2**20, 1),
                "cpu": cpu_name(),
            }
        )
    )


if __name__ == "__main__":
    main()
