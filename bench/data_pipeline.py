"""The input pipeline alone: caption shards -> batches (JPEG decode, resize + crop to 224, caption
sampling, tokenization to 248): images/s with each number of worker processes, per worker (with one worker:
what one core turns into batches), the CPU time per image of the training process and of the workers, and the
milliseconds each stage of an example takes on one thread, beside open_clip's way of making the same crop, and
what stacking a batch into a new shared-memory block costs a worker per image.

    .venv/bin/python bench/data_pipeline.py [--images 2000] [--batch 256] [--workers 0 2] [--jpeg-side 256]

The shards hold JPEGs of --jpeg-side pixels a side made photo-like (a rendered scene over blurred noise, about
the size of a photo's JPEG at 256 px) with the demo's 10 role captions each. Prints one JSON line.
"""

import argparse
import dataclasses
import io
import json
import multiprocessing
import os
import tempfile
import time

import numpy as np
from machine import cpu_name
from PIL import Image, ImageFilter

from rsclip_jax.data.caption_sampling import eligible_captions, pick_for_slots, slot_tokens
from rsclip_jax.data.example_spec import CROP_BACKENDS, ExampleSpec
from rsclip_jax.data.pipeline import MakeExample, train_dataset
from rsclip_jax.data.preprocess import EncodedImage, center_crop_box, crop_like_open_clip, decode_crop
from rsclip_jax.data.records import decode_record, encode_record, write_shard
from rsclip_jax.data.shared_batches import SharedMemoryStacker
from rsclip_jax.demo.corpus import random_scene, render, scene_record


def photo_like_record(index: int, side: int, rng: np.random.Generator):
    record = scene_record(index, random_scene(rng))
    noise = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
    image = Image.blend(render(random_scene(rng), side), noise.filter(ImageFilter.GaussianBlur(1.5)), 0.35)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return dataclasses.replace(record, image_jpeg=buffer.getvalue(), original_size=(side, side))


def write_shards(directory: str, count: int, side: int, per_shard: int = 500) -> tuple[list[str], float]:
    rng = np.random.default_rng(0)
    paths, sizes = [], []
    for shard, start in enumerate(range(0, count, per_shard)):
        records = [photo_like_record(start + i, side, rng) for i in range(min(per_shard, count - start))]
        sizes += [len(r.image_jpeg) for r in records]
        paths.append(os.path.join(directory, f"bench-{shard:05d}.array_record"))
        write_shard(paths[-1], records)
    return paths, float(np.mean(sizes))


def workers_cpu_s() -> float:
    """CPU seconds the worker processes have used so far (Linux's /proc; 0 elsewhere)."""
    total = 0
    for child in multiprocessing.active_children():
        try:
            with open(f"/proc/{child.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime and stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def measure(paths, spec, batch: int, workers: int, batches: int) -> tuple[float, float, float]:
    """(images/s, microseconds of the training process's own CPU per image, its threads included, and of the
    workers' together)."""
    dataset, _ = train_dataset(paths, spec, batch_size=batch, seed=0, num_workers=workers)
    iterator = iter(dataset)
    try:
        # Not throughput: worker start-up, and the batches the workers made meanwhile (up to two each).
        for _ in range(2 * max(workers, 1)):
            next(iterator)
        start, start_cpu, start_workers = time.perf_counter(), time.process_time(), workers_cpu_s()
        for _ in range(batches):
            next(iterator)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        workers_cpu = workers_cpu_s() - start_workers
    finally:
        iterator.close()  # stops its workers, which would otherwise go on decoding beside the next measurement
    images = batches * batch
    return images / elapsed, cpu / images * 1e6, workers_cpu / images * 1e6


def ms_each(function, items, warm: int) -> float:
    """Milliseconds `function` takes per item on one thread, after `warm` calls not timed."""
    for item in items[:warm]:
        function(item)
    start = time.perf_counter()
    for item in items:
        function(item)
    return round((time.perf_counter() - start) / len(items) * 1e3, 3)


def stage_ms(records, spec) -> dict:
    """Milliseconds per example of each stage on one thread, and of the whole example (MakeExample)."""
    data = [encode_record(r) for r in records]
    rng = np.random.default_rng(0)

    def crop(record):  # the "opencv" backend
        return decode_crop(EncodedImage(record.image_jpeg), None, spec.image_size)

    def open_clip_crop(record):  # the whole image decoded, the same box resized with PIL's bicubic
        image = EncodedImage(record.image_jpeg)
        return crop_like_open_clip(image, center_crop_box(*image.size), spec.image_size)

    def captions(record):
        chosen = pick_for_slots(eligible_captions(record.captions, spec.roles, spec.kinds), spec.slot_kinds, rng)
        return slot_tokens(
            chosen,
            None,
            spec.slot_kinds,
            text_length=spec.text_length,
            prefix=spec.prefix,
            sub_caption=spec.sub_caption,
            sub_caption_tokens=spec.sub_caption_tokens,
            rng=rng,
        )

    make_example = MakeExample(spec, ["bench"], [len(data)])
    stages = {
        "parse_record": (decode_record, data),
        "crop": (crop, records),
        "crop_open_clip_pil": (open_clip_crop, records),
        "captions_pick_and_tokenize": (captions, records),
        "example": (lambda element: make_example.random_map(element, rng), [(i, 0, d) for i, d in enumerate(data)]),
    }
    # warm with 20: caches, the tokenizer's chunk table
    return {name: ms_each(stage, items, warm=20) for name, (stage, items) in stages.items()}


def stacking_ms(batch: int, size: int, repeats: int = 30) -> dict:
    """Milliseconds per image to stack a batch of crops as a worker does, into a new shared-memory block (the training
    process then drops its name), against stacking into memory already in use: the difference is the kernel's
    faulting in and zeroing of a new block's pages, which depends on the machine (a virtual machine's faults cost
    more)."""
    crops = [np.full((size, size, 3), i, np.uint8) for i in range(batch)]
    reused = np.empty((batch, size, size, 3), np.uint8)
    stacker = SharedMemoryStacker()
    stacker.enable()

    def into_a_new_block():
        stacker.stack(crops).shm.unlink()  # what the training process does when it drops the batch

    times = {}
    for name, stack in {
        "into_a_new_shared_memory_block": into_a_new_block,
        "into_memory_in_use": lambda: np.stack(crops, out=reused),
    }.items():
        stack()
        start = time.perf_counter()
        for _ in range(repeats):
            stack()
        times[name] = round((time.perf_counter() - start) / (repeats * batch) * 1e3, 3)
    stacker.kept.clear()
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=12, help="batches timed, after the first ones")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--jpeg-side", type=int, default=256, help="the stored images' side, in pixels")
    parser.add_argument("--crop-backend", choices=CROP_BACKENDS, default="opencv", help="config.data.crop_backend")
    args = parser.parse_args()
    spec = ExampleSpec(
        image_size=224, context_length=248, sampling="grouped", slot_kinds=("any",) * 5, crop_backend=args.crop_backend
    )
    with tempfile.TemporaryDirectory() as directory:
        paths, mean_jpeg_bytes = write_shards(directory, args.images, args.jpeg_side)
        results = {workers: measure(paths, spec, args.batch, workers, args.batches) for workers in args.workers}
    stages = stage_ms([photo_like_record(i, args.jpeg_side, np.random.default_rng(i)) for i in range(300)], spec)
    print(
        json.dumps(
            {
                "bench": "data_pipeline",
                "cpu": cpu_name(),
                "images_in_shards": args.images,
                "jpeg_side": args.jpeg_side,
                "mean_jpeg_bytes": round(mean_jpeg_bytes),
                "crop": 224,
                "captions_per_image": 5,
                "context_length": 248,
                "batch": args.batch,
                "crop_backend": args.crop_backend,
                "images_per_s": {str(w): round(rate, 1) for w, (rate, _, _) in results.items()},
                # 0 workers: examples made in the training process, in the threads Grain reads with
                "images_per_s_per_worker": {str(w): round(rate / max(w, 1), 1) for w, (rate, _, _) in results.items()},
                "training_process_cpu_us_per_image": {str(w): round(cpu, 1) for w, (_, cpu, _) in results.items()},
                # What an image costs a worker's core, whatever else the machine does: 1e6 / this is one core's rate.
                "workers_cpu_us_per_image": {str(w): round(cpu, 1) for w, (_, _, cpu) in results.items() if w},
                "stage_ms_one_thread": stages,
                "stack_batch_ms_per_image": stacking_ms(args.batch, spec.image_size),
            }
        )
    )


if __name__ == "__main__":
    main()
