"""EfficientNetV2 (S, M, L) in Flax NNX, following torchvision/models/efficientnet.py (NHWC).

Same config tables, modules, attribute names, parameter shapes, initialisation and eval-mode
function as torchvision's, so its state_dicts load by name with `torch_weights.load_torchvision`:
`features.2.0.block.0.0.weight` is `model.features[2][0].block[0][0].kernel`, and the
parameter-free layers (activations, pooling, stochastic depth, dropout) keep their places.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from imagenot_jax.errors import UserError
from imagenot_jax.models.layers import BatchNorm, make_divisible, torch_conv
from imagenot_jax.models.registry import ModelOutput, register_model
from imagenot_jax.models.torch_nn import (
    Activation,
    AdaptiveAvgPool2d,
    Sequential,
    StochasticDepth,
    remat_block,
)


@dataclass(frozen=True)
class MBConvConfig:
    """One stage of Table 4 of the EfficientNetV2 paper (torchvision's (Fused)MBConvConfig).

    `fused` selects FusedMBConv (a full kxk conv expands) over MBConv (1x1 expand, depthwise kxk,
    squeeze-excitation). Channels here are final (width_mult already applied).
    """

    fused: bool
    expand_ratio: float
    kernel: int
    stride: int
    input_channels: int
    out_channels: int
    num_layers: int

    def expanded_channels(self) -> int:
        return make_divisible(self.input_channels * self.expand_ratio, 8)


# torchvision's `_efficientnet_conf` for the V2 archs: stage table (fused?, expand_ratio, kernel,
# stride, input_channels, out_channels, num_layers), default dropout. Every V2 variant ends with
# last_channel = 1280 and uses BatchNorm2d(eps=1e-3).
_F, _M = True, False  # FusedMBConv, MBConv
_conf = MBConvConfig
_V2_CONFS: dict[str, tuple[list[MBConvConfig], float]] = {
    "efficientnet_v2_s": (
        [
            _conf(_F, 1, 3, 1, 24, 24, 2),
            _conf(_F, 4, 3, 2, 24, 48, 4),
            _conf(_F, 4, 3, 2, 48, 64, 4),
            _conf(_M, 4, 3, 2, 64, 128, 6),
            _conf(_M, 6, 3, 1, 128, 160, 9),
            _conf(_M, 6, 3, 2, 160, 256, 15),
        ],
        0.2,
    ),
    "efficientnet_v2_m": (
        [
            _conf(_F, 1, 3, 1, 24, 24, 3),
            _conf(_F, 4, 3, 2, 24, 48, 5),
            _conf(_F, 4, 3, 2, 48, 80, 5),
            _conf(_M, 4, 3, 2, 80, 160, 7),
            _conf(_M, 6, 3, 1, 160, 176, 14),
            _conf(_M, 6, 3, 2, 176, 304, 18),
            _conf(_M, 6, 3, 1, 304, 512, 5),
        ],
        0.3,
    ),
    "efficientnet_v2_l": (
        [
            _conf(_F, 1, 3, 1, 32, 32, 4),
            _conf(_F, 4, 3, 2, 32, 64, 7),
            _conf(_F, 4, 3, 2, 64, 96, 7),
            _conf(_M, 4, 3, 2, 96, 192, 10),
            _conf(_M, 6, 3, 1, 192, 224, 19),
            _conf(_M, 6, 3, 2, 224, 384, 25),
            _conf(_M, 6, 3, 1, 384, 640, 7),
        ],
        0.4,
    ),
}
_V2_LAST_CHANNEL = 1280


class BatchNormV2(BatchNorm):
    """EfficientNetV2's norm layer: BatchNorm2d(eps=1e-3), torch's default momentum 0.1."""

    def __init__(self, num_features: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        super().__init__(num_features, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.epsilon = 1e-3


def conv_norm_activation(
    in_ch: int,
    out_ch: int,
    kernel: int,
    activation: str | None,
    *,
    stride: int = 1,
    groups: int = 1,
    **kw: Any,
) -> Sequential:
    """torchvision.ops.Conv2dNormActivation: Sequential(conv (no bias, padding (k-1)//2), BN,
    activation?), the conv initialised kaiming_normal(fan_out) as EfficientNet does."""
    layers: list[nnx.Module] = [
        torch_conv(in_ch, out_ch, kernel, stride=stride, padding=None, groups=groups, **kw),
        BatchNormV2(out_ch, **kw),
    ]
    if activation is not None:
        layers.append(Activation(activation))
    return Sequential(layers)


class SqueezeExcitation(nnx.Module):
    """torchvision.ops.SqueezeExcitation(activation=SiLU, scale_activation=Sigmoid): 1x1 convs
    fc1, fc2 with bias (EfficientNet zero-initialises conv biases)."""

    def __init__(self, input_channels: int, squeeze_channels: int, **kw: Any):
        bias = dict(use_bias=True, bias_init=nnx.initializers.zeros)
        self.avgpool = AdaptiveAvgPool2d((1, 1))
        self.fc1 = torch_conv(input_channels, squeeze_channels, 1, **bias, **kw)
        self.fc2 = torch_conv(squeeze_channels, input_channels, 1, **bias, **kw)
        self.activation = Activation("silu")
        self.scale_activation = Activation("sigmoid")

    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.scale_activation(scale) * x


class _ResidualBlock(nnx.Module):
    """Shared forward of MBConv/FusedMBConv: block(x), + stochastic-depth skip when shapes agree.

    torchvision builds `stochastic_depth` in every block, also where there is no skip (unused).
    """

    block: Sequential
    use_res_connect: bool
    stochastic_depth: StochasticDepth

    @remat_block
    def __call__(self, x: jax.Array) -> jax.Array:
        result = self.block(x)
        if self.use_res_connect:
            result = self.stochastic_depth(result) + x
        return result


class MBConv(_ResidualBlock):
    """1x1 expand (if widened) -> depthwise kxk (stride) -> SE -> 1x1 project, SiLU throughout."""

    def __init__(self, cnf: MBConvConfig, stochastic_depth_prob: float, **kw: Any):
        if not 1 <= cnf.stride <= 2:
            raise UserError(f"MBConv: illegal stride {cnf.stride}, expected 1 or 2")
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        expanded = cnf.expanded_channels()
        layers: list[nnx.Module] = []
        if expanded != cnf.input_channels:
            layers.append(conv_norm_activation(cnf.input_channels, expanded, 1, "silu", **kw))
        layers.append(
            conv_norm_activation(
                expanded, expanded, cnf.kernel, "silu", stride=cnf.stride, groups=expanded, **kw
            )
        )
        # torchvision squeezes to a quarter of the block's *input* channels, not the expanded.
        layers.append(SqueezeExcitation(expanded, max(1, cnf.input_channels // 4), **kw))
        layers.append(conv_norm_activation(expanded, cnf.out_channels, 1, None, **kw))
        self.block = Sequential(layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, rngs=kw["rngs"])
        self.out_channels = cnf.out_channels


class FusedMBConv(_ResidualBlock):
    """kxk expand (stride) -> 1x1 project; a single kxk conv when the ratio is 1."""

    def __init__(self, cnf: MBConvConfig, stochastic_depth_prob: float, **kw: Any):
        if not 1 <= cnf.stride <= 2:
            raise UserError(f"FusedMBConv: illegal stride {cnf.stride}, expected 1 or 2")
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        c_in, c_out, expanded = cnf.input_channels, cnf.out_channels, cnf.expanded_channels()
        k, s = cnf.kernel, cnf.stride
        if expanded != c_in:  # fused expand, then project
            layers = [
                conv_norm_activation(c_in, expanded, k, "silu", stride=s, **kw),
                conv_norm_activation(expanded, c_out, 1, None, **kw),
            ]
        else:
            layers = [conv_norm_activation(c_in, c_out, k, "silu", stride=s, **kw)]
        self.block = Sequential(layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, rngs=kw["rngs"])
        self.out_channels = cnf.out_channels


# torchvision's Linear init for EfficientNet: U(+-1/sqrt(out_features)); on an (in, out) kernel
# variance_scaling's uniform limit sqrt(3 * scale / fan_out) gives that with scale = 1/3.
linear_kernel_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")


def classifier(in_features: int, num_classes: int, dropout: float, **kw: Any) -> Sequential:
    """Sequential(Dropout, Linear) with EfficientNet's Linear init (U(+-1/sqrt(out)), bias 0)."""
    return Sequential(
        [
            # deterministic=None: like BN, the mode must be set by model.train()/eval().
            nnx.Dropout(dropout, deterministic=None, rngs=kw["rngs"]),
            nnx.Linear(
                in_features,
                num_classes,
                kernel_init=linear_kernel_init,
                bias_init=nnx.initializers.zeros,
                **kw,
            ),
        ]
    )


class EfficientNet(nnx.Module):
    """torchvision.models.EfficientNet: `features`, `avgpool`, `classifier` as torchvision's.

    Input: float NHWC batch; output: a ModelOutput, logits (batch, num_classes) in `dtype` and
    the pooled features that `classifier.1` reads after its dropout. Train/eval (BN statistics,
    stochastic depth, dropout) via model.train()/model.eval().
    """

    def __init__(
        self,
        inverted_residual_setting: list[MBConvConfig],
        dropout: float,
        stochastic_depth_prob: float = 0.2,
        num_classes: int = 1000,
        last_channel: int | None = None,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if not inverted_residual_setting:
            raise ValueError("EfficientNet: inverted_residual_setting should not be empty")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        first = inverted_residual_setting[0].input_channels
        layers: list[nnx.Module] = [conv_norm_activation(3, first, 3, "silu", stride=2, **kw)]
        total_stage_blocks = sum(cnf.num_layers for cnf in inverted_residual_setting)
        stage_block_id = 0
        for cnf in inverted_residual_setting:
            stage: list[nnx.Module] = []
            for i in range(cnf.num_layers):
                # Later blocks of a stage take the stage's output width at stride 1.
                block_cnf = (
                    cnf
                    if i == 0
                    else dataclasses.replace(cnf, input_channels=cnf.out_channels, stride=1)
                )
                # Linearly increasing drop probability with depth, exactly torchvision's formula.
                sd_prob = stochastic_depth_prob * float(stage_block_id) / total_stage_blocks
                block_cls = FusedMBConv if cnf.fused else MBConv
                stage.append(block_cls(block_cnf, sd_prob, **kw))
                stage_block_id += 1
            layers.append(Sequential(stage))
        last_in = inverted_residual_setting[-1].out_channels
        last_out = last_channel if last_channel is not None else 4 * last_in
        layers.append(conv_norm_activation(last_in, last_out, 1, "silu", **kw))
        self.features = Sequential(layers)
        self.avgpool = AdaptiveAvgPool2d((1, 1))
        self.classifier = classifier(last_out, num_classes, dropout, **kw)

    def __call__(self, x: jax.Array) -> ModelOutput:
        x = self.features(jnp.asarray(x, self.dtype))
        features = self.avgpool(x).reshape(x.shape[0], -1)  # 1x1 spatial: torch's flatten
        return ModelOutput(logits=self.classifier(features), features=features)


def _efficientnet_conf(
    arch: str, width_mult: float = 1.0, depth_mult: float = 1.0
) -> tuple[list[MBConvConfig], float, int]:
    """torchvision's V2 stage table, default dropout and last_channel for `arch`.

    width_mult/depth_mult (our addition, 1.0 = torchvision's net) shrink the net for smoke runs
    the way torchvision scales V1: channels rounded by `make_divisible(c * width_mult, 8)`,
    layers `ceil(n * depth_mult)`; last_channel is scaled like the channels.
    """
    setting, dropout = _V2_CONFS[arch]
    if width_mult != 1.0 or depth_mult != 1.0:
        setting = [
            dataclasses.replace(
                cnf,
                input_channels=make_divisible(cnf.input_channels * width_mult, 8),
                out_channels=make_divisible(cnf.out_channels * width_mult, 8),
                num_layers=math.ceil(cnf.num_layers * depth_mult),
            )
            for cnf in setting
        ]
    return setting, dropout, make_divisible(_V2_LAST_CHANNEL * width_mult, 8)


def _build(arch: str, kwargs: dict[str, Any]) -> EfficientNet:
    conf_kw = {k: kwargs.pop(k) for k in ("width_mult", "depth_mult") if k in kwargs}
    setting, dropout, last_channel = _efficientnet_conf(arch, **conf_kw)
    kwargs.setdefault("dropout", dropout)
    return EfficientNet(setting, last_channel=last_channel, **kwargs)


# --- registered variants (torchvision's names and definitions) ----------------------------

# Every conv pads, so the forward takes any size (as MobileNetV3's); torchvision lists min_size
# 33 px for its V2 weights, which validation would hold against the smoke runs' 32 px. Five
# stride-2 stages.
_INFO = dict(head=("classifier.1",), min_input_size=1, reduction=32)


@register_model(**_INFO)
def efficientnet_v2_s(**kwargs: Any) -> EfficientNet:
    """EfficientNetV2-S (torchvision: 21,458,488 parameters at 1000 classes; dropout 0.2)."""
    return _build("efficientnet_v2_s", kwargs)


@register_model(**_INFO)
def efficientnet_v2_m(**kwargs: Any) -> EfficientNet:
    """EfficientNetV2-M (torchvision: 54,139,356 parameters at 1000 classes; dropout 0.3)."""
    return _build("efficientnet_v2_m", kwargs)


@register_model(**_INFO)
def efficientnet_v2_l(**kwargs: Any) -> EfficientNet:
    """EfficientNetV2-L (torchvision: 118,515,272 parameters at 1000 classes; dropout 0.4)."""
    return _build("efficientnet_v2_l", kwargs)
