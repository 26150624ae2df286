"""Multi-positive contrastive losses: each image has K captions, all of them positives."""

from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from rsclip_jax.accelerators.sharding import BATCH_AXES

LOSS_KINDS = ("softmax_union", "softmax_per_caption", "sigmoid")
# Whose principal components `primary_components` uses: each device's rows (Long-CLIP's code) or the batch's.
PCA_SCOPES = ("local", "global")


def _soft_cross_entropy_sum(logits, positives, label_smoothing):
    """Sum over rows of the cross-entropy against a uniform target over each row's positives.

    The target row is (1 - eps) * uniform(positives) + eps / columns, which for one positive is
    torch's cross_entropy(label_smoothing=eps). Written as logsumexp minus the target-weighted mean,
    so that no target or log-softmax matrix is materialised: only the logits are.
    """
    positives = positives.astype(logits.dtype)
    positive_mean = jnp.sum(positives * logits, axis=-1) / positives.sum(axis=-1)
    target_dot_logits = (1.0 - label_smoothing) * positive_mean + label_smoothing * logits.mean(axis=-1)
    return jnp.sum(jax.nn.logsumexp(logits, axis=-1) - target_dot_logits)


def _check_arguments(image_emb, text_emb, kind, label_smoothing, logit_bias):
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss kind {kind!r}; expected one of {LOSS_KINDS}")
    if image_emb.ndim != 2 or text_emb.ndim != 3 or text_emb.shape[0] != image_emb.shape[0]:
        raise ValueError(
            "contrastive_loss expects image_emb [B, D] and text_emb [B, K, D], "
            f"got {image_emb.shape} and {text_emb.shape}"
        )
    if kind == "sigmoid" and label_smoothing:
        raise ValueError("label_smoothing applies to the softmax loss kinds only, not 'sigmoid'")
    if kind == "sigmoid" and logit_bias is None:
        raise ValueError("the sigmoid loss needs logit_bias, the model's learnable bias (SigLIP starts it at -10)")


def _rows_loss(images, texts, ids, all_images, all_texts, all_ids, scale, bias, kind, label_smoothing):
    """The share of the loss of some rows of the batch (images [b, D], their texts [b, K, D] and ids [b])
    against the whole batch (all_*, [B, ...]): the loss of the batch is the sum of the shares of its
    row blocks. Memory is O(b * B * K)."""
    batch, num_captions, width = all_texts.shape
    rows = images.shape[0]
    same_image = ids[:, None] == all_ids[None, :]  # [b, B]

    if kind == "softmax_per_caption":
        image_to_text = scale * jnp.einsum("id,jkd->kij", images, all_texts)  # [K, b images, B texts]
        text_to_image = scale * jnp.einsum("jkd,id->kji", texts, all_images)  # [K, b texts, B images]
        return (
            _soft_cross_entropy_sum(image_to_text, same_image[None], label_smoothing)
            + _soft_cross_entropy_sum(text_to_image, same_image[None], label_smoothing)
        ) / (2 * batch * num_captions)

    # Text column j * K + k is caption k of image j; local text row j * K + k likewise.
    image_to_text = scale * images @ all_texts.reshape(batch * num_captions, width).T  # [b, B*K]
    positives = jnp.repeat(same_image, num_captions, axis=1)  # [b, B*K]
    if kind == "softmax_union":
        text_to_image = scale * texts.reshape(rows * num_captions, width) @ all_images.T  # [b*K, B]
        return _soft_cross_entropy_sum(image_to_text, positives, label_smoothing) / (
            2 * batch
        ) + _soft_cross_entropy_sum(text_to_image, jnp.repeat(same_image, num_captions, axis=0), label_smoothing) / (
            2 * batch * num_captions
        )
    labels = 2.0 * positives.astype(jnp.float32) - 1.0  # sigmoid: every image-text pair once
    return -jnp.sum(jax.nn.log_sigmoid(labels * (image_to_text + bias))) / (batch * num_captions)


def _inputs(image_emb, text_emb, logit_scale, image_ids, logit_bias):
    """float32 embeddings, scale and bias (0 where not given: only the sigmoid kind, which requires it, reads
    it), and image ids (row numbers when not given)."""
    ids = jnp.arange(image_emb.shape[0]) if image_ids is None else jnp.asarray(image_ids)
    bias = jnp.zeros((), jnp.float32) if logit_bias is None else jnp.asarray(logit_bias, jnp.float32)
    scale = jnp.exp(jnp.asarray(logit_scale, jnp.float32))
    return image_emb.astype(jnp.float32), text_emb.astype(jnp.float32), ids, scale, bias


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
    each one's captions are positives for the other. kind: one of LOSS_KINDS (see docs/method.md section 3).
    Computed in float32 whatever the input dtype.
    """
    _check_arguments(image_emb, text_emb, kind, label_smoothing, logit_bias)
    images, texts, ids, scale, bias = _inputs(image_emb, text_emb, logit_scale, image_ids, logit_bias)
    return _rows_loss(images, texts, ids, images, texts, ids, scale, bias, kind, label_smoothing)


def block_size(total: int, at_most: int) -> int:
    """The largest block of at most `at_most` that divides `total` evenly."""
    return max(size for size in range(1, min(at_most, total) + 1) if total % size == 0)


def _chunked_rows_loss(images, texts, ids, *whole_batch, row_chunk: int):
    """`_rows_loss` over blocks of at most `row_chunk` rows, one after another, each block's logits
    recomputed in the backward pass: logits memory O(row_chunk * B * K) whatever the rows."""
    rows = images.shape[0]
    block = block_size(rows, row_chunk)
    if block == rows:
        return _rows_loss(images, texts, ids, *whole_batch)

    block_loss = jax.checkpoint(lambda chunk: _rows_loss(*chunk, *whole_batch))
    blocks = [x.reshape(rows // block, block, *x.shape[1:]) for x in (images, texts, ids)]
    return jax.lax.map(block_loss, blocks).sum()


def sharded_contrastive_loss(
    image_emb,
    text_emb,
    logit_scale,
    *,
    mesh,
    kind: str,
    image_ids=None,
    logit_bias=None,
    label_smoothing: float = 0.0,
    row_chunk: int = 1024,
    axes=BATCH_AXES,
):
    """`contrastive_loss`, equal in value and gradients, with the batch split over the mesh `axes`:
    each device holds its own rows against the gathered batch (open_clip's --local-loss
    --gather-with-grad), in blocks of at most `row_chunk` rows, so its logits take
    O(min(B/devices, row_chunk) * B * K) memory instead of O(B * B * K)."""
    _check_arguments(image_emb, text_emb, kind, label_smoothing, logit_bias)
    rows = PartitionSpec(axes)

    def local_share(images, texts, ids, scale, bias):
        gather = lambda x: jax.lax.all_gather(x, axes, axis=0, tiled=True)  # backward: a reduce-scatter
        share = _chunked_rows_loss(
            images,
            texts,
            ids,
            gather(images),
            gather(texts),
            gather(ids),
            scale,
            bias,
            kind,
            label_smoothing,
            row_chunk=row_chunk,
        )
        return jax.lax.psum(share, axes)

    return jax.shard_map(
        local_share, mesh=mesh, in_specs=(rows, rows, rows, PartitionSpec(), PartitionSpec()), out_specs=PartitionSpec()
    )(*_inputs(image_emb, text_emb, logit_scale, image_ids, logit_bias))


def _rebuilt_from_top_components(x, num_components: int):
    """Rows of x [N, D] projected on the span of their top `num_components` principal components (centred
    first, the mean added back), as Long-CLIP's PCA."""
    mean = x.mean(axis=0)
    centred = x - mean
    if x.shape[0] < x.shape[1]:
        # Fewer rows than features (a device's share of the batch): the covariance has many equal (zero)
        # eigenvalues, all of them for one row, where eigh's gradient (over eigenvalue gaps) is NaN; the rows'
        # Gram matrix has the same nonzero ones and gives the same projection.
        _, vectors = jnp.linalg.eigh(centred @ centred.T)  # eigenvalues ascending
        top = vectors[:, -num_components:]
        return top @ (top.T @ centred) + mean
    _, vectors = jnp.linalg.eigh(centred.T @ centred)
    top = vectors[:, -num_components:]
    return centred @ top @ top.T + mean


def primary_components(embeddings, num_components: int, *, scope: str, mesh=None, axes=BATCH_AXES):
    """Long-CLIP's coarse image features: embeddings [B, D] rebuilt from their top principal components.

    scope "local": each device's rows (the batch split over the mesh `axes`) from their own components, not
    L2-normalised again, as Long-CLIP's code does; "global": the whole batch's components, L2-normalised
    again, which does not depend on how many devices share the batch.
    """
    x = embeddings.astype(jnp.float32)
    if scope == "global":
        rebuilt = _rebuilt_from_top_components(x, num_components)
        return rebuilt / jnp.maximum(jnp.linalg.norm(rebuilt, axis=-1, keepdims=True), 1e-12)
    if scope != "local":
        raise ValueError(f"unknown principal-component scope {scope!r}; expected one of {PCA_SCOPES}")
    rows = PartitionSpec(axes)
    local = partial(_rebuilt_from_top_components, num_components=num_components)
    return jax.shard_map(local, mesh=mesh, in_specs=rows, out_specs=rows)(x)
