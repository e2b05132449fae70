"""Model registry and ResNet family: shapes, parameter counts, identity with torchvision.

Fast on CPU: the big variants are only traced (nnx.eval_shape / jax.eval_shape); real weights are
built for resnet_mini, resnet18 and resnet50 only. The torchvision comparisons skip where
torchvision is not installed; the hard-coded counts below do not need it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from imagenot_jax.models import get_model, list_models
from imagenot_jax.models.resnet import BasicBlock, Bottleneck, ResNet
from imagenot_jax.models.torch_weights import load_torchvision_resnet

# torchvision parameter counts at 1000 classes (sum of p.numel() over model.parameters()).
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


def _input_size(name: str) -> int:
    return 28 if name == "resnet_mini" else 64  # px


def _abstract(name: str, **kwargs) -> nnx.Module:
    return nnx.eval_shape(lambda: get_model(name, rngs=nnx.Rngs(0), **kwargs))


def _num_params(model: nnx.Module) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _batch_stats(model: nnx.Module) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]


@functools.cache
def _real(name: str, num_classes: int = 10, dtype=jnp.float32) -> tuple[nnx.GraphDef, nnx.State]:
    """Real random init, built once per (name, classes, dtype); tests merge a fresh copy."""
    return nnx.split(get_model(name, num_classes=num_classes, dtype=dtype, rngs=nnx.Rngs(0)))


def _fresh(name: str, **kwargs) -> nnx.Module:
    graphdef, state = _real(name, **kwargs)
    return nnx.merge(graphdef, jax.tree.map(jnp.array, state))


# --- registry -----------------------------------------------------------------------------


def test_list_models_sorted_and_complete():
    names = list_models()
    assert names == sorted(names)
    assert set(TORCHVISION_PARAMS) | {"resnet_mini"} <= set(names)


def test_unknown_model_error_names_it_and_lists_valid_ones():
    with pytest.raises(ValueError, match="nope") as err:
        get_model("nope", num_classes=10, rngs=nnx.Rngs(0))
    message = str(err.value)
    assert "\n" not in message
    assert all(name in message for name in list_models())


# --- shapes and modes ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list_models())
def test_forward_shapes_eval_and_train(name):
    graphdef, state = nnx.split(_abstract(name, num_classes=7))
    size = _input_size(name)
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)

    def forward(state, x, train):
        model = nnx.merge(graphdef, state)
        model.train() if train else model.eval()
        return model(x), nnx.state(model)

    for train in (False, True):
        logits, new_state = jax.eval_shape(functools.partial(forward, train=train), state, x)
        assert logits.shape == (2, 7)
        assert logits.dtype == jnp.float32
        assert jax.tree.map(lambda a: (a.shape, a.dtype), new_state) == jax.tree.map(
            lambda a: (a.shape, a.dtype), state
        )


@pytest.mark.parametrize("name", ["resnet_mini", "resnet18"])
def test_train_mode_updates_batch_stats_and_eval_does_not(name):
    model = _fresh(name)
    size = _input_size(name)
    x = jax.random.normal(jax.random.key(1), (2, size, size, 3))
    before = _batch_stats(model)
    model.eval()
    assert model(x).shape == (2, 10)
    assert all(np.array_equal(a, b) for a, b in zip(before, _batch_stats(model), strict=True))
    model.train()
    assert model(x).shape == (2, 10)
    after = _batch_stats(model)
    assert all(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_bf16_compute_keeps_fp32_params_and_stats():
    model = _fresh("resnet_mini", dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(1), (2, 28, 28, 3))
    for mode in (model.train, model.eval):
        mode()
        logits = model(x)
        assert logits.dtype == jnp.bfloat16
        assert bool(jnp.all(jnp.isfinite(logits)))
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {np.dtype(np.float32)}
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.BatchStat))} == {
        np.dtype(np.float32)
    }


# --- initialisation -----------------------------------------------------------------------


def test_init_matches_torchvision_scheme():
    model = get_model("resnet_mini", num_classes=10, rngs=nnx.Rngs(0), widths=(32, 64, 128))
    kernel = np.asarray(model.layer3[0].conv2.kernel[...])  # HWIO 3x3x128x128
    fan_out = 3 * 3 * 128
    assert kernel.std() == pytest.approx(np.sqrt(2.0 / fan_out), rel=0.02)
    bound = 1.0 / np.sqrt(128)  # fc fan_in
    for leaf in (model.fc.kernel[...], model.fc.bias[...]):
        assert np.abs(np.asarray(leaf)).max() <= bound
    assert np.abs(np.asarray(model.fc.kernel[...])).max() > 0.9 * bound
    assert np.all(np.asarray(model.bn1.scale[...]) == 1)
    assert np.all(np.asarray(model.bn1.bias[...]) == 0)


def test_zero_init_residual():
    model = get_model("resnet_mini", num_classes=10, rngs=nnx.Rngs(0), zero_init_residual=True)
    for stage in (model.layer1, model.layer2, model.layer3):
        assert np.all(np.asarray(stage[0].bn2.scale[...]) == 0)
        assert np.all(np.asarray(stage[0].bn1.scale[...]) == 1)


# --- parameter counts ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_param_count_known(name):
    assert _num_params(_abstract(name, num_classes=1000)) == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_param_count_equals_torchvision(name):
    tv = pytest.importorskip("torchvision")
    torch_model = getattr(tv.models, name)()
    expected = sum(p.numel() for p in torch_model.parameters())
    assert _num_params(_abstract(name, num_classes=1000)) == expected


@pytest.mark.parametrize(
    ("tv_name", "block", "depths", "kwargs"),
    [
        ("resnext50_32x4d", Bottleneck, (3, 4, 6, 3), {"groups": 32, "width_per_group": 4}),
        ("wide_resnet50_2", Bottleneck, (3, 4, 6, 3), {"width_per_group": 128}),
    ],
)
def test_grouped_and_wide_variants_match_torchvision_counts(tv_name, block, depths, kwargs):
    tv = pytest.importorskip("torchvision")
    expected = sum(p.numel() for p in getattr(tv.models, tv_name)().parameters())
    model = nnx.eval_shape(lambda: ResNet(block, depths, rngs=nnx.Rngs(0), **kwargs))
    assert _num_params(model) == expected


def test_widths_are_arguments():
    model = nnx.eval_shape(
        lambda: ResNet(BasicBlock, (1, 1), widths=(8, 16), num_classes=3, rngs=nnx.Rngs(0))
    )
    assert model.layer2[0].conv2.kernel.shape == (3, 3, 16, 16)
    assert model.fc.kernel.shape == (16, 3)


# --- numerical identity with torchvision ----------------------------------------------------


def _torchvision_pair(name: str):
    """A torchvision model with non-trivial BN state, and our model loaded from it."""
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    torch_model = getattr(tv.models, name)()
    with torch.no_grad():
        for module in torch_model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
    model = nnx.eval_shape(lambda: get_model(name, num_classes=1000, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    model = nnx.merge(graphdef, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), state))
    load_torchvision_resnet(model, torch_model.state_dict())
    return torch, torch_model, model


def _random_input(torch, shape_nhwc):
    x = np.random.default_rng(0).standard_normal(shape_nhwc).astype(np.float32)
    return x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_eval_forward_matches_torchvision(name):
    torch, torch_model, model = _torchvision_pair(name)
    x, x_torch = _random_input(torch, (1, 64, 64, 3))
    torch_model.eval()
    with torch.no_grad():
        expected = torch_model(x_torch).numpy()
    model.eval()
    got = np.asarray(model(jnp.asarray(x)))
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_train_forward_and_running_stats_match_torchvision():
    """One train-mode step: same logits and same running stats (torch's unbiased running_var)."""
    torch, torch_model, model = _torchvision_pair("resnet18")
    x, x_torch = _random_input(torch, (4, 64, 64, 3))
    torch_model.train()
    with torch.no_grad():
        expected = torch_model(x_torch).numpy()
    model.train()
    got = np.asarray(model(jnp.asarray(x)))
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    ours = {
        "bn1": model.bn1,
        "layer4.1.bn2": model.layer4[1].bn2,  # 2x2 px x 4 images: n/(n-1) = 16/15
        "layer2.0.downsample.1": model.layer2[0].downsample[1],
    }
    torch_state = torch_model.state_dict()
    for key, bn in ours.items():
        np.testing.assert_allclose(
            bn.mean[...], torch_state[f"{key}.running_mean"].numpy(), rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(
            bn.var[...], torch_state[f"{key}.running_var"].numpy(), rtol=1e-4, atol=1e-5
        )


def test_loader_is_strict():
    _, torch_model, model = _torchvision_pair("resnet18")
    state_dict = dict(torch_model.state_dict())
    del state_dict["layer1.0.bn1.running_var"]
    with pytest.raises(ValueError, match=r"layer1\.0\.bn1\.var"):
        load_torchvision_resnet(model, state_dict)
    state_dict = dict(torch_model.state_dict())
    state_dict["layer5.0.conv1.weight"] = state_dict["layer1.0.conv1.weight"]
    with pytest.raises(ValueError, match="layer5"):
        load_torchvision_resnet(model, state_dict)
