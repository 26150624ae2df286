import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rsclip_jax.config import base_config
from rsclip_jax.model.config import ModelConfig
from rsclip_jax.training.optimizer import learning_rate_schedule, make_optimizer


def params():
    return {
        "positional_embedding": jnp.ones((6, 4)),
        "visual": {"proj": jnp.ones((4, 3)), "ln_post": {"bias": jnp.ones((4,))}},
        "logit_scale": jnp.asarray(2.0),
    }


def optimizer(config, p):
    model = ModelConfig.from_config(config)
    return make_optimizer(config.optim, model, learning_rate_schedule(config.optim, config.total_steps), p)


def one_update(config, grads_value=1.0):
    p = params()
    tx = optimizer(config, p)
    grads = jax.tree.map(lambda x: jnp.full_like(x, grads_value), p)
    updates, _ = tx.update(grads, tx.init(p), p)
    return optax.apply_updates(p, updates)


def config(**optim):
    c = base_config()
    c.total_steps, c.optim.warmup_steps, c.optim.lr, c.optim.weight_decay = 10, 0, 0.1, 0.5
    c.optim.update(optim)
    return c


def test_frozen_position_rows_stay_exactly_even_with_weight_decay():
    c = config()
    c.model.frozen_text_positions = 2
    new = one_update(c, grads_value=0.0)  # only weight decay moves anything
    np.testing.assert_array_equal(new["positional_embedding"][:2], 1.0)
    assert (new["positional_embedding"][2:] < 1.0).all()


def test_weight_decay_mask_spares_vectors_and_scalars():
    new = one_update(config(), grads_value=0.0)
    assert (new["visual"]["proj"] < 1.0).all()
    assert (new["visual"]["ln_post"]["bias"] == 1.0).all() and new["logit_scale"] == 2.0
    assert (one_update(config(decay_vectors=True), grads_value=0.0)["visual"]["ln_post"]["bias"] < 1.0).all()


def test_freeze_patterns_lock_a_tower():
    new = one_update(config(freeze=(r"visual\..*",)))
    np.testing.assert_array_equal(new["visual"]["proj"], 1.0)
    np.testing.assert_array_equal(new["visual"]["ln_post"]["bias"], 1.0)
    assert (new["positional_embedding"] != 1.0).all()
    with pytest.raises(ValueError, match=r"freeze pattern 'vision.*' matches no parameter"):
        optimizer(config(freeze=(r"vision\..*",)), params())
    with pytest.raises(ValueError, match="matches every parameter"):
        optimizer(config(freeze=(".*",)), params())


def test_schedule_warms_up_then_decays():
    c = config(warmup_steps=4, end_lr_fraction=0.1)
    schedule = learning_rate_schedule(c.optim, c.total_steps)
    values = [float(schedule(s)) for s in range(11)]
    assert values[0] == 0.0 and values[4] == pytest.approx(0.1)
    assert values[10] == pytest.approx(0.01) and all(a >= b for a, b in zip(values[4:], values[5:]))
