"""Reading images as a viewer shows them, and the captioner's copy that every model limit accepts."""

import io
import os

import numpy as np
import pytest
from odd_images import BLUE, RED, WHITE, close, top_and_bottom, write_odd_images
from PIL import Image

from captioning.images import (
    MAX_CAPTIONER_ASPECT,
    MIN_CAPTIONER_SIDE,
    ImageRefused,
    for_captioner,
    load_image,
    read_image,
)


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("odd"))
    return folder, write_odd_images(folder)


def test_every_kind_reads_as_shown(odd):
    folder, shown = odd
    for name, (size, centre) in shown.items():
        image, shown_size = read_image(os.path.join(folder, name))
        assert image.mode == "RGB" and image.size == shown_size == size, name
        if centre is not None:
            assert close(image.getpixel((size[0] // 2, size[1] // 2)), centre), (name, image.getpixel((0, 0)))
    top, bottom = top_and_bottom(read_image(os.path.join(folder, "phone.jpg"))[0])
    assert close(top, RED) and close(bottom, BLUE)  # EXIF orientation 6 applied, not just the size swapped


def test_16_bit_and_float_greys_are_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 256).astype(np.uint16)[None, :].repeat(4, 0)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "half.tiff")
    grey = np.asarray(read_image(str(tmp_path / "ramp.png"))[0])[0, :, 0]
    assert grey[0] == 0 and grey[-1] == 255 and np.all(np.diff(grey.astype(int)) >= 0)
    assert np.asarray(read_image(str(tmp_path / "half.tiff"))[0])[0, 0, 0] == 127


def test_stored_copy_keeps_content_and_size_as_shown(odd):
    folder, _ = odd
    for_model, jpeg, size = load_image(os.path.join(folder, "phone.jpg"), short_side=50, max_pixels=448 * 448)
    stored = Image.open(io.BytesIO(jpeg))
    assert size == (100, 200) and stored.size == (50, 100) and for_model.size == (100, 200)
    assert close(top_and_bottom(stored)[0], RED)
    _, jpeg, size = load_image(os.path.join(folder, "banner.jpg"), short_side=256, max_pixels=448 * 448)
    assert size == (4000, 12) and Image.open(io.BytesIO(jpeg)).size == (4000, 12)  # no padding kept


def test_large_jpegs_decode_reduced_but_keep_their_size_as_shown(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (2000, 1600), RED).save(tmp_path / "big.jpg", exif=exif)
    for_model, jpeg, size = load_image(str(tmp_path / "big.jpg"), short_side=256, max_pixels=448 * 448)
    assert size == (1600, 2000)
    assert Image.open(io.BytesIO(jpeg)).size == (256, 320) and for_model.size[0] * for_model.size[1] <= 448 * 448
    image, shown = read_image(str(tmp_path / "big.jpg"), short_side=256, area=448 * 448)
    assert shown == (1600, 2000) and image.size == (800, 1000)  # decoded at 1/2 scale, turned


@pytest.mark.parametrize("size", [(4000, 12), (12, 4000), (1, 1), (3, 900), (5000, 5000), (400, 300)])
def test_captioner_copy_is_within_the_model_limits(size):
    image = for_captioner(Image.new("RGB", size, RED), max_pixels=448 * 448)
    width, height = image.size
    assert max(width, height) <= MAX_CAPTIONER_ASPECT * min(width, height)
    assert min(width, height) >= MIN_CAPTIONER_SIDE
    assert width * height <= 448 * 448
    if size == (400, 300):
        assert image.size == size  # an ordinary image is left alone
    if size == (4000, 12):
        assert close(image.getpixel((width // 2, 0)), WHITE) and close(image.getpixel((width // 2, height // 2)), RED)


def test_decompression_bombs_are_refused_with_the_reason(tmp_path):
    Image.new("1", (1200, 1000)).save(tmp_path / "large.png")
    with pytest.raises(ImageRefused, match=r"1200x1000 is 1200000 pixels, above --max-image-pixels 1000000"):
        read_image(str(tmp_path / "large.png"), max_image_pixels=1_000_000)
    Image.new("1", (14000, 14000)).save(tmp_path / "bomb.png")  # past Pillow's own hard limit
    with pytest.raises(ImageRefused, match="refused: .*decompression bomb"):
        read_image(str(tmp_path / "bomb.png"), max_image_pixels=10**12)
