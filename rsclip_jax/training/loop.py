"""The training loop: shards, model and state (fresh or restored), then steps, logs, evals and checkpoints.

`train(config, workdir)` is what `python -m rsclip_jax.train` runs; it resumes from the workdir's latest
checkpoint, data order included.
"""

import dataclasses
import hashlib
import os
import signal
import time
from functools import partial

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from rsclip_jax.accelerators.distributed import initialize_distributed
from rsclip_jax.accelerators.flops import clip_training_flops_per_example, peak_tflops_per_device, utilization
from rsclip_jax.accelerators.host_memory import keep_freed_memory_in_heap
from rsclip_jax.accelerators.memory_settings import pick_for_local_devices
from rsclip_jax.accelerators.sharding import mesh_from_config
from rsclip_jax.data.caption_sampling import ALT_SLOT
from rsclip_jax.data.example_spec import DataError, ExampleSpec
from rsclip_jax.data.pipeline import SKIP_REASONS, train_dataset
from rsclip_jax.data.records import embedding_depth
from rsclip_jax.data.shards import check_alt_text, check_image_embeddings, check_roles, resolve_shards
from rsclip_jax.evals.evaluators import build_evaluators, flat_metrics, run_evaluators
from rsclip_jax.synth2.generator import GeneratorConfig
from rsclip_jax.synth2.generator_training import (
    fresh_state,
    frozen_clip,
    generator_training_flops_per_example,
    make_generator_step,
)
from rsclip_jax.synth2.mixing import check_synthetic_settings
from rsclip_jax.training.checkpoints import Checkpointer
from rsclip_jax.training.metrics import MetricWriter, log_console
from rsclip_jax.training.resume import describe_run, differences
from rsclip_jax.training.step import batch_sharding, check_batch_settings, check_loss_settings, make_train_step
from rsclip_jax.training.train_setup import TrainSetup


class TrainingError(RuntimeError):
    """A run that must stop: a non-finite loss or gradient."""


class SetupError(ValueError):
    """A config, shard or checkpoint that cannot work, found before the first step."""


def _check_same_shards(shards: dict[str, int]) -> None:
    """Each process found and checked the shards itself (a read error on one host, with skip_bad_shards, would
    leave it a different set): every process must read the same ones, or the global batches would not be
    one data order."""
    if jax.process_count() > 1:
        listing = "\n".join(f"{path} {count}" for path, count in shards.items())
        digest = np.frombuffer(hashlib.sha256(listing.encode()).digest(), np.uint8)
        digests = multihost_utils.process_allgather(digest)
        differ = [index for index, other in enumerate(digests) if not np.array_equal(other, digests[0])]
        if differ:
            raise DataError(
                f"config.data.train_shards: processes {differ} found other caption shards than process 0 "
                f"(see each process's warnings): every process must be able to read the same shards"
            )


def train(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Trains `config` in `workdir`, resuming from its latest checkpoint. A config, shard or checkpoint that cannot
    work raises SetupError before anything trains; a non-finite loss raises TrainingError."""
    # ---- Config and processes --------------------------------------------------------------------
    keep_freed_memory_in_heap()  # on a CPU; before JAX starts its threads
    initialize_distributed()
    is_chief = jax.process_index() == 0
    generator = config.get("task", "clip") == "synth2_generator"
    try:
        if not generator:  # before anything compiles (picking memory settings compiles on accelerators)
            check_loss_settings(config)
        shards, bad_shards = resolve_shards(
            config.data.train_shards, "config.data.train_shards", skip_bad=config.data.skip_bad_shards
        )
        _check_same_shards(shards)
        # Memory settings the config leaves unset: the fastest whose compiled step fits these devices (process 0
        # logs them), compiled into WORKDIR/jax-cache, where the step's own compile and a restart's find them.
        # The generator's memory settings are its recipe's: the picker compiles the CLIP's step.
        if not generator:
            config, _ = pick_for_local_devices(config, workdir)
        mesh = mesh_from_config(config.mesh)
        setup = TrainSetup.build(config, mesh)
        spec = ExampleSpec.from_config(config, setup.model)
        check_alt_text(list(shards), spec.slot_kinds)
        check_roles(list(shards), spec)
        if generator:
            shape = GeneratorConfig.from_config(config.synth2_generator, setup.model).embedding_shape
            check_image_embeddings(list(shards), spec.image_embedding, shape, "config.data.train_shards")
            if config.evals or config.data.synthetic_shards:
                raise ValueError(
                    "config.evals and config.data.synthetic_shards are for CLIPs: the generator has no evaluators, "
                    "and trains on real pairs only"
                )
            clip_setup, clip_params = frozen_clip(config, mesh)
        else:
            check_batch_settings(config, spec, mesh)
        synthetic = _synthetic_stream(config, setup, spec, mesh) if config.data.synthetic_shards else None
    except (ValueError, FileNotFoundError, DataError) as e:
        raise SetupError(str(e)) from None
    logging.info("%d processes, %d devices, mesh %s", jax.process_count(), jax.device_count(), dict(mesh.shape))
    if is_chief:  # what `rsclip_jax.evaluate` rebuilds the model and evals from
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        (epath.Path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=1))

    # ---- Model, optimizer, state: fresh or restored ----------------------------------------------
    counts = {"config.data.train_shards": list(shards.values())}
    if synthetic:
        counts["config.data.synthetic_shards"] = list(synthetic.shards.values())
    run = describe_run(config, counts)
    checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"), every_steps=config.checkpoint_every_steps, keep=config.keep_checkpoints
    )
    start_step = checkpointer.latest_step()
    if start_step is None:
        start_step = 0
        state = fresh_state(setup, list(shards)) if generator else setup.init_state()
    else:
        logging.info("resuming from the checkpoint of step %d", start_step)
        state = _restore(checkpointer, start_step, setup, run, workdir)

    # ---- Data: global batch s is step s's, on any number of processes and workers -----------------
    streams = [(shards, spec, config.batch_size - (synthetic.rows if synthetic else 0), "config.data.train_shards")]
    if synthetic:
        streams.append((synthetic.shards, synthetic.spec, synthetic.rows, "config.data.synthetic_shards"))
    try:
        datasets = [
            train_dataset(
                list(stream_shards),
                stream_spec,
                batch_size=rows // jax.process_count(),
                seed=config.seed,
                records_per_shard=list(stream_shards.values()),
                process_index=jax.process_index(),
                process_count=jax.process_count(),
                num_workers=config.data.num_workers,
                start_batch=start_step,
                shards_key=key,
            )
            for stream_shards, stream_spec, rows, key in streams
        ]
    except DataError as e:  # examples_per_epoch against what the shards hold
        raise SetupError(str(e)) from None
    skipped = [counter for _, counter in datasets]
    data_iterator = _batches(dataset for dataset, _ in datasets)
    try:
        evaluators = build_evaluators(setup)
    except (ValueError, FileNotFoundError) as e:
        raise SetupError(str(e)) from None
    if generator:
        generator_step = make_generator_step(setup, clip_setup)
        train_step = lambda state, batch: generator_step(state, clip_params, batch)
        flops_per_example = generator_training_flops_per_example(config, setup.model, spec.text_length)
    else:
        train_step = make_train_step(setup, spec.slot_kinds)
        flops_per_example = clip_training_flops_per_example(
            setup.model,
            spec.captions_per_example,
            config.batch_size,
            text_length=spec.text_length,
            web_caption=ALT_SLOT in spec.slot_kinds,
        )
    writer = MetricWriter(workdir, enabled=is_chief, resumed_from_step=start_step, config=config)
    throughput = partial(
        utilization,
        config.batch_size * flops_per_example,
        devices=jax.device_count(),
        peak_tflops=config.peak_tflops_per_device or peak_tflops_per_device(jax.devices()[0].device_kind),
    )

    preempted = _preemption_check()

    # ---- Loop ------------------------------------------------------------------------------------
    try:
        _train_loop(
            config,
            state,
            train_step,
            data_iterator,
            skipped,
            len(bad_shards),
            mesh,
            checkpointer,
            run,
            writer,
            preempted,
            workdir,
            evaluators,
            throughput,
        )
    finally:
        checkpointer.close()  # lets a save in flight finish, so the last good checkpoint is complete
        writer.close()


@dataclasses.dataclass(frozen=True)
class SyntheticStream:
    shards: dict[str, int]
    spec: ExampleSpec
    rows: int  # of a global batch


def _synthetic_stream(config, setup, spec: ExampleSpec, mesh) -> SyntheticStream:
    """Synth²'s synthetic pairs beside the real ones (synth2/mixing.py), checked before anything compiles."""
    depth, rows = check_synthetic_settings(config, setup.model, mesh.shape["data"] * mesh.shape["fsdp"])
    key = "config.data.synthetic_shards"
    shards, _ = resolve_shards(
        config.data.synthetic_shards, key, skip_bad=config.data.skip_bad_shards, content="image_embedding"
    )
    check_image_embeddings(list(shards), depth, setup.model.image_embedding_shape(embedding_depth(depth)), key)
    return SyntheticStream(shards, dataclasses.replace(spec, image_embedding=depth, examples_per_epoch=0), rows)


def _batches(datasets):
    """This process's batches: the real stream's, with the synthetic stream's (if any) under "synthetic"."""
    real, *synthetic = map(iter, datasets)
    if not synthetic:
        return real
    return ({**batch, "synthetic": rows} for batch, rows in zip(real, synthetic[0]))


def _per_process(value: np.ndarray) -> np.ndarray:
    """[processes, ...]: each process's `value`; every process must call it at the same step."""
    if jax.process_count() == 1:
        return value[None]
    return multihost_utils.process_allgather(value)


def _sum_over_processes(counts: np.ndarray) -> np.ndarray:
    return _per_process(counts).sum(axis=0)


def _data_wait(seconds: float, elapsed: float, steps: int) -> dict:
    """The seconds a step waited for its batch: the mean over the processes, and the slowest process's, which holds
    every other back (its share of the window is data_wait_fraction)."""
    waits = _per_process(np.array(seconds / steps))
    return dict(
        data_wait_s=float(waits.mean()),
        data_wait_max_s=float(waits.max()),
        data_wait_fraction=float(waits.max() * steps / elapsed),
    )


def _restore(checkpointer, step: int, setup, run: dict, workdir: str):
    """The state of checkpoint `step`, once its run is known to continue exactly under this config."""
    where = f"{workdir}/checkpoints/{step}"
    saved = checkpointer.saved_run(step)
    differ = differences(saved, run) if saved else []
    if differ:
        raise SetupError(
            f"the checkpoint {where} cannot be continued exactly under this config:\n  "
            + "\n  ".join(differ)
            + f"\ngive the saved settings (the whole config is in {where}/run), or train in another --workdir. "
            "The mesh, memory settings, processes, devices and data workers may change."
        )
    try:
        return checkpointer.restore(step, setup)
    except Exception as e:  # Orbax and TensorStore raise many types for a tree or shape mismatch
        raise SetupError(
            f"the checkpoint {where} does not fit this config's model or optimizer: use the config it was trained "
            f"with, or another --workdir. Orbax said: {e}"
        ) from None


def _preemption_check():
    """step -> whether to save and stop at that step. One process: once it got SIGTERM. Several: at the
    step they all agree on after any of them got one (JAX's preemption service, which takes SIGTERM
    itself), so that every process saves the same step."""
    if jax.process_count() > 1:
        return multihost_utils.reached_preemption_sync_point
    signalled = []
    signal.signal(signal.SIGTERM, lambda *_: signalled.append(True))
    return lambda step: bool(signalled)


def _train_loop(
    config,
    state,
    train_step,
    data_iterator,
    skipped,
    skipped_shards,
    mesh,
    checkpointer,
    run,
    writer,
    preempted,
    workdir,
    evaluators,
    throughput,
):
    def check_finite():
        nonfinite_step = int(state["nonfinite_step"])
        if nonfinite_step >= 0:
            raise TrainingError(
                f"loss or gradients were not finite at step {nonfinite_step}; stopping without saving "
                f"(the last good checkpoint stays in {workdir}/checkpoints)"
            )

    sharding = batch_sharding(mesh)
    start_step = int(state["step"])
    window_start, data_wait, window_steps, first_step_s = time.perf_counter(), 0.0, 0, None
    for step in range(start_step + 1, config.total_steps + 1):
        wait_start = time.perf_counter()
        local_batch = next(data_iterator)
        data_wait += time.perf_counter() - wait_start
        batch = jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
        state, metrics = train_step(state, batch)
        if step == start_step + 1:  # it compiled the step: its time is not throughput
            jax.block_until_ready(metrics)
            first_step_s = time.perf_counter() - window_start
            window_start, data_wait = time.perf_counter(), 0.0
        else:
            window_steps += 1

        last = step == config.total_steps
        if step % config.log_every_steps == 0 or last:
            check_finite()
            elapsed = time.perf_counter() - window_start
            logged = {name: float(value) for name, value in jax.device_get(metrics).items()}
            if window_steps:
                logged.update(
                    examples_per_sec=config.batch_size * window_steps / elapsed,
                    **throughput(elapsed / window_steps),
                    **_data_wait(data_wait, elapsed, window_steps),
                )
            if first_step_s is not None:  # compile included, at the run's first log
                logged.update(first_step_s=first_step_s)
                first_step_s = None
            skips = _sum_over_processes(np.array([sum(c.counts[reason] for c in skipped) for reason in SKIP_REASONS]))
            logged.update(
                skipped_shards=skipped_shards,
                skipped_records=int(skips.sum()),
                **{f"skipped_{reason}": int(count) for reason, count in zip(SKIP_REASONS, skips) if count},
            )
            writer.write(step, logged)
            if jax.process_index() == 0:
                log_console(step, config.total_steps, logged)
            window_start, data_wait, window_steps = time.perf_counter(), 0.0, 0
        due = [evaluator for evaluator in evaluators if evaluator.due(step, last)]
        if due:
            check_finite()
            writer.write(step, flat_metrics(run_evaluators(due, state["params"])))
            window_start, data_wait, window_steps = time.perf_counter(), 0.0, 0  # eval time is not throughput
        preempt = preempted(step)
        if preempt or last or step % config.checkpoint_every_steps == 0:
            check_finite()
            checkpointer.save(step, state, run, force=preempt or last)
            writer.flush()
        if preempt:
            logging.warning("SIGTERM: saved step %d and stopping", step)
            break
