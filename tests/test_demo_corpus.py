import numpy as np
import pytest

from rsclip_jax.data.preprocess import decode_image
from rsclip_jax.data.records import read_shard
from rsclip_jax.demo.corpus import (
    CAPTION_MODEL,
    COLOURS,
    ROLES,
    draw_scene,
    holds_combo,
    random_scene,
    role_captions,
    web_alt_text,
    write_demo_corpus,
)


def test_every_record_has_a_long_and_a_short_caption_per_role(demo_shards):
    records = [r for path in demo_shards["train"] + demo_shards["heldout"] for r in read_shard(path)]
    assert len(records) == 56 and len({r.image_id for r in records}) == 56
    for record in records:
        assert sorted((c.role, c.kind) for c in record.captions) == sorted(
            (r, k) for r in ROLES for k in ("long", "short")
        )
        assert all(c.model == CAPTION_MODEL for c in record.captions)  # labelled as procedural captions
        assert decode_image(record.image_jpeg).size == record.original_size


def test_captions_name_what_is_drawn():
    scene = random_scene(np.random.default_rng(3))
    for (role, kind), text in role_captions(scene).items():
        assert scene.objects[0].colour in text and scene.objects[0].shape in text, (role, kind, text)


def test_alt_text_leaves_the_scenes_and_captions_as_they_were(demo_shards):
    records = [r for path in demo_shards["train"] + demo_shards["heldout"] for r in read_shard(path)]
    rng = np.random.default_rng(0)  # the corpus' seed: its scene stream is not touched by the alt text
    for record in records:
        expected = role_captions(random_scene(rng))
        assert {(c.role, c.kind): c.text for c in record.captions} == expected


def test_web_alt_text_is_short_noisy_and_sometimes_missing(demo_shards):
    records = [r for path in demo_shards["train"] + demo_shards["heldout"] for r in read_shard(path)]
    alt = [r.alt_text for r in records]
    assert 0 < alt.count(None) < len(alt) // 4
    words = [len(a.split()) for a in alt if a]
    long_words = [len(c.text.split()) for r in records for c in r.captions if c.kind == "long"]
    assert max(words) <= 12 and sum(words) / len(words) < sum(long_words) / len(long_words) / 3
    scenes = [random_scene(np.random.default_rng(i)) for i in range(200)]
    rng = np.random.default_rng(1)
    texts = [(scene, web_alt_text(scene, rng)) for scene in scenes]
    right = sum(bool(t) and t.split()[0] == s.objects[0].colour for s, t in texts)
    wrong = sum(bool(t) and t.split()[0] in COLOURS and t.split()[0] != s.objects[0].colour for s, t in texts)
    assert right > 100 and wrong > 5  # mostly the first object's colour, now and then another


def test_a_corpus_of_another_image_side_holds_the_same_scenes_and_captions(demo_shards, tmp_path):
    smaller = write_demo_corpus(str(tmp_path), num_train=40, num_heldout=16, records_per_shard=25, image_size=36)
    pairs = [
        (record, other)
        for split in ("train", "heldout")
        for ours, theirs in zip(smaller[split], demo_shards[split])
        for record, other in zip(read_shard(ours), read_shard(theirs))
    ]
    assert len(pairs) == 56
    for record, other in pairs:
        assert decode_image(record.image_jpeg).size == record.original_size == (36, 36)
        assert (record.captions, record.alt_text) == (other.captions, other.alt_text)


def test_combinations_held_out_of_training_make_up_an_unseen_split(demo_shards, tmp_path):
    combos = (("red", "circle"), ("blue", "square"))
    paths = write_demo_corpus(
        str(tmp_path), num_train=40, num_heldout=16, records_per_shard=25, held_out_combos=combos, num_unseen=12
    )
    records = {split: [r for path in paths[split] for r in read_shard(path)] for split in paths}
    assert {split: len(r) for split, r in records.items()} == {"train": 40, "heldout": 16, "unseen": 12}
    assert len({r.image_id for split in records.values() for r in split}) == 68
    rng = np.random.default_rng(0)  # one stream of scenes, those that do not qualify for their split dropped
    for split in ("train", "heldout", "unseen"):
        for record in records[split]:
            scene = draw_scene(rng, combos, require=split == "unseen")
            assert holds_combo(scene, combos) == (split == "unseen")
            assert {(c.role, c.kind): c.text for c in record.captions} == role_captions(scene)
    default = [r for path in demo_shards["train"] for r in read_shard(path)]
    kept = [r for r in default if not any(f"{c} {s}" in r.captions[0].text for c, s in combos)]
    assert [r.captions for r in records["train"][: len(kept)]] == [r.captions for r in kept]  # the default stream


def test_held_out_combinations_must_exist_and_an_unseen_split_needs_them(tmp_path):
    with pytest.raises(ValueError, match="must be \\(colour, shape\\) pairs"):
        write_demo_corpus(str(tmp_path), num_train=4, num_heldout=4, held_out_combos=(("red", "hexagon"),))
    with pytest.raises(ValueError, match="at least one where num_unseen > 0"):
        write_demo_corpus(str(tmp_path), num_train=4, num_heldout=4, num_unseen=4)
