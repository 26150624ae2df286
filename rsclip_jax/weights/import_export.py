"""Weights in and out of a training workdir: reading OpenAI, open_clip and HF files, writing a step-0
checkpoint from them, and writing open_clip and HF folders from a trained model. The torch extra is needed
for .pt/.bin sources and HF export; no pickled objects are ever loaded."""

import json
import os
import zipfile

import numpy as np
from flax import nnx

from rsclip_jax.accelerators.sharding import make_mesh
from rsclip_jax.data.preprocess import CLIP_MEAN, CLIP_STD
from rsclip_jax.training.checkpoints import Checkpointer
from rsclip_jax.training.train_setup import TrainSetup
from rsclip_jax.weights.hf_layout import hf_clip_config, hf_to_openai, openai_to_hf
from rsclip_jax.weights.openai_layout import load_openai_state_dict, to_openai_state_dict
from rsclip_jax.weights.positions import stretch_positions


def _torch_state_dict(path: str) -> tuple[dict, str | None]:
    """(state dict as NumPy, activation if the format tells it) of a .pt/.bin/.safetensors file."""
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return load_file(path), None
    import torch

    if zipfile.is_zipfile(path) and any(n.endswith("constants.pkl") for n in zipfile.ZipFile(path).namelist()):
        # A TorchScript archive, as OpenAI released its models: QuickGELU throughout.
        state = torch.jit.load(path, map_location="cpu").state_dict()
        activation = "quick_gelu"
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        activation = None
    return {k.removeprefix("module."): v.float().numpy() for k, v in state.items()}, activation


def read_weights(source: str) -> tuple[dict[str, np.ndarray], str | None]:
    """OpenAI-named weights of `source` and its activation when the source says which."""
    if os.path.isdir(source):
        from safetensors.numpy import load_file

        with open(os.path.join(source, "config.json")) as f:
            hidden_act = json.load(f)["text_config"].get("hidden_act", "quick_gelu")
        return hf_to_openai(load_file(os.path.join(source, "model.safetensors"))), hidden_act
    if not os.path.isfile(source):
        raise FileNotFoundError(f"--source {source} does not exist")
    return _torch_state_dict(source)


def import_weights(config, workdir: str, source: str, stretch: bool) -> None:
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=1, keep=config.keep_checkpoints)
    if checkpointer.latest_step() is not None:
        raise ValueError(f"{workdir}/checkpoints already holds checkpoints: import into a new workdir")
    setup = TrainSetup.build(config, make_mesh((1, 1, 1)))
    model_config = setup.model
    weights, activation = read_weights(source)
    if activation and activation != model_config.activation:
        raise ValueError(f"{source} uses {activation}: set --config.model.activation={activation}")
    positions = weights["positional_embedding"]
    if stretch and positions.shape[0] != model_config.context_length:
        if model_config.context_length < positions.shape[0]:
            raise ValueError(
                f"--stretch lengthens {source}'s {positions.shape[0]} text positions, but "
                f"--config.model.context_length is {model_config.context_length}: set it above "
                f"{positions.shape[0]} (Long-CLIP: 248), or import without --stretch at {positions.shape[0]}"
            )
        weights["positional_embedding"] = stretch_positions(positions, model_config.context_length)
    state = setup.init_state()
    model = nnx.merge(setup.graphdef, state["params"])
    load_openai_state_dict(model, weights)
    state["params"] = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    checkpointer.save(0, state, force=True)
    checkpointer.close()


def export_open_clip(model_config, model, out: str) -> None:
    from safetensors.numpy import save_file

    c = model_config
    model_cfg = {
        "embed_dim": c.embed_dim,
        "quick_gelu": c.activation == "quick_gelu",
        "vision_cfg": {
            "image_size": c.image_size,
            "layers": c.vision_layers,
            "width": c.vision_width,
            "head_width": c.vision_width // c.vision_heads,
            "patch_size": c.patch_size,
            "mlp_ratio": c.mlp_ratio,
        },
        "text_cfg": {
            "context_length": c.context_length,
            "vocab_size": c.vocab_size,
            "width": c.text_width,
            "heads": c.text_heads,
            "layers": c.text_layers,
            "mlp_ratio": c.mlp_ratio,
        },
    }
    if c.logit_bias_init is not None:
        model_cfg["init_logit_bias"] = c.logit_bias_init
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": model_cfg, "preprocess_cfg": {"mean": CLIP_MEAN, "std": CLIP_STD}}, f, indent=1)
    save_file(to_openai_state_dict(model), os.path.join(out, "open_clip_model.safetensors"))


def export_hf(model_config, model, out: str) -> None:
    import torch
    import transformers

    kwargs = hf_clip_config(model_config)
    hf_model = transformers.CLIPModel(
        transformers.CLIPConfig(
            text_config=transformers.CLIPTextConfig(**kwargs["text_config"]),
            vision_config=transformers.CLIPVisionConfig(**kwargs["vision_config"]),
            projection_dim=kwargs["projection_dim"],
        )
    )
    weights = {k: torch.from_numpy(v) for k, v in openai_to_hf(to_openai_state_dict(model)).items()}
    missing, unexpected = hf_model.load_state_dict(weights, strict=False)
    if unexpected or any(not name.endswith("position_ids") for name in missing):
        raise ValueError(f"HF CLIPModel does not take these weights: missing {missing}, unexpected {unexpected}")
    hf_model.save_pretrained(out)
