"""For tests that run the commands: `run_command` (python -m ..., on one CPU device), and recipe files:
rsclip_jax/demo/configs/demo.py with some keys and evals changed."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TEMPLATE = """
import ml_collections
from rsclip_jax.config import load_recipe


def get_config(arg=None):
    config = load_recipe({demo!r})
    config.update({top_level!r})
    config.data.train_shards = {shards!r}
    config.evals = ml_collections.ConfigDict({evals!r})
    return config
"""


def write_recipe(path, *, train_shards: list[str], evals: dict, **top_level) -> str:
    path.write_text(
        TEMPLATE.format(
            demo=os.path.join(REPO, "rsclip_jax", "demo", "configs", "demo.py"),
            top_level=top_level,
            shards=",".join(train_shards),
            evals=evals,
        )
    )
    return str(path)


def one_device() -> dict:
    """The environment of a command that runs on one CPU device (the suite's processes have 8 fake ones)."""
    return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def run_command(*args, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m ARGS` from the repository, as a user runs it, on one CPU device; with `check`, a failure fails the
    test with the command's stderr."""
    result = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=one_device()
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result
