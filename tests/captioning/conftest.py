import os
import sys

import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
from tiny_qwen2 import build_tiny_qwen2  # noqa: E402
from tiny_qwen2vl import build_tiny_qwen2vl  # noqa: E402

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return build_tiny_qwen2vl(str(tmp_path_factory.mktemp("tiny-qwen2vl")))


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory):
    """A text-only LLM, for `captioning synthesize`."""
    return build_tiny_qwen2(str(tmp_path_factory.mktemp("tiny-qwen2")))


def make_images(folder, count):
    """`count` small JPEG/PNG images, one corrupt JPEG and one text file."""
    os.makedirs(os.path.join(folder, "sub"), exist_ok=True)
    for i in range(count):
        name = os.path.join(folder, "sub" if i % 4 == 0 else "", f"img{i:03d}.{'png' if i % 3 == 0 else 'jpg'}")
        Image.new("RGB", (320 + 7 * i, 240), (9 * i % 255, 120, 200)).save(name)
    with open(os.path.join(folder, "broken.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    with open(os.path.join(folder, "notes.txt"), "w") as f:
        f.write("not an image")
    return folder


@pytest.fixture
def images(tmp_path):
    return make_images(str(tmp_path / "images"), 6)
