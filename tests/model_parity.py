"""Shared helpers for the model tests: abstract builds, parameter counts, and torchvision parity.

Big models are never initialised for real on the JAX side: they are traced (nnx.eval_shape),
given numpy zero placeholders and filled from a seeded torchvision model, then run under one
nnx.jit (per-op dispatch of a deep net on CPU is far slower than one compile).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np
import pytest
from flax import nnx

from imagenot_jax.models import ModelOutput, get_model, model_info
from imagenot_jax.models.convert import from_torchvision

TOLERANCE = 1e-4  # max |logit difference| <= TOLERANCE * max |logit| (fp32)


def abstract_model(name: str, **kwargs: Any) -> nnx.Module:
    """The model's structure with ShapeDtypeStruct leaves: no memory, no random init."""
    kwargs.setdefault("num_classes", 1000)
    return nnx.eval_shape(lambda: get_model(name, rngs=nnx.Rngs(0), **kwargs))


def num_params(model: nnx.Module) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@functools.cache
def param_count(name: str) -> int:
    """Our parameter count at 1000 classes, traced once per name (tracing takes seconds)."""
    return num_params(abstract_model(name))


def torchvision_param_count(name: str) -> int:
    """torchvision's parameter count at 1000 classes (built on the meta device: shapes only)."""
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    with torch.device("meta"):
        torch_model = getattr(tv.models, name)()
    return sum(p.numel() for p in torch_model.parameters())


def torchvision_model(name: str, *, seed: int = 0, **kwargs: Any) -> Any:
    """torchvision's `name` with seeded random weights and non-trivial norm state.

    torchvision initialises BN to the identity (weight 1, bias 0, mean 0, var 1) and many biases
    to 0, which would hide a transposed or unloaded tensor; these are randomised here.
    """
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(seed)
    torch_model = getattr(tv.models, name)(**kwargs)
    norms = (torch.nn.BatchNorm2d, torch.nn.LayerNorm, torch.nn.GroupNorm)
    with torch.no_grad():
        for module in torch_model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
            if isinstance(module, norms) and module.weight is not None:
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
            if isinstance(module, torch.nn.Linear | torch.nn.Conv2d) and module.bias is not None:
                module.bias.normal_(0.0, 0.01)
        for key, param in torch_model.named_parameters():
            # ConvNeXt's layer_scale (1e-6) would make every block near-identity, and
            # zero-initialised tensors (ViT's head, class token) would make whole layers vanish.
            if key.endswith("layer_scale"):
                param.uniform_(0.5, 1.5)
            elif not param.any():
                param.normal_(0.0, 0.02)
    return torch_model


def converted(name: str, torch_model: Any, **kwargs: Any) -> nnx.Module:
    """Our `name` (built abstractly with `kwargs`) holding `torch_model`'s weights."""
    return from_torchvision(name, torch_model.state_dict(), **kwargs)


# XLA:CPU's backend optimisations cost ~5x more compile time than they save running one batch
# of a deep net (resnet152: 13 s -> 2.4 s compile, same run time); numerics are unchanged.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.partial(jax.jit, static_argnums=0, compiler_options=_FAST_COMPILE)
def _apply(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array) -> tuple[ModelOutput, nnx.State]:
    model = nnx.merge(graphdef, state)
    return model(x), nnx.state(model)


def jit_apply(model: nnx.Module, x: Any) -> ModelOutput:
    """`model(x)` compiled as one program; state updates (BN statistics, RNG counts) are written
    back to `model`, as an eager call would."""
    graphdef, state = nnx.split(model)
    out, new_state = _apply(graphdef, state, x)
    nnx.update(model, new_state)
    return out


def jit_logits(model: nnx.Module, x: Any) -> jax.Array:
    """The logits of `jit_apply(model, x)`."""
    return jit_apply(model, x).logits


def random_input(shape_nhwc: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, Any]:
    """The same random batch as NHWC numpy (ours) and NCHW torch tensor (torchvision's)."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(seed).standard_normal(shape_nhwc).astype(np.float32)
    return x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def torch_logits(output: Any) -> np.ndarray:
    """Logits of a torchvision forward (InceptionOutputs / GoogLeNetOutputs: the main head)."""
    return (output.logits if hasattr(output, "logits") else output).detach().numpy()


def assert_logits_match(got: Any, expected: np.ndarray, tolerance: float = TOLERANCE) -> None:
    got = np.asarray(got, np.float32)
    assert got.shape == expected.shape
    error, scale = np.abs(got - expected).max(), np.abs(expected).max()
    assert error <= tolerance * scale, (
        f"max |diff| {error:.3g} > {tolerance} * max |logit| {scale:.3g}"
    )


def assert_same_logits(
    torch_model: Any,
    model: nnx.Module,
    size: int,
    *,
    batch: int = 1,
    train: bool = False,
    seed: int = 0,
) -> None:
    """Both models in the same mode (train mode also updates both models' BN statistics) on
    the same random batch of `size` px: the same logits."""
    torch = pytest.importorskip("torch")
    for m in (torch_model, model):
        m.train() if train else m.eval()
    x, x_torch = random_input((batch, size, size, 3), seed)
    with torch.no_grad():
        expected = torch_logits(torch_model(x_torch))
    assert_logits_match(jit_logits(model, x), expected)


def assert_eval_identity(
    name: str,
    size: int,
    *,
    batch: int = 1,
    torch_kwargs: dict[str, Any] | None = None,
    our_kwargs: dict[str, Any] | None = None,
) -> None:
    """Seeded torchvision `name` -> convert -> same eval-mode logits on one random batch, and
    the same features: what torchvision's module named as the head in our registry reads (so
    the registry's head names torchvision's classifier, and `features` is its input)."""
    torch = pytest.importorskip("torch")
    torch_model = torchvision_model(name, **(torch_kwargs or {})).eval()
    model = converted(name, torch_model, **(our_kwargs or {}))
    model.eval()
    x, x_torch = random_input((batch, size, size, 3))
    head_input = {}
    head = torch_model.get_submodule(model_info(name).head[0])
    hook = head.register_forward_pre_hook(lambda _, args: head_input.update(x=args[0]))
    with torch.no_grad():
        expected = torch_logits(torch_model(x_torch))
    hook.remove()
    out = jit_apply(model, x)
    assert_logits_match(out.logits, expected)
    assert_logits_match(out.features, head_input["x"].numpy())


def assert_running_stats_match(model: nnx.Module, torch_model: Any) -> int:
    """Every BatchStat of `model` equals torch's buffer of the same name; returns how many."""
    torch_state = torch_model.state_dict()
    checked = 0
    for path, node in nnx.iter_graph(model):
        if not isinstance(node, nnx.BatchStat):
            continue
        *module_path, leaf = map(str, path)
        torch_leaf = {"mean": "running_mean", "var": "running_var"}[leaf]
        key = ".".join([*module_path, torch_leaf])
        np.testing.assert_allclose(
            np.asarray(node[...]), torch_state[key].numpy(), rtol=1e-4, atol=1e-5, err_msg=key
        )
        checked += 1
    return checked
