"""AlexNet in Flax NNX, following torchvision/models/alexnet.py exactly (NHWC layout).

Same layers, paddings, pools, dropout and default PyTorch initialisation as torchvision's
`AlexNet`; `features` and `classifier` are nnx.Lists indexed like torch's nn.Sequential, the
parameter-free positions (ReLU, MaxPool, Dropout) included, so torchvision's state_dict keys
(`features.0.weight`, `classifier.1.bias`, ...) load one to one with
`torch_weights.load_torch_state_dict`.

Also home of the small torch-style pieces the plain CNN families share (VGG imports them):
parameter-free ReLU/MaxPool2d modules, torch's AdaptiveAvgPool2d for any input size, a biased
conv, and the NCHW flatten that keeps the first Linear's rows in torch's order.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from imagenot_jax.models.layers import torch_linear
from imagenot_jax.models.registry import register_model

# torch.nn.Conv2d's default weight init, kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in)) with
# fan_in = in_channels * kh * kw; jax derives the same fan from an HWIO kernel.
torch_default_conv_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class ReLU(nnx.Module):
    """nn.ReLU as a module, so it can hold its index in an nnx.List like in nn.Sequential."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(x)


class MaxPool2d(nnx.Module):
    """nn.MaxPool2d(kernel_size, stride) with torch's defaults: no padding, ceil_mode=False."""

    def __init__(self, kernel_size: int, stride: int):
        self.kernel_size = kernel_size
        self.stride = stride

    def __call__(self, x: jax.Array) -> jax.Array:
        k, s = self.kernel_size, self.stride
        return nnx.max_pool(x, (k, k), strides=(s, s), padding="VALID")  # floor, as ceil_mode=False


def _adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) averaging matrix of torch's adaptive pooling along one axis.

    Output i averages inputs [floor(i * in / out), ceil((i + 1) * in / out)); the windows may
    overlap or (for in < out) repeat inputs, exactly as torch's AdaptiveAvgPool2d.
    """
    matrix = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)  # ceil division
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class AdaptiveAvgPool2d(nnx.Module):
    """nn.AdaptiveAvgPool2d(output_size) on NHWC input of any spatial size.

    Separable: torch's window is a product of a row window and a column window, so the average is
    two small matrix products (one per axis); an identity when the size already matches.
    """

    def __init__(self, output_size: tuple[int, int]):
        self.output_size = tuple(output_size)

    def __call__(self, x: jax.Array) -> jax.Array:
        (out_h, out_w), (in_h, in_w) = self.output_size, x.shape[1:3]
        if (in_h, in_w) == (out_h, out_w):
            return x
        rows = jnp.asarray(_adaptive_pool_matrix(in_h, out_h), x.dtype)
        cols = jnp.asarray(_adaptive_pool_matrix(in_w, out_w), x.dtype)
        return jnp.einsum("oh,nhwc,pw->nopc", rows, x, cols)


def flatten_nchw(x: jax.Array) -> jax.Array:
    """torch.flatten(x, 1) of the NCHW tensor: features in (C, H, W) order, as torchvision's
    first classifier Linear expects, so its weight loads with a plain transpose (no permutation
    of its rows)."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


def torch_conv_bias(
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int = 0,
    kernel_init: Any = torch_default_conv_init,
    bias_init: Any = None,
    dtype: Any,
    param_dtype: Any,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """nn.Conv2d(..., bias=True) with symmetric explicit padding.

    Default init is PyTorch's own (weight and bias U(+-1/sqrt(fan_in))); VGG passes its own.
    """
    if bias_init is None:
        bound = 1.0 / math.sqrt(in_features * kernel_size * kernel_size)

        def bias_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32):
            return jax.random.uniform(key, shape, dtype, -bound, bound)

    return nnx.Conv(
        in_features,
        out_features,
        kernel_size=(kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        use_bias=True,
        kernel_init=kernel_init,
        bias_init=bias_init,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def apply_sequential(layers: nnx.List, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Runs an nn.Sequential-like list; `rngs` (optional) overrides the Dropouts' own stream."""
    for layer in layers:
        x = layer(x, rngs=rngs) if isinstance(layer, nnx.Dropout) else layer(x)
    return x


class AlexNet(nnx.Module):
    """torchvision.models.AlexNet (the one-GPU variant of "One weird trick", 61.1M params).

    Input: float NHWC batch (>= 63 px); output: logits (batch, num_classes) in `dtype`.
    Dropout is active after model.train() and off after model.eval().
    """

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        dropout: float = 0.5,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        self.features = nnx.List(
            [
                torch_conv_bias(3, 64, 11, stride=4, padding=2, **kw),  # 0
                ReLU(),
                MaxPool2d(3, 2),
                torch_conv_bias(64, 192, 5, padding=2, **kw),  # 3
                ReLU(),
                MaxPool2d(3, 2),
                torch_conv_bias(192, 384, 3, padding=1, **kw),  # 6
                ReLU(),
                torch_conv_bias(384, 256, 3, padding=1, **kw),  # 8
                ReLU(),
                torch_conv_bias(256, 256, 3, padding=1, **kw),  # 10
                ReLU(),
                MaxPool2d(3, 2),
            ]
        )
        self.avgpool = AdaptiveAvgPool2d((6, 6))
        self.classifier = nnx.List(
            [
                nnx.Dropout(dropout, rngs=rngs),
                torch_linear(256 * 6 * 6, 4096, **kw),  # 1
                ReLU(),
                nnx.Dropout(dropout, rngs=rngs),
                torch_linear(4096, 4096, **kw),  # 4
                ReLU(),
                torch_linear(4096, num_classes, **kw),  # 6
            ]
        )

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = jnp.asarray(x, self.dtype)
        x = apply_sequential(self.features, x)
        x = flatten_nchw(self.avgpool(x))
        return apply_sequential(self.classifier, x, rngs)


@register_model
def alexnet(**kwargs: Any) -> AlexNet:
    """AlexNet (torchvision: 61,100,840 parameters at 1000 classes)."""
    return AlexNet(**kwargs)
