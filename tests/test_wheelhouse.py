"""GPU nodes without internet: `make wheelhouse` fills a folder of wheels on a machine with internet, and
`bench/gpu_suite.sh --wheelhouse DIR` installs from it alone, into a venv that sees the node's own packages.

Here this checkout's .venv plays the node: it has JAX, Flax, Optax, Orbax and PyTorch, as a GPU node has them.
"""

import json
import os
import re
import subprocess
import sys
import sysconfig

import pytest
from recipes import REPO

MiB = 1 << 20


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def gpu_suite_dry_run(*args):
    result = subprocess.run(
        ["bash", "bench/gpu_suite.sh", *args, "--dry-run"],
        cwd=REPO,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.returncode, result.stdout.splitlines(), result.stderr


def test_gpu_suite_installs_from_the_wheelhouse_alone(tmp_path):
    returncode, commands, stderr = gpu_suite_dry_run("--wheelhouse", str(tmp_path))
    assert returncode == 0, stderr
    assert commands[0].split() == [sys.executable, "-m", "venv", "--system-site-packages", ".venv-gpu"]
    assert commands[1].split() == [
        *".venv-gpu/bin/python -m pip install --no-index --find-links".split(),
        str(tmp_path),
        *"-e . -r bench/requirements-gpu-offline.txt".split(),
    ]
    benchmarks = [command.split()[3] for command in commands if command.startswith("timeout 600 ")]
    # No wheelhouse brings vLLM, and this .venv has none: the captioning benchmark is skipped, and says so.
    assert benchmarks == ["bench/train_step.py"]
    assert "skipping the captioning benchmark" in stderr


def test_gpu_suite_refuses_a_missing_wheelhouse(tmp_path):
    returncode, commands, stderr = gpu_suite_dry_run("--wheelhouse", str(tmp_path / "absent"))
    assert returncode == 2 and not commands and "error: --wheelhouse needs" in stderr


def node_site_packages(path, hidden):
    """A stand-in for the node's site-packages: a link to each entry of .venv's, less the metadata (.dist-info) of
    what the wheelhouse brings and of this project.

    Why not .venv itself: a venv made from .venv's python with --system-site-packages sees the base interpreter's
    packages, not .venv's (a venv of a venv inherits nothing), so the test venv gets a .pth file naming this
    folder instead. And .venv also has grain, open_clip and the rest: seen whole, pip would find them installed
    and take nothing from the wheelhouse. Without their metadata pip counts them missing and must install each
    from the wheelhouse; their modules, still linked here, come later on sys.path than the test venv's own.
    """
    path.mkdir()
    site = sysconfig.get_paths()["purelib"]
    for entry in os.listdir(site):
        if not (entry.endswith(".dist-info") and canonical(entry.split("-")[0]) in hidden):
            os.symlink(os.path.join(site, entry), path / entry)
    return path


IMPORTS = """
import importlib.metadata, json
import array_record.python.array_record_module, grain, ml_collections, open_clip, rsclip_jax
modules = {module.__name__: module.__file__ for module in (array_record, grain, ml_collections, open_clip, rsclip_jax)}
print(json.dumps({**modules, "rsclip-jax dist": str(importlib.metadata.distribution("rsclip-jax").locate_file(""))}))
"""


@pytest.mark.slow
def test_offline_install_from_the_wheelhouse(tmp_path):
    # The one step that needs the package index; without one, nothing here can be tested.
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir"]
        + ["--timeout", "10", "--retries", "1", "-d", str(tmp_path / "probe"), "grain==0.2.18"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if probe.returncode:
        pytest.skip(f"no package index reachable: pip download grain said {probe.stderr.strip()[-300:]!r}")

    wheelhouse = tmp_path / "wheelhouse"
    made = subprocess.run(
        ["make", "wheelhouse", f"WHEELHOUSE={wheelhouse}", f"PYTHON={sys.executable}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    wheels = {canonical(wheel.name.split("-")[0]): wheel.stat().st_size for wheel in wheelhouse.iterdir()}
    assert sum(wheels.values()) < 64 * MiB, f"{sum(wheels.values()) / MiB:.1f} MiB"
    assert {"grain", "array-record", "ml-collections", "open-clip-torch", "setuptools"} <= wheels.keys()
    too_big = [name for name in wheels if name in ("jax", "jaxlib", "torch", "triton") or name.startswith("nvidia-")]
    assert not too_big and not any(name.startswith("jax-cuda") for name in wheels), too_big

    # The suite's own two commands (its dry run's), with the test's venv in place of .venv-gpu.
    returncode, commands, stderr = gpu_suite_dry_run("--wheelhouse", str(wheelhouse))
    assert returncode == 0, stderr
    make_venv, install = (command.replace(".venv-gpu", str(tmp_path / "venv")) for command in commands[:2])
    subprocess.run(make_venv, shell=True, cwd=REPO, check=True, timeout=120)
    python = str(tmp_path / "venv" / "bin" / "python")
    venv_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    node = node_site_packages(tmp_path / "node", hidden=wheels.keys() | {"rsclip-jax"})
    with open(os.path.join(venv_site, "node-site-packages.pth"), "w") as pth:
        pth.write(f"{node}\n")
    # No pip settings of this machine's (its extra indexes and find-links): only the wheelhouse may feed it.
    offline = {name: value for name, value in os.environ.items() if not name.startswith("PIP_")}
    installed = subprocess.run(
        install,
        shell=True,
        cwd=REPO,
        env={**offline, "PIP_CONFIG_FILE": os.devnull},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]

    imported = subprocess.run([python, "-c", IMPORTS], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0, imported.stderr[-3000:]
    where = json.loads(imported.stdout.splitlines()[-1])
    for module in ("array_record", "grain", "ml_collections", "open_clip"):
        assert where[module].startswith(venv_site), where
    # The project runs from this source tree (an editable install), recorded in the test venv.
    assert where["rsclip_jax"].startswith(os.path.join(REPO, "rsclip_jax")), where
    assert where["rsclip-jax dist"] == venv_site, where
