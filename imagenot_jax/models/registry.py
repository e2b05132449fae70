"""The model contract: a decorator registry with per-model metadata, and the typed output.

A decorator registry (as in timm) keeps the list of models next to their definitions, so adding a
variant is one function and no dispatch table has to be edited. Each registration carries the
facts other stages need without building the model (`ModelInfo`): which layers form the
classifier head (transfer replaces them), the smallest input the network takes, its total stride.
Every model returns a `ModelOutput` (logits, pre-logits features, auxiliary logits where it has
them), so callers never guess the shape of what a model returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from imagenot_jax.errors import UserError
from imagenot_jax.models.torch_nn import set_remat

ModelFn = TypeVar("ModelFn", bound=Callable[..., nnx.Module])
Path = tuple[str, ...]


@flax.struct.dataclass
class ModelOutput:
    """What every model returns (a pytree, so it leaves jit as it is).

    - `logits`: (batch, num_classes) in the compute dtype;
    - `features`: (batch, D) pre-logits features, the input of the classifier's last layer before
      its dropout: what a linear probe trains on and what feature extraction keeps;
    - `aux_logits`: the auxiliary classifier's logits where the model has one and it is active
      (Inception-v3 in train mode), else None. Training adds their weighted loss.
    """

    logits: jax.Array
    features: jax.Array
    aux_logits: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """Facts about a registered model, known without building it (timm's pretrained_cfg style).

    - `head`: module names, torch-style dotted (`fc`, `classifier.6`, `AuxLogits.fc`), of the
      layers whose shape depends on `num_classes`: transfer re-initialises them, a linear probe
      trains only them;
    - `min_input_size`: smallest square input (px) the forward takes (torchvision's `min_size`);
      `min_train_input_size` where train mode needs more (Inception's auxiliary head);
    - `reduction`: input pixels per pixel of the last feature map (the total stride; ViT's patch);
    - `fixed_input_size`: 0, or the only input size (px) the model takes unless it is built
      with another (`model.kwargs.image_size`: ViT's position embedding is not resized);
    - `torchvision`: torchvision has the same architecture under this name (its weights load).
    """

    name: str
    family: str
    head: tuple[str, ...]
    min_input_size: int
    reduction: int
    min_train_input_size: int = 0
    fixed_input_size: int = 0
    torchvision: bool = True

    def __post_init__(self) -> None:
        if not self.min_train_input_size:
            object.__setattr__(self, "min_train_input_size", self.min_input_size)

    @property
    def head_paths(self) -> tuple[Path, ...]:
        """The head's module names as variable-path prefixes (`classifier.6` -> (classifier, 6))."""
        return tuple(tuple(name.split(".")) for name in self.head)


_REGISTRY: dict[str, Callable[..., nnx.Module]] = {}
_INFO: dict[str, ModelInfo] = {}


def register_model(
    *,
    head: tuple[str, ...],
    min_input_size: int,
    reduction: int,
    **info: Any,
) -> Callable[[ModelFn], ModelFn]:
    """Registers the decorated builder under its own name (torchvision's variant names, e.g.
    `resnet50`) with its `ModelInfo`; the family is the defining module's name."""

    def register(fn: ModelFn) -> ModelFn:
        name = fn.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice ({fn.__module__})")
        family = fn.__module__.rsplit(".", 1)[-1]
        _REGISTRY[name] = fn
        _INFO[name] = ModelInfo(name, family, head, min_input_size, reduction, **info)
        return fn

    return register


def list_models(family: str | None = None) -> list[str]:
    """Names of the registered models (of one family, e.g. `resnet`), sorted."""
    return sorted(name for name, info in _INFO.items() if family in (None, info.family))


def _lookup(name: str) -> None:
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; expected one of: {', '.join(list_models())}")


def model_info(name: str) -> ModelInfo:
    """The registered facts about model `name` (UserError naming the valid ones if unknown)."""
    _lookup(name)
    return _INFO[name]


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
    """Builds the registered model `name`; calling it returns a `ModelOutput`.

    `dtype` is the compute dtype (e.g. bf16), `param_dtype` the storage dtype of the parameters;
    extra keyword arguments go to the builder (e.g. `zero_init_residual=True`). `remat=True`
    recomputes each residual/dense/inception/transformer block's activations in the backward
    pass (torch_nn.remat_block): less activation memory, the same function and parameters.
    """
    _lookup(name)
    fn = _REGISTRY[name]
    model = fn(num_classes=num_classes, dtype=dtype, param_dtype=param_dtype, rngs=rngs, **kwargs)
    if remat:
        set_remat(model)
    return model
