import importlib.util
import os
import socket

# Eight fake CPU devices for the mesh tests; must be set before JAX is imported. Unsharded code
# still runs on device 0 alone.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

# One persistent compilation cache for the suite: its own processes, pytest-xdist's workers and the trainer
# subprocesses the tests start (which inherit it through the environment) compile each program once. Every
# program is kept, however quick its compile: tiny models compile in well under JAX's default one second.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(REPO, ".cache", "jax-compilation"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# Test processes share two cores, and OpenMP's idle threads (torch's, vLLM's engine's) spin by default, taking
# cycles from the processes beside them; passive, they sleep.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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


@pytest.fixture(scope="session")
def gcs_bucket():
    """gs://rsclip-test, a stand-in for a Cloud Storage bucket, which cannot be reached from here: the JSON API of
    gcp-storage-emulator, in memory. The clients are the real ones: gcsfs (etils.epath's gs:// paths) and ArrayRecord's
    own Cloud Storage reader, each sent to the emulator by its own setting; subprocesses inherit them. For the whole
    session: epath keeps the gcsfs client it made first, and with it the emulator's address."""
    # The test extra's; the torch-free install lacks them.
    create_server = pytest.importorskip("gcp_storage_emulator.server", reason="needs the test extra").create_server
    pytest.importorskip("gcsfs", reason="needs the test extra (gs:// paths)")

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    server = create_server("localhost", port, in_memory=True, default_bucket="rsclip-test")
    server.start()
    endpoint = f"http://localhost:{port}"
    settings = {
        "STORAGE_EMULATOR_HOST": endpoint,  # gcsfs
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": endpoint,  # google-cloud-cpp, inside ArrayRecord's reader
        # gcsfs's bucket-type lookup goes to the Storage Control API, which the emulator lacks.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    yield "gs://rsclip-test"
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name)
        else:
            os.environ[name] = value
    server.stop()


# tests/captioning runs in the captioning environment (vLLM), from `make test`.
collect_ignore = [] if importlib.util.find_spec("vllm") else ["captioning"]
