import importlib.util
import os

# Eight fake CPU devices for the mesh tests; must be set before JAX is imported. Unsharded code
# still runs on device 0 alone.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import pytest  # noqa: E402
from absl import flags  # noqa: E402

# Grain's worker processes read absl flags; no absl app parses them under pytest.
flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory):
    """A small procedural corpus: 40 training and 16 held-out images, 10 captions each."""
    from rsclip_jax.demo.corpus import write_demo_corpus

    return write_demo_corpus(str(tmp_path_factory.mktemp("corpus")), num_train=40, num_heldout=16, records_per_shard=25)


@pytest.fixture(scope="session")
def tiny_tfds(tmp_path_factory):
    """data_dir of the prepared TFDS dataset `tiny_shapes` (tests/tiny_tfds.py)."""
    from tiny_tfds import prepare

    return prepare(str(tmp_path_factory.mktemp("tfds")))


# tests/captioning runs in the captioning environment (vLLM), from `make test`.
collect_ignore = [] if importlib.util.find_spec("vllm") else ["captioning"]
