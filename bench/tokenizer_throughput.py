"""Tokenizer throughput: rsclip_jax.tokenize against open_clip.tokenize on caption-like text, all at once and in
calls of 5 (an example's captions, as the data pipeline asks for them); prints JSON.

    .venv/bin/python bench/tokenizer_throughput.py [--captions 4000] [--context-length 248]
"""

import argparse
import json
import random
import time

import numpy as np
import open_clip
from machine import cpu_name

from rsclip_jax import tokenize

SUBJECTS = ["a brown dog", "two children", "an old fisherman", "a red bicycle", "the city skyline", "a bowl of ramen"]
PLACES = ["on a sandy beach", "in a crowded market", "under a stormy sky", "beside a quiet lake", "at golden hour"]
DETAILS = [
    "the texture of the wooden table is rough and weathered",
    "soft light falls from the left, casting long shadows",
    "the composition places the subject slightly off centre",
    "a sense of calm nostalgia fills the scene",
    "bright colours contrast with the muted background",
    "it looks like the moment right before a celebration",
    "reflections shimmer on the wet cobblestones",
    "the vintage poster in the corner suggests the 1970s",
]
NON_ASCII = ["café", "“quoted”", "naïve", "it’s", "—", "…", "Zürich"]


def caption(rng: random.Random) -> str:
    sentences = [f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(PLACES)}."]
    sentences += [rng.choice(DETAILS).capitalize() + "." for _ in range(rng.randint(0, 6))]
    text = " ".join(sentences)
    if rng.random() < 0.05:  # LLM output carries some typography and accents
        text += " " + rng.choice(NON_ASCII)
    return text


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--captions", type=int, default=4000)
    parser.add_argument("--context-length", type=int, default=248)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(0)
    texts = [caption(rng) for _ in range(args.captions)]

    first_ours = best_of(lambda: tokenize(texts, args.context_length), 1)
    first_theirs = best_of(lambda: open_clip.tokenize(texts, args.context_length), 1)
    ours = best_of(lambda: tokenize(texts, args.context_length), args.repeats)
    theirs = best_of(lambda: open_clip.tokenize(texts, args.context_length), args.repeats)
    fives = [texts[i : i + 5] for i in range(0, min(len(texts), 1500), 5)]
    per_call_of_5 = best_of(lambda: [tokenize(five, args.context_length) for five in fives], 7) / len(fives)
    same = bool(
        np.array_equal(tokenize(texts, args.context_length), open_clip.tokenize(texts, args.context_length).numpy())
    )
    print(
        json.dumps(
            {
                "bench": "tokenizer_throughput",
                "cpu": cpu_name(),
                "captions": args.captions,
                "mean_words": round(float(np.mean([len(t.split()) for t in texts])), 1),
                "context_length": args.context_length,
                "identical_ids": same,
                "first_call_s": {"rsclip_jax": round(first_ours, 4), "open_clip": round(first_theirs, 4)},
                "warm_s": {"rsclip_jax": round(ours, 4), "open_clip": round(theirs, 4)},
                "captions_per_s": {
                    "rsclip_jax": round(args.captions / ours),
                    "open_clip": round(args.captions / theirs),
                },
                "rsclip_jax_us_per_call_of_5": round(per_call_of_5 * 1e6, 1),
                "speedup_first_call": round(first_theirs / first_ours, 2),
                "speedup_warm": round(theirs / ours, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
