"""Every recipe loads and sets up its model, data spec and optimizer (abstractly: nothing allocated)."""

import os
import subprocess
import sys

import jax
import pytest

from rsclip_jax.accelerators.sharding import make_mesh
from rsclip_jax.config import base_config, load_recipe
from rsclip_jax.data.example_spec import ExampleSpec
from rsclip_jax.model.config import ModelConfig
from rsclip_jax.training.step import check_batch_settings, check_loss_settings
from rsclip_jax.training.train_setup import TrainSetup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name, arg=None):
    folder = "rsclip_jax/demo/configs" if name.startswith("demo") else "configs"
    return load_recipe(os.path.join(REPO, folder, f"{name}.py"), arg)


@pytest.mark.parametrize("name", ["demo", "demo_clips", "rsclip_b16", "longclip_b16", "clips_b16"])
def test_recipe_sets_up(name):
    config = load(name)
    model = ModelConfig.from_config(config)
    ExampleSpec.from_config(config, model)
    setup = TrainSetup.build(config, make_mesh((1, 1, 1)))
    assert setup.abstract_state["params"]["positional_embedding"].shape == (model.context_length, model.text_width)
    assert jax.tree.leaves(setup.abstract_state["opt_state"])


def test_paper_numbers():
    rsclip = load("rsclip_b16")
    assert (rsclip.optim.lr, rsclip.optim.weight_decay, rsclip.optim.warmup_steps, rsclip.batch_size) == (
        1e-6,
        1e-2,
        200,
        2048,
    )
    assert (rsclip.model.variant, rsclip.model.context_length, rsclip.model.frozen_text_positions) == ("B/16", 248, 0)
    assert rsclip.total_steps == 6 * 1_000_000 // 2048  # 1M image-text pairs
    assert load("rsclip_b16", "epochs=2,examples=2048000").total_steps == 2000
    longclip = load("longclip_b16")
    assert (
        longclip.model.frozen_text_positions,
        longclip.loss.label_smoothing,
        longclip.loss.short_caption_components,
    ) == (20, 0.1, 32)
    assert longclip.loss.short_caption_pca == "local"  # each device's rows, as Long-CLIP's code
    # Both codes decay every parameter and do not clamp the logit scale; training from scratch clamps it.
    assert rsclip.optim.decay_vectors and longclip.optim.decay_vectors and not base_config().optim.decay_vectors
    assert rsclip.model.max_logit_scale is None and longclip.model.max_logit_scale is None
    assert load("demo").model.max_logit_scale == pytest.approx(4.6052)


@pytest.mark.parametrize("name", ["rsclip_b16", "longclip_b16", "clips_b16"])
def test_paper_recipes_take_epochs_examples_and_eval_root(name):
    config = load(name, "epochs=3,examples=4096,eval_root=/data/eval")
    assert config.total_steps == 6 and "coco" in config.evals
    takes = "it takes epochs= (int, default 6), examples= (int, default 1000000), eval_root= (str, default '')"
    for arg, problem in [
        ("epoch=3", "'epoch=3' is not one it takes"),
        ("epochs", "'epochs' is not key=value"),
        ("examples=1e6", "'examples=1e6': '1e6' is not of type int"),
    ]:
        with pytest.raises(ValueError) as error:
            load(name, arg)
        assert str(error.value) == f"configs/{name}.py: argument {problem}; {takes}"


def test_demo_takes_no_arguments():
    with pytest.raises(ValueError) as error:
        load("demo", "steps=5")
    assert (
        str(error.value)
        == "rsclip_jax/demo/configs/demo.py: argument 'steps=5' is not one it takes; it takes no arguments"
    )


def test_a_wrong_recipe_argument_is_one_line_on_the_command_line():
    code = (
        "import sys; from ml_collections import config_flags; from rsclip_jax.config import parse_flags; "
        "config_flags.DEFINE_config_file('config'); parse_flags(sys.argv)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "--config=configs/longclip_b16.py:eval_rot=/data"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error in --config: configs/longclip_b16.py: argument 'eval_rot=/data' is not one it takes; it takes "
        "epochs= (int, default 6), examples= (int, default 1000000), eval_root= (str, default '')"
    ]


def test_loss_settings_that_cannot_work_are_refused_before_compiling():
    config = load("demo")
    config.loss.kind = "sigmoid"
    with pytest.raises(ValueError, match=r"'sigmoid' needs a learnable logit bias: set config.model.logit_bias_init"):
        check_loss_settings(config)
    config.model.logit_bias_init = -10.0
    check_loss_settings(config)
    clips = load("demo_clips")
    clips.optim.grad_cache_chunks = 2
    with pytest.raises(ValueError, match=r"grad_cache_chunks > 1 does not combine with config.generator.weight"):
        check_loss_settings(clips)


def test_paper_evals_follow_eval_root():
    assert not load("rsclip_b16").evals
    evals = load("rsclip_b16", "epochs=1,eval_root=/data/eval").evals
    assert sorted(evals) == ["cifar100", "coco", "flickr30k", "imagenet", "imagenet_o", "urban1k"]
    assert (evals.coco.dataset, evals.coco.root) == (
        "coco",
        "/data/eval/coco",
    ) and "prefix" not in evals.coco  # verbatim
    assert (evals.imagenet.source, evals.imagenet.data_dir) == ("tfds:imagenet2012", "/data/eval/tfds")
    assert (evals.imagenet_o.source, evals.cifar100.source) == ("folder:/data/eval/imagenet-o", "tfds:cifar100")


def test_local_principal_components_need_more_rows_a_device_than_components():
    config = load("longclip_b16")
    spec = ExampleSpec.from_config(config, ModelConfig.from_config(config))
    check_batch_settings(config, spec, make_mesh((8, 1, 1)))  # 256 rows a device for 32 components
    config.batch_size = 128
    with pytest.raises(ValueError, match=r"'local' takes each device's 16 rows, too few for .*components 32"):
        check_batch_settings(config, spec, make_mesh((8, 1, 1)))
    config.loss.short_caption_pca = "global"
    check_batch_settings(config, spec, make_mesh((8, 1, 1)))


def test_gradient_caching_keeps_a_devices_whole_batch_for_the_principal_components():
    config = load("longclip_b16")
    spec = ExampleSpec.from_config(config, ModelConfig.from_config(config))
    config.batch_size, config.optim.grad_cache_chunks = 512, 4  # the loss sees 64 rows a device, not 16
    check_batch_settings(config, spec, make_mesh((8, 1, 1)))
    config.optim.grad_cache_chunks, config.optim.accum_steps = 1, 4  # accumulation does split the loss's rows
    with pytest.raises(ValueError, match=r"'local' takes each device's 16 rows"):
        check_batch_settings(config, spec, make_mesh((8, 1, 1)))


def test_a_batch_that_forces_one_row_loss_blocks_warns_with_batches_that_would_not(caplog):
    config = load("rsclip_b16")
    spec = ExampleSpec.from_config(config, ModelConfig.from_config(config))
    config.loss.sharded, config.loss.row_chunk = "on", 16
    config.batch_size = 8 * 37  # 37 rows a device: a prime above the row chunk
    check_batch_settings(config, spec, make_mesh((8, 1, 1)))
    assert "each device 37 loss rows" in caplog.text and "A batch of 256 or 384 would not" in caplog.text
    caplog.clear()
    config.batch_size = 8 * 36
    check_batch_settings(config, spec, make_mesh((8, 1, 1)))
    assert "loss rows" not in caplog.text


def test_loading_a_recipe_imports_nothing_heavy():
    recipes = [
        os.path.join(REPO, "configs", f) for f in sorted(os.listdir(os.path.join(REPO, "configs"))) if f.endswith(".py")
    ] + [
        os.path.join(REPO, "rsclip_jax", "demo", "configs", f)
        for f in ("demo.py", "demo_clips.py", "demo_synth2_generator.py")
    ]
    code = (
        "import sys\nfrom rsclip_jax.config import load_recipe\n"
        f"for path in {recipes!r}:\n    load_recipe(path)\n"
        "print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    heavy = {"jax", "jaxlib", "flax", "optax", "orbax", "grain", "PIL", "torch", "tensorflow", "array_record", "cv2"}
    assert len(recipes) == 7 and not heavy & set(result.stdout.split())
