"""What each of libjpeg-turbo's n/8 DCT scales costs, beside the resize a scale leaves to do: the figures behind
`rsclip_jax.data.preprocess.decode_covering`'s choice of scale.

    .venv/bin/python bench/jpeg_scales.py [--sides 256 320 448 512 1024] [--images 60]

For JPEGs of each stored side (photo-like, as in bench/data_pipeline.py), the milliseconds of a decode at each
n/8 scale, of OpenCV's bicubic resize of the whole decode to 224, and of `decode_crop`'s crops to 224 as the
OpenCV backend makes them (the centre square, and RandomResizedCrop's boxes). Prints one JSON line.
"""

import argparse
import json

import cv2
import numpy as np
import simplejpeg
from data_pipeline import ms_each, photo_like_record
from machine import cpu_name

from rsclip_jax.data.preprocess import EncodedImage, decode_crop, random_crop_box

CROP = 224


def side_figures(side: int, images: int) -> dict:
    jpegs = [photo_like_record(i, side, np.random.default_rng(i)).image_jpeg for i in range(images)]
    whole = [simplejpeg.decode_jpeg(data, "RGB") for data in jpegs]
    rng = np.random.default_rng(0)
    boxed = [(data, random_crop_box(side, side, rng)) for data in jpegs]  # RandomResizedCrop's, 90-100% of the area
    decode_ms = {
        f"{eighths}/8": ms_each(
            lambda data, least=-(-side * eighths // 8): simplejpeg.decode_jpeg(
                data, "RGB", min_width=least, min_height=least
            ),
            jpegs,
            warm=5,
        )
        for eighths in range(1, 9)
    }
    return {
        "decode_ms_at_scale": decode_ms,
        "bicubic_resize_of_the_whole_to_224_ms": ms_each(
            lambda pixels: cv2.resize(pixels, (CROP, CROP), interpolation=cv2.INTER_CUBIC), whole, warm=5
        ),
        "decode_crop_centre_224_ms": ms_each(lambda data: decode_crop(EncodedImage(data), None, CROP), jpegs, warm=5),
        "decode_crop_random_box_224_ms": ms_each(
            lambda item: decode_crop(EncodedImage(item[0]), item[1], CROP), boxed, warm=5
        ),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[256, 320, 448, 512, 1024])
    parser.add_argument("--images", type=int, default=60)
    args = parser.parse_args()
    print(
        json.dumps(
            {
                "bench": "jpeg_scales",
                "cpu": cpu_name(),
                "crop": CROP,
                "sides": {str(side): side_figures(side, args.images) for side in args.sides},
            }
        )
    )


if __name__ == "__main__":
    main()
