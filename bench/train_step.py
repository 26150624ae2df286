"""Training step: time, examples/s, analytic TFLOP/s per device and MFU; with --open-clip, the same step
(model size, batch, text length, loss, AdamW) in open_clip on the same machine, and the ratio.

    .venv/bin/python bench/train_step.py --variant tiny --batch 64 --context 64 --captions 2
    .venv/bin/python bench/train_step.py --variant B/16 --batch 8 --context 248 --steps 3 --open-clip
    .venv/bin/python bench/train_step.py ... --peak-tflops 0.332   # a CPU: give its peak for MFU
    python bench/train_step.py --variant B/16 --context 248 --max-batch --open-clip   # a GPU or TPU host

On a GPU or TPU the memory settings left unset are picked as training picks them
(rsclip_jax.accelerators.memory_settings); `--max-batch` first finds the largest batch that fits this host's devices,
by compiling.

Inputs are random (images, token ids ending in end-of-text): compute does not depend on their values.
Prints one JSON line.
"""

import argparse
import json
import time

import jax
import numpy as np
from machine import cpu_name

from rsclip_jax.accelerators.flops import clip_training_flops_per_example, peak_tflops_per_device, utilization
from rsclip_jax.accelerators.host_memory import keep_freed_memory_in_heap
from rsclip_jax.accelerators.memory_settings import largest_batch, pick_for_local_devices
from rsclip_jax.accelerators.sharding import mesh_from_config
from rsclip_jax.config import base_config
from rsclip_jax.training.step import batch_sharding, make_train_step
from rsclip_jax.training.train_setup import TrainSetup

END_OF_TEXT = 49407


def random_batch(model_config, batch, captions, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, END_OF_TEXT - 1, (batch, captions, model_config.context_length), dtype=np.int32)
    tokens[..., -1] = END_OF_TEXT
    images = rng.integers(0, 256, (batch, model_config.image_size, model_config.image_size, 3), dtype=np.uint8)
    return {"image": images, "tokens": tokens, "image_id": np.arange(batch)}


def time_steps(step_fn, warmup: int, steps: int) -> float:
    """Seconds per step after `warmup` steps (the first compiles)."""
    for _ in range(warmup):
        step_fn()
    start = time.perf_counter()
    for _ in range(steps):
        step_fn()
    return (time.perf_counter() - start) / steps


def ours(args):
    config = base_config()
    config.model.update(
        variant=args.variant, context_length=args.context, dtype=args.dtype, remat_policy=args.remat_policy
    )
    config.batch_size = args.batch
    config.optim.update(lr=1e-5, warmup_steps=0)
    config.data.slot_kinds = ("any",) * args.captions
    config, picked = pick_for_local_devices(config)
    if args.max_batch:
        devices = jax.devices()
        args.batch = config.batch_size = largest_batch(
            config, devices, devices[0].memory_stats()["bytes_limit"], granularity=8 * len(devices)
        )
    mesh = mesh_from_config(config.mesh)
    setup = TrainSetup.build(config, mesh)
    model_config = setup.model
    state = setup.init_state()
    slot_kinds = ("any",) * args.captions
    train_step = make_train_step(setup, slot_kinds)
    batch = jax.device_put(random_batch(model_config, args.batch, args.captions), batch_sharding(mesh))

    def step():
        nonlocal state
        state, metrics = train_step(state, batch)
        jax.block_until_ready(metrics)

    seconds = time_steps(step, args.warmup, args.steps)
    flops = args.batch * clip_training_flops_per_example(model_config, args.captions, args.batch)
    peak = args.peak_tflops or peak_tflops_per_device(jax.devices()[0].device_kind)
    achieved = utilization(flops, seconds, jax.device_count(), peak)
    return model_config, {
        "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "batch": args.batch,
        "remat_policy": model_config.remat_policy,
        "scan_layers": model_config.scan_layers,
        "attention": model_config.attention,
        "picked": picked,
        "compute_dtype": str(np.dtype(model_config.compute_dtype)),
        "step_s": round(seconds, 4),
        "examples_per_s": round(args.batch / seconds, 1),
        "gflops_per_example": round(flops / args.batch / 1e9, 2),
        "tflops_per_device": round(achieved["tflops_per_device"], 3),
        "peak_tflops_per_device": peak,
        "mfu": round(achieved["mfu"], 4) if peak else None,
    }


def theirs(args, model_config):
    """open_clip's CLIP with ClipLoss and torch AdamW: forward, loss, backward, update."""
    import open_clip
    import torch
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    c = model_config
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = open_clip.CLIP(
        c.embed_dim,
        CLIPVisionCfg(
            layers=c.vision_layers,
            width=c.vision_width,
            head_width=c.vision_width // c.vision_heads,
            patch_size=c.patch_size,
            image_size=c.image_size,
            mlp_ratio=c.mlp_ratio,
        ),
        CLIPTextCfg(
            context_length=c.context_length,
            width=c.text_width,
            heads=c.text_heads,
            layers=c.text_layers,
            mlp_ratio=c.mlp_ratio,
        ),
        quick_gelu=c.activation == "quick_gelu",
    ).to(device)
    model.set_grad_checkpointing(model_config.remat_policy != "off")
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=1e-2)
    batch = random_batch(model_config, args.batch, 1)
    images = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).float().div(255).to(device)
    tokens = torch.from_numpy(batch["tokens"][:, 0]).long().to(device)
    bf16 = str(np.dtype(model_config.compute_dtype)) == "bfloat16"

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            image_features, text_features, logit_scale = model(images, tokens)
            loss = loss_fn(image_features, text_features, logit_scale)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    seconds = time_steps(step, args.warmup, args.steps)
    return {
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "step_s": round(seconds, 4),
        "examples_per_s": round(args.batch / seconds, 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--captions", type=int, default=1, help="K captions per image (open_clip: 1 only)")
    parser.add_argument("--dtype", default=None, help="compute dtype; default bfloat16 on accelerators, float32 on CPU")
    parser.add_argument(
        "--remat-policy",
        default=None,
        help="off, nothing, dots, dots_no_batch; default: picked on accelerators, off on a CPU",
    )
    parser.add_argument("--max-batch", action="store_true", help="find and use the largest batch that fits")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--open-clip", action="store_true", help="also time open_clip's step (needs --captions 1)")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=0.0,
        help="peak TFLOP/s per device for MFU; default: looked up for TPUs and NVIDIA GPUs",
    )
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="on a CPU, leave glibc's allocator as it is (rsclip_jax/accelerators/host_memory.py), as before",
    )
    args = parser.parse_args()
    if args.open_clip and args.captions != 1:
        parser.error("--open-clip compares one caption per image (open_clip's ClipLoss): use --captions 1")
    # As training does, before JAX starts its threads; open_clip's step, in this process, runs under it too.
    kept_heap = not args.default_malloc and keep_freed_memory_in_heap()
    model_config, result = ours(args)
    report = {
        "bench": "train_step",
        "cpu": cpu_name(),
        "variant": args.variant,
        "batch": args.batch,
        "context_length": args.context,
        "captions_per_image": args.captions,
        "freed_memory_kept_in_heap": kept_heap,
        "rsclip_jax": result,
    }
    if args.open_clip:
        report["open_clip"] = theirs(args, model_config)
        report["speedup_vs_open_clip"] = round(report["open_clip"]["step_s"] / result["step_s"], 2)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
