"""The code passes the project's lint and format checks (ruff; settings in pyproject.toml)."""

import importlib.util
import subprocess
import sys

import pytest
from recipes import REPO

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is not installed (test extra)")


@pytest.mark.parametrize("check", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(check):
    result = subprocess.run([sys.executable, "-m", "ruff", *check, "."], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
