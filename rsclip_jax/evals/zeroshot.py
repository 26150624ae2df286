"""Zero-shot classification: each class's prompts (a prompt set's class names and templates), class
embeddings from them, and top-k accuracy.

Prompt sets, the zero-shot evaluator's `prompts`:
- "openai": OpenAI CLIP's 80 ImageNet templates. Class names: OpenAI's ImageNet names when the dataset's
  labels are ImageNet-1k WordNet ids, looked up by id (TFDS imagenet2012 and imagenet_v2 label by WordNet
  id; so does a folder of WordNet-id folders: ImageNet-O, -A, -R), otherwise the dataset's labels with
  underscores read as spaces.
- "clip_benchmark": clip_benchmark 1.6.2's, for the dataset named cifar10 or cifar100 (the TFDS name, the
  folder's name, or given as "clip_benchmark:cifar100"): the CIFAR label names verbatim, underscores kept,
  and its 18 CIFAR templates. ImageNet sets get "openai"'s, which is what clip_benchmark uses for them.
`classnames` replaces the prompt set's names: "" (the dataset's labels), "imagenet" (OpenAI's), a .json
list in label order, or a .txt of "LABEL name" lines looked up by label (Role-SynthCLIP's
data/imagenet_o/classes.txt is one). `templates` replaces its templates: "openai" or a list with '{}'.
"""

import functools
import importlib.resources
import json
import re

import numpy as np

WORDNET_ID = re.compile(r"n\d{8}")


@functools.cache
def _asset(name: str) -> dict:
    return json.loads(importlib.resources.files("rsclip_jax").joinpath(f"assets/{name}").read_text())


@functools.cache
def imagenet_names() -> dict[str, str]:
    """WordNet id -> OpenAI's name of that ImageNet-1k class."""
    wordnet_ids = _asset("imagenet_wordnet_ids.json")["wordnet_ids"]
    return dict(zip(wordnet_ids, _asset("zeroshot_prompts.json")["classnames"]["imagenet"], strict=True))


def prompt_templates(templates) -> list[str]:
    """A named template list of the asset ("openai": the 80 OpenAI templates) or the templates given."""
    if isinstance(templates, str):
        named = _asset("zeroshot_prompts.json")["templates"]
        if templates not in named:
            raise ValueError(
                f"unknown prompt templates {templates!r}: one of {sorted(named)}, or a list of strings with '{{}}'"
            )
        return named[templates]
    templates = list(templates)
    if not templates or any(t.count("{}") != 1 for t in templates):
        raise ValueError(f"prompt templates must each hold one '{{}}' for the class name: {templates}")
    return templates


def _by_label(dataset, names: dict[str, str], what: str) -> list[str]:
    missing = [label for label in dataset.labels if label not in names]
    if missing:
        more = f" and {len(missing) - 1} more are" if len(missing) > 1 else " is"
        raise ValueError(
            f"{dataset.source}: class {missing[0]!r}{more} not in {what}: remove those classes, or give "
            "classnames= a .json list or a .txt of 'LABEL name' lines"
        )
    return [names[label] for label in dataset.labels]


def _is_imagenet(dataset) -> bool:
    return all(WORDNET_ID.fullmatch(label) for label in dataset.labels)


def _imagenet_names(dataset) -> list[str]:
    return _by_label(
        dataset, imagenet_names(), "ImageNet-1k's 1000 WordNet ids (rsclip_jax/assets/imagenet_wordnet_ids.json)"
    )


def _classnames(choice: str, dataset) -> list[str]:
    if not choice:
        return [label.replace("_", " ") for label in dataset.labels]
    if choice == "imagenet" and _is_imagenet(dataset):
        return _imagenet_names(dataset)
    if choice.endswith(".txt"):
        with open(choice) as f:
            lines = {number: line.split(maxsplit=1) for number, line in enumerate(f, 1) if line.strip()}
        if bad := next((number for number, pair in lines.items() if len(pair) != 2), None):
            raise ValueError(f"{choice}: line {bad} is not 'LABEL name'")
        return _by_label(dataset, {label: name.strip() for label, name in lines.values()}, choice)
    if choice.endswith(".json"):
        with open(choice) as f:
            names = json.load(f)
    elif choice == "imagenet":
        names = _asset("zeroshot_prompts.json")["classnames"]["imagenet"]
    else:
        raise ValueError(
            f"unknown class names {choice!r}: 'imagenet', a .json list, a .txt of 'LABEL name' lines, "
            "or '' for the dataset's own"
        )
    if len(names) != len(dataset.labels):
        raise ValueError(
            f"class names {choice!r} list {len(names)} classes but {dataset.source} has {len(dataset.labels)}"
        )
    return names


def _clip_benchmark_name(prompts: str, dataset) -> str | None:
    """The dataset of clip_benchmark_prompts.json that `prompts` picks; None where the prompts are OpenAI's."""
    kind, _, name = prompts.partition(":")
    if prompts == "openai" or (prompts == "clip_benchmark" and _is_imagenet(dataset)):
        return None
    if kind != "clip_benchmark":
        raise ValueError(f"unknown prompts {prompts!r}: 'openai', 'clip_benchmark' or 'clip_benchmark:DATASET'")
    name = name or dataset.name
    shipped = sorted(_asset("clip_benchmark_prompts.json")["classnames"])
    if name not in shipped:
        raise ValueError(
            f"clip_benchmark prompts ship for {shipped} (rsclip_jax/assets/clip_benchmark_prompts.json), "
            f"not {name!r} ({dataset.source}): name one as prompts='clip_benchmark:cifar100', or give "
            "classnames= and templates="
        )
    return name


def class_prompts(dataset, prompts: str = "openai", classnames: str | None = None, templates=None):
    """(class names, templates) for a ClassificationSet: those of the prompt set `prompts`, `classnames` and
    `templates` replacing either half when given."""
    benchmark = _clip_benchmark_name(prompts, dataset)
    shipped = _asset("clip_benchmark_prompts.json")
    if classnames is not None:
        names = _classnames(classnames, dataset)
    elif benchmark:
        names = shipped["classnames"][benchmark]
        if len(names) != len(dataset.labels):
            raise ValueError(
                f"clip_benchmark's {benchmark} has {len(names)} classes but {dataset.source} has {len(dataset.labels)}"
            )
    else:
        names = _imagenet_names(dataset) if _is_imagenet(dataset) else _classnames("", dataset)
    if templates is None:
        templates = shipped["templates"][benchmark] if benchmark else "openai"
    return names, prompt_templates(templates)


def class_embeddings(prompt_embeddings: np.ndarray) -> np.ndarray:
    """[classes, templates, D] L2-normalised prompt embeddings -> [classes, D]: their mean, renormalised
    (OpenAI CLIP's prompt ensembling)."""
    mean = prompt_embeddings.mean(axis=1)
    return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


def topk_accuracy(image_emb: np.ndarray, class_emb: np.ndarray, labels: np.ndarray, ks=(1, 5)) -> dict:
    """Top-k accuracy in percent: a hit when the label is among the k classes most similar to the image."""
    scores = np.asarray(image_emb, np.float32) @ np.asarray(class_emb, np.float32).T
    ranked = np.argsort(-scores, axis=1)
    return {f"top{k}": 100.0 * (ranked[:, :k] == np.asarray(labels)[:, None]).any(axis=1).mean() for k in ks}
