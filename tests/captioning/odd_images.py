"""Files as real image folders hold them, each with what a viewer shows: (width, height) and the RGB at its centre."""

import os

import numpy as np
from PIL import Image

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _halves(size, first, second):
    """Left half `first`, right half `second`."""
    array = np.zeros((size[1], size[0], 3), np.uint8)
    array[:, : size[0] // 2], array[:, size[0] // 2 :] = first, second
    return Image.fromarray(array)


def write_odd_images(folder) -> dict:
    """Writes one file of each kind; returns {file name: ((width, height) as shown, RGB at the shown centre or
    None where the centre is an edge)}."""
    os.makedirs(folder, exist_ok=True)
    shown = {}

    def save(name, image, size, centre, **options):
        image.save(os.path.join(folder, name), **options)
        shown[name] = (size, centre)

    exif = Image.Exif()
    exif[0x0112] = 6  # stored 200x100, shown turned 90 degrees clockwise: the stored left half ends up on top
    rotated = _halves((200, 100), RED, BLUE)
    rotated.save(os.path.join(folder, "phone.jpg"), exif=exif, quality=95)
    shown["phone.jpg"] = ((100, 200), None)
    save("transparent.png", Image.new("RGBA", (64, 48), (0, 0, 255, 0)), (64, 48), WHITE)
    save("grey16.png", Image.fromarray(np.full((48, 64), 40000, np.uint16)), (64, 48), (156, 156, 156))
    palette = Image.new("RGB", (64, 48), RED).convert("P", palette=Image.Palette.ADAPTIVE)
    save("palette.png", palette, (64, 48), RED)
    save("spacer.gif", Image.new("P", (1, 1), 0), (1, 1), WHITE, transparency=0)  # a transparent 1x1 pixel
    save("cmyk.jpg", Image.new("CMYK", (64, 48), (0, 255, 255, 0)), (64, 48), RED, quality=95)
    frames = [Image.new("RGB", (64, 48), colour) for colour in (RED, BLUE)]
    save("animated.gif", frames[0], (64, 48), RED, save_all=True, append_images=frames[1:], duration=100, loop=0)
    save("photo.webp", Image.new("RGB", (64, 48), BLUE), (64, 48), BLUE, lossless=True)
    save("scan.tiff", Image.new("RGB", (64, 48), RED), (64, 48), RED)
    save("banner.jpg", Image.new("RGB", (4000, 12), BLUE), (4000, 12), BLUE, quality=95)
    return shown


def top_and_bottom(image):
    """The RGB a quarter from the top and a quarter from the bottom, at mid width."""
    width, height = image.size
    return image.getpixel((width // 2, height // 4)), image.getpixel((width // 2, 3 * height // 4))


def close(rgb, expected, tolerance=12):
    return all(abs(a - b) <= tolerance for a, b in zip(rgb, expected))
