"""HF transformers CLIPModel names <-> OpenAI CLIP names, and the CLIPConfig of a model config.

Pure renaming and splitting on NumPy arrays; loading and saving with transformers happens in the caller.
"""

import re

import numpy as np

from rsclip_jax.data.tokenizer import EOT_ID, SOT_ID
from rsclip_jax.model.config import ModelConfig

# (HF name pattern, OpenAI name), for everything but the fused attention input projection.
_RENAMES = [
    (r"vision_model\.embeddings\.class_embedding", "visual.class_embedding"),
    (r"vision_model\.embeddings\.patch_embedding\.weight", "visual.conv1.weight"),
    (r"vision_model\.embeddings\.position_embedding\.weight", "visual.positional_embedding"),
    (r"vision_model\.pre_layrnorm\.(weight|bias)", r"visual.ln_pre.\1"),
    (r"vision_model\.post_layernorm\.(weight|bias)", r"visual.ln_post.\1"),
    (r"vision_model\.encoder\.layers\.(\d+)\.", r"visual.transformer.resblocks.\1."),
    (r"text_model\.embeddings\.token_embedding\.weight", "token_embedding.weight"),
    (r"text_model\.embeddings\.position_embedding\.weight", "positional_embedding"),
    (r"text_model\.final_layer_norm\.(weight|bias)", r"ln_final.\1"),
    (r"text_model\.encoder\.layers\.(\d+)\.", r"transformer.resblocks.\1."),
]
_BLOCK_RENAMES = [
    (r"self_attn\.out_proj\.", "attn.out_proj."),
    (r"layer_norm1\.", "ln_1."),
    (r"layer_norm2\.", "ln_2."),
    (r"mlp\.fc1\.", "mlp.c_fc."),
    (r"mlp\.fc2\.", "mlp.c_proj."),
]
_IGNORED = re.compile(r".*position_ids$")


def _rename(name: str) -> str:
    for pattern, replacement in _RENAMES:
        name = re.sub(f"^{pattern}", replacement, name)
    for pattern, replacement in _BLOCK_RENAMES:
        name = re.sub(r"(resblocks\.\d+\.)" + pattern, r"\1" + replacement, name)
    return name


def hf_to_openai(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A CLIPModel state dict under OpenAI names: q/k/v fused, projections as x @ W."""
    out, qkv = {}, {}
    for name, value in state.items():
        if _IGNORED.fullmatch(name):
            continue
        match = re.fullmatch(r"(.*)\.self_attn\.([qkv])_proj\.(weight|bias)", name)
        if match:
            qkv.setdefault((_rename(match.group(1) + "."), match.group(3)), {})[match.group(2)] = value
        elif name in ("visual_projection.weight", "text_projection.weight"):
            out["visual.proj" if name.startswith("visual") else "text_projection"] = value.T
        else:
            out[_rename(name)] = value
    for (prefix, kind), parts in qkv.items():
        out[f"{prefix}attn.in_proj_{kind}"] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
    return out


def openai_to_hf(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of `hf_to_openai`."""
    inverse = {}
    for name, value in state.items():
        match = re.fullmatch(r"(.*)attn\.in_proj_(weight|bias)", name)
        if match:
            for part, chunk in zip("qkv", np.split(value, 3, axis=0)):
                inverse[_hf_name(f"{match.group(1)}self_attn.{part}_proj.{match.group(2)}")] = chunk
        elif name in ("visual.proj", "text_projection"):
            inverse["visual_projection.weight" if name == "visual.proj" else "text_projection.weight"] = value.T
        else:
            inverse[_hf_name(name)] = value
    return inverse


def _hf_name(openai_name: str) -> str:
    for pattern, replacement in _BLOCK_RENAMES:
        hf, ours = pattern.replace("\\", ""), replacement
        openai_name = re.sub(r"(resblocks\.\d+\.)" + re.escape(ours), r"\1" + hf, openai_name)
    fixed = {
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
    }
    if openai_name in fixed:
        return fixed[openai_name]
    for ours, hf in (
        ("visual.ln_pre.", "vision_model.pre_layrnorm."),
        ("visual.ln_post.", "vision_model.post_layernorm."),
        ("ln_final.", "text_model.final_layer_norm."),
        ("visual.transformer.resblocks.", "vision_model.encoder.layers."),
        ("transformer.resblocks.", "text_model.encoder.layers."),
    ):
        if openai_name.startswith(ours):
            return hf + openai_name[len(ours) :]
    return openai_name  # logit_scale, logit_bias


def hf_clip_config(config: ModelConfig) -> dict:
    """Keyword arguments of transformers' CLIPConfig for `config`; end-of-text is set explicitly so HF
    pools where we do (its argmax rule applies only to the legacy eos id 2)."""
    activation = "quick_gelu" if config.activation == "quick_gelu" else "gelu"
    return {
        "projection_dim": config.embed_dim,
        "text_config": {
            "vocab_size": config.vocab_size,
            "hidden_size": config.text_width,
            "num_hidden_layers": config.text_layers,
            "num_attention_heads": config.text_heads,
            "intermediate_size": int(config.text_width * config.mlp_ratio),
            "max_position_embeddings": config.context_length,
            "hidden_act": activation,
            "layer_norm_eps": 1e-5,
            "bos_token_id": SOT_ID,
            "eos_token_id": EOT_ID,
            "pad_token_id": 0,
            "projection_dim": config.embed_dim,
        },
        "vision_config": {
            "hidden_size": config.vision_width,
            "num_hidden_layers": config.vision_layers,
            "num_attention_heads": config.vision_heads,
            "intermediate_size": int(config.vision_width * config.mlp_ratio),
            "image_size": config.image_size,
            "patch_size": config.patch_size,
            "hidden_act": activation,
            "layer_norm_eps": 1e-5,
            "projection_dim": config.embed_dim,
        },
    }
