"""CLIP image preprocessing: decode, resize the short side, centre or random-resized crop, normalise.

Crops stay uint8 on the host (a quarter of the bytes of float32 to move); `normalize_images` runs
inside the jitted step.
"""

import contextlib
import io
import math

import jax.numpy as jnp
import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class UnreadableImageError(OSError):
    """An image that does not decode: not an image, truncated, corrupt, or over PIL's decompression-bomb limit."""


@contextlib.contextmanager
def decoding(what: str):
    """Raises UnreadableImageError naming `what` for any error while decoding it."""
    # PIL raises many types on bad files: OSError, SyntaxError, ValueError, and DecompressionBombError, which
    # derives from Exception alone (above 2x Image.MAX_IMAGE_PIXELS; above 1x it only warns).
    try:
        yield
    except Exception as e:
        raise UnreadableImageError(f"{what} does not decode ({type(e).__name__}: {e})") from e


def decode_image(data: bytes) -> Image.Image:
    """JPEG (or any PIL format) bytes -> RGB image; UnreadableImageError if they do not decode."""
    with decoding("image bytes"):
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.convert("RGB")


def load_image(path: str) -> Image.Image:
    """An image file -> RGB image; UnreadableImageError if it does not decode."""
    with decoding(path), Image.open(path) as image:
        return image.convert("RGB")


def resize_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """open_clip's eval transform: bicubic resize of the short side to `size`, centre crop -> uint8 [size, size, 3]."""
    width, height = image.size
    scale = size / min(width, height)
    resized = image.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BICUBIC)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)))


def random_resized_crop(
    image: Image.Image, size: int, rng: np.random.Generator, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3)
) -> np.ndarray:
    """Inception-style crop (area fraction in `scale`, aspect in `ratio`) resized to uint8 [size, size, 3]."""
    width, height = image.size
    for _ in range(10):
        area = width * height * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        crop_w, crop_h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left, top = rng.integers(0, width - crop_w + 1), rng.integers(0, height - crop_h + 1)
            box = (left, top, left + crop_w, top + crop_h)
            return np.asarray(image.resize((size, size), Image.BICUBIC, box=box))
    return resize_center_crop(image, size)  # torchvision's fallback is a centre crop too


def normalize_images(images_uint8):
    """uint8 [..., 3] -> float32 CLIP-normalised, on device."""
    images = images_uint8.astype(jnp.float32) / 255.0
    return (images - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)
