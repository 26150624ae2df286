"""The training entry point, run as users run it: `python -m rsclip_jax.train` in subprocesses."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Runs that need only a few steps train 4 with these settings, so that they share one compiled step (the suite's
# persistent compilation cache, tests/conftest.py).
def train_command(workdir, shards, *overrides):
    return [
        sys.executable,
        "-m",
        "rsclip_jax.train",
        f"--config={REPO}/rsclip_jax/demo/configs/demo.py",
        f"--workdir={workdir}",
        f"--config.data.train_shards={','.join(shards)}",
        "--config.batch_size=16",
        "--config.log_every_steps=1",
        # A few steps: a worker's start-up would be most of the run (tests that need workers ask for them).
        "--config.model.context_length=32",
        "--config.data.num_workers=0",
        *overrides,
    ]


def environment(devices):
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}


def train(workdir, shards, *overrides, devices=1, check=True):
    result = subprocess.run(
        train_command(workdir, shards, *overrides),
        env=environment(devices),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    if check and result.returncode:
        raise AssertionError(f"training failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def process_group_alive(group):
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_processes(workdir, shards, *overrides, count=2, devices=4):
    """A run of `count` processes with `devices` CPU devices each, each process in its own process group (with
    its data workers), as on separate hosts."""
    port = free_port()
    return [
        subprocess.Popen(
            train_command(
                workdir,
                shards,
                *overrides,
                f"--coordinator_address=localhost:{port}",
                f"--num_processes={count}",
                f"--process_id={i}",
            ),
            env=environment(devices),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            start_new_session=True,
        )
        for i in range(count)
    ]


def finish(processes) -> list[str]:
    """Each process's stderr, once all have exited 0."""
    stderrs = [p.communicate(timeout=600)[1] for p in processes]
    for p, stderr in zip(processes, stderrs):
        assert p.returncode == 0, stderr[-4000:]
    return stderrs


def wait_for_first_log(workdir, processes):
    deadline = time.time() + 300
    while not os.path.exists(workdir / "metrics.jsonl") or os.path.getsize(workdir / "metrics.jsonl") == 0:
        assert all(p.poll() is None for p in processes) and time.time() < deadline, "a process ended first"
        time.sleep(0.05)


def logged(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f) if "loss" in r}


# Restarts on other hosts and workers are compared with one uninterrupted run of these settings, on shards with bad
# records, whose skips must be counted the same however many processes read them.
RESTARTED = ("--config.total_steps=48", "--config.checkpoint_every_steps=16", "--config.data.random_resized_crop=True")


@pytest.fixture(scope="module")
def restart_shards(demo_shards, tmp_path_factory):
    from test_data import spoil

    from rsclip_jax.data.records import read_shard

    records = list(read_shard(demo_shards["heldout"][0]))
    spoilt = spoil(records, str(tmp_path_factory.mktemp("spoilt") / "spoilt.array_record"), {2: "bad_image"})
    return [*demo_shards["train"], spoilt]


@pytest.fixture(scope="module")
def uninterrupted(restart_shards, tmp_path_factory):
    """metrics.jsonl's training lines by step, of one process with 8 devices and 1 data worker, never stopped."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    train(workdir, restart_shards, *RESTARTED, "--config.data.num_workers=1", devices=8)
    return logged(workdir)


def test_unknown_config_key_fails_at_once(tmp_path, demo_shards):
    result = train(tmp_path, demo_shards["train"], "--config.optim.lrr=1", check=False)
    assert result.returncode != 0
    assert "unknown key 'lrr'" in result.stderr and 'Did you mean "lr"' in result.stderr


def test_missing_shards_fail_before_compiling(tmp_path):
    result = train(tmp_path, [str(tmp_path / "missing-*.array_record")], check=False)
    assert result.returncode != 0
    assert "config.data.train_shards: no caption shard matches" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_cut_shard_stops_the_run_or_with_skip_bad_shards_is_left_out(tmp_path, demo_shards):
    cut = str(tmp_path / "cut.array_record")  # an interrupted copy of a real shard
    with open(demo_shards["train"][0], "rb") as f, open(cut, "wb") as out:
        out.write(f.read()[:-1000])
    shards = [*demo_shards["train"], cut]
    result = train(tmp_path / "strict", shards, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"config.data.train_shards: caption shard {cut} is cut short or damaged" in result.stderr
    assert not (tmp_path / "strict" / "config.json").exists()  # stopped before the run began

    result = train(tmp_path / "skip", shards, "--config.data.skip_bad_shards=True", "--config.total_steps=4")
    assert f"skipping caption shard {cut}: it is cut short or damaged" in result.stderr
    assert "skipped 1 of 3 caption shards of config.data.train_shards" in result.stderr
    with open(tmp_path / "skip" / "metrics.jsonl") as f:
        lines = [json.loads(line) for line in f]
    assert [line["skipped_shards"] for line in lines] == [1, 1, 1, 1]
    # The first step compiles: its time is logged apart, out of the throughput of the steps after it.
    assert lines[0]["first_step_s"] > 0 and "examples_per_sec" not in lines[0] and "mfu" not in lines[0]
    assert all(line["examples_per_sec"] > 0 and "first_step_s" not in line for line in lines[1:])


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path, demo_shards):
    train(tmp_path, demo_shards["train"], "--config.total_steps=4")
    result = train(
        tmp_path, demo_shards["train"], "--config.total_steps=8", "--config.model.context_length=16", check=False
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    where = f"{tmp_path}/checkpoints/4"
    assert f"the checkpoint {where} cannot be continued exactly under this config:" in result.stderr
    assert "model.context_length: now 16, saved 32" in result.stderr and "total_steps: now 8, saved 4" in result.stderr
    assert f"give the saved settings (the whole config is in {where}/run), or train in another --workdir" in (
        result.stderr
    )


@pytest.mark.slow
def test_same_losses_on_one_device_a_mesh_and_two_processes(tmp_path, demo_shards):
    shards, steps = demo_shards["train"], "--config.total_steps=4"
    train(tmp_path / "one", shards, steps, devices=1)
    train(tmp_path / "mesh", shards, steps, "--config.mesh.shape=(1,4,2)", devices=8)
    # (2, 2, 2) as 2 "slices" (processes) of (1, 2, 2): the hybrid mesh of multi-slice TPU runs
    finish(
        start_processes(
            tmp_path / "two", shards, steps, "--config.mesh.shape=(1,2,2)", "--config.mesh.dcn_shape=(2,1,1)"
        )
    )
    one, mesh, two = losses(tmp_path / "one"), losses(tmp_path / "mesh"), losses(tmp_path / "two")
    assert sorted(one) == [1, 2, 3, 4]
    for step in one:
        np.testing.assert_allclose([mesh[step], two[step]], one[step], rtol=1e-5, err_msg=f"step {step}")


@pytest.mark.slow
def test_exact_resume_after_sigkill(tmp_path, demo_shards):
    """Killed mid-run, the run restarts from its last checkpoint, at the batch that follows it, and logs the same
    losses as a run never stopped."""
    shards = demo_shards["train"]
    overrides = (
        "--config.total_steps=16",
        "--config.checkpoint_every_steps=4",
        "--config.data.random_resized_crop=True",
    )
    train(tmp_path / "whole", shards, *overrides)

    killed = tmp_path / "killed"
    run = subprocess.Popen(
        train_command(killed, shards, *overrides),
        env=environment(1),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not os.path.exists(killed / "checkpoints" / "8" / "commit_success.txt"):
        assert run.poll() is None and time.time() < deadline, "the run ended before its step-8 checkpoint"
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    deadline = time.time() + 30
    while process_group_alive(run.pid):  # its workers, which must not outlive it
        assert time.time() < deadline, "the killed run's worker processes are still running"
        time.sleep(0.1)
    assert max(losses(killed)) < 16  # it really died mid-run

    train(killed, shards, *overrides)  # restarts from the latest checkpoint by itself
    whole, resumed = losses(tmp_path / "whole"), losses(killed)
    assert sorted(resumed) == list(range(1, 17))
    for step in resumed:
        assert resumed[step] == pytest.approx(whole[step], rel=1e-6), f"step {step}"


@pytest.mark.slow
def test_restore_on_another_mesh(tmp_path, demo_shards):
    shards = demo_shards["train"]
    overrides = ("--config.total_steps=4", "--config.checkpoint_every_steps=2")
    train(tmp_path / "first", shards, *overrides, "--config.mesh.shape=(8,1,1)", devices=8)
    expected = losses(tmp_path / "first")  # the uninterrupted run, on the first mesh
    shutil.rmtree(tmp_path / "first" / "checkpoints" / "4")  # as if the run had stopped after step 2
    train(tmp_path / "first", shards, *overrides, "--config.mesh.shape=(1,4,2)", devices=8)
    resumed = losses(tmp_path / "first")
    assert sorted(resumed) == [1, 2, 3, 4]
    for step in (3, 4):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, demo_shards):
    result = train(
        tmp_path,
        demo_shards["train"],
        "--config.total_steps=8",
        "--config.checkpoint_every_steps=1",
        "--config.optim.lr=1e30",
        "--config.optim.warmup_steps=0",
        check=False,
    )
    assert result.returncode != 0
    assert "error: loss or gradients were not finite at step 2" in result.stderr
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]  # complete, and nothing after it


def test_sigterm_to_the_process_group_saves_and_stops(tmp_path, demo_shards):
    """As SLURM, Cloud TPU and GCE preempt: SIGTERM to the whole process group, the data workers included."""
    run = subprocess.Popen(
        train_command(
            tmp_path,
            demo_shards["train"],
            "--config.total_steps=100000",
            "--config.checkpoint_every_steps=100000",
            "--config.data.num_workers=2",
        ),
        env=environment(1),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not os.path.exists(tmp_path / "metrics.jsonl") or os.path.getsize(tmp_path / "metrics.jsonl") == 0:
        assert run.poll() is None and time.time() < deadline, run.stderr.read()[-3000:] if run.stderr else ""
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stderr[-3000:]
    saved = [int(d) for d in os.listdir(tmp_path / "checkpoints")]
    assert saved and saved[0] >= 1 and f"SIGTERM: saved step {saved[0]}" in stderr
    deadline = time.time() + 30
    while process_group_alive(run.pid):  # no worker outlives the run
        assert time.time() < deadline, "the run's worker processes are still running"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_run_killed_on_one_host_continues_exactly_on_two(tmp_path, restart_shards, uninterrupted):
    """Elastic restart: killed as 1 process x 8 devices with 1 data worker, restarted from its checkpoint as 2
    processes x 4 devices with 2 workers each; every later loss is the uninterrupted run's."""
    run = subprocess.Popen(
        train_command(tmp_path, restart_shards, *RESTARTED, "--config.data.num_workers=1"),
        env=environment(8),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not os.path.exists(tmp_path / "checkpoints" / "16" / "commit_success.txt"):
        assert run.poll() is None and time.time() < deadline, "the run ended before its step-16 checkpoint"
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert max(losses(tmp_path)) < 48  # it really died mid-run

    stderrs = finish(start_processes(tmp_path, restart_shards, *RESTARTED, "--config.data.num_workers=2"))
    assert "resuming from the checkpoint of step 16" in stderrs[0]
    resumed = losses(tmp_path)
    assert sorted(resumed) == list(range(1, 49))
    for step in range(17, 49):
        assert resumed[step] == pytest.approx(uninterrupted[step]["loss"], rel=1e-5), f"step {step}"


@pytest.mark.slow
def test_sigterm_to_each_hosts_process_group_saves_one_step_and_the_restart_resumes_exactly(
    tmp_path, restart_shards, uninterrupted
):
    """As a scheduler preempts a two-host job: SIGTERM to each host's process group, its 2 data workers included,
    one host after the other. Both processes save the same step and exit 0, no worker outlives them, and the
    restart logs the uninterrupted run's losses. Skipped records are summed over the processes: the same counts as
    the one process of the uninterrupted run."""
    processes = start_processes(tmp_path, restart_shards, *RESTARTED, "--config.data.num_workers=2")
    wait_for_first_log(tmp_path, processes)
    for p in reversed(processes):
        os.killpg(p.pid, signal.SIGTERM)
    stderrs = finish(processes)
    saved = {
        line.split("saved step ")[1].split()[0]
        for stderr in stderrs
        for line in stderr.splitlines()
        if "SIGTERM: saved step" in line
    }
    assert len(saved) == 1 and int(*saved) < 48, saved  # both processes stopped at the same step, mid-run
    assert os.listdir(tmp_path / "checkpoints") == list(saved)
    deadline = time.time() + 30
    while any(process_group_alive(p.pid) for p in processes):
        assert time.time() < deadline, "worker processes outlived their run"
        time.sleep(0.1)
    assert uninterrupted[48]["skipped_records"] > 0
    first = logged(tmp_path)
    for step, line in first.items():
        assert line["skipped_records"] == uninterrupted[step]["skipped_records"], f"step {step}"
        assert "data_wait_s" not in line or line["data_wait_max_s"] >= line["data_wait_s"]

    finish(start_processes(tmp_path, restart_shards, *RESTARTED, "--config.data.num_workers=2"))
    resumed = losses(tmp_path)
    assert sorted(resumed) == list(range(1, 49))
    for step in resumed:
        assert resumed[step] == pytest.approx(uninterrupted[step]["loss"], rel=1e-5), f"step {step}"


@pytest.mark.slow
def test_clips_recipe_trains_its_generator_and_exports_the_towers_only(tmp_path, demo_shards):
    load_file = pytest.importorskip("safetensors.numpy").load_file  # the torch extra, which export needs

    workdir, out = str(tmp_path / "run"), str(tmp_path / "export")
    recipe = [
        f"--config={REPO}/rsclip_jax/demo/configs/demo_clips.py",
        "--config.model.context_length=32",
        "--config.generator.queries=8",
    ]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "rsclip_jax.train",
            *recipe,
            f"--workdir={workdir}",
            f"--config.data.train_shards={','.join(demo_shards['train'])}",
            "--config.batch_size=8",
            "--config.total_steps=4",
            "--config.log_every_steps=2",
        ],
        env=environment(1),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        check=True,
    )
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    assert all(np.isclose(r["loss"], r["contrastive_loss"] + 2.0 * r["generator_loss"], rtol=1e-5) for r in logged)
    assert [r["step"] for r in logged] == [2, 4]

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rsclip_jax.convert",
            "export",
            *recipe,
            f"--workdir={workdir}",
            "--to=open_clip",
            f"--out={out}",
        ],
        env=environment(1),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        check=True,
    )
    assert "holds the CLIP towers only; the caption generator is not exported" in result.stdout
    names = set(load_file(os.path.join(out, "open_clip_model.safetensors")))
    assert "visual.proj" in names and "text_projection" in names and not any("generator" in n for n in names)
