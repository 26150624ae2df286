import dataclasses
import subprocess
import sys

import msgpack
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from rsclip_jax.data import records
from rsclip_jax.data.records import (
    Caption,
    CaptionRecord,
    ImageEmbedding,
    RecordError,
    decode_record,
    encode_record,
    read_shard,
    write_shard,
)


def make_record(i=0):
    return CaptionRecord(
        image_id=f"images/{i:05d}.jpg",
        image_jpeg=b"\xff\xd8\xff\xe0 fake jpeg bytes \x00\x01" + bytes([i % 256]),
        original_size=(640, 480),
        alt_text="a dog on a beach" if i % 2 else None,
        captions=(
            Caption("Observer of Details", "long", "A brown dog with a red collar ...", "Qwen2.5-VL-7B-Instruct", "v1"),
            Caption(
                "Emotional Responder",
                "short",
                "A joyful dog at play.",
                "Qwen2.5-VL-7B-Instruct",
                "v1",
                judge_score=87.5,
                judge_rationale="matches the mood",
            ),
        ),
    )


def test_round_trip_through_a_shard(tmp_path):
    path = tmp_path / "captions-00000.array_record"
    originals = [make_record(i) for i in range(5)]
    assert write_shard(path, originals) == 5
    assert list(read_shard(path)) == originals


def test_decode_rejects_each_kind_of_defect():
    good = msgpack.unpackb(encode_record(make_record()))

    def encoded(**changes):
        return msgpack.packb({**good, **changes}, use_bin_type=True)

    missing_captions = {k: v for k, v in good.items() if k != "captions"}
    cases = [
        (encoded(schema_version=records.SCHEMA_VERSION + 1), f"schema version {records.SCHEMA_VERSION + 1}.*upgrade"),
        (encode_record(make_record())[:-7], "not a valid msgpack record"),
        (b"\xc1\x00garbage\x93", "not a valid msgpack record"),
        (msgpack.packb([1, 2, 3]), "record is a list, expected a map"),
        (msgpack.packb(missing_captions, use_bin_type=True), "missing field 'captions'"),
        (encoded(image_jpeg="not bytes"), "field 'image_jpeg' is str, expected bytes"),
        (encoded(original_size=[640]), "original_size must be"),
        (encoded(captions=[{**good["captions"][0], "kind": "medium"}]), "caption 0 has kind 'medium'"),
        (
            encoded(captions=[{k: v for k, v in good["captions"][1].items() if k != "role"}]),
            "caption 0 is missing field 'role'",
        ),
        (encoded(captions=[{**good["captions"][1], "judge_score": "high"}]), "field 'judge_score' is str"),
        (encoded(captions=[{**good["captions"][1], "judge_score": True}]), "field 'judge_score' is bool"),
        (encoded(captions=["a dog on a beach"]), "caption 0 is a str, expected a map"),
        (encoded(schema_version=True), "field 'schema_version' is bool, expected int"),
    ]
    for data, message in cases:
        with pytest.raises(RecordError, match=f"shard s.array_record, record 7: .*{message}"):
            decode_record(data, shard="s.array_record", index=7)
    # A later writer's extra fields are passed over.
    later = encoded(camera="x100", captions=[{**good["captions"][0], "language": "en"}])
    assert decode_record(later).captions == (make_record().captions[0],)


def test_records_without_an_image_round_trip_as_version_2_and_image_records_stay_version_1(tmp_path):
    """Version-1 readers keep reading shards of images; captions of imagined images (`captioning synthesize`) and
    pairs that carry an image embedding need version 2, which such a reader refuses as newer than it knows."""
    captions_only = dataclasses.replace(make_record(1), image_jpeg=None, original_size=None)
    embedded = [
        dataclasses.replace(captions_only, image_embedding=ImageEmbedding("final", np.arange(4, dtype=np.float16))),
        dataclasses.replace(make_record(2), image_embedding=ImageEmbedding("tokens:3", np.ones((5, 4), np.float32))),
    ]
    assert msgpack.unpackb(encode_record(make_record()))["schema_version"] == 1
    for record in (captions_only, *embedded):
        assert msgpack.unpackb(encode_record(record))["schema_version"] == 2
    path = tmp_path / "mixed.array_record"
    write_shard(path, [make_record(0), captions_only, *embedded])
    plain, no_image, final, tokens = read_shard(path)
    assert plain == make_record(0) and no_image == captions_only and no_image.content == "captions only"
    assert final.content == "image_embedding" and final.image_embedding.depth == "final"
    np.testing.assert_array_equal(final.image_embedding.values, np.arange(4, dtype=np.float16))
    assert tokens.content == "image" and tokens.image_embedding.values.shape == (5, 4)


def test_image_embedding_defects_are_named():
    good = msgpack.unpackb(
        encode_record(
            dataclasses.replace(make_record(), image_embedding=ImageEmbedding("tokens:2", np.zeros((3, 2), np.float32)))
        )
    )
    embedding = good["image_embedding"]
    cases = [
        ({**good, "image_jpeg": None}, "image_jpeg and original_size must both be given or both be nil"),
        ({**good, "image_embedding": {**embedding, "dtype": "int8"}}, "dtype 'int8' must be one of"),
        ({**good, "image_embedding": {**embedding, "shape": [4, 2]}}, r"does not hold its shape \[4, 2\]"),
        ({**good, "image_embedding": {**embedding, "depth": "layer:2"}}, "'layer:2' must be 'final' or 'tokens:K'"),
        ({**good, "image_embedding": {**embedding, "shape": [6]}}, "tokens:2' is a 2-D array"),
    ]
    for obj, message in cases:
        with pytest.raises(RecordError, match=f"record 0: .*{message}"):
            decode_record(msgpack.packb(obj, use_bin_type=True))


def test_read_shard_names_the_corrupt_record(tmp_path):
    path = str(tmp_path / "bad.array_record")
    writer = ArrayRecordWriter(path, "group_size:1")
    writer.write(encode_record(make_record(0)))
    writer.write(encode_record(make_record(1))[:20])
    writer.close()
    reader = read_shard(path)
    assert next(reader) == make_record(0)
    with pytest.raises(RecordError, match=f"shard {path}, record 1: not a valid msgpack record"):
        next(reader)


def test_missing_shard_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="caption shard .*nope.array_record does not exist"):
        list(read_shard(tmp_path / "nope.array_record"))


def test_encode_rejects_unknown_kind():
    bad = dataclasses.replace(make_record(), captions=(Caption("r", "tiny", "t", "m", "v1"),))
    with pytest.raises(ValueError, match="caption kind 'tiny'"):
        encode_record(bad)


def test_schema_imports_without_jax_or_vllm():
    code = (
        "import sys, rsclip_jax.data.records, captioning;"
        "heavy = [m for m in ('jax', 'flax', 'vllm', 'torch') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
