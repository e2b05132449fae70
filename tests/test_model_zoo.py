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

from imagenot_jax.models import get_model, list_models
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
OURS_ONLY = {"resnet_mini"}  # CIFAR-sized ResNet for the demo: no torchvision counterpart


@functools.cache
def _registered_torchvision_models() -> list[str]:
    return [name for name in list_models() if name not in OURS_ONLY]


def _identity_case(name: str) -> dict:
    """Input size and constructor kwargs (both sides) for the eval-identity test of `name`."""
    if name.startswith("vit_"):
        image_size = 32 if name == "vit_l_16" else 64
        kwargs = {"image_size": image_size}
        return {"size": image_size, "torch_kwargs": kwargs, "our_kwargs": kwargs}
    size = {"alexnet": 63, "inception_v3": 75}.get(
        name, 32 if name.startswith(("vgg", "convnext")) else 64
    )
    return {"size": size}


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


# One per family: tracing a deep variant takes up to half a minute on CPU and tests nothing more.
FAMILY_REPRESENTATIVES = [
    "alexnet",
    "vgg11_bn",
    "inception_v3",
    "resnet_mini",
    "resnet18",
    "densenet121",
    "mobilenet_v3_small",
    "efficientnet_v2_s",
    "vit_b_32",
    "convnext_tiny",
]


@pytest.mark.parametrize("name", FAMILY_REPRESENTATIVES)
def test_train_and_eval_shapes_and_dtypes(name):
    """Abstractly (no compute): logits shape/dtype in both modes, bf16 compute with fp32 state."""
    case = _identity_case(name) if name not in OURS_ONLY else {"size": 28}
    if name == "inception_v3":
        case["size"] = 299  # its auxiliary head needs 299 px in train mode
    model = model_parity.abstract_model(
        name, num_classes=7, dtype=jnp.bfloat16, **case.get("our_kwargs", {})
    )
    state = nnx.state(model)
    x = jax.ShapeDtypeStruct((2, case["size"], case["size"], 3), jnp.float32)
    for train in (False, True):
        out, new_state = abstract_forward(model, x, train=train)
        # Models with an auxiliary head return (logits, aux_logits) in train mode.
        for logits in out if isinstance(out, tuple) else (out,):
            assert logits.shape == (2, 7)
            assert logits.dtype == jnp.bfloat16
        assert jax.tree.map(lambda a: (a.shape, a.dtype), new_state) == jax.tree.map(
            lambda a: (a.shape, a.dtype), state
        )
    for kind in (nnx.Param, nnx.BatchStat):
        assert {a.dtype for a in jax.tree.leaves(state.filter(kind))} <= {np.dtype(np.float32)}


@pytest.mark.parametrize("name", _registered_torchvision_models())
def test_eval_forward_identical_to_torchvision(name):
    model_parity.assert_eval_identity(name, **_identity_case(name))
