"""rsclip-jax: long-text CLIP trained on role-play synthetic captions, in JAX/Flax.

The public names below load on first use, so `import rsclip_jax.records` (the caption shard schema,
shared with `captioning/`) pulls in neither JAX nor any other heavy dependency.
"""

import importlib

_PUBLIC = {
    "CLIP": "rsclip_jax.model",
    "ModelConfig": "rsclip_jax.variants",
    "VARIANTS": "rsclip_jax.variants",
    "model_config": "rsclip_jax.variants",
    "tokenize": "rsclip_jax.tokenizer",
    "stretch_positions": "rsclip_jax.weights.positions",
    "contrastive_loss": "rsclip_jax.losses",
    "LOSS_KINDS": "rsclip_jax.losses",
    "Caption": "rsclip_jax.records",
    "CaptionRecord": "rsclip_jax.records",
    "RecordError": "rsclip_jax.records",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'rsclip_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
