"""Synth²'s generator of image embeddings (docs/synth2.md) for the demo's tiny CLIP, on a CPU in minutes.

The demo CLIP's keys (rsclip_jax/demo/configs/demo.py), so that its text tower reads the captions; the shards are
the demo corpus embedded by that CLIP (`python -m rsclip_jax.embed --workdir=workdirs/demo
--out=workdirs/demo/embedded ...`). A tiny generator (width 64, 2 blocks) of the final image embedding. Takes no
arguments; change keys with `--config.x.y=value` (e.g. `--config.synth2_generator.depth=tokens:1`).
"""

import os

from rsclip_jax.config import load_recipe, recipe_arguments


def get_config(arg=None):
    recipe_arguments(arg, {}, "rsclip_jax/demo/configs/demo_synth2_generator.py")
    config = load_recipe(os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py"))
    config.task = "synth2_generator"
    config.total_steps = 600
    config.data.train_shards = "workdirs/demo/embedded/train-*.array_record"
    config.data.slot_kinds = ("any",)  # one caption of each image a step
    config.synth2_generator.clip_workdir = "workdirs/demo"
    config.synth2_generator.update(depth="final", width=64, layers=2, heads=4)
    config.optim.update(lr=1e-3, weight_decay=0.0, warmup_steps=50, grad_clip_norm=1.0)
    return config
