"""DenseNet family: parameter counts, init, and numerical identity with torchvision.

Fast on CPU: parameter counts are taken from abstract models (nnx.eval_shape); real weights are
only built by loading torchvision's into zeros, for densenet121 and densenet161. The torchvision
comparisons skip where torchvision is not installed; the hard-coded counts do not need it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import imagenot_jax.models.densenet as densenet  # registers the family
from imagenot_jax.models.registry import get_model, list_models

# torchvision parameter counts at 1000 classes (sum of p.numel() over model.parameters()).
TORCHVISION_PARAMS = {
    "densenet121": 7_978_856,
    "densenet161": 28_681_000,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
}


def _abstract(name: str, **kwargs) -> nnx.Module:
    return nnx.eval_shape(lambda: get_model(name, rngs=nnx.Rngs(0), **kwargs))


def _num_params(model: nnx.Module) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@functools.cache
def _abstract_count(name: str) -> int:
    """Parameter count at 1000 classes, traced once per name (tracing takes seconds)."""
    return _num_params(_abstract(name, num_classes=1000))


def test_registered():
    assert set(TORCHVISION_PARAMS) <= set(list_models())


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_param_count_known(name):
    assert _abstract_count(name) == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_param_count_equals_torchvision(name):
    tv = pytest.importorskip("torchvision")
    torch = pytest.importorskip("torch")
    with torch.device("meta"):  # shapes only: skips torch's (slow) random init
        torch_model = getattr(tv.models, name)()
    expected = sum(p.numel() for p in torch_model.parameters())
    assert expected == TORCHVISION_PARAMS[name]
    assert _abstract_count(name) == expected


def test_forward_shapes_and_dtypes():
    graphdef, state = nnx.split(_abstract("densenet121", num_classes=7, dtype=jnp.bfloat16))
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)

    def forward(state, x):
        model = nnx.merge(graphdef, state)
        model.train()
        return model(x), nnx.state(model)

    logits, new_state = jax.eval_shape(forward, state, x)  # train mode (eval: identity tests)
    assert logits.shape == (2, 7)
    assert logits.dtype == jnp.bfloat16
    assert jax.tree.map(lambda a: (a.shape, a.dtype), new_state) == jax.tree.map(
        lambda a: (a.shape, a.dtype), state
    )
    dtypes = {x.dtype for x in jax.tree.leaves(state)}
    assert dtypes == {np.dtype(np.float32)}  # params and BN stats stay fp32


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
    forward = nnx.jit(lambda model, x: model(x))
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
    densenet.load_torchvision_densenet(model, state)
    assert np.all(np.asarray(model.features.denseblock1.denselayer1.norm2.var[...]) == 3.0)


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
        torch_model.classifier.bias.normal_(0.0, 0.1)  # torchvision inits it to 0: test the load
    model = _abstract(name, num_classes=1000)
    graphdef, state = nnx.split(model)
    # numpy placeholders (no per-shape jax dispatch); the loader replaces every one of them.
    model = nnx.merge(graphdef, jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), state))
    densenet.load_torchvision_densenet(model, torch_model.state_dict())
    return torch, torch_model, model


@nnx.jit
def _jit_forward(model: nnx.Module, x: jax.Array) -> jax.Array:
    """One compile of the whole net: much faster on CPU than eager per-op dispatch."""
    return model(x)


def _random_input(torch, shape_nhwc):
    x = np.random.default_rng(0).standard_normal(shape_nhwc).astype(np.float32)
    return x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


@pytest.mark.parametrize("name", ["densenet121", "densenet161"])
def test_eval_forward_matches_torchvision(name):
    torch, torch_model, model = _torchvision_pair(name)
    x, x_torch = _random_input(torch, (1, 64, 64, 3))
    torch_model.eval()
    with torch.no_grad():
        expected = torch_model(x_torch).numpy()
    model.eval()
    got = np.asarray(_jit_forward(model, jnp.asarray(x)))
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_train_forward_and_running_stats_match_torchvision():
    """One train-mode step at 32 px: same logits and same running stats (unbiased running_var)."""
    torch, torch_model, model = _torchvision_pair("densenet121")
    # 8 images: the last block is 1x1 px, so each BN there normalises 8 values per channel; with
    # 4, float32 rounding alone (torch fp32 vs fp64) moves the logits by ~1e-4 of their max.
    x, x_torch = _random_input(torch, (8, 32, 32, 3))
    torch_model.train()
    with torch.no_grad():
        expected = torch_model(x_torch).numpy()
    model.train()
    got = np.asarray(_jit_forward(model, jnp.asarray(x)))
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    torch_state = torch_model.state_dict()
    checked = 0
    for path, bn in nnx.iter_graph(model):
        if not isinstance(bn, densenet.BatchNorm):
            continue
        key = ".".join(map(str, path))
        np.testing.assert_allclose(
            bn.mean[...], torch_state[f"{key}.running_mean"].numpy(), rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(
            bn.var[...], torch_state[f"{key}.running_var"].numpy(), rtol=1e-4, atol=1e-5
        )
        checked += 1
    assert checked == 1 + 2 * (6 + 12 + 24 + 16) + 3 + 1  # norm0, dense layers, transitions, norm5
