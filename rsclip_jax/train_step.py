"""The jitted training step: loss from the config, gradient accumulation, NaN guard, logit-scale clamp."""

from functools import partial

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from rsclip_jax.losses import contrastive_loss, primary_components, sharded_contrastive_loss
from rsclip_jax.preprocess import normalize_images
from rsclip_jax.sharding import BATCH_AXES
from rsclip_jax.train_state import TrainSetup


def batch_sharding(mesh) -> NamedSharding:
    """Examples split over every data-parallel axis (data and fsdp); the rest of each array whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


SHARDED_LOSS_MIN_BATCH = 1024


def uses_sharded_loss(config: ml_collections.ConfigDict, mesh) -> bool:
    choice = config.loss.sharded
    if choice not in ("auto", "on", "off"):
        raise ValueError(f"config.loss.sharded must be 'auto', 'on' or 'off', not {choice!r}")
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    return choice == "on" or (choice == "auto" and data_parallel > 1 and config.batch_size >= SHARDED_LOSS_MIN_BATCH)


def training_loss(config: ml_collections.ConfigDict, model, batch, slot_kinds: tuple[str, ...], mesh):
    image_emb, text_emb = model(normalize_images(batch["image"]), batch["tokens"])
    loss_fn = contrastive_loss
    if uses_sharded_loss(config, mesh):
        loss_fn = partial(sharded_contrastive_loss, mesh=mesh, row_chunk=config.loss.row_chunk)
    kwargs = dict(
        kind=config.loss.kind, image_ids=batch["image_id"], label_smoothing=config.loss.label_smoothing,
        logit_bias=model.logit_bias[...] if hasattr(model, "logit_bias") else None,
    )
    scale = model.logit_scale[...]
    components = config.loss.short_caption_components
    if not components:
        return loss_fn(image_emb, text_emb, scale, **kwargs)
    short = [i for i, kind in enumerate(slot_kinds) if kind == "short"]
    fine = [i for i, kind in enumerate(slot_kinds) if kind != "short"]
    return loss_fn(image_emb, text_emb[:, fine], scale, **kwargs) + loss_fn(
        primary_components(image_emb, components), text_emb[:, short], scale, **kwargs
    )


def make_train_step(config, setup: TrainSetup, slot_kinds, schedule, mesh):
    """jit(state, batch) -> (state, metrics), with explicit shardings and the input state donated."""
    accum = config.optim.accum_steps

    def loss_fn(params, batch):
        # Traced under the mesh, so the model can pin its activations to the batch axes (constrain_batch).
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return training_loss(config, nnx.merge(setup.graphdef, params), batch, slot_kinds, mesh)

    grad_fn = jax.value_and_grad(loss_fn)

    def loss_and_grads(params, batch):
        if accum == 1:
            return grad_fn(params, batch)
        # Micro-batch a takes rows a, a + accum, ...: every device keeps an equal share of each.
        micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(-1, accum, *x.shape[1:]), 0, 1), batch)

        def add(carry, micro_batch):
            loss, grads = grad_fn(params, micro_batch)
            return jax.tree.map(jnp.add, carry, (loss, grads)), None

        zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
        (loss, grads), _ = jax.lax.scan(add, zeros, micro)
        return jax.tree.map(lambda x: x / accum, (loss, grads))

    def step(state, batch):
        params = state["params"]
        loss, grads = loss_and_grads(params, batch)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = setup.optimizer.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        new_params["logit_scale"] = jnp.clip(new_params["logit_scale"], 0.0, config.model.max_logit_scale)
        # A non-finite step changes nothing and is remembered, so no bad state can reach a checkpoint.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        number = state["step"] + 1
        new_state = {
            "params": keep(new_params, params),
            "opt_state": keep(opt_state, state["opt_state"]),
            "step": number,
            "nonfinite_step": jnp.where((state["nonfinite_step"] < 0) & ~finite, number, state["nonfinite_step"]),
        }
        metrics = {
            "loss": loss, "grad_norm": grad_norm, "learning_rate": schedule(state["step"]),
            "logit_scale": jnp.exp(new_state["params"]["logit_scale"]),
        }
        return new_state, metrics

    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        step, in_shardings=(setup.shardings, batch_sharding(mesh)), out_shardings=(setup.shardings, replicated),
        donate_argnums=0,
    )
