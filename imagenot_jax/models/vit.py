"""Vision Transformer in Flax NNX, following torchvision/models/vision_transformer.py (NHWC input).

Same modules, parameter names and shapes, initialisation and function as torchvision's
`VisionTransformer`, so its state_dicts load with `torch_weights.load_torchvision`:
`conv_proj`, `class_token` (1, 1, D), `encoder.pos_embedding` (1, seq, D), `encoder.layers[i]`
(torch: `encoder.layers.encoder_layer_{i}`, renamed by `adapt_torch_state_dict`) with `ln_1`,
`self_attention` (torch's nn.MultiheadAttention: `in_proj_weight` (3D, D) and `in_proj_bias`
kept in torch's layout and names, one fused q/k/v matmul; `out_proj`), `ln_2`, `mlp` (Linear,
GELU, Dropout, Linear, Dropout: torch indices 0 and 3), then `encoder.ln` and `heads.head`
(`heads.pre_logits` + tanh when `representation_size` is set). LayerNorm eps is 1e-6.

Mixed precision follows torch autocast: with a bf16 `dtype` the matmuls/convs run in bf16, but
the residual stream (patch tokens + class token + position embedding, and every `x + f(x)`) is
kept in float32, as autocast's fp32 LayerNorm outputs and fp32 parameters make it in torch, and
attention logits and softmax are computed in float32.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from imagenot_jax.errors import UserError
from imagenot_jax.models.layers import linear_kernel_init, torch_conv
from imagenot_jax.models.registry import ModelOutput, register_model
from imagenot_jax.models.torch_nn import Activation, Sequential, remat_block

LAYER_NORM_EPS = 1e-6  # torchvision: partial(nn.LayerNorm, eps=1e-6)
DEFAULT_IMAGE_SIZE = 224  # torchvision's; the input size unless model.kwargs.image_size says

_zeros = nnx.initializers.zeros
_xavier_uniform = nnx.initializers.xavier_uniform()  # (fan_in + fan_out) symmetric: any layout


def _torch_trunc_normal(std: float) -> Any:
    """torch.nn.init.trunc_normal_(w, std=std): N(0, std^2) cut at the *absolute* bounds +-2
    (jax's bounds are in units of std, and it does not rescale the variance either)."""
    return nnx.initializers.truncated_normal(std, lower=-2.0 / std, upper=2.0 / std)


def _dropout(rate: float, rngs: nnx.Rngs) -> nnx.Dropout:
    """nn.Dropout(rate); mode set by model.train()/eval(). At rate 0 (torchvision's default for
    ViT) it holds no RNG stream: no key state in the model, the train step or checkpoints, and
    fewer RNG draws when the model is traced."""
    return nnx.Dropout(rate, deterministic=None, rngs=rngs if rate > 0 else None)


def _layer_norm(dim: int, **kw: Any) -> nnx.LayerNorm:
    # Two-pass variance (torch's): the fast E[x^2] - E[x]^2 loses precision on the residual
    # stream, whose mean can be large relative to its spread. Statistics are float32 in nnx.
    return nnx.LayerNorm(dim, epsilon=LAYER_NORM_EPS, use_fast_variance=False, **kw)


class MultiheadAttention(nnx.Module):
    """torch.nn.MultiheadAttention(embed_dim, num_heads, dropout, batch_first=True), used as
    self-attention without masks (what ViT calls), returning only the attention output.

    Parameters keep torch's names and layout (`in_proj_weight` (3D, D), `in_proj_bias` (3D,),
    `out_proj`), so they load unchanged and fall in the same weight-decay groups as in
    torchvision's `set_weight_decay` (`in_proj_bias` is not a "bias" key there). Init as torch:
    xavier_uniform in_proj_weight, zero biases, out_proj.weight keeps nn.Linear's default.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        *,
        dtype: Any,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        if embed_dim % num_heads:
            raise UserError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dtype = dtype
        self.in_proj_weight = nnx.Param(
            _xavier_uniform(rngs.params(), (3 * embed_dim, embed_dim), param_dtype)
        )
        self.in_proj_bias = nnx.Param(jnp.zeros((3 * embed_dim,), param_dtype))
        self.out_proj = nnx.Linear(
            embed_dim,
            embed_dim,
            kernel_init=linear_kernel_init,
            bias_init=_zeros,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        # Dropout on the attention probabilities (torch: dropout_p of scaled_dot_product_attention).
        self.dropout = _dropout(dropout, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, seq, dim = x.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        x = x.astype(self.dtype)
        weight = self.in_proj_weight[...].astype(self.dtype)
        qkv = jnp.einsum("bsd,ed->bse", x, weight) + self.in_proj_bias[...].astype(self.dtype)
        q, k, v = jnp.split(qkv.reshape(batch, seq, 3 * heads, head_dim), 3, axis=2)
        if self._drops_probabilities():
            out = self._explicit_attention(q, k, v)
        else:
            # One fused op (XLA's choice of kernel on each backend). Same function as the explicit
            # path: float32 logits (bf16 inputs, f32 accumulation), scaled by 1/sqrt(head_dim),
            # float32 softmax, probabilities cast to the compute dtype for the product with v.
            out = jax.nn.dot_product_attention(q, k, v, scale=1.0 / math.sqrt(head_dim))
        return self.out_proj(out.reshape(batch, seq, dim))

    def _drops_probabilities(self) -> bool:
        """Dropout on the attention probabilities (train mode, rate > 0), which the fused op
        cannot apply; an unset mode also takes this path, so nnx.Dropout reports it."""
        return self.dropout.rate > 0 and not self.dropout.deterministic

    def _explicit_attention(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        """softmax(q k^T / sqrt(d)) v with dropout on the probabilities, as torch computes it."""
        logits_dtype = jnp.promote_types(self.dtype, jnp.float32)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=logits_dtype)
        probs = jax.nn.softmax(logits * (1.0 / math.sqrt(q.shape[-1])), axis=-1)
        probs = self.dropout(probs).astype(self.dtype)
        return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def mlp_block(in_dim: int, mlp_dim: int, dropout: float, **kw: Any) -> Sequential:
    """torchvision's MLPBlock: Linear-GELU-Dropout-Linear-Dropout (Linears at indices 0 and 3),
    xavier_uniform weights and N(0, 1e-6) biases."""
    rngs = kw["rngs"]

    def linear(n_in: int, n_out: int) -> nnx.Linear:
        return nnx.Linear(
            n_in,
            n_out,
            kernel_init=_xavier_uniform,
            bias_init=nnx.initializers.normal(1e-6),
            **kw,
        )

    return Sequential(
        [
            linear(in_dim, mlp_dim),
            Activation("gelu"),
            _dropout(dropout, rngs),
            linear(mlp_dim, in_dim),
            _dropout(dropout, rngs),
        ]
    )


class EncoderBlock(nnx.Module):
    """Pre-norm transformer block: x + dropout(attn(ln_1(x))), then + mlp(ln_2(.))."""

    def __init__(
        self,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        dropout: float,
        attention_dropout: float,
        **kw: Any,
    ):
        norm_kw = {k: kw[k] for k in ("dtype", "param_dtype", "rngs")}
        self.ln_1 = _layer_norm(hidden_dim, **norm_kw)
        self.self_attention = MultiheadAttention(hidden_dim, num_heads, attention_dropout, **kw)
        self.dropout = _dropout(dropout, kw["rngs"])
        self.ln_2 = _layer_norm(hidden_dim, **norm_kw)
        self.mlp = mlp_block(hidden_dim, mlp_dim, dropout, **kw)

    @remat_block
    def __call__(self, inputs: jax.Array) -> jax.Array:
        # `inputs` is the float32 residual stream; adding a bf16 branch output keeps it float32.
        x = self.dropout(self.self_attention(self.ln_1(inputs))) + inputs
        return x + self.mlp(self.ln_2(x))


class Encoder(nnx.Module):
    """pos_embedding (1, seq, D) ~ N(0, 0.02) (from BERT), dropout, the blocks, final LayerNorm."""

    def __init__(
        self,
        seq_length: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        dropout: float,
        attention_dropout: float,
        **kw: Any,
    ):
        rngs = kw["rngs"]
        init = nnx.initializers.normal(0.02)
        self.pos_embedding = nnx.Param(
            init(rngs.params(), (1, seq_length, hidden_dim), kw["param_dtype"])
        )
        self.dropout = _dropout(dropout, rngs)
        self.layers = Sequential(
            [
                EncoderBlock(num_heads, hidden_dim, mlp_dim, dropout, attention_dropout, **kw)
                for _ in range(num_layers)
            ]
        )
        self.ln = _layer_norm(hidden_dim, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.pos_embedding[...].astype(x.dtype)
        return self.ln(self.layers(self.dropout(x)))


class Heads(nnx.Module):
    """torchvision's `heads` Sequential: [pre_logits (Linear) + tanh,] head (Linear).

    Init as torchvision: pre_logits trunc_normal(std sqrt(1/fan_in)) with zero bias; the head's
    weight and bias are zeros.
    """

    def __init__(
        self, hidden_dim: int, num_classes: int, representation_size: int | None, **kw: Any
    ):
        self.pre_logits = (
            None
            if representation_size is None
            else nnx.Linear(
                hidden_dim,
                representation_size,
                kernel_init=_torch_trunc_normal(math.sqrt(1.0 / hidden_dim)),
                bias_init=_zeros,
                **kw,
            )
        )
        in_features = hidden_dim if representation_size is None else representation_size
        self.head = nnx.Linear(in_features, num_classes, kernel_init=_zeros, bias_init=_zeros, **kw)

    def features(self, x: jax.Array) -> jax.Array:
        """The class token's pre-logits features: what `head` reads."""
        return x if self.pre_logits is None else jnp.tanh(self.pre_logits(x))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.features(x))


class VisionTransformer(nnx.Module):
    """torchvision.models.VisionTransformer (patchify stem; no conv_stem_configs).

    Input: float NHWC batch of exactly (image_size, image_size) images; output: a ModelOutput,
    logits (batch, num_classes) in `dtype` and the class token's features that `heads.head`
    reads. Dropouts follow model.train()/model.eval().
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        num_classes: int = 1000,
        representation_size: int | None = None,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if image_size % patch_size:
            raise UserError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.image_size, self.patch_size, self.hidden_dim = image_size, patch_size, hidden_dim
        self.dtype = dtype
        # Residual stream dtype: float32 under bf16 compute, as torch autocast leaves it.
        self.residual_dtype = jnp.promote_types(dtype, jnp.float32)
        fan_in = 3 * patch_size * patch_size
        self.conv_proj = torch_conv(
            3,
            hidden_dim,
            patch_size,
            stride=patch_size,
            padding=0,
            use_bias=True,
            kernel_init=_torch_trunc_normal(math.sqrt(1.0 / fan_in)),
            bias_init=_zeros,
            **kw,
        )
        self.class_token = nnx.Param(jnp.zeros((1, 1, hidden_dim), param_dtype))
        self.seq_length = (image_size // patch_size) ** 2 + 1
        self.encoder = Encoder(
            self.seq_length,
            num_layers,
            num_heads,
            hidden_dim,
            mlp_dim,
            dropout,
            attention_dropout,
            **kw,
        )
        self.heads = Heads(hidden_dim, num_classes, representation_size, **kw)

    def __call__(self, x: jax.Array) -> ModelOutput:
        n, h, w, _ = x.shape
        if (h, w) != (self.image_size, self.image_size):
            raise UserError(
                f"VisionTransformer expects {self.image_size}x{self.image_size} images "
                f"(the position embedding is not resized), got {h}x{w}"
            )
        x = self.conv_proj(jnp.asarray(x, self.dtype))  # (n, h/p, w/p, D), row-major as torch
        x = x.reshape(n, -1, self.hidden_dim).astype(self.residual_dtype)
        cls = jnp.broadcast_to(self.class_token[...].astype(x.dtype), (n, 1, self.hidden_dim))
        x = self.encoder(jnp.concatenate([cls, x], axis=1))
        features = self.heads.features(x[:, 0])  # the class token
        return ModelOutput(logits=self.heads.head(features), features=features)

    @staticmethod
    def adapt_torch_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
        """torchvision keys -> ours: `encoder.layers.encoder_layer_{i}.` -> `encoder.layers.{i}.`
        (an indexed list of blocks), and the pre-#6053 MLPBlock names `mlp.linear_{1,2}` (found in
        torchvision's original ViT checkpoints) -> `mlp.{0,3}`, as its _load_from_state_dict."""
        adapted = {}
        for key, value in state_dict.items():
            key = re.sub(r"^encoder\.layers\.encoder_layer_(\d+)\.", r"encoder.layers.\1.", key)
            key = re.sub(r"\.mlp\.linear_([12])\.", lambda m: f".mlp.{3 * int(m[1]) - 3}.", key)
            adapted[key] = value
        return adapted


def _vision_transformer(
    patch_size: int,
    num_layers: int,
    num_heads: int,
    hidden_dim: int,
    mlp_dim: int,
    kwargs: dict[str, Any],
) -> VisionTransformer:
    """torchvision's builder: image_size defaults to 224; `kwargs` may also override the
    architecture (a smaller net for smoke runs)."""
    arch = dict(
        image_size=DEFAULT_IMAGE_SIZE,
        patch_size=patch_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim,
    )
    return VisionTransformer(
        **{**arch, **kwargs},
    )


# --- registered variants (torchvision's names and definitions) ----------------------------


def _info(patch_size: int) -> dict[str, Any]:
    """The input is exactly `image_size` px (default 224; one patch at least)."""
    return dict(
        head=("heads.head",),
        min_input_size=patch_size,
        reduction=patch_size,
        fixed_input_size=DEFAULT_IMAGE_SIZE,
    )


@register_model(**_info(16))
def vit_b_16(**kwargs: Any) -> VisionTransformer:
    """ViT-B/16 (torchvision: 86,567,656 parameters at 224 px and 1000 classes)."""
    return _vision_transformer(16, 12, 12, 768, 3072, kwargs)


@register_model(**_info(32))
def vit_b_32(**kwargs: Any) -> VisionTransformer:
    """ViT-B/32 (torchvision: 88,224,232 parameters at 224 px and 1000 classes)."""
    return _vision_transformer(32, 12, 12, 768, 3072, kwargs)


@register_model(**_info(16))
def vit_l_16(**kwargs: Any) -> VisionTransformer:
    """ViT-L/16 (torchvision: 304,326,632 parameters at 224 px and 1000 classes)."""
    return _vision_transformer(16, 24, 16, 1024, 4096, kwargs)
