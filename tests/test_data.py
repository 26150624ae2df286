import collections
import dataclasses
import gc
import os
import subprocess
import sys
import time

import grain
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from rsclip_jax import tokenize
from rsclip_jax.config import base_config
from rsclip_jax.data.caption_sampling import sentences
from rsclip_jax.data.example_spec import DataError, ExampleSpec
from rsclip_jax.data.pipeline import train_dataset
from rsclip_jax.data.records import encode_record, read_shard, write_shard
from rsclip_jax.data.shards import check_alt_text, resolve_shards
from rsclip_jax.data.tokenizer import EOT_ID
from rsclip_jax.model.config import ModelConfig

SPEC = ExampleSpec(image_size=32, context_length=32, slot_kinds=("long", "short"))


def batches(dataset, count, state=None):
    iterator = iter(dataset)
    if state is not None:
        iterator.set_state(state)
    return [next(iterator) for _ in range(count)], iterator


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_batch_shapes_and_slot_kinds(demo_shards):
    paths = demo_shards["train"]
    dataset, skips = train_dataset(paths, SPEC, batch_size=8, seed=0)
    (batch,), _ = batches(dataset, 1)
    assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.uint8
    assert batch["tokens"].shape == (8, 2, 32) and batch["tokens"].dtype == np.int32
    assert batch["image_id"].shape == (8,) and len(set(batch["image_id"].tolist())) == 8
    records = [r for path in paths for r in read_shard(path)]
    for image_id, tokens in zip(batch["image_id"], batch["tokens"]):
        captions = records[image_id].captions
        for slot, kind in enumerate(("long", "short")):
            options = tokenize([c.text for c in captions if c.kind == kind], 32)
            assert any((tokens[slot] == option).all() for option in options)
    assert not skips.counts


def test_same_seed_same_batches_other_seed_other_batches(demo_shards):
    first, _ = batches(train_dataset(demo_shards["train"], SPEC, batch_size=8, seed=3)[0], 3)
    again, _ = batches(train_dataset(demo_shards["train"], SPEC, batch_size=8, seed=3)[0], 3)
    other, _ = batches(train_dataset(demo_shards["train"], SPEC, batch_size=8, seed=4)[0], 3)
    assert_same_batches(first, again)
    assert not np.array_equal(first[0]["image_id"], other[0]["image_id"])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_run_resumes_at_any_global_batch_with_any_number_of_workers(demo_shards, num_workers):
    """Batch s is a function of s: what a run resuming after step s reads, mid-epoch or across one, with workers
    or without."""
    spec = dataclasses.replace(SPEC, random_resized_crop=True)
    expected, _ = batches(train_dataset(demo_shards["train"], spec, batch_size=6, seed=0)[0], 9)  # 54 of 40 records
    resumed, iterator = batches(
        train_dataset(demo_shards["train"], spec, batch_size=6, seed=0, num_workers=num_workers, start_batch=4)[0], 5
    )
    iterator.close()
    assert_same_batches(resumed, expected[4:])


def test_rows_mode_yields_every_caption_once_per_epoch(demo_shards):
    spec = ExampleSpec(image_size=32, context_length=32, sampling="rows", rows_per_image=10)
    dataset, _ = train_dataset(demo_shards["train"], spec, batch_size=20, seed=0)
    epoch, _ = batches(dataset, 20)  # 40 images x 10 captions
    seen = collections.Counter((int(i), tuple(t[0])) for b in epoch for i, t in zip(b["image_id"], b["tokens"]))
    records = [r for path in demo_shards["train"] for r in read_shard(path)]
    expected = collections.Counter(
        (i, tuple(row)) for i, r in enumerate(records) for row in tokenize([c.text for c in r.captions], 32)
    )
    assert seen == expected


def test_each_process_reads_its_rows_of_the_one_global_batch(demo_shards):
    """The global batches do not depend on the number of processes: process p of P reads rows p*b .. p*b + b-1 of
    each, with the same crops and captions."""
    spec = dataclasses.replace(SPEC, random_resized_crop=True)
    whole, _ = batches(train_dataset(demo_shards["train"], spec, batch_size=8, seed=0)[0], 6)
    halves = [
        batches(train_dataset(demo_shards["train"], spec, batch_size=4, seed=0, process_index=p, process_count=2)[0], 6)
        for p in range(2)
    ]
    halves = [half for half, _ in halves]
    assert_same_batches([{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*halves)], whole)


def spoil(records, path, spoilt: dict[int, str]) -> str:
    """A shard of `records` in which record i is spoilt as spoilt[i] says: cut short, an image that does not decode,
    or no captions."""
    writer = ArrayRecordWriter(path, "group_size:1")
    for i, record in enumerate(records):
        if spoilt.get(i) == "bad_record":
            writer.write(encode_record(record)[:15])
        elif spoilt.get(i) == "bad_image":
            writer.write(encode_record(dataclasses.replace(record, image_jpeg=b"\xff\xd8 not a jpeg")))
        elif spoilt.get(i) == "no_captions":
            writer.write(encode_record(dataclasses.replace(record, captions=())))
        else:
            writer.write(encode_record(record))
    writer.close()
    return path


def test_bad_records_are_counted_and_their_positions_filled_from_a_later_epoch(demo_shards, tmp_path):
    good = list(read_shard(demo_shards["heldout"][0]))
    spoilt = {3: "bad_record", 5: "bad_image", 7: "no_captions"}
    path = spoil(good, str(tmp_path / "mixed.array_record"), spoilt)
    dataset, skips = train_dataset([path], SPEC, batch_size=len(good), seed=0)
    (batch,), _ = batches(dataset, 1)  # the first epoch's positions
    ids = batch["image_id"].tolist()
    assert len(ids) == 16 and not set(ids) & set(spoilt)
    assert set(ids) == set(range(16)) - set(spoilt)  # every good record of the epoch, and 3 of a later one
    assert set(skips.counts) == set(spoilt.values()) and sum(skips.counts.values()) >= 3


def test_shards_of_unusable_records_are_an_error_not_a_hang(demo_shards, tmp_path):
    records = list(read_shard(demo_shards["heldout"][0]))[:4]
    path = spoil(records, str(tmp_path / "bad.array_record"), dict.fromkeys(range(4), "no_captions"))
    with pytest.raises(DataError, match=r"config.data.train_shards: no example could be built at position 0 .* in 64"):
        next(iter(train_dataset([path], SPEC, batch_size=2, seed=0)[0]))


@pytest.mark.slow
def test_workers_make_the_same_batches_and_skip_counts(demo_shards, tmp_path):
    """Each of 2 workers makes every other batch; the batches, and the skips counted with them, are those the
    training process makes alone."""
    good = list(read_shard(demo_shards["heldout"][0]))
    path = spoil(good, str(tmp_path / "mixed.array_record"), {0: "bad_record", 1: "bad_image", 4: "no_captions"})
    alone, skips_alone = train_dataset([path], SPEC, batch_size=2, seed=0)
    expected, _ = batches(alone, 16)  # two epochs
    dataset, skips = train_dataset([path], SPEC, batch_size=2, seed=0, num_workers=2)
    received, iterator = batches(dataset, 16)
    iterator.close()
    assert_same_batches(received, expected)
    assert skips.counts == skips_alone.counts and sum(skips.counts.values()) >= 6


def shared_memory_blocks() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [1, 2])
def test_batches_from_workers_in_shared_memory_hold_the_training_processes_examples_and_none_is_left(
    demo_shards, num_workers
):
    spec = dataclasses.replace(SPEC, image_size=96)  # 8 x 96 x 96 x 3 bytes: in a shared-memory block
    before = shared_memory_blocks()
    epoch = sum(1 for path in demo_shards["train"] for _ in read_shard(path)) // 8
    expected, _ = batches(train_dataset(demo_shards["train"], spec, batch_size=8, seed=0)[0], epoch)
    received, iterator = batches(
        train_dataset(demo_shards["train"], spec, batch_size=8, seed=0, num_workers=num_workers)[0], 4
    )
    iterator.close()
    assert isinstance(received[0]["image"], grain.multiprocessing.SharedMemoryArray)
    assert_same_batches(received, expected[:4])
    del received, iterator
    gc.collect()
    deadline = time.monotonic() + 30  # the training process unlinks dropped blocks in a thread
    while shared_memory_blocks() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not shared_memory_blocks() - before


def test_the_opencv_crop_backend_gives_the_same_examples_nearly_the_same_pixels(demo_shards):
    spec = dataclasses.replace(SPEC, random_resized_crop=True)
    (pil,), _ = batches(train_dataset(demo_shards["train"], spec, batch_size=8, seed=0)[0], 1)
    fast_spec = dataclasses.replace(spec, crop_backend="opencv")
    (fast,), _ = batches(train_dataset(demo_shards["train"], fast_spec, batch_size=8, seed=0)[0], 1)
    np.testing.assert_array_equal(fast["image_id"], pil["image_id"])
    np.testing.assert_array_equal(fast["tokens"], pil["tokens"])  # the crop box draws nothing else
    assert fast["image"].shape == pil["image"].shape and fast["image"].dtype == np.uint8
    assert np.abs(fast["image"].astype(int) - pil["image"].astype(int)).mean() < 4


def test_shard_errors_name_the_key_and_path(tmp_path):
    with pytest.raises(DataError, match=r"config.data.train_shards: no caption shard matches '.*nothing-\*'"):
        resolve_shards(str(tmp_path / "nothing-*"), "config.data.train_shards")
    empty = tmp_path / "empty.array_record"
    empty.touch()
    with pytest.raises(DataError, match="caption shard .*empty.array_record is an empty file"):
        resolve_shards([str(empty)], "config.data.train_shards")
    no_records = str(tmp_path / "none.array_record")
    ArrayRecordWriter(no_records, "group_size:1").close()
    with pytest.raises(DataError, match="none.array_record holds no records"):
        resolve_shards(no_records, "config.data.train_shards")
    with pytest.raises(DataError, match="config.data.train_shards is empty"):
        resolve_shards("", "config.data.train_shards")
    with pytest.raises(DataError, match="config.data: sampling 'random'"):
        ExampleSpec(image_size=32, context_length=32, sampling="random")


def train_records(demo_shards):
    return [r for path in demo_shards["train"] for r in read_shard(path)]


def test_sub_caption_modes_run_the_text_at_the_budget(demo_shards):
    for mode in ("sentence", "token_block"):
        spec = ExampleSpec(image_size=32, context_length=32, sub_caption=mode, sub_caption_tokens=6, kinds=("long",))
        assert spec.text_length == 8  # start + 6 + end, not the model's 32
        (batch,), _ = batches(train_dataset(demo_shards["train"], spec, batch_size=8, seed=0)[0], 1)
        rows = batch["tokens"][:, 0]
        assert rows.shape == (8, 8) and (rows.max(axis=-1) == EOT_ID).all()  # cut, end-of-text kept
        if mode == "sentence":
            records = train_records(demo_shards)
            for image_id, row in zip(batch["image_id"], rows):
                options = [s for c in records[image_id].captions if c.kind == "long" for s in sentences(c.text)]
                assert any((row == option).all() for option in tokenize(options, 8))
    assert ExampleSpec(image_size=32, context_length=32).text_length == 32
    with pytest.raises(DataError, match=r"config.data: sub_caption_tokens 31 must lie in \[1, context_length - 2"):
        ExampleSpec(image_size=32, context_length=32, sub_caption="sentence", sub_caption_tokens=31)


@pytest.mark.parametrize("mode", ["sentence", "token_block"])
def test_alt_slots_take_the_alt_text_whole_and_images_without_are_skipped(demo_shards, mode):
    records = train_records(demo_shards)
    with_alt = [i for i, r in enumerate(records) if r.alt_text]
    assert 0 < len(with_alt) < len(records)  # the demo corpus leaves a few images without alt text
    spec = ExampleSpec(
        image_size=32, context_length=32, slot_kinds=("any", "alt"), sub_caption=mode, sub_caption_tokens=3
    )
    dataset, skips = train_dataset(demo_shards["train"], spec, batch_size=len(records), seed=0)
    (batch,), _ = batches(dataset, 1)  # the first epoch's positions; those without alt text filled from later ones
    assert batch["tokens"].shape == (len(records), 2, 5) and "caption_tokens" not in batch
    assert set(batch["image_id"].tolist()) == set(with_alt)
    assert set(skips.counts) == {"no_alt_text"} and skips.counts["no_alt_text"] >= len(records) - len(with_alt)
    for image_id, tokens in zip(batch["image_id"], batch["tokens"]):
        # cut at 5 tokens, never sampled: the web caption's first words, whatever the mode
        np.testing.assert_array_equal(tokens[1], tokenize(records[image_id].alt_text, 5)[0])


def test_the_generator_target_is_the_whole_caption_of_the_first_synthetic_slot(demo_shards):
    records = train_records(demo_shards)
    spec = ExampleSpec(
        image_size=32,
        context_length=32,
        slot_kinds=("alt", "long", "short"),
        sub_caption="token_block",
        sub_caption_tokens=4,
        generator_caption_tokens=24,
    )
    (batch,), _ = batches(train_dataset(demo_shards["train"], spec, batch_size=8, seed=0)[0], 1)
    assert batch["tokens"].shape == (8, 3, 6)
    assert batch["caption_tokens"].shape == (8, 24) and batch["caption_tokens"].dtype == np.int32
    for image_id, tokens, target in zip(batch["image_id"], batch["tokens"], batch["caption_tokens"]):
        longs = [c.text for c in records[image_id].captions if c.kind == "long"]
        text = longs[[tuple(row) for row in tokenize(longs, 24)].index(tuple(target))]  # one of its long captions
        block = tokens[1][1 : int(np.argmax(tokens[1] == EOT_ID))].tolist()
        whole = tokenize(text, 512)[0].tolist()
        assert any(whole[i : i + 4] == block for i in range(len(whole)))  # the slot's block is cut from that caption


@pytest.mark.parametrize(
    "settings,message",
    [
        (dict(sampling="rows"), r"config.generator needs config.data.sampling='grouped'"),
        (dict(slot_kinds=("alt",)), r"config.data.slot_kinds \('alt',\) has no slot other than 'alt'"),
    ],
)
def test_generator_settings_that_cannot_work(settings, message):
    with pytest.raises(DataError, match=message):
        ExampleSpec(image_size=32, context_length=32, **{"generator_caption_tokens": 129, **settings})


def test_an_alt_slot_over_shards_without_alt_text_is_refused(demo_shards, tmp_path):
    path = str(tmp_path / "no-alt.array_record")
    write_shard(path, [dataclasses.replace(r, alt_text=None) for r in train_records(demo_shards)[:3]])
    with pytest.raises(DataError, match=r"'alt' slot, but none of the first 3 records of .*no-alt.array_record holds"):
        check_alt_text([path], ("alt", "long"))
    check_alt_text([path], ("long", "short"))
    check_alt_text(demo_shards["train"], ("alt", "long"))


def test_example_spec_from_a_config_with_a_generator():
    config = base_config()
    model = ModelConfig.from_config(config)
    assert ExampleSpec.from_config(config, model).generator_caption_tokens == 0
    config.generator.weight = 2.0
    assert ExampleSpec.from_config(config, model).generator_caption_tokens == config.generator.queries + 1


@pytest.mark.slow
def test_workers_start_from_a_program_absl_did_not_start(demo_shards):
    """A notebook or a plain script never runs absl's app.run, so Grain's flags are unparsed when workers start."""
    code = (
        "from rsclip_jax.data.pipeline import train_dataset\nfrom rsclip_jax.data.example_spec import ExampleSpec\n"
        "if __name__ == '__main__':\n"
        f"    dataset, _ = train_dataset({demo_shards['train']!r}, ExampleSpec(image_size=32, context_length=16),"
        " batch_size=4, seed=0, num_workers=2)\n"
        "    iterator = iter(dataset)\n"
        "    print(next(iterator)['image'].shape)\n"
        "    iterator.close()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[-2] == "(4, 32, 32, 3)"


ROLE = "Narrative Setter"


def role_rows(demo_shards, roles=()):
    """{(image id, token row): role} for every caption of `roles` (all when empty) of the training shards."""
    rows = {}
    for image_id, record in enumerate(train_records(demo_shards)):
        captions = [c for c in record.captions if not roles or c.role in roles]
        for caption, row in zip(captions, tokenize([c.text for c in captions], 32)):
            rows[image_id, tuple(row)] = caption.role
    return rows


def rows_of(received):
    """(image id, token row) of each example of rows-sampling batches, in order."""
    return [(int(i), tuple(t[0])) for batch in received for i, t in zip(batch["image_id"], batch["tokens"])]


def test_roles_keep_only_their_captions_in_rows_and_grouped_sampling(demo_shards):
    rows = ExampleSpec(image_size=32, context_length=32, sampling="rows", rows_per_image=2, roles=(ROLE,))
    received, _ = batches(train_dataset(demo_shards["train"], rows, batch_size=20, seed=0)[0], 4)  # 40 images x 2
    assert collections.Counter(rows_of(received)) == collections.Counter(list(role_rows(demo_shards, (ROLE,))))
    grouped = dataclasses.replace(SPEC, roles=(ROLE,))
    (batch,), _ = batches(train_dataset(demo_shards["train"], grouped, batch_size=8, seed=0)[0], 1)
    records = train_records(demo_shards)
    for image_id, tokens in zip(batch["image_id"], batch["tokens"]):
        for slot, kind in enumerate(("long", "short")):
            (text,) = [c.text for c in records[image_id].captions if c.role == ROLE and c.kind == kind]
            np.testing.assert_array_equal(tokens[slot], tokenize(text, 32)[0])


def test_a_role_no_record_has_is_refused_naming_the_roles_found(demo_shards, caplog):
    spec = ExampleSpec(image_size=32, context_length=32, roles=(ROLE, "Observer of Detail"))
    with pytest.raises(DataError) as error:
        train_dataset(demo_shards["train"], spec, batch_size=8, seed=0)
    assert str(error.value).startswith(
        f"config.data.roles ('{ROLE}', 'Observer of Detail'): no caption of 'Observer of Detail' among the first 25 "
        f"records of {demo_shards['train'][0]}, whose roles are ['Compositional Analyst', 'Emotional Responder', "
        f"'Interpreter of Context', 'Narrative Setter', 'Observer of Details']"
    )
    # One role's two captions in ten row slots: eight of them empty, which the user is told.
    train_dataset(
        demo_shards["train"],
        ExampleSpec(image_size=32, context_length=32, sampling="rows", roles=(ROLE,)),
        batch_size=8,
        seed=0,
    )
    assert "set config.data.rows_per_image=2" in caplog.text


def capped(sampling="rows", **settings):
    defaults = dict(rows_per_image=10) if sampling == "rows" else dict(slot_kinds=("long", "short"))
    return ExampleSpec(image_size=32, context_length=32, sampling=sampling, **{**defaults, **settings})


def test_examples_per_epoch_keeps_the_same_rows_every_epoch_in_a_fresh_order(demo_shards):
    """60 of the 400 caption rows: the same 60 distinct rows in epochs 1 and 2 (batches 0-4 and 5-9), shuffled
    afresh; the same global batches split over 2 processes, and from a resume mid-way."""
    spec = capped(examples_per_epoch=60)
    received, _ = batches(train_dataset(demo_shards["train"], spec, batch_size=12, seed=0)[0], 10)
    first, second = rows_of(received[:5]), rows_of(received[5:])
    assert len(set(first)) == 60 and set(first) == set(second) and first != second
    assert set(first) <= set(role_rows(demo_shards))
    halves = [
        batches(
            train_dataset(demo_shards["train"], spec, batch_size=6, seed=0, process_index=p, process_count=2)[0], 10
        )[0]
        for p in range(2)
    ]
    assert_same_batches([{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*halves)], received)
    resumed, _ = batches(train_dataset(demo_shards["train"], spec, batch_size=12, seed=0, start_batch=3)[0], 7)
    assert_same_batches(resumed, received[3:])
    other, _ = batches(train_dataset(demo_shards["train"], spec, batch_size=12, seed=1)[0], 5)
    assert set(rows_of(other)) != set(first)  # the subset is the seed's


def test_one_role_and_five_roles_train_on_the_same_number_of_pairs(demo_shards):
    """Role-SynthCLIP's ablation: one role (its long and short caption, rows_per_image=2) against all five
    (rows_per_image=10), 40 pairs an epoch each, every one distinct."""
    one_role = capped(rows_per_image=2, roles=(ROLE,), examples_per_epoch=40)
    five_roles = capped(examples_per_epoch=40)
    pairs = {}
    for name, spec in (("one", one_role), ("five", five_roles)):
        received, _ = batches(train_dataset(demo_shards["train"], spec, batch_size=8, seed=0)[0], 10)  # 2 epochs
        pairs[name] = [rows_of(received[:5]), rows_of(received[5:])]
        assert all(len(epoch) == len(set(epoch)) == 40 for epoch in pairs[name])
    roles = role_rows(demo_shards)
    assert {roles[row] for epoch in pairs["one"] for row in epoch} == {ROLE}
    assert len({roles[row] for row in pairs["five"][0]}) == 5


def test_examples_per_epoch_in_grouped_sampling_caps_the_images(demo_shards):
    received, _ = batches(
        train_dataset(demo_shards["train"], capped("grouped", examples_per_epoch=16), batch_size=8, seed=0)[0], 4
    )
    first, second = [np.concatenate([b["image_id"] for b in half]).tolist() for half in (received[:2], received[2:])]
    assert len(set(first)) == 16 and set(first) == set(second) and first != second


def test_examples_per_epoch_positions_that_cannot_be_built_are_filled_from_the_same_subset(demo_shards, tmp_path):
    good = list(read_shard(demo_shards["heldout"][0]))
    spec = capped("grouped", examples_per_epoch=10)
    (clean,), _ = batches(train_dataset(demo_shards["heldout"][:1], spec, batch_size=10, seed=0)[0], 1)
    subset = clean["image_id"].tolist()
    spoilt = {subset[0]: "bad_image", subset[1]: "no_captions"}
    path = spoil(good, str(tmp_path / "mixed.array_record"), spoilt)
    dataset, skips = train_dataset([path], spec, batch_size=10, seed=0)
    (batch,), _ = batches(dataset, 1)
    assert set(batch["image_id"].tolist()) == set(subset) - set(spoilt)  # 2 positions hold others of the 8 good
    assert set(skips.counts) == set(spoilt.values())


def test_examples_per_epoch_settings_that_cannot_work(demo_shards):
    with pytest.raises(DataError, match=r"config.data.examples_per_epoch 401 exceeds the 400 caption rows \(images x"):
        train_dataset(demo_shards["train"], capped(examples_per_epoch=401), batch_size=8, seed=0)
    with pytest.raises(DataError, match=r"config.data.examples_per_epoch 41 exceeds the 40 images the shards hold"):
        train_dataset(demo_shards["train"], capped("grouped", examples_per_epoch=41), batch_size=8, seed=0)
    with pytest.raises(
        DataError, match=r"examples_per_epoch 12 must be at least the global batch, config.batch_size 16"
    ):
        train_dataset(demo_shards["train"], capped(examples_per_epoch=12), batch_size=8, seed=0, process_count=2)
    with pytest.raises(DataError, match=r"config.data: examples_per_epoch must be >= 0"):
        capped(examples_per_epoch=-1)
    config = base_config()
    config.data.examples_per_epoch = config.batch_size - 1
    with pytest.raises(DataError, match=r"config.data.examples_per_epoch 255 must be at least config.batch_size 256"):
        ExampleSpec.from_config(config, ModelConfig.from_config(config))
    config.data.examples_per_epoch = config.batch_size
    assert ExampleSpec.from_config(config, ModelConfig.from_config(config)).examples_per_epoch == 256
