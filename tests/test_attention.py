"""The fused attention kernels give XLA's attention: Pallas TPU flash attention (padded to its blocks, the
padding masked by segment ids) run in Pallas' TPU interpreter on this CPU, forward and backward, alone and
inside the model. cuDNN's kernel needs an NVIDIA GPU and is only compiled for one (rsclip_jax.aot); the
padding it is given is checked here through XLA's attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental.pallas import tpu as pltpu

from rsclip_jax import CLIP, model_config, tokenize
from rsclip_jax.model.attention import CUDNN_MULTIPLE, attend, padded_attention


@pytest.mark.parametrize("causal,tokens", [(False, 17), (True, 20)])  # neither a multiple of the 128-token block
def test_flash_attention_equals_xla_attention_with_gradients(causal, tokens):
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, tokens, 2, 8)), jnp.float32) for _ in range(3))

    def value_and_grads(implementation):
        def total(q, k, v):
            out = attend(q, k, v, causal=causal, implementation=implementation)
            return jnp.sum(out * jnp.arange(out.size).reshape(out.shape) / out.size), out

        return jax.jit(jax.value_and_grad(total, argnums=(0, 1, 2), has_aux=True))(q, k, v)

    (_, reference), reference_grads = value_and_grads("xla")
    with pltpu.force_tpu_interpret_mode():
        (_, flash), flash_grads = value_and_grads("flash")
    np.testing.assert_allclose(flash, reference, atol=1e-5)
    for a, b in zip(flash_grads, reference_grads):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_padding_for_cudnn_masks_the_padding(causal):
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 197, 2, 8)), jnp.float32) for _ in range(3))
    np.testing.assert_allclose(
        padded_attention(q, k, v, causal, CUDNN_MULTIPLE, "xla"),
        attend(q, k, v, causal=causal, implementation="xla"),
        atol=1e-5,
    )


@pytest.mark.slow
def test_the_model_with_flash_attention_gives_the_same_embeddings():
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    tokens = jnp.asarray(tokenize(["a red cube", "two blue rings on a table"], 8))
    outputs = []
    for attention in ("xla", "flash"):
        graphdef, params = nnx.split(
            CLIP(model_config("tiny", context_length=8, attention=attention), rngs=nnx.Rngs(0))
        )
        with pltpu.force_tpu_interpret_mode():
            outputs.append(jax.jit(lambda params: nnx.merge(graphdef, params)(images, tokens))(params))
    for a, b in zip(*outputs):
        np.testing.assert_allclose(a, b, atol=1e-5)
