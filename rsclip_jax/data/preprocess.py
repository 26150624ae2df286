"""CLIP image preprocessing: decode, resize the short side, centre or random-resized crop, normalise.

Evaluation uses open_clip's own transform (PIL's bicubic), so scores match its; so do training crops by default
(`crop_like_open_clip`). `decode_crop`, the faster choice for training, decodes a JPEG with libjpeg-turbo at a
DCT scale that covers the crop and resizes with OpenCV. Crops stay uint8 on the host (a quarter of the bytes of
float32 to move); `normalize_images` runs inside the jitted step.
"""

import contextlib
import io
import math

import cv2
import jax.numpy as jnp
import numpy as np
import simplejpeg
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


def open_image(data: bytes) -> Image.Image:
    """JPEG (or any PIL format) bytes -> an image whose header is read and whose pixels are not yet decoded."""
    with decoding("image bytes"):
        return Image.open(io.BytesIO(data))


def decode_image(data: bytes) -> Image.Image:
    """JPEG (or any PIL format) bytes -> RGB image; UnreadableImageError if they do not decode."""
    image = open_image(data)
    with decoding("image bytes"):
        image.load()
        return image.convert("RGB")


def load_image(path: str) -> Image.Image:
    """An image file -> RGB image; UnreadableImageError if it does not decode."""
    with decoding(path), Image.open(path) as image:
        return image.convert("RGB")


def resize_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """open_clip's eval transform: bicubic resize of the short side to `size`, centre crop -> uint8 [size, size, 3].
    The sizes are torchvision's to the pixel (Resize truncates the long side, CenterCrop rounds the margin), so that
    scores match open_clip's on images of any shape."""
    width, height = image.size
    if width <= height:
        resized = image.resize((size, int(size * height / width)), Image.BICUBIC)
    else:
        resized = image.resize((int(size * width / height), size), Image.BICUBIC)
    left, top = int(round((resized.width - size) / 2)), int(round((resized.height - size) / 2))
    return np.asarray(resized.crop((left, top, left + size, top + size)))


Box = tuple[int, int, int, int]  # left, top, right, bottom, in pixels of the stored image


def center_crop_box(width: int, height: int) -> Box:
    """The centred square of the short side: what CLIP's resize-and-centre-crop keeps."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def random_crop_box(width: int, height: int, rng: np.random.Generator, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3)) -> Box:
    """torchvision's RandomResizedCrop box: area fraction in `scale`, aspect in `ratio`; 10 tries, then the
    centre square, as torchvision falls back to a centre crop."""
    for _ in range(10):
        area = width * height * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        crop_w, crop_h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
            return left, top, left + crop_w, top + crop_h
    return center_crop_box(width, height)


class EncodedImage:
    """Image bytes whose size is read from the header and whose pixels are not yet decoded. A YCbCr or greyscale
    JPEG (nearly every photo) decodes through libjpeg-turbo straight to an RGB array; any other file (PNG, a CMYK
    JPEG) through PIL, and so does one over PIL's decompression-bomb limit, which PIL refuses as it would
    otherwise. UnreadableImageError if the header does not read."""

    def __init__(self, data: bytes):
        self.data = data
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:  # not a JPEG, or one libjpeg-turbo cannot read: PIL says which
            colorspace = None
        if colorspace in ("YCbCr", "Gray") and width * height <= (Image.MAX_IMAGE_PIXELS or math.inf):
            self.pil, self.size = None, (width, height)
        else:
            self.pil = open_image(data)
            self.size = self.pil.size


def decode_covering(image: EncodedImage, box: Box, size: int) -> np.ndarray:
    """The image as uint8 RGB [h, w, 3], a JPEG decoded at the DCT scale `_dct_eighths` picks, so that a stored
    image larger than needed costs little more than one the crop's size."""
    width, height = image.size
    with decoding("image bytes"):
        if image.pil is None:
            eighths = _dct_eighths(width, height, box, size)
            return simplejpeg.decode_jpeg(
                image.data, "RGB", min_width=_scaled(width, eighths), min_height=_scaled(height, eighths)
            )
        # PIL's draft picks the smallest of 1/8, 1/4, 1/2 and 1 that covers the size asked for.
        image.pil.draft("RGB", _least_decoded_size(width, height, box, size))
        image.pil.load()
        return np.asarray(image.pil if image.pil.mode == "RGB" else image.pil.convert("RGB"))


def _scaled(length: int, eighths: int) -> int:
    """A side of `length` pixels decoded at the scale eighths/8, as libjpeg-turbo rounds it (up)."""
    return -(-length * eighths // 8)


def _least_decoded_size(width: int, height: int, box: Box, size: int) -> tuple[int, int]:
    """The smallest (width, height) to decode the image at for `box` to still span `size` pixels each way."""
    left, top, right, bottom = box
    return math.ceil(width * size / (right - left)), math.ceil(height * size / (bottom - top))


def _dct_eighths(width: int, height: int, box: Box, size: int) -> int:
    """n of the n/8 scale to decode a JPEG at: one at which `box` comes out at exactly `size` pixels, so no resize
    follows, or else the smallest of 1/8, 1/4, 1/2 and 1 at which it spans `size` each way. libjpeg-turbo runs
    its other scales without SIMD: 5/8 to 7/8 take longer than a whole decode, and 3/8 as long as 1/2; only
    sparing the resize makes up for that (bench/jpeg_scales.py)."""
    left, top, right, bottom = box
    exact = round(8 * size / (right - left))  # the only scale that can make the box `size` wide
    if 0 < exact < 8:
        rows = _span(top, bottom, _scaled(height, exact) / height)
        columns = _span(left, right, _scaled(width, exact) / width)
        if rows.stop - rows.start == columns.stop - columns.start == size:
            return exact
    least_width, least_height = _least_decoded_size(width, height, box, size)
    return next(
        (
            eighths
            for eighths in (1, 2, 4)
            if _scaled(width, eighths) >= least_width and _scaled(height, eighths) >= least_height
        ),
        8,
    )


def crop_like_open_clip(image: EncodedImage, box: Box | None, size: int) -> np.ndarray:
    """An image -> uint8 [size, size, 3] as open_clip's training transform makes it, the whole image decoded by
    PIL: `box` resized with PIL's bicubic (RandomResizedCrop), or with no box, Resize and CenterCrop."""
    with decoding("image bytes"):
        pixels = (image.pil or open_image(image.data)).convert("RGB")
    if box is None:
        return resize_center_crop(pixels, size)
    return np.asarray(pixels.resize((size, size), Image.BICUBIC, box=box))


def decode_crop(image: EncodedImage, box: Box | None, size: int) -> np.ndarray:
    """`box` of an image (no box: the centre square) -> uint8 [size, size, 3] (UnreadableImageError if it does not
    decode): decoded by `decode_covering`, then OpenCV's bicubic, or its area average when shrinking by 2x or more
    (bicubic alone would alias)."""
    width, height = image.size
    box = box or center_crop_box(width, height)
    left, top, right, bottom = box
    pixels = decode_covering(image, box, size)
    crop = pixels[_span(top, bottom, pixels.shape[0] / height), _span(left, right, pixels.shape[1] / width)]
    if crop.shape[:2] == (size, size):  # decoded at the crop's size
        return crop
    shrink = min(crop.shape[0], crop.shape[1]) / size
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if shrink >= 2 else cv2.INTER_CUBIC)


def _span(start: int, stop: int, scale: float) -> slice:
    """Pixels start..stop of the stored image in an image decoded at `scale`; at least one."""
    first = round(start * scale)
    return slice(first, max(round(stop * scale), first + 1))


def normalize_images(images_uint8):
    """uint8 [..., 3] -> float32 CLIP-normalised, on device."""
    images = images_uint8.astype(jnp.float32) / 255.0
    return (images - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)
