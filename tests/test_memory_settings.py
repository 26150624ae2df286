"""Memory settings change memory, not numbers: the whole training step on 8 fake devices (fsdp and tensor
axes, activations pinned by the activation rules) gives the losses of the plain step under every setting:
remat policies, scanned layers, gradient caching."""

import functools

import jax
import numpy as np
import pytest
from test_train_step import random_batch, tiny_config

from rsclip_jax.accelerators.sharding import make_mesh
from rsclip_jax.training.step import batch_sharding, make_train_step
from rsclip_jax.training.train_setup import TrainSetup


@functools.cache
def losses(mesh_shape, steps=3, **settings):
    config = tiny_config()
    for key, value in settings.items():
        section, name = key.split("__")
        config[section][name] = value
    mesh = make_mesh(mesh_shape)
    setup = TrainSetup.build(config, mesh)
    state = setup.init_state()
    step = make_train_step(setup, ("any", "any"))
    batch = jax.device_put(random_batch(16), batch_sharding(mesh))
    values = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        values.append(float(metrics["loss"]))
    return values


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings",
    [
        dict(model__remat_policy="nothing", model__scan_layers=True),
        dict(model__remat_policy="dots_no_batch", model__scan_layers=False),
        dict(model__remat_policy="dots", model__scan_layers=True),
        dict(optim__grad_cache_chunks=4, model__remat_policy="nothing", model__scan_layers=True),
        dict(optim__grad_cache_chunks=2, loss__sharded="on", loss__label_smoothing=0.1),
    ],
)
def test_remat_scan_and_gradient_caching_keep_the_losses_of_every_step(settings):
    reference = losses((1, 4, 2), **{key: value for key, value in settings.items() if key.startswith("loss__")})
    np.testing.assert_allclose(losses((1, 4, 2), **settings), reference, rtol=1e-5)


@pytest.mark.slow
def test_batch_constraints_on_an_fsdp_mesh_keep_the_single_device_losses():
    np.testing.assert_allclose(losses((1, 4, 2)), losses((1, 1, 1)), rtol=1e-5)


@pytest.mark.slow
def test_bfloat16_first_moments_stay_close():
    reference = losses((8, 1, 1), steps=5)
    lean = losses((8, 1, 1), steps=5, optim__mu_dtype="bfloat16")
    assert lean[0] == reference[0]  # the first step's loss comes before any update
    np.testing.assert_allclose(lean, reference, rtol=2e-3)
