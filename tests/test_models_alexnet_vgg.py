"""AlexNet and VGG families: parameter counts, shapes, dropout modes, identity with torchvision.

Fast on CPU: counts and shapes are traced abstractly (nnx.eval_shape / jax.eval_shape, torch's
meta device); real weights (60-140M parameters) are built only for alexnet, vgg11, vgg11_bn and
vgg19_bn, at 10 classes and 32-64 px inputs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

# Imported explicitly so the families register even before models/__init__.py imports them.
from imagenot_jax.models import alexnet as alexnet_module  # noqa: F401
from imagenot_jax.models import get_model, list_models
from imagenot_jax.models import vgg as vgg_module  # noqa: F401
from imagenot_jax.models.alexnet import AdaptiveAvgPool2d, torch_conv_bias
from imagenot_jax.models.torch_weights import load_torch_state_dict

# torchvision parameter counts at 1000 classes (sum of p.numel() over model.parameters()).
TORCHVISION_PARAMS = {
    "alexnet": 61_100_840,
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
}
NAMES = sorted(TORCHVISION_PARAMS)
IDENTITY_NAMES = ["alexnet", "vgg11", "vgg11_bn", "vgg19_bn"]


def _input_size(name: str) -> int:
    return 64 if name == "alexnet" else 32  # px; AlexNet needs >= 63, VGG >= 32


def _abstract(name: str, **kwargs) -> nnx.Module:
    return nnx.eval_shape(lambda: get_model(name, rngs=nnx.Rngs(0), **kwargs))


def _num_params(model: nnx.Module) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_registered():
    assert set(NAMES) <= set(list_models())


# --- parameter counts ---------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_param_count_known(name):
    assert _num_params(_abstract(name, num_classes=1000)) == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name", NAMES)
def test_param_count_equals_torchvision(name):
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    with torch.device("meta"):  # shapes only, nothing allocated
        torch_model = getattr(tv.models, name)()
    expected = sum(p.numel() for p in torch_model.parameters())
    assert _num_params(_abstract(name, num_classes=1000)) == expected


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_map_one_to_one(name):
    """Every torchvision key has a same-shaped counterpart (checked abstractly, all variants)."""
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    with torch.device("meta"):
        torch_model = getattr(tv.models, name)(num_classes=10)
    model = _abstract(name, num_classes=10)
    ours = {
        ".".join(map(str, path)): tuple(node.shape)
        for path, node in nnx.iter_graph(model)
        if isinstance(node, nnx.Param | nnx.BatchStat)
    }
    renames = {"weight": "kernel", "running_mean": "mean", "running_var": "var"}
    expected = {}
    for key, value in torch_model.state_dict().items():
        *path, leaf = key.split(".")
        if leaf == "num_batches_tracked":
            continue
        shape = tuple(value.shape)
        if leaf == "weight" and len(shape) == 1:
            leaf = "scale"  # BatchNorm
        if len(shape) == 4:
            shape = (shape[2], shape[3], shape[1], shape[0])  # OIHW -> HWIO
        elif len(shape) == 2:
            shape = shape[::-1]
        expected[".".join([*path, renames.get(leaf, leaf)])] = shape
    assert ours == expected


# --- shapes and modes ---------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
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


def test_bf16_compute_shapes():
    model = _abstract("vgg11_bn", num_classes=7, dtype=jnp.bfloat16)
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    logits = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
    assert logits.dtype == jnp.bfloat16
    assert {a.dtype for a in jax.tree.leaves(nnx.state(model, nnx.Param))} == {np.dtype(np.float32)}


@pytest.mark.parametrize("name", ["alexnet", "vgg11"])
def test_dropout_active_in_train_and_off_in_eval(name):
    _, _, model = _torchvision_pair(name)  # real (torchvision) weights, no JAX init cost
    size = _input_size(name)
    x = jax.random.normal(jax.random.key(2), (2, size, size, 3))
    model.eval()
    a, b = np.asarray(model(x)), np.asarray(model(x))
    np.testing.assert_array_equal(a, b)
    model.train()
    c, d = np.asarray(model(x)), np.asarray(model(x))  # the dropout stream advances per call
    assert not np.allclose(c, d)
    assert not np.allclose(c, a)
    e = np.asarray(model(x, rngs=nnx.Rngs(dropout=5)))
    f = np.asarray(model(x, rngs=nnx.Rngs(dropout=5)))
    np.testing.assert_array_equal(e, f)  # explicit rngs: reproducible
    assert not np.allclose(e, np.asarray(model(x, rngs=nnx.Rngs(dropout=6))))
    model.eval()


# --- pieces -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_hw", "out_hw"), [((7, 7), (7, 7)), ((10, 13), (7, 7)), ((1, 1), (6, 6)), ((3, 5), (6, 6))]
)
def test_adaptive_avg_pool_matches_torch(in_hw, out_hw):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, *in_hw, 3)).astype(np.float32)
    expected = torch.nn.AdaptiveAvgPool2d(out_hw)(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    got = np.asarray(AdaptiveAvgPool2d(out_hw)(jnp.asarray(x)))
    np.testing.assert_allclose(got, expected.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)


def test_default_conv_init_is_torchs():
    conv = torch_conv_bias(64, 32, 3, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    bound = 1.0 / np.sqrt(64 * 3 * 3)
    for leaf in (conv.kernel[...], conv.bias[...]):
        assert np.abs(np.asarray(leaf)).max() <= bound
    assert np.asarray(conv.kernel[...]).std() == pytest.approx(bound / np.sqrt(3), rel=0.03)


# --- numerical identity with torchvision ----------------------------------------------------


@functools.cache
def _torchvision_pair(name: str):
    """A torchvision model (random weights, non-trivial BN state) and ours loaded from it."""
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    torch_model = getattr(tv.models, name)(num_classes=10)
    with torch.no_grad():
        for module in torch_model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
    graphdef, state = nnx.split(_abstract(name, num_classes=10))
    seeds = iter(range(1_000))

    def concrete(a):  # zeros for weights (overwritten below), distinct keys for dropout streams
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            return jax.random.key(next(seeds))
        return jnp.zeros(a.shape, a.dtype)

    model = nnx.merge(graphdef, jax.tree.map(concrete, state))
    load_torch_state_dict(model, torch_model.state_dict())
    return torch, torch_model, model


@pytest.mark.parametrize("name", IDENTITY_NAMES)
@pytest.mark.parametrize("size", [64, 40])  # 40 px: non-divisible adaptive pool windows
def test_eval_forward_matches_torchvision(name, size):
    if name == "alexnet" and size < 63:
        size = 67  # AlexNet's smallest inputs; 67 px gives a 2x2 map before the 6x6 pool
    torch, torch_model, model = _torchvision_pair(name)
    x = np.random.default_rng(0).standard_normal((2, size, size, 3)).astype(np.float32)
    torch_model.eval()
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    model.eval()
    got = np.asarray(model(jnp.asarray(x)))
    assert got.shape == expected.shape == (2, 10)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
