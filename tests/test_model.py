import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rsclip_jax import CLIP, VARIANTS, model_config, tokenize


def shrunk(variant, **overrides):
    """The variant's patch size, head counts and activation at a width of 8 per head, 1 layer each."""
    base = VARIANTS[variant]
    fields = dict(
        embed_dim=16,
        image_size=2 * base.patch_size,
        vision_width=8 * base.vision_heads,
        vision_layers=1,
        text_width=8 * base.text_heads,
        text_layers=1,
        context_length=16,
    )
    return model_config(variant, **{**fields, **overrides})


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_towers_shapes_and_dtypes(variant):
    config = shrunk(variant)
    model = CLIP(config, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    images = jnp.ones((3, config.image_size, config.image_size, 3))
    tokens = jnp.asarray(tokenize(["a", "b c", "d e f"] * 2, config.context_length).reshape(3, 2, -1))
    image_emb, text_emb = jax.jit(lambda state: nnx.merge(graphdef, state)(images, tokens))(state)
    assert image_emb.shape == (3, 16) and image_emb.dtype == jnp.float32
    assert text_emb.shape == (3, 2, 16) and text_emb.dtype == jnp.float32
    np.testing.assert_allclose(jnp.linalg.norm(image_emb, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(text_emb, axis=-1), 1.0, rtol=1e-5)
    params = nnx.state(model, nnx.Param)
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    assert params["visual"]["positional_embedding"].shape == (5, config.vision_width)
    assert params["positional_embedding"].shape == (16, config.text_width)


def test_bfloat16_compute_keeps_float32_parameters_and_outputs():
    model = CLIP(model_config("tiny", dtype="bfloat16", context_length=8), rngs=nnx.Rngs(0))
    assert model.visual.transformer.resblocks[0].mlp.c_fc.kernel.dtype == jnp.float32
    hidden = model.visual.transformer.resblocks[0].mlp.c_fc(jnp.ones((1, 64)))
    assert hidden.dtype == jnp.bfloat16
    assert model.encode_text(jnp.asarray(tokenize("a red cube", 8))).dtype == jnp.float32


def test_clear_errors_for_bad_inputs_and_config():
    model = CLIP(model_config("tiny", context_length=8), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="exceeds the model's context_length 8"):
        model.encode_text(jnp.zeros((1, 9), jnp.int32))
    with pytest.raises(ValueError, match=r"images must be \[batch, 32, 32, 3\]"):
        model.encode_image(jnp.zeros((1, 3, 32, 32)))
    with pytest.raises(ValueError, match="unknown model variant 'B/17'"):
        model_config("B/17")
    with pytest.raises(ValueError, match=r"unknown model config field\(s\) \['widht'\]"):
        model_config("tiny", widht=3)
    with pytest.raises(ValueError, match="activation 'relu'"):
        model_config("tiny", activation="relu")
    with pytest.raises(ValueError, match="remat_policy 'some'"):
        model_config("tiny", remat_policy="some")
    with pytest.raises(ValueError, match="attention 'fast'"):
        model_config("tiny", attention="fast")


def test_logit_bias_is_a_parameter_only_when_asked_for():
    assert not hasattr(CLIP(model_config("tiny"), rngs=nnx.Rngs(0)), "logit_bias")
    model = CLIP(model_config("tiny", logit_bias_init=-10.0), rngs=nnx.Rngs(0))
    assert float(model.logit_bias[...]) == -10.0


@pytest.mark.parametrize("remat_policy", ["off", "nothing", "dots", "dots_no_batch"])
@pytest.mark.parametrize("scan_layers", [False, True])
def test_remat_and_scanned_layers_give_the_same_loss_and_gradients(remat_policy, scan_layers):
    tokens = jnp.asarray(tokenize(["a red cube", "two blue rings"], 8))
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    results = []
    for settings in ({}, dict(remat_policy=remat_policy, scan_layers=scan_layers)):
        graphdef, params = nnx.split(CLIP(model_config("tiny", context_length=8, **settings), rngs=nnx.Rngs(0)))

        def loss(params):
            image_emb, text_emb = nnx.merge(graphdef, params)(images, tokens)
            return jnp.sum(image_emb @ text_emb.T)

        results.append(jax.jit(jax.value_and_grad(loss))(params))
    (loss_plain, grads_plain), (loss_remat, grads_remat) = results
    np.testing.assert_allclose(loss_remat, loss_plain, rtol=1e-5, atol=1e-6)  # a scan sums in another order
    for a, b in zip(jax.tree.leaves(grads_remat), jax.tree.leaves(grads_plain)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
