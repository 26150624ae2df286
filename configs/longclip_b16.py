"""Long-CLIP, ViT-B/16 (docs/method.md sections 2-4).

Source numbers: the same optimizer as Role-SynthCLIP (AdamW 0.9/0.999/1e-8, lr 1e-6, weight decay 1e-2 on
every parameter as Long-CLIP's train.py decays all of them, 200 warmup steps then cosine, global batch
2048, 6 epochs over 1M images, the logit scale not clamped); text positions stretched 77 -> 248 with the
first 20 (the pretrained ones) frozen; label smoothing 0.1; each image brings one long and one short
caption, the short one matched against image embeddings rebuilt from their top 32 principal components
("primary component matching"), computed as Long-CLIP's code does: over each device's own rows, centred,
the mean added back, not renormalised (`--config.loss.short_caption_pca=global` uses the whole batch's).

Arguments (`--config=configs/longclip_b16.py:epochs=6,examples=1000000,eval_root=DIR`): epochs (6);
examples, images per epoch (1000000); eval_root, the folder of the paper's evaluations (layout in
`rsclip_jax.config.paper_evals`), none by default.
"""

from rsclip_jax.config import PAPER_ARGUMENTS, paper_b16_config, recipe_arguments


def get_config(arg=None):
    config = paper_b16_config(**recipe_arguments(arg, PAPER_ARGUMENTS, "configs/longclip_b16.py"))
    config.model.frozen_text_positions = 20
    config.data.sampling = "grouped"
    config.data.slot_kinds = ("long", "short")
    config.loss.kind = "softmax_union"
    config.loss.label_smoothing = 0.1
    config.loss.short_caption_components = 32
    config.loss.short_caption_pca = "local"
    return config
