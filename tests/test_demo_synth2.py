"""`python -m rsclip_jax.demo --recipe synth2` (rsclip_jax/demo/synth2.py): its plumbing and its JSON line, at the
"small" size (a few images, two steps of each training, one seed), not its outcome."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from recipes import REPO, one_device

from rsclip_jax.data.records import read_shard
from rsclip_jax.demo.corpus import CAPTION_MODEL, holds_combo
from rsclip_jax.demo.synth2 import ARMS, HELD_OUT_COMBOS, SIZES, caption_key, caption_record, synthetic_scenes


def test_synthetic_captions_are_caption_only_records_of_new_scenes_with_a_held_out_combination():
    scenes = synthetic_scenes(40, HELD_OUT_COMBOS, avoid=set())
    records = [caption_record(i, scene) for i, scene in enumerate(scenes)]
    assert len({r.image_id for r in records}) == 40 and all(holds_combo(s, HELD_OUT_COMBOS) for s in scenes)
    assert all(r.image_jpeg is None and r.original_size is None and len(r.captions) == 10 for r in records)
    assert all(r.captions[0].model == CAPTION_MODEL for r in records)  # labelled procedural, not an LLM's
    again = synthetic_scenes(40, HELD_OUT_COMBOS, avoid={caption_key(records[0])})
    assert again[:39] == scenes[1:]  # a scene with a held-out image's captions is drawn again


@pytest.mark.slow
def test_the_experiment_runs_every_stage_and_prints_one_json_line(tmp_path):
    workdir = tmp_path / "synth2"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rsclip_jax.demo",
            "--recipe=synth2",
            "--synth2-size=small",
            f"--synth2-workdir={workdir}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=one_device(),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    (line,) = result.stdout.splitlines()  # the commands' own output went to stderr
    report = json.loads(line)
    small = SIZES["small"]
    assert "stands in for the LLM" in report["captions"]
    assert report["held_out_combos"] == [f"{c} {s}" for c, s in HELD_OUT_COMBOS]
    assert report["finetune"]["steps"] == small.finetune_steps and report["finetune"]["synthetic_rows"] == 4
    assert "image tower" in report["finetune"]["frozen"] and "std" in report["spread"]
    assert set(report["stage1"]) == {"unseen", "heldout"}
    assert set(report["synthetic_vs_rendered"]) == {"generated", "nearest"}
    assert list(report["arms"]) == list(ARMS)
    for arm in report["arms"].values():
        assert arm["seeds"] == [0] and arm["seconds"] > 0
        for split in ("unseen", "heldout"):
            assert set(arm[split]) == {"i2t_r1", "t2i_r1"}
            for figure in arm[split].values():
                assert 0 <= figure["mean"] <= 100 and figure["std"] == 0 and figure["per_seed"] == [figure["mean"]]

    # The corpus: no real training image holds a held-out combination; every "unseen" one does.
    corpus = workdir / "corpus"
    train = [r for path in sorted(corpus.glob("train-*")) for r in read_shard(path)]
    unseen = [r for path in sorted(corpus.glob("unseen-*")) for r in read_shard(path)]
    assert (len(train), len(unseen)) == (small.train_images, small.unseen_images)
    named = lambda record: any(
        f"{colour} {shape}" in c.text for c in record.captions for colour, shape in HELD_OUT_COMBOS
    )
    assert not any(map(named, train)) and all(map(named, unseen))

    # Stage 3: caption-only records; the generator's pairs and the nearest real image's, at depth final.
    (captions,) = (workdir / "synthetic-captions").iterdir()
    records = list(read_shard(captions))
    assert len(records) == small.synthetic_captions and all(r.image_jpeg is None for r in records)
    generated = list(read_shard(workdir / "generated" / captions.name))
    nearest = list(read_shard(workdir / "nearest" / captions.name))
    real = {
        r.image_embedding.values.tobytes()
        for path in (workdir / "embedded").glob("*.array_record")
        for r in read_shard(path)
    }
    for pairs in (generated, nearest):
        assert [p.captions for p in pairs] == [r.captions for r in records]
        assert all(p.image_embedding.depth == "final" and p.image_jpeg is None for p in pairs)
    assert all(p.image_embedding.values.tobytes() in real for p in nearest)  # a real training image's embedding
    values = np.stack([p.image_embedding.values.astype(np.float32) for p in generated])
    assert np.allclose(np.linalg.norm(values, axis=1), 1, atol=1e-2)

    # Stage 4: each arm fine-tuned from step 0 (stage 1's weights) for its steps, with synthetic rows or without.
    for arm in ARMS:
        run = workdir / "arms" / arm / "seed0"
        assert sorted(os.listdir(run / "checkpoints")) == [str(small.finetune_steps)]
        with open(run / "metrics.jsonl") as f:
            last = [r for r in map(json.loads, f) if "loss" in r][-1]
        assert last["step"] == small.finetune_steps and ("synthetic_loss" in last) == (arm != "real")
