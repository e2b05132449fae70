"""The parameter-free torch.nn counterparts shared by the model families, against torch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from imagenot_jax.models.torch_nn import (
    Activation,
    AdaptiveAvgPool2d,
    MaxPool2d,
    StochasticDepth,
    flatten_nchw,
)


def _nchw(x: np.ndarray):
    torch = pytest.importorskip("torch")
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def _nhwc(t) -> np.ndarray:
    return t.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize(
    ("in_hw", "out_hw"),
    [((7, 7), (7, 7)), ((10, 13), (7, 7)), ((1, 1), (6, 6)), ((3, 5), (6, 6)), ((5, 6), (1, 1))],
)
def test_adaptive_avg_pool_matches_torch(in_hw, out_hw):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, *in_hw, 3)).astype(np.float32)
    expected = _nhwc(torch.nn.AdaptiveAvgPool2d(out_hw)(_nchw(x)))
    got = np.asarray(AdaptiveAvgPool2d(out_hw)(jnp.asarray(x)))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("size", [7, 8, 11, 12, 35])
@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "ceil_mode"),
    [(3, 2, 0, False), (3, 2, 1, False), (3, 2, 0, True), (3, 2, 1, True), (2, 2, 0, True)],
)
def test_max_pool_matches_torch(size, kernel, stride, padding, ceil_mode):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(size).standard_normal((1, size, size + 1, 2)).astype(np.float32)
    expected = _nhwc(torch.nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode)(_nchw(x)))
    got = np.asarray(MaxPool2d(kernel, stride, padding, ceil_mode)(jnp.asarray(x)))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("kind", "torch_name"),
    [
        ("relu", "ReLU"),
        ("hardswish", "Hardswish"),
        ("hardsigmoid", "Hardsigmoid"),
        ("silu", "SiLU"),
        ("sigmoid", "Sigmoid"),
        ("gelu", "GELU"),
    ],
)
def test_activations_match_torch(kind, torch_name):
    torch = pytest.importorskip("torch")
    x = np.linspace(-5, 5, 1001, dtype=np.float32)
    expected = getattr(torch.nn, torch_name)()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(Activation(kind)(jnp.asarray(x))), expected, atol=1e-6)


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="swish2"):
        Activation("swish2")


def test_flatten_nchw_is_torch_flatten_order():
    torch = pytest.importorskip("torch")
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(flatten_nchw(jnp.asarray(x)), torch.flatten(_nchw(x), 1))


class _Branch(nnx.Module):
    def __init__(self, p: float):
        self.drop = StochasticDepth(p, rngs=nnx.Rngs(0))

    def __call__(self, x):
        return self.drop(x)


def test_stochastic_depth_rows_in_train_identity_in_eval():
    branch = _Branch(0.25)
    x = jnp.ones((4000, 3, 2, 2))
    with pytest.raises(ValueError, match="train"):
        branch(x)
    branch.eval()
    np.testing.assert_array_equal(branch(x), x)
    branch.train()
    y = np.asarray(branch(x)).reshape(4000, -1)
    assert np.all(y == y[:, :1])  # each sample's branch is kept or dropped whole
    np.testing.assert_allclose(np.unique(y), [0.0, 1.0 / 0.75], rtol=1e-6)
    assert np.mean(y[:, 0] == 0) == pytest.approx(0.25, abs=0.025)
    assert not np.array_equal(y, np.asarray(branch(x)).reshape(4000, -1))  # stream advances


def test_stochastic_depth_probability_is_checked():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        StochasticDepth(1.5, rngs=nnx.Rngs(0))


def test_stochastic_depth_p1_drops_everything():
    branch = _Branch(1.0)
    branch.train()
    assert not np.any(np.asarray(branch(jax.numpy.ones((8, 2)))))
