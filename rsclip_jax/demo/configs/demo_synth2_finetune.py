"""Fine-tuning the demo's tiny CLIP (demo.py) with or without Synth²'s synthetic pairs, as `python -m rsclip_jax.demo
--recipe synth2` runs its three arms: from a step-0 checkpoint holding a trained demo CLIP's weights and a fresh
optimizer state (rsclip_jax/demo/synth2.py writes it), the same steps and batch in every arm.

The image tower is frozen in every arm: synthetic rows at depth "final" bypass it (synth2/mixing.py), so the arms
with synthetic pairs must freeze it, and the arm with real pairs only freezes it too, so that the arms differ in
their data alone. When config.data.synthetic_shards is given, a quarter of each batch is synthetic. These settings
are fixed before any run and never chosen by held-out scores. Takes no arguments; the arm's shards go in
`--config.data.train_shards` and `--config.data.synthetic_shards`.
"""

import os

from rsclip_jax.config import load_recipe, recipe_arguments


def get_config(arg=None):
    recipe_arguments(arg, {}, "rsclip_jax/demo/configs/demo_synth2_finetune.py")
    config = load_recipe(os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py"))
    config.total_steps = 150
    config.log_every_steps = 25
    config.checkpoint_every_steps = 150  # the last step's only: a fine-tune of a minute has nothing to resume
    config.keep_checkpoints = 1
    config.data.train_shards = "workdirs/demo-synth2/corpus/train-*.array_record"
    config.data.synthetic_fraction = 0.25  # 16 of the 64 rows; used only with config.data.synthetic_shards
    config.data.synthetic_depth = "final"
    config.optim.freeze = (r"visual\..*",)
    # A third of demo.py's peak learning rate with a short warmup: a fine-tune of trained weights.
    config.optim.update(lr=3e-4, warmup_steps=15)
    return config
