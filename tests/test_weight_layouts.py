"""Weights both ways between our CLIP and the PyTorch peers (open_clip, HF transformers), same embeddings."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rsclip_jax import CLIP, model_config, tokenize
from rsclip_jax.weights.hf_layout import hf_clip_config, hf_to_openai, openai_to_hf
from rsclip_jax.weights.openai_layout import load_openai_state_dict, to_openai_state_dict

torch = pytest.importorskip("torch")  # the torch extra
transformers = pytest.importorskip("transformers")
from test_open_clip_parity import CAPTIONS, open_clip_model  # noqa: E402  (itself skips without open_clip)


def inputs(config):
    images = np.random.default_rng(0).normal(size=(2, 3, config.image_size, config.image_size)).astype(np.float32)
    return images, tokenize(CAPTIONS, config.context_length)


def ours_embeddings(model, images, tokens):
    return np.asarray(model.encode_image(jnp.asarray(images.transpose(0, 2, 3, 1)))), np.asarray(
        model.encode_text(jnp.asarray(tokens))
    )


def randomized(model):
    """Non-trivial LayerNorm gains and biases, so a swapped mapping cannot pass."""
    graphdef, params = nnx.split(model, nnx.Param)
    rng = np.random.default_rng(1)
    for path, variable in nnx.to_flat_state(params):
        if path[-1] in ("scale", "bias"):
            variable[...] = variable[...] + 0.1 * rng.normal(size=variable.shape).astype(np.float32)
    nnx.update(model, params)
    return model


# The paper's model at both text lengths (slow on a CPU), and the tiny one with either activation.
CASES = [
    ("tiny", "quick_gelu", 77, 1e-5),
    ("tiny", "gelu", 248, 1e-5),
    pytest.param("B/16", "quick_gelu", 77, 1e-4, marks=pytest.mark.slow),
    pytest.param("B/16", "quick_gelu", 248, 1e-4, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("variant,activation,context_length,atol", CASES)
def test_export_to_open_clip_gives_the_same_embeddings(variant, activation, context_length, atol):
    config = model_config(variant, activation=activation, context_length=context_length, dtype="float32")
    ours = randomized(CLIP(config, rngs=nnx.Rngs(3)))
    theirs = open_clip_model(config)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in to_openai_state_dict(ours).items()}, strict=True)
    images, tokens = inputs(config)
    with torch.no_grad():
        expected = (
            theirs.encode_image(torch.from_numpy(images), normalize=True).numpy(),
            theirs.encode_text(torch.from_numpy(tokens).long(), normalize=True).numpy(),
        )
    for got, want in zip(ours_embeddings(ours, images, tokens), expected):
        np.testing.assert_allclose(got, want, atol=atol)


def hf_model(config):
    torch.manual_seed(0)
    kwargs = hf_clip_config(config)
    hf_config = transformers.CLIPConfig(
        text_config=transformers.CLIPTextConfig(**kwargs["text_config"]),
        vision_config=transformers.CLIPVisionConfig(**kwargs["vision_config"]),
        projection_dim=kwargs["projection_dim"],
    )
    return transformers.CLIPModel(hf_config).eval()


def hf_embeddings(model, images, tokens):
    with torch.no_grad():
        image = model.get_image_features(pixel_values=torch.from_numpy(images)).pooler_output
        text = model.get_text_features(input_ids=torch.from_numpy(tokens).long()).pooler_output
    return [torch.nn.functional.normalize(x, dim=-1).numpy() for x in (image, text)]


@pytest.mark.parametrize("variant,activation,context_length,atol", CASES)
def test_hf_weights_both_ways_give_the_same_embeddings(variant, activation, context_length, atol):
    config = model_config(variant, activation=activation, context_length=context_length, dtype="float32")
    images, tokens = inputs(config)

    theirs = hf_model(config)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    ours = CLIP(config, rngs=nnx.Rngs(0))
    load_openai_state_dict(ours, hf_to_openai({k: v.numpy() for k, v in theirs.state_dict().items()}))
    for got, want in zip(ours_embeddings(ours, images, tokens), hf_embeddings(theirs, images, tokens)):
        np.testing.assert_allclose(got, want, atol=atol)

    exported = randomized(CLIP(config, rngs=nnx.Rngs(5)))
    back = hf_model(config)
    missing, unexpected = back.load_state_dict(
        {k: torch.from_numpy(v) for k, v in openai_to_hf(to_openai_state_dict(exported)).items()}, strict=False
    )
    assert not unexpected and all(name.endswith("position_ids") for name in missing)
    for got, want in zip(ours_embeddings(exported, images, tokens), hf_embeddings(back, images, tokens)):
        np.testing.assert_allclose(got, want, atol=atol)
