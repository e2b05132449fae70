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
from imagenot_jax.models.registry import ModelOutput, register_model
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

    Input: float NHWC batch (>= 63 px); output: a ModelOutput, logits (batch, num_classes) in
    `dtype` and the features (the second hidden layer's activations) that `classifier.6` reads.
    Dropout is active after model.train() and off after model.eval(). `width_mult` (conv
    channels) and `hidden_features` (classifier width) are ours, for small nets; their defaults
    give torchvision's AlexNet.
    """

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        dropout: float = 0.5,
        width_mult: float = 1.0,
        hidden_features: int = 4096,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        c1, c2, c3, c4 = (max(1, round(c * width_mult)) for c in (64, 192, 384, 256))
        self.features = Sequential(
            [
                _conv(3, c1, 11, stride=4, padding=2, **kw),  # 0
                ReLU(),
                MaxPool2d(3, 2),
                _conv(c1, c2, 5, padding=2, **kw),  # 3
                ReLU(),
                MaxPool2d(3, 2),
                _conv(c2, c3, 3, padding=1, **kw),  # 6
                ReLU(),
                _conv(c3, c4, 3, padding=1, **kw),  # 8
                ReLU(),
                _conv(c4, c4, 3, padding=1, **kw),  # 10
                ReLU(),
                MaxPool2d(3, 2),
            ]
        )
        self.avgpool = AdaptiveAvgPool2d((6, 6))
        self.classifier = Sequential(
            [
                nnx.Dropout(dropout, deterministic=None, rngs=rngs),
                torch_linear(c4 * 6 * 6, hidden_features, **kw),  # 1
                ReLU(),
                nnx.Dropout(dropout, deterministic=None, rngs=rngs),
                torch_linear(hidden_features, hidden_features, **kw),  # 4
                ReLU(),
                torch_linear(hidden_features, num_classes, **kw),  # 6
            ]
        )

    def __call__(self, x: jax.Array) -> ModelOutput:
        x = self.features(jnp.asarray(x, self.dtype))
        features = self.classifier.run(flatten_nchw(self.avgpool(x)), stop=6)
        return ModelOutput(logits=self.classifier.run(features, start=6), features=features)


# torchvision's min_size; total stride 32 (stride-4 stem conv, three 3x3/2 max-pools, floored).
@register_model(head=("classifier.6",), min_input_size=63, reduction=32)
def alexnet(**kwargs: Any) -> AlexNet:
    """AlexNet (torchvision: 61,100,840 parameters at 1000 classes)."""
    return AlexNet(**kwargs)
