"""bench/caption_throughput.py end to end on a tiny random Qwen2.5-VL through vLLM."""

import json
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "caption_throughput.py")


@pytest.mark.slow
def test_bench_reports_both_layouts_with_forced_lengths_and_the_image_prefix_shared():
    command = [
        sys.executable,
        BENCH,
        "--model-size",
        "tiny",
        "--images",
        "2",
        "--long-words",
        "8",
        "--short-words",
        "4",
        "--max-num-seqs",
        "8",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # vLLM writes its own log lines to stdout too
    report = json.loads([line for line in result.stdout.splitlines() if line.startswith('{"bench"')][-1])
    assert report["weights"] == "random" and report["tokens_per_word"] == 1.3
    assert report["output_tokens_per_request"] == {"long": 10, "short": 5}  # round(8 * 1.3), round(4 * 1.3)
    shared, unshared = report["modes"]["shared"], report["modes"]["unshared"]
    for mode in (shared, unshared):
        assert mode["images"] == 2 and mode["requests"] == 20
        assert mode["output_tokens"] == 2 * 5 * (10 + 5)
        assert 0 <= mode["prefix_cache_hit_rate"] <= 1
        assert mode["images_per_s"] > 0 and mode["output_tokens_per_s"] > 0
    assert shared["prefix_cache_hit_rate"] > unshared["prefix_cache_hit_rate"]
    assert report["shared_over_unshared"] == pytest.approx(shared["images_per_s"] / unshared["images_per_s"], rel=1e-2)
