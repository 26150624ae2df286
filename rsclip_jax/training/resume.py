"""What a checkpoint's run was, and whether a restart can continue it exactly.

Each checkpoint holds its run's description: the config and the record counts of its shards, in order, which fix
the data order (data/pipeline.py). A restart continues the run exactly, on any number of processes, devices or
data workers, when everything that decides the numbers is the same; a key that only decides how the run executes
may change.
"""

import json

import ml_collections

from rsclip_jax.config import base_config

# Keys that decide how a run executes, not what it computes: the mesh, the memory settings and their cap (remat
# and gradient caching give the same loss and gradients), the loss's sharding, where the shards are (their records
# are compared), workers, logs, checkpoints and evals.
HOW_IT_RUNS = (
    "mesh.",
    "memory_limit_gib",
    "model.remat_policy",
    "model.attention",
    "optim.grad_cache_chunks",
    "loss.sharded",
    "loss.row_chunk",
    "data.train_shards",
    "data.skip_bad_shards",
    "data.num_workers",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "peak_tflops_per_device",
    "evals.",
    "wandb.",
)


def describe_run(config: ml_collections.ConfigDict, records_per_shard: list[int]) -> dict:
    return {"config": json.loads(config.to_json_best_effort()), "records_per_shard": list(records_per_shard)}


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        return {key: value for name, sub in tree.items() for key, value in _flat(sub, f"{prefix}{name}.").items()}
    return {prefix[:-1]: tree}


def differences(saved: dict, current: dict) -> list[str]:
    """ "key: now X, saved Y" for each setting that decides the numbers and differs. A key one side lacks (a
    checkpoint from before the key existed) counts as its default."""
    defaults = _flat(json.loads(base_config().to_json_best_effort()))
    now, then = {**defaults, **_flat(current["config"])}, {**defaults, **_flat(saved["config"])}
    keys = sorted(set(now) | set(then))
    found = [
        f"{key}: now {now.get(key, '(absent)')!r}, saved {then.get(key, '(absent)')!r}"
        for key in keys
        if now.get(key) != then.get(key) and not key.startswith(HOW_IT_RUNS)
    ]
    if saved["records_per_shard"] != current["records_per_shard"]:
        found.append(
            f"the shards of config.data.train_shards: now {_shards(current)}, saved {_shards(saved)} (the data order "
            f"follows the shards' records)"
        )
    return found


def _shards(run: dict) -> str:
    counts = run["records_per_shard"]
    return f"{len(counts)} shards of {sum(counts)} records"
