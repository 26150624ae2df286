"""The model's settings (ModelConfig, with every model default), CLIP variants as a small table in open_clip's
vocabulary, and the conversion from a training config.

Light on purpose: recipes read the defaults from here (rsclip_jax/config.py), and loading a recipe imports no
JAX. The names of the model's options (activations, remat policies, attention implementations) are tabled here
once, for the config's checks and the model's code alike.
"""

import dataclasses

# The config keys that may stay None until `rsclip_jax.accelerators.memory_settings` picks them; ModelConfig's
# defaults stand in until then.
AUTO_MODEL_KEYS = ("remat_policy", "scan_layers", "attention")
# The MLP's activation (layers.Mlp): OpenAI's QuickGELU, or exact GELU.
ACTIVATIONS = ("quick_gelu", "gelu")
# Which intermediate values a rematerialised block keeps for its backward pass: the jax.checkpoint_policies
# attribute of each (layers.Transformer); "off" keeps everything and recomputes nothing.
REMAT_POLICIES = {
    "off": None,
    "nothing": "nothing_saveable",  # only each block's input
    "dots": "dots_saveable",  # every matmul output
    "dots_no_batch": "dots_with_no_batch_dims_saveable",  # projections, not attention
}
# attention.attend's implementations: "xla" everywhere, "cudnn" fused on NVIDIA GPUs, "flash" Pallas on TPUs.
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn", "flash")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    text_width: int
    text_layers: int
    text_heads: int
    context_length: int = 248
    vocab_size: int = 49408
    mlp_ratio: float = 4.0
    # OpenAI's released weights use QuickGELU; open_clip's plain `ViT-B-16` uses GELU.
    activation: str = "quick_gelu"
    # Compute dtype; None picks bfloat16 on accelerators and float32 on CPU. Parameters stay float32.
    dtype: str | None = None
    # Long-CLIP freezes the first 20 text positions (the pretrained ones); Role-SynthCLIP trains all (0). The
    # optimizer holds them (optim.py), so that weight decay leaves them as they are too.
    frozen_text_positions: int = 0
    # A learnable logit bias for the sigmoid loss (SigLIP starts at -10); None: no such parameter,
    # as in OpenAI CLIP's state dict.
    logit_bias_init: float | None = None
    # The log logit scale is clamped to [0, this] after each step: log(100), as OpenAI CLIP and open_clip clamp it
    # training from scratch. None: no clamp (the paper recipes: their code does not clamp).
    max_logit_scale: float | None = 4.6052
    # What each residual block keeps for the backward pass (REMAT_POLICIES): "off" keeps every
    # activation; the others recompute the rest, memory for compute.
    remat_policy: str = "off"
    # Run each tower's blocks as one lax.scan over stacked weights: one compiled block instead of 12.
    scan_layers: bool = False
    # One of ATTENTION_IMPLEMENTATIONS.
    attention: str = "xla"
    # CLIPS' caption generator (model/caption_generator.py): blocks, width and heads (0: the text tower's), and its
    # queries.
    generator: bool = False
    generator_layers: int = 0
    generator_width: int = 0
    generator_heads: int = 0
    generator_queries: int = 128

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"model activation {self.activation!r} is not one of {ACTIVATIONS}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"model remat_policy {self.remat_policy!r} is not one of {sorted(REMAT_POLICIES)}")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"model attention {self.attention!r} is not one of {ATTENTION_IMPLEMENTATIONS}")
        if self.image_size % self.patch_size:
            raise ValueError(f"model image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for width, heads, tower in (
            (self.vision_width, self.vision_heads, "vision"),
            (self.text_width, self.text_heads, "text"),
        ):
            if width % heads:
                raise ValueError(f"model {tower}_width {width} is not divisible by {tower}_heads {heads}")
        generator_width, _, generator_heads = self.generator_size
        if self.generator and generator_width % generator_heads:
            raise ValueError(f"generator width {generator_width} is not divisible by its heads {generator_heads}")
        if not 0 <= self.frozen_text_positions <= self.context_length:
            raise ValueError(
                f"model frozen_text_positions {self.frozen_text_positions} must lie in "
                f"[0, context_length={self.context_length}]"
            )

    def image_embedding_shape(self, blocks: int | None) -> tuple[int, ...]:
        """The image tower's output at a depth (records.embedding_depth): the projected embedding [embed_dim] at
        None ("final"), the tokens [1 + patches, vision_width] after `blocks` blocks."""
        if blocks is None:
            return (self.embed_dim,)
        if not 0 <= blocks <= self.vision_layers:
            raise ValueError(f"the image tower has {self.vision_layers} blocks, not {blocks}")
        return (1 + (self.image_size // self.patch_size) ** 2, self.vision_width)

    @property
    def generator_size(self) -> tuple[int, int, int]:
        """(width, layers, heads) of the caption generator: those given, the text tower's where 0."""
        return (
            self.generator_width or self.text_width,
            self.generator_layers or self.text_layers,
            self.generator_heads or self.text_heads,
        )

    @classmethod
    def from_config(cls, config) -> "ModelConfig":
        """The model of a training config: `config.model` over its variant, and `config.generator` when its weight
        is not 0. Memory settings left None (AUTO_MODEL_KEYS) take this class's defaults."""
        fields = {k: v for k, v in config.model.items() if k != "variant"}
        fields = {k: v for k, v in fields.items() if v is not None or k not in AUTO_MODEL_KEYS}
        generator = config.get("generator")  # absent from the config.json of workdirs trained before it existed
        if generator and generator.weight:
            fields.update(
                generator=True,
                generator_layers=generator.layers,
                generator_width=generator.width,
                generator_heads=generator.heads,
                generator_queries=generator.queries,
            )
        return model_config(config.model.variant, **fields)

    @property
    def compute_dtype(self):
        import jax  # here, not at the top: this module stays light for the recipes
        import jax.numpy as jnp

        if self.dtype is None:
            return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
        return jnp.dtype(self.dtype)


VARIANTS = {
    "tiny": ModelConfig(
        embed_dim=32,
        image_size=32,
        patch_size=8,
        vision_width=64,
        vision_layers=2,
        vision_heads=2,
        text_width=64,
        text_layers=2,
        text_heads=2,
    ),
    "S/16": ModelConfig(
        embed_dim=384,
        image_size=224,
        patch_size=16,
        vision_width=384,
        vision_layers=12,
        vision_heads=6,
        text_width=384,
        text_layers=12,
        text_heads=6,
    ),
    "B/32": ModelConfig(
        embed_dim=512,
        image_size=224,
        patch_size=32,
        vision_width=768,
        vision_layers=12,
        vision_heads=12,
        text_width=512,
        text_layers=12,
        text_heads=8,
    ),
    "B/16": ModelConfig(
        embed_dim=512,
        image_size=224,
        patch_size=16,
        vision_width=768,
        vision_layers=12,
        vision_heads=12,
        text_width=512,
        text_layers=12,
        text_heads=8,
    ),
    "L/14": ModelConfig(
        embed_dim=768,
        image_size=224,
        patch_size=14,
        vision_width=1024,
        vision_layers=24,
        vision_heads=16,
        text_width=768,
        text_layers=12,
        text_heads=12,
    ),
}


def model_config(variant: str, **overrides) -> ModelConfig:
    """The named variant with fields overridden, e.g. `model_config("B/16", context_length=77)`."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown model variant {variant!r}; expected one of {sorted(VARIANTS)}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown model config field(s) {unknown}; known fields: {sorted(fields)}")
    return dataclasses.replace(VARIANTS[variant], **overrides)
