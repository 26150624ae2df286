"""The jitted step on its own: gradient accumulation averages micro-batch gradients."""

import jax
import numpy as np
from flax import nnx

from rsclip_jax import tokenize
from rsclip_jax.config import base_config, model_config_from
from rsclip_jax.optim import learning_rate_schedule
from rsclip_jax.sharding import make_mesh
from rsclip_jax.train_state import init_train_state, setup_train_state
from rsclip_jax.train_step import make_train_step, training_loss


def test_accumulated_step_equals_mean_of_micro_batch_gradients():
    config = base_config()
    config.model.variant, config.model.context_length, config.model.dtype = "tiny", 16, "float32"
    config.total_steps, config.optim.lr, config.optim.warmup_steps = 10, 1e-3, 0
    config.optim.accum_steps = 2
    model_config = model_config_from(config)
    mesh = make_mesh((1, 1, 1))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8),
        "tokens": tokenize([f"caption {i} of a red cube" for i in range(16)], 16).reshape(8, 2, 16),
        "image_id": np.arange(8),
    }
    setup = setup_train_state(config, model_config, mesh)
    state = init_train_state(config, model_config, setup)
    params = jax.tree.map(np.asarray, state["params"])

    def loss(p, offset):  # micro-batch `offset` holds rows offset, offset + 2, ...
        micro = jax.tree.map(lambda x: x[offset::2], batch)
        return training_loss(config, nnx.merge(setup.graphdef, p), micro, ("any",))

    loss_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    losses, grads = zip(*(loss_and_grad(params, a) for a in range(2)))
    expected_loss = np.mean(losses)
    expected_norm = np.sqrt(sum(np.sum(((g0 + g1) / 2) ** 2) for g0, g1 in zip(*map(jax.tree.leaves, grads))))

    step = make_train_step(config, setup, ("any",), learning_rate_schedule(config.optim, config.total_steps), mesh)
    state, metrics = step(state, batch)
    np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], expected_norm, rtol=1e-4)
    assert int(state["step"]) == 1 and int(state["nonfinite_step"]) == -1
