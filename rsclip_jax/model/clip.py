"""CLIP in Flax NNX with OpenAI CLIP's parameter layout: `visual.*` and the text tower at the top level."""

import math

import jax.numpy as jnp
from flax import nnx

from rsclip_jax.model.caption_generator import CaptionGenerator
from rsclip_jax.model.config import ModelConfig
from rsclip_jax.model.layers import Transformer, axes, l2_normalize, layer_norm, normal


class VisionTransformer(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        width, dtype = config.vision_width, config.compute_dtype
        grid = config.image_size // config.patch_size
        scale = width**-0.5
        self.image_size = config.image_size
        self.conv1 = nnx.Conv(
            3,
            width,
            kernel_size=(config.patch_size,) * 2,
            strides=(config.patch_size,) * 2,
            padding="VALID",
            use_bias=False,
            dtype=dtype,
            kernel_metadata=axes(None, None, None, "embed"),
            rngs=rngs,
        )
        self.class_embedding = nnx.Param(normal(scale)(rngs.params(), (width,)), **axes("embed"))
        self.positional_embedding = nnx.Param(
            normal(scale)(rngs.params(), (grid * grid + 1, width)), **axes(None, "embed")
        )
        self.ln_pre = layer_norm(width, dtype, rngs)
        self.transformer = Transformer(
            width,
            config.vision_layers,
            config.vision_heads,
            config.mlp_ratio,
            config.activation,
            dtype=dtype,
            rngs=rngs,
            remat_policy=config.remat_policy,
            scan=config.scan_layers,
            attention=config.attention,
        )
        self.ln_post = layer_norm(width, dtype, rngs)
        self.proj = nnx.Param(normal(scale)(rngs.params(), (width, config.embed_dim)), **axes("embed", None))
        self.dtype = dtype

    def __call__(self, images):
        """images [B, H, W, 3], CLIP-normalised -> (unnormalised embeddings [B, embed_dim], the last layer's
        tokens [B, 1 + patches, width], class token first)."""
        return self.from_tokens(self.tokens_after(images, 0), 0)

    def tokens_after(self, images, blocks: int):
        """images [B, H, W, 3] -> the tokens after the first `blocks` residual blocks [B, 1 + patches, width] (0: the
        embedded patches, as the first block takes them)."""
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"images must be [batch, {self.image_size}, {self.image_size}, 3], got {images.shape}")
        patches = self.conv1(images.astype(self.dtype))
        x = patches.reshape(patches.shape[0], -1, patches.shape[-1])
        cls = jnp.broadcast_to(self.class_embedding[...].astype(self.dtype), (x.shape[0], 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.positional_embedding[...].astype(self.dtype)
        return self.transformer(self.ln_pre(x), causal=False, blocks=slice(blocks))

    def from_tokens(self, tokens, blocks: int):
        """The tokens after the first `blocks` residual blocks -> (unnormalised embeddings, the last layer's tokens):
        the rest of the tower."""
        tokens = self.ln_post(self.transformer(tokens.astype(self.dtype), causal=False, blocks=slice(blocks, None)))
        return tokens[:, 0] @ self.proj[...].astype(self.dtype), tokens


class CLIP(nnx.Module):
    """OpenAI CLIP: `encode_image` and `encode_text` return L2-normalised float32 embeddings. With
    `config.generator`, also CLIPS' caption generator, as `generator` (not part of OpenAI's layout)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        width, dtype = config.text_width, config.compute_dtype
        self.config = config
        self.dtype = dtype
        self.visual = VisionTransformer(config, rngs=rngs)
        self.token_embedding = nnx.Embed(
            config.vocab_size,
            width,
            dtype=dtype,
            embedding_init=normal(0.02),
            embedding_metadata=axes("vocab", "embed"),
            rngs=rngs,
        )
        self.positional_embedding = nnx.Param(
            normal(0.01)(rngs.params(), (config.context_length, width)), **axes(None, "embed")
        )
        self.transformer = Transformer(
            width,
            config.text_layers,
            config.text_heads,
            config.mlp_ratio,
            config.activation,
            dtype=dtype,
            rngs=rngs,
            remat_policy=config.remat_policy,
            scan=config.scan_layers,
            attention=config.attention,
        )
        self.ln_final = layer_norm(width, dtype, rngs)
        self.text_projection = nnx.Param(
            normal(width**-0.5)(rngs.params(), (width, config.embed_dim)), **axes("embed", None)
        )
        self.logit_scale = nnx.Param(jnp.asarray(math.log(1 / 0.07), jnp.float32))
        if config.logit_bias_init is not None:
            self.logit_bias = nnx.Param(jnp.asarray(config.logit_bias_init, jnp.float32))
        if config.generator:
            self.generator = CaptionGenerator(config, rngs=rngs)

    def encode_image(self, images):
        """images [B, H, W, 3] -> [B, embed_dim]."""
        return self.image_features(images)[0]

    def image_features(self, images):
        """images [B, H, W, 3] -> (embeddings [B, embed_dim], the last layer's tokens [B, 1 + patches, width])."""
        embeddings, tokens = self.visual(images)
        return l2_normalize(embeddings), tokens

    def encode_text(self, tokens):
        """tokens [..., L] int, L <= context_length -> [..., embed_dim], pooled at end-of-text (the argmax id)."""
        return self.text_features(tokens)[0]

    def text_features(self, tokens):
        """tokens [..., L] -> (embeddings [..., embed_dim], the last layer's tokens [..., L, text_width])."""
        length = tokens.shape[-1]
        if length > self.config.context_length:
            raise ValueError(f"text of {length} tokens exceeds the model's context_length {self.config.context_length}")
        leading = tokens.shape[:-1]
        tokens = tokens.reshape(-1, length)
        x = self.token_embedding(tokens) + self.positional_embedding[:length].astype(self.dtype)
        x = self.ln_final(self.transformer(x, causal=True))
        pooled = x[jnp.arange(x.shape[0]), jnp.argmax(tokens, axis=-1)]
        embeddings = pooled @ self.text_projection[...].astype(self.dtype)
        return l2_normalize(embeddings).reshape(*leading, -1), x.reshape(*leading, length, -1)

    def __call__(self, images, tokens):
        """-> (image embeddings [B, D], text embeddings [..., D])."""
        return self.encode_image(images), self.encode_text(tokens)
