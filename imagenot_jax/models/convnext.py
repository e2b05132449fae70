"""ConvNeXt (tiny, small, base, large) in Flax NNX, following torchvision/models/convnext.py (NHWC).

Same block settings, modules, attribute names, parameter shapes, initialisation, stochastic depth
schedule and eval-mode function as torchvision's, so its state_dicts load by name with
`torch_weights.load_torchvision` (`features.1.0.block.2.weight` is
`model.features[1][0].block[2].scale`). Two layout notes:
- torch's CNBlock permutes NCHW -> NHWC around its LayerNorm/Linear layers; our activations are
  NHWC throughout, so those `Permute`s are identities, kept as parameter-free placeholders so the
  Sequential indices (and hence the state_dict keys) are torch's.
- torch's LayerNorm2d normalises NCHW over C per pixel: in NHWC that is a plain LayerNorm over the
  last axis, so one `LayerNorm` class serves both uses.
The only reshaped tensor is `layer_scale`, (C, 1, 1) in torch and (C,) here
(`ConvNeXt.adapt_torch_state_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from imagenot_jax.errors import UserError
from imagenot_jax.models.layers import torch_conv
from imagenot_jax.models.registry import ModelOutput, register_model
from imagenot_jax.models.torch_nn import (
    Activation,
    AdaptiveAvgPool2d,
    Sequential,
    StochasticDepth,
    flatten_nchw,
    remat_block,
)

# torchvision's ConvNeXt init: nn.init.trunc_normal_(w, std=0.02) for every Conv2d and Linear
# weight. torch truncates at the *absolute* bounds [-2, 2] (100 standard deviations), while jax's
# bounds are in units of stddev, hence +-2 / 0.02.
convnext_kernel_init = nnx.initializers.truncated_normal(0.02, lower=-100.0, upper=100.0)


@dataclass(frozen=True)
class CNBlockConfig:
    """One stage (torchvision's CNBlockConfig): `num_layers` CNBlocks at `input_channels`, then a
    downsampling layer to `out_channels` (none after the last stage, out_channels=None)."""

    input_channels: int
    out_channels: int | None
    num_layers: int


class LayerNorm(nnx.LayerNorm):
    """torch.nn.LayerNorm(C, eps) over the last axis; in NHWC also torchvision's LayerNorm2d.

    Variables `scale` (weight, init 1) and `bias` (init 0), as nnx.LayerNorm. The statistics
    (two-pass biased variance, as torch), the normalisation and the affine transform are all
    computed in float32 whatever the compute dtype, with fp32 scale/bias (nnx.LayerNorm would
    first round scale and bias to a bf16 compute dtype); only the result is cast to `dtype`.
    """

    def __init__(
        self, num_features: int, *, eps: float = 1e-6, dtype: Any, param_dtype: Any, rngs: nnx.Rngs
    ):
        super().__init__(
            num_features,
            epsilon=eps,
            use_fast_variance=False,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:  # type: ignore[override]
        out_dtype = x.dtype if self.dtype is None else self.dtype
        xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        centred = xf - mean
        var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
        y = centred * jax.lax.rsqrt(var + self.epsilon)
        y = y * self.scale[...].astype(y.dtype) + self.bias[...].astype(y.dtype)
        return y.astype(out_dtype)


class Permute(nnx.Module):
    """torchvision.ops.Permute placeholder: an identity on NHWC activations (see module doc)."""

    def __init__(self, dims: Sequence[int]):
        self.dims = tuple(dims)  # torch's permutation, for reference only

    def __call__(self, x: jax.Array) -> jax.Array:
        return x


class Flatten(nnx.Module):
    """nn.Flatten(1): torch.flatten of the NCHW tensor (here 1x1 spatial, so just (N, C))."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return flatten_nchw(x)


def _conv(in_ch: int, out_ch: int, kernel: int, **kw: Any) -> nnx.Conv:
    """nn.Conv2d with bias, ConvNeXt's init: trunc_normal(std 0.02) weight, zero bias."""
    return torch_conv(
        in_ch,
        out_ch,
        kernel,
        use_bias=True,
        kernel_init=convnext_kernel_init,
        bias_init=nnx.initializers.zeros,
        **kw,
    )


def _linear(in_features: int, out_features: int, **kw: Any) -> nnx.Linear:
    """nn.Linear with ConvNeXt's init: trunc_normal(std 0.02) weight, zero bias."""
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=convnext_kernel_init,
        bias_init=nnx.initializers.zeros,
        **kw,
    )


class CNBlock(nnx.Module):
    """x + stochastic_depth(layer_scale * block(x)), block = dwconv7x7 -> LN -> Linear(4C) ->
    GELU -> Linear(C), with torch's Permutes as identity placeholders at indices 1 and 6."""

    def __init__(
        self,
        dim: int,
        layer_scale: float,
        stochastic_depth_prob: float,
        *,
        dtype: Any,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.block = Sequential(
            [
                _conv(dim, dim, 7, padding=3, groups=dim, **kw),
                Permute((0, 2, 3, 1)),
                LayerNorm(dim, eps=1e-6, **kw),
                _linear(dim, 4 * dim, **kw),
                Activation("gelu"),
                _linear(4 * dim, dim, **kw),
                Permute((0, 3, 1, 2)),
            ]
        )
        # torch: nn.Parameter(torch.ones(dim, 1, 1) * layer_scale), broadcast over NCHW channels.
        self.layer_scale = nnx.Param(jnp.full((dim,), layer_scale, param_dtype))
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, rngs=rngs)

    @remat_block
    def __call__(self, x: jax.Array) -> jax.Array:
        result = self.layer_scale[...].astype(x.dtype) * self.block(x)
        result = self.stochastic_depth(result)
        return result + x


class ConvNeXt(nnx.Module):
    """torchvision.models.ConvNeXt: attributes `features`, `avgpool`, `classifier` as torch's.

    features = [stem (conv 4x4/4 + LayerNorm2d), stage 1, downsample 1, ..., last stage]; block
    i of N (counted over all stages) drops its residual branch with probability
    stochastic_depth_prob * i / (N - 1) in training. Input: float NHWC batch; output: a
    ModelOutput, logits (batch, num_classes) in `dtype` and the normalised pooled features that
    `classifier.2` reads. Train/eval (stochastic depth) via model.train()/eval().
    """

    def __init__(
        self,
        block_setting: Sequence[CNBlockConfig],
        stochastic_depth_prob: float = 0.0,
        layer_scale: float = 1e-6,
        num_classes: int = 1000,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if not block_setting:
            raise ValueError("The block_setting should not be empty")
        if not all(isinstance(s, CNBlockConfig) for s in block_setting):
            raise TypeError("The block_setting should be List[CNBlockConfig]")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        first = block_setting[0].input_channels
        # Conv2dNormActivation(3, first, 4, stride 4, padding 0, LayerNorm2d, no activation, bias)
        layers: list[nnx.Module] = [
            Sequential([_conv(3, first, 4, stride=4, padding=0, **kw), LayerNorm(first, **kw)])
        ]
        total_stage_blocks = sum(cnf.num_layers for cnf in block_setting)
        stage_block_id = 0
        for cnf in block_setting:
            stage: list[nnx.Module] = []
            for _ in range(cnf.num_layers):
                # torchvision's linear schedule over the depth (same float expression).
                sd_prob = stochastic_depth_prob * stage_block_id / (total_stage_blocks - 1.0)
                stage.append(CNBlock(cnf.input_channels, layer_scale, sd_prob, **kw))
                stage_block_id += 1
            layers.append(Sequential(stage))
            if cnf.out_channels is not None:  # downsampling: LayerNorm2d, conv 2x2 / 2
                c_in, c_out = cnf.input_channels, cnf.out_channels
                down = [LayerNorm(c_in, **kw), _conv(c_in, c_out, 2, stride=2, padding=0, **kw)]
                layers.append(Sequential(down))
        self.features = Sequential(layers)
        self.avgpool = AdaptiveAvgPool2d((1, 1))
        last = block_setting[-1]
        last_channels = last.out_channels if last.out_channels is not None else last.input_channels
        self.classifier = Sequential(
            [LayerNorm(last_channels, **kw), Flatten(), _linear(last_channels, num_classes, **kw)]
        )

    @staticmethod
    def adapt_torch_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
        """torch's layer_scale (C, 1, 1) -> our (C,); every other entry loads by name as is
        (`torch_weights.load_torchvision` calls this)."""
        adapted = dict(state_dict)
        for key, value in state_dict.items():
            if key.endswith(".layer_scale"):
                array = value.detach().cpu().numpy() if hasattr(value, "detach") else value
                adapted[key] = np.asarray(array).reshape(-1)
        return adapted

    def __call__(self, x: jax.Array) -> ModelOutput:
        x = self.features(jnp.asarray(x, self.dtype))
        features = self.classifier.run(self.avgpool(x), stop=2)  # LayerNorm2d, flatten
        return ModelOutput(logits=self.classifier.run(features, start=2), features=features)


def _build(
    widths: tuple[int, ...], depths: tuple[int, ...], default_sd: float, kwargs: dict
) -> ConvNeXt:
    """A variant (torchvision's stage widths and depths), which the `widths` and `depths` kwargs
    may override (smoke-sized nets): stage i downsamples to stage i + 1's width."""
    kwargs.setdefault("stochastic_depth_prob", default_sd)
    num_stages = len(widths)
    widths, depths = kwargs.pop("widths", widths), kwargs.pop("depths", depths)
    if not len(widths) == len(depths) == num_stages:
        raise UserError(f"ConvNeXt: need {num_stages} stage widths and depths")
    outs = [*widths[1:], None]
    setting = [CNBlockConfig(*stage) for stage in zip(widths, outs, depths, strict=True)]
    return ConvNeXt(setting, **kwargs)


# --- registered variants (torchvision's names, stage widths/depths, default stochastic depth) -

# torchvision's min_size: the 4x4/4 stem and three 2x2/2 downsamplings need 32 px.
_INFO = dict(head=("classifier.2",), min_input_size=32, reduction=32)


@register_model(**_INFO)
def convnext_tiny(**kwargs: Any) -> ConvNeXt:
    """ConvNeXt-T (torchvision: 28,589,128 parameters at 1000 classes; stochastic depth 0.1)."""
    return _build((96, 192, 384, 768), (3, 3, 9, 3), 0.1, kwargs)


@register_model(**_INFO)
def convnext_small(**kwargs: Any) -> ConvNeXt:
    """ConvNeXt-S (torchvision: 50,223,688 parameters at 1000 classes; stochastic depth 0.4)."""
    return _build((96, 192, 384, 768), (3, 3, 27, 3), 0.4, kwargs)


@register_model(**_INFO)
def convnext_base(**kwargs: Any) -> ConvNeXt:
    """ConvNeXt-B (torchvision: 88,591,464 parameters at 1000 classes; stochastic depth 0.5)."""
    return _build((128, 256, 512, 1024), (3, 3, 27, 3), 0.5, kwargs)


@register_model(**_INFO)
def convnext_large(**kwargs: Any) -> ConvNeXt:
    """ConvNeXt-L (torchvision: 197,767,336 parameters at 1000 classes; stochastic depth 0.5)."""
    return _build((192, 384, 768, 1536), (3, 3, 27, 3), 0.5, kwargs)
