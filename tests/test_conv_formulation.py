"""The CPU convolution formulations in models/layers.py compute lax.conv_general_dilated's function.

`layers.conv_general_dilated` (what every torch_conv passes to nnx.Conv) lowers small-map
convolutions as im2col + GEMM on CPU only; these tests pin values and gradients to XLA's
convolution over kernel/stride/padding/dilation/group cases, and check that a GPU lowering of the
same traced function keeps XLA's convolution (deviceless compiles trace on a CPU host).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagenot_jax.models import layers

DN = ("NHWC", "HWIO", "NHWC")


def _conv(conv, x, w, strides, pads, dilation, groups):
    return conv(
        x,
        w,
        strides,
        pads,
        rhs_dilation=dilation,
        dimension_numbers=jax.lax.conv_dimension_numbers(x.shape, w.shape, DN),
        feature_group_count=groups,
        precision=jax.lax.Precision.HIGHEST,
    )


_reference = functools.partial(_conv, jax.lax.conv_general_dilated)
_ours = functools.partial(_conv, layers.conv_general_dilated)


# (map size, in ch, out ch, kernel (h, w), stride, padding ((t, b), (l, r)), dilation, groups)
CASES = [
    (2, 8, 16, (3, 3), 1, ((1, 1), (1, 1)), 1, 1),  # ResNet layer4 at 64 px
    (1, 8, 8, (3, 3), 1, ((1, 1), (1, 1)), 1, 1),  # 1x1 map: only the centre tap sees data
    (4, 8, 16, (3, 3), 2, ((1, 1), (1, 1)), 1, 1),  # stride-2 entry into a 2x2 stage
    (4, 8, 16, (1, 1), 2, ((0, 0), (0, 0)), 1, 1),  # downsample shortcut
    (3, 6, 4, (1, 1), 1, ((0, 0), (0, 0)), 1, 1),  # 1x1 conv (SE / bottleneck)
    (5, 4, 4, (1, 7), 1, ((0, 0), (3, 3)), 1, 1),  # Inception's 1x7
    (4, 4, 6, (3, 3), 1, ((2, 2), (2, 2)), 2, 1),  # dilated
    (5, 4, 6, (2, 3), 2, ((0, 1), (2, 0)), 1, 1),  # asymmetric kernel and padding
    (4, 8, 8, (3, 3), 1, ((1, 1), (1, 1)), 1, 8),  # depthwise: shifted taps (any map size)
    (9, 6, 6, (3, 3), 2, ((1, 1), (1, 1)), 1, 6),  # depthwise, stride 2, odd map
    (10, 4, 4, (7, 7), 1, ((3, 3), (3, 3)), 1, 4),  # ConvNeXt's 7x7 depthwise
    (8, 4, 4, (5, 5), 1, ((4, 4), (4, 4)), 2, 4),  # depthwise, dilated
    (4, 4, 8, (3, 3), 1, ((1, 1), (1, 1)), 1, 4),  # channel multiplier 2: XLA's conv is kept
    (4, 8, 16, (3, 3), 1, ((1, 1), (1, 1)), 1, 2),  # grouped: XLA's conv is kept
    (8, 4, 4, (3, 3), 1, ((1, 1), (1, 1)), 1, 1),  # above the threshold: XLA's conv
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}px-k{c[3]}-s{c[4]}-d{c[6]}-g{c[7]}")
def test_values_and_gradients_match_xla_convolution(case):
    size, cin, cout, kernel, stride, pads, dilation, groups = case
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (3, size, size, cin))
    w = jax.random.normal(kw, (*kernel, cin // groups, cout))
    args = ((stride, stride), pads, (dilation, dilation), groups)
    expected = _reference(x, w, *args)
    got = jax.jit(lambda x, w: _ours(x, w, *args))(x, w)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

    g = jax.random.normal(kg, expected.shape)  # a non-uniform cotangent

    def loss(fn):
        return lambda x, w: jnp.sum(fn(x, w, *args) * g)

    want = jax.grad(loss(_reference), argnums=(0, 1))(x, w)
    have = jax.jit(jax.grad(loss(_ours), argnums=(0, 1)))(x, w)
    for a, b in zip(have, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def _hlo_ops(platform: str, groups: int = 1) -> tuple[int, int]:
    """(convolutions, dots) in the StableHLO of a small-map conv's value and gradient."""
    x = jnp.ones((2, 2, 2, 8))
    w = jnp.ones((3, 3, 8 // groups, 8))

    def f(x, w):
        y = _ours(x, w, (1, 1), ((1, 1), (1, 1)), (1, 1), groups)
        return jnp.sum(y**2)

    step = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
    exported = jax.export.export(step, platforms=[platform])(x, w)
    text = exported.mlir_module()
    return text.count("stablehlo.convolution"), text.count("stablehlo.dot_general")


def test_gemm_form_is_lowered_for_cpu_only():
    conv_cpu, dot_cpu = _hlo_ops("cpu")
    assert conv_cpu == 0 and dot_cpu >= 3  # forward, input grad, kernel grad
    conv_gpu, dot_gpu = _hlo_ops("cuda")
    assert conv_gpu >= 3 and dot_gpu == 0


def test_depthwise_taps_are_lowered_for_cpu_only():
    assert _hlo_ops("cpu", groups=8) == (0, 0)  # multiply-adds only
    conv_tpu, _ = _hlo_ops("tpu", groups=8)
    assert conv_tpu >= 3


def test_torch_conv_uses_the_formulation():
    from flax import nnx

    conv = layers.torch_conv(8, 8, 3, padding=1, dtype=jnp.float32, param_dtype=jnp.float32,
                             rngs=nnx.Rngs(0))  # fmt: skip
    assert conv.conv_general_dilated is layers.conv_general_dilated
    x = jax.random.normal(jax.random.key(1), (2, 2, 2, 8))
    expected = _reference(x, conv.kernel[...], (1, 1), ((1, 1), (1, 1)), (1, 1), 1)
    np.testing.assert_allclose(conv(x), expected, rtol=1e-5, atol=1e-5)
