"""The generator's objective and sampler: rectified flow (flow matching on straight paths).

Along x_t = (1 - t) * noise + t * x, from noise at t = 0 to the (standardised) embedding at t = 1, the model
predicts the velocity x - noise, with a mean squared error. Flow matching rather than diffusion: one line of
interpolation, no noise schedule to choose, and straight paths that few Euler steps follow well. t is drawn
logit-normal by default (generator.TIME_DISTRIBUTIONS). Sampling integrates dx/dt = v from noise with Euler
steps and classifier-free guidance, v = v_uncond + guidance * (v_cond - v_uncond), the unconditional velocity
being the null text's (trained by caption dropout).
"""

import jax
import jax.numpy as jnp

from rsclip_jax.model.layers import l2_normalize
from rsclip_jax.synth2.generator import EmbeddingGenerator


def sample_times(rng, batch: int, distribution: str):
    """t [batch] in (0, 1): logit-normal(0, 1), or uniform."""
    if distribution == "logit_normal":
        return jax.nn.sigmoid(jax.random.normal(rng, (batch,)))
    return jax.random.uniform(rng, (batch,))


def flow_matching_loss(model: EmbeddingGenerator, embeddings, text_tokens, text_mask, rng):
    """embeddings [B, *shape] (as the records hold them) and their captions (text_tokens [B, L, text_width],
    text_mask [B, L]) -> (the mean squared velocity error in the flow's space, metrics). Each row's caption is
    replaced by the null text with probability config.caption_dropout."""
    config = model.config
    batch = embeddings.shape[0]
    noise_rng, time_rng, drop_rng = jax.random.split(rng, 3)
    x = model.normalize(embeddings)
    noise = jax.random.normal(noise_rng, x.shape, jnp.float32)
    t = sample_times(time_rng, batch, config.time_distribution)
    drop = jax.random.bernoulli(drop_rng, config.caption_dropout, (batch,))
    text_tokens, text_mask = model.with_null_text(text_tokens, text_mask, drop)
    along = t.reshape(batch, *(1,) * (x.ndim - 1))
    x_t = (1 - along) * noise + along * x
    velocity = model(x_t, t, text_tokens, text_mask)
    loss = jnp.mean(jnp.square(velocity - (x - noise)))
    return loss, {"loss": loss, "caption_dropped": jnp.mean(drop.astype(jnp.float32))}


def guided_velocity(model: EmbeddingGenerator, x_t, t, text_tokens, text_mask, guidance):
    """v_uncond + guidance * (v_cond - v_uncond), both from one call over the batch twice (the second half with the
    null text); a Python `guidance` of 1 runs the conditional half alone."""
    if isinstance(guidance, (int, float)) and guidance == 1:
        return model(x_t, t, text_tokens, text_mask)
    batch = x_t.shape[0]
    null_tokens, null_mask = model.with_null_text(text_tokens, text_mask, jnp.ones((batch,), bool))
    both = model(
        jnp.concatenate([x_t, x_t]),
        jnp.concatenate([t, t]),
        jnp.concatenate([text_tokens, null_tokens]),
        jnp.concatenate([text_mask.astype(bool), null_mask]),
    )
    conditional, unconditional = both[:batch], both[batch:]
    return unconditional + guidance * (conditional - unconditional)


def sample(model: EmbeddingGenerator, text_tokens, text_mask, rng, *, steps: int, guidance):
    """Embeddings [B, *shape] of the captions (text_tokens [B, L, text_width], text_mask [B, L]): `steps` Euler steps
    from noise (t = 0) to t = 1 under classifier-free guidance, back out of the flow's space; L2-normalised at
    "final", as the targets are. The same `rng` gives the same embeddings."""
    if steps < 1:
        raise ValueError(f"sample steps {steps} must be at least 1")
    config = model.config
    batch = text_tokens.shape[0]
    x = jax.random.normal(rng, (batch, *config.embedding_shape), jnp.float32)
    dt = 1.0 / steps

    def step(i, x):
        t = jnp.full((batch,), i * dt, jnp.float32)
        return x + dt * guided_velocity(model, x, t, text_tokens, text_mask, guidance)

    embeddings = model.denormalize(jax.lax.fori_loop(0, steps, step, x))
    return l2_normalize(embeddings) if config.is_vector else embeddings
