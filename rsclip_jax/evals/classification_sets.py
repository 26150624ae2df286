"""Labelled images for zero-shot classification: TFDS data sources and folders of class folders.

- `tfds:NAME` reads a prepared TFDS dataset (imagenet2012, imagenet_v2, cifar10, cifar100, food101, ...)
  through `tfds.data_source`: ArrayRecord files read without TensorFlow. Prepare it once with
  `tfds build NAME --file_format=array_record` (or copy a prepared data_dir).
- `folder:PATH` reads PATH/<class>/<image files>, classes in sorted order. Class folders named by WordNet id
  (ImageNet-O, -A, -R as released, the ILSVRC validation set sorted into folders) are ImageNet classes:
  rsclip_jax.evals.zeroshot names them.
A set's labels are the dataset's own class names (TFDS label names, folder names); the prompts made from
them are rsclip_jax.evals.zeroshot's concern.
"""

import dataclasses
import os
from typing import Callable

import numpy as np
from PIL import Image

from rsclip_jax.data.preprocess import decoding, load_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


@dataclasses.dataclass(frozen=True)
class ClassificationSet:
    source: str  # as given, for messages
    name: str  # the TFDS name or the folder's name: what prompt sets are looked up by
    labels: list[str]  # the dataset's class names, label i at index i
    size: int
    read: Callable[[int], tuple[Image.Image, int]]  # index -> (image, label); thread-safe


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
        with decoding(f"tfds:{name} {split} example {index}"):
            example = source[index]  # TFDS decodes the image here (with PIL, or OpenCV where installed)
            image = Image.fromarray(np.asarray(example[image_key])).convert("RGB")
        return image, int(example[label_key])

    return builder.info.features[label_key].names, len(source), read


def _visible(entries):
    # Archives and file browsers leave hidden entries (.DS_Store, ._x.jpg, .ipynb_checkpoints) that are
    # neither classes nor images.
    return (entry for entry in entries if not entry.name.startswith("."))


def _folder_set(root: str):
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root} is not a folder: the layout is ROOT/<class>/<images>")
    classes = sorted(entry.name for entry in _visible(os.scandir(root)) if entry.is_dir())
    items = [
        (entry.path, label)
        for label, name in enumerate(classes)
        for entry in sorted(_visible(os.scandir(os.path.join(root, name))), key=lambda entry: entry.name)
        if entry.name.lower().endswith(IMAGE_SUFFIXES)
    ]
    if not items:
        raise ValueError(f"{root} holds no images in class folders (suffixes {IMAGE_SUFFIXES})")

    def read(index):
        path, label = items[index]
        return load_image(path), label

    return classes, len(items), read


def load_classification_set(
    source: str, *, split: str = "test", data_dir: str = "", image_key: str = "image", label_key: str = "label"
) -> ClassificationSet:
    """`source` is "tfds:NAME" or "folder:PATH"."""
    kind, _, name = source.partition(":")
    if kind == "tfds":
        labels, size, read = _tfds_set(name, split, data_dir, image_key, label_key)
    elif kind == "folder":
        labels, size, read = _folder_set(name)
        name = os.path.basename(os.path.normpath(name))
    else:
        raise ValueError(f"zero-shot source {source!r} must be 'tfds:NAME' or 'folder:PATH'")
    return ClassificationSet(source, name, list(labels), size, read)
