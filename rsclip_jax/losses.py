"""Multi-positive contrastive losses: each image has K captions, all of them positives."""

import jax
import jax.numpy as jnp

LOSS_KINDS = ("softmax_union", "softmax_per_caption", "sigmoid")


def _soft_cross_entropy(logits, positives, label_smoothing):
    """Mean over rows of the cross-entropy against a uniform target over each row's positives.

    The target row is (1 - eps) * uniform(positives) + eps / columns, which for one positive is
    torch's cross_entropy(label_smoothing=eps).
    """
    positives = positives.astype(logits.dtype)
    target = positives / positives.sum(axis=-1, keepdims=True)
    target = (1.0 - label_smoothing) * target + label_smoothing / logits.shape[-1]
    return -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits, axis=-1), axis=-1))


def contrastive_loss(
    image_emb,
    text_emb,
    logit_scale,
    *,
    kind: str,
    image_ids=None,
    logit_bias=None,
    label_smoothing: float = 0.0,
):
    """CLIP loss of B images against their B x K captions.

    image_emb: [B, D] and text_emb: [B, K, D], already L2-normalised; text_emb[i] are image i's captions.
    logit_scale: the log of the scale. image_ids: [B] ints; rows with equal ids are the same image, so
    each one's captions are positives for the other. kind: one of LOSS_KINDS (see METHOD.md section 3).
    Computed in float32 whatever the input dtype.
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss kind {kind!r}; expected one of {LOSS_KINDS}")
    if image_emb.ndim != 2 or text_emb.ndim != 3 or text_emb.shape[0] != image_emb.shape[0]:
        raise ValueError(
            f"contrastive_loss expects image_emb [B, D] and text_emb [B, K, D], got {image_emb.shape} and {text_emb.shape}"
        )
    if kind == "sigmoid" and label_smoothing:
        raise ValueError("label_smoothing applies to the softmax loss kinds only, not 'sigmoid'")
    batch, num_captions, width = text_emb.shape
    images = image_emb.astype(jnp.float32)
    texts = text_emb.astype(jnp.float32)
    scale = jnp.exp(jnp.asarray(logit_scale, jnp.float32))
    ids = jnp.arange(batch) if image_ids is None else jnp.asarray(image_ids)
    same_image = ids[:, None] == ids[None, :]  # [B, B]

    if kind == "softmax_per_caption":
        logits = scale * jnp.einsum("id,jkd->kij", images, texts)  # [K, B images, B texts]
        image_to_text = _soft_cross_entropy(logits, same_image[None], label_smoothing)
        text_to_image = _soft_cross_entropy(jnp.swapaxes(logits, 1, 2), same_image.T[None], label_smoothing)
        return (image_to_text + text_to_image) / 2

    # Text column j * K + k is caption k of image j.
    logits = scale * images @ texts.reshape(batch * num_captions, width).T  # [B, B*K]
    positives = jnp.repeat(same_image, num_captions, axis=1)  # [B, B*K]
    if kind == "softmax_union":
        image_to_text = _soft_cross_entropy(logits, positives, label_smoothing)
        text_to_image = _soft_cross_entropy(logits.T, positives.T, label_smoothing)
        return (image_to_text + text_to_image) / 2

    bias = 0.0 if logit_bias is None else jnp.asarray(logit_bias, jnp.float32)
    labels = 2.0 * positives.astype(jnp.float32) - 1.0
    return -jnp.sum(jax.nn.log_sigmoid(labels * (logits + bias))) / (batch * num_captions)


def primary_components(embeddings, num_components: int):
    """Long-CLIP's coarse image features: embeddings rebuilt from their top principal components over
    the batch, L2-normalised again."""
    x = embeddings.astype(jnp.float32)
    mean = x.mean(axis=0)
    centred = x - mean
    _, vectors = jnp.linalg.eigh(centred.T @ centred)  # eigenvalues ascending
    top = vectors[:, -num_components:]
    rebuilt = centred @ top @ top.T + mean
    return rebuilt / jnp.maximum(jnp.linalg.norm(rebuilt, axis=-1, keepdims=True), 1e-12)
