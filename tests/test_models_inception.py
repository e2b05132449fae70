"""Inception-v3: parameter counts, init, and numerical identity with torchvision's Inception3
(eval logits; train-mode logits, auxiliary logits and BatchNorm running statistics).

Sizes: eval mode takes >= 75 px (Mixed_7a's 3x3/2 conv needs a 3x3 map); train mode with the
auxiliary head needs >= 299 px (its 5x5/3 average pool and 5x5 conv need Mixed_6e's map to be
17x17), in torchvision as here. The whole-model train check therefore runs at 299 px (~25 s on a
2-core CPU, marked slow); the auxiliary head alone is checked in train mode by default.
"""

from __future__ import annotations

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from imagenot_jax.models import inception
from imagenot_jax.models.registry import list_models
from imagenot_jax.models.torch_weights import load_torchvision
from tests.helpers import abstract_forward

import model_parity

TORCHVISION_PARAMS = 27_161_264  # at 1000 classes, aux_logits=True (its weights' meta)
TORCHVISION_PARAMS_NO_AUX = 23_834_568  # aux_logits=False


def test_registered():
    assert "inception_v3" in list_models()


def test_without_aux_logits():
    """aux_logits=False builds no AuxLogits (torchvision's count) and train mode returns no
    auxiliary logits."""
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    with torch.device("meta"):
        torch_model = tv.models.inception_v3(aux_logits=False, init_weights=False)
    assert sum(p.numel() for p in torch_model.parameters()) == TORCHVISION_PARAMS_NO_AUX
    model = model_parity.abstract_model("inception_v3", aux_logits=False)
    assert model.AuxLogits is None
    assert model_parity.num_params(model) == TORCHVISION_PARAMS_NO_AUX
    x = jax.ShapeDtypeStruct((2, 75, 75, 3), jnp.float32)  # smallest size: no aux head to fit
    out, _ = abstract_forward(model, x)
    assert out.logits.shape == (2, 1000) and out.aux_logits is None


def test_bf16_train_outputs_and_fp32_state():
    """bf16 compute: train mode returns logits and aux_logits in bf16; params and BN statistics
    stay fp32; train mode with the auxiliary head refuses inputs below 299 px."""
    model = model_parity.abstract_model("inception_v3", num_classes=7, dtype=jnp.bfloat16)
    assert model.dropout.rate == 0.5 and not model.transform_input  # torchvision's defaults
    conv = model.Mixed_6b.branch7x7_2.conv  # (1, 7) kernel, padding (0, 3) as torch's
    assert conv.kernel.shape == (1, 7, 128, 128) and conv.padding == ((0, 0), (3, 3))
    with pytest.raises(ValueError, match="train"):  # the mode must be set first
        model(np.zeros((1, 75, 75, 3), np.float32))
    state = nnx.state(model)
    x = jax.ShapeDtypeStruct((2, 299, 299, 3), jnp.float32)
    out, new_state = abstract_forward(model, x)
    assert out.logits.shape == out.aux_logits.shape == (2, 7)
    assert out.logits.dtype == out.aux_logits.dtype == jnp.bfloat16
    assert out.features.shape == (2, 2048)
    shapes = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)  # noqa: E731
    assert shapes(new_state) == shapes(state)
    float_dtypes = {a.dtype for a in jax.tree.leaves(nnx.state(model, nnx.Param, nnx.BatchStat))}
    assert float_dtypes == {np.dtype(np.float32)}
    with pytest.raises(ValueError, match="299"):
        abstract_forward(model, jax.ShapeDtypeStruct((2, 298, 298, 3), jnp.float32))


def test_init_matches_torchvision_scheme():
    """trunc_normal_(std, a=-2, b=2) (absolute bounds) on every conv and linear: std 0.1, but
    0.001 for AuxLogits.fc; AuxLogits.conv1 gets 0.1 too (torchvision's stddev=0.01 there is set
    on the wrapper and never read). BN: weight 1, bias 0, eps 1e-3; linear biases keep torch's
    U(+-1/sqrt(fan_in))."""
    kw = dict(dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    aux = inception.InceptionAux(768, 10, **kw)  # eager init: ~5 s on 2 CPU cores
    assert aux.conv0.conv.bias is None
    assert np.asarray(aux.conv0.conv.kernel[...]).std() == pytest.approx(0.1, rel=0.02)
    assert np.asarray(aux.conv1.conv.kernel[...]).std() == pytest.approx(0.1, rel=0.02)
    assert np.asarray(aux.fc.kernel[...]).std() == pytest.approx(0.001, rel=0.05)
    assert np.abs(np.asarray(aux.fc.bias[...])).max() <= 1 / np.sqrt(768)
    bn = aux.conv1.bn
    assert np.all(np.asarray(bn.scale[...]) == 1) and np.all(np.asarray(bn.bias[...]) == 0)
    assert (bn.epsilon, bn.momentum) == (1e-3, 0.9)  # torch's eps=0.001, momentum 0.1
    # The bounds are absolute (+-2), not +-2 std: at std 1 the samples are cut at +-2.
    wide = np.asarray(inception.trunc_normal_init(1.0)(jax.random.key(0), (100_000,)))
    assert np.abs(wide).max() <= 2.0 and wide.std() == pytest.approx(0.88, abs=0.01)


def test_transform_input_matches_torchvision():
    tv = pytest.importorskip("torchvision")
    x, x_torch = model_parity.random_input((2, 5, 5, 3))
    flag = types.SimpleNamespace(transform_input=True)  # all _transform_input reads of `self`
    expected = tv.models.Inception3._transform_input(flag, x_torch).numpy().transpose(0, 2, 3, 1)
    got = inception._transform_input(jnp.asarray(x))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@functools.cache
def _pair() -> tuple:
    """Seeded torchvision Inception3 (transform_input on, dropout 0 so train mode is
    deterministic) and our converted copy; built once for this module."""
    kwargs = {"transform_input": True, "dropout": 0.0}
    torch_model = model_parity.torchvision_model("inception_v3", **kwargs)
    return torch_model, model_parity.converted("inception_v3", torch_model, **kwargs)


def test_eval_forward_matches_torchvision_smallest_size():
    """75 px, with transform_input=True (the default path is the zoo-wide identity test's)."""
    model_parity.assert_same_logits(*_pair(), 75)


def _distinct_batch(batch: int, size: int, channels: int = 3) -> tuple[np.ndarray, object]:
    """Random images made clearly distinct (per-image scale and colour offset). With near-identical
    noise images the BatchNorm after AuxLogits.conv1 (a 1x1 map: `batch` values per channel)
    normalises near-equal values, and fp32 rounding alone moves torch's own aux logits by ~4e-4
    of their max (vs float64)."""
    torch = pytest.importorskip("torch")
    x, _ = model_parity.random_input((batch, size, size, channels))
    offsets = np.random.default_rng(1).standard_normal((batch, 1, 1, channels))
    x = (x * (0.5 + np.arange(batch))[:, None, None, None] + offsets).astype(np.float32)
    return x, torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _assert_stats_close(model: nnx.Module, torch_model, tolerance: float) -> int:
    """Per tensor: max |diff| <= tolerance * max |torch value| (the logits' criterion)."""
    torch_state, checked = torch_model.state_dict(), 0
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.BatchStat):
            *module_path, leaf = map(str, path)
            key = ".".join([*module_path, {"mean": "running_mean", "var": "running_var"}[leaf]])
            want = torch_state[key].numpy()
            error = np.abs(np.asarray(node[...]) - want).max()
            assert error <= tolerance * np.abs(want).max(), key
            checked += 1
    return checked


def test_aux_head_train_matches_torchvision():
    """InceptionAux alone in train mode on a 17x17 map (what Mixed_6e gives at 299 px): same
    aux logits and running statistics as torchvision's."""
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    torch_aux = tv.models.inception.InceptionAux(768, 10)
    with torch.no_grad():
        for module in torch_aux.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
    kw = dict(dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    aux = inception.InceptionAux(768, 10, **kw)
    load_torchvision(aux, torch_aux.state_dict())
    x, x_torch = _distinct_batch(4, 17, 768)
    torch_aux.train()
    aux.train()
    with torch.no_grad():
        expected = torch_aux(x_torch).numpy()
    model_parity.assert_logits_match(nnx.jit(lambda m, x: m(x))(aux, x), expected)
    assert model_parity.assert_running_stats_match(aux, torch_aux) == 4


@pytest.mark.slow
def test_train_forward_and_running_stats_match_torchvision():
    """One train-mode forward at 299 px (the smallest size the aux head takes), 4 images:
    the same logits, aux logits, and running statistics (momentum 0.1, unbiased running_var)."""
    torch = pytest.importorskip("torch")
    torch_model, model = _pair()
    x, x_torch = _distinct_batch(4, 299)
    torch_model.train()
    model.train()
    with torch.no_grad():
        expected = torch_model(x_torch)
    out = model_parity.jit_apply(model, x)
    model_parity.assert_logits_match(out.logits, expected.logits.numpy())
    model_parity.assert_logits_match(out.aux_logits, expected.aux_logits.numpy())
    # Every BN but the one after AuxLogits.conv1 within the shared helper's elementwise
    # tolerance; that one normalises 4 values per channel of magnitude ~3 whose mean can be
    # ~0.01, where fp32 rounding (torch's own, vs float64) exceeds the helper's atol of 1e-5.
    checked = 0
    for name, child in torch_model.named_children():
        if name != "AuxLogits" and any(True for _ in child.buffers()):
            checked += model_parity.assert_running_stats_match(getattr(model, name), child)
    checked += model_parity.assert_running_stats_match(
        model.AuxLogits.conv0, torch_model.AuxLogits.conv0
    )
    checked += _assert_stats_close(model.AuxLogits.conv1, torch_model.AuxLogits.conv1, 1e-4)
    assert checked == 2 * sum(isinstance(m, torch.nn.BatchNorm2d) for m in torch_model.modules())
