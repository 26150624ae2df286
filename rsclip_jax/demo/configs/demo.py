"""Tiny CLIP on the procedural demo corpus, for a CPU in a few minutes (`make demo`).

Not a paper recipe: a tiny model (width 64, 2 layers, 32 px, 64 text positions) with a learning rate
suited to training from scratch; the multi-positive softmax_union loss with K=2 captions per image.
Takes no arguments (`--config=rsclip_jax/demo/configs/demo.py`); change keys with `--config.x.y=value`.
"""

from rsclip_jax.config import base_config, recipe_arguments


def get_config(arg=None):
    recipe_arguments(arg, {}, "rsclip_jax/demo/configs/demo.py")
    config = base_config()
    config.total_steps = 600
    config.batch_size = 64
    config.log_every_steps = 50
    config.checkpoint_every_steps = 200
    config.keep_checkpoints = 2

    config.model.variant = "tiny"
    config.model.context_length = 64
    config.model.dtype = "float32"

    config.data.train_shards = "workdirs/demo/corpus/train-*.array_record"
    config.data.sampling = "grouped"
    config.data.slot_kinds = ("any", "any")
    # One worker makes the batches beside the step, which has the other cores: on 2 cores 300 steps took 147 s
    # against 174 s in the training process, and 158 s with 2 workers (bench/README.md). Its batches are the
    # training process's own: one worker makes the whole slice.
    config.data.num_workers = 1

    config.loss.kind = "softmax_union"
    config.optim.lr = 1e-3
    config.optim.weight_decay = 0.1
    config.optim.warmup_steps = 50
    config.optim.grad_clip_norm = 1.0
    return config
