"""Synth²'s generator: its training step (the frozen CLIP text tower reading the captions, flow matching, AdamW) and
its sampling (Euler steps with classifier-free guidance), examples/s on this machine's devices.

    .venv/bin/python bench/synth2_generator.py --variant B/16 --context 248 --batch 32 --depth final
    .venv/bin/python bench/synth2_generator.py --variant tiny --context 64 --batch 64 --width 64 --layers 2 --heads 4

The recipe's generator by default (configs/synth2_generator_b16.py: width 768, 12 blocks); random weights, random
caption tokens and embeddings (compute does not depend on their values). Prints one JSON line: seconds per training
step and examples/s, seconds per sampling batch and captions/s, with the machine.
"""

import argparse
import json
import time

import jax
import numpy as np
from machine import cpu_name

from rsclip_jax.accelerators.sharding import make_mesh
from rsclip_jax.config import base_config
from rsclip_jax.synth2.generator import GeneratorConfig
from rsclip_jax.synth2.generator_training import frozen_clip_setup, make_generator_step
from rsclip_jax.synth2.synthetic_pairs import pair_sampler
from rsclip_jax.training.train_setup import TrainSetup

END_OF_TEXT = 49407


def seconds_per_call(fn, warmup: int, repeats: int) -> float:
    """After `warmup` calls (the first compiles), the mean of `repeats`; fn blocks until its result is ready."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", default="B/16")
    parser.add_argument("--context", type=int, default=248)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--depth", default="final")
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--sample-steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    config = base_config()
    config.task = "synth2_generator"
    config.batch_size = args.batch
    config.model.update(variant=args.variant, context_length=args.context)
    config.synth2_generator.update(depth=args.depth, width=args.width, layers=args.layers, heads=args.heads)
    config.data.slot_kinds = ("any",)
    mesh = make_mesh((jax.device_count(), 1, 1))
    setup, clip_setup = TrainSetup.build(config, mesh), frozen_clip_setup(config, mesh)
    shape = GeneratorConfig.from_config(config.synth2_generator, setup.model).embedding_shape
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, END_OF_TEXT - 1, (args.batch, args.context), dtype=np.int32)
    tokens[:, -1] = END_OF_TEXT
    batch = {
        "tokens": tokens[:, None],
        "image_embedding": rng.normal(size=(args.batch, *shape)).astype(np.float32),
        "image_id": np.arange(args.batch),
    }
    state, clip_params = setup.init_state(), clip_setup.init_state()["params"]
    step = make_generator_step(setup, clip_setup)

    def train():
        nonlocal state
        state, metrics = step(state, clip_params, batch)
        jax.block_until_ready(metrics)

    train_s = seconds_per_call(train, 1, args.repeats)
    sample = pair_sampler(
        setup, state["params"], clip_setup, clip_params, steps=args.sample_steps, guidance=args.guidance, seed=0
    )
    sample_s = seconds_per_call(lambda: jax.block_until_ready(sample(tokens, 0, 0)), 1, args.repeats)
    print(
        json.dumps(
            {
                "bench": "synth2_generator",
                "variant": args.variant,
                "context": args.context,
                "depth": args.depth,
                "embedding_shape": list(shape),
                "generator": {"width": args.width, "layers": args.layers, "heads": args.heads},
                "batch": args.batch,
                "train_step_s": round(train_s, 3),
                "train_examples_per_s": round(args.batch / train_s, 1),
                "sample_steps": args.sample_steps,
                "guidance": args.guidance,
                "sample_batch_s": round(sample_s, 3),
                "sample_captions_per_s": round(args.batch / sample_s, 1),
                "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
                "cpu": cpu_name(),
            }
        )
    )


if __name__ == "__main__":
    main()
