"""ReadAhead: results in order, a failure returned as its exception, work ahead, and no thread left behind."""

import threading
import time

from captioning.readahead import ReadAhead


def slow_square(n):
    time.sleep(0.01)
    if n == 3:
        raise ValueError("three")
    return n * n


def test_results_come_in_order_with_failures_as_their_exceptions():
    results = list(ReadAhead(slow_square, range(8), threads=3, depth=4))
    assert [item for item, _ in results] == list(range(8))
    assert [r for _, r in results if not isinstance(r, Exception)] == [n * n for n in range(8) if n != 3]
    assert isinstance(results[3][1], ValueError) and str(results[3][1]) == "three"


def test_it_reads_ahead_and_counts_the_time_it_made_the_consumer_wait():
    started = []
    reader = ReadAhead(lambda n: started.append(n) or time.sleep(0.05), range(20), threads=2, depth=6)
    iterator = iter(reader)
    next(iterator)
    time.sleep(0.3)  # the consumer is busy: the pool works on the next items meanwhile
    assert len(started) >= 6
    waited = reader.wait_seconds
    for _ in iterator:
        pass
    assert 0 < waited < reader.wait_seconds  # later items made the (idle) consumer wait


def test_a_consumer_that_stops_early_leaves_no_thread_running():
    iterator = iter(ReadAhead(slow_square, range(1000), threads=2, depth=8))
    next(iterator)
    iterator.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("readahead")]
