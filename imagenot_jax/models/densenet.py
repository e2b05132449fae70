"""DenseNet family in Flax NNX, following torchvision/models/densenet.py exactly (NHWC layout).

Same modules, names, parameter shapes, initialisation and eval-mode function as torchvision's
DenseNet-BC, so torchvision state_dicts load one-to-one with the generic
`torch_weights.load_torchvision` (`features.denseblock1.denselayer1.norm1.weight` is
`model.features.denseblock1.denselayer1.norm1.scale`). Channels are concatenated on the last
axis in torch's order (block input first, then each layer's new features), so loaded 1x1 conv
kernels see their input channels where torch's did.

Two torchvision details that differ from the ResNet family: convs use kaiming_normal_ in its
default *fan_in* mode, and the classifier bias starts at 0 (weight keeps nn.Linear's default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from imagenot_jax.models.layers import BatchNorm, linear_kernel_init, torch_conv
from imagenot_jax.models.registry import ModelOutput, register_model
from imagenot_jax.models.torch_nn import remat_block

# torch.nn.init.kaiming_normal_(w) with its defaults (mode="fan_in", a=0 -> gain^2 = 2):
# N(0, 2 / fan_in), fan_in = in_channels * kh * kw (jax reads the same fan from an HWIO kernel).
densenet_conv_init = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")


def _conv(in_features: int, out_features: int, kernel_size: int, **kw: Any) -> nnx.Conv:
    """Bias-free torch.nn.Conv2d with DenseNet's fan_in init (torchvision's other families use
    fan_out)."""
    return torch_conv(in_features, out_features, kernel_size, kernel_init=densenet_conv_init, **kw)


class DenseLayer(nnx.Module):
    """BN-ReLU-conv1x1 (bn_size * growth_rate) -> BN-ReLU-conv3x3 (growth_rate) [-> dropout]."""

    def __init__(
        self,
        num_input_features: int,
        growth_rate: int,
        bn_size: int,
        drop_rate: float,
        *,
        dtype: Any,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        width = bn_size * growth_rate
        self.norm1 = BatchNorm(num_input_features, **kw)
        self.conv1 = _conv(num_input_features, width, 1, **kw)
        self.norm2 = BatchNorm(width, **kw)
        self.conv2 = _conv(width, growth_rate, 3, padding=1, **kw)
        # F.dropout(p, training=self.training): only built when used, so drop_rate=0 models hold
        # no RNG state (and no unused submodule).
        self.dropout = nnx.Dropout(drop_rate, rngs=rngs) if drop_rate > 0 else None

    @remat_block
    def __call__(self, features: Sequence[jax.Array]) -> jax.Array:
        x = jnp.concatenate(features, axis=-1) if len(features) > 1 else features[0]
        x = self.conv1(nnx.relu(self.norm1(x)))
        x = self.conv2(nnx.relu(self.norm2(x)))
        if self.dropout is not None:
            x = self.dropout(x)
        return x


class DenseBlock(nnx.Module):
    """`num_layers` DenseLayers (attributes denselayer1..N); output = all features concatenated."""

    def __init__(
        self,
        num_layers: int,
        num_input_features: int,
        bn_size: int,
        growth_rate: int,
        drop_rate: float,
        *,
        dtype: Any,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        self.num_layers = num_layers
        for i in range(num_layers):
            layer = DenseLayer(
                num_input_features + i * growth_rate,
                growth_rate,
                bn_size,
                drop_rate,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            )
            setattr(self, f"denselayer{i + 1}", layer)

    def __call__(self, x: jax.Array) -> jax.Array:
        features = [x]
        for i in range(self.num_layers):
            features.append(getattr(self, f"denselayer{i + 1}")(features))
        return jnp.concatenate(features, axis=-1)


class Transition(nnx.Module):
    """BN-ReLU-conv1x1 (halves channels) -> 2x2/2 average pool."""

    def __init__(
        self,
        num_input_features: int,
        num_output_features: int,
        *,
        dtype: Any,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = BatchNorm(num_input_features, **kw)
        self.conv = _conv(num_input_features, num_output_features, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv(nnx.relu(self.norm(x)))
        # nn.AvgPool2d(2, 2): no padding, odd sizes floored (as 'VALID').
        return nnx.avg_pool(x, (2, 2), strides=(2, 2))


class Features(nnx.Module):
    """torchvision's `features` Sequential: conv0, norm0, (denseblockI, transitionI)..., norm5."""

    def __init__(
        self,
        growth_rate: int,
        block_config: Sequence[int],
        num_init_features: int,
        bn_size: int,
        drop_rate: float,
        in_channels: int,
        *,
        dtype: Any,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.num_blocks = len(block_config)
        self.conv0 = _conv(in_channels, num_init_features, 7, stride=2, padding=3, **kw)
        self.norm0 = BatchNorm(num_init_features, **kw)
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = DenseBlock(num_layers, num_features, bn_size, growth_rate, drop_rate, **kw)
            setattr(self, f"denseblock{i + 1}", block)
            num_features += num_layers * growth_rate
            if i != len(block_config) - 1:
                transition = Transition(num_features, num_features // 2, **kw)
                setattr(self, f"transition{i + 1}", transition)
                num_features //= 2
        self.norm5 = BatchNorm(num_features, **kw)
        self.num_features = num_features

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.norm0(self.conv0(x)))
        # nn.MaxPool2d(3, 2, padding=1): padding never wins the max (pads are -inf).
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i in range(self.num_blocks):
            x = getattr(self, f"denseblock{i + 1}")(x)
            if i != self.num_blocks - 1:
                x = getattr(self, f"transition{i + 1}")(x)
        return self.norm5(x)


class DenseNet(nnx.Module):
    """torchvision.models.DenseNet (DenseNet-BC); attributes `features` and `classifier`.

    Input: float NHWC batch; output: a ModelOutput, logits (batch, num_classes) in `dtype` and
    the pooled features that `classifier` reads. Train/eval via
    model.train()/eval() (BatchNorm statistics, and dropout when drop_rate > 0).
    `memory_efficient` (torch checkpointing) has no effect on the function and is not offered:
    use jax.checkpoint/remat policies in the train step instead.
    """

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.dtype = dtype
        self.features = Features(
            growth_rate,
            block_config,
            num_init_features,
            bn_size,
            drop_rate,
            in_channels,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        # nn.Linear's default weight init, then torchvision sets the bias to 0.
        self.classifier = nnx.Linear(
            self.features.num_features,
            num_classes,
            kernel_init=linear_kernel_init,
            bias_init=nnx.initializers.zeros_init(),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    @staticmethod
    def adapt_torch_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
        """Accepts the legacy checkpoint key style too (`denselayer1.norm.1.weight`), renamed
        as torchvision's own `_load_state_dict` does (`torch_weights.load_torchvision` calls it)."""
        renamed = {}
        for key, value in state_dict.items():
            parts = key.split(".")
            # legacy: denselayerN.(norm|relu|conv).(1|2).leaf -> denselayerN.(norm|conv)(1|2).leaf
            if (
                len(parts) >= 4
                and parts[-4].startswith("denselayer")
                and parts[-3] in ("norm", "relu", "conv")
                and parts[-2] in ("1", "2")
            ):
                parts = [*parts[:-3], parts[-3] + parts[-2], parts[-1]]
            renamed[".".join(parts)] = value
        return renamed

    def __call__(self, x: jax.Array) -> ModelOutput:
        x = jnp.asarray(x, self.dtype)
        x = nnx.relu(self.features(x))
        features = jnp.mean(x, axis=(1, 2))  # adaptive_avg_pool2d((1, 1)) + flatten
        return ModelOutput(logits=self.classifier(features), features=features)


def _build(
    growth_rate: int, block_config: tuple[int, ...], num_init_features: int, kwargs: dict
) -> DenseNet:
    """A variant's architecture, which `kwargs` may override (a smaller net for smoke runs)."""
    arch = dict(growth_rate=growth_rate, block_config=block_config)
    return DenseNet(**{**arch, "num_init_features": num_init_features, **kwargs})


# --- registered variants (torchvision's names and definitions) ----------------------------

# torchvision's min_size (29 px: the last transition's 2x2/2 average pool needs a 2x2 map).
_INFO = dict(head=("classifier",), min_input_size=29, reduction=32)


@register_model(**_INFO)
def densenet121(**kwargs: Any) -> DenseNet:
    """DenseNet-121 (torchvision: 7,978,856 parameters at 1000 classes)."""
    return _build(32, (6, 12, 24, 16), 64, kwargs)


@register_model(**_INFO)
def densenet161(**kwargs: Any) -> DenseNet:
    """DenseNet-161 (torchvision: 28,681,000 parameters at 1000 classes)."""
    return _build(48, (6, 12, 36, 24), 96, kwargs)


@register_model(**_INFO)
def densenet169(**kwargs: Any) -> DenseNet:
    """DenseNet-169 (torchvision: 14,149,480 parameters at 1000 classes)."""
    return _build(32, (6, 12, 32, 32), 64, kwargs)


@register_model(**_INFO)
def densenet201(**kwargs: Any) -> DenseNet:
    """DenseNet-201 (torchvision: 20,013,928 parameters at 1000 classes)."""
    return _build(32, (6, 12, 48, 32), 64, kwargs)
