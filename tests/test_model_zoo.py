"""The whole zoo against torchvision: names, parameter counts, shapes/dtypes, eval-mode identity.

Every registered model with a torchvision counterpart (all but `resnet_mini`) is built by
torchvision with seeded random weights, converted with `torch_weights.load_torchvision`, and run
in eval mode on the same random batch: max |logit difference| <= 1e-4 x max |logit| (fp32).
Inputs are the smallest the architecture takes so this runs on CPU; ViTs are built at a smaller
`image_size` on *both* sides (their own patch grid, no resized position embedding).
Family-specific checks (train mode, init, dropout) live in the tests/test_models_*.py files.
"""

from __future__ import annotations

import csv
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from imagenot_jax.models import get_model, list_models, model_info
from imagenot_jax.transfer import in_head
from tests.helpers import abstract_forward

import model_parity

# The ImageNot study's nine architectures and their families, by torchvision's names.
TORCHVISION_NAMES = {
    "alexnet",
    *(f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")),
    "inception_v3",
    *(f"resnet{d}" for d in (18, 34, 50, 101, 152)),
    *(f"densenet{d}" for d in (121, 161, 169, 201)),
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    *(f"efficientnet_v2_{s}" for s in "sml"),
    "vit_b_16",
    "vit_b_32",
    "vit_l_16",
    *(f"convnext_{s}" for s in ("tiny", "small", "base", "large")),
}


@functools.cache
def _registered_torchvision_models() -> list[str]:
    return [name for name in list_models() if model_info(name).torchvision]


def _input_size(name: str, train: bool = False) -> int:
    """The smallest input `name` takes (in train mode) whose last feature map is still 2x2, so
    pooling and flattening are exercised: small enough for CPU, from the registry's metadata."""
    info = model_info(name)
    least = info.min_train_input_size if train else info.min_input_size
    return max(least, 2 * info.reduction)


def _size_kwargs(name: str, size: int) -> dict:
    """Constructor kwargs for inputs of `size` px: fixed-size models (ViT) are built at it, with
    their own patch grid (no resized position embedding), on both sides of a comparison."""
    return {"image_size": size} if model_info(name).fixed_input_size else {}


def test_every_study_model_is_registered():
    missing = TORCHVISION_NAMES - set(list_models())
    assert not missing, f"not registered: {sorted(missing)}"


def test_unknown_model_error_names_it_and_lists_valid_ones():
    with pytest.raises(ValueError, match="nope") as err:
        get_model("nope", num_classes=10, rngs=nnx.Rngs(0))
    message = str(err.value)
    assert "\n" not in message
    assert all(name in message for name in list_models())


@pytest.mark.parametrize("name", _registered_torchvision_models())
def test_param_count_equals_torchvision(name):
    assert model_parity.param_count(name) == model_parity.torchvision_param_count(name)


def test_param_counts_equal_published_table(shared_data):
    """torchvision's published counts (../shared/data/torchvision_imagenet1k.csv)."""
    with open(shared_data / "torchvision_imagenet1k.csv", newline="") as f:
        published = {row["model"]: int(row["num_params"]) for row in csv.DictReader(f)}
    names = [name for name in _registered_torchvision_models() if name in published]
    assert set(TORCHVISION_NAMES) <= set(names)
    mismatched = {
        name: (model_parity.param_count(name), published[name])
        for name in names
        if model_parity.param_count(name) != published[name]
    }
    assert not mismatched, f"(ours, published): {mismatched}"


def _str_path(path: tuple) -> tuple[str, ...]:
    return tuple(map(str, path))


@functools.cache
def _abstract(name: str, num_classes: int, size: int) -> nnx.Module:
    """`name` with bf16 compute, abstractly (shapes only), built for inputs of `size` px."""
    return model_parity.abstract_model(
        name, num_classes=num_classes, dtype=jnp.bfloat16, **_size_kwargs(name, size)
    )


@pytest.mark.parametrize("name", list_models())
def test_declared_head_is_every_variable_that_depends_on_num_classes(name):
    """The registry's `head` (what transfer replaces) is exactly the variables whose shape
    changes with the number of classes."""
    size = _input_size(name)
    a, b = ({_str_path(p): v.shape for p, v in nnx.state(_abstract(name, n, size)).flat_state()}
            for n in (7, 8))  # fmt: skip
    head = model_info(name).head_paths
    assert {p for p in a if a[p] != b[p]} == {p for p in a if in_head(p, head)}
    for prefix in head:  # each declared name is a module of the model
        assert any(in_head(p, (prefix,)) for p in a), prefix


@pytest.mark.parametrize("name", list_models())
def test_outputs_shapes_and_dtypes_in_both_modes(name):
    """Abstractly (no compute), at the smallest size each mode takes: logits, auxiliary logits
    and features, bf16 compute with fp32 state that keeps its shapes."""
    for train in (False, True):
        size = _input_size(name, train)
        model = _abstract(name, 7, size)
        state = nnx.state(model)
        x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
        out, new_state = abstract_forward(model, x, train=train)
        assert (out.logits.shape, out.logits.dtype) == ((2, 7), jnp.bfloat16)
        assert out.features.ndim == 2 and out.features.shape[0] == 2
        assert out.features.dtype in (jnp.bfloat16, jnp.float32)  # ViT: fp32 residual stream
        has_aux = train and "AuxLogits.fc" in model_info(name).head
        assert (out.aux_logits is not None) == has_aux
        if has_aux:
            assert (out.aux_logits.shape, out.aux_logits.dtype) == ((2, 7), jnp.bfloat16)
        assert jax.tree.map(lambda a: (a.shape, a.dtype), new_state) == jax.tree.map(
            lambda a: (a.shape, a.dtype), state
        )
        for kind in (nnx.Param, nnx.BatchStat):
            assert {a.dtype for a in jax.tree.leaves(state.filter(kind))} <= {np.dtype("float32")}


@pytest.mark.parametrize("name", _registered_torchvision_models())
def test_eval_forward_identical_to_torchvision(name):
    size = _input_size(name)
    kwargs = _size_kwargs(name, size)
    model_parity.assert_eval_identity(name, size, torch_kwargs=kwargs, our_kwargs=kwargs)
