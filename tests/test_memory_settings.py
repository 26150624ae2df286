"""Memory settings change memory, not numbers: the whole training step on 8 fake devices (fsdp and tensor
axes, activations pinned by the activation rules) gives the losses of the plain step under every setting:
remat policies, scanned layers, gradient caching. And how they are picked: within a memory limit, on every
process alike, each candidate compiled once."""

import functools
import json
import logging
import math
import os
import re
import shutil
import subprocess

import jax
import numpy as np
import pytest
from test_train import REPO, environment, free_port, train_command
from test_train import losses as logged_losses
from test_train_step import random_batch, tiny_config

from rsclip_jax.accelerators import memory_settings
from rsclip_jax.accelerators.memory_settings import memory_limit, pick_for_local_devices
from rsclip_jax.accelerators.sharding import make_mesh
from rsclip_jax.training.step import batch_sharding, make_train_step
from rsclip_jax.training.train_setup import TrainSetup


@functools.cache
def losses(mesh_shape, steps=3, **settings):
    config = tiny_config()
    for key, value in settings.items():
        section, name = key.split("__")
        config[section][name] = value
    mesh = make_mesh(mesh_shape)
    setup = TrainSetup.build(config, mesh)
    state = setup.init_state()
    step = make_train_step(setup, ("any", "any"))
    batch = jax.device_put(random_batch(16), batch_sharding(mesh))
    values = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        values.append(float(metrics["loss"]))
    return values


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings",
    [
        dict(model__remat_policy="nothing", model__scan_layers=True),
        dict(model__remat_policy="dots_no_batch", model__scan_layers=False),
        dict(model__remat_policy="dots", model__scan_layers=True),
        dict(optim__grad_cache_chunks=4, model__remat_policy="nothing", model__scan_layers=True),
        dict(optim__grad_cache_chunks=2, loss__sharded="on", loss__label_smoothing=0.1),
    ],
)
def test_remat_scan_and_gradient_caching_keep_the_losses_of_every_step(settings):
    reference = losses((1, 4, 2), **{key: value for key, value in settings.items() if key.startswith("loss__")})
    np.testing.assert_allclose(losses((1, 4, 2), **settings), reference, rtol=1e-5)


@pytest.mark.slow
def test_batch_constraints_on_an_fsdp_mesh_keep_the_single_device_losses():
    np.testing.assert_allclose(losses((1, 4, 2)), losses((1, 1, 1)), rtol=1e-5)


@pytest.mark.slow
def test_bfloat16_first_moments_stay_close():
    reference = losses((8, 1, 1), steps=5)
    lean = losses((8, 1, 1), steps=5, optim__mu_dtype="bfloat16")
    assert lean[0] == reference[0]  # the first step's loss comes before any update
    np.testing.assert_allclose(lean, reference, rtol=2e-3)


class FakeDevice:
    def __init__(self, platform, bytes_limit=None):
        self.platform, self.bytes_limit = platform, bytes_limit

    def memory_stats(self):
        return {"bytes_limit": self.bytes_limit}


def test_the_memory_limit_is_the_least_of_the_local_devices_and_the_cap(monkeypatch):
    config = tiny_config()
    monkeypatch.setattr(jax, "local_devices", lambda: [FakeDevice("gpu", 40 * 2**30), FakeDevice("gpu", 30 * 2**30)])
    assert memory_limit(config) == 30 * 2**30
    config.memory_limit_gib = 20.0
    assert memory_limit(config) == 20 * 2**30
    monkeypatch.setattr(jax, "local_devices", lambda: [FakeDevice("cpu")])
    assert memory_limit(config) == 20 * 2**30
    config.memory_limit_gib = None
    assert memory_limit(config) is None  # a CPU has no limit of its own to fit


def test_a_memory_cap_picks_on_a_cpu_the_fastest_settings_that_fit(tmp_path, caplog):
    config = tiny_config()
    config.batch_size = 16
    assert pick_for_local_devices(config, str(tmp_path)) == (config, {})  # no cap: nothing to fit
    # On the 8 devices, fsdp (the replicated state would take over 10% of the cap), XLA's memory analysis gives
    # the step 9.93 MB a device without remat, 9.32 MB with dots_no_batch: under 0.01 GiB (10.7 MB) only the
    # second leaves HEADROOM (10%) to spare.
    config.memory_limit_gib = 0.01
    cache = jax.config.jax_compilation_cache_dir
    with caplog.at_level(logging.INFO):
        picked_config, picked = pick_for_local_devices(config, str(tmp_path))
    assert picked == {
        "model.scan_layers": True,
        "model.attention": "xla",
        "mesh.shape": (1, -1, 1),
        "model.remat_policy": "dots_no_batch",
        "optim.grad_cache_chunks": 1,
    }
    assert picked_config.model.remat_policy == "dots_no_batch" and picked_config.model.dtype == "float32"
    logged = [record.getMessage() for record in caplog.records if "memory settings" in record.getMessage()]
    assert len(logged) == 1 and logged[0].startswith(f"memory settings for 8 x cpu: picked {picked}")
    assert "of 0.01 GiB a device (config.memory_limit_gib 0.01)" in logged[0]
    # The suite's persistent cache (tests/conftest.py) is the user's choice, kept over the workdir's.
    assert jax.config.jax_compilation_cache_dir == cache and not (tmp_path / "jax-cache").exists()


def test_processes_that_pick_differently_stop_naming_the_settings(monkeypatch):
    others = {"model.remat_policy": "nothing", "mesh.shape": [1, -1, 1]}
    # As the real gather gives them: through JSON, where tuples become lists.
    gathered = lambda pick: [json.loads(json.dumps(pick))] * 2 + [others]
    monkeypatch.setattr(memory_settings, "_from_every_process", gathered)
    with pytest.raises(ValueError) as error:
        memory_settings._check_same_picks({"model.remat_policy": "off", "mesh.shape": (1, -1, 1)})
    assert str(error.value) == (
        'the processes picked different memory settings (model.remat_policy: "off" on processes [0, 1], '
        '"nothing" on processes [2]): their devices or JAX versions differ; set these keys in the config'
    )


def step_compiles(stderr: str) -> list[str | None]:
    """Each compile of the training step a trainer logged (JAX_LOG_COMPILES), in order: the key of the persistent
    cache's entry when it was read from there, else None (XLA compiled it)."""
    compiles = []
    for line in stderr.splitlines():
        if "Compiling jit(step)" in line:
            compiles.append(None)
        elif hit := re.search(r"cache hit for 'jit_step' with key '([^']+)'", line):
            compiles[-1] = hit[1]
    return compiles


@pytest.mark.slow
def test_two_processes_pick_the_same_settings_under_a_cap_and_compile_each_once(tmp_path, demo_shards):
    # 4 devices in 2 processes, data parallel, batch 16: XLA's memory analysis gives the step 86.0 MB a device
    # without remat, 83.2 MB with dots_no_batch; under 0.0875 GiB (94.0 MB) only the second leaves HEADROOM (10%)
    # to spare. (An fsdp mesh would do too, but its step stalls XLA's CPU collectives with 4 fake devices.)
    workdir = tmp_path / "run"

    def run_two_processes(name):
        port = free_port()
        env = {**environment(2), "JAX_LOG_COMPILES": "1", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
        env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the trainer's own cache, in the workdir
        logs = [tmp_path / f"{name}-{i}.log" for i in range(2)]  # files: a full pipe would stall its process
        processes = [
            subprocess.Popen(
                train_command(
                    workdir,
                    demo_shards["train"],
                    "--config.total_steps=2",
                    "--config.checkpoint_every_steps=1",
                    "--config.memory_limit_gib=0.0875",
                    "--config.mesh.shape=(-1,1,1)",
                    f"--coordinator_address=localhost:{port}",
                    "--num_processes=2",
                    f"--process_id={i}",
                ),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log.open("w"),
                cwd=REPO,
            )
            for i, log in enumerate(logs)
        ]
        for p, log in zip(processes, logs):
            assert p.wait(timeout=600) == 0, log.read_text()[-4000:]
        return [log.read_text() for log in logs]

    first, second = run_two_processes("first")
    picks = [line for line in first.splitlines() if "memory settings for" in line]
    assert len(picks) == 1 and "'model.remat_policy': 'dots_no_batch'" in picks[0]
    assert "the step takes 0.0775 GiB of 0.0875 GiB a device (config.memory_limit_gib 0.0875)" in picks[0]
    assert "memory settings for" not in second  # logged once, by process 0; both exited 0, so both picked alike
    # Process 0 compiled each candidate once, and the trainer's own compile of the step read the winner back. Each
    # process compiled the two candidates and the trainer's step, nothing more. (Only process 0 writes the cache, and
    # on CPUs JAX's cache keys include the process's own devices: process 1 cannot read them; GPUs and TPUs can.)
    compiles = [step_compiles(first), step_compiles(second)]
    assert compiles[0][:2] == [None, None] and len(compiles[0]) == 3 and compiles[0][2], compiles[0]
    assert len(compiles[1]) == 3
    assert sorted(logged_losses(workdir)) == [1, 2] and all(map(math.isfinite, logged_losses(workdir).values()))
    assert any(name.startswith("jit_step-") for name in os.listdir(workdir / "jax-cache"))

    # A restart (from step 1) compiles no step on process 0: each candidate and the step are read back.
    shutil.rmtree(workdir / "checkpoints" / "2")
    restarted = step_compiles(run_two_processes("restart")[0])
    assert len(restarted) == 3 and all(restarted) and restarted[-1] == compiles[0][2], restarted
