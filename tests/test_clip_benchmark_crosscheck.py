"""Our retrieval evaluator against a peer: clip_benchmark's retrieval code on the same model, exported to
open_clip, and the same images and captions."""

import io
import json
import os

import pytest
from PIL import Image
from recipes import run_command, write_recipe

from rsclip_jax.data.records import read_shard

open_clip = pytest.importorskip("open_clip")  # the torch extra
torch = pytest.importorskip("torch")
zeroshot_retrieval = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")

IMAGE_SIZE = 32  # the demo model's: images already at size, so both sides' resize and crop are exact no-ops


def write_set(records, root):
    """The jsonl layout with PNG images at the model's size."""
    os.makedirs(root)
    entries = []
    for i, record in enumerate(records):
        image = Image.open(io.BytesIO(record.image_jpeg)).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
        image.save(os.path.join(root, f"{i}.png"))
        entries.append({"image": f"{i}.png", "captions": [c.text for c in record.captions]})
    with open(os.path.join(root, "captions.jsonl"), "w") as f:
        f.writelines(json.dumps(entry) + "\n" for entry in entries)
    return entries


@pytest.mark.slow
def test_recalls_equal_clip_benchmark_on_the_exported_model(tmp_path, demo_shards):
    records = [r for path in demo_shards["heldout"] for r in read_shard(path)]
    root = str(tmp_path / "heldout")
    entries = write_set(records, root)
    recipe = write_recipe(
        tmp_path / "recipe.py",
        train_shards=demo_shards["train"],
        total_steps=30,
        batch_size=16,
        log_every_steps=10,
        checkpoint_every_steps=30,
        evals={"heldout": dict(kind="retrieval", dataset="jsonl", root=root, batch_size=8)},
    )
    workdir, exported = str(tmp_path / "run"), str(tmp_path / "open_clip")
    run_command("rsclip_jax.train", f"--config={recipe}", f"--workdir={workdir}")
    run_command(
        "rsclip_jax.convert",
        "export",
        f"--config={recipe}",
        f"--workdir={workdir}",
        "--to=open_clip",
        f"--out={exported}",
    )
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        ours = {k.split("/")[-1]: v for line in f for k, v in json.loads(line).items() if k.startswith("eval/heldout/")}

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{exported}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{exported}")
    samples = [(preprocess(Image.open(os.path.join(root, e["image"]))), e["captions"]) for e in entries]
    loader = torch.utils.data.DataLoader(
        samples, batch_size=8, collate_fn=lambda batch: (torch.stack([x for x, _ in batch]), [y for _, y in batch])
    )
    theirs = zeroshot_retrieval.evaluate(model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])

    assert ours["images"] == len(entries) == 16 and ours["texts"] == 160
    assert 0 < ours["i2t_r1"] < 100 and 0 < ours["t2i_r1"] < 100  # a model in between: ranks decide the numbers
    for k in (1, 5, 10):
        # clip_benchmark's "text retrieval" is image -> text; its "image retrieval" is text -> image.
        assert ours[f"i2t_r{k}"] == pytest.approx(100 * theirs[f"text_retrieval_recall@{k}"], abs=1e-4)
        assert ours[f"t2i_r{k}"] == pytest.approx(100 * theirs[f"image_retrieval_recall@{k}"], abs=1e-4)
