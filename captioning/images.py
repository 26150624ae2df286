"""Input images: listing them, cutting the list into shards, reading them as a viewer shows them, shaping the
copy the captioner sees so that no model limit turns an odd image into a lost one, and rebuilding that copy
from a caption record for the judge and a distilled student."""

import io
import math
import os

import numpy as np
from PIL import Image, ImageOps

from captioning.alt_text import sidecars_among

# Qwen2-VL's processor refuses aspect ratios above 200:1 and images under one 28-px merged patch; staying
# well inside both leaves room for its own rounding to multiples of 28.
MAX_CAPTIONER_ASPECT = 100
MIN_CAPTIONER_SIDE = 28
# The pixel cap of the captioner's copy (--max-pixels).
DEFAULT_MAX_PIXELS = 448 * 448
# Pillow's own guard; an image above it is refused, not captioned (a decompression bomb or a scan).
# `captioning run` lifts Pillow's own checks and applies --max-image-pixels in their place.
DEFAULT_MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS
# The largest side a JPEG can hold.
_JPEG_MAX_SIDE = 65500
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageRefused(ValueError):
    """An image that is refused on purpose; its message is the reason written to the errors file."""


def list_inputs(images_dir: str | None = None, list_file: str | None = None) -> list[tuple[str, str]]:
    """(image id, path) pairs in a stable order: every non-hidden file under `images_dir` but the alt-text
    sidecars (photo.txt beside photo.jpg; ids are relative paths), or one path per line of `list_file` (ids are
    the lines)."""
    if (images_dir is None) == (list_file is None):
        raise ValueError("give exactly one of --images DIR and --list FILE")
    if images_dir is not None:
        if not os.path.isdir(images_dir):
            raise FileNotFoundError(f"--images {images_dir} is not a folder")
        found = []
        for root, dirs, files in os.walk(images_dir):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            names = [f for f in files if not f.startswith(".")]
            sidecars = sidecars_among(names)
            found += [os.path.join(root, f) for f in names if f not in sidecars]
        return sorted((os.path.relpath(p, images_dir), p) for p in found)
    with open(list_file) as f:
        lines = [line.strip() for line in f if line.strip()]
    base = os.path.dirname(os.path.abspath(list_file))
    return [(line, line if os.path.isabs(line) else os.path.join(base, line)) for line in lines]


def shard_slices(num_items: int, items_per_shard: int) -> list[range]:
    """Shard k holds items [k * n, (k + 1) * n): the same input list always gives the same shards."""
    return [range(start, min(start + items_per_shard, num_items)) for start in range(0, num_items, items_per_shard)]


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB as a viewer shows it: transparency over white, 16-bit and float greys scaled, not clipped."""
    if image.mode in _SIXTEEN_BIT_MODES:  # Pillow's convert would clip every value above 255 to white
        image = Image.fromarray((np.asarray(image, np.int64).clip(0, 65535) >> 8).astype(np.uint8))
    elif image.mode == "F":
        values = np.asarray(image, np.float64)
        scale = 255.0 if values.max(initial=0.0) <= 1.0 else 1.0  # [0, 1] floats, else already 0-255
        image = Image.fromarray((values * scale).clip(0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")


def read_image(
    path: str,
    *,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    short_side: int | None = None,
    area: int | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """(the file's first frame in RGB, EXIF orientation applied; its (width, height) as shown). A JPEG is decoded
    at a reduced scale where the result still has at least `short_side` and `area`. Raises ImageRefused above
    `max_image_pixels`, and PIL's errors for files that are not images."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_image_pixels:
                raise ImageRefused(_too_large(width, height, max_image_pixels))
            if short_side and area:
                # DCT scaling: libjpeg skips the detail of 1/2, 1/4 or 1/8 scale, for several times less work
                scale = max(short_side / min(width, height), (area / (width * height)) ** 0.5)
                if scale < 1:
                    image.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))
            decoded = image.size
            shown = _to_rgb(_oriented(image))
            turned = shown.size != decoded  # orientations 5-8 swap width and height
            return shown, (height, width) if turned else (width, height)
    except Image.DecompressionBombError as e:  # Pillow's own limit, where the caller has not lifted it
        raise ImageRefused(f"refused: {e}") from None


def _oriented(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 (a malformed EXIF block; viewers show such images unturned, and so do we)
        image.load()
        return image


def _too_large(width, height, limit) -> str:
    return (
        f"refused: {width}x{height} is {width * height} pixels, above --max-image-pixels {limit} "
        "(a decompression-bomb guard; raise it to caption such images)"
    )


def _scaled(image: Image.Image, scale: float) -> Image.Image:
    width, height = image.size
    return image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BICUBIC)


def _padded(width: int, height: int) -> tuple[int, int]:
    """(width, height) padded to MAX_CAPTIONER_ASPECT:1 where the image is longer."""
    long_side, short_side = max(width, height), min(width, height)
    if long_side <= MAX_CAPTIONER_ASPECT * short_side:
        return width, height
    padded_short = -(-long_side // MAX_CAPTIONER_ASPECT)
    return (width, padded_short) if width >= height else (padded_short, height)


def captioner_size(shown: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    """The size of the captioner's copy of an image shown at `shown`: padded to MAX_CAPTIONER_ASPECT:1, scaled to
    at most `max_pixels`, then up to a short side of MIN_CAPTIONER_SIDE (which wins over `max_pixels`: a model
    cannot see less)."""
    width, height = _padded(*shown)
    if width * height > max_pixels:  # rounded down: the processor's own cap would resize again
        scale = (max_pixels / (width * height)) ** 0.5
        width, height = max(1, int(width * scale)), max(1, int(height * scale))
    if min(width, height) < MIN_CAPTIONER_SIDE:
        scale = MIN_CAPTIONER_SIDE / min(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    return width, height


def for_captioner(image: Image.Image, max_pixels: int, shown: tuple[int, int] | None = None) -> Image.Image:
    """The captioner's copy: padded with white where it is longer than MAX_CAPTIONER_ASPECT:1, resized to
    `captioner_size(shown, max_pixels)`. `shown` (default: the image's own size) is the size of the source as
    shown; the copy's size follows from it alone, so a reduced decode of the source and the stored training
    JPEG give the same copy size."""
    shown = shown or image.size
    width, height = image.size
    padded = _padded(*shown)
    # the padded frame in this image's own pixels, never cropping it
    canvas = (max(width, round(padded[0] * width / shown[0])), max(height, round(padded[1] * height / shown[1])))
    if canvas != image.size:
        framed = Image.new("RGB", canvas, "white")
        framed.paste(image, ((canvas[0] - width) // 2, (canvas[1] - height) // 2))
        image = framed
    size = captioner_size(shown, max_pixels)
    return image if image.size == size else image.resize(size, Image.BICUBIC)


def covering_short_side(max_pixels: int) -> int:
    """The stored short side that keeps every pixel of the captioner's copy: that copy's content has a short side
    of at most the square root of `max_pixels` (a square's)."""
    return math.isqrt(max_pixels)


def load_image(
    path: str, *, short_side: int, max_pixels: int, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> tuple[Image.Image, bytes, tuple[int, int]]:
    """(the captioner's copy; JPEG bytes of the copy kept for training, its real content with the short side
    at most `short_side`; (width, height) as shown)."""
    rgb, size = read_image(path, max_image_pixels=max_image_pixels, short_side=short_side, area=max_pixels)
    scale = min(short_side / min(rgb.size), _JPEG_MAX_SIDE / max(rgb.size))  # a panorama keeps all it can
    training = _scaled(rgb, scale) if scale < 1 else rgb
    buffer = io.BytesIO()
    training.save(buffer, format="JPEG", quality=90)
    return for_captioner(rgb, max_pixels, size), buffer.getvalue(), size


def decode_record_image(jpeg: bytes) -> Image.Image:
    with Image.open(io.BytesIO(jpeg)) as image:
        return image.convert("RGB")


def record_for_captioner(record, max_pixels: int) -> Image.Image:
    """The captioner's copy rebuilt from a caption record, for the judge and a distilled student: the size the
    captioner saw (from the record's size as shown and the run's `max_pixels`), its detail up to the stored
    JPEG's, all of it where the stored short side is at least the square root of `max_pixels`."""
    return for_captioner(decode_record_image(record.image_jpeg), max_pixels, record.original_size)
