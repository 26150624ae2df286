"""TrainSetup: one object from (config, mesh); its optimizer-state shardings; reading parameters back."""

import os

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from rsclip_jax.accelerators.sharding import make_mesh
from rsclip_jax.config import load_recipe
from rsclip_jax.training.checkpoints import Checkpointer, restore_params
from rsclip_jax.training.train_setup import TrainSetup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo_config(**optim):
    config = load_recipe(os.path.join(REPO, "rsclip_jax", "demo", "configs", "demo.py"))
    config.optim.update(optim)
    return config


def test_the_moments_are_sharded_as_their_parameters_and_the_counters_replicated():
    setup = TrainSetup.build(demo_config(freeze=(r"visual\..*",)), make_mesh((1, 4, 2)))
    params = setup.shardings["params"]
    assert params["token_embedding"]["embedding"].spec != P()  # really sharded
    found = optax.tree_utils.tree_get_all_with_path(setup.shardings["opt_state"], "mu")
    found += optax.tree_utils.tree_get_all_with_path(setup.shardings["opt_state"], "nu")
    assert len(found) == 2
    for _, moments in found:
        assert moments["token_embedding"]["embedding"] == params["token_embedding"]["embedding"]
        assert moments["text_projection"] == params["text_projection"]
        assert isinstance(moments["visual"]["proj"], optax.MaskedNode)  # the frozen tower has no moments
    counts = optax.tree_utils.tree_get_all_with_path(setup.shardings["opt_state"], "count")
    assert counts and all(sharding.spec == P() for _, sharding in counts)
    assert jax.tree.structure(setup.shardings["opt_state"]) == jax.tree.structure(setup.abstract_state["opt_state"])


def test_parameters_are_read_whatever_the_optimizer_and_a_wrong_folder_is_an_error(tmp_path):
    trained = TrainSetup.build(demo_config(), make_mesh((1, 1, 1)))
    state = trained.init_state()
    checkpointer = Checkpointer(str(tmp_path / "checkpoints"), every_steps=1, keep=1)
    checkpointer.save(3, state, force=True)
    checkpointer.close()
    # Another optimizer (frozen tower, bfloat16 moments, clipping): another opt_state tree, the same parameters.
    other = TrainSetup.build(
        demo_config(freeze=(r"visual\..*",), mu_dtype="bfloat16", grad_clip_norm=1.0), make_mesh((1, 1, 1))
    )
    assert jax.tree.structure(other.abstract_state["opt_state"]) != jax.tree.structure(state["opt_state"])
    step, params = restore_params(str(tmp_path / "checkpoints"), other)
    assert step == 3
    jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(state["params"]))

    missing = tmp_path / "no-such-run" / "checkpoints"
    with pytest.raises(FileNotFoundError, match="no-such-run/checkpoints does not exist: give the --workdir"):
        restore_params(str(missing), other)
    assert not missing.parent.exists()  # nothing made on the way
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty holds no checkpoint"):
        restore_params(str(tmp_path / "empty"), other)
