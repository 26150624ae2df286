"""Our CLIP against open_clip's on the same random weights (open_clip's state dict loaded into ours)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rsclip_jax import CLIP, model_config, tokenize
from rsclip_jax.weights.openai_layout import load_openai_state_dict

open_clip = pytest.importorskip("open_clip")  # the torch extra
torch = pytest.importorskip("torch")
CLIPTextCfg, CLIPVisionCfg = open_clip.model.CLIPTextCfg, open_clip.model.CLIPVisionCfg

CAPTIONS = [
    "A photo of a red cube left of a glossy blue sphere.",
    "The Narrative Setter: a quiet morning, someone has just left the room, their tea still warm. " * 6,
]


def open_clip_model(config):
    torch.manual_seed(0)
    vision = CLIPVisionCfg(
        layers=config.vision_layers,
        width=config.vision_width,
        head_width=config.vision_width // config.vision_heads,
        patch_size=config.patch_size,
        image_size=config.image_size,
    )
    text = CLIPTextCfg(
        context_length=config.context_length,
        width=config.text_width,
        heads=config.text_heads,
        layers=config.text_layers,
    )
    model = open_clip.CLIP(config.embed_dim, vision, text, quick_gelu=config.activation == "quick_gelu")
    # Random non-trivial LayerNorm and bias values, so a swapped or missing one cannot go unnoticed.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(
                ("bias", "ln_pre.weight", "ln_post.weight", "ln_1.weight", "ln_2.weight", "ln_final.weight")
            ):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def assert_same_embeddings(config, atol):
    theirs = open_clip_model(config)
    ours = CLIP(config, rngs=nnx.Rngs(1))
    load_openai_state_dict(ours, {k: v.numpy() for k, v in theirs.state_dict().items()})
    images = np.random.default_rng(0).normal(size=(2, 3, config.image_size, config.image_size)).astype(np.float32)
    tokens = tokenize(CAPTIONS, config.context_length)
    with torch.no_grad():
        their_images = theirs.encode_image(torch.from_numpy(images), normalize=True).numpy()
        their_texts = theirs.encode_text(torch.from_numpy(tokens).long(), normalize=True).numpy()
    np.testing.assert_allclose(ours.encode_image(jnp.asarray(images.transpose(0, 2, 3, 1))), their_images, atol=atol)
    np.testing.assert_allclose(ours.encode_text(jnp.asarray(tokens)), their_texts, atol=atol)


@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
@pytest.mark.parametrize("context_length", [77, 248])
def test_tiny_model_equals_open_clip(activation, context_length):
    assert_same_embeddings(model_config("tiny", activation=activation, context_length=context_length), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("context_length", [77, 248])
def test_b16_equals_open_clip(context_length):
    assert_same_embeddings(model_config("B/16", context_length=context_length, dtype="float32"), atol=1e-4)


def test_loading_a_mismatched_state_dict_names_the_problem():
    theirs = open_clip_model(model_config("tiny", context_length=77))
    ours = CLIP(model_config("tiny", context_length=248), rngs=nnx.Rngs(0))
    state = {k: v.numpy() for k, v in theirs.state_dict().items()}
    state["extra.weight"] = np.zeros(3)
    del state["ln_final.bias"]
    with pytest.raises(ValueError) as error:
        load_openai_state_dict(ours, state)
    message = str(error.value)
    assert "positional_embedding has shape (77, 64), the model needs (248, 64)" in message
    assert "missing ln_final.bias" in message and "unexpected extra.weight" in message
