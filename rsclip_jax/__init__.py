"""rsclip-jax: long-text CLIP trained on role-play synthetic captions, in JAX/Flax.

The public names below load on first use, so `import rsclip_jax.data.records` (the caption shard schema,
shared with `captioning/`) pulls in neither JAX nor any other heavy dependency.
"""

import importlib

_PUBLIC = {
    "CLIP": "rsclip_jax.model.clip",
    "ModelConfig": "rsclip_jax.model.config",
    "VARIANTS": "rsclip_jax.model.config",
    "model_config": "rsclip_jax.model.config",
    "load_model": "rsclip_jax.weights.trained",
    "tokenize": "rsclip_jax.data.tokenizer",
    "stretch_positions": "rsclip_jax.weights.positions",
    "contrastive_loss": "rsclip_jax.training.losses",
    "LOSS_KINDS": "rsclip_jax.training.losses",
    "Caption": "rsclip_jax.data.records",
    "CaptionRecord": "rsclip_jax.data.records",
    "RecordError": "rsclip_jax.data.records",
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
