"""Every recipe loads and sets up its model, data spec and optimizer (abstractly: nothing allocated)."""

import os

import jax
import pytest

from rsclip_jax.config import example_spec_from, load_recipe, model_config_from
from rsclip_jax.sharding import make_mesh
from rsclip_jax.train_state import setup_train_state

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load(name, arg=None):
    return load_recipe(os.path.join(CONFIGS, f"{name}.py"), arg)


@pytest.mark.parametrize("name", ["demo", "rsclip_b16", "longclip_b16", "clips_b16"])
def test_recipe_sets_up(name):
    config = load(name)
    model = model_config_from(config)
    example_spec_from(config, model)
    setup = setup_train_state(config, model, make_mesh((1, 1, 1)))
    assert setup.abstract_state["params"]["positional_embedding"].shape == (model.context_length, model.text_width)
    assert jax.tree.leaves(setup.abstract_state["opt_state"])


def test_paper_numbers():
    rsclip = load("rsclip_b16")
    assert (rsclip.optim.lr, rsclip.optim.weight_decay, rsclip.optim.warmup_steps, rsclip.batch_size) == (1e-6, 1e-2, 200, 2048)
    assert (rsclip.model.variant, rsclip.model.context_length, rsclip.model.frozen_text_positions) == ("B/16", 248, 0)
    assert rsclip.total_steps == 6 * 10_000_000 // 2048
    assert load("rsclip_b16", "epochs=2,examples=2048000").total_steps == 2000
    longclip = load("longclip_b16")
    assert (longclip.model.frozen_text_positions, longclip.loss.label_smoothing, longclip.loss.short_caption_components) == (20, 0.1, 32)
    with pytest.raises(ValueError, match="takes epochs=, examples= and eval_root="):
        load("rsclip_b16", "epoch=3")


def test_paper_evals_follow_eval_root():
    assert not load("rsclip_b16").evals
    evals = load("rsclip_b16", "epochs=1,eval_root=/data/eval").evals
    assert sorted(evals) == ["coco", "flickr30k", "imagenet", "urban1k"]
    assert (evals.coco.dataset, evals.coco.root, evals.coco.prefix) == ("coco", "/data/eval/coco", "A photo of ")
    assert (evals.imagenet.source, evals.imagenet.data_dir) == ("tfds:imagenet2012", "/data/eval/tfds")
