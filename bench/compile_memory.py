"""Compiled peak memory per device, plain against sharded (chunked) loss: of the loss alone (its value
and gradients for the model's embedding width) and of the whole training step.

    .venv/bin/python bench/compile_memory.py [--variant B/16] [--batches 2048 32768] [--captions 5] [--devices 8]

Compiles (never runs) for `--devices` fake CPU devices on a (devices, 1, 1) mesh and reads XLA's
`memory_analysis()` of the per-device program: arguments, outputs and temporaries. Compute is float32
on the CPU backend. Prints one JSON line.
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
    parser.add_argument("--remat-policy", default="nothing", help="off keeps every block's activations")
    args = parser.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"  # before JAX loads
    sys.argv = sys.argv[:1]

    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from rsclip_jax.accelerators.sharding import make_mesh
    from rsclip_jax.config import base_config
    from rsclip_jax.model.config import ModelConfig
    from rsclip_jax.training.losses import contrastive_loss, sharded_contrastive_loss
    from rsclip_jax.training.step import make_train_step
    from rsclip_jax.training.train_setup import TrainSetup

    mesh = make_mesh((args.devices, 1, 1))
    rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))

    def peak_gib(compiled) -> float:
        m = compiled.memory_analysis()
        return round(
            (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes) / 2**30,
            3,
        )

    def loss_peak(model_config, batch, sharded):
        loss = sharded_contrastive_loss if sharded == "on" else contrastive_loss
        kwargs = {"mesh": mesh} if sharded == "on" else {}
        value_and_grads = jax.jit(
            jax.value_and_grad(lambda i, t, s: loss(i, t, s, kind="softmax_union", **kwargs), argnums=(0, 1)),
            in_shardings=(rows, rows, None),
        )
        width = model_config.embed_dim
        return peak_gib(
            value_and_grads.lower(
                jax.ShapeDtypeStruct((batch, width), jnp.float32),
                jax.ShapeDtypeStruct((batch, args.captions, width), jnp.float32),
                jax.ShapeDtypeStruct((), jnp.float32),
            ).compile()
        )

    def step_peak(config, batch):
        setup = TrainSetup.build(config, mesh)
        step = make_train_step(setup, ("any",) * args.captions)
        size = setup.model.image_size
        return peak_gib(
            step.lower(
                setup.abstract_state,
                {
                    "image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8),
                    "tokens": jax.ShapeDtypeStruct((batch, args.captions, args.context), jnp.int32),
                    "image_id": jax.ShapeDtypeStruct((batch,), jnp.int32),
                },
            ).compile()
        )

    results = []
    for batch in args.batches:
        for sharded in ("off", "on"):
            config = base_config()
            config.model.update(variant=args.variant, context_length=args.context, remat_policy=args.remat_policy)
            config.batch_size = batch
            config.loss.sharded = sharded
            model_config = ModelConfig.from_config(config)
            start = time.perf_counter()
            results.append(
                {
                    "global_batch": batch,
                    "loss": "sharded" if sharded == "on" else "plain",
                    "loss_only_peak_gib": loss_peak(model_config, batch, sharded),
                    "train_step_peak_gib": step_peak(config, batch),
                    "compile_s": round(time.perf_counter() - start, 1),
                }
            )
    print(
        json.dumps(
            {
                "bench": "compile_memory",
                "variant": args.variant,
                "context_length": args.context,
                "captions_per_image": args.captions,
                "devices": args.devices,
                "remat_policy": args.remat_policy,
                "per_device": results,
            }
        )
    )


if __name__ == "__main__":
    main()
