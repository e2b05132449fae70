"""VGG family in Flax NNX, following torchvision/models/vgg.py exactly (NHWC layout).

Same configurations (A/B/D/E = VGG-11/13/16/19, with or without BatchNorm), layers, pools,
dropout and initialisation as torchvision's `VGG`; `features` and `classifier` are Sequentials
indexed like torch's nn.Sequential (ReLU/MaxPool/Dropout positions included), so torchvision's
state_dict keys (`features.0.weight`, `features.1.running_mean`, `classifier.0.weight`, ...)
load one to one with `torch_weights.load_torchvision`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from imagenot_jax.models.layers import BatchNorm, torch_conv
from imagenot_jax.models.registry import ModelOutput, register_model
from imagenot_jax.models.torch_nn import (
    AdaptiveAvgPool2d,
    MaxPool2d,
    ReLU,
    Sequential,
    flatten_nchw,
)

# torchvision's cfgs: output channels of each 3x3 conv, "M" = 2x2/2 max pool.
CFGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [
        *(64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"),
        *(512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
    ],
}

# VGG's own init (torchvision VGG(init_weights=True)): convs kaiming_normal(fan_out) + zero bias,
# Linear N(0, 0.01) + zero bias, BN weight 1 / bias 0 (nnx.BatchNorm's default).
_zeros = nnx.initializers.zeros_init()
_linear_init = nnx.initializers.normal(0.01)


def make_layers(
    cfg: Sequence[int | str], batch_norm: bool, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs
) -> Sequential:
    """torchvision's make_layers: [conv, (BN,) ReLU] per channel entry, MaxPool2d(2, 2) per "M"."""
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    layers: list[nnx.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers.append(MaxPool2d(2, 2))
            continue
        conv = torch_conv(in_channels, int(v), 3, padding=1, use_bias=True, bias_init=_zeros, **kw)
        layers += [conv, BatchNorm(int(v), **kw), ReLU()] if batch_norm else [conv, ReLU()]
        in_channels = int(v)
    return Sequential(layers)


def _vgg_linear(
    in_features: int, out_features: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs
) -> nnx.Linear:
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=_linear_init,
        bias_init=_zeros,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class VGG(nnx.Module):
    """torchvision.models.VGG: `features` from a cfg, AdaptiveAvgPool2d((7, 7)), 3-layer MLP head.

    Input: float NHWC batch (>= 32 px); output: a ModelOutput, logits (batch, num_classes) in
    `dtype` and the features (the second hidden layer's activations, before the dropout of
    `classifier.6`).
    Dropout is active after model.train() and off after model.eval(). `width_mult` (conv
    channels) and `hidden_features` (classifier width) are ours, for smoke-sized nets; their
    defaults give torchvision's VGG.
    """

    def __init__(
        self,
        cfg: Sequence[int | str],
        *,
        batch_norm: bool = False,
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
        cfg = [v if v == "M" else max(1, round(int(v) * width_mult)) for v in cfg]
        self.features = make_layers(cfg, batch_norm, **kw)
        self.avgpool = AdaptiveAvgPool2d((7, 7))
        channels, hidden = int([v for v in cfg if v != "M"][-1]), hidden_features
        self.classifier = Sequential(
            [
                _vgg_linear(channels * 7 * 7, hidden, **kw),  # 0
                ReLU(),
                nnx.Dropout(dropout, deterministic=None, rngs=rngs),
                _vgg_linear(hidden, hidden, **kw),  # 3
                ReLU(),
                nnx.Dropout(dropout, deterministic=None, rngs=rngs),
                _vgg_linear(hidden, num_classes, **kw),  # 6
            ]
        )

    def __call__(self, x: jax.Array) -> ModelOutput:
        x = self.features(jnp.asarray(x, self.dtype))
        features = self.classifier.run(flatten_nchw(self.avgpool(x)), stop=5)
        return ModelOutput(logits=self.classifier.run(features, start=5), features=features)


# --- registered variants (torchvision's names and definitions) ----------------------------

# torchvision's min_size: five 2x2/2 max-pools need 32 px.
_INFO = dict(head=("classifier.6",), min_input_size=32, reduction=32)


@register_model(**_INFO)
def vgg11(**kwargs: Any) -> VGG:
    """VGG-11, config A (torchvision: 132,863,336 parameters at 1000 classes)."""
    return VGG(CFGS["A"], batch_norm=False, **kwargs)


@register_model(**_INFO)
def vgg11_bn(**kwargs: Any) -> VGG:
    """VGG-11 with BatchNorm (torchvision: 132,868,840 parameters at 1000 classes)."""
    return VGG(CFGS["A"], batch_norm=True, **kwargs)


@register_model(**_INFO)
def vgg13(**kwargs: Any) -> VGG:
    """VGG-13, config B (torchvision: 133,047,848 parameters at 1000 classes)."""
    return VGG(CFGS["B"], batch_norm=False, **kwargs)


@register_model(**_INFO)
def vgg13_bn(**kwargs: Any) -> VGG:
    """VGG-13 with BatchNorm (torchvision: 133,053,736 parameters at 1000 classes)."""
    return VGG(CFGS["B"], batch_norm=True, **kwargs)


@register_model(**_INFO)
def vgg16(**kwargs: Any) -> VGG:
    """VGG-16, config D (torchvision: 138,357,544 parameters at 1000 classes)."""
    return VGG(CFGS["D"], batch_norm=False, **kwargs)


@register_model(**_INFO)
def vgg16_bn(**kwargs: Any) -> VGG:
    """VGG-16 with BatchNorm (torchvision: 138,365,992 parameters at 1000 classes)."""
    return VGG(CFGS["D"], batch_norm=True, **kwargs)


@register_model(**_INFO)
def vgg19(**kwargs: Any) -> VGG:
    """VGG-19, config E (torchvision: 143,667,240 parameters at 1000 classes)."""
    return VGG(CFGS["E"], batch_norm=False, **kwargs)


@register_model(**_INFO)
def vgg19_bn(**kwargs: Any) -> VGG:
    """VGG-19 with BatchNorm (torchvision: 143,678,248 parameters at 1000 classes)."""
    return VGG(CFGS["E"], batch_norm=True, **kwargs)
