"""CLIPS at demo scale (`python -m rsclip_jax.demo --recipe clips`): demo.py's tiny model, trained as
configs/clips_b16.py trains B/16.

Each image brings its procedural web alt text (slot "alt"; the one image in ten without any is skipped) and
one sentence of a long role caption, both at 32 tokens (the model's whole context here: trained from scratch,
it has no pretrained positions beyond those) and each with its own loss (softmax_per_caption); a caption
generator as deep as the text tower reads the image tokens, the alt text and 16 learnable queries and
predicts the long caption's first 16 tokens, at CLIPS' weight 2. Half of demo.py's steps: the generator's
vocabulary logits (64 x 16 x 49408 a step) cost a CPU more than the tiny towers do. Takes no arguments.
"""

import os

from rsclip_jax.config import load_recipe, recipe_arguments


def get_config(arg=None):
    recipe_arguments(arg, {}, "rsclip_jax/demo/configs/demo_clips.py")
    config = load_recipe(os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py"))
    config.data.slot_kinds = ("alt", "long")
    config.data.sub_caption = "sentence"
    config.data.sub_caption_tokens = 30
    # From scratch, positions the text rows never reach stay random: the model keeps the 32 it trains.
    config.model.context_length = 32
    config.loss.kind = "softmax_per_caption"
    config.generator.weight = 2.0
    config.generator.queries = 16
    config.generator.loss_chunk = 4
    config.total_steps = 300
    config.log_every_steps = 10
    return config
