"""MobileNetV3 (large, small) in Flax NNX, following torchvision/models/mobilenetv3.py (NHWC).

Same config tables, channel rounding (`make_divisible`), modules, parameter shapes,
initialisation and eval-mode function as torchvision's, so its state_dicts load one-to-one with
`torch_weights.load_torchvision`: torch's nn.Sequential containers are nnx.Lists indexed the
same way (`features.1.block.0.0.weight` is `model.features[1].block[0][0].kernel`), and the
parameter-free layers (activations, dropout) keep their places in those lists.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from imagenot_jax.errors import UserError
from imagenot_jax.models.layers import BatchNorm, make_divisible, torch_conv
from imagenot_jax.models.registry import ModelOutput, register_model
from imagenot_jax.models.torch_nn import Activation, Sequential, remat_block


@dataclass(frozen=True)
class InvertedResidualConfig:
    """One row of Tables 1-2 of the MobileNetV3 paper, channels already scaled by width_mult."""

    input_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    use_hs: bool  # Hardswish, else ReLU
    stride: int
    dilation: int

    @classmethod
    def make(
        cls,
        input_channels: int,
        kernel: int,
        expanded_channels: int,
        out_channels: int,
        use_se: bool,
        activation: str,
        stride: int,
        dilation: int,
        width_mult: float,
    ) -> InvertedResidualConfig:
        def adjust(channels: int) -> int:
            return make_divisible(channels * width_mult, 8)

        return cls(
            adjust(input_channels),
            kernel,
            adjust(expanded_channels),
            adjust(out_channels),
            use_se,
            activation == "HS",
            stride,
            dilation,
        )


class BatchNorm3(BatchNorm):
    """MobileNetV3's norm layer: BatchNorm2d(eps=0.001, momentum=0.01) in torch's convention."""

    def __init__(self, num_features: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        super().__init__(num_features, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.momentum = 0.99  # Flax convention: 1 - torch's momentum
        self.epsilon = 1e-3


# torchvision's Conv2dNormActivation padding, (k - 1) // 2 * dilation, and MobileNetV3's init
# (kaiming_normal fan_out kernels, zero biases).
_conv = functools.partial(torch_conv, padding=None, bias_init=nnx.initializers.zeros)


def conv_norm_activation(
    in_ch: int, out_ch: int, kernel: int, activation: str | None, **kw: Any
) -> Sequential:
    """torchvision.ops.Conv2dNormActivation: Sequential(conv (no bias), BN, activation?)."""
    layer_kw = {k: kw[k] for k in ("dtype", "param_dtype", "rngs")}
    layers: list[nnx.Module] = [_conv(in_ch, out_ch, kernel, **kw), BatchNorm3(out_ch, **layer_kw)]
    if activation is not None:
        layers.append(Activation(activation))
    return Sequential(layers)


class SqueezeExcitation(nnx.Module):
    """torchvision.ops.SqueezeExcitation(scale_activation=Hardsigmoid): 1x1 convs fc1, fc2."""

    def __init__(self, input_channels: int, squeeze_channels: int, **kw: Any):
        self.fc1 = _conv(input_channels, squeeze_channels, 1, use_bias=True, **kw)
        self.fc2 = _conv(squeeze_channels, input_channels, 1, use_bias=True, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        scale = jnp.mean(x, axis=(1, 2), keepdims=True)  # AdaptiveAvgPool2d(1)
        scale = self.fc2(nnx.relu(self.fc1(scale)))
        return jax.nn.hard_sigmoid(scale) * x


class InvertedResidual(nnx.Module):
    """expand 1x1 (if widened) -> depthwise kxk (stride) -> SE? -> project 1x1, + skip."""

    def __init__(self, cnf: InvertedResidualConfig, **kw: Any):
        if not 1 <= cnf.stride <= 2:
            raise UserError(f"InvertedResidual: illegal stride {cnf.stride}, expected 1 or 2")
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        act = "hardswish" if cnf.use_hs else "relu"
        layers: list[nnx.Module] = []
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(
                conv_norm_activation(cnf.input_channels, cnf.expanded_channels, 1, act, **kw)
            )
        stride = 1 if cnf.dilation > 1 else cnf.stride
        layers.append(
            conv_norm_activation(
                cnf.expanded_channels,
                cnf.expanded_channels,
                cnf.kernel,
                act,
                stride=stride,
                dilation=cnf.dilation,
                groups=cnf.expanded_channels,
                **kw,
            )
        )
        if cnf.use_se:
            squeeze_channels = make_divisible(cnf.expanded_channels // 4, 8)
            layers.append(SqueezeExcitation(cnf.expanded_channels, squeeze_channels, **kw))
        layers.append(conv_norm_activation(cnf.expanded_channels, cnf.out_channels, 1, None, **kw))
        self.block = Sequential(layers)

    @remat_block
    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.block(x)
        return out + x if self.use_res_connect else out


def _linear(in_features: int, out_features: int, **kw: Any) -> nnx.Linear:
    """nn.Linear with MobileNetV3's init: weight N(0, 0.01), bias 0."""
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=nnx.initializers.normal(0.01),
        bias_init=nnx.initializers.zeros,
        **kw,
    )


class MobileNetV3(nnx.Module):
    """torchvision.models.MobileNetV3: attributes `features` and `classifier` as torchvision's.

    Input: float NHWC batch; output: a ModelOutput, logits (batch, num_classes) in `dtype` and
    the features (`classifier.1`'s hardswish activations) that `classifier.3` reads after its
    dropout. Train/eval (BN statistics, dropout) via model.train()/model.eval().
    """

    def __init__(
        self,
        inverted_residual_setting: list[InvertedResidualConfig],
        last_channel: int,
        *,
        num_classes: int = 1000,
        dropout: float = 0.2,
        norm_momentum: float = 0.01,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        """`norm_momentum` is torch's BN momentum (torchvision's 0.01 by default); short runs
        need more, or the running statistics stay near their initial values."""
        if not inverted_residual_setting:
            raise ValueError("MobileNetV3: inverted_residual_setting should not be empty")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        first = inverted_residual_setting[0].input_channels
        layers: list[nnx.Module] = [conv_norm_activation(3, first, 3, "hardswish", stride=2, **kw)]
        layers += [InvertedResidual(cnf, **kw) for cnf in inverted_residual_setting]
        last_in = inverted_residual_setting[-1].out_channels
        last_out = 6 * last_in
        layers.append(conv_norm_activation(last_in, last_out, 1, "hardswish", **kw))
        self.features = Sequential(layers)
        self.classifier = Sequential(
            [
                _linear(last_out, last_channel, **kw),
                Activation("hardswish"),
                # deterministic=None: like BN, the mode must be set by model.train()/eval().
                nnx.Dropout(dropout, deterministic=None, rngs=rngs),
                _linear(last_channel, num_classes, **kw),
            ]
        )
        for _, module in nnx.iter_graph(self):
            if isinstance(module, BatchNorm3):
                module.momentum = 1.0 - norm_momentum  # Flax's convention

    def __call__(self, x: jax.Array) -> ModelOutput:
        x = self.features(jnp.asarray(x, self.dtype))
        x = jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d(1) + flatten
        features = self.classifier.run(x, stop=2)
        return ModelOutput(logits=self.classifier.run(features, start=2), features=features)


def _mobilenet_v3_conf(
    arch: str, width_mult: float = 1.0, reduced_tail: bool = False, dilated: bool = False
) -> tuple[list[InvertedResidualConfig], int]:
    """torchvision's config tables (same arguments)."""
    rd = 2 if reduced_tail else 1
    d = 2 if dilated else 1

    def b(*args: Any) -> InvertedResidualConfig:
        return InvertedResidualConfig.make(*args, width_mult=width_mult)

    if arch == "mobilenet_v3_large":
        setting = [
            b(16, 3, 16, 16, False, "RE", 1, 1),
            b(16, 3, 64, 24, False, "RE", 2, 1),  # C1
            b(24, 3, 72, 24, False, "RE", 1, 1),
            b(24, 5, 72, 40, True, "RE", 2, 1),  # C2
            b(40, 5, 120, 40, True, "RE", 1, 1),
            b(40, 5, 120, 40, True, "RE", 1, 1),
            b(40, 3, 240, 80, False, "HS", 2, 1),  # C3
            b(80, 3, 200, 80, False, "HS", 1, 1),
            b(80, 3, 184, 80, False, "HS", 1, 1),
            b(80, 3, 184, 80, False, "HS", 1, 1),
            b(80, 3, 480, 112, True, "HS", 1, 1),
            b(112, 3, 672, 112, True, "HS", 1, 1),
            b(112, 5, 672, 160 // rd, True, "HS", 2, d),  # C4
            b(160 // rd, 5, 960 // rd, 160 // rd, True, "HS", 1, d),
            b(160 // rd, 5, 960 // rd, 160 // rd, True, "HS", 1, d),
        ]
        last_channel = make_divisible(1280 // rd * width_mult, 8)  # C5
    elif arch == "mobilenet_v3_small":
        setting = [
            b(16, 3, 16, 16, True, "RE", 2, 1),  # C1
            b(16, 3, 72, 24, False, "RE", 2, 1),  # C2
            b(24, 3, 88, 24, False, "RE", 1, 1),
            b(24, 5, 96, 40, True, "HS", 2, 1),  # C3
            b(40, 5, 240, 40, True, "HS", 1, 1),
            b(40, 5, 240, 40, True, "HS", 1, 1),
            b(40, 5, 120, 48, True, "HS", 1, 1),
            b(48, 5, 144, 48, True, "HS", 1, 1),
            b(48, 5, 288, 96 // rd, True, "HS", 2, d),  # C4
            b(96 // rd, 5, 576 // rd, 96 // rd, True, "HS", 1, d),
            b(96 // rd, 5, 576 // rd, 96 // rd, True, "HS", 1, d),
        ]
        last_channel = make_divisible(1024 // rd * width_mult, 8)  # C5
    else:
        raise UserError(f"unsupported MobileNetV3 arch {arch!r}")
    return setting, last_channel


def _build(arch: str, kwargs: dict[str, Any]) -> MobileNetV3:
    conf_kw = {k: kwargs.pop(k) for k in ("width_mult", "reduced_tail", "dilated") if k in kwargs}
    setting, last_channel = _mobilenet_v3_conf(arch, **conf_kw)
    return MobileNetV3(setting, last_channel, **kwargs)


# --- registered variants (torchvision's names and definitions) ----------------------------

# torchvision's min_size is 1: every conv pads; five stride-2 stages.
_INFO = dict(head=("classifier.3",), min_input_size=1, reduction=32)


@register_model(**_INFO)
def mobilenet_v3_large(**kwargs: Any) -> MobileNetV3:
    """MobileNetV3-Large (torchvision: 5,483,032 parameters at 1000 classes)."""
    return _build("mobilenet_v3_large", kwargs)


@register_model(**_INFO)
def mobilenet_v3_small(**kwargs: Any) -> MobileNetV3:
    """MobileNetV3-Small (torchvision: 2,542,856 parameters at 1000 classes)."""
    return _build("mobilenet_v3_small", kwargs)
