"""AlexNet in Flax NNX, following torchvision/models/alexnet.py exactly (NHWC layout).

Same layers, paddings, pools, dropout and default PyTorch initialisation as torchvision's
`AlexNet`; `features` and `classifier` are Sequentials indexed like torch's nn.Sequential, the
parameter-free positions (ReLU, MaxPool, Dropout) included, so torchvision's state_dict keys
(`features.0.weight`, `classifier.1.bias`, ...) load one to one with
`torch_weights.load_torchvision`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from imagenot_jax.models.layers import torch_conv, torch_default_conv_init, torch_linear
from imagenot_jax.models.registry import register_model
from imagenot_jax.models.torch_nn import (
    AdaptiveAvgPool2d,
    MaxPool2d,
    ReLU,
    Sequential,
    flatten_nchw,
)

# AlexNet keeps torch.nn.Conv2d's own default init (torchvision sets none): weight and bias
# U(+-1/sqrt(fan_in)).
_conv = functools.partial(torch_conv, use_bias=True, kernel_init=torch_default_conv_init)


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
        self.features = Sequential(
            [
                _conv(3, 64, 11, stride=4, padding=2, **kw),  # 0
                ReLU(),
                MaxPool2d(3, 2),
                _conv(64, 192, 5, padding=2, **kw),  # 3
                ReLU(),
                MaxPool2d(3, 2),
                _conv(192, 384, 3, padding=1, **kw),  # 6
                ReLU(),
                _conv(384, 256, 3, padding=1, **kw),  # 8
                ReLU(),
                _conv(256, 256, 3, padding=1, **kw),  # 10
                ReLU(),
                MaxPool2d(3, 2),
            ]
        )
        self.avgpool = AdaptiveAvgPool2d((6, 6))
        self.classifier = Sequential(
            [
                nnx.Dropout(dropout, deterministic=None, rngs=rngs),
                torch_linear(256 * 6 * 6, 4096, **kw),  # 1
                ReLU(),
                nnx.Dropout(dropout, deterministic=None, rngs=rngs),
                torch_linear(4096, 4096, **kw),  # 4
                ReLU(),
                torch_linear(4096, num_classes, **kw),  # 6
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.features(jnp.asarray(x, self.dtype))
        return self.classifier(flatten_nchw(self.avgpool(x)))


@register_model
def alexnet(**kwargs: Any) -> AlexNet:
    """AlexNet (torchvision: 61,100,840 parameters at 1000 classes)."""
    return AlexNet(**kwargs)
