"""The loss and a forward pass on one device equal the same on a (4, 2) mesh of 8 fake CPU devices."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rsclip_jax import CLIP, LOSS_KINDS, contrastive_loss, model_config, tokenize
from rsclip_jax.accelerators.sharding import make_mesh, param_shardings
from rsclip_jax.config import base_config


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_loss_on_mesh_equals_single_device(kind):
    rng = np.random.default_rng(0)
    img = unit(rng.normal(size=(16, 32))).astype(np.float32)
    txt = unit(rng.normal(size=(16, 3, 32))).astype(np.float32)
    ids = np.arange(16) // 2  # pairs of duplicates
    loss = jax.jit(lambda i, t, ids: contrastive_loss(i, t, 2.5, kind=kind, image_ids=ids, logit_bias=-1.0))
    single = loss(img, txt, ids)
    mesh = make_mesh((4, 2), ("data", "tensor"))
    sharded = loss(
        jax.device_put(img, NamedSharding(mesh, P("data", "tensor"))),
        jax.device_put(txt, NamedSharding(mesh, P("data", None, "tensor"))),
        jax.device_put(ids, NamedSharding(mesh, P("data"))),
    )
    np.testing.assert_allclose(sharded, single, rtol=1e-6)


def test_forward_on_mesh_equals_single_device():
    config = model_config("tiny", context_length=16)
    graphdef, state = nnx.split(CLIP(config, rngs=nnx.Rngs(0)))
    params = nnx.to_pure_dict(state)
    images = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype(np.float32)
    tokens = tokenize([f"caption number {i} of a red cube" for i in range(8)], 16)

    @jax.jit
    def forward(state, images, tokens):
        return nnx.merge(graphdef, state)(images, tokens)

    single = forward(params, images, tokens)
    mesh = make_mesh((4, 2), ("fsdp", "tensor"))
    shardings = param_shardings(state, mesh, base_config().mesh.rules)
    specs = {s.spec for s in jax.tree.leaves(shardings)}
    assert P("fsdp", "tensor") in specs and P("fsdp", None, "tensor", None) in specs  # really sharded
    batch = NamedSharding(mesh, P("fsdp"))
    sharded = forward(jax.device_put(params, shardings), jax.device_put(images, batch), jax.device_put(tokens, batch))
    for a, b in zip(sharded, single):
        np.testing.assert_allclose(a, b, atol=2e-6)


def test_a_parameter_dimension_the_mesh_cannot_divide_is_logged_once_by_name(caplog):
    state = nnx.state(nnx.eval_shape(lambda: CLIP(model_config("tiny"), rngs=nnx.Rngs(0))))
    mesh = make_mesh((1, 1, 8))  # 2 heads over tensor=8
    for _ in range(2):  # as when evaluation or memory picking builds the setup again
        shardings = param_shardings(state, mesh, base_config().mesh.rules)
    name = "parameter visual.transformer.resblocks.0.attn.in_proj.kernel: its 'heads' dimension (2) does not divide"
    assert caplog.text.count(name) == 1, caplog.text[:2000]
    assert "over mesh axes ('tensor',) of size 8, so it is replicated" in caplog.text
    assert "tensor" not in shardings["visual"]["transformer"]["resblocks"][0]["attn"]["in_proj"]["kernel"].spec
