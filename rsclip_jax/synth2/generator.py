"""Synth²'s generator of image embeddings (docs/method.md section 7): a caption, read through the frozen CLIP text
tower's last-layer tokens, -> the image embedding at the depth it is trained for: the L2-normalised projected
embedding [D] at "final" (DALL·E 2's prior, in CLIP space), the image tower's tokens after block K [T, W] at
"tokens:K". The objective and the sampler: synth2/flow_matching.py.

The choices, and why:
- **A transformer denoiser over the embedding's tokens.** At "tokens:K" these are the tower's own T tokens, each
  projected to the generator's width. At "final" the vector is split by one linear map into `vector_tokens`
  tokens (and joined back by another): every token sees the whole vector, whose dimensions have no order to cut
  along, and several tokens give the text several queries per head where one token would give one.
- **Cross-attention to the text**, not concatenation: the condition is frozen and long (up to 248 tokens) while
  the embedding is short (4 tokens at "final"). Concatenated, every block's attention and MLP would run over the
  text tokens at every sampling step, though they never change (the CLIP text tower has already put them in
  context); across, each block only projects them to keys and values. Padding keys (after end-of-text) are masked.
- **Time and the pooled caption by adaLN-zero** (DiT): a conditioning vector, the time's sinusoidal embedding
  through an MLP plus the end-of-text token (what CLIP pools and projects into its text embedding), scales and
  shifts each block's layer norms and gates its self-attention and MLP. The gates start at zero, so the blocks
  start as self-attention-free, MLP-free readers of the caption (cross-attention is not gated), and the output
  projection at zero: a zero velocity at the first step.
- **A learned null text** for caption dropout and classifier-free guidance: one token in the text tower's width
  at position 0, alone in the mask; dropped rows pool it too.
- **The flow's space**: embeddings are standardised per channel (the last axis) by `embedding_mean` and
  `embedding_std`. At "final" they start as 0 and D**-0.5 (a unit vector's coordinates to unit variance, as
  DALL·E 2's prior scales by sqrt(D)); the tokens after block K have channels of very different scales (a ViT's
  residual stream has a few huge ones), so set them from real embeddings with `set_statistics` before training.
  They are nnx.Params, as all the project's train state is (checkpoints, shardings), but under stop_gradient:
  with a zero gradient Adam leaves them as they are, and so does weight decay, which skips vectors unless
  config.optim.decay_vectors (then freeze them: config.optim.freeze "embedding_(mean|std)").
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from rsclip_jax.accelerators.sharding import constrain
from rsclip_jax.data.records import embedding_depth
from rsclip_jax.model.attention import attend
from rsclip_jax.model.config import ATTENTION_IMPLEMENTATIONS, REMAT_POLICIES, ModelConfig
from rsclip_jax.model.layers import Mlp, MultiheadAttention, axes, heads_to_width, layer_norm, normal

# How t in [0, 1] is drawn for training (flow_matching.sample_times): logit-normal(0, 1) weights the middle of
# the path, where the velocity is hardest to predict (SD3's choice), or uniform.
TIME_DISTRIBUTIONS = ("logit_normal", "uniform")
# Sinusoids of the time embedding, before its MLP (DiT's).
TIME_FREQUENCIES = 256


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    depth: str
    # (D,) at "final"; (T, W) at "tokens:K": 1 + patches tokens of the image tower's width.
    embedding_shape: tuple[int, ...]
    text_width: int
    width: int = 512
    layers: int = 8
    heads: int = 8
    mlp_ratio: float = 4.0
    # The fraction of training rows whose caption is replaced by the null text (per row).
    caption_dropout: float = 0.1
    # Tokens a "final" vector is split into.
    vector_tokens: int = 4
    time_distribution: str = "logit_normal"
    # Compute dtype; None: bfloat16 on accelerators, float32 on CPU (as ModelConfig). Parameters stay float32.
    dtype: str | None = None
    remat_policy: str = "off"
    scan_layers: bool = False
    # The self-attention's implementation (model.config.ATTENTION_IMPLEMENTATIONS); cross-attention takes XLA's.
    attention: str = "xla"

    def __post_init__(self):
        blocks = embedding_depth(self.depth)
        rank = 1 if blocks is None else 2
        if len(self.embedding_shape) != rank or min(self.embedding_shape) < 1:
            raise ValueError(f"an embedding at depth {self.depth!r} has a {rank}-D shape, got {self.embedding_shape}")
        if self.layers < 1:
            raise ValueError(f"embedding generator layers {self.layers} must be at least 1")
        if self.width % self.heads:
            raise ValueError(f"embedding generator width {self.width} is not divisible by its heads {self.heads}")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"embedding generator caption_dropout {self.caption_dropout} must lie in [0, 1]")
        if self.time_distribution not in TIME_DISTRIBUTIONS:
            raise ValueError(
                f"embedding generator time_distribution {self.time_distribution!r} is not one of {TIME_DISTRIBUTIONS}"
            )
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"embedding generator remat_policy {self.remat_policy!r} is not one of {sorted(REMAT_POLICIES)}"
            )
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"embedding generator attention {self.attention!r} is not one of {ATTENTION_IMPLEMENTATIONS}"
            )

    @classmethod
    def from_config(cls, section, model: ModelConfig) -> "GeneratorConfig":
        """`config.synth2_generator` (depth, width, layers, heads, caption_dropout; optionally mlp_ratio,
        vector_tokens, time_distribution, remat_policy, scan_layers) for the CLIP `model` whose embeddings it
        learns: the text width, the embedding's shape at the depth, the dtype and attention are the CLIP's."""
        what = "config.synth2_generator.depth"
        blocks = embedding_depth(section.depth, what)
        try:
            shape = model.image_embedding_shape(blocks)
        except ValueError as e:
            raise ValueError(f"{what} {section.depth!r}: {e}") from None
        optional = {
            key: section[key]
            for key in ("mlp_ratio", "vector_tokens", "time_distribution", "remat_policy", "scan_layers")
            if key in section and section[key] is not None
        }
        try:
            return cls(
                depth=section.depth,
                embedding_shape=shape,
                text_width=model.text_width,
                width=section.width,
                layers=section.layers,
                heads=section.heads,
                caption_dropout=section.caption_dropout,
                dtype=model.dtype,
                attention=model.attention,
                **optional,
            )
        except ValueError as e:
            raise ValueError(f"config.synth2_generator: {e}") from None

    @property
    def is_vector(self) -> bool:
        return len(self.embedding_shape) == 1

    @property
    def sequence_length(self) -> int:
        """The denoiser's tokens: `vector_tokens` at "final", T at "tokens:K"."""
        return self.vector_tokens if self.is_vector else self.embedding_shape[0]

    @property
    def compute_dtype(self):
        if self.dtype is None:
            return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
        return jnp.dtype(self.dtype)


def time_embedding(t, frequencies: int = TIME_FREQUENCIES):
    """t [B] in [0, 1] -> [B, frequencies]: cosines and sines of 1000 t at geometric frequencies (DiT's)."""
    half = frequencies // 2
    rates = jnp.exp(-math.log(10_000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = 1000.0 * t.astype(jnp.float32)[:, None] * rates[None]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def _zeros_linear(width, out_shape, dtype, rngs):
    """An adaLN modulation: [B, width] -> [B, *out_shape], starting at zero (adaLN-zero)."""
    return nnx.LinearGeneral(
        width,
        out_shape,
        dtype=dtype,
        kernel_init=jax.nn.initializers.zeros,
        bias_init=jax.nn.initializers.zeros,
        rngs=rngs,
        kernel_metadata=axes("embed", None, None),
        bias_metadata=axes(None, None),
    )


def _from_text(text_width, width, dtype, rngs) -> nnx.Linear:
    """The CLIP text tower's width -> the generator's."""
    return nnx.Linear(
        text_width,
        width,
        dtype=dtype,
        kernel_init=normal(text_width**-0.5),
        rngs=rngs,
        kernel_metadata=axes("embed", None),
        bias_metadata=axes(None),
    )


def _modulate(x, shift, scale):
    """x [B, N, W]; shift, scale [B, W]."""
    return x * (1 + scale[:, None]) + shift[:, None]


class CrossAttention(nnx.Module):
    """The embedding's tokens (queries) attend to the caption's tokens (keys and values), padding keys masked."""

    def __init__(self, width, heads, *, in_std, out_std, dtype, rngs):
        head_dim = width // heads
        self.q_proj = nnx.LinearGeneral(
            width,
            (heads, head_dim),
            dtype=dtype,
            kernel_init=normal(in_std),
            rngs=rngs,
            kernel_metadata=axes("embed", "heads", "head_dim"),
            bias_metadata=axes("heads", "head_dim"),
        )
        self.kv_proj = nnx.LinearGeneral(
            width,
            (2, heads, head_dim),
            dtype=dtype,
            kernel_init=normal(in_std),
            rngs=rngs,
            kernel_metadata=axes("embed", None, "heads", "head_dim"),
            bias_metadata=axes(None, "heads", "head_dim"),
        )
        self.out_proj = heads_to_width(heads, head_dim, width, std=out_std, dtype=dtype, rngs=rngs)

    def __call__(self, x, context, context_mask):
        """x [B, N, width]; context [B, L, width]; context_mask [B, L] (True: a real token)."""
        q = constrain(self.q_proj(x), "batch", None, "heads", None)
        kv = constrain(self.kv_proj(context), "batch", None, None, "heads", None)
        mask = jnp.broadcast_to(context_mask[:, None, :], (x.shape[0], x.shape[1], context.shape[1]))
        attended = attend(q, kv[:, :, 0], kv[:, :, 1], causal=False, implementation="xla", mask=mask)
        return self.out_proj(constrain(attended, "batch", None, "heads", None))


class GeneratorBlock(nnx.Module):
    """Self-attention and MLP under adaLN-zero, with cross-attention to the caption between them."""

    def __init__(self, config: GeneratorConfig, *, dtype, rngs):
        width, heads = config.width, config.heads
        attn_std, proj_std = width**-0.5, width**-0.5 * (2 * config.layers) ** -0.5
        self.ln_1 = layer_norm(width, dtype, rngs)
        self.attn = MultiheadAttention(
            width, heads, in_std=attn_std, out_std=proj_std, dtype=dtype, rngs=rngs, attention=config.attention
        )
        self.ln_cross = layer_norm(width, dtype, rngs)
        self.cross_attn = CrossAttention(width, heads, in_std=attn_std, out_std=proj_std, dtype=dtype, rngs=rngs)
        self.ln_2 = layer_norm(width, dtype, rngs)
        self.mlp = Mlp(
            width,
            int(width * config.mlp_ratio),
            "gelu",
            fc_std=(2 * width) ** -0.5,
            proj_std=proj_std,
            dtype=dtype,
            rngs=rngs,
        )
        # shift, scale and gate of the self-attention, then of the MLP.
        self.modulation = _zeros_linear(width, (6, width), dtype, rngs)

    def __call__(self, x, context, context_mask, conditioning):
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.unstack(
            self.modulation(conditioning).astype(x.dtype), axis=1
        )
        x = x + gate_a[:, None] * self.attn(_modulate(self.ln_1(x), shift_a, scale_a), causal=False)
        x = x + self.cross_attn(self.ln_cross(x), context, context_mask)
        return x + gate_m[:, None] * self.mlp(_modulate(self.ln_2(x), shift_m, scale_m))


class EmbeddingGenerator(nnx.Module):
    """velocity = model(x_t, t, text_tokens, text_mask), in the flow's (standardised) space."""

    def __init__(self, config: GeneratorConfig, *, rngs: nnx.Rngs):
        self.config = config
        width, dtype = config.width, config.compute_dtype
        self.dtype = dtype
        channels = config.embedding_shape[-1]
        self.embedding_mean = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.embedding_std = nnx.Param(jnp.full((channels,), channels**-0.5 if config.is_vector else 1.0, jnp.float32))

        self.null_text = nnx.Param(normal(1.0)(rngs.params(), (config.text_width,)), **axes("embed"))
        self.ln_text = layer_norm(config.text_width, dtype, rngs)
        self.text_in = _from_text(config.text_width, width, dtype, rngs)
        self.pooled_text_in = _from_text(config.text_width, width, dtype, rngs)
        self.time_in = nnx.Linear(
            TIME_FREQUENCIES,
            width,
            kernel_init=normal(TIME_FREQUENCIES**-0.5),
            rngs=rngs,
            kernel_metadata=axes(None, "embed"),
            bias_metadata=axes("embed"),
        )
        self.time_out = nnx.Linear(
            width,
            width,
            kernel_init=normal(width**-0.5),
            rngs=rngs,
            kernel_metadata=axes("embed", None),
            bias_metadata=axes(None),
        )

        if config.is_vector:
            (dim,) = config.embedding_shape
            self.embedding_in = nnx.LinearGeneral(
                dim,
                (config.vector_tokens, width),
                dtype=dtype,
                kernel_init=normal(dim**-0.5),
                rngs=rngs,
                kernel_metadata=axes(None, None, "embed"),
                bias_metadata=axes(None, "embed"),
            )
            self.embedding_out = nnx.LinearGeneral(
                (config.vector_tokens, width),
                dim,
                axis=(-2, -1),
                dtype=dtype,
                kernel_init=jax.nn.initializers.zeros,
                rngs=rngs,
                kernel_metadata=axes(None, "embed", None),
                bias_metadata=axes(None),
            )
        else:
            self.embedding_in = nnx.Linear(
                channels,
                width,
                dtype=dtype,
                kernel_init=normal(channels**-0.5),
                rngs=rngs,
                kernel_metadata=axes(None, "embed"),
                bias_metadata=axes("embed"),
            )
            self.embedding_out = nnx.Linear(
                width,
                channels,
                dtype=dtype,
                kernel_init=jax.nn.initializers.zeros,
                rngs=rngs,
                kernel_metadata=axes("embed", None),
                bias_metadata=axes(None),
            )
        self.positional_embedding = nnx.Param(
            normal(0.02)(rngs.params(), (config.sequence_length, width)), **axes(None, "embed")
        )
        self.blocks = nnx.List([GeneratorBlock(config, dtype=dtype, rngs=rngs) for _ in range(config.layers)])
        self.ln_out = layer_norm(width, dtype, rngs)
        self.out_modulation = _zeros_linear(width, (2, width), dtype, rngs)

    def with_null_text(self, text_tokens, text_mask, drop):
        """(text_tokens, text_mask) with the rows where `drop` [B] is True replaced by the null text: its one
        token at position 0, the only real one."""
        null_mask = jnp.arange(text_mask.shape[1]) == 0
        null_tokens = jnp.where(null_mask[:, None], self.null_text[...].astype(text_tokens.dtype), 0)
        drop = drop.astype(bool)
        return (
            jnp.where(drop[:, None, None], null_tokens[None], text_tokens),
            jnp.where(drop[:, None], null_mask[None], text_mask.astype(bool)),
        )

    def _statistics(self):
        return jax.lax.stop_gradient((self.embedding_mean[...], self.embedding_std[...]))

    def normalize(self, embeddings):
        """Embeddings [B, *shape] -> the flow's space (per-channel standardised, float32)."""
        mean, std = self._statistics()
        return (embeddings.astype(jnp.float32) - mean) / std

    def denormalize(self, z):
        mean, std = self._statistics()
        return z.astype(jnp.float32) * std + mean

    def set_statistics(self, embeddings, min_std: float = 1e-6):
        """Sets the per-channel mean and std from real embeddings [N, *shape] (over all but the last axis)."""
        values = jnp.asarray(embeddings, jnp.float32).reshape(-1, self.config.embedding_shape[-1])
        self.embedding_mean[...] = values.mean(axis=0)
        self.embedding_std[...] = jnp.maximum(values.std(axis=0), min_std)

    def __call__(self, x_t, t, text_tokens, text_mask):
        """x_t [B, *shape] (the flow's space); t [B] in [0, 1]; text_tokens [B, L, text_width] (the CLIP text tower's
        last layer); text_mask [B, L] (True: a real token) -> velocity [B, *shape], float32."""
        config = self.config
        if x_t.shape[1:] != config.embedding_shape:
            raise ValueError(f"x_t must be [batch, {', '.join(map(str, config.embedding_shape))}], got {x_t.shape}")
        if text_tokens.shape[-1] != config.text_width:
            raise ValueError(f"text_tokens must have width {config.text_width}, got {text_tokens.shape}")
        text_mask = text_mask.astype(bool)
        text = self.ln_text(text_tokens.astype(self.dtype))
        # The end-of-text token: the last real one.
        last = jnp.max(jnp.where(text_mask, jnp.arange(text_mask.shape[1]), 0), axis=1)
        pooled = text[jnp.arange(text.shape[0]), last]
        time = self.time_out(jax.nn.silu(self.time_in(time_embedding(t))))
        conditioning = time + self.pooled_text_in(pooled).astype(jnp.float32)
        conditioning = jax.nn.silu(conditioning).astype(self.dtype)
        context = constrain(self.text_in(text), "batch", None, None)

        x = self.embedding_in(x_t.astype(self.dtype)) + self.positional_embedding[...].astype(self.dtype)
        x = self._run_blocks(x, context, text_mask, conditioning)
        shift, scale = jnp.unstack(self.out_modulation(conditioning).astype(x.dtype), axis=1)
        return self.embedding_out(_modulate(self.ln_out(x), shift, scale)).astype(jnp.float32)

    def _run_blocks(self, x, context, context_mask, conditioning):
        """The blocks one after another, or as one lax.scan over stacked weights, under remat as layers.Transformer
        runs its own."""
        config = self.config
        graphdef = nnx.graphdef(self.blocks[0])

        def run_block(state, x):
            out = nnx.merge(graphdef, state)(x, context, context_mask, conditioning)
            return constrain(out, "batch", None, None)

        if config.remat_policy != "off":
            run_block = jax.checkpoint(
                run_block,
                policy=getattr(jax.checkpoint_policies, REMAT_POLICIES[config.remat_policy]),
                prevent_cse=not config.scan_layers,
            )
        states = [nnx.state(block) for block in self.blocks]
        x = constrain(x, "batch", None, None)
        if not config.scan_layers:
            for state in states:
                x = run_block(state, x)
            return x
        stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
        x, _ = jax.lax.scan(lambda x, state: (run_block(state, x), None), x, stacked)
        return x
