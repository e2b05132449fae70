"""AlexNet and VGG: dropout modes, torch's default conv init, non-square adaptive pooling.

Parameter counts and eval-mode identity of every variant are in test_model_zoo.py; the
torchvision comparisons skip where torchvision is not installed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from imagenot_jax.models.layers import torch_conv, torch_default_conv_init

import model_parity


@functools.cache
def _converted(name: str) -> tuple[object, nnx.Module]:
    torch_model = model_parity.torchvision_model(name, num_classes=10)
    return torch_model, model_parity.converted(name, torch_model, num_classes=10)


@pytest.mark.parametrize(("name", "size"), [("alexnet", 63), ("vgg11", 32)])
def test_dropout_active_in_train_and_off_in_eval(name, size):
    _, model = _converted(name)  # real (torchvision) weights, no JAX init cost
    x = jax.random.normal(jax.random.key(2), (2, size, size, 3))
    model.eval()
    a, b = model_parity.jit_logits(model, x), model_parity.jit_logits(model, x)
    np.testing.assert_array_equal(a, b)
    model.train()
    c = model_parity.jit_logits(model, x)
    d = model_parity.jit_logits(model, x)  # the dropout stream advances per call
    assert not np.allclose(c, d)
    assert not np.allclose(c, a)
    model.eval()


@pytest.mark.parametrize(("name", "size"), [("alexnet", 67), ("vgg11_bn", 40)])
def test_eval_identity_with_uneven_adaptive_pool_windows(name, size):
    """67 px leaves AlexNet a 2x2 map before its 6x6 pool, 40 px VGG a 1x1 map before 7x7."""
    torch = pytest.importorskip("torch")
    torch_model, model = _converted(name)
    x, x_torch = model_parity.random_input((2, size, size, 3))
    torch_model.eval()
    with torch.no_grad():
        expected = torch_model(x_torch).numpy()
    model.eval()
    model_parity.assert_logits_match(model_parity.jit_logits(model, x), expected)


def test_alexnet_conv_init_is_torchs_default():
    conv = torch_conv(
        64,
        32,
        3,
        use_bias=True,
        kernel_init=torch_default_conv_init,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs=nnx.Rngs(0),
    )
    bound = 1.0 / np.sqrt(64 * 3 * 3)
    for leaf in (conv.kernel[...], conv.bias[...]):
        assert np.abs(np.asarray(leaf)).max() <= bound
    assert np.asarray(conv.kernel[...]).std() == pytest.approx(bound / np.sqrt(3), rel=0.03)
    assert np.abs(np.asarray(conv.bias[...])).max() > 0.5 * bound
