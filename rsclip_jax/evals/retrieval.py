"""Image-text retrieval recall@k, when each image has several captions."""

import numpy as np


def retrieval_recall(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray, ks=(1, 5, 10)) -> dict:
    """Recall@k in percent, both ways, over L2-normalised embeddings.

    text_image[j] is the index of the image text j describes. Image -> text: a hit when any of the
    image's texts is among the k most similar texts; text -> image: when its image is among the k
    most similar images.
    """
    similarity = np.asarray(image_emb, np.float32) @ np.asarray(text_emb, np.float32).T  # [images, texts]
    text_image = np.asarray(text_image)
    results = {}
    text_rank = np.argsort(-similarity, axis=1)
    image_rank = np.argsort(-similarity, axis=0)
    for k in ks:
        i2t_hits = (text_image[text_rank[:, :k]] == np.arange(len(image_emb))[:, None]).any(axis=1)
        t2i_hits = (image_rank[:k, :] == text_image[None, :]).any(axis=0)
        results[f"i2t_r{k}"] = 100.0 * i2t_hits.mean()
        results[f"t2i_r{k}"] = 100.0 * t2i_hits.mean()
    return results
