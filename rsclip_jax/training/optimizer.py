"""Optax optimizer from the config: AdamW, warmup + cosine, decay mask, clipping, frozen parameters."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import optax


def path_name(path) -> str:
    """'visual.transformer.resblocks.0.attn.in_proj.kernel' for a pytree key path."""
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def learning_rate_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
    if warmup == 0:
        return optax.cosine_decay_schedule(optim.lr, max(total_steps, 1), alpha=optim.end_lr_fraction)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim.lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=optim.lr * optim.end_lr_fraction,
    )


def _labels(params, fn):
    return jax.tree_util.tree_map_with_path(lambda path, leaf: fn(path_name(path), leaf), params)


def freeze_leading_rows(name: str, rows: int) -> optax.GradientTransformation:
    """Zeroes the updates of the first `rows` rows of parameter `name` (weight decay included)."""

    def update(updates, state, params=None):
        def mask(path, update):
            if path_name(path) != name:
                return update
            return update.at[:rows].set(jnp.zeros_like(update[:rows]))

        return jax.tree_util.tree_map_with_path(mask, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(
    optim: ml_collections.ConfigDict, model, schedule: optax.Schedule, params
) -> optax.GradientTransformation:
    """The optimizer of `config.optim` for `params` (a pytree of arrays or ShapeDtypeStructs with named paths) of
    `model` (its ModelConfig: the text positions it freezes), at the learning rates of `schedule`."""
    decay = _labels(params, lambda name, leaf: optim.decay_vectors or len(leaf.shape) >= 2)
    chain = [optax.clip_by_global_norm(optim.grad_clip_norm)] if optim.grad_clip_norm > 0 else []
    chain.append(
        optax.adamw(
            schedule,
            b1=optim.b1,
            b2=optim.b2,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            mask=decay,
            mu_dtype=optim.get("mu_dtype"),
        )
    )
    if model.frozen_text_positions:
        chain.append(freeze_leading_rows("positional_embedding", model.frozen_text_positions))
    patterns = [re.compile(p) for p in optim.freeze]
    if not patterns:
        return optax.chain(*chain)
    names = [path_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for pattern in patterns:
        if not any(pattern.fullmatch(name) for name in names):
            raise ValueError(
                f"config.optim.freeze pattern {pattern.pattern!r} matches no parameter (e.g. {names[0]!r})"
            )
    frozen = _labels(params, lambda name, leaf: "frozen" if any(p.fullmatch(name) for p in patterns) else "trained")
    if "trained" not in jax.tree.leaves(frozen):
        raise ValueError(f"config.optim.freeze {list(optim.freeze)} matches every parameter: nothing would train")
    return optax.multi_transform({"trained": optax.chain(*chain), "frozen": optax.set_to_zero()}, frozen)
