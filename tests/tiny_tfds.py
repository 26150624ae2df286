"""A tiny TFDS dataset in ArrayRecord format, prepared without TensorFlow: 6 JPEGs in two classes."""

import io

import tensorflow_datasets as tfds
from PIL import Image


class TinyShapes(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(names=["red_thing", "green_thing"]),
            }
        )
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        return {"test": self._generate_examples()}

    def _generate_examples(self):
        for i in range(6):
            jpeg = io.BytesIO()
            Image.new("RGB", (40, 30), (255, 0, 0) if i % 2 == 0 else (0, 255, 0)).save(jpeg, "JPEG")
            yield i, {"image": jpeg.getvalue(), "label": i % 2}


def prepare(data_dir: str) -> str:
    TinyShapes(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir
