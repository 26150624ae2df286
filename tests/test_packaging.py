"""The package as pip installs it: a wheel holds the demo's recipes and assets, and runs them from any folder."""

import os
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_an_installed_package_finds_the_demo_recipes_from_any_folder(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), REPO],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("rsclip_jax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "rsclip_jax/demo/configs/demo.py",
        "rsclip_jax/demo/configs/demo_clips.py",
        "rsclip_jax/assets/bpe_simple_vocab_16e6.txt.gz",
    } <= names
    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)
    # From a folder with no checkout in sight, the unpacked wheel first on the path (not this checkout).
    code = (
        "import os, rsclip_jax.demo.__main__ as demo\n"
        "from rsclip_jax.config import load_recipe\n"
        "assert demo.__file__.startswith(os.environ['PYTHONPATH']), demo.__file__\n"
        "for recipe, _, _ in demo.RECIPES.values():\n"
        "    print(load_recipe(os.path.join(demo.RECIPE_DIR, recipe)).model.variant)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(installed)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["tiny", "tiny"]
