"""The generator's training step in the project's one training loop (training/loop.py, config.task
"synth2_generator"): the frozen CLIP text tower reads each example's caption, and the flow-matching loss
(synth2/flow_matching.py) trains the generator to make the example's image embedding from it.

The frozen CLIP is config.synth2_generator.clip_workdir's checkpoint: the one whose image tower embedded the
shards (`python -m rsclip_jax.embed`). It is not part of the train state: a restart reads it again.
"""

import jax
import numpy as np
from array_record.python.array_record_module import ArrayRecordReader
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from rsclip_jax.accelerators.flops import transformer_forward_flops
from rsclip_jax.accelerators.sharding import activation_sharding
from rsclip_jax.data.records import RecordError, decode_record
from rsclip_jax.model.config import ModelConfig
from rsclip_jax.synth2.flow_matching import flow_matching_loss
from rsclip_jax.synth2.generator import GeneratorConfig
from rsclip_jax.training.checkpoints import restore_params
from rsclip_jax.training.step import batch_sharding, guarded_update
from rsclip_jax.training.train_setup import TrainSetup
from rsclip_jax.weights.trained import checkpoint_to_read

# Records whose embeddings set the generator's per-channel statistics at "tokens:K" (generator.set_statistics).
STATISTICS_SAMPLE = 1024


def frozen_clip(config, mesh) -> tuple[TrainSetup, dict]:
    """(the CLIP's setup, its parameters in the mesh's shardings) of config.synth2_generator.clip_workdir."""
    section = config.synth2_generator
    if not section.clip_workdir:
        raise ValueError("config.synth2_generator.clip_workdir is empty: give the CLIP whose embeddings it learns")
    setup = frozen_clip_setup(config, mesh)
    folder, step = checkpoint_to_read(section.clip_workdir, section.clip_checkpoint or None)
    _, params = restore_params(folder, setup, step)
    return setup, params


def fresh_state(setup: TrainSetup, paths: list[str]) -> dict:
    """A fresh state whose embedding statistics are those of the first records' embeddings (at "tokens:K", whose
    channels differ in scale by orders of magnitude); at "final", the generator's own."""
    state = setup.init_state()
    if setup.config.synth2_generator.depth == "final":
        return state
    embeddings = _first_embeddings(paths, STATISTICS_SAMPLE)
    generator = nnx.merge(setup.graphdef, state["params"])
    generator.set_statistics(embeddings)
    params = nnx.to_pure_dict(nnx.state(generator, nnx.Param))
    state["params"] = jax.device_put(params, setup.shardings["params"])
    return state


def _first_embeddings(paths: list[str], count: int) -> np.ndarray:
    """Up to `count` image embeddings from the first records of `paths`: the same on every process."""
    found = []
    for path in paths:
        reader = ArrayRecordReader(path)
        try:
            for index in range(min(reader.num_records(), count - len(found))):
                try:
                    embedding = decode_record(reader.read([index])[0], shard=path, index=index).image_embedding
                except RecordError:
                    continue
                if embedding is not None:
                    found.append(embedding.values.astype(np.float32))
        finally:
            reader.close()
        if len(found) >= count:
            break
    return np.stack(found)


def frozen_clip_setup(config, mesh) -> TrainSetup:
    """The setup of the CLIP whose text tower reads the generator's captions: the config's model, as a CLIP."""
    clip_config = config.copy_and_resolve_references()
    clip_config.task = "clip"
    return TrainSetup.build(clip_config, mesh)


def make_generator_step(setup: TrainSetup, clip_setup: TrainSetup):
    """jit(state, clip_params, batch) -> (state, metrics): one flow-matching step of `setup`'s generator, on
    captions read by the frozen CLIP; explicit shardings, the input state donated."""
    config, mesh = setup.config, setup.mesh
    seed = jax.random.key(config.seed)

    def loss_fn(params, clip_params, batch, rng):
        with activation_sharding(mesh, config.mesh.activation_rules):
            tokens = batch["tokens"][:, 0]
            _, text_tokens = nnx.merge(clip_setup.graphdef, clip_params).text_features(tokens)
            generator = nnx.merge(setup.graphdef, params)
            return flow_matching_loss(
                generator, batch["image_embedding"], jax.lax.stop_gradient(text_tokens), tokens != 0, rng
            )

    def step(state, clip_params, batch):
        rng = jax.random.fold_in(seed, state["step"])  # the same noise at a step, resumed or not
        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], clip_params, batch, rng)
        new_state, metrics = guarded_update(setup, state, loss, grads)
        return new_state, {**parts, **metrics}

    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        step,
        in_shardings=(setup.shardings, clip_setup.shardings["params"], batch_sharding(mesh)),
        out_shardings=(setup.shardings, replicated),
        donate_argnums=0,
    )


def generator_training_flops_per_example(config, clip: ModelConfig, text_length: int) -> float:
    """The frozen text tower's forward pass, and the generator's forward and backward passes: its blocks over its
    tokens, each attending across the caption's (matrix multiplies only, as accelerators/flops.py counts)."""
    generator = GeneratorConfig.from_config(config.synth2_generator, clip)
    text = transformer_forward_flops(text_length, clip.text_width, clip.text_layers, clip.mlp_ratio)
    tokens, width = generator.sequence_length, generator.width
    blocks = transformer_forward_flops(tokens, width, generator.layers, generator.mlp_ratio)
    across = 2.0 * generator.layers * (2 * tokens * width**2 + 2 * text_length * clip.text_width * width)
    across += 2.0 * generator.layers * 2 * tokens * text_length * width
    return text + 3.0 * (blocks + across)
