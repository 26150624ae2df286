"""Scaled dot-product attention: XLA's, cuDNN's fused kernel (GPU), or Pallas flash attention (TPU).

The fused kernels never hold the [heads, tokens, tokens] score matrix of a whole batch in memory.
"""

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from rsclip_jax.accelerators.sharding import BATCH_AXES, activation_mesh

# Pallas TPU flash attention works on blocks of this many tokens: sequences are padded up to a multiple.
FLASH_BLOCK = 128
# cuDNN's fused attention takes, in training, only even lengths (ViT-B/16's 197 tokens are padded to 200).
CUDNN_MULTIPLE = 8


def attend(q, k, v, *, causal: bool, implementation: str, mask=None):
    """q, k, v [batch, tokens, heads, head_dim] -> [batch, tokens, heads, head_dim]. `mask` [batch, tokens,
    tokens] (True: may attend) replaces `causal`; it takes XLA's attention, as the fused kernels here take
    none."""
    if mask is not None:
        return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation="xla")
    if implementation == "flash":
        return _tpu_flash_attention(q, k, v, causal)
    if implementation == "cudnn" and q.shape[1] % CUDNN_MULTIPLE:
        return padded_attention(q, k, v, causal, CUDNN_MULTIPLE, "cudnn")
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=implementation)


def _padded_length(tokens: int, multiple: int) -> int:
    return math.ceil(tokens / multiple) * multiple


def _pad_tokens(x, padded):
    return jnp.pad(x, ((0, 0), (0, padded - x.shape[1]), (0, 0), (0, 0)))


def padded_attention(q, k, v, causal, multiple, implementation):
    """jax.nn.dot_product_attention over tokens padded to a multiple of `multiple`, padding keys masked."""
    tokens = q.shape[1]
    padded = _padded_length(tokens, multiple)
    out = jax.nn.dot_product_attention(
        _pad_tokens(q, padded),
        _pad_tokens(k, padded),
        _pad_tokens(v, padded),
        is_causal=causal,
        key_value_seq_lengths=jnp.full((q.shape[0],), tokens, jnp.int32),
        implementation=implementation,
    )
    return out[:, :tokens]


def _tpu_flash_attention(q, k, v, causal):
    from jax.experimental.pallas.ops.tpu import flash_attention as pallas_flash

    tokens, head_dim = q.shape[1], q.shape[-1]
    padded = _padded_length(tokens, FLASH_BLOCK)
    # Padding keys get their own segment id, so no real query attends to them.
    segments = jnp.broadcast_to((jnp.arange(padded) >= tokens).astype(jnp.int32), (q.shape[0], padded))

    def kernel(q, k, v, segments):
        to_heads_first = lambda x: _pad_tokens(x, padded).transpose(0, 2, 1, 3)
        out = pallas_flash.flash_attention(
            to_heads_first(q),
            to_heads_first(k),
            to_heads_first(v),
            segment_ids=pallas_flash.SegmentIds(segments, segments),
            causal=causal,
            sm_scale=1.0 / math.sqrt(head_dim),
            block_sizes=pallas_flash.BlockSizes(
                block_q=FLASH_BLOCK,
                block_k_major=FLASH_BLOCK,
                block_k=FLASH_BLOCK,
                block_b=1,
                block_q_major_dkv=FLASH_BLOCK,
                block_k_major_dkv=FLASH_BLOCK,
                block_k_dkv=FLASH_BLOCK,
                block_q_dkv=FLASH_BLOCK,
                block_k_major_dq=FLASH_BLOCK,
                block_k_dq=FLASH_BLOCK,
                block_q_dq=FLASH_BLOCK,
            ),
        )
        return out.transpose(0, 2, 1, 3)[:, :tokens]

    mesh = activation_mesh()
    if mesh is None:
        return kernel(q, k, v, segments)
    # A Pallas kernel is one opaque call that XLA cannot split: run it on each device's own examples and heads.
    heads = "tensor" if q.shape[2] % mesh.shape.get("tensor", 1) == 0 else None
    qkv_spec = PartitionSpec(BATCH_AXES, None, heads, None)
    return jax.shard_map(
        kernel,
        mesh=mesh,
        in_specs=(qkv_spec, qkv_spec, qkv_spec, PartitionSpec(BATCH_AXES, None)),
        out_specs=qkv_spec,
        check_vma=False,
    )(q, k, v, segments)
