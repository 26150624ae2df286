"""Retrieval and classification sets read from their usual layouts, built here in miniature."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from rsclip_jax.classification_sets import load_classification_set, prompt_templates
from rsclip_jax.retrieval_sets import load_retrieval_set


def write_image(path, value=0, size=(40, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, 0)).save(path)


def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)


def test_coco_val2017_takes_the_first_five_captions_in_image_id_order(tmp_path):
    root = str(tmp_path)
    images = [{"id": 9, "file_name": "b.jpg"}, {"id": 3, "file_name": "a.jpg"}]
    annotations = [{"image_id": 3, "caption": f" a{i} "} for i in range(7)] + [{"image_id": 9, "caption": "b0"}]
    write_json(f"{root}/annotations/captions_val2017.json", {"images": images, "annotations": annotations})
    for name in ("a", "b"):
        write_image(f"{root}/val2017/{name}.jpg")
    dataset = load_retrieval_set("coco", root)
    assert dataset.image_paths == [f"{root}/val2017/a.jpg", f"{root}/val2017/b.jpg"]
    assert dataset.captions == [["a0", "a1", "a2", "a3", "a4"], ["b0"]]


def test_karpathy_flickr30k_keeps_the_test_split(tmp_path):
    root = str(tmp_path)
    images = [{"filename": f"{i}.jpg", "split": split, "sentences": [{"raw": f"c{i}"}]}
              for i, split in enumerate(["train", "test", "val", "test"])]
    write_json(f"{root}/dataset_flickr30k.json", {"images": images})
    for i in range(4):
        write_image(f"{root}/flickr30k-images/{i}.jpg")
    dataset = load_retrieval_set("flickr30k", root)
    assert dataset.image_paths == [f"{root}/flickr30k-images/1.jpg", f"{root}/flickr30k-images/3.jpg"]
    assert dataset.captions == [["c1"], ["c3"]]


def test_urban1k_pairs_files_by_number(tmp_path):
    root = str(tmp_path)
    for i in (1, 2, 10):
        write_image(f"{root}/image/{i}.jpg")
        (tmp_path / "caption").mkdir(exist_ok=True)
        (tmp_path / "caption" / f"{i}.txt").write_text(f"long caption {i}\n")
    dataset = load_retrieval_set("urban1k", root, limit=2)
    assert dataset.image_paths == [f"{root}/image/1.jpg", f"{root}/image/2.jpg"]
    assert dataset.captions == [["long caption 1"], ["long caption 2"]]


def test_sharegpt4v_and_dci_layouts(tmp_path):
    root = str(tmp_path)
    entries = [{"image": f"coco/{i}.jpg", "conversations": [{"value": "q"}, {"value": f"answer {i}"}]} for i in range(3)]
    write_json(f"{root}/share-captioner_coco_lcs_sam_1246k_1107.json", entries)
    for i in range(3):
        write_image(f"{root}/coco/{i}.jpg")
    assert load_retrieval_set("sharegpt4v", root).captions == [["answer 0"], ["answer 1"], ["answer 2"]]

    base = f"{root}/densely_captioned_images"
    write_json(f"{base}/splits.json", {"train": ["x.json"], "test": ["y.json"]})
    for name in ("x", "y"):
        write_json(f"{base}/annotations/{name}.json", {"image": f"{name}.jpg", "extra_caption": f"dense {name}"})
        write_image(f"{base}/photos/{name}.jpg")
    dataset = load_retrieval_set("dci", root)
    assert dataset.image_paths == [f"{base}/photos/x.jpg", f"{base}/photos/y.jpg"]
    assert dataset.captions == [["dense x"], ["dense y"]]


def test_missing_files_are_named(tmp_path):
    root = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="captions_val2017.json"):
        load_retrieval_set("coco", root)
    (tmp_path / "captions.jsonl").write_text(json.dumps({"image": "gone.jpg", "captions": ["x"]}) + "\n")
    with pytest.raises(FileNotFoundError, match="1 images of the jsonl set are missing, the first .*gone.jpg"):
        load_retrieval_set("jsonl", root)
    with pytest.raises(ValueError, match="unknown retrieval dataset"):
        load_retrieval_set("cocoa", root)


def test_image_folder_classes_and_names(tmp_path):
    for label, name in enumerate(["golden_retriever", "tabby_cat"]):
        for i in range(2):
            write_image(str(tmp_path / name / f"{i}.png"), value=100 * label)
    (tmp_path / "tabby_cat" / "notes.txt").write_text("not an image")
    dataset = load_classification_set(f"folder:{tmp_path}")
    assert dataset.classnames == ["golden retriever", "tabby cat"] and dataset.size == 4
    image, label = dataset.read(3)
    assert label == 1 and image.size == (40, 30) and image.mode == "RGB"
    names = tmp_path / "names.json"
    names.write_text(json.dumps(["dog"]))
    with pytest.raises(ValueError, match="list 1 classes but folder:.* has 2"):
        load_classification_set(f"folder:{tmp_path}", classnames=str(names))


def test_templates_and_imagenet_names_ship_with_the_package():
    assert len(prompt_templates("openai")) == 80
    assert prompt_templates("openai")[0] == "a bad photo of a {}."
    with pytest.raises(ValueError, match="one '{}'"):
        prompt_templates(["no slot"])


def test_tfds_array_record_data_source_without_tensorflow(tiny_tfds):
    dataset = load_classification_set("tfds:tiny_shapes", split="test", data_dir=tiny_tfds)
    assert dataset.classnames == ["red thing", "green thing"] and dataset.size == 6
    for index in range(dataset.size):  # TFDS stores examples in its own shuffled order
        image, label = dataset.read(index)
        pixels = np.asarray(image)
        assert pixels.shape == (30, 40, 3) and pixels.mean(axis=(0, 1)).argmax() == label  # red 0, green 1
    with pytest.raises(FileNotFoundError, match="tfds build tiny_shapes"):
        load_classification_set("tfds:tiny_shapes", split="test", data_dir=str(tiny_tfds) + "-missing")
