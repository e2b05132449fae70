"""Copy a torchvision state_dict into an NNX model whose attributes mirror torchvision's names.

The NNX models keep torchvision's module names (`layer1.0.downsample.1.running_var` is
`model.layer1[0].downsample[1].var`), so conversion is a rename of the leaf plus a layout change:
conv OIHW -> HWIO, linear (out, in) -> (in, out). Never imports torch: values may be torch
tensors (anything with `.numpy()`) or numpy arrays. Strict both ways, so a model that drifts from
torchvision's structure fails loudly instead of loading half the weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from imagenot_jax.errors import UserError

# torch buffers with no counterpart in the NNX model (BN's step counter: momentum is fixed).
IGNORED_SUFFIXES = ("num_batches_tracked",)


def _to_numpy(value: Any) -> np.ndarray:
    """An owned copy: on CPU, jax may alias a numpy buffer zero-copy, and torch shares its
    tensors' memory with `.numpy()`, so without the copy torch's in-place updates (BN running
    stats in train mode) would silently change the JAX model's arrays."""
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.array(value, copy=True)


def _leaf(torch_leaf: str, ndim: int) -> tuple[str, tuple[int, ...] | None]:
    """NNX variable name and axis permutation for a torch parameter/buffer name."""
    if torch_leaf == "weight":
        if ndim == 4:
            return "kernel", (2, 3, 1, 0)  # conv OIHW -> HWIO
        if ndim == 2:
            return "kernel", (1, 0)  # linear (out, in) -> (in, out)
        return "scale", None  # norm layer
    renames = {"bias": "bias", "running_mean": "mean", "running_var": "var"}
    # Anything else is a raw nn.Parameter (ViT's class_token, ConvNeXt's layer_scale): same name,
    # same layout; a family whose layout differs reshapes it in its adapt_torch_state_dict.
    return renames.get(torch_leaf, torch_leaf), None


def _variable_at(model: nnx.Module, key: str, parts: list[str]) -> nnx.Variable:
    node: Any = model
    for part in parts:
        try:
            node = node[int(part)] if part.isdigit() else getattr(node, part)
        except (AttributeError, IndexError, TypeError):
            raise UserError(f"torch key {key!r}: model has no {part!r} on that path") from None
    if not isinstance(node, nnx.Variable):
        raise UserError(f"torch key {key!r} maps to {type(node).__name__}, not a variable")
    return node


def load_torch_state_dict(model: nnx.Module, state_dict: Mapping[str, Any]) -> None:
    """Copies every entry of `state_dict` into `model` in place (cast to the variables' dtypes).

    Raises ValueError if a key has no counterpart, a shape differs, or a model parameter or batch
    statistic is left unassigned.
    """
    assigned: set[int] = set()
    for key, value in state_dict.items():
        if key.endswith(IGNORED_SUFFIXES):
            continue
        array = _to_numpy(value)
        *path, torch_leaf = key.split(".")
        name, perm = _leaf(torch_leaf, array.ndim)
        if perm is not None:
            array = array.transpose(perm)
        variable = _variable_at(model, key, [*path, name])
        target = variable[...]
        if tuple(target.shape) != array.shape:
            raise UserError(
                f"torch key {key!r}: shape {array.shape} (converted) != model's {target.shape}"
            )
        variable[...] = jnp.asarray(array, dtype=target.dtype)
        assigned.add(id(variable))
    missing = [
        ".".join(map(str, path))
        for path, node in nnx.iter_graph(model)
        if isinstance(node, nnx.Param | nnx.BatchStat) and id(node) not in assigned
    ]
    if missing:
        raise UserError(f"state_dict has no value for model variables: {', '.join(missing)}")


def load_torchvision(model: nnx.Module, state_dict: Mapping[str, Any]) -> None:
    """Loads a torchvision state_dict into the matching model of our zoo, in place.

    A family whose names or layouts differ from torchvision's defines
    `adapt_torch_state_dict(state_dict) -> state_dict` (a static method on its model class) that
    renames/reshapes the entries first; everything else loads by name.
    """
    adapt = getattr(type(model), "adapt_torch_state_dict", None)
    load_torch_state_dict(model, adapt(state_dict) if adapt is not None else state_dict)
