"""Start-up over many caption shards in a bucket: the seconds from the shard pattern to the first batch, as the
trainer spends them (list and check the shards, build the dataset, read the first batch).

    .venv/bin/python bench/shard_startup.py [--shards 1000] [--records-per-shard 2] [--batch 8]

The bucket is gcp-storage-emulator's, in this process's memory, read through the real clients (gcsfs, ArrayRecord's
own Cloud Storage reader), as tests/conftest.py sets them up: a real bucket's round trips are slower, so these
seconds are a floor. Prints one JSON line with each phase's seconds and the CPU.
"""

import argparse
import json
import os
import socket
import tempfile
import time

from etils import epath
from machine import cpu_name


def start_emulator():
    from gcp_storage_emulator.server import create_server

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    server = create_server("localhost", port, in_memory=True, default_bucket="rsclip-bench")
    server.start()
    endpoint = f"http://localhost:{port}"
    os.environ.update(
        STORAGE_EMULATOR_HOST=endpoint,
        CLOUD_STORAGE_EMULATOR_ENDPOINT=endpoint,
        GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
    )
    return server, "gs://rsclip-bench"


def upload_shards(bucket: str, shards: int, records_per_shard: int) -> None:
    from rsclip_jax.data.records import read_shard, write_shard
    from rsclip_jax.demo.corpus import write_demo_corpus

    with tempfile.TemporaryDirectory() as local:
        corpus = write_demo_corpus(
            local, num_train=records_per_shard, num_heldout=1, records_per_shard=records_per_shard
        )
        records = list(read_shard(corpus["train"][0]))
        path = os.path.join(local, "shard.array_record")
        write_shard(path, records)
        for index in range(shards):
            epath.Path(path).copy(epath.Path(f"{bucket}/train-{index:05d}.array_record"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--records-per-shard", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    server, bucket = start_emulator()
    upload_shards(bucket, args.shards, args.records_per_shard)

    from rsclip_jax.data.example_spec import ExampleSpec
    from rsclip_jax.data.pipeline import train_dataset
    from rsclip_jax.data.shards import resolve_shards

    spec = ExampleSpec(image_size=32, context_length=32)
    seconds = {}
    start = time.perf_counter()
    shards, _ = resolve_shards(f"{bucket}/train-*.array_record", "config.data.train_shards")
    seconds["resolve_shards"] = time.perf_counter() - start
    start = time.perf_counter()
    dataset, _ = train_dataset(
        list(shards), spec, batch_size=args.batch, seed=0, records_per_shard=list(shards.values())
    )
    iterator = iter(dataset)
    seconds["train_dataset"] = time.perf_counter() - start
    start = time.perf_counter()
    next(iterator)
    seconds["first_batch"] = time.perf_counter() - start
    print(
        json.dumps(
            {
                "bench": "shard_startup",
                "shards": args.shards,
                "records_per_shard": args.records_per_shard,
                "batch": args.batch,
                **{name: round(value, 2) for name, value in seconds.items()},
                "total_s": round(sum(seconds.values()), 2),
                "cpu": cpu_name(),
            }
        )
    )
    server.stop()  # its threads would keep the process alive


if __name__ == "__main__":
    main()
