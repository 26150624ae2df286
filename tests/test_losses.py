"""Every loss kind against a float64 reference written here, loop by loop, from docs/method.md section 3."""

from functools import partial

import jax
import numpy as np
import pytest

from rsclip_jax import contrastive_loss
from rsclip_jax.training.losses import primary_components


def log_softmax(x):
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def smoothed_target(positives, eps):
    """(1 - eps) * uniform over the positives + eps / number of columns."""
    positives = np.asarray(positives, np.float64)
    return (1 - eps) * positives / positives.sum() + eps / positives.size


def reference_loss(img, txt, log_scale, kind, ids, bias, eps):
    batch, k_caps, _ = txt.shape
    s = np.exp(log_scale) * np.einsum("id,jkd->ijk", img, txt)  # s[i, j, k]: image i vs caption k of image j
    if kind == "softmax_union":
        i2t = 0.0
        for i in range(batch):
            row = s[i].reshape(-1)
            positives = [ids[j] == ids[i] for j in range(batch) for _ in range(k_caps)]
            i2t -= smoothed_target(positives, eps) @ log_softmax(row)
        t2i = 0.0
        for j in range(batch):
            for k in range(k_caps):
                positives = [ids[i] == ids[j] for i in range(batch)]
                t2i -= smoothed_target(positives, eps) @ log_softmax(s[:, j, k])
        return (i2t / batch + t2i / (batch * k_caps)) / 2
    if kind == "softmax_per_caption":
        total = 0.0
        for k in range(k_caps):
            i2t = sum(
                -smoothed_target([ids[j] == ids[i] for j in range(batch)], eps) @ log_softmax(s[i, :, k])
                for i in range(batch)
            )
            t2i = sum(
                -smoothed_target([ids[i] == ids[j] for i in range(batch)], eps) @ log_softmax(s[:, j, k])
                for j in range(batch)
            )
            total += (i2t / batch + t2i / batch) / 2
        return total / k_caps
    assert kind == "sigmoid"
    total = 0.0
    for i in range(batch):
        for j in range(batch):
            for k in range(k_caps):
                label = 1.0 if ids[i] == ids[j] else -1.0
                total += np.log(1.0 / (1.0 + np.exp(-label * (s[i, j, k] + bias))))
    return -total / (batch * k_caps)


def unit_rows(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("kind", ["softmax_union", "softmax_per_caption", "sigmoid"])
@pytest.mark.parametrize("with_duplicates", [False, True])
@pytest.mark.parametrize("num_captions", [1, 3])
def test_loss_matches_float64_reference(kind, with_duplicates, num_captions):
    rng = np.random.default_rng(0)
    batch, width = 6, 8
    img = unit_rows(rng.normal(size=(batch, width)))
    txt = unit_rows(img[:, None, :] + 0.8 * rng.normal(size=(batch, num_captions, width)))
    ids = np.array([0, 1, 0, 2, 3, 1]) if with_duplicates else np.arange(batch)
    log_scale, bias = np.log(10.0), -2.0
    for eps in [0.0] if kind == "sigmoid" else [0.0, 0.1]:
        expected = reference_loss(img, txt, log_scale, kind, ids, bias, eps)
        got = jax.jit(contrastive_loss, static_argnames=("kind", "label_smoothing"))(
            img.astype(np.float32),
            txt.astype(np.float32),
            np.float32(log_scale),
            kind=kind,
            image_ids=ids if with_duplicates else None,
            logit_bias=np.float32(bias),
            label_smoothing=eps,
        )
        np.testing.assert_allclose(float(got), expected, rtol=2e-6, err_msg=f"{kind} eps={eps}")


def test_distinct_ids_equal_no_ids():
    rng = np.random.default_rng(1)
    img, txt = unit_rows(rng.normal(size=(4, 8))), unit_rows(rng.normal(size=(4, 2, 8)))
    for kind in ("softmax_union", "softmax_per_caption", "sigmoid"):
        a = contrastive_loss(img, txt, 2.0, kind=kind, logit_bias=-1.0)
        b = contrastive_loss(img, txt, 2.0, kind=kind, image_ids=np.array([7, 3, 5, 1]), logit_bias=-1.0)
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_loss_rejects_bad_arguments():
    img, txt = np.ones((2, 4)), np.ones((2, 1, 4))
    with pytest.raises(ValueError, match="unknown loss kind 'clip'"):
        contrastive_loss(img, txt, 0.0, kind="clip")
    with pytest.raises(ValueError, match=r"text_emb \[B, K, D\]"):
        contrastive_loss(img, txt[:, 0], 0.0, kind="sigmoid")
    with pytest.raises(ValueError, match="label_smoothing"):
        contrastive_loss(img, txt, 0.0, kind="sigmoid", label_smoothing=0.1, logit_bias=0.0)
    with pytest.raises(ValueError, match=r"the sigmoid loss needs logit_bias, the model.s learnable bias"):
        contrastive_loss(img, txt, 0.0, kind="sigmoid")
    with pytest.raises(ValueError, match="unknown principal-component scope 'device'"):
        primary_components(img, 1, scope="device")


@pytest.mark.parametrize("mesh_shape,row_chunk", [((8, 1, 1), 1024), ((2, 2, 2), 2)])  # 4 rows a device: 2 blocks
@pytest.mark.parametrize("kind", ["softmax_union", "softmax_per_caption", "sigmoid"])
def test_sharded_loss_equals_the_plain_loss_with_gradients(kind, mesh_shape, row_chunk):
    from jax.sharding import NamedSharding, PartitionSpec

    from rsclip_jax.accelerators.sharding import make_mesh
    from rsclip_jax.training.losses import sharded_contrastive_loss

    mesh = make_mesh(mesh_shape)
    rng = np.random.default_rng(2)
    batch, num_captions, width = 16, 3, 8
    img = unit_rows(rng.normal(size=(batch, width))).astype(np.float32)
    txt = unit_rows(img[:, None, :] + 0.8 * rng.normal(size=(batch, num_captions, width))).astype(np.float32)
    ids = rng.integers(0, 11, size=batch)  # same-image rows, some on other devices
    eps = 0.0 if kind == "sigmoid" else 0.1
    rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    img_sharded, txt_sharded, ids_sharded = (jax.device_put(x, rows) for x in (img, txt, ids))

    def value_and_grads(loss_fn, *arrays):
        return jax.jit(
            jax.value_and_grad(
                lambda i, t, scale, bias: loss_fn(
                    i, t, scale, kind=kind, image_ids=arrays[2], logit_bias=bias, label_smoothing=eps
                ),
                argnums=(0, 1, 2, 3),
            )
        )(arrays[0], arrays[1], np.float32(np.log(10.0)), np.float32(-2.0))

    plain = value_and_grads(contrastive_loss, img, txt, ids)
    sharded = value_and_grads(
        partial(sharded_contrastive_loss, mesh=mesh, row_chunk=row_chunk), img_sharded, txt_sharded, ids_sharded
    )
    np.testing.assert_allclose(sharded[0], plain[0], rtol=1e-6)
    for got, want in zip(sharded[1], plain[1]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def long_clip_pca(x, num_components):
    """Long-CLIP's PCA (model_longclip.py), in float64: centred, the top right singular vectors, the mean
    added back, not renormalised."""
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    top = vt[:num_components].T
    return (x - mean) @ top @ top.T + mean


@pytest.mark.parametrize("width,num_components", [(16, 3), (4, 2)])  # 8 rows a device: fewer and more than width
def test_local_primary_components_are_each_devices_own(width, num_components):
    from jax.sharding import NamedSharding, PartitionSpec

    from rsclip_jax.accelerators.sharding import make_mesh

    mesh = make_mesh((4, 2, 1))
    x = unit_rows(np.random.default_rng(3).normal(size=(64, width)) * 0.7 ** np.arange(width))  # distinct components
    sharded = jax.device_put(x.astype(np.float32), NamedSharding(mesh, PartitionSpec(("data", "fsdp"))))
    local = jax.jit(partial(primary_components, num_components=num_components, scope="local", mesh=mesh))(sharded)
    per_device = np.concatenate([long_clip_pca(rows, num_components) for rows in np.split(x, 8)])
    np.testing.assert_allclose(local, per_device, atol=2e-5)

    whole = long_clip_pca(x, num_components)
    global_ = primary_components(x.astype(np.float32), num_components, scope="global")
    np.testing.assert_allclose(global_, whole / np.linalg.norm(whole, axis=-1, keepdims=True), atol=2e-5)
    assert np.abs(np.asarray(local) - np.asarray(global_)).max() > 0.1


def test_local_primary_components_have_finite_gradients_with_one_row_a_device():
    from jax.sharding import NamedSharding, PartitionSpec

    from rsclip_jax.accelerators.sharding import make_mesh

    mesh = make_mesh((8, 1, 1))
    x = unit_rows(np.random.default_rng(4).normal(size=(8, 16))).astype(np.float32)
    weights = np.random.default_rng(5).normal(size=(8, 16)).astype(np.float32)
    sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec(("data", "fsdp"))))
    value = lambda x: (primary_components(x, 4, scope="local", mesh=mesh) * weights).sum()
    np.testing.assert_allclose(jax.jit(jax.grad(value))(sharded), weights, atol=1e-5)  # one row: rebuilt as it is
