"""Labelled images for zero-shot classification: TFDS data sources and folders of class folders.

- `tfds:NAME` reads a prepared TFDS dataset (imagenet2012, imagenet_v2, cifar10, cifar100, food101, ...)
  through `tfds.data_source`: ArrayRecord files read without TensorFlow. Prepare it once with
  `tfds build NAME --file_format=array_record` (or copy a prepared data_dir).
- `folder:PATH` reads PATH/<class name>/<image files>, classes in sorted order.
Class names come from the prompt asset (`imagenet`: OpenAI's names), a JSON list file, or the dataset
itself (TFDS label names or folder names, underscores read as spaces).
"""

import dataclasses
import functools
import importlib.resources
import json
import os
from typing import Callable

import numpy as np
from PIL import Image

from rsclip_jax.preprocess import load_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# OpenAI's hand-cleaned ImageNet names read better as prompts than WordNet's first lemma.
DEFAULT_CLASSNAMES = {"imagenet2012": "imagenet", "imagenet_v2": "imagenet", "imagenet2012_real": "imagenet"}


@dataclasses.dataclass(frozen=True)
class ClassificationSet:
    classnames: list[str]
    size: int
    read: Callable[[int], tuple[Image.Image, int]]  # index -> (image, label); thread-safe


@functools.cache
def prompt_asset() -> dict:
    return json.loads(importlib.resources.files("rsclip_jax").joinpath("assets/zeroshot_prompts.json").read_text())


def prompt_templates(templates) -> list[str]:
    """A named template list of the asset ("openai": the 80 OpenAI templates) or the templates given."""
    if isinstance(templates, str):
        named = prompt_asset()["templates"]
        if templates not in named:
            raise ValueError(f"unknown prompt templates {templates!r}: one of {sorted(named)}, or a list of strings with '{{}}'")
        return named[templates]
    templates = list(templates)
    if not templates or any(t.count("{}") != 1 for t in templates):
        raise ValueError(f"prompt templates must each hold one '{{}}' for the class name: {templates}")
    return templates


def _tfds_set(name: str, split: str, data_dir: str, image_key: str, label_key: str):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
        source = builder.as_data_source(split=split)
    except Exception as e:  # TFDS raises several types for a dataset that is not prepared
        raise FileNotFoundError(
            f"TFDS dataset {name!r} split {split!r} could not be read from data_dir {data_dir or '(TFDS default)'}: "
            f"prepare it with `tfds build {name} --file_format=array_record`. TFDS said: {e}"
        ) from None

    def read(index):
        example = source[index]
        return Image.fromarray(np.asarray(example[image_key])).convert("RGB"), int(example[label_key])

    return builder.info.features[label_key].names, len(source), read


def _folder_set(root: str):
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root} is not a folder: the layout is ROOT/<class name>/<images>")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    items = [
        (os.path.join(root, name, file), label)
        for label, name in enumerate(classes)
        for file in sorted(os.listdir(os.path.join(root, name))) if file.lower().endswith(IMAGE_SUFFIXES)
    ]
    if not items:
        raise ValueError(f"{root} holds no images in class folders (suffixes {IMAGE_SUFFIXES})")

    def read(index):
        path, label = items[index]
        return load_image(path), label

    return classes, len(items), read


def _classnames(choice: str, dataset_names: list[str], dataset: str) -> list[str]:
    if not choice:
        return [name.replace("_", " ") for name in dataset_names]
    if choice.endswith(".json"):
        with open(choice) as f:
            names = json.load(f)
    else:
        known = prompt_asset()["classnames"]
        if choice not in known:
            raise ValueError(f"unknown class names {choice!r}: one of {sorted(known)}, a .json list, or '' for the dataset's own")
        names = known[choice]
    if len(names) != len(dataset_names):
        raise ValueError(f"class names {choice!r} list {len(names)} classes but {dataset} has {len(dataset_names)}")
    return names


def load_classification_set(source: str, *, split: str = "test", data_dir: str = "", classnames: str | None = None,
                            image_key: str = "image", label_key: str = "label") -> ClassificationSet:
    """`source` is "tfds:NAME" or "folder:PATH"; `classnames` None picks the default for the dataset."""
    kind, _, name = source.partition(":")
    if kind == "tfds":
        dataset_names, size, read = _tfds_set(name, split, data_dir, image_key, label_key)
    elif kind == "folder":
        dataset_names, size, read = _folder_set(name)
    else:
        raise ValueError(f"zero-shot source {source!r} must be 'tfds:NAME' or 'folder:PATH'")
    choice = DEFAULT_CLASSNAMES.get(name, "") if classnames is None else classnames
    return ClassificationSet(_classnames(choice, dataset_names, source), size, read)
