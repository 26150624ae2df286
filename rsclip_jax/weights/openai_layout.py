"""OpenAI CLIP / open_clip state dicts (PyTorch names and layouts) loaded into our CLIP."""

import re

import jax.numpy as jnp
import numpy as np
from flax import nnx


def _same(w, shape=None):
    return w


def _linear(w, shape):  # torch Linear weight is (out, in); a Flax kernel is (in, out)
    return w.T.reshape(shape)


# (our dotted parameter path, its torch name, torch array -> our layout, our array -> torch layout);
# the first match wins.
_RULES = [
    # (3D, D) <-> (D, 3, H, Dh): the input dimension comes first in ours
    (r"(.*)\.attn\.in_proj\.kernel", r"\1.attn.in_proj_weight", _linear, lambda w: w.reshape(w.shape[0], -1).T),
    (r"(.*)\.attn\.in_proj\.bias", r"\1.attn.in_proj_bias", lambda w, shape: w.reshape(shape), lambda w: w.reshape(-1)),
    # OIHW <-> HWIO
    (
        r"(.*)\.conv1\.kernel",
        r"\1.conv1.weight",
        lambda w, shape: w.transpose(2, 3, 1, 0),
        lambda w: w.transpose(3, 2, 0, 1),
    ),
    # Linear, including out_proj's (H, Dh, D): the output dimension comes last in ours
    (r"(.*)\.kernel", r"\1.weight", _linear, lambda w: w.reshape(-1, w.shape[-1]).T),
    (r"(.*)\.scale", r"\1.weight", _same, _same),  # LayerNorm
    (r"token_embedding\.embedding", "token_embedding.weight", _same, _same),
    # Raw parameters keep their name and layout; `proj` and `text_projection` are used as x @ W in both.
    (r"(.*)", r"\1", _same, _same),
]
# Buffers and metadata that OpenAI's released checkpoints carry besides the parameters.
_IGNORED_KEYS = {"input_resolution", "context_length", "vocab_size", "attn_mask", "visual.attn_mask"}


def torch_name(path: str) -> tuple[str, object, object]:
    """The torch state-dict name of our parameter `path`, and the functions converting its layout
    (torch -> ours, ours -> torch)."""
    for pattern, replacement, to_ours, to_torch in _RULES:
        if re.fullmatch(pattern, path):
            return re.sub(pattern, replacement, path), to_ours, to_torch
    raise AssertionError("the last rule matches every path")


def tower_parameters(params: nnx.State):
    """(path, variable) of the CLIP towers' parameters in `params`: all but CLIPS' caption generator's, which
    OpenAI's, open_clip's and HF's CLIP have no place for."""
    return [(path, variable) for path, variable in nnx.to_flat_state(params) if path[0] != "generator"]


def to_openai_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
    """The towers' parameters under OpenAI CLIP / open_clip names and layouts, as float32 NumPy arrays."""
    state = {}
    for path, variable in tower_parameters(nnx.state(model, nnx.Param)):
        name, _, to_torch = torch_name(".".join(map(str, path)))
        # A writable C-ordered copy: safetensors writes the raw buffer, so a transposed view would scramble.
        state[name] = np.array(to_torch(np.asarray(variable[...], np.float32)), dtype=np.float32, order="C")
    return state


def load_openai_state_dict(model: nnx.Module, state_dict: dict[str, np.ndarray]) -> None:
    """Copies an OpenAI CLIP / open_clip state dict (arrays as NumPy) into `model`, in place.

    Every parameter of the towers must be present with a matching shape; extra keys are an error, so a
    checkpoint of another architecture is never half-loaded. A caption generator keeps its parameters.
    """
    params = nnx.state(model, nnx.Param)
    unused = set(state_dict) - _IGNORED_KEYS
    problems = []
    for path, variable in tower_parameters(params):
        dotted = ".".join(map(str, path))
        name, convert, _ = torch_name(dotted)
        if name not in state_dict:
            problems.append(f"missing {name} (for {dotted})")
            continue
        unused.discard(name)
        value = convert(np.asarray(state_dict[name], dtype=np.float32), variable.shape)
        if value.shape != variable.shape:
            problems.append(
                f"{name} has shape {np.shape(state_dict[name])}, the model needs {variable.shape} for {dotted}"
            )
            continue
        variable[...] = jnp.asarray(value, variable.dtype)
    problems += [f"unexpected {name}" for name in sorted(unused)]
    if problems:
        raise ValueError(
            "state dict does not fit the model config (check the variant, context_length and logit_bias_init):\n  "
            + "\n  ".join(problems)
        )
    nnx.update(model, params)
