"""Long-CLIP, ViT-B/16 (METHOD.md sections 2-4).

Source numbers: the same optimizer as Role-SynthCLIP (AdamW 0.9/0.999/1e-8, lr 1e-6, weight decay
1e-2, 200 warmup steps then cosine, global batch 2048, 6 epochs over 1M images); text positions
stretched 77 -> 248 with the first 20 (the pretrained ones) frozen; label smoothing 0.1; each image
brings one long and one short caption, the short one matched against image embeddings rebuilt from
their top 32 principal components ("primary component matching"; computed over the global batch,
where Long-CLIP's code uses each device's local batch).
"""

from rsclip_jax.config import paper_b16_config


def get_config(arg=None):
    config = paper_b16_config(epochs=6, examples_per_epoch=1_000_000)
    config.model.frozen_text_positions = 20
    config.data.sampling = "grouped"
    config.data.slot_kinds = ("long", "short")
    config.loss.kind = "softmax_union"
    config.loss.label_smoothing = 0.1
    config.loss.short_caption_components = 32
    return config
