"""Synth²'s generator of image embeddings (docs/synth2.md) for a ViT-B/16 CLIP with 248 text positions.

The CLIP's model keys are the paper recipes' (configs/rsclip_b16.py): its text tower reads the captions, and the
shards are embedded by its image tower (`python -m rsclip_jax.embed --depth=DEPTH`). The generator: 12 blocks of
width 768 (DALL·E 2's prior is a 12-layer transformer as wide over CLIP space), flow matching with caption
dropout 0.1, AdamW at 1e-4, global batch 2048, bf16 on accelerators.

Arguments (`--config=configs/synth2_generator_b16.py:clip_workdir=DIR,depth=final,epochs=10,examples=1000000`):
clip_workdir, the CLIP's workdir (a run's, or `convert import`'s); depth, "final" or "tokens:K"; epochs and
examples (pairs per epoch) set the step count.
"""

from rsclip_jax.config import paper_b16_config, recipe_arguments

ARGUMENTS = {"clip_workdir": "", "depth": "final", "epochs": 10, "examples": 1_000_000}


def get_config(arg=None):
    values = recipe_arguments(arg, ARGUMENTS, "configs/synth2_generator_b16.py")
    config = paper_b16_config(epochs=values["epochs"], examples=values["examples"], eval_root="")
    config.task = "synth2_generator"
    config.data.sampling = "grouped"
    config.data.slot_kinds = ("any",)
    config.synth2_generator.update(
        clip_workdir=values["clip_workdir"], depth=values["depth"], width=768, layers=12, heads=12, caption_dropout=0.1
    )
    config.optim.update(lr=1e-4, weight_decay=0.05, warmup_steps=1000, decay_vectors=False, grad_clip_norm=1.0)
    return config
