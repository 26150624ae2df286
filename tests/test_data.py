import collections
import dataclasses

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from rsclip_jax import tokenize
from rsclip_jax.data import DataError, ExampleSpec, resolve_shards, train_dataset
from rsclip_jax.records import encode_record, read_shard

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
def test_resume_from_iterator_state_mid_epoch(demo_shards, num_workers):
    spec = dataclasses.replace(SPEC, random_resized_crop=True)
    dataset, _ = train_dataset(demo_shards["train"], spec, batch_size=6, seed=0, num_workers=num_workers)
    _, iterator = batches(dataset, 4)  # 24 of 40 records: mid-epoch
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(5)]  # crosses into the second epoch
    resumed, _ = batches(train_dataset(demo_shards["train"], spec, batch_size=6, seed=0, num_workers=num_workers)[0], 5, state)
    assert_same_batches(resumed, expected)


def test_rows_mode_yields_every_caption_once_per_epoch(demo_shards):
    spec = ExampleSpec(image_size=32, context_length=32, sampling="rows", rows_per_image=10)
    dataset, _ = train_dataset(demo_shards["train"], spec, batch_size=20, seed=0)
    epoch, _ = batches(dataset, 20)  # 40 images x 10 captions
    seen = collections.Counter(
        (int(i), tuple(t[0])) for b in epoch for i, t in zip(b["image_id"], b["tokens"])
    )
    records = [r for path in demo_shards["train"] for r in read_shard(path)]
    expected = collections.Counter(
        (i, tuple(row)) for i, r in enumerate(records) for row in tokenize([c.text for c in r.captions], 32)
    )
    assert seen == expected


def test_process_slices_make_up_the_global_batch(demo_shards):
    paths = demo_shards["train"]
    (whole,), _ = batches(train_dataset(paths, SPEC, batch_size=8, seed=0)[0], 1)
    halves = [batches(train_dataset(paths, SPEC, batch_size=4, seed=0, process_index=p, process_count=2)[0], 1)[0][0]
              for p in range(2)]
    merged = np.concatenate([h["image_id"] for h in halves])
    assert sorted(merged.tolist()) == sorted(whole["image_id"].tolist())
    for half in halves:  # the same image gets the same captions whichever process reads it
        for image_id, tokens in zip(half["image_id"], half["tokens"]):
            np.testing.assert_array_equal(tokens, whole["tokens"][list(whole["image_id"]).index(image_id)])


def test_corrupt_records_are_skipped_and_counted(demo_shards, tmp_path):
    good = list(read_shard(demo_shards["heldout"][0]))
    path = str(tmp_path / "mixed.array_record")
    writer = ArrayRecordWriter(path, "group_size:1")
    for i, record in enumerate(good):
        if i == 3:
            writer.write(encode_record(record)[:15])  # truncated record
        elif i == 5:
            writer.write(encode_record(dataclasses.replace(record, image_jpeg=b"\xff\xd8 not a jpeg")))
        elif i == 7:
            writer.write(encode_record(dataclasses.replace(record, captions=())))
        else:
            writer.write(encode_record(record))
    writer.close()
    dataset, skips = train_dataset([path], SPEC, batch_size=13, seed=0)
    (batch,), _ = batches(dataset, 1)  # the 13 good records of the first epoch
    assert sorted(batch["image_id"].tolist()) == [i for i in range(16) if i not in (3, 5, 7)]
    assert skips.counts == {"bad_record": 1, "bad_image": 1, "no_captions": 1}


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


def test_sub_caption_modes(demo_shards):
    for mode in ("sentence", "token_block"):
        spec = ExampleSpec(image_size=32, context_length=32, sub_caption=mode, sub_caption_tokens=6, kinds=("long",))
        (batch,), _ = batches(train_dataset(demo_shards["train"], spec, batch_size=8, seed=0)[0], 1)
        lengths = (batch["tokens"][:, 0] != 0).sum(axis=-1)
        if mode == "token_block":
            assert lengths.max() <= 8  # start + 6 + end
        else:
            assert lengths.max() < 32  # one sentence of a long caption fits without truncation
