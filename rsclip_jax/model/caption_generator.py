"""CLIPS' caption generator (docs/method.md section 6): a text decoder that predicts an image's full synthetic
caption from its image tokens, its web caption and learnable queries.

The decoder reads [image tokens; web-caption tokens; queries]. The image and web-caption tokens (the prefix)
attend to each other both ways; each query attends to the prefix and to the queries before it. The output at
query i predicts token i + 1 of the synthetic caption (token 0 is start-of-text), with a next-token
cross-entropy over the caption's real tokens. As in CLIPS' code (OpenVision), the prefix is the two towers'
last-layer tokens, each projected to the decoder's width, and the queries carry no caption tokens: the
decoder learns to write the caption from the image and the web caption alone.
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rsclip_jax.accelerators.sharding import constrain
from rsclip_jax.model.config import ModelConfig
from rsclip_jax.model.layers import Transformer, axes, layer_norm, normal
from rsclip_jax.training.losses import block_size


def prefix_lm_mask(prefix_length: int, key_is_real):
    """[B, T, T], True where token i may attend to token j: every token to the whole prefix (the first
    `prefix_length`), each later token also to itself and the later tokens before it; never to a key that is
    not real (`key_is_real` [B, T])."""
    position = jnp.arange(key_is_real.shape[1])
    allowed = (position[None, :] < prefix_length) | (position[None, :] <= position[:, None])
    return allowed[None] & key_is_real[:, None, :]


class CaptionGenerator(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        width, layers, heads = config.generator_size
        dtype = config.compute_dtype
        self.dtype = dtype
        self.image_projection = nnx.Param(
            normal(config.vision_width**-0.5)(rngs.params(), (config.vision_width, width)), **axes("embed", None)
        )
        self.text_projection = nnx.Param(
            normal(config.text_width**-0.5)(rngs.params(), (config.text_width, width)), **axes("embed", None)
        )
        # Unit-variance queries, as OpenVision initialises its learnable tokens: each block's layer norm
        # rescales them, and distinct queries are what tells one output position from the next.
        self.queries = nnx.Param(normal(1.0)(rngs.params(), (config.generator_queries, width)), **axes(None, "embed"))
        self.transformer = Transformer(
            width,
            layers,
            heads,
            config.mlp_ratio,
            config.activation,
            dtype=dtype,
            rngs=rngs,
            remat_policy=config.remat_policy,
            scan=config.scan_layers,
        )
        self.ln_final = layer_norm(width, dtype, rngs)
        self.head = nnx.Param(normal(width**-0.5)(rngs.params(), (width, config.vocab_size)), **axes("embed", "vocab"))

    def __call__(self, image_tokens, text_tokens=None, text_ids=None):
        """image_tokens [B, N, vision_width]; the web caption's tokens [B, L, text_width] and their ids [B, L]
        (0: padding, which no one attends to), or None -> query features [B, queries, width], before the head."""
        prefix = [image_tokens.astype(self.dtype) @ self.image_projection[...].astype(self.dtype)]
        key_is_real = [jnp.ones(image_tokens.shape[:2], bool)]
        if text_tokens is not None:
            prefix.append(text_tokens.astype(self.dtype) @ self.text_projection[...].astype(self.dtype))
            key_is_real.append(text_ids != 0)
        batch, num_queries = image_tokens.shape[0], self.queries.shape[0]
        queries = jnp.broadcast_to(self.queries[...].astype(self.dtype), (batch, *self.queries.shape))
        x = jnp.concatenate([*prefix, queries], axis=1)
        prefix_length = x.shape[1] - num_queries
        key_is_real = jnp.concatenate([*key_is_real, jnp.ones((batch, num_queries), bool)], axis=1)
        x = self.transformer(x, causal=False, mask=prefix_lm_mask(prefix_length, key_is_real))
        return self.ln_final(x[:, prefix_length:])

    def loss(self, features, caption_ids, *, chunk: int):
        """Mean next-token cross-entropy of `features` [B, Q, width] against the synthetic caption ids [B, Q + 1]
        (start-of-text first, 0 after end-of-text), over the real tokens. The vocabulary logits are made `chunk`
        query positions at a time and remade in the backward pass: [B, chunk, vocab] in memory, not
        [B, Q, vocab] (2048 x 128 x 49408 floats are 52 GB)."""
        targets = caption_ids[:, 1:]
        if targets.shape[1] != features.shape[1]:
            raise ValueError(
                f"caption ids of {caption_ids.shape[1]} tokens do not fit {features.shape[1]} generator queries "
                f"(expected queries + 1)"
            )
        positions = features.shape[1]
        chunk = block_size(positions, chunk)
        head = self.head[...]

        @jax.checkpoint
        def block_loss(block):
            block_features, block_targets = block
            # Operands in the compute dtype, sums in float32; the vocabulary split as the head's is (over "tensor").
            logits = jnp.einsum(
                "bqw,wv->bqv", block_features, head.astype(block_features.dtype), preferred_element_type=jnp.float32
            )
            logits = constrain(logits, "batch", None, "vocab")
            return jnp.sum(
                optax.softmax_cross_entropy_with_integer_labels(logits, block_targets) * (block_targets != 0)
            )

        blocks = [
            jnp.swapaxes(x.reshape(x.shape[0], positions // chunk, chunk, *x.shape[2:]), 0, 1)
            for x in (features, targets)
        ]
        total = jax.lax.map(block_loss, blocks).sum()
        return total / jnp.maximum(jnp.sum(targets != 0), 1)
