"""Ahead-of-time compilation for TPUs on this CPU machine (libtpu): the tiny recipe's real training step
compiled for a v5e 2x2 slice, its memory analysis, the HBM table against the compiler, a clear answer
when a step does not fit; and the accelerator names. Skips, with the reason, where libtpu cannot load."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsclip_jax.accelerators.topology import (
    GPU_HINT,
    LIBTPU_HINT,
    TPU_HBM_GIB,
    gpu_target,
    parse_tpu_name,
    tpu_chip_grid,
    tpu_target,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def libtpu():
    try:
        return tpu_target("v5e-1")
    except Exception as e:  # no libtpu, or one that cannot load on this machine
        pytest.skip(f"libtpu cannot load here ({e}); `pip install -e '.[tpu]'`")


def aot(*flags):
    return subprocess.run(
        [sys.executable, "-m", "rsclip_jax.aot", *flags], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_accelerator_type_names():
    assert parse_tpu_name("v5e-8") == ("v5e", 8) and parse_tpu_name("v4-8") == ("v4", 4)
    assert parse_tpu_name("v5p-128") == ("v5p", 64)
    assert [tpu_chip_grid("v5e", n) for n in (1, 4, 8, 256)] == [(1, 1), (2, 2), (2, 4), (16, 16)]
    assert [tpu_chip_grid("v4", n) for n in (4, 8, 16, 32, 256)] == [
        (2, 2, 1),
        (2, 2, 2),
        (2, 2, 4),
        (2, 4, 4),
        (4, 8, 8),
    ]
    with pytest.raises(ValueError, match="'v5e-3' is not a v5e slice"):
        parse_tpu_name("v5e-3")
    with pytest.raises(ValueError, match="unknown topology 'v7x-8'"):
        parse_tpu_name("v7x-8")


def test_the_hbm_table_is_what_the_compiler_allows(libtpu):
    mesh = jax.sharding.Mesh(np.array(libtpu.devices), ("data",))
    # A sum over the leading axis of outer products: XLA keeps the 160 GB product whole.
    too_big = jax.jit(
        lambda x: (x[:, None, :] * x[:, :, None]).sum(0),
        in_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
    )
    with pytest.raises(Exception, match="exceeds available HBM") as refused:
        too_big.lower(jax.ShapeDtypeStruct((2, 200_000), jnp.float32)).compile()
    available = float(re.search(r"available HBM \(([\d.]+)G\)", str(refused.value)).group(1))
    assert available == TPU_HBM_GIB["v5e"] and libtpu.hbm_bytes == int(available * 2**30)


@pytest.mark.slow
def test_the_tiny_recipe_compiles_for_a_v5e_2x2_slice(libtpu):
    result = aot("--config=rsclip_jax/demo/configs/demo.py", "--topology=v5e-4")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["chips"] == 4 and report["device_kind"] == "TPU v5 lite" and report["fits"]
    assert report["hbm_bytes"] == int(15.75 * 2**30)
    assert report["argument_bytes"] > 4 * 10**6  # at least the float32 parameters and AdamW moments, replicated
    assert report["temp_bytes"] > 0 and report["total_bytes"] >= report["argument_bytes"] + report["temp_bytes"] - 1
    assert 0 < report["headroom_pct"] < 100 and report["compile_s"] > 0 and report["libtpu"]
    # Unset memory settings are picked, and said: the fastest, since the tiny model fits easily; the
    # recipe's own settings (the demo computes in float32) are kept.
    assert report["picked"] == {
        "model.scan_layers": True,
        "model.attention": "xla",
        "mesh.shape": [-1, 1, 1],
        "model.remat_policy": "off",
        "optim.grad_cache_chunks": 1,
    }
    assert report["settings"]["model.dtype"] == "float32"
    assert report["tflops_per_chip"] == pytest.approx(report["tflops_per_step"] / 4, abs=1e-3)


@pytest.mark.slow
def test_a_step_that_does_not_fit_is_one_clear_line(libtpu):
    result = aot(
        "--config=rsclip_jax/demo/configs/demo.py",
        "--topology=v5e-4",
        "--config.batch_size=1048576",
        "--config.model.remat_policy=off",
    )
    assert result.returncode == 1
    assert not json.loads(result.stdout.strip().splitlines()[-1])["fits"]
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"does not fit: the training step at batch 1048576 on v5e-4 needs [\d.]+ GiB of HLO "
        r"temporaries per chip, of 15.75 GiB; lower config.batch_size, or set "
        r"config.model.remat_policy=nothing, or .*",
        last,
    ), last
    assert "Traceback" not in result.stderr


def test_unknown_topologies_are_one_line(libtpu):
    result = aot("--config=rsclip_jax/demo/configs/demo.py", "--topology=v5e-3")
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith("error: 'v5e-3' is not")


def test_a_missing_compiler_plugin_says_how_to_install_it(monkeypatch):
    # The installation is the outside edge here: pretend neither plugin is installed.
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *rest: None if name in ("libtpu", "jax_cuda13_plugin") else real_find_spec(name, *rest),
    )
    with pytest.raises(RuntimeError, match=re.escape(LIBTPU_HINT)):
        tpu_target("v5e-8")
    with pytest.raises(RuntimeError, match=re.escape(GPU_HINT)):
        gpu_target("h100-8")


@pytest.mark.slow
def test_several_slices_with_flash_attention_compile(libtpu):
    # Pallas flash attention runs per device under shard_map: compiled here over a two-slice mesh.
    result = aot(
        "--config=rsclip_jax/demo/configs/demo.py", "--topology=v5e-4", "--slices=2", "--config.model.attention=flash"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["chips"] == 8 and report["slices"] == 2 and report["picked"]["mesh.dcn_shape"] == [2, 1, 1]


@pytest.mark.slow
def test_the_tiny_recipe_compiles_for_an_h100_node():
    if importlib.util.find_spec("jax_cuda13_plugin") is None:
        pytest.skip("the CUDA plugin is not installed (`pip install -e '.[gpu]'`); the suite's environment has none")
    result = aot("--config=rsclip_jax/demo/configs/demo.py", "--topology=h100-8", "--config.model.dtype=bfloat16")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["chips"] == 8 and report["device_kind"] == "NVIDIA H100 80GB HBM3" and report["fits"]
    assert report["picked"]["model.attention"] == "cudnn"
    assert report["hbm_bytes"] == int(84929347584 * 0.75)  # what JAX lets a process allocate by default
