"""The jitted training step: loss from the config (with CLIPS' caption generator's), gradient accumulation,
gradient caching, NaN guard, the optional logit-scale clamp."""

from functools import partial

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from rsclip_jax.accelerators.sharding import BATCH_AXES, activation_sharding
from rsclip_jax.data.caption_sampling import ALT_SLOT
from rsclip_jax.data.preprocess import normalize_images
from rsclip_jax.synth2.mixing import mixed_image_ids, synthetic_image_embeddings
from rsclip_jax.training.losses import (
    PCA_SCOPES,
    block_size,
    contrastive_loss,
    primary_components,
    sharded_contrastive_loss,
)
from rsclip_jax.training.train_setup import TrainSetup


def batch_sharding(mesh) -> NamedSharding:
    """Examples split over every data-parallel axis (data and fsdp); the rest of each array whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


SHARDED_LOSS_MIN_BATCH = 1024


def check_loss_settings(config: ml_collections.ConfigDict) -> None:
    """ValueError naming the config keys when the loss settings cannot work together."""
    problems = []
    if config.loss.kind == "sigmoid" and config.model.logit_bias_init is None:
        problems.append(
            "config.loss.kind 'sigmoid' needs a learnable logit bias: set config.model.logit_bias_init "
            "(SigLIP starts it at -10)"
        )
    if config.loss.short_caption_components and config.loss.short_caption_pca not in PCA_SCOPES:
        problems.append(
            f"config.loss.short_caption_pca must be one of {PCA_SCOPES}, not {config.loss.short_caption_pca!r}"
        )
    generator = config.generator
    if generator.weight:
        for key, least in (("queries", 1), ("loss_chunk", 1), ("layers", 0), ("width", 0), ("heads", 0)):
            if generator[key] < least:
                problems.append(f"config.generator.{key} must be at least {least}, not {generator[key]}")
    if (config.optim.grad_cache_chunks or 1) > 1 and generator.weight:
        problems.append(
            "config.optim.grad_cache_chunks > 1 does not combine with config.generator.weight > 0: the "
            "caption generator reads the towers' tokens, which gradient caching does not keep; use "
            "config.optim.accum_steps instead"
        )
    if problems:
        raise ValueError("; ".join(problems))


def uses_sharded_loss(config: ml_collections.ConfigDict, mesh) -> bool:
    choice = config.loss.sharded
    if choice not in ("auto", "on", "off"):
        raise ValueError(f"config.loss.sharded must be 'auto', 'on' or 'off', not {choice!r}")
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    return choice == "on" or (choice == "auto" and data_parallel > 1 and config.batch_size >= SHARDED_LOSS_MIN_BATCH)


def check_batch_settings(config: ml_collections.ConfigDict, spec, mesh) -> None:
    """ValueError naming the config keys when the batch does not split over the processes, devices and
    micro-batches, or the loss settings do not fit the example spec `spec` and the `mesh`."""
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    problems = []
    chunks = config.optim.grad_cache_chunks or 1
    if config.batch_size % (jax.process_count() * data_parallel * config.optim.accum_steps * chunks):
        problems.append(
            f"config.batch_size {config.batch_size} must divide evenly over {jax.process_count()} processes, "
            f"{data_parallel} data-parallel devices, config.optim.accum_steps {config.optim.accum_steps} and "
            f"config.optim.grad_cache_chunks {chunks}"
        )
    components = config.loss.short_caption_components
    if components:
        kinds = set(spec.slot_kinds)
        if spec.sampling != "grouped" or "short" not in kinds or kinds == {"short"}:
            problems.append(
                "config.loss.short_caption_components needs grouped sampling with a 'short' slot and another slot"
            )
        # Gradient caching computes the loss over a device's whole batch at once, so only accumulation divides it.
        rows = config.batch_size // (data_parallel * config.optim.accum_steps)
        if config.loss.short_caption_pca == "local" and rows <= components + 1:
            # N centred rows span at most N - 1 directions: their top components rebuild them exactly.
            problems.append(
                f"config.loss.short_caption_pca 'local' takes each device's {rows} rows, too few for "
                f"config.loss.short_caption_components {components}: the rebuilt embeddings would be the embeddings; "
                f"use a larger batch, fewer devices or micro-batches, or short_caption_pca='global'"
            )
    try:
        if uses_sharded_loss(config, mesh):
            _warn_of_one_row_loss_blocks(config, data_parallel)
    except ValueError as e:
        problems.append(str(e))
    if problems:
        raise ValueError("; ".join(problems))


def _warn_of_one_row_loss_blocks(config: ml_collections.ConfigDict, data_parallel: int) -> None:
    """The sharded loss takes a device's rows in the largest block of at most config.loss.row_chunk that divides
    them: rows with no such divisor above 1 (a prime) go one at a time, a loop of thousands of small steps."""
    per_batch = data_parallel * config.optim.accum_steps  # the loss's rows on a device: one micro-batch's share
    rows, chunk = config.batch_size // per_batch, config.loss.row_chunk
    if rows > chunk and block_size(rows, chunk) == 1:
        lower, upper = rows // chunk * chunk * per_batch, -(-rows // chunk) * chunk * per_batch
        logging.warning(
            "config.batch_size %d gives each device %d loss rows, which no block of 2 to config.loss.row_chunk %d "
            "rows divides: the sharded loss takes them one row at a time, slowly. A batch of %d or %d would not.",
            config.batch_size,
            rows,
            chunk,
            lower,
            upper,
        )


def training_loss(config: ml_collections.ConfigDict, model, batch, slot_kinds: tuple[str, ...], mesh):
    """-> (the loss, {name: its parts}: none for the contrastive loss alone)."""
    image_emb, image_tokens = model.image_features(normalize_images(batch["image"]))
    text_emb, text_tokens = model.text_features(batch["tokens"])
    image_ids, parts = batch["image_id"], {}
    if "synthetic" in batch:  # Synth²'s rows (synth2/mixing.py): one loss over both streams, each's logged apart
        synthetic = batch["synthetic"]
        synthetic_image = synthetic_image_embeddings(model, synthetic["image_embedding"], config.data.synthetic_depth)
        synthetic_text = model.text_features(synthetic["tokens"])[0]

        def alone(image, text, ids):
            return jax.lax.stop_gradient(embeddings_loss(config, model, image, text, ids, slot_kinds, mesh))

        parts = {
            "real_loss": alone(image_emb, text_emb, image_ids),
            "synthetic_loss": alone(synthetic_image, synthetic_text, synthetic["image_id"]),
        }
        image_emb = jnp.concatenate([image_emb, synthetic_image])
        text_emb = jnp.concatenate([text_emb, synthetic_text])
        image_ids = mixed_image_ids(image_ids, synthetic["image_id"])
    contrastive = embeddings_loss(config, model, image_emb, text_emb, image_ids, slot_kinds, mesh)
    if not config.generator.weight:  # the towers' tokens go unused, and XLA drops them
        return contrastive, parts
    # CLIPS conditions the generator on the web caption: the "alt" slot's tokens, when the batch has one.
    web = [(text_tokens[:, i], batch["tokens"][:, i]) for i, kind in enumerate(slot_kinds) if kind == ALT_SLOT][:1]
    features = model.generator(image_tokens, *(web[0] if web else ()))
    caption = model.generator.loss(features, batch["caption_tokens"], chunk=config.generator.loss_chunk)
    return contrastive + config.generator.weight * caption, {"contrastive_loss": contrastive, "generator_loss": caption}


def embeddings_loss(config, model, image_emb, text_emb, image_ids, slot_kinds: tuple[str, ...], mesh):
    """The contrastive loss of a batch's embeddings, with the model's logit scale (and bias)."""
    loss_fn = contrastive_loss
    if uses_sharded_loss(config, mesh):
        loss_fn = partial(sharded_contrastive_loss, mesh=mesh, row_chunk=config.loss.row_chunk)
    kwargs = dict(
        kind=config.loss.kind,
        image_ids=image_ids,
        label_smoothing=config.loss.label_smoothing,
        logit_bias=model.logit_bias[...] if hasattr(model, "logit_bias") else None,
    )
    scale = model.logit_scale[...]
    components = config.loss.short_caption_components
    if not components:
        return loss_fn(image_emb, text_emb, scale, **kwargs)
    short = [i for i, kind in enumerate(slot_kinds) if kind == "short"]
    fine = [i for i, kind in enumerate(slot_kinds) if kind != "short"]
    return loss_fn(image_emb, text_emb[:, fine], scale, **kwargs) + loss_fn(
        primary_components(image_emb, components, scope=config.loss.short_caption_pca, mesh=mesh),
        text_emb[:, short],
        scale,
        **kwargs,
    )


def _interleaved_chunks(tree, chunks: int):
    """Arrays [B, ...] -> [chunks, B / chunks, ...], chunk c holding rows c, c + chunks, ...: every device
    keeps an equal share of each chunk."""
    return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(-1, chunks, *x.shape[1:]), 0, 1), tree)


def _unchunked(tree):
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:]), tree)


def guarded_update(setup: TrainSetup, state: dict, loss, grads, clamp=lambda params: params):
    """(the state after `setup`'s optimizer applies `grads`, {"loss", "grad_norm", "learning_rate"}). A non-finite
    step changes nothing and is remembered, so no bad state can reach a checkpoint. `clamp` bounds the new
    parameters."""
    params = state["params"]
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = setup.optimizer.update(grads, state["opt_state"], params)
    new_params = clamp(optax.apply_updates(params, updates))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    number = state["step"] + 1
    new_state = {
        "params": keep(new_params, params),
        "opt_state": keep(opt_state, state["opt_state"]),
        "step": number,
        "nonfinite_step": jnp.where((state["nonfinite_step"] < 0) & ~finite, number, state["nonfinite_step"]),
    }
    return new_state, {"loss": loss, "grad_norm": grad_norm, "learning_rate": setup.schedule(state["step"])}


def make_train_step(setup: TrainSetup, slot_kinds):
    """jit(state, batch) -> (state, metrics) of `setup`'s run, with explicit shardings and the input state donated."""
    config, mesh = setup.config, setup.mesh
    accum = config.optim.accum_steps
    cache_chunks = config.optim.get("grad_cache_chunks") or 1
    check_loss_settings(config)

    def traced(fn):
        """fn(model, ...) with the model merged from its params, traced under the mesh's activation rules."""

        def run(params, *args):
            with activation_sharding(mesh, config.mesh.activation_rules):
                return fn(nnx.merge(setup.graphdef, params), *args)

        return run

    loss_fn = traced(lambda model, batch: training_loss(config, model, batch, slot_kinds, mesh))
    embed = traced(lambda model, piece: model(normalize_images(piece["image"]), piece["tokens"]))
    embeddings_loss_fn = traced(
        lambda model, image_emb, text_emb, image_ids: embeddings_loss(
            config, model, image_emb, text_emb, image_ids, slot_kinds, mesh
        )
    )

    def cached_value_and_grad(params, batch):
        """Gradient caching (Gao et al., 2021): the batch's embeddings chunk by chunk, keeping no activations;
        the loss over the whole batch and its gradients with respect to the embeddings; then each chunk's
        forward pass again, back-propagating its share. The plain loss and gradients, with one chunk's
        activations in memory, for one more forward pass."""
        pieces = _interleaved_chunks({"image": batch["image"], "tokens": batch["tokens"]}, cache_chunks)
        image_emb, text_emb = _unchunked(jax.lax.map(partial(embed, params), pieces))
        loss, (grads, image_grads, text_grads) = jax.value_and_grad(embeddings_loss_fn, argnums=(0, 1, 2))(
            params, image_emb, text_emb, batch["image_id"]
        )

        def add(grads, piece_and_cotangents):
            piece, cotangents = piece_and_cotangents
            _, vjp = jax.vjp(lambda params: embed(params, piece), params)
            return jax.tree.map(jnp.add, grads, vjp(cotangents)[0]), None

        cotangents = _interleaved_chunks((image_grads, text_grads), cache_chunks)
        grads, _ = jax.lax.scan(add, grads, (pieces, cotangents))
        return (loss, {}), grads

    grad_fn = cached_value_and_grad if cache_chunks > 1 else jax.value_and_grad(loss_fn, has_aux=True)

    def loss_and_grads(params, batch):
        """-> ((loss, its parts), gradients), averaged over the micro-batches."""
        if accum == 1:
            return grad_fn(params, batch)
        micro = _interleaved_chunks(batch, accum)

        def add(carry, micro_batch):
            return jax.tree.map(jnp.add, carry, grad_fn(params, micro_batch)), None

        shapes = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro))
        total, _ = jax.lax.scan(add, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), micro)
        return jax.tree.map(lambda x: x / accum, total)

    def clamp(params):
        if setup.model.max_logit_scale is None:
            return params
        return {**params, "logit_scale": jnp.clip(params["logit_scale"], 0.0, setup.model.max_logit_scale)}

    def step(state, batch):
        (loss, loss_parts), grads = loss_and_grads(state["params"], batch)
        new_state, metrics = guarded_update(setup, state, loss, grads, clamp)
        return new_state, {**metrics, "logit_scale": jnp.exp(new_state["params"]["logit_scale"]), **loss_parts}

    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        step,
        in_shardings=(setup.shardings, batch_sharding(mesh)),
        out_shardings=(setup.shardings, replicated),
        donate_argnums=0,
    )
