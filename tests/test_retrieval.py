import numpy as np

from rsclip_jax.evals.retrieval import retrieval_recall


def test_recall_against_a_loop():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 4))
    texts = rng.normal(size=(15, 4))
    text_image = rng.integers(0, 6, size=15)
    sim = images @ texts.T
    for k in (1, 3):
        i2t = np.mean([any(text_image[j] == i for j in np.argsort(-sim[i])[:k]) for i in range(6)])
        t2i = np.mean([text_image[j] in np.argsort(-sim[:, j])[:k] for j in range(15)])
        got = retrieval_recall(images, texts, text_image, ks=(k,))
        assert got[f"i2t_r{k}"] == 100 * i2t and got[f"t2i_r{k}"] == 100 * t2i


def test_perfect_embeddings_give_full_recall():
    images = np.eye(3)
    texts = np.repeat(np.eye(3), 2, axis=0)
    assert retrieval_recall(images, texts, np.repeat(np.arange(3), 2), ks=(1,)) == {"i2t_r1": 100.0, "t2i_r1": 100.0}


def test_ties_rank_the_lower_index_first_and_blocks_change_nothing(monkeypatch):
    images = np.eye(2)
    texts = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # texts 0 and 1 tie for image 0
    assert retrieval_recall(images, texts, np.array([1, 0, 1]), ks=(1,))["i2t_r1"] == 50.0  # text 1 is second
    assert retrieval_recall(images, texts, np.array([0, 1, 1]), ks=(1,))["i2t_r1"] == 100.0
    rng = np.random.default_rng(1)
    images, texts, text_image = rng.normal(size=(9, 4)), rng.normal(size=(30, 4)), rng.integers(0, 9, size=30)
    whole = retrieval_recall(images, texts, text_image)
    monkeypatch.setattr("rsclip_jax.evals.retrieval.BLOCK", 4)
    assert retrieval_recall(images, texts, text_image) == whole
