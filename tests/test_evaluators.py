"""Evaluators on 8 fake devices against the same numbers computed directly, one example at a time."""

import dataclasses
import importlib.resources
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from test_eval_sets import write_unreadable_image

from rsclip_jax.accelerators.sharding import make_mesh
from rsclip_jax.config import load_recipe
from rsclip_jax.data.preprocess import normalize_images, resize_center_crop
from rsclip_jax.data.records import read_shard
from rsclip_jax.data.tokenizer import tokenize
from rsclip_jax.evals.classification_sets import load_classification_set
from rsclip_jax.evals.evaluators import build_evaluators, flat_metrics, run_evaluators
from rsclip_jax.evals.retrieval import retrieval_recall
from rsclip_jax.evals.zeroshot import class_embeddings, prompt_templates, topk_accuracy
from rsclip_jax.training.train_setup import TrainSetup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_retrieval_folder(records, root) -> str:
    """The jsonl layout: one JPEG per record and its captions."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "captions.jsonl"), "w") as f:
        for i, record in enumerate(records):
            with open(os.path.join(root, f"{i}.jpg"), "wb") as image:
                image.write(record.image_jpeg)
            f.write(json.dumps({"image": f"{i}.jpg", "captions": [c.text for c in record.captions]}) + "\n")
    return root


@pytest.fixture(scope="module")
def tiny_model():
    config = load_recipe(os.path.join(REPO, "rsclip_jax", "demo", "configs", "demo.py"))
    mesh = make_mesh((8, 1, 1))
    setup = TrainSetup.build(config, mesh)
    params = setup.init_state()["params"]
    return config, setup.model, mesh, setup, params


def evaluate(tiny_model, evals: dict) -> dict:
    config, model_config, mesh, setup, params = tiny_model
    config = ml_collections.ConfigDict(config)
    config.evals = ml_collections.ConfigDict(evals)
    evaluators = build_evaluators(dataclasses.replace(setup, config=config))
    return run_evaluators(evaluators, params)


def direct_embeddings(tiny_model, images, texts):
    _, model_config, _, setup, params = tiny_model
    model = nnx.merge(setup.graphdef, jax.device_get(params))
    crops = np.stack([resize_center_crop(image, model_config.image_size) for image in images])
    return (
        np.asarray(model.encode_image(normalize_images(jnp.asarray(crops)))),
        np.asarray(model.encode_text(jnp.asarray(tokenize(texts, model_config.context_length)))),
    )


def test_retrieval_with_padding_matches_the_direct_computation(tiny_model, demo_shards, tmp_path):
    records = list(read_shard(demo_shards["heldout"][0]))[:13]  # 13 images: the second batch of 8 is padded
    root = write_retrieval_folder(records, str(tmp_path / "set"))
    results = evaluate(
        tiny_model, {"set": dict(kind="retrieval", dataset="jsonl", root=root, prefix="A photo of ", batch_size=8)}
    )["set"]

    texts = ["A photo of " + c.text for r in records for c in r.captions]
    text_image = np.array([i for i, r in enumerate(records) for _ in r.captions])
    images = [Image.open(os.path.join(root, f"{i}.jpg")).convert("RGB") for i in range(len(records))]
    expected = retrieval_recall(*direct_embeddings(tiny_model, images, texts), text_image)
    assert {k: results[k] for k in expected} == pytest.approx(expected)
    assert (results["images"], results["texts"], results["bad_images"]) == (13, 130, 0)


def without_seconds(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "seconds"}


def test_images_that_do_not_decode_are_left_out_of_both_metrics_and_counted(tiny_model, demo_shards, tmp_path):
    """A truncated JPEG, a decompression bomb and a text file in each set: the metrics are those of the set without
    them (retrieval drops their captions too), and bad_images counts them."""
    records = list(read_shard(demo_shards["heldout"][0]))[:7]
    root = write_retrieval_folder(records, str(tmp_path / "set"))
    bad = {1: "truncated", 3: "bomb", 4: "text"}
    for index, kind in bad.items():
        write_unreadable_image(os.path.join(root, f"{index}.jpg"), kind)
    nothing = write_retrieval_folder(records[:2], str(tmp_path / "nothing"))
    for index, kind in enumerate(["bomb", "text"]):
        write_unreadable_image(os.path.join(nothing, f"{index}.jpg"), kind)
    clean = write_class_folders(tmp_path / "clean", ["red_thing", "green_thing"])
    write_class_folders(tmp_path / "odd", ["red_thing", "green_thing"])
    for name, kind in zip(["red_thing/truncated.jpg", "green_thing/bomb.png", "green_thing/notes.jpg"], bad.values()):
        write_unreadable_image(str(tmp_path / "odd" / name), kind)
    results = evaluate(
        tiny_model,
        {
            "set": dict(kind="retrieval", dataset="jsonl", root=root, batch_size=8),
            "nothing": dict(kind="retrieval", dataset="jsonl", root=nothing, batch_size=8),
            "classes": dict(kind="zeroshot", source=f"folder:{tmp_path / 'odd'}", batch_size=8),
        },
    )

    kept = [r for i, r in enumerate(records) if i not in bad]
    images = [Image.open(os.path.join(root, f"{i}.jpg")).convert("RGB") for i in range(len(records)) if i not in bad]
    expected = retrieval_recall(
        *direct_embeddings(tiny_model, images, [c.text for r in kept for c in r.captions]),
        np.array([i for i, r in enumerate(kept) for _ in r.captions]),
    )
    assert {k: results["set"][k] for k in expected} == pytest.approx(expected)
    assert [results["set"][k] for k in ("images", "texts", "bad_images")] == [4, sum(len(r.captions) for r in kept), 3]
    assert without_seconds(results["nothing"]) == {"images": 0, "texts": 0, "bad_images": 2}

    expected, size = direct_accuracy(tiny_model, clean, ["green thing", "red thing"], prompt_templates("openai"))
    assert [results["classes"][k] for k in ("top1", "top5")] == pytest.approx([expected["top1"], expected["top5"]])
    assert [results["classes"][k] for k in ("images", "bad_images")] == [size, 3]


def write_class_folders(root, folders, count=11):
    for i in range(count):
        path = root / folders[i % len(folders)] / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (36, 48), (255 - 20 * i, 20 * i, 0)).save(path)
    return f"folder:{root}"


def direct_accuracy(tiny_model, source, names, templates, data_dir=""):
    dataset = load_classification_set(source, split="test", data_dir=data_dir)
    examples = [dataset.read(i) for i in range(dataset.size)]
    prompts = [t.format(name) for name in names for t in templates]
    image_emb, prompt_emb = direct_embeddings(tiny_model, [image for image, _ in examples], prompts)
    classes = class_embeddings(prompt_emb.reshape(len(names), len(templates), -1))
    return topk_accuracy(image_emb, classes, np.array([label for _, label in examples])), dataset.size


@pytest.mark.parametrize("source", ["tfds", "folder"])
def test_zeroshot_matches_the_direct_computation(tiny_model, tiny_tfds, tmp_path, source):
    if source == "tfds":
        settings, names = (
            dict(source="tfds:tiny_shapes", split="test", data_dir=tiny_tfds),
            ["red thing", "green thing"],
        )
    else:  # folders in sorted order
        settings = dict(source=write_class_folders(tmp_path, ["red_thing", "green_thing"]))
        names = ["green thing", "red thing"]
    results = evaluate(tiny_model, {"zs": dict(kind="zeroshot", batch_size=8, **settings)})["zs"]
    expected, size = direct_accuracy(
        tiny_model, settings["source"], names, prompt_templates("openai"), settings.get("data_dir", "")
    )
    assert (results["top1"], results["top5"]) == pytest.approx((expected["top1"], expected["top5"]))
    assert (results["images"], results["classes"]) == (size, 2)


def test_imagenet_o_and_clip_benchmark_prompts(tiny_model, tmp_path):
    """A folder of WordNet-id folders gets OpenAI's names; prompts="clip_benchmark" its CIFAR prompts."""
    cifar10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    benchmark = importlib.resources.files(pytest.importorskip("clip_benchmark.datasets"))
    shipped = benchmark.joinpath("en_zeroshot_classification_templates.json")
    cifar_templates = [t.replace("{c}", "{}") for t in json.loads(shipped.read_text())["cifar10"]]
    sets = {
        "imagenet_o": (
            write_class_folders(tmp_path / "imagenet-o", ["n01443537", "n04597913"]),
            "openai",
            ["goldfish", "wooden spoon"],
            prompt_templates("openai"),
        ),
        "cifar10": (write_class_folders(tmp_path / "cifar10", cifar10), "clip_benchmark", cifar10, cifar_templates),
    }
    results = evaluate(
        tiny_model,
        {
            name: dict(kind="zeroshot", batch_size=8, source=source, prompts=prompts)
            for name, (source, prompts, _, _) in sets.items()
        },
    )
    for name, (source, _, names, templates) in sets.items():
        expected, size = direct_accuracy(tiny_model, source, names, templates)
        assert (results[name]["top1"], results[name]["top5"]) == pytest.approx((expected["top1"], expected["top5"]))
        assert (results[name]["images"], results[name]["classes"]) == (size, len(names))


def test_flat_metrics_names_and_bad_settings(tiny_model, tmp_path):
    assert flat_metrics({"coco": {"i2t_r1": 5.0}}) == {"eval/coco/i2t_r1": 5.0}
    (tmp_path / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "0.png")
    with pytest.raises(ValueError, match="config.evals.pets: unknown prompts 'laion'"):
        evaluate(tiny_model, {"pets": dict(kind="zeroshot", source=f"folder:{tmp_path}", prompts="laion")})
    with pytest.raises(ValueError, match="config.evals.coco.prefx is not a retrieval setting"):
        evaluate(tiny_model, {"coco": dict(kind="retrieval", dataset="coco", root="/nowhere", prefx="A photo of ")})
    with pytest.raises(ValueError, match="config.evals.x.kind must be"):
        evaluate(tiny_model, {"x": dict(kind="linear_probe")})


def test_progress_bars_end_their_line(tiny_model, capfd):
    """So that a line printed after them (the demo's JSON) starts a line of its own in a file both streams go to."""
    from rsclip_jax.evals.embedding import Embedder

    _, model_config, mesh, setup, params = tiny_model
    embedder = Embedder(
        setup.graphdef, setup.shardings["params"], mesh, batch_size=8, image_size=model_config.image_size
    )
    embedder.images(params, 3, lambda i: (Image.new("RGB", (50, 40)), 0), "set")
    embedder.texts(params, tokenize(["a caption"], model_config.context_length), "set")
    err = capfd.readouterr().err
    assert "set images: 100%" in err and "set texts: 100%" in err
    assert err.endswith("\n"), repr(err[-200:])


def test_each_encoder_compiles_once_for_a_padded_set(tiny_model):
    from rsclip_jax.evals.embedding import Embedder

    _, model_config, mesh, setup, params = tiny_model
    embedder = Embedder(
        setup.graphdef, setup.shardings["params"], mesh, batch_size=8, image_size=model_config.image_size
    )
    tokens = tokenize([f"caption {i}" for i in range(21)], model_config.context_length)
    assert embedder.texts(params, tokens, "set").shape == (21, model_config.embed_dim)
    image = Image.new("RGB", (50, 40))
    embeddings, labels, valid = embedder.images(params, 19, lambda i: (image, i), "set")
    assert embeddings.shape == (19, model_config.embed_dim) and labels.tolist() == list(range(19)) and valid.all()
    assert embedder._encode_texts._cache_size() == 1 and embedder._encode_images._cache_size() == 1
