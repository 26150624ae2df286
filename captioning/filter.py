"""Filters over caption shards: length rules, then the role-aware judge with a global quantile drop.

Two passes over the shards: the first judges every caption that passed the length rules (keeping only
scores in memory), the second writes the surviving captions, with their scores and rationales, into
shards of the same names. An image left without captions is dropped and counted. The judge sees the image the
captioner saw, rebuilt at the --max-pixels that `--in`'s captioner.json records; it goes to `--out` too.
"""

import collections
import contextlib
import dataclasses
import glob
import json
import os
import re

from captioning.engines import Request, request_seed
from captioning.images import record_for_captioner
from captioning.prompts import JUDGE_SCHEMA, judge_messages
from captioning.run import captioner_info_path, read_json
from captioning.tally import CaptionTally
from rsclip_jax.data.records import read_shard, write_shard

_JSON_OBJECT = re.compile(r"\{.*?\}", re.DOTALL)
_SCORE = re.compile(r"score\D{0,12}(\d{1,3})", re.IGNORECASE)


def parse_judgement(answer: str) -> tuple[float, str] | None:
    """(score, rationale) from a judge's answer: JSON first, then a 'score: N' pattern; None if neither."""
    for candidate in _JSON_OBJECT.findall(answer):
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        score = data.get("score") if isinstance(data, dict) else None
        if isinstance(score, (int, float)) and not isinstance(score, bool) and 1 <= score <= 100:
            return float(score), str(data.get("rationale", ""))
    match = _SCORE.search(answer)
    if match and 1 <= int(match.group(1)) <= 100:
        return float(match.group(1)), answer.strip()
    return None


def passes_length(kind: str, text: str, min_long_words: int, min_short_words: int) -> bool:
    return len(text.split()) >= (min_long_words if kind == "long" else min_short_words)


def lowest_fraction(scores: dict, fraction: float) -> set:
    """Keys of the `fraction` of lowest scores over all of `scores` (ties broken by key order)."""
    ranked = sorted(scores, key=lambda key: (scores[key][0], key))
    return set(ranked[: int(len(ranked) * fraction)])


def _judge_all(shards, judge, roles_by_name, kept_by_length, scores, counts, export, seed, max_pixels):
    """Scores every caption that passed the length rules into `scores`, streaming the requests of all shards to
    the judge; counts unparseable answers and requests the judge could not take."""
    records, out = {}, collections.Counter()  # shard index -> its records, and its requests still out

    def requests():
        for s, path in enumerate(shards):
            records[s] = list(read_shard(path))
            out[s] += 1  # held until the shard is listed, so an early answer cannot release it
            for r, record in enumerate(records[s]):
                judged = kept_by_length(record)
                image = record_for_captioner(record, max_pixels) if judged else None
                for c in judged:
                    caption = record.captions[c]
                    if caption.role not in roles_by_name:
                        raise ValueError(f"{path} record {r}: role {caption.role!r} is not in the --roles file")
                    messages = judge_messages(roles_by_name[caption.role], caption.text)
                    out[s] += 1
                    yield (s, r, c), Request(image, messages, request_seed(seed, record.image_id, c), JUDGE_SCHEMA)
            release(s)

    def release(s):
        out[s] -= 1
        if not out[s]:
            del records[s]

    for (s, r, c), answer, error in judge.stream(requests()):
        parsed = None if error else parse_judgement(answer)
        if error:
            counts["judge_failed"] += 1
        elif parsed is None:
            counts["judge_unparseable"] += 1
        else:
            scores[s, r, c] = parsed
        if export:
            record = records[s][r]
            caption = record.captions[c]
            export.write(
                json.dumps(
                    {
                        "image_id": record.image_id,
                        "role": caption.role,
                        "kind": caption.kind,
                        "caption": caption.text,
                        "messages": judge_messages(roles_by_name[caption.role], caption.text),
                        "answer": answer,
                        "error": error,
                        "score": parsed[0] if parsed else None,
                        # where the image is and how it was sized, so that `captioning distill` trains on it
                        "shard": os.path.abspath(shards[s]),
                        "record": r,
                        "max_pixels": max_pixels,
                    }
                )
                + "\n"
            )
        release(s)


def filter_shards(
    in_dir, out_dir, roles, *, min_long_words, min_short_words, make_judge, drop_fraction, export_path, seed
) -> dict:
    """Writes the filtered shards to `out_dir`; returns what was dropped and kept. `make_judge` (None: no judge)
    starts the judge's engine once the input is known to be judgeable. No defaults here: each is written once, in
    the CLI."""
    shards = sorted(glob.glob(os.path.join(in_dir, "*.array_record")))
    if not shards:
        raise FileNotFoundError(f"--in {in_dir} holds no caption shards (*.array_record)")
    captioner = read_json(captioner_info_path(in_dir))
    if make_judge is not None and captioner is None:
        raise ValueError(
            f"--in {in_dir} has no captioner.json, which gives the judge the captioner's --max-pixels (`captioning "
            f'run` writes it); for shards from before, write {{"max_pixels": N}} there with the run\'s --max-pixels'
        )
    roles_by_name = {r.name: r for r in roles.roles}
    counts = collections.Counter()
    scores = {}  # (shard index, record index, caption index) -> (score, rationale)

    def kept_by_length(record):
        return [
            i for i, c in enumerate(record.captions) if passes_length(c.kind, c.text, min_long_words, min_short_words)
        ]

    if make_judge is not None:
        judge = make_judge()
        with open(export_path, "w") if export_path else contextlib.nullcontext() as export:
            _judge_all(
                shards, judge, roles_by_name, kept_by_length, scores, counts, export, seed, captioner["max_pixels"]
            )
    dropped_by_judge = lowest_fraction(scores, drop_fraction)

    os.makedirs(out_dir, exist_ok=True)
    if captioner is not None:  # so that the filtered shards can be judged again
        with open(captioner_info_path(out_dir), "w") as f:
            json.dump(captioner, f)
    tally = CaptionTally()
    for s, path in enumerate(shards):
        survivors = []
        for r, record in enumerate(read_shard(path)):
            length_ok = set(kept_by_length(record))
            captions = []
            for c, caption in enumerate(record.captions):
                if c not in length_ok:
                    counts[f"too_short_{caption.kind}"] += 1
                elif (s, r, c) in dropped_by_judge:
                    counts["judge_low_score"] += 1
                else:
                    score, rationale = scores.get((s, r, c), (None, None))
                    captions.append(dataclasses.replace(caption, judge_score=score, judge_rationale=rationale))
            tally.add(captions)
            if captions:
                survivors.append(dataclasses.replace(record, captions=tuple(captions)))
            else:
                counts["images_without_captions"] += 1
        out_path = os.path.join(out_dir, os.path.basename(path))
        write_shard(out_path, survivors)
        counts["images_kept"] += len(survivors)
    return {
        "dropped": {k: v for k, v in sorted(counts.items()) if k != "images_kept"},
        "images_kept": counts["images_kept"],
        "captions_judged": len(scores),
        "captions_kept": tally.counts(),
        "mean_words": tally.mean_words(),
    }
