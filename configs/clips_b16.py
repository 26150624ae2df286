"""CLIPS-style training, ViT-B/16 (METHOD.md section 6): sub-caption sampling and per-caption losses.

What is taken from CLIPS: each caption is cut to one random sentence (split after '.' and '!'),
which shortens the text and its cost; the K captions of an image each get their own symmetric CLIP
loss (softmax_per_caption), averaged. CLIPS trains from scratch on 1B recaptioned images with its own
schedule, which METHOD.md does not give; this recipe fine-tunes with the Role-SynthCLIP optimizer
numbers (lr 1e-6, weight decay 1e-2, 200 warmup steps, batch 2048, 6 epochs over 1M images).
`--config.data.sub_caption=token_block --config.data.sub_caption_tokens=32` samples a random block
of tokens instead.
"""

from rsclip_jax.config import paper_b16_config


def get_config(arg=None):
    config = paper_b16_config(epochs=6, examples_per_epoch=1_000_000)
    config.data.sampling = "grouped"
    config.data.slot_kinds = ("any", "any")
    config.data.sub_caption = "sentence"
    config.loss.kind = "softmax_per_caption"
    return config
