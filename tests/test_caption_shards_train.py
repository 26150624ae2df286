"""Caption shards written by a real captioning run (in its own environment) feed the trainer's loader."""

import os
import subprocess

import numpy as np
import pytest

from rsclip_jax import tokenize
from rsclip_jax.data.example_spec import ExampleSpec
from rsclip_jax.data.pipeline import train_dataset
from rsclip_jax.data.shards import resolve_shards

CAPTIONING_PYTHON = os.environ.get("CAPTIONING_PYTHON")
TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(not CAPTIONING_PYTHON, reason="needs the captioning environment; `make test` provides it")
def test_trainer_reads_what_captioning_writes(tmp_path):
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from tiny_qwen2vl import build_tiny_qwen2vl; from conftest import make_images;"
        "from captioning.cli import main;"
        "model = build_tiny_qwen2vl(sys.argv[2]); images = make_images(sys.argv[3], 6);"
        "open(images + '/img001.txt', 'w').write('A web caption\\n');"
        "main(['run', '--images', images, '--out', sys.argv[4], '--model', model, '--engine', 'transformers',"
        " '--max-tokens', '8', '--images-per-shard', '4'])"
    )
    subprocess.run(
        [
            CAPTIONING_PYTHON,
            "-c",
            script,
            os.path.join(TESTS, "captioning"),
            str(tmp_path / "model"),
            str(tmp_path / "images"),
            str(tmp_path / "shards"),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    paths, _ = resolve_shards(str(tmp_path / "shards" / "*.array_record"), "config.data.train_shards")
    spec = ExampleSpec(image_size=32, context_length=16, slot_kinds=("long", "short"))
    dataset, skipped = train_dataset(paths, spec, batch_size=6, seed=0)
    batch = next(iter(dataset))
    assert batch["image"].shape == (6, 32, 32, 3) and batch["tokens"].shape == (6, 2, 16)
    assert sorted(batch["image_id"].tolist()) == list(range(6)) and not skipped.counts
    assert (batch["tokens"][:, :, 0] == 49406).all() and np.any(batch["image"] > 0)
    spec = ExampleSpec(image_size=32, context_length=16, slot_kinds=("alt", "short"))
    alt_batch = next(iter(train_dataset(paths, spec, batch_size=1, seed=0)[0]))  # img001.jpg, the one with a sidecar
    np.testing.assert_array_equal(alt_batch["tokens"][0, 0], tokenize("A web caption", 16)[0])
