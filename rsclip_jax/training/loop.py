"""The training loop: shards, model and state (fresh or restored), then steps, logs, evals and checkpoints.

`train(config, workdir)` is what `python -m rsclip_jax.train` runs; it resumes from the workdir's latest
checkpoint, data order included.
"""

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
from rsclip_jax.data.pipeline import check_alt_text, resolve_shards, train_dataset
from rsclip_jax.evals.evaluators import build_evaluators, flat_metrics, run_evaluators
from rsclip_jax.training.checkpoints import Checkpointer
from rsclip_jax.training.metrics import MetricWriter, log_console
from rsclip_jax.training.step import batch_sharding, check_batch_settings, check_loss_settings, make_train_step
from rsclip_jax.training.train_setup import TrainSetup


class TrainingError(RuntimeError):
    """A run that must stop: a non-finite loss or gradient."""


class SetupError(ValueError):
    """A config, shard or checkpoint that cannot work, found before the first step."""


def _check_same_shards(paths: list[str]) -> None:
    """Each process found and checked the shards itself (a read error on one host, with skip_bad_shards, would
    leave it a different set): every process must read the same ones, or the global batches would not be
    one data order."""
    if jax.process_count() > 1:
        digest = np.frombuffer(hashlib.sha256("\n".join(paths).encode()).digest(), np.uint8)
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
    try:
        check_loss_settings(
            config
        )  # before anything compiles (picking memory settings compiles on accelerators), as are the shards
        shard_paths, bad_shards = resolve_shards(
            config.data.train_shards, "config.data.train_shards", skip_bad=config.data.skip_bad_shards
        )
        _check_same_shards(shard_paths)
        # Memory settings the config leaves unset: the fastest whose compiled step fits these devices.
        config, picked = pick_for_local_devices(config)
        if picked:
            logging.info("picked for %s: %s", jax.devices()[0].device_kind, picked)
        mesh = mesh_from_config(config.mesh)
        setup = TrainSetup.build(config, mesh)
        spec = ExampleSpec.from_config(config, setup.model)
        check_alt_text(shard_paths, spec.slot_kinds)
        check_batch_settings(config, spec, mesh)
    except (ValueError, DataError) as e:
        raise SetupError(str(e)) from None
    logging.info("%d processes, %d devices, mesh %s", jax.process_count(), jax.device_count(), dict(mesh.shape))
    if is_chief:  # what `rsclip_jax.evaluate` rebuilds the model and evals from
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        (epath.Path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=1))

    # ---- Data ------------------------------------------------------------------------------------
    dataset, skipped = train_dataset(
        shard_paths,
        spec,
        batch_size=config.batch_size // jax.process_count(),
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        num_workers=config.data.num_workers,
    )
    data_iterator = iter(dataset)

    # ---- Model, optimizer, state: fresh or restored ----------------------------------------------
    checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"), every_steps=config.checkpoint_every_steps, keep=config.keep_checkpoints
    )
    start_step = checkpointer.latest_step()
    if start_step is None:
        start_step = 0
        state = setup.init_state()
    else:
        logging.info("resuming from the checkpoint of step %d", start_step)
        try:
            state = checkpointer.restore(start_step, setup, data_iterator)
        except Exception as e:  # Orbax and TensorStore raise many types for a tree or shape mismatch
            raise SetupError(
                f"the checkpoint of step {start_step} in {workdir}/checkpoints does not fit this config (model "
                f"variant, context_length, logit_bias_init, optimizer): use the config it was trained with, or "
                f"another --workdir. Orbax said: {e}"
            ) from None
    try:
        evaluators = build_evaluators(setup)
    except (ValueError, FileNotFoundError) as e:
        raise SetupError(str(e)) from None
    train_step = make_train_step(setup, spec.slot_kinds)
    writer = MetricWriter(workdir, enabled=is_chief, resumed_from_step=start_step, config=config)
    throughput = partial(
        utilization,
        config.batch_size
        * clip_training_flops_per_example(
            setup.model,
            spec.captions_per_example,
            config.batch_size,
            text_length=spec.text_length,
            web_caption=ALT_SLOT in spec.slot_kinds,
        ),
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
            writer,
            preempted,
            workdir,
            evaluators,
            throughput,
        )
    finally:
        checkpointer.close()  # lets a save in flight finish, so the last good checkpoint is complete
        writer.close()


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
    window_start, data_wait, window_steps = time.perf_counter(), 0.0, 0
    for step in range(start_step + 1, config.total_steps + 1):
        wait_start = time.perf_counter()
        local_batch = next(data_iterator)
        data_wait += time.perf_counter() - wait_start
        batch = jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
        state, metrics = train_step(state, batch)
        window_steps += 1

        last = step == config.total_steps
        if step % config.log_every_steps == 0 or last:
            check_finite()
            elapsed = time.perf_counter() - window_start
            logged = {name: float(value) for name, value in jax.device_get(metrics).items()}
            logged.update(
                examples_per_sec=config.batch_size * window_steps / elapsed,
                **throughput(elapsed / window_steps),
                data_wait_s=data_wait / window_steps,
                data_wait_fraction=data_wait / elapsed,
                skipped_shards=skipped_shards,
                skipped_records=sum(skipped.counts.values()),
                **{f"skipped_{reason}": count for reason, count in skipped.counts.items()},
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
            checkpointer.save(step, state, data_iterator, force=preempt or last)
            writer.flush()
        if preempt:
            logging.warning("SIGTERM: saved step %d and stopping", step)
            break
