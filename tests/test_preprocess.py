"""Training crops (DCT-scaled decode through libjpeg-turbo or PIL, OpenCV resize) against open_clip's way (full
decode, PIL's bicubic), on the kinds of files users' shards hold; the evaluation crop against open_clip's own."""

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from rsclip_jax.data.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    EncodedImage,
    UnreadableImageError,
    center_crop_box,
    decode_covering,
    decode_crop,
    random_crop_box,
    resize_center_crop,
)
from rsclip_jax.demo.corpus import random_scene, render


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A rendered scene with some texture, at width x height."""
    rng = np.random.default_rng(seed)
    scene = render(random_scene(rng), max(width, height)).resize((width, height))
    noise = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return Image.blend(scene, noise.filter(ImageFilter.GaussianBlur(1.5)), 0.3)


def encoded(image: Image.Image, format: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def pil_crop(data: bytes, box, size: int) -> np.ndarray:
    """open_clip's training crop: the whole image decoded, the box resized with PIL's bicubic."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC, box=box))


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).mean())


def test_a_big_jpeg_decodes_at_a_smaller_dct_scale_and_crops_as_a_full_decode_would():
    data = encoded(photo(1024, 768), quality=92)
    image = EncodedImage(data)
    box = center_crop_box(*image.size)
    assert image.pil is None  # libjpeg-turbo's
    # 1/2: the 768-px box still spans 384 >= 224 pixels; at 1/4 it would span 192 (3/8 costs what 1/2 does).
    assert decode_covering(image, box, 224).shape == (384, 512, 3)
    assert decode_covering(image, (0, 0, 1024, 768), 96).shape == (96, 128, 3)  # 1/8: the whole image, 96 high
    crop = decode_crop(image, box, 224)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    assert mean_difference(crop, pil_crop(data, box, 224)) < 2.0


@pytest.mark.parametrize(
    "width,height,format,mode,options,decoder",
    [
        # the captioning pipeline's usual shard image: no smaller scale covers the crop
        (256, 256, "JPEG", "RGB", {}, "libjpeg-turbo"),
        (256, 256, "JPEG", "RGB", {"subsampling": 0}, "libjpeg-turbo"),  # chroma at full resolution (4:4:4)
        (256, 256, "JPEG", "RGB", {"subsampling": 1}, "libjpeg-turbo"),  # 4:2:2
        (300, 200, "PNG", "RGBA", {}, "pil"),  # not a JPEG: decoded whole; the alpha channel dropped
        (320, 240, "JPEG", "L", {}, "libjpeg-turbo"),  # greyscale
        (320, 240, "JPEG", "CMYK", {}, "pil"),  # libjpeg-turbo has no CMYK -> RGB of its own
        (2000, 40, "JPEG", "RGB", {}, "libjpeg-turbo"),  # a banner: the centre square is 40 px, scaled up
    ],
)
def test_crops_of_odd_files_match_open_clips(width, height, format, mode, options, decoder):
    image = photo(width, height).convert(mode)
    data = encoded(image, format, **({"quality": 92, **options} if format == "JPEG" else {}))
    assert (EncodedImage(data).pil is None) == (decoder == "libjpeg-turbo")
    rng = np.random.default_rng(1)
    for box in (center_crop_box(width, height), random_crop_box(width, height, rng)):
        crop = decode_crop(EncodedImage(data), box, 224)
        assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
        assert mean_difference(crop, pil_crop(data, box, 224)) < 2.0, (format, mode, box)


@pytest.mark.parametrize(
    "side,box,decoded",
    [
        (256, None, 224),  # 7/8 decodes slower than the whole image, but gives the crop's size: no resize after
        (358, None, 224),  # 5/8, likewise
        (256, (10, 10, 250, 250), 256),  # a 240-px box: at 7/8 it spans 210, so the whole decode, then the resize
        (300, None, 300),  # 7/8 would make 263, to be resized as the whole image is, and decode slower
        (448, None, 224),  # 1/2
        (1000, None, 250),  # 1/4; 3/8 would make 375 for the time 1/2 takes
        (1800, None, 225),  # 1/8
    ],
)
def test_jpegs_decode_at_the_crops_size_or_the_smallest_simd_scale_that_covers_it(side, box, decoded):
    data = encoded(photo(side, side), quality=90)
    box = box or center_crop_box(side, side)
    assert decode_covering(EncodedImage(data), box, 224).shape == (decoded, decoded, 3)
    crop = decode_crop(EncodedImage(data), box, 224)
    assert crop.shape == (224, 224, 3) and mean_difference(crop, pil_crop(data, box, 224)) < 2.0


def test_a_jpeg_whose_box_needs_every_pixel_decodes_as_pils_does():
    data = encoded(photo(256, 256), quality=95)
    pixels = decode_covering(EncodedImage(data), (0, 0, 256, 256), 256)
    with Image.open(io.BytesIO(data)) as image:  # PIL's libjpeg-turbo, maybe another version
        assert mean_difference(pixels, np.asarray(image.convert("RGB"))) < 0.5


def test_progressive_jpeg_decodes_at_a_smaller_scale_too():
    data = encoded(photo(900, 900), quality=90, progressive=True)
    image = EncodedImage(data)
    box = (100, 100, 800, 800)
    assert decode_covering(image, box, 224).shape == (450, 450, 3)  # 1/2: the 700-px box spans 350 >= 224
    assert mean_difference(decode_crop(image, box, 224), pil_crop(data, box, 224)) < 2.0


def test_an_image_over_pils_pixel_limit_goes_to_pil_which_refuses_it(monkeypatch):
    data = encoded(photo(256, 256), quality=90)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 256 * 256 // 3)  # over twice the limit: PIL's error, not a warning
    with pytest.raises(UnreadableImageError, match="DecompressionBomb"):
        EncodedImage(data)


def test_random_crop_boxes_keep_torchvisions_area_and_aspect_and_fall_back_to_the_centre():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = random_crop_box(640, 480, rng, scale=(0.3, 1.0))
        assert 0 <= left < right <= 640 and 0 <= top < bottom <= 480
        assert 0.3 - 0.01 <= (right - left) * (bottom - top) / (640 * 480) <= 1.0
        assert 3 / 4 - 0.02 <= (right - left) / (bottom - top) <= 4 / 3 + 0.02
    # A 100:1 image fits no box of aspect 3/4..4/3 with 90% of its area: torchvision's centre crop instead.
    assert random_crop_box(1000, 10, rng) == center_crop_box(1000, 10) == (495, 0, 505, 10)


@pytest.mark.parametrize("cut", ["pixels", "header"])
def test_a_truncated_jpeg_is_an_unreadable_image(cut):
    data = encoded(photo(256, 256), quality=90)
    with pytest.raises(UnreadableImageError, match="does not decode"):
        if cut == "pixels":  # the header is whole: the size reads, the pixels do not
            image = EncodedImage(data[: len(data) // 2])
            assert image.size == (256, 256)
            decode_crop(image, center_crop_box(*image.size), 224)
        else:
            EncodedImage(data[:40])


def test_bytes_that_are_no_image_are_an_unreadable_image():
    for data in (b"<html>not an image</html>", b"\xff\xd8\xff\xe0 a JPEG's first bytes, then nothing", b""):
        with pytest.raises(UnreadableImageError, match="does not decode"):
            EncodedImage(data)


@pytest.mark.parametrize("width, height", [(56, 40), (640, 480), (333, 500), (40, 41), (97, 64)])
def test_the_evaluation_crop_is_open_clips_to_the_pixel(width, height):
    open_clip = pytest.importorskip("open_clip")  # the torch extra
    image = photo(width, height)
    theirs = open_clip.image_transform(32, is_train=False)(image).numpy().transpose(1, 2, 0)
    ours = (resize_center_crop(image, 32) / 255.0 - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
