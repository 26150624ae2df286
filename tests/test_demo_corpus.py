import numpy as np

from rsclip_jax.data.preprocess import decode_image
from rsclip_jax.data.records import read_shard
from rsclip_jax.demo.corpus import (
    CAPTION_MODEL,
    COLOURS,
    ROLES,
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
