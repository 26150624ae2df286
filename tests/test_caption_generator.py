"""CLIPS' caption generator: its attention mask, its chunked loss, and its place in the step and the exports."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from rsclip_jax import tokenize
from rsclip_jax.accelerators.sharding import make_mesh
from rsclip_jax.config import base_config
from rsclip_jax.model.caption_generator import prefix_lm_mask
from rsclip_jax.model.clip import CLIP
from rsclip_jax.model.config import model_config
from rsclip_jax.training.step import make_train_step
from rsclip_jax.training.train_setup import TrainSetup
from rsclip_jax.weights.openai_layout import load_openai_state_dict, to_openai_state_dict

QUERIES = 8


def generator_model(**overrides):
    config = model_config(
        "tiny", context_length=16, dtype="float32", generator=True, generator_queries=QUERIES, **overrides
    )
    return CLIP(config, rngs=nnx.Rngs(0))


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    image_tokens = jnp.asarray(rng.normal(size=(2, 17, 64)), jnp.float32)
    text_tokens = jnp.asarray(rng.normal(size=(2, 6, 64)), jnp.float32)
    text_ids = jnp.asarray([[49406, 320, 1125, 49407, 0, 0], [49406, 320, 49407, 0, 0, 0]])
    return image_tokens, text_tokens, text_ids


def test_queries_see_the_prefix_and_earlier_queries_only_and_no_padding():
    model = generator_model()
    image_tokens, text_tokens, text_ids = inputs()
    reference = model.generator(image_tokens, text_tokens, text_ids)
    assert reference.shape == (2, QUERIES, 64)

    later = nnx.clone(model)
    later.generator.queries[...] = later.generator.queries[...].at[5:].add(1.0)
    changed = later.generator(image_tokens, text_tokens, text_ids)
    np.testing.assert_allclose(changed[:, :5], reference[:, :5], atol=1e-6)  # causal over the queries
    assert not np.allclose(changed[:, 5:], reference[:, 5:])

    padding = text_tokens.at[:, 4:].add(5.0)  # positions 4.. of both captions are padding (id 0)
    np.testing.assert_allclose(model.generator(image_tokens, padding, text_ids), reference, atol=1e-6)
    last_image_token = image_tokens.at[:, -1].add(1.0)  # the prefix is seen whole by the first query
    assert not np.allclose(model.generator(last_image_token, text_tokens, text_ids)[:, 0], reference[:, 0])
    assert model.generator(image_tokens).shape == (2, QUERIES, 64)  # without a web caption: the image alone


def test_the_prefix_attends_both_ways_the_queries_causally_and_no_one_to_padding():
    key_is_real = jnp.asarray([[True, False, True, True, True, True]])  # a 3-token prefix, its token 1 padding
    expected = np.array(
        [
            [1, 0, 1, 0, 0, 0],
            [1, 0, 1, 0, 0, 0],
            [1, 0, 1, 0, 0, 0],  # prefix token 2 sees prefix token 0: both ways
            [1, 0, 1, 1, 0, 0],
            [1, 0, 1, 1, 1, 0],
            [1, 0, 1, 1, 1, 1],  # the last query sees every query
        ],
        bool,
    )
    np.testing.assert_array_equal(prefix_lm_mask(3, key_is_real)[0], expected)


def test_chunked_loss_is_the_masked_mean_of_next_token_cross_entropy():
    model = generator_model()
    features = model.generator(*inputs())
    caption_ids = jnp.asarray(tokenize(["a red cube on a grey floor under a dim light", "a ring"], QUERIES + 1))
    logits = features @ model.generator.head[...]
    targets = caption_ids[:, 1:]
    per_token = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    expected = float(jnp.sum(per_token * (targets != 0)) / jnp.sum(targets != 0))
    for chunk in (1, 3, QUERIES):  # 3 does not divide 8 queries: blocks of 2
        np.testing.assert_allclose(model.generator.loss(features, caption_ids, chunk=chunk), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="expected queries \\+ 1"):
        model.generator.loss(features, caption_ids[:, :-1], chunk=4)


def clips_config():
    config = base_config()
    config.model.variant, config.model.context_length, config.model.dtype = "tiny", 16, "float32"
    config.total_steps, config.optim.lr, config.optim.warmup_steps = 10, 1e-3, 0
    config.loss.kind = "softmax_per_caption"
    config.generator.weight, config.generator.queries = 2.0, QUERIES
    return config


def test_the_step_trains_the_generator_and_logs_both_losses():
    config = clips_config()
    mesh = make_mesh((1, 1, 1))
    setup = TrainSetup.build(config, mesh)
    state = setup.init_state()
    rng = np.random.default_rng(0)
    synthetic = [f"a {c} cube beside a {d} ring in the morning light" for c, d in zip("abcd", "efgh")]
    batch = {
        "image": rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8),
        "tokens": np.stack([tokenize([f"photo {i}", s.split(" beside")[0]], 16) for i, s in enumerate(synthetic)]),
        "caption_tokens": tokenize(synthetic, QUERIES + 1),
        "image_id": np.arange(4),
    }
    step = make_train_step(setup, ("alt", "any"))
    before = jax.tree.map(np.asarray, state["params"]["generator"])
    losses = []
    for _ in range(3):
        state, metrics = step(state, batch)
        losses.append(float(metrics["generator_loss"]))
    np.testing.assert_allclose(
        metrics["loss"], metrics["contrastive_loss"] + 2.0 * metrics["generator_loss"], rtol=1e-5
    )
    assert losses[-1] < losses[0]
    moved = jax.tree.map(
        lambda a, b: not np.allclose(a, b), before, jax.tree.map(np.asarray, state["params"]["generator"])
    )
    assert all(jax.tree.leaves(moved))

    config.optim.grad_cache_chunks = 2
    with pytest.raises(ValueError, match="grad_cache_chunks > 1 does not combine"):
        make_train_step(setup, ("alt", "any"))


def test_exports_and_imports_hold_the_towers_only():
    with_generator = generator_model()
    plain = CLIP(dataclasses.replace(with_generator.config, generator=False), rngs=nnx.Rngs(0))
    exported = to_openai_state_dict(with_generator)
    assert set(exported) == set(to_openai_state_dict(plain))
    fresh = generator_model()
    fresh_generator = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(fresh.generator, nnx.Param)))
    load_openai_state_dict(fresh, exported)
    np.testing.assert_array_equal(fresh.visual.proj[...], with_generator.visual.proj[...])
    jax.tree.map(
        np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(fresh.generator, nnx.Param)), fresh_generator
    )


def test_generator_parameters_are_sharded_by_the_same_rules():
    config = clips_config()
    setup = TrainSetup.build(config, make_mesh((1, 4, 2)))
    params = setup.shardings["params"]
    assert params["generator"]["head"].spec == PartitionSpec("fsdp", "tensor")  # ("embed", "vocab")
    generator_block, text_block = (
        tower["transformer"]["resblocks"][0]["mlp"]["c_fc"]["kernel"].spec for tower in (params["generator"], params)
    )
    assert generator_block == text_block == PartitionSpec("fsdp", "tensor")
