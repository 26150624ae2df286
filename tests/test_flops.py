"""Analytic FLOPs against XLA's own count of the compiled forward pass; peaks by device kind; the log line."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from rsclip_jax import CLIP, model_config
from rsclip_jax.accelerators.flops import clip_training_flops_per_example, peak_tflops_per_device
from rsclip_jax.training.metrics import console_line


@pytest.mark.parametrize("context_length,captions", [(77, 1), (248, 3)])
def test_analytic_flops_match_xla_cost_analysis(context_length, captions):
    config = model_config("S/16", dtype="float32", context_length=context_length)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: CLIP(config, rngs=nnx.Rngs(0))))
    batch = 2
    images = jax.ShapeDtypeStruct((batch, config.image_size, config.image_size, 3), jnp.float32)
    tokens = jax.ShapeDtypeStruct((batch, captions, config.context_length), jnp.int32)
    forward = jax.jit(lambda p, i, t: nnx.merge(graphdef, p)(i, t)).lower(params, images, tokens).compile()
    xla_forward_per_example = forward.cost_analysis()["flops"] / batch
    analytic_forward = clip_training_flops_per_example(config, captions, batch) / 3
    # XLA also counts layer norms, softmax and activations, about 1% here.
    assert analytic_forward == pytest.approx(xla_forward_per_example, rel=0.03)


def test_peaks_by_device_kind():
    assert peak_tflops_per_device("TPU v5 lite") == 197.0
    assert peak_tflops_per_device("TPU v5p") == 459.0
    assert peak_tflops_per_device("TPU v4") == 275.0
    assert peak_tflops_per_device("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops_per_device("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops_per_device("cpu") is None


def test_console_line_shows_mfu_when_known():
    metrics = dict(
        loss=1.0,
        learning_rate=1e-6,
        logit_scale=100.0,
        grad_norm=1.0,
        examples_per_sec=2000.0,
        tflops_per_device=400.0,
        data_wait_s=0.01,
        data_wait_fraction=0.05,
        skipped_records=0,
    )
    assert "| 400.00 TFLOP/s/device | data 0.010s (5%)" in console_line(10, 100, metrics)
    assert "400.00 TFLOP/s/device (MFU 40.4%) |" in console_line(10, 100, {**metrics, "mfu": 400 / 989})


@pytest.mark.parametrize("web_caption", [False, True])
def test_analytic_flops_of_the_caption_generator_match_xla(web_caption):
    config = model_config("tiny", dtype="float32", context_length=16, generator=True, generator_queries=8)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: CLIP(config, rngs=nnx.Rngs(0))))
    batch, text_length = 2, 10
    images = jax.ShapeDtypeStruct((batch, config.image_size, config.image_size, 3), jnp.float32)
    tokens = jax.ShapeDtypeStruct((batch, 2, text_length), jnp.int32)

    def forward(params, images, tokens):
        model = nnx.merge(graphdef, params)
        image_emb, image_tokens = model.image_features(images)
        text_emb, text_tokens = model.text_features(tokens)
        web = (text_tokens[:, 0], tokens[:, 0]) if web_caption else ()
        return image_emb, text_emb, model.generator(image_tokens, *web) @ model.generator.head[...]

    xla = jax.jit(forward).lower(params, images, tokens).compile().cost_analysis()["flops"] / batch
    analytic = clip_training_flops_per_example(config, 2, batch, text_length=text_length, web_caption=web_caption) / 3
    # The tiny model's layer norms, softmaxes and activations weigh more than B/16's: within 10%.
    assert analytic == pytest.approx(xla, rel=0.10)
