"""Reading images as a viewer shows them, and the captioner's copy that every model limit accepts."""

import io
import os

import numpy as np
import pytest
from odd_images import BLUE, RED, WHITE, close, top_and_bottom, write_odd_images
from PIL import Image

from captioning.images import (
    DEFAULT_MAX_PIXELS,
    MAX_CAPTIONER_ASPECT,
    MIN_CAPTIONER_SIDE,
    ImageRefused,
    covering_short_side,
    decode_record_image,
    for_captioner,
    load_image,
    read_image,
    record_for_captioner,
)
from rsclip_jax.data.records import CaptionRecord

# (width, height) as shown: square, wide, tall, small (below --max-pixels), a banner padded to 100:1, and a JPEG
# large enough to be decoded at a reduced scale. Before the judge's copy was sized from the size as shown, the
# stored 256-px JPEG gave it about a third of the captioner's pixels, and its own rounding another size.
SHAPES = {"square": (900, 900), "wide": (1000, 600), "tall": (700, 1900), "small": (60, 40)}
SHAPES |= {"banner": (20000, 10), "large": (4000, 3000)}


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


@pytest.mark.parametrize("max_pixels", [DEFAULT_MAX_PIXELS, 300 * 300])
@pytest.mark.parametrize("shape", SHAPES)
def test_the_judges_copy_of_a_record_is_the_captioners_size(shape, max_pixels, tmp_path):
    """A record written as `captioning run` writes it (load_image, the default --short-side) gives the judge and
    a distilled student (record_for_captioner) the size the captioner saw, and by default every pixel of it."""
    path = str(tmp_path / "image.jpg")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (*SHAPES[shape][::-1], 3), np.uint8)).save(path)
    captioners, jpeg, size = load_image(path, short_side=covering_short_side(max_pixels), max_pixels=max_pixels)
    judges = record_for_captioner(CaptionRecord(shape, jpeg, size, ()), max_pixels)
    assert judges.size == captioners.size, (judges.size, captioners.size)
    stored = decode_record_image(jpeg).size
    if shape != "banner":  # the banner's copy is padding around a 10-px strip, which the stored copy holds whole
        assert stored[0] >= captioners.size[0] and stored[1] >= captioners.size[1], (stored, captioners.size)


def test_decompression_bombs_are_refused_with_the_reason(tmp_path):
    Image.new("1", (1200, 1000)).save(tmp_path / "large.png")
    with pytest.raises(ImageRefused, match=r"1200x1000 is 1200000 pixels, above --max-image-pixels 1000000"):
        read_image(str(tmp_path / "large.png"), max_image_pixels=1_000_000)
    Image.new("1", (14000, 14000)).save(tmp_path / "bomb.png")  # past Pillow's own hard limit
    with pytest.raises(ImageRefused, match="refused: .*decompression bomb"):
        read_image(str(tmp_path / "bomb.png"), max_image_pixels=10**12)
