"""Which captions of an image a training example uses, CLIPS sub-caption sampling, and the web alt text."""

import re

import numpy as np

from rsclip_jax.data.records import Caption
from rsclip_jax.data.tokenizer import EOT_ID, SOT_ID, tokenize

SUB_CAPTION_MODES = ("none", "sentence", "token_block")
ALT_SLOT = "alt"  # a slot that holds the record's web alt text, not a synthetic caption
SLOT_KINDS = ("any", "long", "short", ALT_SLOT)
_SENTENCE_END = re.compile(r"(?<=[.!])\s+")


def eligible_captions(captions: tuple[Caption, ...], roles: tuple[str, ...], kinds: tuple[str, ...]) -> list[Caption]:
    """The captions whose role is in `roles` (all roles when empty) and whose kind is in `kinds`."""
    return [c for c in captions if (not roles or c.role in roles) and c.kind in kinds]


def pick_for_slots(
    captions: list[Caption], slot_kinds: tuple[str, ...], rng: np.random.Generator
) -> list[Caption] | None:
    """One caption per synthetic slot ("alt" slots are passed over), each drawn from the captions of the slot's
    kind; distinct captions of the record while enough remain.

    None when some slot has no caption of its kind.
    """
    chosen, taken = [], set()
    for kind in (k for k in slot_kinds if k != ALT_SLOT):
        pool = [c for c in captions if kind == "any" or c.kind == kind]
        if not pool:
            return None
        # By identity: a dataclass's == compares every field in Python, and was most of the time a pick took.
        candidates = [c for c in pool if id(c) not in taken] or pool
        pick = candidates[rng.integers(len(candidates))]
        chosen.append(pick)
        taken.add(id(pick))
    return chosen


def sentences(text: str) -> list[str]:
    """The sentences of `text`, split after '.' and '!'."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def random_sentence(text: str, rng: np.random.Generator) -> str:
    """One sentence of `text`, as CLIPS samples a sub-caption."""
    options = sentences(text)
    return options[rng.integers(len(options))] if options else text


def random_token_block(text: str, budget: int, context_length: int, rng: np.random.Generator) -> np.ndarray:
    """Token ids [context_length] holding a random contiguous block of at most `budget` tokens of `text`."""
    row = tokenize(text, context_length=max(4096, context_length))[0]
    ids = row[1 : int(np.argmax(row == EOT_ID))]
    start = rng.integers(max(1, len(ids) - budget + 1))
    block = [SOT_ID, *ids[start : start + budget], EOT_ID]
    out = np.zeros(context_length, np.int32)
    out[: len(block)] = block
    return out


def caption_tokens(
    texts: list[str],
    *,
    context_length: int,
    prefix: str,
    sub_caption: str,
    sub_caption_tokens: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Token ids [len(texts), context_length] for the chosen captions, after the sub-caption transform."""
    if sub_caption == "sentence":
        texts = [random_sentence(t, rng) for t in texts]
    texts = [prefix + t for t in texts]
    if sub_caption == "token_block":
        return np.stack([random_token_block(t, sub_caption_tokens, context_length, rng) for t in texts])
    return tokenize(texts, context_length)


def slot_tokens(
    chosen: list[Caption],
    alt_text: str | None,
    slot_kinds: tuple[str, ...],
    *,
    text_length: int,
    prefix: str,
    sub_caption: str,
    sub_caption_tokens: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Token ids [len(slot_kinds), text_length]: the synthetic slots hold `chosen` in order, after the sub-caption
    transform; each "alt" slot holds `alt_text` whole, cut at `text_length` (CLIPS samples sub-captions of the
    synthetic caption only)."""
    synthetic = iter(
        caption_tokens(
            [c.text for c in chosen],
            context_length=text_length,
            prefix=prefix,
            sub_caption=sub_caption,
            sub_caption_tokens=sub_caption_tokens,
            rng=rng,
        )
        if chosen
        else ()
    )
    alt = tokenize(prefix + alt_text, text_length)[0] if ALT_SLOT in slot_kinds else None
    return np.stack([alt if kind == ALT_SLOT else next(synthetic) for kind in slot_kinds])
