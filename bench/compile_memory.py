"""Compiled peak memory per device of the training step, plain against sharded (chunked) loss.

    .venv/bin/python bench/compile_memory.py [--variant B/16] [--batches 2048 32768] [--captions 5] [--devices 8]

Compiles (never runs) the real train step for `--devices` fake CPU devices on a (devices, 1, 1) mesh
and reads XLA's `memory_analysis()` of the per-device program: arguments, outputs and temporaries.
Compute is float32 on the CPU backend. Prints one JSON line.
"""

import argparse
import json
import os
import sys
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="B/16")
    parser.add_argument("--context", type=int, default=248)
    parser.add_argument("--batches", type=int, nargs="+", default=[2048, 32768])
    parser.add_argument("--captions", type=int, default=5)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--no-remat", dest="remat", action="store_false", help="keep every block's activations")
    args = parser.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"  # before JAX loads
    sys.argv = sys.argv[:1]

    import jax
    import jax.numpy as jnp

    from rsclip_jax.config import base_config, model_config_from
    from rsclip_jax.optim import learning_rate_schedule
    from rsclip_jax.sharding import make_mesh
    from rsclip_jax.train_state import setup_train_state
    from rsclip_jax.train_step import make_train_step

    mesh = make_mesh((args.devices, 1, 1))
    results = []
    for batch in args.batches:
        for sharded in ("off", "on"):
            config = base_config()
            config.model.update(variant=args.variant, context_length=args.context, remat=args.remat)
            config.update(batch_size=batch, total_steps=1000)
            config.loss.sharded = sharded
            model_config = model_config_from(config)
            setup = setup_train_state(config, model_config, mesh)
            step = make_train_step(config, setup, ("any",) * args.captions, learning_rate_schedule(config.optim, 1000), mesh)
            size = model_config.image_size
            abstract_batch = {
                "image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8),
                "tokens": jax.ShapeDtypeStruct((batch, args.captions, args.context), jnp.int32),
                "image_id": jax.ShapeDtypeStruct((batch,), jnp.int32),
            }
            start = time.perf_counter()
            memory = step.lower(setup.abstract_state, abstract_batch).compile().memory_analysis()
            gib = lambda n: round(n / 2**30, 2)
            results.append({
                "global_batch": batch, "loss": "sharded" if sharded == "on" else "plain",
                "arguments_gib": gib(memory.argument_size_in_bytes), "outputs_gib": gib(memory.output_size_in_bytes),
                "temporaries_gib": gib(memory.temp_size_in_bytes),
                "peak_gib": gib(memory.argument_size_in_bytes + memory.output_size_in_bytes
                                - memory.alias_size_in_bytes + memory.temp_size_in_bytes),
                "compile_s": round(time.perf_counter() - start, 1),
            })
    print(json.dumps({"bench": "compile_memory", "variant": args.variant, "context_length": args.context,
                      "captions_per_image": args.captions, "devices": args.devices, "remat": args.remat,
                      "per_device": results}))


if __name__ == "__main__":
    main()
