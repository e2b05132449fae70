"""ResNet family: modes, init, variants, a train-mode step against torchvision, strict loading.

Parameter counts and eval-mode identity of every variant are in test_model_zoo.py. Real weights
are built for resnet_mini and resnet18 only; the torchvision comparisons skip without torchvision.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from imagenot_jax.models import get_model
from imagenot_jax.models.resnet import BasicBlock, Bottleneck, ResNet
from imagenot_jax.models.torch_weights import load_torchvision

import model_parity


def _input_size(name: str) -> int:
    return 28 if name == "resnet_mini" else 64  # px


def _batch_stats(model: nnx.Module) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]


@functools.cache
def _real(name: str, num_classes: int = 10, dtype=jnp.float32) -> tuple[nnx.GraphDef, nnx.State]:
    """Real random init, built once per (name, classes, dtype); tests merge a fresh copy."""
    return nnx.split(get_model(name, num_classes=num_classes, dtype=dtype, rngs=nnx.Rngs(0)))


def _fresh(name: str, **kwargs) -> nnx.Module:
    graphdef, state = _real(name, **kwargs)
    return nnx.merge(graphdef, jax.tree.map(jnp.array, state))


@pytest.mark.parametrize("name", ["resnet_mini", "resnet18"])
def test_train_mode_updates_batch_stats_and_eval_does_not(name):
    model = _fresh(name)
    size = _input_size(name)
    x = jax.random.normal(jax.random.key(1), (2, size, size, 3))
    before = _batch_stats(model)
    model.eval()
    assert model(x).logits.shape == (2, 10)
    assert all(np.array_equal(a, b) for a, b in zip(before, _batch_stats(model), strict=True))
    model.train()
    assert model(x).logits.shape == (2, 10)
    after = _batch_stats(model)
    assert all(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_bf16_compute_keeps_fp32_params_and_stats():
    model = _fresh("resnet_mini", dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(1), (2, 28, 28, 3))
    for mode in (model.train, model.eval):
        mode()
        logits = model(x).logits
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
    assert model_parity.num_params(model) == expected


def test_widths_are_arguments():
    model = nnx.eval_shape(
        lambda: ResNet(BasicBlock, (1, 1), widths=(8, 16), num_classes=3, rngs=nnx.Rngs(0))
    )
    assert model.layer2[0].conv2.kernel.shape == (3, 3, 16, 16)
    assert model.fc.kernel.shape == (16, 3)


# --- numerical identity with torchvision ----------------------------------------------------


def test_train_forward_and_running_stats_match_torchvision():
    """One train-mode step: same logits and same running stats (torch's unbiased running_var)."""
    torch = pytest.importorskip("torch")
    torch_model = model_parity.torchvision_model("resnet18")
    model = model_parity.converted("resnet18", torch_model)
    x, x_torch = model_parity.random_input((4, 64, 64, 3))  # layer4: 2x2 px x 4 = 16 values
    torch_model.train()
    with torch.no_grad():
        expected = torch_model(x_torch).numpy()
    model.train()
    model_parity.assert_logits_match(model_parity.jit_logits(model, x), expected)
    assert model_parity.assert_running_stats_match(model, torch_model) == 2 * 20  # mean, var


def test_loader_is_strict():
    torch_model = model_parity.torchvision_model("resnet18")
    model = model_parity.converted("resnet18", torch_model)
    state_dict = dict(torch_model.state_dict())
    del state_dict["layer1.0.bn1.running_var"]
    with pytest.raises(ValueError, match=r"layer1\.0\.bn1\.var"):
        load_torchvision(model, state_dict)
    state_dict = dict(torch_model.state_dict())
    state_dict["layer5.0.conv1.weight"] = state_dict["layer1.0.conv1.weight"]
    with pytest.raises(ValueError, match="layer5"):
        load_torchvision(model, state_dict)
    state_dict = dict(torch_model.state_dict())
    state_dict["fc.weight"] = state_dict["fc.weight"][:10]
    with pytest.raises(ValueError, match=r"fc\.weight.*shape"):
        load_torchvision(model, state_dict)
