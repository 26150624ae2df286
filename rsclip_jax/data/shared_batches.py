"""How a worker stacks a batch into shared memory, and why it keeps the last ones mapped.

Grain hands each big array of a batch from a worker to the training process in a POSIX shared-memory block, which
the training process unlinks when it drops the array. The kernel frees a block's pages when its name and its last
mapping are gone, and freeing them was about a third of what a batch cost the training process (bench/README.md).
So the worker keeps its own mapping of each block until the training process has unlinked it: the training process
then only drops a name, and the pages are freed in the worker, one of many. No correctness rests on this: whichever
process lets go last frees the pages.
"""

import math
import os

import grain
import numpy as np

# Arrays under this size (image ids, skip counts) cross pickled: a shared-memory block each cost the training
# process more than the copy.
SHARED_MEMORY_MIN_BYTES = 1 << 16
_SHARED_MEMORY_NAMES = "/dev/shm"  # where Linux lists the blocks; elsewhere none is found, and none is kept
_MOST_KEPT = 16  # blocks a worker keeps at most, should the training process hold on to many batches


class SharedMemoryStacker:
    """Stacks arrays into a new shared-memory block once `enable` is called (in a worker), else into memory."""

    def __init__(self):
        self.enabled = False
        self.kept: list[grain.multiprocessing.SharedMemoryArray] = []  # the blocks this process still maps

    def enable(self) -> None:
        self.enabled = True

    def stack(self, arrays: list[np.ndarray]) -> np.ndarray:
        shape, dtype = (len(arrays), *arrays[0].shape), arrays[0].dtype
        if not self.enabled or math.prod(shape) * dtype.itemsize < SHARED_MEMORY_MIN_BYTES:
            return np.stack(arrays)
        block = np.stack(arrays, out=grain.multiprocessing.SharedMemoryArray(shape, dtype))
        self.kept = [kept for kept in self.kept if os.path.exists(os.path.join(_SHARED_MEMORY_NAMES, kept.shm.name))]
        self.kept = [*self.kept[-(_MOST_KEPT - 1) :], block]
        return block
