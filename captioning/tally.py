"""Captions per role and kind (keys "role/kind"): the summary `captioning run` and `filter` print, and the counts
each manifest entry holds for `captioning status` to sum."""

import collections
import dataclasses
from collections.abc import Iterable

from rsclip_jax.data.records import Caption


@dataclasses.dataclass
class CaptionTally:
    """How many captions, and how many words in them, each "role/kind" has."""

    captions: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    words: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def add(self, captions: Iterable[Caption]) -> "CaptionTally":
        for c in captions:
            key = f"{c.role}/{c.kind}"
            self.captions[key] += 1
            self.words[key] += len(c.text.split())
        return self

    def __iadd__(self, other: "CaptionTally") -> "CaptionTally":
        self.captions.update(other.captions)
        self.words.update(other.words)
        return self

    def counts(self) -> dict:
        return dict(sorted(self.captions.items()))

    def mean_words(self) -> dict:
        return {key: round(self.words[key] / n, 1) for key, n in sorted(self.captions.items())}
