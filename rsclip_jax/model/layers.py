"""Transformer blocks of CLIP, named as OpenAI CLIP names them (`attn.in_proj`, `mlp.c_fc`, ...).

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `vocab`, ...) as metadata; the
trainer maps them to mesh axes with the sharding rules of its config.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from rsclip_jax.accelerators.sharding import constrain
from rsclip_jax.model.attention import attend
from rsclip_jax.model.config import REMAT_POLICIES

LAYER_NORM_EPSILON = 1e-5  # CLIP's; Flax's default is 1e-6


def axes(*names):
    """Variable metadata naming the logical axes of a parameter (sharded by the trainer, not here)."""
    return {"out_sharding": names, "eager_sharding": False}


def normal(stddev):
    return jax.nn.initializers.normal(stddev)


def quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


def layer_norm(width, dtype, rngs):
    return nnx.LayerNorm(
        width,
        epsilon=LAYER_NORM_EPSILON,
        dtype=dtype,
        scale_metadata=axes("embed"),
        bias_metadata=axes("embed"),
        rngs=rngs,
    )


def heads_to_width(heads, head_dim, width, *, std, dtype, rngs) -> nnx.LinearGeneral:
    """An attention layer's output projection: [..., heads, head_dim] -> [..., width]."""
    return nnx.LinearGeneral(
        (heads, head_dim),
        width,
        axis=(-2, -1),
        dtype=dtype,
        kernel_init=normal(std),
        rngs=rngs,
        kernel_metadata=axes("heads", "head_dim", "embed"),
        bias_metadata=axes("embed"),
    )


class MultiheadAttention(nnx.Module):
    """Self-attention with one fused input projection, as torch's nn.MultiheadAttention."""

    def __init__(self, width, heads, *, in_std, out_std, dtype, rngs, attention="xla"):
        head_dim = width // heads
        self.attention = attention
        self.in_proj = nnx.LinearGeneral(
            width,
            (3, heads, head_dim),
            dtype=dtype,
            kernel_init=normal(in_std),
            rngs=rngs,
            kernel_metadata=axes("embed", None, "heads", "head_dim"),
            bias_metadata=axes(None, "heads", "head_dim"),
        )
        self.out_proj = heads_to_width(heads, head_dim, width, std=out_std, dtype=dtype, rngs=rngs)

    def __call__(self, x, *, causal: bool, mask=None):
        qkv = constrain(self.in_proj(x), "batch", None, None, "heads", None)  # [B, T, 3, H, Dh]
        attended = attend(
            qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], causal=causal, implementation=self.attention, mask=mask
        )
        return self.out_proj(constrain(attended, "batch", None, "heads", None))


class Mlp(nnx.Module):
    def __init__(self, width, hidden, activation, *, fc_std, proj_std, dtype, rngs):
        self.c_fc = nnx.Linear(
            width,
            hidden,
            dtype=dtype,
            kernel_init=normal(fc_std),
            rngs=rngs,
            kernel_metadata=axes("embed", "mlp"),
            bias_metadata=axes("mlp"),
        )
        self.c_proj = nnx.Linear(
            hidden,
            width,
            dtype=dtype,
            kernel_init=normal(proj_std),
            rngs=rngs,
            kernel_metadata=axes("mlp", "embed"),
            bias_metadata=axes("embed"),
        )
        self.activation = activation

    def __call__(self, x):
        hidden = constrain(self.c_fc(x), "batch", None, "mlp")
        # The names: model.config.ACTIVATIONS.
        activated = quick_gelu(hidden) if self.activation == "quick_gelu" else jax.nn.gelu(hidden, approximate=False)
        return self.c_proj(activated)


class ResidualAttentionBlock(nnx.Module):
    def __init__(self, width, heads, mlp_ratio, activation, *, num_layers, dtype, rngs, attention):
        # OpenAI CLIP's initialisation: residual branches scaled down with depth.
        attn_std, proj_std, fc_std = width**-0.5, width**-0.5 * (2 * num_layers) ** -0.5, (2 * width) ** -0.5
        self.ln_1 = layer_norm(width, dtype, rngs)
        self.attn = MultiheadAttention(
            width, heads, in_std=attn_std, out_std=proj_std, dtype=dtype, rngs=rngs, attention=attention
        )
        self.ln_2 = layer_norm(width, dtype, rngs)
        self.mlp = Mlp(
            width, int(width * mlp_ratio), activation, fc_std=fc_std, proj_std=proj_std, dtype=dtype, rngs=rngs
        )

    def __call__(self, x, *, causal: bool, mask=None):
        x = x + self.attn(self.ln_1(x), causal=causal, mask=mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nnx.Module):
    """Residual blocks run one after another, or as one `lax.scan` over their stacked weights
    (`scan=True`: one compiled block, and under remat the backward pass holds one block's
    activations at a time). Parameters stay one subtree per block either way, as OpenAI names them."""

    def __init__(
        self,
        width,
        layers,
        heads,
        mlp_ratio,
        activation,
        *,
        dtype,
        rngs,
        remat_policy="off",
        scan=False,
        attention="xla",
    ):
        self.remat_policy = remat_policy
        self.scan = scan
        self.resblocks = nnx.List(
            [
                ResidualAttentionBlock(
                    width, heads, mlp_ratio, activation, num_layers=layers, dtype=dtype, rngs=rngs, attention=attention
                )
                for _ in range(layers)
            ]
        )

    def __call__(self, x, *, causal: bool, mask=None, blocks: slice = slice(None)):
        """x [B, T, width]; `mask` [B, T, T] (True: may attend), when given, in place of `causal`; `blocks`: which
        of the blocks to run, in order (Synth²'s embeddings at a depth run the first K, or the rest)."""
        graphdef = nnx.graphdef(self.resblocks[0])

        def run_block(state, x):
            return constrain(nnx.merge(graphdef, state)(x, causal=causal, mask=mask), "batch", None, None)

        if self.remat_policy != "off":
            # Inside a scan the loop boundary already keeps XLA from merging the recomputation away.
            run_block = jax.checkpoint(
                run_block,
                policy=getattr(jax.checkpoint_policies, REMAT_POLICIES[self.remat_policy]),
                prevent_cse=not self.scan,
            )
        states = [nnx.state(block) for block in self.resblocks][blocks]
        x = constrain(x, "batch", None, None)
        if not states:
            return x
        if not self.scan:
            for state in states:
                x = run_block(state, x)
            return x
        stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
        x, _ = jax.lax.scan(lambda x, state: (run_block(state, x), None), x, stacked)
        return x


def l2_normalize(x):
    """In float32, with torch's F.normalize floor on the norm so a zero vector stays zero."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
