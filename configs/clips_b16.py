"""CLIPS, ViT-B/16 (docs/method.md section 6): web alt text and synthetic sub-captions, each with its own loss, and the
caption generator.

What is taken from CLIPS (and its code, OpenVision): each image brings its web alt text (slot "alt", the record's
`alt_text`; images without one are skipped and counted) and one of its long synthetic captions (CLIPS' recaptions are
long ones) cut to one random sentence (split after '.' and '!'). Both are tokenized to 80 tokens, OpenVision's text
length: the text tower runs at 80 positions, not 248, CLIPS' compute saving; evaluation still reads full captions at
248. Each stream gets its own symmetric CLIP loss (softmax_per_caption), averaged. The caption generator reads the
image tokens, the alt text and 128 learnable queries and predicts the full synthetic caption (128 tokens), its next-
token loss added at weight 2. CLIPS trains from scratch on 1B recaptioned images with its own schedule, which
docs/method.md does not give; this recipe fine-tunes with the Role-SynthCLIP optimizer numbers (lr 1e-6, weight decay
1e-2 on every parameter, 200 warmup steps, batch 2048, 6 epochs over 1M images).
`--config.data.sub_caption=token_block` samples a random block of tokens instead of a sentence.

Arguments (`--config=configs/clips_b16.py:epochs=6,examples=1000000,eval_root=DIR`): epochs (6); examples, images per
epoch (1000000); eval_root, the folder of the paper's evaluations (layout in `rsclip_jax.config.paper_evals`), none by
default."""

from rsclip_jax.config import PAPER_ARGUMENTS, paper_b16_config, recipe_arguments


def get_config(arg=None):
    config = paper_b16_config(**recipe_arguments(arg, PAPER_ARGUMENTS, "configs/clips_b16.py"))
    config.data.sampling = "grouped"
    config.data.slot_kinds = ("alt", "long")
    config.data.sub_caption = "sentence"
    config.data.sub_caption_tokens = 78  # + start and end of text: 80 positions
    config.loss.kind = "softmax_per_caption"
    config.generator.weight = 2.0
    config.generator.queries = 128
    return config
