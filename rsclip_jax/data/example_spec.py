"""What a record becomes: ExampleSpec, with every data default and its checks, and its conversion from a config.

Light on purpose: recipes read the defaults from here (rsclip_jax/config.py), so it imports no JAX, Grain or PIL.
"""

import dataclasses

from rsclip_jax.data.caption_sampling import ALT_SLOT, SLOT_KINDS, SUB_CAPTION_MODES
from rsclip_jax.data.records import CAPTION_KINDS

SAMPLING_MODES = ("grouped", "rows")
# "pil": open_clip's training transform exactly (the whole image decoded, PIL's bicubic); "opencv": a JPEG decoded by
# libjpeg-turbo at a DCT scale that covers the crop, then OpenCV's resize, 3-4x faster (preprocess.py).
CROP_BACKENDS = ("pil", "opencv")


class DataError(ValueError):
    """Shards or data settings that cannot work; raised before anything compiles."""


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
    """How a record becomes an example; sent to the worker processes, so plain values only."""

    image_size: int
    context_length: int
    sampling: str = "grouped"
    slot_kinds: tuple[str, ...] = ("any",)  # grouped: one caption per slot of the slot's kind; "alt": the alt text
    rows_per_image: int = 10  # rows: example i uses eligible caption i % rows_per_image of its image
    roles: tuple[str, ...] = ()  # the caption roles that train, as the shards name them; empty: every role
    kinds: tuple[str, ...] = CAPTION_KINDS
    prefix: str = ""
    sub_caption: str = "none"  # CLIPS: "sentence" or "token_block" (captions.SUB_CAPTION_MODES)
    sub_caption_tokens: int = 32  # the sub-caption's budget; text rows are this + 2 long (text_length)
    random_resized_crop: bool = False  # False: CLIP's resize and centre crop
    crop_scale: tuple[float, float] = (0.9, 1.0)  # random_resized_crop: the share of the image area kept
    crop_backend: str = "pil"  # CROP_BACKENDS; evaluation always uses open_clip's (PIL's) transform
    generator_caption_tokens: int = 0  # > 0: "caption_tokens", the first synthetic slot's whole caption, this long
    # A depth ("final" or "tokens:K"): each example's "image_embedding" is its record's image embedding at that depth
    # (Synth²), in place of an "image" decoded from its JPEG.
    image_embedding: str = ""
    # > 0: every epoch the same seeded subset of this many examples (rows: caption rows, i.e. image-text pairs;
    # grouped: images), shuffled afresh each epoch, as open_clip's --train-num-samples sets an epoch's size; at least
    # config.batch_size, at most the examples the shards hold. 0: all of them. With `roles`: Role-SynthCLIP's
    # ablation, one role against five at the same number of pairs (pipeline.train_dataset).
    examples_per_epoch: int = 0

    def __post_init__(self):
        checks = [
            (self.sampling in SAMPLING_MODES, f"sampling {self.sampling!r} must be one of {SAMPLING_MODES}"),
            (
                all(k in SLOT_KINDS for k in self.slot_kinds) and self.slot_kinds,
                f"slot_kinds {self.slot_kinds!r} must be a non-empty tuple of {SLOT_KINDS}",
            ),
            (all(k in CAPTION_KINDS for k in self.kinds), f"kinds {self.kinds!r} must be drawn from {CAPTION_KINDS}"),
            (
                self.sub_caption in SUB_CAPTION_MODES,
                f"sub_caption {self.sub_caption!r} must be one of {SUB_CAPTION_MODES}",
            ),
            (self.crop_backend in CROP_BACKENDS, f"crop_backend {self.crop_backend!r} must be one of {CROP_BACKENDS}"),
            (self.rows_per_image >= 1, f"rows_per_image must be >= 1, got {self.rows_per_image}"),
            (self.examples_per_epoch >= 0, f"examples_per_epoch must be >= 0 (0: all), got {self.examples_per_epoch}"),
            (
                self.sub_caption == "none" or 1 <= self.sub_caption_tokens <= self.context_length - 2,
                f"sub_caption_tokens {self.sub_caption_tokens} must lie in [1, context_length - 2 = "
                f"{self.context_length - 2}] (start and end of text take two positions)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise DataError(f"config.data: {message}")
        if self.generator_caption_tokens:
            if self.sampling != "grouped":
                raise DataError(
                    "config.generator needs config.data.sampling='grouped': its target is the caption of "
                    "an image's first synthetic slot, and rows examples have no slots"
                )
            if all(kind == ALT_SLOT for kind in self.slot_kinds):
                raise DataError(
                    f"config.generator needs a synthetic caption to predict: config.data.slot_kinds "
                    f"{self.slot_kinds!r} has no slot other than {ALT_SLOT!r}"
                )

    @classmethod
    def from_config(cls, config, model) -> "ExampleSpec":
        """The examples `config.data` asks for, at `model`'s image size and context length; with the caption
        generator on (`config.generator.weight`), its target: queries + 1 ids, start of text and then the token
        each query predicts (model/caption_generator.py)."""
        settings = {field.name: config.data[field.name] for field in dataclasses.fields(cls) if field.name in SETTINGS}
        cap, batch_size = settings.get("examples_per_epoch"), config.get("batch_size")
        if cap and batch_size and cap < batch_size:
            # A batch would span epochs and hold the same example twice (false negatives of the loss).
            raise DataError(
                f"config.data.examples_per_epoch {cap} must be at least config.batch_size {batch_size} (or 0: no cap)"
            )
        generator = config.get("generator")
        return cls(
            image_size=model.image_size,
            context_length=model.context_length,
            **{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()},
            generator_caption_tokens=generator.queries + 1 if generator and generator.weight else 0,
            image_embedding=config.synth2_generator.depth if config.get("task") == "synth2_generator" else "",
        )

    @property
    def captions_per_example(self) -> int:
        return 1 if self.sampling == "rows" else len(self.slot_kinds)

    @property
    def text_length(self) -> int:
        """Tokens per text row: under sub-caption sampling the budget plus start and end of text (CLIPS runs the
        text tower that short, its compute saving), else the model's context_length."""
        return self.context_length if self.sub_caption == "none" else self.sub_caption_tokens + 2


# The fields of ExampleSpec that are `config.data` keys (the rest come from the model and the generator).
SETTINGS = (
    "sampling",
    "slot_kinds",
    "rows_per_image",
    "roles",
    "kinds",
    "prefix",
    "sub_caption",
    "sub_caption_tokens",
    "random_resized_crop",
    "crop_scale",
    "crop_backend",
    "examples_per_epoch",
)
