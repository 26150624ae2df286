"""Synth²'s generator trained through the project's one training loop (`python -m rsclip_jax.train` with
config.task "synth2_generator"), on demo shards embedded by a tiny CLIP."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from recipes import REPO, one_device, run_command

from rsclip_jax.accelerators.sharding import make_mesh
from rsclip_jax.config import load_recipe
from rsclip_jax.data.records import read_shard, write_shard
from rsclip_jax.synth2.image_embeddings import embed_shards, image_embedder
from rsclip_jax.training.checkpoints import Checkpointer
from rsclip_jax.training.train_setup import TrainSetup

DEMO = os.path.join(REPO, "rsclip_jax", "demo", "configs", "demo.py")
GENERATOR = os.path.join(REPO, "rsclip_jax", "demo", "configs", "demo_synth2_generator.py")


@pytest.fixture(scope="module")
def clip_and_shards(tmp_path_factory, demo_shards):
    """(the CLIP's workdir: random weights as step 0, {depth: the demo's training shards embedded by it})."""
    tmp = tmp_path_factory.mktemp("synth2")
    setup = TrainSetup.build(load_recipe(DEMO), make_mesh((1, 1, 1), devices=jax.devices()[:1]))
    state = setup.init_state()
    checkpointer = Checkpointer(str(tmp / "clip" / "checkpoints"), every_steps=1, keep=1)
    checkpointer.save(0, state, force=True)
    checkpointer.close()
    embedded = {}
    for depth in ("final", "tokens:1"):
        out = str(tmp / depth.replace(":", "-"))
        os.makedirs(out)
        embed = image_embedder(setup.graphdef, state["params"], setup.mesh, depth)
        counts = embed_shards(
            demo_shards["train"],
            out,
            embed,
            state["params"],
            image_size=setup.model.image_size,
            depth=depth,
            dtype="float16",
            batch_size=8,
        )
        assert counts.records == 40
        embedded[depth] = [os.path.join(out, os.path.basename(path)) for path in demo_shards["train"]]
    return str(tmp / "clip"), embedded


def train_generator(workdir, clip, shards, *overrides, check=True):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rsclip_jax.train",
            f"--config={GENERATOR}",
            f"--workdir={workdir}",
            f"--config.data.train_shards={','.join(shards)}",
            f"--config.synth2_generator.clip_workdir={clip}",
            "--config.batch_size=16",
            "--config.total_steps=4",
            "--config.log_every_steps=1",
            "--config.checkpoint_every_steps=2",
            "--config.data.num_workers=0",
            *overrides,
        ],
        env=one_device(),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def logged(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f) if "loss" in r}


@pytest.fixture(scope="module")
def trained_generator(clip_and_shards, tmp_path_factory):
    """The workdir of a generator of final embeddings trained 4 steps, checkpoints at 2 and 4."""
    clip, embedded = clip_and_shards
    workdir = tmp_path_factory.mktemp("generator") / "run"
    train_generator(workdir, clip, embedded["final"])
    return workdir


def test_the_generator_trains_logs_and_resumes_exactly(clip_and_shards, trained_generator, tmp_path):
    clip, embedded = clip_and_shards
    first = logged(trained_generator)
    assert sorted(first) == [1, 2, 3, 4] and "logit_scale" not in first[4]
    assert all(line["loss"] > 0 and line["grad_norm"] > 0 for line in first.values())
    assert 0 <= first[4]["caption_dropped"] <= 1 and first[4]["tflops_per_device"] > 0

    workdir = tmp_path / "run"
    shutil.copytree(trained_generator, workdir)
    shutil.rmtree(workdir / "checkpoints" / "4")  # as if stopped after step 2
    train_generator(workdir, clip, embedded["final"])
    resumed = logged(workdir)
    for step in (3, 4):
        assert resumed[step]["loss"] == pytest.approx(first[step]["loss"], rel=1e-6), f"step {step}"


def test_shards_embedded_at_another_depth_stop_the_run_before_it_compiles(clip_and_shards, tmp_path):
    clip, embedded = clip_and_shards
    result = train_generator(tmp_path, clip, embedded["tokens:1"], check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "config.data.train_shards: the image_embedding of" in result.stderr
    assert "is at depth 'tokens:1' with shape [17, 64]; this model's at 'final' is [32]" in result.stderr


@pytest.mark.slow
def test_a_generator_of_tokens_trains_with_statistics_from_the_data(clip_and_shards, tmp_path):
    clip, embedded = clip_and_shards
    train_generator(tmp_path, clip, embedded["tokens:1"], "--config.synth2_generator.depth=tokens:1")
    losses = [line["loss"] for line in logged(tmp_path).values()]
    assert len(losses) == 4 and all(0 < loss < 10 for loss in losses)  # standardised targets: about unit scale


def test_generate_writes_synthetic_pairs_for_captions_of_imagined_images(trained_generator, demo_shards, tmp_path):
    """Records with captions only, as `captioning synthesize` writes them, get the generator's image embedding of
    their first long caption; the same seed makes the same pairs."""
    generator = trained_generator
    records = [
        dataclasses.replace(r, image_jpeg=None, original_size=None) for r in read_shard(demo_shards["heldout"][0])
    ]
    captions = str(tmp_path / "imagined.array_record")
    write_shard(captions, records)

    def generate(out):
        result = run_command(
            "rsclip_jax.generate",
            f"--workdir={generator}",
            f"--captions={captions}",
            f"--out={out}",
            "--steps=3",
            "--batch_size=8",
        )
        return json.loads(result.stdout.splitlines()[-1])

    counts = generate(tmp_path / "pairs")
    assert counts["shards_written"] == 1 and counts["records"] == len(records)
    pairs = list(read_shard(tmp_path / "pairs" / "imagined.array_record"))
    assert [p.image_id for p in pairs] == [r.image_id for r in records]
    assert all(p.content == "image_embedding" and p.captions == r.captions for p, r in zip(pairs, records))
    values = np.stack([p.image_embedding.values.astype(np.float32) for p in pairs])
    assert values.shape == (len(records), 32) and np.allclose(np.linalg.norm(values, axis=1), 1, atol=1e-2)
    assert generate(tmp_path / "pairs")["shards_already_written"] == 1
    generate(tmp_path / "again")
    again = np.stack([p.image_embedding.values for p in read_shard(tmp_path / "again" / "imagined.array_record")])
    np.testing.assert_array_equal(again, values.astype(np.float16))


def train_clip(workdir, shards, synthetic, *overrides, devices=1, check=True):
    """The demo CLIP for 4 steps, a quarter of each batch of 16 synthetic."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rsclip_jax.train",
            f"--config={DEMO}",
            f"--workdir={workdir}",
            f"--config.data.train_shards={','.join(shards)}",
            f"--config.data.synthetic_shards={','.join(synthetic)}",
            "--config.data.synthetic_fraction=0.25",
            "--config.batch_size=16",
            "--config.total_steps=4",
            "--config.log_every_steps=1",
            "--config.checkpoint_every_steps=2",
            "--config.data.num_workers=0",
            *overrides,
        ],
        env={**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"},
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def synthetic_shards(clip_and_shards, tmp_path_factory):
    """Pairs with an image embedding in place of an image, as `rsclip_jax.generate` writes them: here the CLIP's own
    final embeddings of the demo's training images (the plumbing, not the generator, is under test)."""
    _, embedded = clip_and_shards
    out = tmp_path_factory.mktemp("synthetic")
    paths = []
    for shard in embedded["final"]:
        path = str(out / os.path.basename(shard))
        write_shard(path, [dataclasses.replace(r, image_jpeg=None, original_size=None) for r in read_shard(shard)])
        paths.append(path)
    return paths


def test_a_tower_that_synthetic_rows_bypass_must_be_frozen(demo_shards, synthetic_shards, tmp_path):
    result = train_clip(tmp_path, demo_shards["train"], synthetic_shards, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "synthetic rows at depth 'final' bypass" in result.stderr
    assert "add r'visual\\..*' to config.optim.freeze" in result.stderr


def test_synthetic_rows_train_beside_real_ones_and_resume_exactly_on_another_mesh(
    demo_shards, synthetic_shards, tmp_path
):
    freeze = "--config.optim.freeze=('visual\\..*',)"
    train_clip(tmp_path, demo_shards["train"], synthetic_shards, freeze)
    first = logged(tmp_path)
    assert sorted(first) == [1, 2, 3, 4]
    assert all(line["real_loss"] > 0 and line["synthetic_loss"] > 0 for line in first.values())

    shutil.rmtree(tmp_path / "checkpoints" / "4")  # as if stopped after step 2; both streams resume at batch 3
    train_clip(tmp_path, demo_shards["train"], synthetic_shards, freeze, "--config.mesh.shape=(2,2,1)", devices=4)
    resumed = logged(tmp_path)
    for step in (3, 4):
        for key in ("loss", "real_loss", "synthetic_loss"):
            assert resumed[step][key] == pytest.approx(first[step][key], rel=1e-5), (step, key)


def test_synthetic_tokens_enter_the_tower_where_they_were_taken():
    """At "tokens:K" the rest of the tower runs on a synthetic row's tokens: on an image's own tokens after block K,
    the image's embedding. The parameters below block K are what the freeze pattern names."""
    from flax import nnx

    from rsclip_jax.model.clip import CLIP
    from rsclip_jax.model.config import ModelConfig
    from rsclip_jax.synth2.mixing import _image_tower_names, synthetic_image_embeddings

    config = load_recipe(DEMO)
    model_config = ModelConfig.from_config(config)
    model = CLIP(model_config, rngs=nnx.Rngs(0))
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    tokens = model.visual.tokens_after(images, 1)
    np.testing.assert_allclose(
        synthetic_image_embeddings(model, tokens, "tokens:1"), model.encode_image(images), atol=1e-5
    )
    names = _image_tower_names(model_config, 1)
    assert "visual.conv1.kernel" in names and "visual.transformer.resblocks.0.attn.in_proj.kernel" in names
    assert not any(
        name.startswith(("visual.transformer.resblocks.1.", "visual.ln_post", "visual.proj")) for name in names
    )


@pytest.mark.parametrize(
    "settings",
    [
        {"loss.kind": "softmax_union"},
        {"loss.kind": "softmax_per_caption"},
        {"loss.kind": "sigmoid", "model.logit_bias_init": -10.0},
        {"loss.short_caption_components": 4, "loss.short_caption_pca": "global", "data.slot_kinds": ("long", "short")},
        {"loss.sharded": "on", "mesh.shape": (4, 1, 1)},
    ],
)
def test_synthetic_rows_take_every_loss_kind(settings):
    """The training loss over real and synthetic rows, for each loss kind (and the sharded loss over 4 devices):
    finite, with each stream's own loss."""
    from flax import nnx

    from rsclip_jax.accelerators.sharding import mesh_from_config
    from rsclip_jax.training.step import training_loss

    config = load_recipe(DEMO)
    config.data.synthetic_shards, config.data.synthetic_fraction = "synthetic", 0.5
    for key, value in settings.items():
        section, name = key.split(".")
        config[section][name] = value
    setup = TrainSetup.build(config, mesh_from_config(config.mesh, jax.devices()[: (config.mesh.shape or (1,))[0]]))
    slots = tuple(config.data.slot_kinds)
    rng = np.random.default_rng(0)

    def rows(count, offset):
        tokens = rng.integers(1, 49406, (count, len(slots), 16)).astype(np.int32)
        tokens[..., -1] = 49407
        return {"tokens": tokens, "image_id": np.arange(offset, offset + count)}

    batch = {**rows(8, 0), "image": rng.integers(0, 256, (8, 32, 32, 3)).astype(np.uint8)}
    batch["synthetic"] = {**rows(8, 0), "image_embedding": rng.normal(size=(8, 32)).astype(np.float32)}
    params = setup.init_state()["params"]
    value, parts = jax.jit(
        lambda params, batch: training_loss(config, nnx.merge(setup.graphdef, params), batch, slots, setup.mesh)
    )(params, batch)
    assert np.isfinite(value) and np.isfinite(parts["real_loss"]) and np.isfinite(parts["synthetic_loss"])
