"""DenseNet family: init, dropout, legacy key names, a train-mode step against torchvision.

Parameter counts and eval-mode identity of every variant are in test_model_zoo.py; the
torchvision comparisons skip where torchvision is not installed.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

import imagenot_jax.models.densenet as densenet  # registers the family
from imagenot_jax.models.torch_weights import load_torchvision

import model_parity


def test_init_matches_torchvision_scheme():
    model = densenet.DenseNet(8, (2, 2), 16, num_classes=10, rngs=nnx.Rngs(0))
    kernel = np.asarray(model.features.denseblock2.denselayer2.conv2.kernel[...])  # 3x3x32x8
    fan_in = 3 * 3 * 32  # kaiming_normal_ default mode: fan_in
    assert kernel.std() == pytest.approx(np.sqrt(2.0 / fan_in), rel=0.1)
    stem = np.asarray(model.features.conv0.kernel[...])  # 7x7x3x16
    assert stem.std() == pytest.approx(np.sqrt(2.0 / (7 * 7 * 3)), rel=0.1)
    in_features = model.features.num_features
    assert in_features == ((16 + 2 * 8) // 2) + 2 * 8
    bound = 1.0 / np.sqrt(in_features)
    assert np.abs(np.asarray(model.classifier.kernel[...])).max() <= bound
    assert np.all(np.asarray(model.classifier.bias[...]) == 0)
    assert np.all(np.asarray(model.features.norm5.scale[...]) == 1)
    assert np.all(np.asarray(model.features.norm5.bias[...]) == 0)


def test_dropout_only_in_train_mode():
    model = densenet.DenseNet(8, (2, 2), 16, drop_rate=0.5, num_classes=3, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    forward = nnx.jit(lambda model, x: model(x).logits)
    model.eval()
    np.testing.assert_array_equal(forward(model, x), forward(model, x))
    model.train()
    a, b = forward(model, x), forward(model, x)  # the Rngs stream advances between calls
    assert a.shape == (2, 3)
    assert not np.array_equal(a, b)
    assert model.features.denseblock1.denselayer1.dropout.deterministic is False


def test_legacy_key_names_load():
    model = densenet.DenseNet(8, (1,), 16, num_classes=3, rngs=nnx.Rngs(0))
    state = {
        "features.conv0.weight": np.ones((16, 3, 7, 7), np.float32),
        "classifier.weight": np.ones((3, 24), np.float32),
        "classifier.bias": np.ones((3,), np.float32),
    }
    for prefix, n in (("features.norm0", 16), ("features.norm5", 24)):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            state[f"{prefix}.{leaf}"] = np.full((n,), 2.0, np.float32)
    layer = "features.denseblock1.denselayer1"
    for idx, n in (("1", 16), ("2", 32)):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            state[f"{layer}.norm.{idx}.{leaf}"] = np.full((n,), 3.0, np.float32)
    state[f"{layer}.conv.1.weight"] = np.ones((32, 16, 1, 1), np.float32)
    state[f"{layer}.conv.2.weight"] = np.ones((8, 32, 3, 3), np.float32)
    load_torchvision(model, state)
    assert np.all(np.asarray(model.features.denseblock1.denselayer1.norm2.var[...]) == 3.0)


def test_train_forward_and_running_stats_match_torchvision():
    """One train-mode step at 32 px: same logits and same running stats (unbiased running_var)."""
    torch = pytest.importorskip("torch")
    torch_model = model_parity.torchvision_model("densenet121")
    model = model_parity.converted("densenet121", torch_model)
    # 8 images: the last block is 1x1 px, so each BN there normalises 8 values per channel; with
    # 4, float32 rounding alone (torch fp32 vs fp64) moves the logits by ~1e-4 of their max.
    x, x_torch = model_parity.random_input((8, 32, 32, 3))
    torch_model.train()
    with torch.no_grad():
        expected = torch_model(x_torch).numpy()
    model.train()
    model_parity.assert_logits_match(model_parity.jit_logits(model, x), expected)
    checked = model_parity.assert_running_stats_match(model, torch_model)
    assert checked == 2 * (
        1 + 2 * (6 + 12 + 24 + 16) + 3 + 1
    )  # mean+var: norm0, layers, trans, norm5
