"""`python -m captioning status` on manifest folders written by hand: no engine, no images."""

import json
import os

import pytest

from captioning.cli import main
from captioning.status import run_status


def write_entry(out, k, images=10, records=9, decode_errors=1, caption_errors=0):
    with open(os.path.join(out, "manifest", f"captions-{k:05d}.json"), "w") as f:
        json.dump(
            {
                "shard": f"captions-{k:05d}.array_record",
                "config_hash": "abc",
                "images": images,
                "records": records,
                "decode_errors": decode_errors,
                "caption_errors": caption_errors,
                "captions": {"Observer of Details/long": records, "Observer of Details/short": records},
            },
            f,
        )


@pytest.fixture
def out(tmp_path):
    """Six shards over three workers: 0, 2 and 3 finished; worker 1 was killed writing shard 4's entry."""
    out = str(tmp_path / "captions")
    os.makedirs(os.path.join(out, "manifest"))
    for k in (0, 2, 3):
        write_entry(out, k, caption_errors=k)
    with open(os.path.join(out, "manifest", "captions-00004.json.tmp"), "w") as f:
        f.write('{"shard": "captions-00004.array_rec')
    with open(os.path.join(out, "run.json"), "w") as f:
        json.dump({"config_hash": "abc", "num_shards": 6, "images_total": 55}, f)
    return out


def test_counts_done_and_missing_shards_ignoring_a_partial_entry(out):
    status = run_status(out, num_workers=3)
    assert status["shards_done"] == 3 and status["shards_total"] == 6 and status["missing"] == [1, 4, 5]
    assert status["missing_by_worker"] == {"1": [1, 4], "2": [5]}
    assert (status["images"], status["images_total"], status["records"]) == (30, 55, 27)
    assert status["errors"] == {"caption_errors": 5, "decode_errors": 3}
    assert status["captions"] == {"Observer of Details/long": 27, "Observer of Details/short": 27}


def test_without_run_json_the_total_is_unknown(out):
    os.remove(os.path.join(out, "run.json"))
    status = run_status(out, num_workers=3)
    assert status["shards_done"] == 3 and status["shards_total"] is None and status["missing"] is None
    assert "missing_by_worker" not in status


def test_cli_prints_one_json_line_and_a_table(out, capsys):
    main(["status", "--out", out])
    captured = capsys.readouterr()
    [line] = captured.out.splitlines()
    assert json.loads(line)["missing"] == [1, 4, 5]
    assert "shards    3 of 6 done" in captured.err and "missing   1,4-5" in captured.err


@pytest.mark.parametrize("make", ["nothing", "empty folder"])
def test_a_missing_or_empty_out_names_the_folder(tmp_path, capsys, make):
    folder = str(tmp_path / "captions")
    if make == "empty folder":
        os.makedirs(folder)
    with pytest.raises(SystemExit) as exit_info:
        main(["status", "--out", folder])
    assert folder in str(exit_info.value) and str(exit_info.value).startswith("error: --out ")


def test_a_corrupt_entry_is_named(out):
    with open(os.path.join(out, "manifest", "captions-00001.json"), "w") as f:
        f.write("{")
    with pytest.raises(ValueError, match="captions-00001.json is not valid JSON"):
        run_status(out)
