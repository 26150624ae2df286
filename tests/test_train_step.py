"""The jitted step on its own: gradient accumulation averages micro-batch gradients."""

import jax
import numpy as np
import pytest
from flax import nnx

from rsclip_jax import tokenize
from rsclip_jax.accelerators.sharding import make_mesh
from rsclip_jax.config import base_config
from rsclip_jax.training.step import (
    SHARDED_LOSS_MIN_BATCH,
    batch_sharding,
    make_train_step,
    training_loss,
    uses_sharded_loss,
)
from rsclip_jax.training.train_setup import TrainSetup


def tiny_config():
    config = base_config()
    config.model.variant, config.model.context_length, config.model.dtype = "tiny", 16, "float32"
    config.total_steps, config.optim.lr, config.optim.warmup_steps = 10, 1e-3, 0
    return config


def random_batch(size, num_captions=2):
    rng = np.random.default_rng(0)
    texts = [f"caption {i} of a red cube" for i in range(size * num_captions)]
    return {
        "image": rng.integers(0, 255, (size, 32, 32, 3), dtype=np.uint8),
        "tokens": tokenize(texts, 16).reshape(size, num_captions, 16),
        "image_id": rng.integers(0, size - 2, size),  # some rows share an image
    }


def test_accumulated_step_equals_mean_of_micro_batch_gradients():
    config = tiny_config()
    config.optim.accum_steps = 2
    mesh = make_mesh((1, 1, 1))
    batch = random_batch(8)
    setup = TrainSetup.build(config, mesh)
    state = setup.init_state()
    params = jax.tree.map(np.asarray, state["params"])

    def loss(p, offset):  # micro-batch `offset` holds rows offset, offset + 2, ...
        micro = jax.tree.map(lambda x: x[offset::2], batch)
        return training_loss(config, nnx.merge(setup.graphdef, p), micro, ("any",), mesh)[0]

    loss_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    losses, grads = zip(*(loss_and_grad(params, a) for a in range(2)))
    expected_loss = np.mean(losses)
    expected_norm = np.sqrt(sum(np.sum(((g0 + g1) / 2) ** 2) for g0, g1 in zip(*map(jax.tree.leaves, grads))))

    step = make_train_step(setup, ("any",))
    state, metrics = step(state, batch)
    np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], expected_norm, rtol=1e-4)
    assert int(state["step"]) == 1 and int(state["nonfinite_step"]) == -1


@pytest.mark.slow
@pytest.mark.parametrize("short_caption_components", [0, 4])
def test_sharded_loss_gives_the_plain_loss_and_gradients_in_the_model(short_caption_components):
    mesh = make_mesh((4, 2, 1))
    batch = jax.device_put(random_batch(16), batch_sharding(mesh))
    results = []
    for sharded in ("off", "on"):
        config = tiny_config()
        config.loss.sharded, config.loss.short_caption_components = sharded, short_caption_components
        setup = TrainSetup.build(config, mesh)
        params = setup.init_state()["params"]
        loss = lambda p: training_loss(config, nnx.merge(setup.graphdef, p), batch, ("long", "short"), mesh)[0]
        results.append(jax.device_get(jax.jit(jax.value_and_grad(loss))(params)))
    (plain_loss, plain_grads), (sharded_loss, sharded_grads) = results
    np.testing.assert_allclose(sharded_loss, plain_loss, rtol=1e-6)
    # float32 sums in another order: gradients of order 1 agree to about 1e-6
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), sharded_grads, plain_grads)


def test_sharded_loss_is_the_default_for_large_batches_on_several_devices():
    config = tiny_config()
    config.batch_size = SHARDED_LOSS_MIN_BATCH
    assert uses_sharded_loss(config, make_mesh((8, 1, 1))) and not uses_sharded_loss(config, make_mesh((1, 1, 1)))
    config.batch_size = 256
    assert not uses_sharded_loss(config, make_mesh((8, 1, 1)))
    config.loss.sharded = "yes"
    with pytest.raises(ValueError, match="config.loss.sharded must be"):
        uses_sharded_loss(config, make_mesh((8, 1, 1)))


# From scratch, clamped as OpenAI CLIP; the paper recipes, not clamped.
@pytest.mark.parametrize("max_logit_scale", [pytest.param(4.6052, marks=pytest.mark.slow), None])
def test_the_logit_scale_is_clamped_only_under_a_maximum(max_logit_scale):
    config = tiny_config()
    config.model.max_logit_scale = max_logit_scale
    mesh = make_mesh((1, 1, 1))
    setup = TrainSetup.build(config, mesh)
    state = setup.init_state()
    state["params"]["logit_scale"] = jax.device_put(np.float32(5.0), state["params"]["logit_scale"].sharding)
    step = make_train_step(setup, ("any", "any"))
    state, _ = step(state, random_batch(8))
    scale = float(state["params"]["logit_scale"])
    assert scale == pytest.approx(4.6052) if max_logit_scale else abs(scale - 5.0) < 0.01
