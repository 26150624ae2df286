"""`rsclip_jax.convert`: OpenAI/open_clip/HF weights into a workdir the trainer resumes from, and out again."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from recipes import REPO, run_command

from rsclip_jax import CLIP, stretch_positions, tokenize
from rsclip_jax.config import load_recipe
from rsclip_jax.model.config import ModelConfig
from rsclip_jax.weights.import_export import export_hf, export_open_clip, import_weights
from rsclip_jax.weights.openai_layout import to_openai_state_dict
from rsclip_jax.weights.trained import load_model


def demo_config(**model):
    config = load_recipe(os.path.join(REPO, "rsclip_jax", "demo", "configs", "demo.py"))
    config.model.update(model)
    return config


def embeddings(model, config, images, texts):
    tokens = tokenize(texts, config.context_length)
    return (
        np.asarray(model.encode_image(jnp.asarray(images.transpose(0, 2, 3, 1)))),
        np.asarray(model.encode_text(jnp.asarray(tokens))),
    )


def torch_source(config):
    """torch and open_clip's CLIP with random weights at `config`; skips without the torch extra."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    from test_open_clip_parity import open_clip_model

    return torch, open_clip_model(ModelConfig.from_config(config))


def safetensors_source(tmp_path, context_length):
    """Our model's weights in OpenAI's names, as a .safetensors file (read without torch)."""
    save_file = pytest.importorskip("safetensors.numpy").save_file  # the torch extra
    model = CLIP(ModelConfig.from_config(demo_config(context_length=context_length)), rngs=nnx.Rngs(0))
    path = str(tmp_path / f"tiny-{context_length}.safetensors")
    save_file(to_openai_state_dict(model), path)
    return path, np.asarray(model.positional_embedding[...])


IMAGES = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
TEXTS = ["a red cube", "two blue rings on sand"]


@pytest.mark.parametrize("context_length", [128, 248])
def test_import_stretches_to_the_configs_context_length(tmp_path, context_length):
    path, original = safetensors_source(tmp_path, 77)
    config = demo_config(context_length=context_length)
    import_weights(config, str(tmp_path / "run"), path, stretch=True)
    ours, _ = load_model(str(tmp_path / "run"), config=config)
    positions = np.asarray(ours.positional_embedding[...])
    assert positions.shape[0] == context_length
    np.testing.assert_allclose(positions, stretch_positions(original, context_length), atol=1e-6)
    np.testing.assert_array_equal(positions[:20], original[:20])


def test_import_refuses_a_stretch_to_fewer_positions(tmp_path):
    path, _ = safetensors_source(tmp_path, 77)
    with pytest.raises(ValueError, match="--config.model.context_length is 64: set it above 77"):
        import_weights(demo_config(context_length=64), str(tmp_path / "run"), path, stretch=True)


def test_import_openai_torchscript_with_stretching_then_train(tmp_path, demo_shards):
    torch, theirs = torch_source(demo_config(context_length=77))
    path = str(tmp_path / "ViT-tiny.pt")
    torch.jit.save(torch.jit.script(theirs), path)  # a TorchScript archive, as OpenAI released CLIP
    config = demo_config(context_length=248)
    workdir = str(tmp_path / "run")
    import_weights(config, workdir, path, stretch=True)

    ours, _ = load_model(workdir, config=config)
    original = theirs.state_dict()["positional_embedding"].numpy()
    np.testing.assert_allclose(ours.positional_embedding[...], stretch_positions(original), atol=1e-6)
    with torch.no_grad():
        expected = theirs.encode_image(torch.from_numpy(IMAGES), normalize=True).numpy()
    np.testing.assert_allclose(embeddings(ours, ModelConfig.from_config(config), IMAGES, TEXTS)[0], expected, atol=1e-5)

    result = run_command(
        "rsclip_jax.train",
        f"--config={REPO}/rsclip_jax/demo/configs/demo.py",
        f"--workdir={workdir}",
        f"--config.data.train_shards={','.join(demo_shards['train'])}",
        "--config.model.context_length=248",
        "--config.total_steps=2",
        "--config.log_every_steps=1",
        "--config.batch_size=8",
    )
    assert "resuming from the checkpoint of step 0" in result.stderr
    assert [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))] == [1, 2]


def test_import_refuses_the_wrong_activation(tmp_path):
    torch, theirs = torch_source(demo_config(context_length=77))
    path = str(tmp_path / "ViT-tiny.pt")
    torch.jit.save(torch.jit.script(theirs), path)
    with pytest.raises(ValueError, match="uses quick_gelu: set --config.model.activation=quick_gelu"):
        import_weights(demo_config(context_length=77, activation="gelu"), str(tmp_path / "run"), path, stretch=False)


def test_state_dict_import_and_export_to_open_clip_and_hf(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    transformers = pytest.importorskip("transformers")
    config = demo_config(context_length=77)
    model_config = ModelConfig.from_config(config)
    torch, source = torch_source(config)
    path = str(tmp_path / "open_clip_state.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)  # as open_clip trains
    import_weights(config, str(tmp_path / "run"), path, stretch=False)
    ours, _ = load_model(str(tmp_path / "run"), config=config)
    expected = embeddings(ours, model_config, IMAGES, TEXTS)

    export_open_clip(model_config, ours, str(tmp_path / "open_clip"))
    reloaded = open_clip.create_model(f"local-dir:{tmp_path / 'open_clip'}").eval()
    tokens = torch.from_numpy(tokenize(TEXTS, 77)).long()
    with torch.no_grad():
        got = (
            reloaded.encode_image(torch.from_numpy(IMAGES), normalize=True).numpy(),
            reloaded.encode_text(tokens, normalize=True).numpy(),
        )
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, atol=1e-5)

    export_hf(model_config, ours, str(tmp_path / "hf"))
    hf = transformers.CLIPModel.from_pretrained(str(tmp_path / "hf")).eval()
    assert hf.config.text_config.max_position_embeddings == 77
    with torch.no_grad():
        got = (
            hf.get_image_features(pixel_values=torch.from_numpy(IMAGES)).pooler_output,
            hf.get_text_features(input_ids=tokens).pooler_output,
        )
    for a, b in zip(got, expected):
        np.testing.assert_allclose(torch.nn.functional.normalize(a, dim=-1).numpy(), b, atol=1e-5)

    import_weights(config, str(tmp_path / "from_hf"), str(tmp_path / "hf"), stretch=False)  # and back in
    again, _ = load_model(str(tmp_path / "from_hf"), config=config)
    for a, b in zip(embeddings(again, model_config, IMAGES, TEXTS), expected):
        np.testing.assert_allclose(a, b, atol=1e-5)
