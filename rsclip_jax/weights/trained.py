"""A trained model in Python, as open_clip's `create_model_and_transforms` gives one: the CLIP of a workdir's
checkpoint, and the image preprocessing it was evaluated with."""

import json
import os
from collections.abc import Callable

import ml_collections
import numpy as np
from etils import epath
from flax import nnx
from PIL import Image

from rsclip_jax.accelerators.sharding import make_mesh
from rsclip_jax.data.preprocess import normalize_images, resize_center_crop
from rsclip_jax.model.clip import CLIP
from rsclip_jax.training.checkpoints import restore_params
from rsclip_jax.training.train_setup import TrainSetup


def workdir_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (DIR/config.json, which `rsclip_jax.train` writes)."""
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (workdirs made by `convert import` have none)")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def checkpoint_to_read(workdir: str, checkpoint: str | None) -> tuple[str, int | None]:
    """(checkpoints folder, step) of a step folder `checkpoint` (DIR/checkpoints/STEP), or without one the
    workdir's checkpoints and None: the latest. ValueError for a folder that is not a step folder."""
    if not checkpoint:
        return os.path.join(workdir, "checkpoints"), None
    path = epath.Path(checkpoint)
    if not path.name.isdigit() or not path.is_dir():
        raise ValueError(f"--checkpoint={checkpoint} is not a step folder such as DIR/checkpoints/1000")
    return str(path.parent), int(path.name)


def load_model(
    workdir: str, *, config: ml_collections.ConfigDict | None = None, step: int | None = None
) -> tuple[CLIP, Callable[[Image.Image], np.ndarray]]:
    """(CLIP with the parameters of checkpoint `step` of `workdir` (default: the latest), `preprocess`), on one
    device. `config` defaults to the workdir's own. `preprocess(image)` is open_clip's evaluation transform: a PIL
    image -> float32 [image_size, image_size, 3], resized, centre-cropped and CLIP-normalised."""
    config = workdir_config(workdir) if config is None else config
    setup = TrainSetup.build(config, make_mesh((1, 1, 1)))
    _, params = restore_params(os.path.join(workdir, "checkpoints"), setup, step)
    size = setup.model.image_size

    def preprocess(image: Image.Image) -> np.ndarray:
        return np.asarray(normalize_images(resize_center_crop(image.convert("RGB"), size)))

    return nnx.merge(setup.graphdef, params), preprocess
