"""`get_model(..., remat=True)`: per-block jax.checkpoint changes memory, not the function."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from imagenot_jax import models
from imagenot_jax.models.torch_nn import set_remat

# Tiny members of three families with BatchNorm (state updated inside the checkpointed blocks)
# and a transformer; (name, builder kwargs, image size).
TINY = {
    "resnet_mini": ({}, 16),
    "densenet121": ({"block_config": (2, 2), "growth_rate": 4, "num_init_features": 8}, 32),
    "vit_b_16": (
        {
            "image_size": 16,
            "patch_size": 8,
            "num_layers": 2,
            "num_heads": 2,
            "hidden_dim": 8,
            "mlp_dim": 16,
        },
        16,
    ),
}


def _build(name: str, remat: bool) -> nnx.Module:
    kwargs, _ = TINY[name]
    return models.get_model(name, num_classes=5, rngs=nnx.Rngs(0), remat=remat, **kwargs)


def _train_step(model: nnx.Module, x: jax.Array):
    """Loss, gradients and the updated non-parameter state after one train-mode forward."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params, rest):
        m = nnx.merge(graphdef, params, rest, copy=True)
        loss = jnp.mean(jnp.square(m(x).logits.astype(jnp.float32)))
        return loss, nnx.state(m, nnx.BatchStat)

    (loss, stats), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, rest)
    return loss, grads, stats


@pytest.mark.parametrize("name", sorted(TINY))
def test_remat_keeps_function_gradients_and_batch_stats(name):
    plain, remat = _build(name, False), _build(name, True)
    assert jax.tree.structure(nnx.state(plain)) == jax.tree.structure(nnx.state(remat))
    # Same parameters, same init.
    jax.tree.map(np.testing.assert_array_equal, nnx.state(plain), nnx.state(remat))
    plain.train()
    remat.train()
    size = TINY[name][1]
    x = jax.random.normal(jax.random.key(1), (4, size, size, 3))
    # The head of some families starts at zero: give the loss a gradient everywhere.
    for m in (plain, remat):
        head = m.heads.head if name == "vit_b_16" else (m.fc if name == "resnet_mini" else None)
        if head is not None:
            head.kernel[...] = jnp.full_like(head.kernel[...], 0.1)
    (loss_a, grads_a, stats_a), (loss_b, grads_b, stats_b) = (
        _train_step(plain, x),
        _train_step(remat, x),
    )
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads_a, grads_b
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), stats_a, stats_b
    )
    assert any(np.abs(g).max() > 0 for g in jax.tree.leaves(grads_a))


@pytest.mark.parametrize("name", sorted(TINY))
def test_remat_puts_blocks_under_checkpoint(name):
    """The remat model's jaxpr holds one checkpoint per block; the plain model's none."""
    counts = {remat: _checkpoints(_build(name, remat), TINY[name][1]) for remat in (False, True)}
    assert counts[False] == 0
    assert counts[True] == set_remat(_build(name, False)) > 0


def _checkpoints(model: nnx.Module, size: int) -> int:
    """Number of checkpoint (remat) equations in the train-mode forward's jaxpr."""
    model.train()
    graphdef, state = nnx.split(model)
    x = jnp.zeros((2, size, size, 3))
    jaxpr = jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(x))(state)
    checkpoint = jax.make_jaxpr(jax.checkpoint(jnp.sin))(1.0).eqns[0].primitive
    return sum(eqn.primitive is checkpoint for eqn in jaxpr.eqns)


def test_set_remat_counts_blocks_and_vgg_has_none():
    model = nnx.eval_shape(lambda: models.get_model("resnet18", num_classes=3, rngs=nnx.Rngs(0)))
    assert set_remat(model) == 8  # 4 stages x 2 BasicBlocks
    assert all(block.remat for stage in (model.layer1, model.layer4) for block in stage)
    assert set_remat(model, False) == 8 and not model.layer2[0].remat
    vgg = nnx.eval_shape(lambda: models.get_model("vgg11", num_classes=3, rngs=nnx.Rngs(0)))
    assert set_remat(vgg) == 0
