"""Zero-shot classification: class embeddings from prompt templates, and top-k accuracy."""

import numpy as np


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
