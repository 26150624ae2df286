"""Long-CLIP, ViT-B/16 (METHOD.md sections 2-4).

Source numbers: the same optimizer as Role-SynthCLIP (AdamW 0.9/0.999/1e-8, lr 1e-6, weight decay
1e-2, 200 warmup steps then cosine, global batch 2048, 6 epochs over 1M images); text positions
stretched 77 -> 248 with the first 20 (the pretrained ones) frozen; label smoothing 0.1; each image
brings one long and one short caption, the short one matched against image embeddings rebuilt from
their top 32 principal components ("primary component matching"; computed over the global batch,
where Long-CLIP's code uses each device's local batch).
"""

from rsclip_jax.config import base_config


def get_config(arg=None):
    config = base_config()
    config.batch_size = 2048
    config.total_steps = 6 * 1_000_000 // config.batch_size
    config.log_every_steps = 50
    config.checkpoint_every_steps = 500

    config.model.variant = "B/16"
    config.model.context_length = 248
    config.model.frozen_text_positions = 20

    config.data.sampling = "grouped"
    config.data.slot_kinds = ("long", "short")
    config.data.num_workers = 8

    config.loss.kind = "softmax_union"
    config.loss.label_smoothing = 0.1
    config.loss.short_caption_components = 32
    config.optim.lr = 1e-6
    config.optim.weight_decay = 1e-2
    config.optim.warmup_steps = 200
    return config
