"""`python -m captioning status`: how far a captioning run has got, read from its --out folder alone.

A shard is finished when its manifest entry `manifest/captions-NNNNN.json` exists (see run.py); a
`.json.tmp` beside it is an entry being written, or left by a killed worker, and does not count. The
number of shards comes from `run.json`, which `run` writes at the top of --out; without it the total,
and so the missing shards, are unknown. A `synthesize` run (captioning/synthesize.py) counts concept lines where
`run` counts images, and its skipped lines by reason.
"""

import collections
import os

from captioning.run import manifest_dir, manifest_shard, read_json, run_info_path


def run_status(out_dir: str, num_workers: int | None = None) -> dict:
    """Shards done and missing, image (or concept line), record, error and caption counts summed over the manifest
    entries; with `num_workers`, the missing shards of each worker (shard k is worker k % num_workers's)."""
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(f"--out {out_dir} is not a folder")
    manifest = manifest_dir(out_dir)
    if not os.path.isdir(manifest):
        raise FileNotFoundError(f"--out {out_dir} holds no captioning run: it has no manifest/ folder")
    done, counts, errors, captions, skipped = [], *(collections.Counter() for _ in range(4))
    for name in sorted(os.listdir(manifest)):
        k = manifest_shard(name)
        if k is None:
            continue
        entry = read_json(os.path.join(manifest, name))
        done.append(k)
        counts.update({key: entry[key] for key in ("images", "lines", "concepts", "records") if key in entry})
        errors.update({key: n for key, n in entry.items() if key.endswith("errors") and isinstance(n, int)})
        captions.update(entry["captions"])
        skipped.update(entry.get("skipped_lines", {}))
    info = read_json(run_info_path(out_dir)) or {}
    total = info.get("num_shards")
    missing = None if total is None else sorted(set(range(total)) - set(done))
    status = {"out": out_dir, "config_hash": info.get("config_hash"), "shards_done": len(done), "shards_total": total}
    if info.get("command") == "synthesize" or "lines" in counts:
        status.update(
            lines=counts["lines"],
            lines_total=info.get("lines_total"),
            concepts=counts["concepts"],
            concepts_total=info.get("concepts_total"),
            records=counts["records"],
            skipped_lines=dict(sorted(skipped.items())),
        )
    else:
        status.update(images=counts["images"], images_total=info.get("images_total"), records=counts["records"])
    status.update(errors=dict(sorted(errors.items())), captions=dict(sorted(captions.items())), missing=missing)
    if num_workers and missing is not None:
        by_worker = collections.defaultdict(list)
        for k in missing:
            by_worker[k % num_workers].append(k)
        status["missing_by_worker"] = {str(w): by_worker[w] for w in sorted(by_worker)}
    return status


def _ranges(shards: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8': a long missing list stays one line."""
    spans = []
    for k in shards:
        if spans and spans[-1][1] == k - 1:
            spans[-1][1] = k
        else:
            spans.append([k, k])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def status_table(status: dict) -> str:
    def known(n):
        return "unknown (no run.json)" if n is None else n

    lines = [f"shards    {status['shards_done']} of {known(status['shards_total'])} done"]
    if "lines" in status:
        lines.append(
            f"lines     {status['lines']} of {known(status['lines_total'])} ({status['concepts']} concepts), "
            f"{status['records']} records"
        )
        if status["skipped_lines"]:
            lines.append("skipped   " + ", ".join(f"{key} {n}" for key, n in status["skipped_lines"].items()))
    else:
        lines.append(f"images    {status['images']} of {known(status['images_total'])}, {status['records']} records")
    lines += [f"errors    {key} {n}" for key, n in status["errors"].items()]
    lines += [f"captions  {key} {n}" for key, n in status["captions"].items()]
    if status["missing"]:
        lines.append(f"missing   {_ranges(status['missing'])}")
    for worker, shards in status.get("missing_by_worker", {}).items():
        lines.append(f"  worker {worker}: {_ranges(shards)}")
    return "\n".join(lines)
