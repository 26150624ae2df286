"""`python -m rsclip_jax.embed`: caption shards -> the same records with a frozen image tower's embeddings, run as
users run it, on a workdir like `convert import` leaves (a step-0 checkpoint, no config.json)."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx
from recipes import REPO, run_command, write_recipe

from rsclip_jax.accelerators.sharding import make_mesh
from rsclip_jax.config import load_recipe
from rsclip_jax.data.preprocess import EncodedImage, crop_like_open_clip, normalize_images
from rsclip_jax.data.records import encode_record, read_shard
from rsclip_jax.training.checkpoints import Checkpointer
from rsclip_jax.training.train_setup import TrainSetup


@pytest.fixture(scope="module")
def imported(tmp_path_factory, demo_shards):
    """(recipe, workdir, the model): random weights saved as step 0, as `convert import` saves OpenAI's."""
    tmp = tmp_path_factory.mktemp("embed")
    recipe = write_recipe(tmp / "recipe.py", train_shards=demo_shards["train"], evals={})
    setup = TrainSetup.build(load_recipe(recipe), make_mesh((1, 1, 1)))
    state = setup.init_state()
    checkpointer = Checkpointer(str(tmp / "run" / "checkpoints"), every_steps=1, keep=1)
    checkpointer.save(0, state, force=True)
    checkpointer.close()
    return recipe, str(tmp / "run"), nnx.merge(setup.graphdef, state["params"])


def with_a_bad_record(shard, path):
    """A copy of `shard` whose record 1 is cut short."""
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(path, "group_size:1")
    for index, record in enumerate(read_shard(shard)):
        data = encode_record(record)
        writer.write(data[:15] if index == 1 else data)
    writer.close()
    return path


def embed(recipe, workdir, shards, out, *flags, check=True):
    return run_command(
        "rsclip_jax.embed",
        f"--config={recipe}",
        f"--workdir={workdir}",
        f"--shards={shards}",
        f"--out={out}",
        *flags,
        check=check,
    )


def test_final_embeddings_are_the_models_and_a_rerun_skips_what_is_written(imported, demo_shards, tmp_path):
    recipe, workdir, model = imported
    bad = with_a_bad_record(demo_shards["heldout"][0], str(tmp_path / "heldout-bad.array_record"))
    out = str(tmp_path / "embedded")
    first = json.loads(embed(recipe, workdir, f"{demo_shards['train'][0]},{bad}", out).stdout.splitlines()[-1])
    assert first["shards_written"] == 2 and first["skipped"] == {"bad_record": 1}

    originals = list(read_shard(demo_shards["train"][0]))
    embedded = list(read_shard(os.path.join(out, os.path.basename(demo_shards["train"][0]))))
    assert [r.image_id for r in embedded] == [r.image_id for r in originals] and first["records"] == 40
    assert all(dataclasses.replace(e, image_embedding=None) == o for e, o in zip(embedded, originals))
    size = model.visual.image_size
    pixels = np.stack([crop_like_open_clip(EncodedImage(r.image_jpeg), None, size) for r in originals[:4]])
    expected = np.asarray(model.encode_image(normalize_images(pixels)))
    for record, row in zip(embedded, expected):
        assert record.image_embedding.depth == "final" and record.image_embedding.values.dtype == np.float16
        np.testing.assert_allclose(record.image_embedding.values, row, atol=2e-3)
    assert json.load(open(os.path.join(out, "embeddings.json")))["depth"] == "final"

    again = json.loads(embed(recipe, workdir, f"{demo_shards['train'][0]},{bad}", out).stdout.splitlines()[-1])
    assert again["shards_already_written"] == 2 and again["shards_written"] == 0
    refused = embed(recipe, workdir, demo_shards["train"][0], out, "--depth=tokens:1", check=False)
    assert refused.returncode != 0 and "holds shards made otherwise (depth: now 'tokens:1', before 'final')" in (
        refused.stderr
    )
    too_deep = embed(recipe, workdir, demo_shards["train"][0], str(tmp_path / "deep"), "--depth=tokens:9", check=False)
    assert too_deep.returncode != 0 and "--depth 'tokens:9': the image tower has 2 blocks" in too_deep.stderr


@pytest.mark.slow
def test_two_processes_embed_tokens_each_its_own_shards(imported, demo_shards, tmp_path):
    """Each process embeds every other shard on its own devices; together, every shard once, at depth tokens:1."""
    recipe, workdir, model = imported
    out = str(tmp_path / "tokens")
    with open(os.devnull) as devnull:
        import socket

        with socket.socket() as s:
            s.bind(("localhost", 0))
            port = s.getsockname()[1]
        processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "rsclip_jax.embed",
                    f"--config={recipe}",
                    f"--workdir={workdir}",
                    f"--shards={','.join(demo_shards['train'])}",
                    f"--out={out}",
                    "--depth=tokens:1",
                    "--dtype=float32",
                    "--batch_size=8",
                    f"--coordinator_address=localhost:{port}",
                    "--num_processes=2",
                    f"--process_id={i}",
                ],
                env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
                stdin=devnull,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO,
            )
            for i in range(2)
        ]
        outputs = [p.communicate(timeout=600) for p in processes]
    for p, (_, stderr) in zip(processes, outputs):
        assert p.returncode == 0, stderr[-3000:]
    counts = [json.loads(stdout.splitlines()[-1]) for stdout, _ in outputs]
    assert [c["shards_written"] for c in counts] == [1, 1]
    for shard in demo_shards["train"]:
        records = list(read_shard(os.path.join(out, os.path.basename(shard))))
        pixels = np.stack(
            [crop_like_open_clip(EncodedImage(r.image_jpeg), None, model.visual.image_size) for r in records[:2]]
        )
        expected = np.asarray(model.visual.tokens_after(normalize_images(pixels), 1))
        for record, tokens in zip(records, expected):
            assert record.image_embedding.depth == "tokens:1" and record.image_embedding.values.shape == tokens.shape
            np.testing.assert_allclose(record.image_embedding.values, tokens, atol=1e-4)
