"""Role-SynthCLIP, ViT-B/16 (docs/method.md sections 3-4): the paper's recipe.

Source numbers: AdamW (0.9, 0.999, eps 1e-8), lr 1e-6, weight decay 1e-2 on every parameter (the paper's
code decays all of them), 200 warmup steps then cosine, global batch 2048, 6 epochs, bf16 on accelerators,
CLIP preprocessing without augmentation, the logit scale not clamped; text positions stretched to 248, all
of them trained; softmax_union over the captions of the batch. Like the paper's code, every caption is its
own row (`rows` sampling, up to 10 per image: 5 roles x long/short) and rows of the same image in a batch
count as positives. Grouped sampling (`--config.data.sampling=grouped
--config.data.slot_kinds="('any','any')"`) puts K captions of an image in the same batch instead.

Arguments (`--config=configs/rsclip_b16.py:epochs=6,examples=1000000,eval_root=DIR`), which set the step
count and the evaluations: epochs (6); examples, the caption rows (image-text pairs) per epoch (1000000:
the paper trains on 1M pairs in all); eval_root, the folder of the paper's evaluations (COCO, Flickr30k,
Urban-1k, ImageNet-1k, ImageNet-O, CIFAR-100; layout in `rsclip_jax.config.paper_evals`), none by default.
Start from OpenAI's ViT-B/16 weights imported into the workdir, with positions stretched to 248.
"""

from rsclip_jax.config import PAPER_ARGUMENTS, paper_b16_config, recipe_arguments


def get_config(arg=None):
    config = paper_b16_config(**recipe_arguments(arg, PAPER_ARGUMENTS, "configs/rsclip_b16.py"))
    config.model.frozen_text_positions = 0
    config.data.sampling = "rows"
    config.data.rows_per_image = 10
    config.loss.kind = "softmax_union"
    return config
