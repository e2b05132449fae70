"""Model registry: one decorated builder function per variant, looked up by torchvision's name.

A decorator registry (as in timm) keeps the list of models next to their definitions, so adding a
variant is one function and no dispatch table has to be edited.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax.numpy as jnp
from flax import nnx

from imagenot_jax.errors import UserError
from imagenot_jax.models.torch_nn import set_remat

ModelFn = TypeVar("ModelFn", bound=Callable[..., nnx.Module])

_REGISTRY: dict[str, Callable[..., nnx.Module]] = {}


def register_model(fn: ModelFn) -> ModelFn:
    """Registers `fn` under its own name (torchvision's variant names, e.g. `resnet50`)."""
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice ({fn.__module__})")
    _REGISTRY[name] = fn
    return fn


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def get_model(
    name: str,
    *,
    num_classes: int,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
    remat: bool = False,
    **kwargs: Any,
) -> nnx.Module:
    """Builds the registered model `name`.

    `dtype` is the compute dtype (e.g. bf16), `param_dtype` the storage dtype of the parameters;
    extra keyword arguments go to the builder (e.g. `zero_init_residual=True`). `remat=True`
    recomputes each residual/dense/inception/transformer block's activations in the backward
    pass (torch_nn.remat_block): less activation memory, the same function and parameters.
    """
    try:
        fn = _REGISTRY[name]
    except KeyError:
        raise UserError(
            f"unknown model {name!r}; expected one of: {', '.join(list_models())}"
        ) from None
    model = fn(num_classes=num_classes, dtype=dtype, param_dtype=param_dtype, rngs=rngs, **kwargs)
    if remat:
        set_remat(model)
    return model
