"""Analytic training FLOPs of CLIP and the peak throughput of known accelerators, for TFLOP/s and MFU.

Matrix multiplies only, 2 FLOPs per multiply-add, training = 3 x forward (the backward pass is twice
the forward; recomputation under remat is not counted, as MFU conventionally does not).
"""

from rsclip_jax.model.config import ModelConfig

# Dense bf16 peak per JAX device (a TPU chip, a GPU), TFLOP/s, from the vendors' data sheets. Matched
# in order against device_kind, so the more specific names come first.
PEAK_TFLOPS = (
    ("TPU v5 lite", 197.0),  # v5e
    ("TPU v5e", 197.0),
    ("TPU v6 lite", 918.0),  # v6e, Trillium
    ("TPU v5p", 459.0),
    ("TPU v5", 459.0),
    ("TPU v4", 275.0),
    ("H200", 989.0),
    ("H100", 989.0),  # SXM; the PCIe card peaks at 756
    ("A100", 312.0),
)


def transformer_forward_flops(tokens: int, width: int, layers: int, mlp_ratio: float) -> float:
    """Per sequence: QKV and output projections (4 W^2 per token), MLP (2 * mlp_ratio * W^2 per
    token), attention scores and their weighted sum (2 N^2 W)."""
    per_layer_macs = tokens * (4 + 2 * mlp_ratio) * width**2 + 2 * tokens**2 * width
    return 2.0 * layers * per_layer_macs


def clip_training_flops_per_example(
    config: ModelConfig,
    captions_per_example: int,
    batch_size: int,
    *,
    text_length: int | None = None,
    web_caption: bool = False,
) -> float:
    """Training FLOPs of one example (an image and its captions of `text_length` tokens, the context length
    when None) in a global batch of `batch_size`, with the caption generator when the model has one
    (`web_caption`: its prefix holds the web caption too)."""
    text_length = text_length or config.context_length
    patches = (config.image_size // config.patch_size) ** 2
    image = (
        2.0 * patches * 3 * config.patch_size**2 * config.vision_width  # patch embedding
        + transformer_forward_flops(patches + 1, config.vision_width, config.vision_layers, config.mlp_ratio)
        + 2.0 * config.vision_width * config.embed_dim
    )
    text = (
        transformer_forward_flops(text_length, config.text_width, config.text_layers, config.mlp_ratio)
        + 2.0 * config.text_width * config.embed_dim
    )
    logits = 2.0 * batch_size * captions_per_example * config.embed_dim  # this image against every caption
    generator = (
        _generator_forward_flops(config, patches + 1, text_length if web_caption else 0) if config.generator else 0
    )
    return 3.0 * (image + captions_per_example * text + logits + generator)


def _generator_forward_flops(config: ModelConfig, image_tokens: int, web_tokens: int) -> float:
    """The prefix projections, the decoder over prefix and queries, and the vocabulary head of the queries."""
    width, layers, _ = config.generator_size
    tokens = image_tokens + web_tokens + config.generator_queries
    projections = 2.0 * width * (image_tokens * config.vision_width + web_tokens * config.text_width)
    head = 2.0 * config.generator_queries * width * config.vocab_size
    return projections + transformer_forward_flops(tokens, width, layers, config.mlp_ratio) + head


def utilization(flops_per_step: float, seconds_per_step: float, devices: int, peak_tflops: float | None) -> dict:
    """{"tflops_per_device": achieved TFLOP/s per device, "mfu": its fraction of the peak (only when the
    peak is known)}."""
    tflops = flops_per_step / seconds_per_step / devices / 1e12
    return {"tflops_per_device": tflops, **({"mfu": tflops / peak_tflops} if peak_tflops else {})}


def peak_tflops_per_device(device_kind: str) -> float | None:
    """The dense bf16 peak of a device kind, or None when it is not in PEAK_TFLOPS (CPUs, others)."""
    for name, peak in PEAK_TFLOPS:
        if name.lower() in device_kind.lower():
            return peak
    return None
