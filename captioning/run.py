"""A captioning run: images -> caption shards, resumable, split across workers without coordination.

Shard k is written aside and renamed into place (by `write_shard`), then its manifest entry (counts, config hash) is
written the same way; a shard counts as finished only when its manifest entry exists. A run killed at
any moment and started again redoes only unfinished shards: every (image, role, kind) ends up once.
"""

import collections
import hashlib
import json
import os
import time

from tqdm import tqdm

from captioning.engines import Request, request_seed
from captioning.images import load_image, shard_slices
from captioning.prompts import CAPTION_KINDS, PROMPT_VERSION, caption_messages
from rsclip_jax.records import Caption, CaptionRecord, write_shard


def shard_name(index: int) -> str:
    return f"captions-{index:05d}"


def _atomic_write(path: str, write) -> None:
    temporary = path + ".tmp"
    write(temporary)
    os.replace(temporary, path)


def _write_jsonl(path: str, rows) -> None:
    def write(temporary):
        with open(temporary, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)

    _atomic_write(path, write)


def _write_json(path: str, payload) -> None:
    def write(temporary):
        with open(temporary, "w") as f:
            json.dump(payload, f, indent=1)

    _atomic_write(path, write)


def run_config_hash(settings: dict, inputs: list[tuple[str, str]]) -> str:
    """Hash of everything that decides the output: settings, roles, prompts, and the input list."""
    payload = json.dumps({"settings": settings, "inputs": [image_id for image_id, _ in inputs]}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def caption_shard(engine, inputs, roles, *, short_side, max_pixels, seed, batch_images):
    """Records and decode errors for one shard's inputs; each batch's requests go to the engine together."""
    records, errors = [], []
    for start in range(0, len(inputs), batch_images):
        loaded = []
        for image_id, path in inputs[start : start + batch_images]:
            try:
                loaded.append((image_id, *load_image(path, short_side=short_side, max_pixels=max_pixels)))
            except Exception as e:  # PIL raises many types for non-images and corrupt files
                errors.append({"image_id": image_id, "path": path, "reason": f"{type(e).__name__}: {e}"})
        slots = [(role, kind) for role in roles.roles for kind in CAPTION_KINDS]
        requests = [
            Request(image, caption_messages(role, kind), request_seed(seed, image_id, role.name, kind))
            for image_id, image, _, _ in loaded for role, kind in slots
        ]
        texts = iter(engine.generate(requests)) if requests else iter(())
        for image_id, _, jpeg, original in loaded:
            captions = tuple(
                Caption(role.name, kind, next(texts).strip(), engine.model_name, PROMPT_VERSION) for role, kind in slots
            )
            records.append(CaptionRecord(image_id, jpeg, original, captions))
    return records, errors


def run(inputs, out_dir, make_engine, roles, *, settings: dict, images_per_shard: int, num_workers: int,
        worker_index: int, short_side: int, max_pixels: int, seed: int, batch_images: int) -> dict:
    """Captions this worker's unfinished shards; returns the summary of what it wrote."""
    if not 0 <= worker_index < num_workers:
        raise ValueError(f"--worker-index {worker_index} must lie in [0, --num-workers={num_workers})")
    config_hash = run_config_hash(settings, inputs)
    os.makedirs(os.path.join(out_dir, "manifest"), exist_ok=True)

    def manifest_path(k):
        return os.path.join(out_dir, "manifest", shard_name(k) + ".json")

    shards = shard_slices(len(inputs), images_per_shard)
    todo = []
    for k in range(worker_index, len(shards), num_workers):
        if os.path.exists(manifest_path(k)):
            with open(manifest_path(k)) as f:
                entry = json.load(f)
            if entry["config_hash"] != config_hash:
                raise ValueError(
                    f"{out_dir} holds shards of another run (config hash {entry['config_hash']}, this run "
                    f"{config_hash}: other inputs, model, roles or settings); use another --out"
                )
        else:
            todo.append(k)
    summary, caption_counts, word_totals = collections.Counter(), collections.Counter(), collections.Counter()
    engine = make_engine() if todo else None
    start = time.perf_counter()
    with tqdm(total=sum(len(shards[k]) for k in todo), unit="img", desc=f"worker {worker_index}") as bar:
        for k in todo:
            shard_inputs = [inputs[i] for i in shards[k]]
            records, errors = caption_shard(
                engine, shard_inputs, roles, short_side=short_side, max_pixels=max_pixels, seed=seed, batch_images=batch_images
            )
            shard_path = os.path.join(out_dir, shard_name(k) + ".array_record")
            write_shard(shard_path, records)
            _write_jsonl(os.path.join(out_dir, shard_name(k) + ".errors.jsonl"), errors)
            counts = collections.Counter(f"{c.role}/{c.kind}" for r in records for c in r.captions)
            _write_json(manifest_path(k), {
                "shard": os.path.basename(shard_path), "config_hash": config_hash, "images": len(shard_inputs),
                "records": len(records), "decode_errors": len(errors), "captions": dict(counts),
            })
            summary["images"] += len(records)
            summary["decode_errors"] += len(errors)
            for r in records:
                for c in r.captions:
                    caption_counts[f"{c.role}/{c.kind}"] += 1
                    word_totals[f"{c.role}/{c.kind}"] += len(c.text.split())
            bar.update(len(shard_inputs))
    return {
        "shards_written": len(todo), "images": summary["images"], "decode_errors": summary["decode_errors"],
        "captions": dict(sorted(caption_counts.items())),
        "mean_words": {key: round(word_totals[key] / n, 1) for key, n in sorted(caption_counts.items())},
        "seconds": round(time.perf_counter() - start, 1),
    }
