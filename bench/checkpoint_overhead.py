"""What async Orbax checkpoints cost a training run: the time `save` blocks the loop (copying the state
off the devices), the time the write takes in the background, and the step time with and without saves.

    .venv/bin/python bench/checkpoint_overhead.py [--variant S/16] [--batch 8] [--steps 20] [--every 5]

Saves the real train state (parameters and AdamW moments) with the trainer's Checkpointer to a
temporary folder on local disk. Prints one JSON line.
"""

import argparse
import json
import tempfile
import time

import jax
import numpy as np
from machine import cpu_name
from train_step import random_batch

from rsclip_jax.accelerators.sharding import make_mesh
from rsclip_jax.config import base_config
from rsclip_jax.training.checkpoints import Checkpointer
from rsclip_jax.training.step import batch_sharding, make_train_step
from rsclip_jax.training.train_setup import TrainSetup


def run(state, train_step, batch, steps: int, checkpointer=None, every: int = 0):
    """(state, seconds per step, seconds each save blocked) over `steps` steps, saving every `every`."""
    blocked = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        state, metrics = train_step(state, batch)
        jax.block_until_ready(metrics)
        if checkpointer is not None and step % every == 0:
            save_start = time.perf_counter()
            checkpointer.save(step, state, force=True)
            blocked.append(time.perf_counter() - save_start)
    return state, (time.perf_counter() - start) / steps, blocked


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="S/16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=77)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--every", type=int, default=5)
    args = parser.parse_args()
    config = base_config()
    config.model.update(variant=args.variant, context_length=args.context)
    config.batch_size = args.batch
    mesh = make_mesh((1, 1, 1))
    setup = TrainSetup.build(config, mesh)
    state = setup.init_state()
    train_step = make_train_step(setup, ("any",))
    batch = jax.device_put(random_batch(setup.model, args.batch, 1), batch_sharding(mesh))
    state, _, _ = run(state, train_step, batch, 2)  # compile

    state, plain_step_s, _ = run(state, train_step, batch, args.steps)
    with tempfile.TemporaryDirectory() as directory:
        checkpointer = Checkpointer(directory, every_steps=1, keep=2)
        state, saving_step_s, blocked = run(state, train_step, batch, args.steps, checkpointer, args.every)
        wait_start = time.perf_counter()
        checkpointer.close()  # the last save's background write
        last_write_s = time.perf_counter() - wait_start
    state_bytes = sum(np.dtype(x.dtype).itemsize * x.size for x in jax.tree.leaves(state))
    print(
        json.dumps(
            {
                "bench": "checkpoint_overhead",
                "cpu": cpu_name(),
                "variant": args.variant,
                "state_gib": round(state_bytes / 2**30, 3),
                "steps": args.steps,
                "save_every": args.every,
                "step_s_without_saves": round(plain_step_s, 4),
                "step_s_with_saves": round(saving_step_s, 4),
                "overhead_per_step_fraction": round(saving_step_s / plain_step_s - 1, 4),
                "save_blocking_s": {"mean": round(float(np.mean(blocked)), 4), "max": round(float(np.max(blocked)), 4)},
                "last_background_write_s": round(last_write_s, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
