"""A worker's batches in shared memory: stacked straight into a block, kept mapped until the training process has
unlinked it, and none left behind."""

import os
import time

import grain
import numpy as np
import pytest

from rsclip_jax.data import shared_batches
from rsclip_jax.data.shared_batches import SHARED_MEMORY_MIN_BYTES, SharedMemoryStacker

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="Linux lists shared-memory blocks in /dev/shm")


def images(count: int = 8) -> list[np.ndarray]:
    return [np.full((64, 64, 3), i, np.uint8) for i in range(count)]


def receive(block: grain.multiprocessing.SharedMemoryArray) -> grain.multiprocessing.SharedMemoryArray:
    """What the training process does with a block's name: maps it, and unlinks it when the array is dropped."""
    received = grain.multiprocessing.SharedMemoryArray.from_metadata(block.metadata)
    received.unlink_on_del()
    return received


def test_without_enable_batches_are_plain_arrays():
    batch = SharedMemoryStacker().stack(images())
    assert type(batch) is np.ndarray and batch.shape == (8, 64, 64, 3)


def test_a_big_array_is_stacked_into_a_block_a_small_one_is_not():
    stacker = SharedMemoryStacker()
    stacker.enable()
    batch = stacker.stack(images())
    assert isinstance(batch, grain.multiprocessing.SharedMemoryArray) and batch.nbytes >= SHARED_MEMORY_MIN_BYTES
    assert np.array_equal(batch[:, 0, 0, 0], np.arange(8))
    ids = stacker.stack([np.int64(i) for i in range(4)])
    assert type(ids) is np.ndarray and ids.tolist() == [0, 1, 2, 3]
    receive(batch)  # unlinked at once: not left in /dev/shm


def test_a_block_stays_mapped_here_until_the_training_process_unlinks_it():
    stacker = SharedMemoryStacker()
    stacker.enable()
    first = stacker.stack(images())
    name = first.shm.name
    received = receive(first)
    del first
    stacker.stack(images())
    assert [block.shm.name for block in stacker.kept][0] == name  # still linked: still mapped here
    assert received[3, 0, 0, 0] == 3
    del received  # the training process drops the batch: the name goes (in a thread, once Grain's workers ran here)
    deadline = time.monotonic() + 10
    while os.path.exists(os.path.join("/dev/shm", name)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.exists(os.path.join("/dev/shm", name))
    third = stacker.stack(images())
    assert name not in [block.shm.name for block in stacker.kept]  # let go, so its pages are freed here
    for block in stacker.kept:
        receive(block)
    del third


def test_a_worker_keeps_a_bounded_number_of_blocks(monkeypatch):
    monkeypatch.setattr(shared_batches, "_MOST_KEPT", 3)
    stacker = SharedMemoryStacker()
    stacker.enable()
    blocks = [stacker.stack(images()) for _ in range(5)]
    assert [block.shm.name for block in stacker.kept] == [block.shm.name for block in blocks[-3:]]
    for block in blocks:
        receive(block)
