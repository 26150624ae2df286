"""The setup of a run (TrainSetup): the model config, mesh, optimizer, schedule, abstract train state and its
shardings, built once from (config, mesh); and the train state (a plain pytree) made in those shardings. What
trains is `config.task`'s module: the CLIP, or Synth²'s generator of its image embeddings."""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from rsclip_jax.accelerators.sharding import param_shardings
from rsclip_jax.model.clip import CLIP
from rsclip_jax.model.config import ModelConfig
from rsclip_jax.synth2.generator import EmbeddingGenerator, GeneratorConfig
from rsclip_jax.training.optimizer import learning_rate_schedule, make_optimizer

TASKS = ("clip", "synth2_generator")
# The generator's per-channel embedding statistics: set from data, never trained (synth2/generator.py).
GENERATOR_STATISTICS = (r"embedding_mean", r"embedding_std")


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    config: ml_collections.ConfigDict
    model: ModelConfig
    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    schedule: optax.Schedule
    optimizer: optax.GradientTransformation
    abstract_state: dict  # ShapeDtypeStructs of the state
    shardings: dict  # NamedShardings of the state
    make_module: Callable[[nnx.Rngs], nnx.Module]  # the CLIP, or the generator

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, mesh) -> "TrainSetup":
        """Everything but the arrays: the model's graph and the abstract state are traced, nothing is allocated."""
        model = ModelConfig.from_config(config)
        make_module, optimizer_model, optim = _task(config, model)
        abstract_model = nnx.eval_shape(lambda: make_module(nnx.Rngs(0)))
        graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
        params_sharding = param_shardings(abstract_params, mesh, config.mesh.rules)
        schedule = learning_rate_schedule(config.optim, config.total_steps)
        optimizer = make_optimizer(optim, optimizer_model, schedule, nnx.to_pure_dict(abstract_params))
        abstract_state = jax.eval_shape(lambda: _fresh_state(config.seed, make_module, optimizer))
        replicated = NamedSharding(mesh, PartitionSpec())
        # The optimizer's moments are sharded as their parameters; its counters are replicated.
        opt_sharding = optax.tree_map_params(
            optimizer,
            lambda leaf, sharding: leaf if isinstance(leaf, optax.MaskedNode) else sharding,
            abstract_state["opt_state"],
            params_sharding,
            transform_non_params=lambda _: replicated,
            is_leaf=lambda leaf: isinstance(leaf, optax.MaskedNode),
        )
        shardings = {
            "params": params_sharding,
            "opt_state": opt_sharding,
            "step": replicated,
            "nonfinite_step": replicated,
        }
        return cls(config, model, mesh, graphdef, schedule, optimizer, abstract_state, shardings, make_module)

    def state_target(self, subtree: str | None = None):
        """The abstract state (or its `subtree`, e.g. "params") placed in its shardings: what a restore reads into
        and what a compile ahead of time takes."""
        place = lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
        if subtree is None:
            return jax.tree.map(place, self.abstract_state, self.shardings)
        return jax.tree.map(place, self.abstract_state[subtree], self.shardings[subtree])

    def init_state(self) -> dict:
        """A fresh state, created directly in its shardings (no full copy on one device)."""
        return jax.jit(
            lambda: _fresh_state(self.config.seed, self.make_module, self.optimizer), out_shardings=self.shardings
        )()


def _task(config, model: ModelConfig):
    """(the module's constructor, the ModelConfig and config.optim its optimizer takes) of config.task."""
    task = config.get("task", "clip")
    if task == "clip":
        return (lambda rngs: CLIP(model, rngs=rngs)), model, config.optim
    if task != "synth2_generator":
        raise ValueError(f"config.task {task!r} must be one of {TASKS}")
    generator = GeneratorConfig.from_config(config.synth2_generator, model)
    # The generator has no text positions to freeze; its embedding statistics are set from data, never trained.
    optim = config.optim.copy_and_resolve_references()
    optim.freeze = (*optim.freeze, *GENERATOR_STATISTICS)
    return (
        (lambda rngs: EmbeddingGenerator(generator, rngs=rngs)),
        dataclasses.replace(model, frozen_text_positions=0),
        optim,
    )


def _fresh_state(seed: int, make_module, optimizer):
    params = nnx.to_pure_dict(nnx.state(make_module(nnx.Rngs(seed)), nnx.Param))
    return {
        "params": params,
        "opt_state": optimizer.init(params),
        "step": jnp.zeros((), jnp.int32),
        # -1 while every step was finite; else the first step whose loss or gradients were not.
        "nonfinite_step": jnp.full((), -1, jnp.int32),
    }
