"""Evaluators named in `config.evals`: image-text retrieval and zero-shot classification.

Each entry of `config.evals` is one evaluator, its `kind` one of KINDS ("retrieval" or "zeroshot"), with the
settings below (RETRIEVAL / ZEROSHOT hold their defaults). `every_steps` runs it during training every that
many steps (0: only after the last step). Data are read and captions tokenized once, when built, so
a missing file stops a run before it trains.
"""

import dataclasses
import time
from typing import Callable

import numpy as np
from absl import logging

from rsclip_jax.data.preprocess import load_image
from rsclip_jax.data.tokenizer import tokenize
from rsclip_jax.evals.classification_sets import load_classification_set
from rsclip_jax.evals.embedding import Embedder
from rsclip_jax.evals.retrieval import retrieval_recall
from rsclip_jax.evals.retrieval_sets import load_retrieval_set
from rsclip_jax.evals.zeroshot import class_embeddings, class_prompts, topk_accuracy

COMMON = {"every_steps": 0, "batch_size": 256, "limit": 0}  # limit: the first N images (0: all)
RETRIEVAL = {"dataset": "", "root": "", "annotations": "", "prefix": ""}  # prefix: e.g. "A photo of "
# prompts: "openai" | "clip_benchmark"; classnames / templates (None: the prompt set's) replace either half
# (rsclip_jax/evals/zeroshot.py).
ZEROSHOT = {"source": "", "split": "test", "data_dir": "", "prompts": "openai", "classnames": None, "templates": None}


@dataclasses.dataclass(frozen=True)
class Evaluator:
    name: str
    every_steps: int
    run: Callable[[dict], dict]  # params -> metrics

    def due(self, step: int, last: bool) -> bool:
        return last or (self.every_steps > 0 and step % self.every_steps == 0)


def _settings(name: str, entry) -> dict:
    entry = dict(entry)
    kind = entry.pop("kind", None)
    if kind not in KINDS:
        raise ValueError(f"config.evals.{name}.kind must be one of {sorted(KINDS)}, not {kind!r}")
    known = {**COMMON, **KINDS[kind][0]}
    unknown = sorted(set(entry) - set(known))
    if unknown:
        raise ValueError(f"config.evals.{name}.{unknown[0]} is not a {kind} setting: known are {sorted(known)}")
    return {"kind": kind, **known, **entry}


def _retrieval(name, settings, embedder, context_length):
    dataset = load_retrieval_set(
        settings["dataset"], settings["root"], annotations=settings["annotations"], limit=settings["limit"]
    )
    texts = [settings["prefix"] + caption for captions in dataset.captions for caption in captions]
    text_image = np.array([i for i, captions in enumerate(dataset.captions) for _ in captions])
    tokens = tokenize(texts, context_length)

    def run(params):
        paths = dataset.image_paths
        image_emb, _, valid = embedder.images(params, len(paths), lambda i: (load_image(paths[i]), 0), name)
        if not valid.any():  # no recall of an empty set: the counts say why
            return {"images": 0, "texts": 0, "bad_images": len(paths)}
        # As zero-shot does, an image that does not decode is left out, and its captions with it: the recall
        # is that of the set without it, not a model's miss for a data fault.
        kept = valid[text_image]
        text_emb = embedder.texts(params, tokens[kept], name)
        renumbered = np.cumsum(valid) - 1  # old image index -> its index among the kept images
        recall = retrieval_recall(image_emb[valid], text_emb, renumbered[text_image[kept]])
        return {**recall, "images": int(valid.sum()), "texts": int(kept.sum()), "bad_images": int((~valid).sum())}

    return run


def _zeroshot(name, settings, embedder, context_length):
    dataset = load_classification_set(settings["source"], split=settings["split"], data_dir=settings["data_dir"])
    try:
        classnames, templates = class_prompts(
            dataset, settings["prompts"], settings["classnames"], settings["templates"]
        )
    except ValueError as e:
        raise ValueError(f"config.evals.{name}: {e}") from None
    tokens = tokenize([t.format(c) for c in classnames for t in templates], context_length)
    count = min(settings["limit"] or dataset.size, dataset.size)

    def run(params):
        prompt_emb = embedder.texts(params, tokens, name).reshape(len(classnames), len(templates), -1)
        image_emb, labels, valid = embedder.images(params, count, dataset.read, name)
        if not valid.any():  # no accuracy of an empty set: the counts say why
            return {"images": 0, "classes": len(classnames), "bad_images": count}
        accuracy = topk_accuracy(image_emb[valid], class_embeddings(prompt_emb), labels[valid])
        return {**accuracy, "images": int(valid.sum()), "classes": len(classnames), "bad_images": int((~valid).sum())}

    return run


# kind -> (its settings with their defaults, the builder of its run(params))
KINDS = {"retrieval": (RETRIEVAL, _retrieval), "zeroshot": (ZEROSHOT, _zeroshot)}


def build_evaluators(setup) -> list[Evaluator]:
    """One Evaluator per entry of the config's evals for `setup`'s model and mesh, sharing compiled encoders
    between equal batch sizes."""
    model_config = setup.model
    embedders: dict[int, Embedder] = {}
    evaluators = []
    for name, entry in setup.config.evals.items():
        settings = _settings(name, entry)
        batch_size = settings["batch_size"]
        if batch_size not in embedders:
            embedders[batch_size] = Embedder(
                setup.graphdef,
                setup.shardings["params"],
                setup.mesh,
                batch_size=batch_size,
                image_size=model_config.image_size,
            )
        run = KINDS[settings["kind"]][1](name, settings, embedders[batch_size], model_config.context_length)
        evaluators.append(Evaluator(name, settings["every_steps"], run))
    return evaluators


def run_evaluators(evaluators: list[Evaluator], params) -> dict[str, dict]:
    """{name: metrics} of each evaluator on `params`, with the seconds each took."""
    results = {}
    for evaluator in evaluators:
        start = time.perf_counter()
        results[evaluator.name] = {**evaluator.run(params), "seconds": round(time.perf_counter() - start, 2)}
        logging.info("eval %s: %s", evaluator.name, results[evaluator.name])
    return results


def flat_metrics(results: dict[str, dict]) -> dict[str, float]:
    """{"eval/NAME/METRIC": value}, as metrics.jsonl and TensorBoard take them."""
    return {f"eval/{name}/{metric}": value for name, metrics in results.items() for metric, value in metrics.items()}
