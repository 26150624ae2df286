"""Host-side cost of captioning: time per image to decode, orient, size and re-encode it and to build its ten
prompts, and the share of a real run's wall time the feed blocked on that work; prints one JSON line.

The images are photo-like JPEGs written here (`--side` px long side). The run is `captioning.run.run` on the
tiny random Qwen2-VL of the tests through vLLM on this CPU: a model of 64 channels, which asks the host for
images far more often per second of generation than a 7B model would. The feed blocking bounds the engine's wait from
above: vLLM's engine process keeps running the requests already queued.

  .venv-captioning/bin/python bench/caption_host.py --images 96 --threads 1 2
"""

import argparse
import functools
import gc
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import transformers
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "captioning")]
from machine import cpu_name  # noqa: E402
from tiny_qwen2vl import build_tiny_qwen2vl  # noqa: E402

from captioning.engines import Sampling, make_engine  # noqa: E402
from captioning.images import list_inputs, load_image  # noqa: E402
from captioning.prompts import caption_messages  # noqa: E402
from captioning.roles import load_roles  # noqa: E402
from captioning.run import run  # noqa: E402
from rsclip_jax.data.records import CAPTION_KINDS  # noqa: E402

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def write_photos(folder: str, count: int, side: int) -> None:
    """Smooth gradients with noise: JPEG sizes and decode times near a photo's."""
    rng = np.random.default_rng(0)
    height = side * 3 // 4
    for i in range(count):
        ramp = np.linspace(0, 1, side)[None, :, None] * rng.uniform(0, 255, 3)
        noise = rng.normal(0, 25, (height, side, 3))
        Image.fromarray(np.clip(ramp + noise, 0, 255).astype(np.uint8)).save(
            os.path.join(folder, f"photo{i:04d}.jpg"), quality=90
        )


def host_ms_per_image(paths, processor, roles, *, short_side, max_pixels) -> dict:
    """Medians over the images, one thread: load_image (decode, EXIF, both copies) and the ten chat prompts."""
    load, prompts = [], []
    for path in paths:
        start = time.perf_counter()
        load_image(path, short_side=short_side, max_pixels=max_pixels)
        load.append(time.perf_counter() - start)
        start = time.perf_counter()
        for role in roles.roles:
            for kind in CAPTION_KINDS:
                processor.apply_chat_template(caption_messages(role, kind), add_generation_prompt=True, tokenize=False)
        prompts.append(time.perf_counter() - start)
    return {
        "load_ms": round(1e3 * statistics.median(load), 2),
        "prompts_ms": round(1e3 * statistics.median(prompts), 2),
        "total_ms": round(1e3 * (statistics.median(load) + statistics.median(prompts)), 2),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--side", type=int, default=1024, help="long side of the photos written")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="host threads of each run")
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    short_side, max_pixels = 256, 448 * 448
    roles = load_roles()
    with tempfile.TemporaryDirectory() as scratch:
        model = build_tiny_qwen2vl(os.path.join(scratch, "model"))
        photos = os.path.join(scratch, "photos")
        os.makedirs(photos)
        write_photos(photos, args.images, args.side)
        inputs = list_inputs(photos)
        engine_for_run = functools.partial(
            make_engine,
            "vllm",
            model,
            sampling=Sampling(args.max_tokens),
            dtype="float32",
            enforce_eager=True,
            max_model_len=512,
            max_num_seqs=32,
        )
        processor = transformers.AutoProcessor.from_pretrained(model)
        host = host_ms_per_image([p for _, p in inputs], processor, roles, short_side=short_side, max_pixels=max_pixels)
        load = functools.partial(load_image, short_side=short_side, max_pixels=max_pixels)
        runs = []
        for threads in args.threads:  # a new engine each: no run finds another's prompts cached
            out = os.path.join(scratch, f"out-{threads}")
            summary = run(
                inputs,
                out,
                engine_for_run,
                roles,
                settings={"threads": threads},
                images_per_shard=32,
                num_workers=1,
                worker_index=0,
                load=load,
                seed=0,
                host_threads=threads,
                readahead=64,
            )
            runs.append(
                {
                    "host_threads": threads,
                    "images_per_s": round(args.images / summary["seconds"], 2),
                    "read_wait_share": summary["read_wait_share"],
                    "prefix_cache_hit_rate": summary["prefix_cache_hit_rate"],
                }
            )
            gc.collect()  # the run's engine, before the next starts
    import vllm

    print(
        json.dumps(
            {
                "bench": "caption_host",
                "cpu": cpu_name(),
                "vllm": vllm.__version__,
                "images": args.images,
                "photo_size": [args.side, args.side * 3 // 4],
                "max_pixels": max_pixels,
                "short_side": short_side,
                "host_per_image_one_thread": host,
                "engine": "tiny random Qwen2-VL (tests/captioning), vLLM on this CPU",
                "max_tokens": args.max_tokens,
                "runs": runs,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
