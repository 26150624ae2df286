"""Image-text retrieval recall@k, when each image has several captions."""

import numpy as np

# Rows of the similarity matrix computed at once: COCO's 5000 x 25000 matrix would take 500 MB whole, and a sort of
# it 4 GB of indices; a block of 1024 rows takes 100 MB.
BLOCK = 1024


def retrieval_recall(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray, ks=(1, 5, 10)) -> dict:
    """Recall@k in percent, both ways, over L2-normalised embeddings.

    text_image[j] is the index of the image text j describes. Image -> text: a hit when any of the
    image's texts is among the k most similar texts; text -> image: when its image is among the k
    most similar images. Ties rank the lower index first, as a stable sort would.
    """
    images, texts = np.asarray(image_emb, np.float32), np.asarray(text_emb, np.float32)
    text_image = np.asarray(text_image)
    i2t = np.concatenate(
        [
            _rank_of_first_hit(images[start : start + BLOCK] @ texts.T, text_image, start)
            for start in range(0, len(images), BLOCK)
        ]
    )
    t2i = np.concatenate(
        [
            _rank_of_first_hit(
                texts[start : start + BLOCK] @ images.T, np.arange(len(images)), 0, text_image[start : start + BLOCK]
            )
            for start in range(0, len(texts), BLOCK)
        ]
    )
    results = {}
    for k in ks:
        results[f"i2t_r{k}"] = 100.0 * (i2t < k).mean()
        results[f"t2i_r{k}"] = 100.0 * (t2i < k).mean()
    return results


def _rank_of_first_hit(similarity, column_label, first_row, row_label=None) -> np.ndarray:
    """For each row of `similarity` [rows, columns], the rank of its best-scoring match: the columns whose label is
    the row's (`row_label`, default the row's own index from `first_row`) ranked among all columns by similarity,
    ties broken by column index. Counting the columns ahead of it needs no sort."""
    rows = np.arange(first_row, first_row + len(similarity)) if row_label is None else row_label
    match = column_label[None, :] == rows[:, None]
    best = np.where(match, similarity, -np.inf).max(axis=1, keepdims=True)
    columns = np.arange(similarity.shape[1])
    first = np.where(match & (similarity == best), columns, similarity.shape[1]).min(axis=1, keepdims=True)
    ahead = (similarity > best).sum(axis=1) + ((similarity == best) & (columns < first)).sum(axis=1)
    return np.where(match.any(axis=1), ahead, np.iinfo(np.int64).max)  # a row without a match never hits
