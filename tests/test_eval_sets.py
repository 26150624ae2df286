"""Retrieval and classification sets read from their usual layouts, built here in miniature."""

import ast
import importlib.resources
import importlib.util
import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from rsclip_jax.data.preprocess import UnreadableImageError, decode_image, load_image
from rsclip_jax.evals.classification_sets import load_classification_set
from rsclip_jax.evals.retrieval_sets import load_retrieval_set
from rsclip_jax.evals.zeroshot import class_prompts, imagenet_names, prompt_templates


def write_image(path, value=0, size=(40, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, 0)).save(path)


def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# Files an evaluation set can hold that PIL cannot decode, each with the error PIL raises for it.
UNREADABLE = {
    "truncated": OSError,  # the first half of a real JPEG
    # A valid PNG header claiming 20000 x 20000 pixels: over 2x Image.MAX_IMAGE_PIXELS, refused before decoding.
    "bomb": Image.DecompressionBombError,
    "text": UnidentifiedImageError,  # text under an image's name
}


def write_unreadable_image(path, kind: str):
    """Writes the odd file of `kind` (a key of UNREADABLE) at `path`, whatever its suffix."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if kind == "truncated":
        jpeg = io.BytesIO()
        Image.new("RGB", (64, 48), (200, 10, 10)).save(jpeg, "JPEG")
        data = jpeg.getvalue()[: len(jpeg.getvalue()) // 2]
    elif kind == "bomb":
        header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)  # 8-bit RGB
        data = (
            b"\x89PNG\r\n\x1a\n"
            + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 10))
            + png_chunk(b"IEND", b"")
        )
    else:
        data = b"alt text for an image, saved under the image's name\n"
    with open(path, "wb") as f:
        f.write(data)


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
    images = [
        {"filename": f"{i}.jpg", "split": split, "sentences": [{"raw": f"c{i}"}]}
        for i, split in enumerate(["train", "test", "val", "test"])
    ]
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
    entries = [
        {"image": f"coco/{i}.jpg", "conversations": [{"value": "q"}, {"value": f"answer {i}"}]} for i in range(3)
    ]
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
    assert dataset.labels == ["golden_retriever", "tabby_cat"] and dataset.size == 4
    assert class_prompts(dataset)[0] == ["golden retriever", "tabby cat"]
    image, label = dataset.read(3)
    assert label == 1 and image.size == (40, 30) and image.mode == "RGB"
    names = tmp_path / "names.json"
    names.write_text(json.dumps(["dog"]))
    with pytest.raises(ValueError, match="list 1 classes but folder:.* has 2"):
        class_prompts(dataset, classnames=str(names))


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
def test_an_image_that_does_not_decode_raises_one_error_naming_it(tmp_path, kind):
    path = str(tmp_path / f"{kind}.jpg")
    write_unreadable_image(path, kind)
    with pytest.raises(UnreadableImageError, match=f"{path} does not decode") as raised:
        load_image(path)
    assert isinstance(raised.value.__cause__, UNREADABLE[kind])
    with open(path, "rb") as f, pytest.raises(UnreadableImageError, match="image bytes does not decode"):
        decode_image(f.read())


def test_imagenet_o_folder_of_wordnet_ids(tmp_path):
    """The released imagenet-o layout: WordNet-id folders of JPEGs and a README.txt beside them."""
    root = tmp_path / "imagenet-o"
    for wordnet_id in ("n13052670", "n01443537", "n04597913"):
        for i in range(2):
            write_image(str(root / wordnet_id / f"{wordnet_id}_{i}.JPEG"))
    (root / "README.txt").write_text("ImageNet-O: 2000 images of 200 classes")
    (root / "n01443537" / "Thumbs.db").write_bytes(b"\0")  # not an image
    (root / "n01443537" / "._n01443537_0.JPEG").write_bytes(b"\0")  # macOS AppleDouble, hidden
    dataset = load_classification_set(f"folder:{root}")
    assert (dataset.name, dataset.size) == ("imagenet-o", 6)
    assert dataset.labels == ["n01443537", "n04597913", "n13052670"]  # sorted WordNet ids: ImageNet's class order
    assert [dataset.read(i)[1] for i in range(6)] == [0, 0, 1, 1, 2, 2]
    classnames, templates = class_prompts(dataset)
    assert classnames == ["goldfish", "wooden spoon", "hen of the woods mushroom"] and len(templates) == 80
    assert class_prompts(dataset, "clip_benchmark") == (classnames, templates)  # clip_benchmark uses OpenAI's here

    # Role-SynthCLIP's data/imagenet_o/classes.txt format: names looked up by WordNet id
    (tmp_path / "classes.txt").write_text("n01443537 goldfish\nn04597913 wooden spoon\n\nn13052670 hen-of-the-woods\n")
    names = class_prompts(dataset, classnames=str(tmp_path / "classes.txt"))[0]
    assert names == ["goldfish", "wooden spoon", "hen-of-the-woods"]
    (tmp_path / "classes.txt").write_text("n01443537 goldfish\n")
    with pytest.raises(ValueError, match="class 'n04597913' and 1 more are not in .*classes.txt"):
        class_prompts(dataset, classnames=str(tmp_path / "classes.txt"))

    write_image(str(root / "n99999999" / "x.jpg"))
    with pytest.raises(ValueError, match=f"folder:{root}: class 'n99999999' .* not in ImageNet-1k's 1000 WordNet ids"):
        class_prompts(load_classification_set(f"folder:{root}"))


def test_imagenet_names_by_wordnet_id_match_tfds_and_clip_benchmark():
    names = imagenet_names()
    assert list(names.items())[:2] == [("n01440764", "tench"), ("n01443537", "goldfish")]  # classes 0 and 1
    assert (names["n02123045"], names["n04597913"], list(names)[-1]) == ("tabby cat", "wooden spoon", "n15075141")
    tfds_root = importlib.util.find_spec("tensorflow_datasets").submodule_search_locations[0]
    with open(os.path.join(tfds_root, "datasets", "imagenet2012", "labels.txt")) as f:
        assert list(names) == f.read().split()

    # clip_benchmark's ImageNet-O: its 1000 names masked to the 200 ids, in ImageNet order
    benchmark = importlib.resources.files(pytest.importorskip("clip_benchmark.datasets"))
    builder = ast.parse(benchmark.joinpath("builder.py").read_text())  # importing it would import torch
    lists = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in ast.walk(builder)
        if isinstance(node, ast.Assign)
        and getattr(node.targets[0], "id", "") in ("all_imagenet_wordnet_ids", "imagenet_o_wnids")
    }
    assert list(names) == lists["all_imagenet_wordnet_ids"]
    benchmark_names = json.loads(benchmark.joinpath("en_classnames.json").read_text())["imagenet1k"]
    imagenet_o = [
        name
        for wordnet_id, name in zip(lists["all_imagenet_wordnet_ids"], benchmark_names)
        if wordnet_id in set(lists["imagenet_o_wnids"])
    ]
    assert [names[wordnet_id] for wordnet_id in sorted(lists["imagenet_o_wnids"])] == imagenet_o


def test_cifar100_prompt_sets(tmp_path):
    asset = importlib.resources.files("rsclip_jax").joinpath("assets/clip_benchmark_prompts.json")
    asset = json.loads(asset.read_text())
    cifar_names, cifar_templates = asset["classnames"]["cifar100"], asset["templates"]["cifar100"]
    assert (cifar_names[1], cifar_names[39], cifar_names[99]) == ("aquarium_fish", "keyboard", "worm")
    assert len(cifar_names) == 100 and cifar_names == sorted(set(cifar_names))  # CIFAR-100 numbers them alphabetically
    benchmark = importlib.resources.files(pytest.importorskip("clip_benchmark.datasets"))
    shipped = json.loads(benchmark.joinpath("en_zeroshot_classification_templates.json").read_text())
    assert cifar_templates == [t.replace("{c}", "{}") for t in shipped["cifar100"]] and len(cifar_templates) == 18

    root = tmp_path / "cifar100"  # a CIFAR-100 folder; TFDS's cifar100 has the same labels and name
    for name in cifar_names:
        write_image(str(root / name / "0.png"), size=(32, 32))
    dataset = load_classification_set(f"folder:{root}")
    assert class_prompts(dataset, "clip_benchmark") == (cifar_names, cifar_templates)  # verbatim, underscores kept
    openai_names, openai_templates = class_prompts(dataset)
    assert (openai_names[1], len(openai_templates)) == ("aquarium fish", 80)
    assert class_prompts(dataset, "clip_benchmark", templates="openai") == (cifar_names, openai_templates)
    os.rename(root, tmp_path / "test")
    renamed = load_classification_set(f"folder:{tmp_path / 'test'}")
    with pytest.raises(ValueError, match=r"clip_benchmark prompts ship for \['cifar10', 'cifar100'\] .*not 'test'"):
        class_prompts(renamed, "clip_benchmark")
    assert class_prompts(renamed, "clip_benchmark:cifar100") == (cifar_names, cifar_templates)
    with pytest.raises(ValueError, match="clip_benchmark's cifar10 has 10 classes but folder:.* has 100"):
        class_prompts(renamed, "clip_benchmark:cifar10")
    with pytest.raises(ValueError, match="unknown prompts 'laion'"):
        class_prompts(renamed, "laion")


def test_templates_ship_with_the_package():
    assert len(prompt_templates("openai")) == 80
    assert prompt_templates("openai")[0] == "a bad photo of a {}."
    with pytest.raises(ValueError, match="one '{}'"):
        prompt_templates(["no slot"])


def test_tfds_array_record_data_source_without_tensorflow(tiny_tfds):
    dataset = load_classification_set("tfds:tiny_shapes", split="test", data_dir=tiny_tfds)
    assert dataset.labels == ["red_thing", "green_thing"] and dataset.size == 6 and dataset.name == "tiny_shapes"
    assert class_prompts(dataset)[0] == ["red thing", "green thing"]
    for index in range(dataset.size):  # TFDS stores examples in its own shuffled order
        image, label = dataset.read(index)
        pixels = np.asarray(image)
        assert pixels.shape == (30, 40, 3) and pixels.mean(axis=(0, 1)).argmax() == label  # red 0, green 1
    with pytest.raises(FileNotFoundError, match="tfds build tiny_shapes"):
        load_classification_set("tfds:tiny_shapes", split="test", data_dir=str(tiny_tfds) + "-missing")
