"""ResNet family in Flax NNX, following torchvision/models/resnet.py exactly (NHWC layout).

Same modules, names, parameter shapes, initialisation and eval-mode function as torchvision's
ResNet (v1.5: the stride of a Bottleneck sits on its 3x3 conv), so torchvision state_dicts load
one-to-one (`torch_weights.load_torchvision`). Two generalisations that torchvision
hard-codes, needed for small inputs: stage widths/depths are arguments, and `small_input=True`
swaps the ImageNet stem (7x7/2 conv + 3x3/2 max pool) for a CIFAR-style 3x3/1 conv.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from imagenot_jax.errors import UserError
from imagenot_jax.models.layers import BatchNorm, torch_conv, torch_linear
from imagenot_jax.models.registry import ModelOutput, register_model
from imagenot_jax.models.torch_nn import Sequential, remat_block


class BasicBlock(nnx.Module):
    """Two 3x3 convs (ResNet-18/34); `planes` output channels, stride on the first conv."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        *,
        groups: int = 1,
        base_width: int = 64,
        dtype: Any,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = torch_conv(inplanes, planes, 3, stride=stride, padding=1, **kw)
        self.bn1 = BatchNorm(planes, **kw)
        self.conv2 = torch_conv(planes, planes, 3, padding=1, **kw)
        self.bn2 = BatchNorm(planes, **kw)
        self.downsample = _downsample(inplanes, planes * self.expansion, stride, **kw)

    def zero_init_last_bn(self) -> None:
        """Makes the block start as the identity (torchvision's zero_init_residual)."""
        self.bn2.scale[...] = jnp.zeros_like(self.bn2.scale[...])

    @remat_block
    def __call__(self, x: jax.Array) -> jax.Array:
        out = nnx.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return nnx.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nnx.Module):
    """1x1 -> 3x3 (stride, groups) -> 1x1 x4 (ResNet-50/101/152, ResNeXt, Wide ResNet)."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        *,
        groups: int = 1,
        base_width: int = 64,
        dtype: Any,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = torch_conv(inplanes, width, 1, **kw)
        self.bn1 = BatchNorm(width, **kw)
        self.conv2 = torch_conv(width, width, 3, stride=stride, padding=1, groups=groups, **kw)
        self.bn2 = BatchNorm(width, **kw)
        self.conv3 = torch_conv(width, planes * self.expansion, 1, **kw)
        self.bn3 = BatchNorm(planes * self.expansion, **kw)
        self.downsample = _downsample(inplanes, planes * self.expansion, stride, **kw)

    def zero_init_last_bn(self) -> None:
        """Makes the block start as the identity (torchvision's zero_init_residual)."""
        self.bn3.scale[...] = jnp.zeros_like(self.bn3.scale[...])

    @remat_block
    def __call__(self, x: jax.Array) -> jax.Array:
        out = nnx.relu(self.bn1(self.conv1(x)))
        out = nnx.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return nnx.relu(out + (x if self.downsample is None else self.downsample(x)))


def _downsample(inplanes: int, outplanes: int, stride: int, **kw: Any) -> Sequential | None:
    """torchvision's shortcut projection, Sequential(conv1x1(stride), BN), or None if identity.

    The Sequential keeps torchvision's state_dict names (`downsample.0.weight`, `downsample.1.*`).
    """
    if stride == 1 and inplanes == outplanes:
        return None
    return Sequential(
        [torch_conv(inplanes, outplanes, 1, stride=stride, **kw), BatchNorm(outplanes, **kw)]
    )


class ResNet(nnx.Module):
    """torchvision.models.ResNet with stage widths/depths and the stem kind as arguments.

    Attributes are named as torchvision's (conv1, bn1, layer1..layerN, fc). Input: float NHWC
    batch; output: a ModelOutput, logits (batch, num_classes) in `dtype` and the pooled features
    that `fc` reads. Train/eval via model.train()/eval().
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        depths: Sequence[int],
        *,
        num_classes: int = 1000,
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_width: int | None = None,
        small_input: bool = False,
        zero_init_residual: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
        in_channels: int = 3,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if len(depths) != len(widths):
            raise UserError(f"ResNet: {len(depths)} stage depths but {len(widths)} widths")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        self.small_input = small_input
        self.num_stages = len(depths)
        inplanes = widths[0] if stem_width is None else stem_width
        if small_input:  # CIFAR-style stem: keep full resolution for 28-32 px images
            self.conv1 = torch_conv(in_channels, inplanes, 3, padding=1, **kw)
        else:  # ImageNet stem, then a 3x3/2 max pool in __call__
            self.conv1 = torch_conv(in_channels, inplanes, 7, stride=2, padding=3, **kw)
        self.bn1 = BatchNorm(inplanes, **kw)
        for i, (depth, planes) in enumerate(zip(depths, widths, strict=True)):
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(
                    block(
                        inplanes,
                        planes,
                        stride,
                        groups=groups,
                        base_width=width_per_group,
                        **kw,
                    )
                )
                inplanes = planes * block.expansion
            setattr(self, f"layer{i + 1}", nnx.List(blocks))
        self.fc = torch_linear(inplanes, num_classes, **kw)
        if zero_init_residual:
            for _, module in nnx.iter_graph(self):
                if isinstance(module, BasicBlock | Bottleneck):
                    module.zero_init_last_bn()

    def __call__(self, x: jax.Array) -> ModelOutput:
        x = jnp.asarray(x, self.dtype)
        x = nnx.relu(self.bn1(self.conv1(x)))
        if not self.small_input:
            # nn.MaxPool2d(3, 2, padding=1): padding never wins the max (pads are -inf).
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i in range(self.num_stages):
            for block in getattr(self, f"layer{i + 1}"):
                x = block(x)
        features = jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d((1, 1)) + flatten
        return ModelOutput(logits=self.fc(features), features=features)


def _resnet(
    block: type[BasicBlock] | type[Bottleneck], depths: tuple[int, ...], kwargs: dict
) -> ResNet:
    """A variant, whose stage `depths` kwargs may override (shallower nets for smoke runs)."""
    return ResNet(block, kwargs.pop("depths", depths), **kwargs)


# --- registered variants (torchvision's names and definitions) ----------------------------

# torchvision's min_size is 1: every conv and pool pads; stride-2 stem, max-pool and 3 stages.
_INFO = dict(head=("fc",), min_input_size=1, reduction=32)


@register_model(**_INFO)
def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18 (torchvision: 11,689,512 parameters at 1000 classes)."""
    return _resnet(BasicBlock, (2, 2, 2, 2), kwargs)


@register_model(**_INFO)
def resnet34(**kwargs: Any) -> ResNet:
    """ResNet-34 (torchvision: 21,797,672 parameters at 1000 classes)."""
    return _resnet(BasicBlock, (3, 4, 6, 3), kwargs)


@register_model(**_INFO)
def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50 v1.5 (torchvision: 25,557,032 parameters at 1000 classes)."""
    return _resnet(Bottleneck, (3, 4, 6, 3), kwargs)


@register_model(**_INFO)
def resnet101(**kwargs: Any) -> ResNet:
    """ResNet-101 v1.5 (torchvision: 44,549,160 parameters at 1000 classes)."""
    return _resnet(Bottleneck, (3, 4, 23, 3), kwargs)


@register_model(**_INFO)
def resnet152(**kwargs: Any) -> ResNet:
    """ResNet-152 v1.5 (torchvision: 60,192,808 parameters at 1000 classes)."""
    return _resnet(Bottleneck, (3, 8, 36, 3), kwargs)


# CIFAR-style stem and three stages: two stride-2 stages only.
@register_model(head=("fc",), min_input_size=1, reduction=4, torchvision=False)
def resnet_mini(**kwargs: Any) -> ResNet:
    """Demo ResNet for 28 px images (Fashion-MNIST as RGB) trained on a couple of CPU cores.

    Same family code as torchvision's ResNet; CIFAR-style stem, three BasicBlock stages of one
    block each, widths 8/16/32 at 28/14/7 px (~1,400 images/s of training on 2 CPU cores; 90.8%
    Fashion-MNIST test top-1 after 5 epochs). Not a torchvision model.
    """
    kwargs = {"widths": (8, 16, 32), "small_input": True, **kwargs}
    return _resnet(BasicBlock, (1, 1, 1), kwargs)
