"""Keeping XLA's CPU buffers in the C heap between steps, for a process that computes on the CPU.

XLA's CPU runtime allocates a step's temporary buffer (4.3 GB for B/16 at batch 8) when the step starts and frees
it when the step ends. glibc hands an allocation that large to `mmap` and back to the kernel on `free`, so every
step faults in and zeroes every page again: 17-20% of a B/16 step on an Intel Xeon (perf: `clear_page_erms`,
`exc_page_fault`). With one malloc arena, no `mmap` allocations and no trimming, a freed buffer stays in the heap
and the next step reuses its pages. The price: the process keeps its peak memory until it exits.

glibc binds a thread to an arena at its first allocation, so this must run before JAX starts its threads.
"""

import ctypes
import glob
import os
import sys

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = -1  # man mallopt: -1 disables trimming


def computes_on_cpu() -> bool:
    """True where JAX will pick its CPU backend: JAX_PLATFORMS names cpu first, or no GPU or TPU is attached."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not (glob.glob("/dev/nvidia[0-9]*") or glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


def keep_freed_memory_in_heap() -> bool:
    """Sets glibc's allocator to reuse freed buffers (module docstring) where JAX computes on the CPU; False where
    it does not, or where the C library is not glibc."""
    if not (sys.platform.startswith("linux") and computes_on_cpu()):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    return all(
        mallopt(param, value) == 1
        for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM))
    )
