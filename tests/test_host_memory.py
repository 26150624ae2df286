"""The CPU heap policy (rsclip_jax/accelerators/host_memory.py): a step's temporary buffer is faulted in once, not
every step."""

import os
import subprocess
import sys

import pytest

from rsclip_jax.accelerators.host_memory import computes_on_cpu

# A fresh process each: the policy must be set before JAX starts its threads. The temporary buffer is 64 x 1 MiB.
_STEP_FAULTS = """
import resource, sys
from rsclip_jax.accelerators.host_memory import keep_freed_memory_in_heap
if sys.argv[1] == "kept":
    assert keep_freed_memory_in_heap()
import jax, jax.numpy as jnp

@jax.jit
def step(x):
    stretched = x[None] * jnp.arange(1.0, 65.0)[:, None, None]
    return jnp.tanh(stretched @ x).sum()

x = jnp.ones((512, 512))
step(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step(x).block_until_ready()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults_of_three_steps(policy: str) -> int:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    run = subprocess.run(
        [sys.executable, "-c", _STEP_FAULTS, policy], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return int(run.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_step_buffers_are_reused_not_faulted_in_again():
    pages_of_temp = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert _page_faults_of_three_steps("default") >= 3 * pages_of_temp  # glibc returns the buffer each step
    assert _page_faults_of_three_steps("kept") < pages_of_temp // 10


def test_computes_on_cpu_follows_jax_platforms(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert computes_on_cpu()
    monkeypatch.setenv("JAX_PLATFORMS", "tpu,cpu")
    assert not computes_on_cpu()
