"""Host work ahead of the engine: a thread pool runs `load` on the next items while the engine generates.

Pillow releases the GIL while it decodes and resizes, so threads overlap that work with generation; the
time the consumer still spends blocked on a result is what the engine waited for input.
"""

import collections
import concurrent.futures
import time


class ReadAhead:
    """Iterates over (item, result or the exception `load` raised), in order, `depth` items ahead."""

    def __init__(self, load, items, *, threads: int, depth: int):
        self._load, self._items, self._threads, self._depth = load, iter(items), threads, depth
        self.wait_seconds = 0.0

    def _run(self, item):
        try:
            return self._load(item)
        except Exception as e:  # noqa: BLE001 (a bad file raises whatever its decoder raises; the caller records it)
            return e

    def __iter__(self):
        with concurrent.futures.ThreadPoolExecutor(self._threads, thread_name_prefix="readahead") as pool:
            queued = collections.deque()
            for item in self._items:
                queued.append((item, pool.submit(self._run, item)))
                if len(queued) > self._depth:
                    yield self._next(queued)
            while queued:
                yield self._next(queued)

    def _next(self, queued):
        item, future = queued.popleft()
        start = time.perf_counter()
        result = future.result()
        self.wait_seconds += time.perf_counter() - start
        return item, result
