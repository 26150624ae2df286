import numpy as np

from rsclip_jax.demo_corpus import CAPTION_MODEL, ROLES, random_scene, role_captions
from rsclip_jax.records import read_shard
from rsclip_jax.preprocess import decode_image


def test_every_record_has_a_long_and_a_short_caption_per_role(demo_shards):
    records = [r for path in demo_shards["train"] + demo_shards["heldout"] for r in read_shard(path)]
    assert len(records) == 56 and len({r.image_id for r in records}) == 56
    for record in records:
        assert sorted((c.role, c.kind) for c in record.captions) == sorted((r, k) for r in ROLES for k in ("long", "short"))
        assert all(c.model == CAPTION_MODEL for c in record.captions)  # labelled as procedural captions
        assert decode_image(record.image_jpeg).size == record.original_size


def test_captions_name_what_is_drawn():
    scene = random_scene(np.random.default_rng(3))
    for (role, kind), text in role_captions(scene).items():
        assert scene.objects[0].colour in text and scene.objects[0].shape in text, (role, kind, text)
