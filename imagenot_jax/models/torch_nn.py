"""Parameter-free torch.nn modules with PyTorch semantics, shared by the model families.

torchvision builds its nets from nn.Sequential containers whose state_dict keys carry each
layer's index (`features.3.weight`), parameter-free layers included. Keeping those layers as
(empty) modules in an indexed `Sequential` keeps our attribute paths equal to torchvision's keys,
so weights load by name (torch_weights.load_torch_state_dict) without per-family key tables.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from imagenot_jax.errors import UserError

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nnx.relu,
    "hardswish": jax.nn.hard_swish,
    "hardsigmoid": jax.nn.hard_sigmoid,
    "silu": jax.nn.silu,
    "sigmoid": jax.nn.sigmoid,
    # nn.GELU() default: the exact erf form, not the tanh approximation jax.nn.gelu defaults to.
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


class Activation(nnx.Module):
    """nn.ReLU / nn.Hardswish / nn.Hardsigmoid / nn.SiLU / nn.Sigmoid / nn.GELU as a module."""

    def __init__(self, kind: str):
        if kind not in _ACTIVATIONS:
            raise UserError(f"unknown activation {kind!r}; expected one of {sorted(_ACTIVATIONS)}")
        self.kind = kind

    def __call__(self, x: jax.Array) -> jax.Array:
        return _ACTIVATIONS[self.kind](x)


def ReLU() -> Activation:  # named like torch's nn.ReLU(), for the layer lists
    return Activation("relu")


def remat_block(call: Callable[..., Any]) -> Callable[..., Any]:
    """Marks a block's `__call__` for optional rematerialisation (`get_model(..., remat=True)`).

    With the block's `remat` flag set (by `set_remat`), the call runs under `nnx.remat`
    (jax.checkpoint): the backward pass recomputes the block's activations instead of keeping
    them, trading compute for memory. The function, the parameters and the BatchNorm/RNG state
    updates are the same either way; the flag is static, so the parameter tree (checkpoints,
    torch conversion) does not change.
    """

    @functools.wraps(call)
    def call_maybe_remat(self: nnx.Module, *args: Any) -> Any:
        if getattr(self, "remat", False):
            return nnx.remat(call)(self, *args)
        return call(self, *args)

    call_maybe_remat.remat_block = True  # type: ignore[attr-defined]
    return call_maybe_remat


def set_remat(model: nnx.Module, remat: bool = True) -> int:
    """Sets the `remat` flag of every block of `model` whose `__call__` is a `remat_block`;
    returns how many blocks there are (0 for nets without blocks, e.g. VGG and AlexNet)."""
    blocks = 0
    for _, module in nnx.iter_modules(model):
        if getattr(type(module).__call__, "remat_block", False):
            module.remat = remat
            blocks += 1
    return blocks


class Sequential(nnx.List):
    """torch.nn.Sequential: an nnx.List (indexed like torch's) that applies its layers in order."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.run(x)

    def run(self, x: jax.Array, start: int = 0, stop: int | None = None) -> jax.Array:
        """Applies layers[start:stop] only: a classifier's pre-logits features are the output of
        its layers before the last Linear (and that Linear's dropout)."""
        for layer in list(self)[start:stop]:
            x = layer(x)
        return x


class MaxPool2d(nnx.Module):
    """nn.MaxPool2d(kernel_size, stride, padding, ceil_mode) on NHWC input.

    ceil_mode=True pads the bottom/right edge with -inf just enough for one more window, as torch
    does, except that (torch's rule) a last window starting inside the right padding is dropped.
    """

    def __init__(self, kernel_size: int, stride: int, padding: int = 0, ceil_mode: bool = False):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode = ceil_mode

    def _extra(self, size: int) -> int:
        """Pixels of bottom/right padding beyond `padding` that ceil_mode adds along one axis."""
        k, s, p = self.kernel_size, self.stride, self.padding
        if not self.ceil_mode:
            return 0
        out = -(-(size + 2 * p - k) // s) + 1
        if (out - 1) * s >= size + p:  # torch: the last window must start inside input + left pad
            out -= 1
        return max((out - 1) * s + k - (size + 2 * p), 0)

    def __call__(self, x: jax.Array) -> jax.Array:
        k, s, p = self.kernel_size, self.stride, self.padding
        pads = [(p, p + self._extra(x.shape[1])), (p, p + self._extra(x.shape[2]))]
        if any(sum(pad) for pad in pads):
            x = jnp.pad(x, [(0, 0), *pads, (0, 0)], constant_values=-jnp.inf)
        return nnx.max_pool(x, (k, k), strides=(s, s), padding="VALID")


def _adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) averaging matrix of torch's adaptive pooling along one axis.

    Output i averages inputs [floor(i * in / out), ceil((i + 1) * in / out)); the windows may
    overlap or (for in < out) repeat inputs, exactly as torch's AdaptiveAvgPool2d.
    """
    matrix = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)  # ceil division
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class AdaptiveAvgPool2d(nnx.Module):
    """nn.AdaptiveAvgPool2d(output_size) on NHWC input of any spatial size.

    Separable: torch's window is a product of a row window and a column window, so the average is
    two small matrix products (one per axis); an identity when the size already matches.
    """

    def __init__(self, output_size: tuple[int, int]):
        self.output_size = tuple(output_size)

    def __call__(self, x: jax.Array) -> jax.Array:
        (out_h, out_w), (in_h, in_w) = self.output_size, x.shape[1:3]
        if (in_h, in_w) == (out_h, out_w):
            return x
        if (out_h, out_w) == (1, 1):
            return jnp.mean(x, axis=(1, 2), keepdims=True)
        rows = jnp.asarray(_adaptive_pool_matrix(in_h, out_h), x.dtype)
        cols = jnp.asarray(_adaptive_pool_matrix(in_w, out_w), x.dtype)
        return jnp.einsum("oh,nhwc,pw->nopc", rows, x, cols)


def flatten_nchw(x: jax.Array) -> jax.Array:
    """torch.flatten(x, 1) of the NCHW tensor: features in (C, H, W) order, as torchvision's
    first classifier Linear expects, so its weight loads with a plain transpose (no permutation
    of its rows)."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class StochasticDepth(nnx.Module):
    """torchvision.ops.StochasticDepth(p, mode="row") for a residual branch's output.

    In training, each sample's branch is zeroed with probability `p` and the survivors scaled by
    1 / (1 - p); an identity after model.eval() (or with p = 0). Draws from the "dropout" stream
    of the Rngs it was built with, like nnx.Dropout, so the trainer's RNG state drives it.
    """

    def __init__(self, p: float, *, rngs: nnx.Rngs, deterministic: bool | None = None):
        if not 0.0 <= p <= 1.0:
            raise UserError(f"StochasticDepth: drop probability has to be in [0, 1], got {p}")
        self.p = p
        # None, like BatchNorm's use_running_average: model.train()/eval() must set the mode.
        self.deterministic = deterministic
        self.rngs = rngs["dropout"].fork()

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.deterministic is None:
            raise ValueError("StochasticDepth: call model.train() or model.eval() first")
        if self.deterministic or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        keep = jax.random.bernoulli(self.rngs(), survival, (x.shape[0],) + (1,) * (x.ndim - 1))
        scale = 1.0 / survival if survival > 0.0 else 0.0
        return x * (keep.astype(x.dtype) * jnp.asarray(scale, x.dtype))
