"""The suite without the torch extra: modules that need PyTorch or its peers skip at collection, not fail."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIDDEN = ("torch", "open_clip", "transformers", "clip_benchmark", "safetensors")  # the torch extra, and what needs it

# Started by Python before pytest (`site` imports sitecustomize from the path): these packages then import as
# absent ones do, with ModuleNotFoundError, whether or not they are installed.
SITECUSTOMIZE = f"""
import sys


class HideTorchExtra:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {HIDDEN!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden by tests/test_without_torch.py)", name=name)
        return None


sys.meta_path.insert(0, HideTorchExtra())
"""


@pytest.mark.slow
def test_collection_skips_what_needs_torch_when_it_is_missing(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-rs", "-p", "no:cacheprovider", "tests"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    skipped = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    for module in ("test_clip_benchmark_crosscheck", "test_weight_layouts", "test_open_clip_parity"):
        assert any(f"tests/{module}.py" in line for line in skipped), (module, skipped)
    # Modules that need torch for some tests only still collect all of them.
    collected = result.stdout.splitlines()
    assert any(line.startswith("tests/test_convert_cli.py::test_import_stretches") for line in collected)
    assert any(line.startswith("tests/test_tokenizer.py::test_tokenize_equals_open_clip") for line in collected)
