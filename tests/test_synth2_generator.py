"""Synth²'s generator of image embeddings: shapes at both depths, the null text, classifier-free guidance, a small
fit that sampling reproduces, and the config from ml_collections and a CLIP's ModelConfig."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from rsclip_jax.model.config import model_config
from rsclip_jax.synth2.flow_matching import flow_matching_loss, guided_velocity, sample
from rsclip_jax.synth2.generator import EmbeddingGenerator, GeneratorConfig

# One size everywhere (the tokens depth's embedding shape aside), so that the tests share their compiled programs.
TEXT_WIDTH, TEXT_LENGTH, DIM, BATCH = 16, 6, 16, 4


def generator(depth="final", shape=(DIM,), **overrides):
    fields = dict(width=32, layers=2, heads=2, dtype="float32") | overrides
    config = GeneratorConfig(depth=depth, embedding_shape=shape, text_width=TEXT_WIDTH, **fields)
    return EmbeddingGenerator(config, rngs=nnx.Rngs(0))


def captions(batch=BATCH, seed=0):
    """Random text-tower tokens, and masks with 3 to TEXT_LENGTH real tokens (padding after end-of-text)."""
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.normal(size=(batch, TEXT_LENGTH, TEXT_WIDTH)), jnp.float32)
    lengths = rng.integers(3, TEXT_LENGTH + 1, size=batch)
    return tokens, jnp.asarray(np.arange(TEXT_LENGTH)[None] < lengths[:, None])


def randomized(model):
    """The model with its weights moved off their initial values (not its embedding statistics): the adaLN gates
    and the output projection start at zero (a zero velocity), and the tests below must see the text and the time
    flow through every block. (NumPy's noise: JAX's would compile a program for every parameter shape.)"""
    rng = np.random.default_rng(1)
    statistics = {"embedding_mean", "embedding_std"}

    def perturb(path, p):
        return p if path[0].key in statistics else jnp.asarray(p + 0.1 * rng.normal(size=p.shape), p.dtype)

    nnx.update(model, jax.tree_util.tree_map_with_path(perturb, nnx.state(model, nnx.Param)))
    return model


# Compiled whole: op by op, a tiny model's first calls compile for many seconds.
velocity_of = nnx.jit(lambda model, *inputs: model(*inputs))
null_text_of = nnx.jit(lambda model, *inputs: model.with_null_text(*inputs))
loss_of = nnx.jit(lambda model, *inputs: flow_matching_loss(model, *inputs))
sample_of = nnx.jit(sample, static_argnames=("steps", "guidance"))


@pytest.fixture(scope="module")
def vector_model():
    return randomized(generator())


@pytest.mark.parametrize(
    "depth,shape,layout", [("final", (DIM,), {}), ("tokens:1", (5, 12), dict(scan_layers=True, remat_policy="nothing"))]
)
def test_velocity_loss_and_samples_have_the_embedding_shape(depth, shape, layout):
    model = randomized(generator(depth, shape, **layout))
    text_tokens, text_mask = captions()
    x_t, t = jax.random.normal(jax.random.key(0), (BATCH, *shape)), jnp.linspace(0.1, 0.9, BATCH)
    velocity = velocity_of(model, x_t, t, text_tokens, text_mask)
    assert velocity.shape == (BATCH, *shape) and velocity.dtype == jnp.float32
    if layout:  # the blocks as one scan under remat: the numbers of the blocks run one after another
        plain = nnx.clone(model)
        plain.config = dataclasses.replace(model.config, scan_layers=False, remat_policy="off")
        np.testing.assert_allclose(velocity_of(plain, x_t, t, text_tokens, text_mask), velocity, atol=1e-5)
    loss, metrics = loss_of(model, x_t, text_tokens, text_mask, jax.random.key(1))
    assert loss.shape == () and np.isfinite(loss) and set(metrics) == {"loss", "caption_dropped"}
    samples = sample_of(model, text_tokens, text_mask, jax.random.key(2), steps=3, guidance=2.0)
    assert samples.shape == (BATCH, *shape)
    if depth == "final":
        np.testing.assert_allclose(np.linalg.norm(samples, axis=-1), 1.0, rtol=1e-5)


def test_padding_is_ignored_and_dropped_rows_read_the_null_text_alone(vector_model):
    model = vector_model
    text_tokens, text_mask = captions()
    x_t, t = jax.random.normal(jax.random.key(0), (BATCH, DIM)), jnp.linspace(0.2, 0.8, BATCH)
    reference = velocity_of(model, x_t, t, text_tokens, text_mask)
    padded = text_tokens + 5.0 * (~text_mask)[:, :, None]
    np.testing.assert_allclose(velocity_of(model, x_t, t, padded, text_mask), reference, atol=1e-5)

    drop = jnp.array([True, False, True, False])
    dropped = velocity_of(model, x_t, t, *null_text_of(model, text_tokens, text_mask, drop))
    dropped_other = velocity_of(model, x_t, t, *null_text_of(model, *captions(seed=1), drop))
    np.testing.assert_allclose(dropped_other[::2], dropped[::2], atol=1e-6)  # the null text, whatever the caption
    np.testing.assert_allclose(dropped[1::2], reference[1::2], atol=1e-6)  # their own captions
    assert not np.allclose(dropped[::2], reference[::2], atol=1e-3)
    assert not np.allclose(dropped_other[1::2], dropped[1::2], atol=1e-3)


def test_with_full_caption_dropout_the_loss_ignores_the_caption(vector_model):
    embeddings = jax.random.normal(jax.random.key(0), (BATCH, DIM))
    always_dropped = nnx.clone(vector_model)
    always_dropped.config = dataclasses.replace(vector_model.config, caption_dropout=1.0)
    for model, same in ((always_dropped, True), (vector_model, False)):  # at 0.1 here: one row of four
        losses = [loss_of(model, embeddings, *captions(seed=seed), jax.random.key(3)) for seed in (0, 1)]
        assert (float(losses[0][1]["caption_dropped"]) == 1.0) == same
        assert np.isclose(losses[0][0], losses[1][0], rtol=1e-6) == same


def test_guidance_one_is_the_conditional_velocity_and_guidance_mixes_in_the_null_text(vector_model):
    model = vector_model
    text_tokens, text_mask = captions()
    x_t, t = jax.random.normal(jax.random.key(0), (BATCH, DIM)), jnp.linspace(0.2, 0.8, BATCH)
    conditional = velocity_of(model, x_t, t, text_tokens, text_mask)
    unconditional = velocity_of(model, x_t, t, *null_text_of(model, text_tokens, text_mask, jnp.ones(BATCH, bool)))
    guided = nnx.jit(guided_velocity)
    np.testing.assert_allclose(guided(model, x_t, t, text_tokens, text_mask, 1.0), conditional, atol=1e-5)
    np.testing.assert_allclose(
        guided(model, x_t, t, text_tokens, text_mask, 3.0),
        unconditional + 3.0 * (conditional - unconditional),
        atol=1e-5,
    )

    # Sampling at guidance 1: Euler steps along the conditional velocity alone, from the same noise.
    steps, rng = 4, jax.random.key(5)
    x = jax.random.normal(rng, (BATCH, DIM))
    for i in range(steps):
        x = x + velocity_of(model, x, jnp.full((BATCH,), i / steps), text_tokens, text_mask) / steps
    x = np.asarray(model.denormalize(x))
    expected = x / np.linalg.norm(x, axis=-1, keepdims=True)
    np.testing.assert_allclose(
        sample_of(model, text_tokens, text_mask, rng, steps=steps, guidance=1), expected, atol=1e-5
    )


def test_sampling_is_deterministic_for_a_fixed_rng(vector_model):
    text_tokens, text_mask = captions()
    run = lambda rng: sample_of(vector_model, text_tokens, text_mask, rng, steps=3, guidance=2.0)
    np.testing.assert_array_equal(run(jax.random.key(0)), run(jax.random.key(0)))
    assert not np.allclose(run(jax.random.key(0)), run(jax.random.key(1)))


def test_fitting_a_few_pairs_lowers_the_loss_and_sampling_reproduces_their_embeddings():
    model = generator()
    text_tokens, text_mask = captions()
    targets = jax.random.normal(jax.random.key(7), (BATCH, DIM))
    targets = targets / jnp.linalg.norm(targets, axis=-1, keepdims=True)
    graphdef, params = nnx.split(model, nnx.Param)  # all of it: the project's train state holds nnx.Params alone
    optimizer = optax.adam(3e-3)

    @jax.jit
    def fit(params, rng):
        def train_step(carry, step_rng):
            params, opt_state = carry

            def loss_fn(params):
                # The batch four times over, each copy with its own noise and time: a less noisy gradient.
                tiled = [jnp.tile(x, (4,) + (1,) * (x.ndim - 1)) for x in (targets, text_tokens, text_mask)]
                return flow_matching_loss(nnx.merge(graphdef, params), *tiled, step_rng)[0]

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(train_step, (params, optimizer.init(params)), jax.random.split(rng, 200))
        return params, losses

    params, losses = fit(params, jax.random.key(0))
    first, last = float(losses[:20].mean()), float(losses[-20:].mean())
    assert last < 0.5 * first, (first, last)

    trained = nnx.merge(graphdef, params)
    for name in ("embedding_mean", "embedding_std"):  # no gradient reaches the statistics
        np.testing.assert_array_equal(getattr(trained, name)[...], getattr(model, name)[...])
    samples = sample_of(trained, text_tokens, text_mask, jax.random.key(11), steps=4, guidance=1)
    cosines = np.sum(np.asarray(samples) * np.asarray(targets), axis=-1)
    # Two random unit vectors in 16 dimensions have a cosine of mean 0 and std 0.25: every pair's sample must lie far
    # above that (0.99 and more with five other seeds of the fit, the captions and the targets).
    assert cosines.min() > 0.9, cosines


def test_statistics_standardise_each_channel():
    model = generator("tokens:1", (5, 12))
    embeddings = np.random.default_rng(0).normal(size=(50, 5, 12)) * np.geomspace(0.01, 100, 12) + np.arange(12)
    model.set_statistics(embeddings)
    standardised = np.asarray(model.normalize(jnp.asarray(embeddings))).reshape(-1, 12)
    np.testing.assert_allclose(standardised.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(standardised.std(axis=0), 1.0, atol=1e-4)
    np.testing.assert_allclose(model.denormalize(standardised), embeddings.reshape(-1, 12), rtol=1e-4, atol=1e-4)


def test_config_from_a_config_section_and_a_clip_model_config():
    clip = model_config("tiny")  # embed_dim 32, 32 px images of 8 px patches, 2 image blocks of width 64
    section = ml_collections.ConfigDict(dict(depth="final", width=32, layers=2, heads=2, caption_dropout=0.1))
    config = GeneratorConfig.from_config(section, clip)
    assert (config.embedding_shape, config.text_width, config.caption_dropout) == ((32,), 64, 0.1)
    section.depth = "tokens:2"
    config = GeneratorConfig.from_config(section, clip)
    assert config.embedding_shape == (1 + 4 * 4, 64) and config.sequence_length == 17
    model = nnx.eval_shape(lambda: EmbeddingGenerator(config, rngs=nnx.Rngs(0)))
    velocity = nnx.eval_shape(
        lambda model: model(jnp.zeros((1, 17, 64)), jnp.zeros(1), jnp.zeros((1, 3, 64)), jnp.ones((1, 3), bool)), model
    )
    assert velocity.shape == (1, 17, 64)

    for depth in ("tokens:3", "tokens", "pooled"):
        section.depth = depth
        with pytest.raises(ValueError, match=r"config\.synth2_generator\.depth"):
            GeneratorConfig.from_config(section, clip)
    section.depth, section.heads = "final", 3
    with pytest.raises(ValueError, match=r"config\.synth2_generator: .*width 32 is not divisible by its heads 3"):
        GeneratorConfig.from_config(section, clip)
