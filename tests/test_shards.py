"""Caption shards as `resolve_shards` finds and checks them: copies cut short or damaged, and shards in a bucket."""

import dataclasses
import logging
import os

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter
from etils import epath

from rsclip_jax.data.example_spec import DataError, ExampleSpec
from rsclip_jax.data.pipeline import train_dataset
from rsclip_jax.data.records import ImageEmbedding, read_shard, write_shard
from rsclip_jax.data.shards import resolve_shards

KEY = "config.data.train_shards"
BLOCK = 1 << 16  # Riegeli's block: the index and postscript at a shard's end sit on these boundaries


def cut_copies(shard: str, folder) -> list[str]:
    """Copies of a real shard as an interrupted copy leaves it: truncated, its end chopped off, a piece cut out of
    its middle, each also by whole blocks (so that the length stays block-aligned)."""
    data = open(shard, "rb").read()
    quarter = len(data) // 4
    cuts = {
        "one-byte-short": data[:-1],
        "half": data[: len(data) // 2],
        "end-block-chopped": data[:-BLOCK],
        "middle-cut": data[:quarter] + data[quarter + 1000 :],
        "middle-block-cut": data[:1000] + data[1000 + BLOCK :],
    }
    paths = []
    for name, cut in cuts.items():
        path = os.path.join(folder, f"{name}.array_record")
        with open(path, "wb") as f:
            f.write(cut)
        paths.append(path)
    return paths


def test_each_cut_copy_is_one_error_naming_it(demo_shards, tmp_path):
    good = demo_shards["train"]
    for cut in cut_copies(good[0], tmp_path):
        with pytest.raises(DataError) as error:
            resolve_shards([*good, cut], KEY)
        message = str(error.value)
        assert message.startswith(f"{KEY}: caption shard {cut} is cut short or damaged"), message
        assert "config.data.skip_bad_shards=True" in message


def test_a_damaged_last_record_is_found_behind_an_intact_index(tmp_path):
    # Uncompressed, so that the last record's bytes can be found in the file and damaged; the index stays intact.
    path = str(tmp_path / "damaged.array_record")
    records = [bytes([i]) * 3000 for i in range(30)]
    writer = ArrayRecordWriter(path, "group_size:1,uncompressed")
    for record in records:
        writer.write(record)
    writer.close()
    data = open(path, "rb").read()
    at = data.rfind(records[-1])
    with open(path, "wb") as f:
        f.write(data[:at] + bytes(len(records[-1])) + data[at + len(records[-1]) :])
    with pytest.raises(DataError, match=f"caption shard {path} is cut short or damaged .*chunk data hash mismatch"):
        resolve_shards(path, KEY)


def test_skip_bad_shards_names_each_and_counts_them(demo_shards, tmp_path, caplog):
    good = demo_shards["train"]
    cuts = cut_copies(good[0], tmp_path)
    with caplog.at_level(logging.WARNING):
        shards, bad = resolve_shards([*good, str(tmp_path / "*.array_record")], KEY, skip_bad=True)
    assert shards == {path: len(list(read_shard(path))) for path in good} and bad == sorted(cuts)
    for cut in cuts:
        assert f"skipping caption shard {cut}: it is cut short or damaged" in caplog.text
    assert f"skipped {len(cuts)} of {len(cuts) + len(good)} caption shards of {KEY}" in caplog.text
    with pytest.raises(DataError, match=f"{KEY}: none of its {len(cuts)} caption shards can be read"):
        resolve_shards(cuts, KEY, skip_bad=True)


def test_shards_in_a_bucket_are_listed_checked_and_read(demo_shards, gcs_bucket):
    folder = epath.Path(gcs_bucket) / "shards"
    for path in demo_shards["train"]:
        (folder / os.path.basename(path)).write_bytes(open(path, "rb").read())
    (folder / "train-cut.array_record").write_bytes(open(demo_shards["train"][0], "rb").read()[:-1])
    pattern = f"{folder}/train-*.array_record"
    with pytest.raises(DataError, match=f"caption shard {folder}/train-cut.array_record is cut short"):
        resolve_shards(pattern, KEY)

    shards, bad = resolve_shards(pattern, KEY, skip_bad=True)
    paths = list(shards)
    assert paths == [f"{folder}/{os.path.basename(path)}" for path in demo_shards["train"]]
    assert bad == [f"{folder}/train-cut.array_record"]
    # Read through ArrayRecord's own Cloud Storage reader: the same batches as from the local copies.
    spec = ExampleSpec(image_size=32, context_length=32)
    from_bucket = next(iter(train_dataset(paths, spec, batch_size=8, seed=0, records_per_shard=[*shards.values()])[0]))
    local = next(iter(train_dataset(demo_shards["train"], spec, batch_size=8, seed=0)[0]))
    for key in local:
        np.testing.assert_array_equal(from_bucket[key], local[key])


def test_shards_of_captions_only_or_embeddings_are_refused_naming_the_field(demo_shards, tmp_path):
    records = list(read_shard(demo_shards["heldout"][0]))[:2]
    captions_only = str(tmp_path / "synthesized.array_record")
    write_shard(captions_only, [dataclasses.replace(r, image_jpeg=None, original_size=None) for r in records])
    with pytest.raises(
        DataError, match=f"caption shard {captions_only} holds captions of imagined images .* no image_jpeg"
    ):
        resolve_shards(captions_only, KEY)
    pairs = str(tmp_path / "pairs.array_record")
    embedding = ImageEmbedding("final", np.zeros(8, np.float16))
    write_shard(
        pairs, [dataclasses.replace(r, image_jpeg=None, original_size=None, image_embedding=embedding) for r in records]
    )
    with pytest.raises(
        DataError, match=f"caption shard {pairs} holds synthetic pairs, image_embedding in place of image_jpeg"
    ):
        resolve_shards(pairs, KEY)
