"""The train state (a plain pytree), its shardings on the mesh, and its sharded initialisation."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from rsclip_jax.model import CLIP
from rsclip_jax.optim import make_optimizer, path_name
from rsclip_jax.sharding import param_shardings
from rsclip_jax.variants import ModelConfig


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    graphdef: nnx.GraphDef
    optimizer: optax.GradientTransformation
    abstract_state: dict  # ShapeDtypeStructs of the state
    shardings: dict  # NamedShardings of the state


def _state_shardings(abstract_state, params_sharding, mesh):
    """Each leaf takes the sharding of the parameter whose path ends its own path (optimizer moments
    mirror the parameters) when the shapes agree, and is replicated otherwise."""
    by_name = {
        path_name(path): (sharding, shape.shape)
        for (path, sharding), shape in zip(
            jax.tree_util.tree_flatten_with_path(params_sharding)[0],
            jax.tree.leaves(abstract_state["params"]),
        )
    }
    replicated = NamedSharding(mesh, PartitionSpec())

    def pick(path, leaf):
        parts = path_name(path).split(".")
        for start in range(len(parts)):
            match = by_name.get(".".join(parts[start:]))
            if match and match[1] == leaf.shape:
                return match[0]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract_state)


def setup_train_state(config: ml_collections.ConfigDict, model_config: ModelConfig, mesh) -> TrainSetup:
    """The model's graph, the optimizer, and the abstract state with its shardings, without allocating."""
    abstract_model = nnx.eval_shape(lambda: CLIP(model_config, rngs=nnx.Rngs(0)))
    graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
    params_sharding = param_shardings(abstract_params, mesh, config.mesh.rules)
    optimizer = make_optimizer(config, nnx.to_pure_dict(abstract_params))
    abstract_state = jax.eval_shape(lambda: _fresh_state(config, model_config, optimizer))
    return TrainSetup(graphdef, optimizer, abstract_state, _state_shardings(abstract_state, params_sharding, mesh))


def _fresh_state(config, model_config, optimizer):
    params = nnx.to_pure_dict(nnx.state(CLIP(model_config, rngs=nnx.Rngs(config.seed)), nnx.Param))
    return {
        "params": params,
        "opt_state": optimizer.init(params),
        "step": jnp.zeros((), jnp.int32),
        # -1 while every step was finite; else the first step whose loss or gradients were not.
        "nonfinite_step": jnp.full((), -1, jnp.int32),
    }


def init_train_state(config, model_config, setup: TrainSetup):
    """A fresh state, created directly in its shardings (no full copy on one device)."""
    return jax.jit(lambda: _fresh_state(config, model_config, setup.optimizer), out_shardings=setup.shardings)()
