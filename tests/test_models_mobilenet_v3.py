"""MobileNetV3 family: channel rounding, init, train-mode BN updates and dropout vs torchvision.

Parameter counts and eval-mode identity of every variant are in test_model_zoo.py.
Fast on CPU: whole models are never initialised eagerly (~20 s on 2 cores, one compile per
distinct shape); they are built abstractly and filled, and run under nnx.jit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from imagenot_jax.models import get_model
from imagenot_jax.models import mobilenet_v3 as mnv3  # registers the family

import model_parity


def _build(name: str, **kwargs) -> nnx.Module:
    """A concrete model without running its initialisers (eager init costs ~20 s on 2 cores: one
    compile per distinct shape): random N(0, 0.05) parameters, BN mean 0 / var 1, fresh RNGs."""
    abstract = nnx.eval_shape(lambda: get_model(name, num_classes=1000, rngs=nnx.Rngs(0), **kwargs))
    graphdef, params, stats, rest = nnx.split(abstract, nnx.Param, nnx.BatchStat, ...)
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda a: jnp.asarray(0.05 * rng.standard_normal(a.shape), a.dtype), params
    )
    stats = jax.tree.map_with_path(
        lambda path, a: (jnp.ones if "var" in str(path[-1]) else jnp.zeros)(a.shape, a.dtype),
        stats,
    )

    def concrete(a):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            return jax.random.key(0)
        return jnp.zeros(a.shape, a.dtype)

    return nnx.merge(graphdef, params, stats, jax.tree.map(concrete, rest))


def test_make_divisible_matches_torchvision_rule():
    assert mnv3.make_divisible(72 // 4, 8) == 24  # 18 -> 16 would lose > 10%
    assert mnv3.make_divisible(240 // 4, 8) == 64
    assert mnv3.make_divisible(3, 8) == 8


def test_init_matches_torchvision_scheme():
    """Per-layer constructors (a whole model's eager init is slow): torchvision's init."""
    kw = dict(dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    head = mnv3._linear(576, 1024, **kw)
    assert np.asarray(head.kernel[...]).std() == pytest.approx(0.01, rel=0.05)
    assert np.all(np.asarray(head.bias[...]) == 0)
    # depthwise 5x5 over 96 channels, HWIO (5, 5, 1, 96): torch fan_out = 96 * 25
    cna = mnv3.conv_norm_activation(96, 96, 5, "hardswish", stride=2, groups=96, **kw)
    kernel = np.asarray(cna[0].kernel[...])
    assert kernel.shape == (5, 5, 1, 96)
    assert kernel.std() == pytest.approx(np.sqrt(2.0 / (96 * 25)), rel=0.1)
    assert cna[0].padding == ((2, 2), (2, 2))
    bn = cna[1]
    assert (bn.momentum, bn.epsilon) == (0.99, 1e-3)
    assert np.all(np.asarray(bn.scale[...]) == 1) and np.all(np.asarray(bn.bias[...]) == 0)
    se = mnv3.SqueezeExcitation(96, 24, **kw)
    assert se.fc1.kernel.shape == (1, 1, 96, 24)
    assert np.all(np.asarray(se.fc1.bias[...]) == 0) and np.all(np.asarray(se.fc2.bias[...]) == 0)


def test_train_mode_dropout_and_running_stats_match_torchvision():
    """One train-mode forward: BN running stats as torch's (momentum 0.01, unbiased running_var);
    dropout is active in train mode only."""
    torch = pytest.importorskip("torch")
    torch_model = model_parity.torchvision_model("mobilenet_v3_small")
    model = model_parity.converted("mobilenet_v3_small", torch_model)
    x, x_torch = model_parity.random_input((4, 64, 64, 3))
    torch_model.train()
    with torch.no_grad():
        torch_model(x_torch)
    model.train()
    first = np.asarray(model_parity.jit_logits(model, jnp.asarray(x)))
    ours = {
        "features.0.1": model.features[0][1],
        "features.1.block.0.1": model.features[1].block[0][1],  # depthwise, stride 2
        "features.4.block.3.1": model.features[4].block[3][1],  # projection after SE
        "features.12.1": model.features[12][1],  # 2x2 px x 4 images: n/(n-1) = 16/15
    }
    torch_state = torch_model.state_dict()
    for key, bn in ours.items():
        np.testing.assert_allclose(
            bn.mean[...], torch_state[f"{key}.running_mean"].numpy(), rtol=1e-4, atol=1e-6
        )
        np.testing.assert_allclose(
            bn.var[...], torch_state[f"{key}.running_var"].numpy(), rtol=1e-4, atol=1e-6
        )
    # BN in train mode is deterministic given x, so differing logits come from dropout.
    second = np.asarray(model_parity.jit_logits(model, jnp.asarray(x)))
    assert not np.allclose(first, second)
    dropout = model.classifier[2]
    assert dropout.rate == 0.2
    kept = np.asarray(dropout(jnp.ones((64, 1024))))
    assert set(np.unique(kept).tolist()) <= {0.0, 1.25}
    assert np.mean(kept == 0) == pytest.approx(0.2, abs=0.02)
    model.eval()
    assert np.array_equal(
        model_parity.jit_logits(model, jnp.asarray(x)),
        model_parity.jit_logits(model, jnp.asarray(x)),
    )


def test_bf16_compute_keeps_fp32_params_and_stats():
    model = _build("mobilenet_v3_small", dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    model.train()
    logits = model_parity.jit_logits(model, x)
    assert logits.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(logits)))
    for kind in (nnx.Param, nnx.BatchStat):
        dtypes = {a.dtype for a in jax.tree.leaves(nnx.state(model, kind))}
        assert dtypes == {np.dtype(np.float32)}
