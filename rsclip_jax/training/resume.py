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
    "data.synthetic_shards",
    "data.skip_bad_shards",
    "data.num_workers",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "peak_tflops_per_device",
    "evals.",
    "wandb.",
)


def describe_run(config: ml_collections.ConfigDict, records_per_shard: dict[str, list[int]]) -> dict:
    """`records_per_shard`: {config key of shards: their record counts, in order}."""
    return {"config": json.loads(config.to_json_best_effort()), "records_per_shard": dict(records_per_shard)}


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
    for key in sorted(set(saved["records_per_shard"]) | set(current["records_per_shard"])):
        now, then = current["records_per_shard"].get(key, []), saved["records_per_shard"].get(key, [])
        if now != then:
            found.append(
                f"the shards of {key}: now {_shards(now)}, saved {_shards(then)} (the data order follows the shards' "
                f"records)"
            )
    return found


def _shards(counts: list[int]) -> str:
    return f"{len(counts)} shards of {sum(counts)} records"
