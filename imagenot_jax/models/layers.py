"""Layers and initialisers with PyTorch semantics, shared by the model families.

The models must compute the same function as torchvision's (same eval-mode output, same running
statistics after a training step), so the few places where Flax's defaults differ from PyTorch's
are pinned down here once: conv/linear initialisation, and BatchNorm's running-variance update.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

# torch.nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"): N(0, 2 / fan_out) with
# fan_out = out_channels * kh * kw; jax computes the same fan from an HWIO kernel (untruncated).
conv_kernel_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")

# PyTorch's default nn.Linear weight init, kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), ...);
# variance_scaling's uniform limit is sqrt(3 * scale / fan_in), so scale = 1/3.
linear_kernel_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """torchvision's channel rounding (MobileNet, EfficientNet): the nearest multiple of
    `divisor`, at least `min_value`, never rounded down by more than 10%."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def torch_linear(
    in_features: int,
    out_features: int,
    *,
    dtype: Any,
    param_dtype: Any,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """nnx.Linear initialised like torch.nn.Linear (weight and bias both U(+-1/sqrt(fan_in)))."""
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=linear_kernel_init,
        bias_init=torch_bias_init(in_features),
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


# torch.nn.Conv2d's own default weight init, kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in)) with
# fan_in = in_channels/groups * kh * kw; jax derives the same fan from an HWIO kernel.
torch_default_conv_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> Any:
    """torch's default bias init for Conv2d/Linear: U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])


# --- convolution formulation -----------------------------------------------------------------
#
# XLA:CPU's convolution falls off a cliff on small feature maps: a 3x3 512->512 conv at batch 32
# runs at ~150 GFLOP/s on a 4x4 map but ~2 on 2x2 and ~12 on 1x1 (benchmarks/xla_cpu_small_conv.py),
# which made ResNet-18 at 64 px spend 906 of 947 ms of its forward in layer4. The same function
# as im2col (shifted strided slices concatenated on channels) + one GEMM does not have the cliff.
# It is chosen per lowering platform (lax.platform_dependent), never by jax.default_backend():
# deviceless GPU/TPU compiles trace on a CPU host and must keep XLA's native convolution.

# Output maps of at most this many pixels (Ho * Wo) take the GEMM form on CPU; above it XLA's
# convolution is as fast or faster (7x7 and up in the reproducer).
CPU_GEMM_MAX_PIXELS = 16
CPU_DEPTHWISE_TAPS = True  # depthwise convs as shifted multiply-adds on CPU (any map size)
_NHWC = ("NHWC", "HWIO", "NHWC")


def _explicit_pads(padding: Any) -> tuple[tuple[int, int], ...] | None:
    if isinstance(padding, str):
        return None
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return pads if all(lo >= 0 and hi >= 0 for lo, hi in pads) else None


def _out_size(size: int, pad: tuple[int, int], kernel: int, stride: int, dilation: int) -> int:
    return (size + pad[0] + pad[1] - (kernel - 1) * dilation - 1) // stride + 1


def _shifted_taps(
    x: jax.Array,
    kernel_size: tuple[int, int],
    strides: Sequence[int],
    pads: Sequence[tuple[int, int]],
    dilation: Sequence[int],
) -> list[jax.Array]:
    """The kh*kw strided slices of the padded input, one per kernel tap in (i, j) order: tap
    (i, j) is what the kernel's weight at (i, j) multiplies at every output position."""
    n, _, _, c = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, strides, dilation
    xp = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    ho = _out_size(x.shape[1], pads[0], kh, sh, dh)
    wo = _out_size(x.shape[2], pads[1], kw, sw, dw)
    return [
        jax.lax.slice(
            xp,
            (0, i * dh, j * dw, 0),
            (n, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, c),
            (1, sh, sw, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]


def conv_as_gemm(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int],
    pads: Sequence[tuple[int, int]],
    dilation: Sequence[int],
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """An NHWC x HWIO (ungrouped) convolution as im2col + one dot_general: the same function
    as lax.conv_general_dilated with these arguments (tested), in XLA:CPU's fast GEMM."""
    kh, kw, c, o = kernel.shape
    taps = _shifted_taps(x, (kh, kw), strides, pads, dilation)
    patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)  # (i, j, c) order
    return jax.lax.dot_general(
        patches,
        kernel.reshape(kh * kw * c, o),
        (((3,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def depthwise_as_taps(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int],
    pads: Sequence[tuple[int, int]],
    dilation: Sequence[int],
    preferred_element_type: Any = None,
) -> jax.Array:
    """A depthwise NHWC x HW1C convolution (groups == channels, multiplier 1) as a sum over the
    kh*kw taps of a strided slice times that tap's per-channel weight: elementwise work that
    XLA:CPU fuses into loops, where its grouped convolution runs at well under 1 GFLOP/s
    (benchmarks/xla_cpu_small_conv.py --depthwise). Accumulates in at least fp32."""
    acc = jnp.promote_types(x.dtype, jnp.float32)
    kh, kw = kernel.shape[:2]
    weights = kernel.astype(acc).reshape(kh * kw, -1)  # tap (i, j) -> its channels' weights
    taps = _shifted_taps(x.astype(acc), (kh, kw), strides, pads, dilation)
    out = sum(tap * weights[t] for t, tap in enumerate(taps))
    return out.astype(preferred_element_type or jnp.result_type(x.dtype, kernel.dtype))


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    **kwargs: Any,
) -> jax.Array:
    """lax.conv_general_dilated, lowered on CPU as a GEMM for small output maps.

    Drop-in for nnx.Conv's `conv_general_dilated=`. Only when lowering for CPU, and only for
    un-transposed 2-d NHWC/HWIO convolutions with non-negative explicit padding: ungrouped ones
    whose output map has <= CPU_GEMM_MAX_PIXELS pixels become im2col + GEMM, depthwise ones
    (groups == channels, multiplier 1) a sum of shifted taps. Everything else, and every
    non-CPU lowering, is XLA's convolution, unchanged.
    """
    xla = functools.partial(
        jax.lax.conv_general_dilated,
        window_strides=window_strides,
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
        **kwargs,
    )
    pads = _explicit_pads(padding)
    dilation = tuple(rhs_dilation or (1, 1))
    nhwc = lhs.ndim == 4 and dimension_numbers == jax.lax.conv_dimension_numbers(
        lhs.shape, rhs.shape, _NHWC
    )
    if (
        not nhwc
        or pads is None
        or tuple(lhs_dilation or (1, 1)) != (1, 1)
        or kwargs.get("batch_group_count", 1) != 1
        or kwargs.get("out_sharding") is not None
    ):
        return xla(lhs, rhs)
    strides = tuple(window_strides)
    if feature_group_count > 1:
        channels = lhs.shape[-1]
        depthwise = feature_group_count == channels and rhs.shape[-1] == channels
        if not (depthwise and CPU_DEPTHWISE_TAPS):
            return xla(lhs, rhs)  # grouped (ResNeXt) or channel multiplier > 1: XLA's conv
        taps = functools.partial(
            depthwise_as_taps,
            strides=strides,
            pads=pads,
            dilation=dilation,
            preferred_element_type=preferred_element_type,
        )
        return jax.lax.platform_dependent(lhs, rhs, cpu=taps, default=xla)
    out_pixels = math.prod(
        _out_size(lhs.shape[1 + a], pads[a], rhs.shape[a], window_strides[a], dilation[a])
        for a in range(2)
    )
    if out_pixels > CPU_GEMM_MAX_PIXELS:
        return xla(lhs, rhs)
    gemm = functools.partial(
        conv_as_gemm,
        strides=strides,
        pads=pads,
        dilation=dilation,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return jax.lax.platform_dependent(lhs, rhs, cpu=gemm, default=xla)


def torch_conv(
    in_features: int,
    out_features: int,
    kernel_size: int | tuple[int, int],
    *,
    stride: int = 1,
    padding: int | tuple[int, int] | None = 0,
    dilation: int = 1,
    groups: int = 1,
    use_bias: bool = False,
    kernel_init: Any = None,
    bias_init: Any = None,
    dtype: Any,
    param_dtype: Any,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """torch.nn.Conv2d (bias-free by default, as torchvision's conv+BN blocks use it).

    Padding is explicit and symmetric, `padding` pixels per side, exactly as torch; 'SAME' would
    pad asymmetrically for even inputs with stride 2 and shift every feature map by a pixel.
    `padding=None` is torchvision's Conv2dNormActivation default, (k - 1) // 2 * dilation.
    Kernel and padding may be (h, w) pairs (Inception's 1x7 / 7x1 convs).
    Initialisation defaults to torchvision's kaiming_normal(fan_out) for the kernel (what
    ResNet/VGG/MobileNet/EfficientNet set) and torch's U(+-1/sqrt(fan_in)) for a bias; a family
    passes its own initialisers where torchvision does.
    """
    kh, kw = _pair(kernel_size)
    if padding is None:
        padding = ((kh - 1) // 2 * dilation, (kw - 1) // 2 * dilation)
    pad_h, pad_w = _pair(padding)
    fan_in = in_features // groups * kh * kw
    return nnx.Conv(
        in_features,
        out_features,
        kernel_size=(kh, kw),
        strides=(stride, stride),
        padding=((pad_h, pad_h), (pad_w, pad_w)),
        kernel_dilation=(dilation, dilation),
        feature_group_count=groups,
        use_bias=use_bias,
        conv_general_dilated=conv_general_dilated,  # GEMM form for small maps on CPU
        kernel_init=kernel_init or conv_kernel_init,
        bias_init=bias_init or torch_bias_init(fan_in),
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class BatchNorm(nnx.BatchNorm):
    """torch.nn.BatchNorm2d over the last (channel) axis, as an nnx.BatchNorm.

    Same variables (scale, bias, mean, var), same train()/eval() switch, and torch's defaults:
    epsilon 1e-5, momentum 0.1 in torch's convention (= 0.9 in Flax's). Two differences from
    nnx.BatchNorm, both to match torch:
    - the running variance is updated with the *unbiased* batch variance (x n/(n-1), n values
      per channel), while the batch is normalised with the biased one, as torch does;
    - statistics and normalisation are computed in float32 whatever the compute dtype, and only
      the result is cast to `dtype`, so bf16 training keeps fp32 statistics.
    """

    def __init__(self, num_features: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        super().__init__(
            num_features,
            momentum=0.9,
            epsilon=1e-5,
            dtype=dtype,
            param_dtype=param_dtype,
            use_fast_variance=False,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        use_running_average = (
            self.use_running_average if use_running_average is None else use_running_average
        )
        if use_running_average is None:
            raise ValueError("BatchNorm: call model.train() or model.eval() first")
        out_dtype = x.dtype if self.dtype is None else self.dtype
        xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        axes = tuple(range(x.ndim - 1))  # every axis but channels (NHWC)
        if use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            # One pass over x (E[x^2] - E[x]^2, in fp32): ~25% faster steps for narrow nets on
            # CPU than two passes, and within 1e-4 of torch in the tests; clipped at 0 (rounding).
            mean = jnp.mean(xf, axis=axes)
            mean_sq = jnp.mean(jnp.square(xf), axis=axes)
            var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)  # biased: used to normalise
            n = math.prod(x.shape[a] for a in axes)  # values per channel
            unbiased = var * (n / max(n - 1, 1))
            m = self.momentum
            self.mean[...] = jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * mean)
            self.var[...] = jax.lax.stop_gradient(m * self.var[...] + (1 - m) * unbiased)
        mul = jax.lax.rsqrt(var + self.epsilon)
        if self.scale is not None:
            mul = mul * self.scale[...].astype(mul.dtype)
        y = (xf - mean) * mul
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        return y.astype(out_dtype)
