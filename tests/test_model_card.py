"""The model card `convert export` writes beside the weights (OUT/README.md, rsclip_jax/weights/model_card.py): the
model's and the recipe's numbers, the data, the workdir's evaluation numbers, and a loading snippet that runs."""

import json
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from recipes import REPO, run_command

from rsclip_jax import CLIP, tokenize
from rsclip_jax.config import load_recipe
from rsclip_jax.model.config import ModelConfig
from rsclip_jax.weights.import_export import export_hf, import_weights
from rsclip_jax.weights.model_card import latest_step, model_card, write_model_card
from rsclip_jax.weights.openai_layout import to_openai_state_dict
from rsclip_jax.weights.trained import load_model

RECIPE = os.path.join(REPO, "rsclip_jax", "demo", "configs", "demo.py")
# As `rsclip_jax.evaluate` writes DIR/eval/step_STEP.json: {"checkpoint", "step", "evals": {name: {metric: value}}}.
EVALS = {
    "coco": {
        **{"i2t_r1": 12.5, "i2t_r5": 30.25, "i2t_r10": 41.0, "t2i_r1": 9.75, "t2i_r5": 25.5, "t2i_r10": 36.125},
        **{"images": 5000, "texts": 25000, "bad_images": 0, "seconds": 3.21},
    },
    "imagenet": {"top1": 61.25, "top5": 87.5, "images": 50000, "classes": 1000, "bad_images": 0, "seconds": 40.5},
}


def card_config():
    config = load_recipe(RECIPE)
    config.model.context_length = 248
    config.data.train_shards = "gs://bucket/captions/train-*.array_record"
    return config


def write_evals(workdir):
    os.makedirs(os.path.join(workdir, "eval"))
    with open(os.path.join(workdir, "eval", "step_0.json"), "w") as f:
        json.dump({"checkpoint": os.path.join(workdir, "checkpoints", "0"), "step": 0, "evals": EVALS}, f, indent=1)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A workdir as `convert import` leaves one (random weights, checkpoint step 0), with an evaluation of step 0."""
    save_file = pytest.importorskip("safetensors.numpy").save_file  # the torch extra
    tmp = tmp_path_factory.mktemp("card")
    config = card_config()
    model = CLIP(ModelConfig.from_config(config), rngs=nnx.Rngs(0))
    save_file(to_openai_state_dict(model), str(tmp / "weights.safetensors"))
    workdir = str(tmp / "run")
    import_weights(config, workdir, str(tmp / "weights.safetensors"), stretch=False)
    write_evals(workdir)
    return workdir


def python_block(card: str) -> str:
    [block] = re.findall(r"```python\n(.*?)```", card, re.DOTALL)
    return block


def test_the_card_names_the_model_the_recipe_the_data_and_the_evals(tmp_path):
    config = card_config()
    model_config = ModelConfig.from_config(config)
    workdir = str(tmp_path / "evaluated")  # the card reads DIR/eval and DIR/metrics.jsonl, not the checkpoint
    write_evals(workdir)
    card = model_card(config, model_config, workdir, "open_clip", 0, "out")
    for text in [
        "library_name: open_clip",
        "| Image size | 32 px |",
        "| Patch size | 8 |",
        "| Vision tower | width 64, 2 layers, 2 heads |",
        "| Text tower | width 64, 2 layers, 2 heads |",
        "| Context length | 248 tokens",
        "| Activation | QuickGELU",
        "| Embedding dimension | 32 |",
        "| Loss | `softmax_union` |",
        "| Batch size | 64 images per step (global) |",
        "| Steps | 600 in all; this checkpoint is step 0 |",
        "| Learning rate | 0.001 peak; linear warmup over 50 steps, then cosine decay to 0 |",
        "grouped: 2 caption(s) per image",
        "`gs://bucket/captions/train-*.array_record`",
        "checkpoint of step 0",
        "`eval/step_0.json`",
        "| eval | i2t_r1 | i2t_r5 | i2t_r10 | t2i_r1 | t2i_r5 | t2i_r10 | images | texts | bad_images |",
        "| coco | 12.50 | 30.25 | 41.00 | 9.75 | 25.50 | 36.12 | 5000 | 25000 | 0 |",
        "| eval | top1 | top5 | images | classes | bad_images |",
        "| imagenet | 61.25 | 87.50 | 50000 | 1000 | 0 |",
        'open_clip.create_model_and_transforms("local-dir:out")',
        'open_clip.get_tokenizer("local-dir:out")',
    ]:
        assert text in card, text
    assert "seconds" not in card

    # No evaluate output: the eval lines of the checkpoint's step in metrics.jsonl; none at all: said so.
    other = str(tmp_path / "run")
    os.makedirs(other)
    lines = [{"step": 0, "loss": 3.25}, {"step": 0, "eval/heldout/i2t_r1": 43.75, "eval/heldout/images": 16}]
    with open(os.path.join(other, "metrics.jsonl"), "w") as f:
        f.write("".join(json.dumps(line) + "\n" for line in lines))
    card = model_card(config, model_config, other, "hf", 0, "out")
    assert "evaluated during training at step 0 (`metrics.jsonl`)" in card
    assert "| heldout | 43.75 | 16 |" in card and "library_name: transformers" in card
    os.remove(os.path.join(other, "metrics.jsonl"))
    assert "None recorded" in model_card(config, model_config, other, "hf", 0, "out")

    config.total_steps = 1000
    card = model_card(config, model_config, workdir, "hf", 250, "out")  # a checkpoint partway
    assert "step 250 of 1000: 16,000 images (2 caption(s) each) seen" in card
    assert "`eval/step_0.json`), not this checkpoint's step 250" in card

    # A trained workdir: what DIR/config.json says ran (command-line overrides included), over the recipe's keys.
    trained = json.loads(config.to_json_best_effort())
    trained.update(batch_size=8, total_steps=4)
    trained["data"].update(train_shards="/data/a.array_record,/data/b.array_record", sampling="rows")
    del trained["loss"]["short_caption_components"]  # a workdir from before the key
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(trained, f)
    card = model_card(config, model_config, workdir, "open_clip", 4, "out")
    assert "From the workdir's `config.json` (what the run trained with)." in card
    assert "| Batch size | 8 caption rows (image-text pairs) per step (global) |" in card
    assert "| Steps | 4 in all; this checkpoint is step 4 |" in card
    assert "`/data/a.array_record`, `/data/b.array_record`" in card and "32 caption rows seen" in card


def photo(folder):
    """photo.jpg, 65 x 40: resized to 52 x 32 and cropped at 10 by open_clip's transform and load_model's alike (where
    the resized long side is not whole, or the crop margin odd, they round differently)."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 65, 3), np.uint8)).save(os.path.join(folder, "photo.jpg"))
    return Image.open(os.path.join(folder, "photo.jpg"))


def our_embeddings(workdir, image):
    """What the card's snippets should give: our model's embeddings of the photo and its three labels."""
    model, preprocess = load_model(workdir, config=card_config())
    return (
        np.asarray(model.encode_image(jnp.asarray(preprocess(image)[None]))),
        np.asarray(model.encode_text(jnp.asarray(tokenize(["a diagram", "a dog", "a cat"], 248)))),
    )


@pytest.mark.slow
def test_open_clip_export_writes_a_card_whose_snippet_runs(workdir, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    assert latest_step(workdir) == 0 and latest_step(str(tmp_path / "nothing")) is None
    out = str(tmp_path / "open_clip")
    result = run_command(
        "rsclip_jax.convert",
        "export",
        f"--config={RECIPE}",
        "--config.model.context_length=248",
        f"--workdir={workdir}",
        "--to=open_clip",
        f"--out={out}",
    )
    assert f"exported step 0 of {workdir} to {out} (open_clip), with its model card {out}/README.md" in result.stdout
    with open(os.path.join(out, "README.md")) as f:
        card = f.read()
    assert "12.50" in card and "61.25" in card
    monkeypatch.chdir(tmp_path)  # the snippet opens photo.jpg
    image = photo(tmp_path)
    scope = {}
    exec(python_block(card), scope)
    expected = our_embeddings(workdir, image)
    np.testing.assert_allclose(scope["image_features"].numpy(), expected[0], atol=1e-4)
    np.testing.assert_allclose(scope["text_features"].numpy(), expected[1], atol=1e-5)
    assert scope["probs"].shape == (1, 3)


@pytest.mark.slow
def test_hf_export_card_says_how_to_tokenize_and_its_snippet_runs(workdir, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    pytest.importorskip("transformers")
    config = card_config()
    model, _ = load_model(workdir, config=config)
    out = str(tmp_path / "hf")
    export_hf(model.config, model, out)
    path = write_model_card(config, model.config, workdir, "hf", latest_step(workdir), out)
    with open(path) as f:
        card = f.read()
    assert not any(name.startswith(("tokenizer", "vocab", "merges")) for name in os.listdir(out))  # as it says:
    assert "no tokenizer or image processor files" in card and "`rsclip_jax.tokenize(texts, 248)`" in card
    monkeypatch.chdir(tmp_path)
    image = photo(tmp_path)
    scope = {}
    exec(python_block(card), scope)
    expected = our_embeddings(workdir, image)
    # CLIPImageProcessor's bicubic resize rounds a few pixels one 8-bit level away from PIL's, which ours is.
    np.testing.assert_allclose(scope["image_features"].numpy(), expected[0], atol=1e-3)
    np.testing.assert_allclose(scope["text_features"].numpy(), expected[1], atol=1e-5)
