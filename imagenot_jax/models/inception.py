"""Inception-v3 in Flax NNX, following torchvision/models/inception.py exactly (NHWC layout).

Same modules, names (Conv2d_1a_3x3 ... Mixed_7c, AuxLogits, fc), parameter shapes, initialisation
and function as torchvision's Inception3, so its state_dicts load unchanged with
`torch_weights.load_torchvision` (`Mixed_6b.branch7x7_2.conv.weight` is
`model.Mixed_6b.branch7x7_2.conv.kernel`). Branch outputs are concatenated on the last axis in
torch's order, so loaded 1x1 kernels see their input channels where torch's did.

Input sizes: eval needs >= 75 px (Mixed_7a's 3x3/2 conv needs a 3x3 map); train mode with
aux_logits=True needs >= 299 px, because the auxiliary head's 5x5/3 average pool and 5x5 conv need
a 17x17 Mixed_6e map (torchvision fails below that too).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from imagenot_jax.errors import UserError
from imagenot_jax.models.layers import BatchNorm, torch_bias_init, torch_conv
from imagenot_jax.models.registry import ModelOutput, register_model
from imagenot_jax.models.torch_nn import AdaptiveAvgPool2d, MaxPool2d, remat_block

# transform_input: maps an ImageNet-normalised input ((x - mean) / std) to the (x - 0.5) / 0.5
# normalisation Google's ported weights were trained with, per RGB channel: x * scale + shift.
_TRANSFORM_SCALE = (0.229 / 0.5, 0.224 / 0.5, 0.225 / 0.5)
_TRANSFORM_SHIFT = ((0.485 - 0.5) / 0.5, (0.456 - 0.5) / 0.5, (0.406 - 0.5) / 0.5)

MIN_AUX_TRAIN_SIZE = 299  # smallest input (px) for train mode with the auxiliary head


def trunc_normal_init(stddev: float) -> Any:
    """torch.nn.init.trunc_normal_(w, mean=0, std=stddev, a=-2, b=2), as torchvision's Inception3.

    torch's bounds a, b are absolute values, not multiples of std (jax's truncated_normal takes
    multiples, and nnx.initializers.truncated_normal also rescales the std): -2/stddev..2/stddev
    standard deviations, i.e. practically an untruncated normal for stddev <= 0.1.
    """

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        bound = 2.0 / stddev
        return stddev * jax.random.truncated_normal(key, -bound, bound, shape, dtype)

    return init


def _transform_input(x: jax.Array) -> jax.Array:
    """Inception3._transform_input on NHWC: per channel x * (std / 0.5) + (mean - 0.5) / 0.5."""
    scale = jnp.asarray(_TRANSFORM_SCALE, x.dtype)
    return x * scale + jnp.asarray(_TRANSFORM_SHIFT, x.dtype)


class BasicConv2d(nnx.Module):
    """conv (no bias) -> BatchNorm2d(eps=0.001) -> ReLU; attributes `conv`, `bn` as torchvision.

    Rectangular (1x7, 7x1, 1x3, 3x1) kernels take per-axis padding, symmetric as torch's.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
        stddev: float = 0.1,
        dtype: Any,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        self.conv = torch_conv(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            kernel_init=trunc_normal_init(stddev),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.bn = BatchNorm(out_channels, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.bn.epsilon = 1e-3  # momentum stays torch's default 0.1

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    """F.avg_pool2d(x, 3, stride=1, padding=1): zero padding counted, so always sum / 9."""
    return nnx.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=True)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """F.max_pool2d(x, 3, stride=2): no padding, output size floored."""
    return nnx.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nnx.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 (pool_features)."""

    def __init__(self, in_channels: int, pool_features: int, **kw: Any):
        self.branch1x1 = BasicConv2d(in_channels, 64, 1, **kw)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1, **kw)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, **kw)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1, **kw)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, **kw)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, **kw)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1, **kw)

    @remat_block
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
    """35 -> 17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool 3x3/2."""

    def __init__(self, in_channels: int, **kw: Any):
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2, **kw)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1, **kw)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, **kw)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, **kw)

    @remat_block
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3(x)
        b3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([b3, b3dbl, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nnx.Module):
    """17x17 block with factorised 7x7 convs (1x7, 7x1) of `channels_7x7` inner channels."""

    def __init__(self, in_channels: int, channels_7x7: int, **kw: Any):
        c7 = channels_7x7
        row, col = dict(padding=(0, 3)), dict(padding=(3, 0))  # (1, 7) and (7, 1) kernels
        self.branch1x1 = BasicConv2d(in_channels, 192, 1, **kw)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1, **kw)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), **row, **kw)
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), **col, **kw)
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1, **kw)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), **col, **kw)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), **row, **kw)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), **col, **kw)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), **row, **kw)
        self.branch_pool = BasicConv2d(in_channels, 192, 1, **kw)

    @remat_block
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x)))
        b7dbl = self.branch7x7dbl_5(self.branch7x7dbl_4(b7dbl))
        bp = self.branch_pool(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, b7dbl, bp], axis=-1)


class InceptionD(nnx.Module):
    """17 -> 8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool 3x3/2."""

    def __init__(self, in_channels: int, **kw: Any):
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1, **kw)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, **kw)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1, **kw)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), **kw)
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), **kw)
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, **kw)

    @remat_block
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_2(self.branch7x7x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(b7))
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nnx.Module):
    """8x8 block with split 1x3 / 3x1 branches (outputs concatenated in torch's order)."""

    def __init__(self, in_channels: int, **kw: Any):
        row, col = dict(padding=(0, 1)), dict(padding=(1, 0))  # (1, 3) and (3, 1) kernels
        self.branch1x1 = BasicConv2d(in_channels, 320, 1, **kw)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1, **kw)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), **row, **kw)
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), **col, **kw)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1, **kw)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, **kw)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), **row, **kw)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), **col, **kw)
        self.branch_pool = BasicConv2d(in_channels, 192, 1, **kw)

    @remat_block
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3dbl = jnp.concatenate([self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl)], axis=-1)
        bp = self.branch_pool(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b3, b3dbl, bp], axis=-1)


def _linear(in_features: int, out_features: int, stddev: float, **kw: Any) -> nnx.Linear:
    """nn.Linear with Inception3's trunc_normal_ weight; the bias keeps torch's default init."""
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=trunc_normal_init(stddev),
        bias_init=torch_bias_init(in_features),
        **kw,
    )


class InceptionAux(nnx.Module):
    """Auxiliary head on Mixed_6e's 17x17 map: avgpool 5x5/3 -> 1x1 (128) -> 5x5 (768) -> fc.

    torchvision sets `conv1.stddev = 0.01` on the BasicConv2d wrapper, but its init loop reads
    `stddev` from the nn.Conv2d inside, which has none, so conv1's kernel actually gets the
    default std 0.1; that effective init is reproduced here. `fc.stddev = 0.001` does apply.
    """

    def __init__(self, in_channels: int, num_classes: int, **kw: Any):
        self.conv0 = BasicConv2d(in_channels, 128, 1, **kw)
        self.conv1 = BasicConv2d(128, 768, 5, **kw)
        self.fc = _linear(768, num_classes, 0.001, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.avg_pool(x, (5, 5), strides=(3, 3), padding="VALID")  # F.avg_pool2d(x, 5, 3)
        x = self.conv1(self.conv0(x))
        x = jnp.mean(x, axis=(1, 2))  # adaptive_avg_pool2d((1, 1)) + flatten
        return self.fc(x)


class Inception3(nnx.Module):
    """torchvision.models.Inception3: input float NHWC, logits (batch, num_classes) in `dtype`.

    Output: a ModelOutput, logits (batch, num_classes) and the pooled features that `fc` reads
    (before its dropout). Train/eval only via model.train() / model.eval(). In train mode with
    aux_logits=True, `aux_logits` holds the auxiliary head's (batch, num_classes) logits, as
    torchvision's InceptionOutputs; the trainer adds `aux_loss_weight * cross_entropy(aux_logits)`
    to the main loss (torchvision's reference recipe uses 0.4). That needs >= 299 px inputs (the
    auxiliary head's pools). With aux_logits=False no AuxLogits module is built.
    `transform_input=True` re-normalises an ImageNet-normalised input to Google's (x - 0.5) / 0.5,
    as needed by the ported Google weights (torchvision sets it only when loading them).
    Dropout (`dropout`, default 0.5) acts on the pooled features before `fc`. torchvision's
    `init_weights` (always its trunc_normal scheme here) and `inception_blocks` are not offered.
    """

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        aux_logits: bool = True,
        transform_input: bool = False,
        dropout: float = 0.5,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        # Set by model.train() (False) / model.eval() (True), like Dropout's: selects the outputs.
        self.deterministic: bool | None = None
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, **kw)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, **kw)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, **kw)
        self.maxpool1 = MaxPool2d(3, 2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, **kw)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, **kw)
        self.maxpool2 = MaxPool2d(3, 2)
        self.Mixed_5b = InceptionA(192, pool_features=32, **kw)
        self.Mixed_5c = InceptionA(256, pool_features=64, **kw)
        self.Mixed_5d = InceptionA(288, pool_features=64, **kw)
        self.Mixed_6a = InceptionB(288, **kw)
        self.Mixed_6b = InceptionC(768, channels_7x7=128, **kw)
        self.Mixed_6c = InceptionC(768, channels_7x7=160, **kw)
        self.Mixed_6d = InceptionC(768, channels_7x7=160, **kw)
        self.Mixed_6e = InceptionC(768, channels_7x7=192, **kw)
        self.AuxLogits = InceptionAux(768, num_classes, **kw) if aux_logits else None
        self.Mixed_7a = InceptionD(768, **kw)
        self.Mixed_7b = InceptionE(1280, **kw)
        self.Mixed_7c = InceptionE(2048, **kw)
        self.avgpool = AdaptiveAvgPool2d((1, 1))
        self.dropout = nnx.Dropout(dropout, deterministic=None, rngs=rngs)
        self.fc = _linear(2048, num_classes, 0.1, **kw)

    def __call__(self, x: jax.Array) -> ModelOutput:
        if self.deterministic is None:
            raise ValueError("Inception3: call model.train() or model.eval() first")
        x = jnp.asarray(x, self.dtype)
        if self.transform_input:
            x = _transform_input(x)
        use_aux = self.AuxLogits is not None and not self.deterministic
        if use_aux and min(x.shape[1:3]) < MIN_AUX_TRAIN_SIZE:
            raise UserError(
                f"Inception3: train mode with aux_logits=True needs inputs of at least "
                f"{MIN_AUX_TRAIN_SIZE}x{MIN_AUX_TRAIN_SIZE} px, got {x.shape[1]}x{x.shape[2]}"
            )
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.maxpool1(x)
        x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6a(x)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))
        aux = self.AuxLogits(x) if use_aux else None
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        features = self.avgpool(x).reshape(x.shape[0], -1)  # 1x1 map: NHWC flatten = torch's
        logits = self.fc(self.dropout(features))
        return ModelOutput(logits=logits, features=features, aux_logits=aux)


# torchvision's min_size (75 px: Mixed_7a's 3x3/2 conv needs a 3x3 map); the auxiliary head
# needs 299 px in train mode.
@register_model(
    head=("fc", "AuxLogits.fc"),
    min_input_size=75,
    reduction=32,
    min_train_input_size=MIN_AUX_TRAIN_SIZE,
)
def inception_v3(**kwargs: Any) -> Inception3:
    """Inception-v3 (torchvision: 27,161,264 parameters at 1000 classes with aux_logits=True)."""
    return Inception3(**kwargs)
