"""Input images: listing them, cutting the list into shards, decoding and resizing."""

import io
import os

from PIL import Image


def list_inputs(images_dir: str | None = None, list_file: str | None = None) -> list[tuple[str, str]]:
    """(image id, path) pairs in a stable order: every non-hidden file under `images_dir` (ids are
    relative paths), or one path per line of `list_file` (ids are the lines)."""
    if (images_dir is None) == (list_file is None):
        raise ValueError("give exactly one of --images DIR and --list FILE")
    if images_dir is not None:
        if not os.path.isdir(images_dir):
            raise FileNotFoundError(f"--images {images_dir} is not a folder")
        found = []
        for root, dirs, files in os.walk(images_dir):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found += [os.path.join(root, f) for f in files if not f.startswith(".")]
        return sorted((os.path.relpath(p, images_dir), p) for p in found)
    with open(list_file) as f:
        lines = [line.strip() for line in f if line.strip()]
    base = os.path.dirname(os.path.abspath(list_file))
    return [(line, line if os.path.isabs(line) else os.path.join(base, line)) for line in lines]


def shard_slices(num_items: int, items_per_shard: int) -> list[range]:
    """Shard k holds items [k * n, (k + 1) * n): the same input list always gives the same shards."""
    return [range(start, min(start + items_per_shard, num_items)) for start in range(0, num_items, items_per_shard)]


def _scaled(image: Image.Image, scale: float) -> Image.Image:
    width, height = image.size
    return image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BICUBIC)


def load_image(path: str, *, short_side: int, max_pixels: int) -> tuple[Image.Image, bytes, tuple[int, int]]:
    """(the image for the captioner, at most `max_pixels`; JPEG bytes of the copy kept for training, short
    side at most `short_side`; original (width, height)). PIL raises on a file that is not an image."""
    with Image.open(path) as image:
        image.load()
        original = image.size
        rgb = image.convert("RGB")
    area = original[0] * original[1]
    for_captioner = _scaled(rgb, (max_pixels / area) ** 0.5) if area > max_pixels else rgb
    for_training = _scaled(rgb, short_side / min(original)) if min(original) > short_side else rgb
    buffer = io.BytesIO()
    for_training.save(buffer, format="JPEG", quality=90)
    return for_captioner, buffer.getvalue(), original


def decode_record_image(jpeg: bytes) -> Image.Image:
    with Image.open(io.BytesIO(jpeg)) as image:
        return image.convert("RGB")
