"""Synthetic pairs in CLIP training (config.data.synthetic_shards, config.data.synthetic_fraction): a fixed share of
every global batch are synthetic rows, whose image embeddings a Synth² generator made (`python -m
rsclip_jax.generate`).

A synthetic row enters the image tower where its embedding was taken: at "final" its embedding is the image
embedding; at "tokens:K" its tokens run the tower's blocks after K. The parts of the tower below that point never
see a synthetic row, and they must keep making the space the generator learned, so they stay frozen for the real
rows too: a config whose config.optim.freeze leaves any of them trainable is refused, with the pattern that
freezes them. Real and synthetic rows share one contrastive loss (the synthetic image ids apart from the real
ones); each stream's own loss is logged beside it.
"""

import re

import jax
import jax.numpy as jnp
from flax import nnx

from rsclip_jax.data.records import embedding_depth
from rsclip_jax.model.clip import CLIP
from rsclip_jax.model.config import ModelConfig
from rsclip_jax.model.layers import l2_normalize
from rsclip_jax.training.optimizer import path_name


def synthetic_rows(config) -> int:
    """The synthetic rows of a global batch: config.data.synthetic_fraction of config.batch_size, rounded."""
    if not config.data.get("synthetic_shards"):
        return 0
    return round(config.data.synthetic_fraction * config.batch_size)


def bypassed_pattern(blocks: int | None) -> str:
    """A config.optim.freeze regex of the image tower's parameters below a depth (None: "final", the whole tower)."""
    if blocks is None:
        return r"visual\..*"
    stem = r"visual\.(conv1|class_embedding|positional_embedding|ln_pre)(\..*)?"
    if blocks == 0:
        return stem
    return stem + r"|visual\.transformer\.resblocks\.(" + "|".join(map(str, range(blocks))) + r")\..*"


def check_synthetic_settings(config, model: ModelConfig, data_parallel: int) -> tuple[str, int]:
    """(the synthetic shards' depth, the synthetic rows of a global batch); ValueError naming the config keys when
    the mix cannot work."""
    depth = config.data.synthetic_depth
    blocks = embedding_depth(depth, "config.data.synthetic_depth")
    model.image_embedding_shape(blocks)  # a depth beyond the tower
    fraction, rows = config.data.synthetic_fraction, synthetic_rows(config)
    shares = jax.process_count() * data_parallel * config.optim.accum_steps
    problems = []
    if not 0 < fraction < 1:
        problems.append(f"config.data.synthetic_fraction {fraction} must lie between 0 and 1 (the share of a batch)")
    elif rows % shares or (config.batch_size - rows) % shares:
        problems.append(
            f"config.data.synthetic_fraction {fraction} of config.batch_size {config.batch_size} gives {rows} "
            f"synthetic and {config.batch_size - rows} real rows: each must divide evenly over {jax.process_count()} "
            f"processes, "
            f"{data_parallel} data-parallel devices and config.optim.accum_steps {config.optim.accum_steps}"
        )
    if (config.optim.grad_cache_chunks or 1) > 1:
        problems.append("config.optim.grad_cache_chunks > 1 does not take synthetic rows yet: use accum_steps")
    if config.generator.weight:
        problems.append("config.generator (CLIPS' caption generator) reads image tokens, which synthetic rows lack")
    pattern = bypassed_pattern(blocks)
    names = _image_tower_names(model, blocks)
    freeze = [re.compile(p) for p in config.optim.freeze]
    trained = [name for name in names if not any(p.fullmatch(name) for p in freeze)]
    if trained:
        problems.append(
            f"synthetic rows at depth {depth!r} bypass {len(names)} image-tower parameters that must stay frozen for "
            f"the real rows too (they make the space the generator learned), but config.optim.freeze leaves "
            f"{trained[0]!r} and {len(trained) - 1} more trainable: add r'{pattern}' to config.optim.freeze"
        )
    if problems:
        raise ValueError("; ".join(problems))
    return depth, rows


def _image_tower_names(model: ModelConfig, blocks: int | None) -> list[str]:
    """The names (optimizer.path_name) of the image tower's parameters below depth `blocks`."""
    params = nnx.state(nnx.eval_shape(lambda: CLIP(model, rngs=nnx.Rngs(0))), nnx.Param)
    names = [path_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(params))[0]]
    pattern = re.compile(bypassed_pattern(blocks))
    return [name for name in names if pattern.fullmatch(name)]


def synthetic_image_embeddings(model: CLIP, embeddings, depth: str):
    """The L2-normalised image embeddings of synthetic rows: theirs at "final"; at "tokens:K", the rest of the tower
    run on their tokens."""
    blocks = embedding_depth(depth)
    if blocks is None:
        return l2_normalize(embeddings)
    return l2_normalize(model.visual.from_tokens(embeddings, blocks)[0])


def mixed_image_ids(real_ids, synthetic_ids):
    """One id space: the synthetic ids negative (-1 - id), apart from the real ones (record indices, >= 0)."""
    return jnp.concatenate([real_ids, -1 - synthetic_ids.astype(real_ids.dtype)])
