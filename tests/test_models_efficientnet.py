"""EfficientNetV2 family: parameter counts, init, stochastic depth, and numerical identity with
torchvision (eval mode, and one train-mode step with its BN running statistics).

Fast on CPU: whole models are only built abstractly (nnx.eval_shape) and filled from a seeded
torchvision model; real initialisers run only for single layers and blocks. The torchvision
comparisons skip where torchvision is not installed; the hard-coded counts do not need it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import imagenot_jax.models.efficientnet as effnet  # registers the family
from imagenot_jax.models.registry import list_models
from tests.helpers import abstract_forward

import model_parity

# torchvision parameter counts at 1000 classes (its weights' meta "num_params").
TORCHVISION_PARAMS = {
    "efficientnet_v2_s": 21_458_488,
    "efficientnet_v2_m": 54_139_356,
    "efficientnet_v2_l": 118_515_272,
}
NAMES = sorted(TORCHVISION_PARAMS)
KW = dict(dtype=jnp.float32, param_dtype=jnp.float32)


@functools.cache
def _abstract(name: str) -> nnx.Module:
    """Default-argument model at 1000 classes, traced once per name (tracing takes seconds)."""
    return model_parity.abstract_model(name)


def _blocks(model) -> list:
    """The (Fused)MBConv blocks, in order (features[1:-1] are the stages, in both libraries)."""
    return [block for stage in list(model.features)[1:-1] for block in stage]


def test_registered():
    assert set(NAMES) <= set(list_models())


@pytest.mark.parametrize("name", NAMES)
def test_stochastic_depth_probabilities_and_dropout_as_torchvision(name):
    """p = 0.2 * block_id / total_blocks per block (torchvision's formula), default dropout."""
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    with torch.device("meta"):
        torch_model = getattr(tv.models, name)()
    model = _abstract(name)
    ours, theirs = _blocks(model), _blocks(torch_model)
    assert [type(b).__name__ for b in ours] == [type(b).__name__ for b in theirs]
    assert [b.stochastic_depth.p for b in ours] == [b.stochastic_depth.p for b in theirs]
    assert [b.use_res_connect for b in ours] == [b.use_res_connect for b in theirs]
    assert model.classifier[0].rate == torch_model.classifier[0].p
    assert model.features[-1][0].out_features == 1280


def test_train_eval_switches_stochastic_depth_dropout_and_norms():
    model = _abstract("efficientnet_v2_s")
    sd = [b.stochastic_depth for b in _blocks(model)]
    norms = [m for _, m in nnx.iter_graph(model) if isinstance(m, effnet.BatchNormV2)]
    assert len(norms) > 100 and {(n.epsilon, n.momentum) for n in norms} == {(1e-3, 0.9)}
    model.train()
    assert {s.deterministic for s in sd} == {False}
    assert model.classifier[0].deterministic is False
    assert {n.use_running_average for n in norms} == {False}
    model.eval()
    assert {s.deterministic for s in sd} == {True}
    assert model.classifier[0].deterministic is True
    assert {n.use_running_average for n in norms} == {True}


def test_stochastic_depth_row_drop_in_train_mode_only():
    """Each sample's residual branch is dropped with probability p (survivors x 1/(1-p)) in
    train mode; eval mode is block(x) + x. (A one-conv FusedMBConv: real init is slow on CPU.)"""
    cnf = effnet.MBConvConfig(True, 1, 3, 1, 8, 8, 1)
    block = effnet.FusedMBConv(cnf, 0.5, rngs=nnx.Rngs(0), **KW)
    assert block.use_res_connect and len(block.block) == 1
    forward = nnx.jit(lambda block, x: (block(x), block.block(x)))
    x = jax.random.normal(jax.random.key(1), (64, 4, 4, 8))
    xs = np.asarray(x)
    block.train()
    out, branch = map(np.asarray, forward(block, x))  # BN in train mode: a function of x only
    dropped = np.all(np.isclose(out, xs, atol=1e-6), axis=(1, 2, 3))
    kept = np.all(np.isclose(out, xs + 2.0 * branch, atol=1e-5), axis=(1, 2, 3))
    assert np.all(dropped ^ kept)
    assert 0.25 < dropped.mean() < 0.75
    block.eval()
    out, branch = forward(block, x)
    np.testing.assert_allclose(out, xs + np.asarray(branch), atol=1e-6)


def test_structure_as_torchvision():
    """Attribute paths and shapes that the state_dict keys rely on (the counts cover the rest)."""
    model = _abstract("efficientnet_v2_s")
    assert len(model.features) == 8
    assert [len(stage) for stage in list(model.features)[1:-1]] == [2, 4, 4, 6, 9, 15]
    fused = model.features[2][0]  # FusedMBConv 24 -> 48, expand 4: kxk expand, 1x1 project
    assert isinstance(fused, effnet.FusedMBConv) and len(fused.block) == 2
    assert fused.block[0][0].kernel.shape == (3, 3, 24, 96)
    assert fused.block[0][0].strides == (2, 2)
    mb = model.features[4][0]  # MBConv 64 -> 128, expand 4
    assert isinstance(mb, effnet.MBConv) and len(mb.block) == 4
    assert mb.block[1][0].kernel.shape == (3, 3, 1, 256)  # depthwise
    assert mb.block[2].fc1.kernel.shape == (1, 1, 256, 16)  # squeeze: input_channels // 4
    assert mb.block[2].fc1.bias.shape == (16,)
    assert len(mb.block[3]) == 2  # projection: conv + BN, no activation
    assert model.classifier[1].kernel.shape == (1280, 1000)


def test_init_matches_torchvision_scheme():
    """Per-layer constructors (a whole model's eager init takes minutes on CPU)."""
    rngs = nnx.Rngs(0)
    stem = effnet.conv_norm_activation(3, 24, 3, "silu", stride=2, rngs=rngs, **KW)
    assert stem[0].padding == ((1, 1), (1, 1)) and stem[0].bias is None
    kernel = np.asarray(stem[0].kernel[...])  # kaiming_normal(fan_out = 24 * 3 * 3)
    assert kernel.std() == pytest.approx(np.sqrt(2.0 / (24 * 9)), rel=0.1)
    bn = stem[1]
    assert (bn.epsilon, bn.momentum) == (1e-3, 0.9)
    assert np.all(np.asarray(bn.scale[...]) == 1) and np.all(np.asarray(bn.bias[...]) == 0)
    depthwise = effnet.conv_norm_activation(96, 96, 3, "silu", groups=96, rngs=rngs, **KW)[0]
    kernel = np.asarray(depthwise.kernel[...])
    assert kernel.shape == (3, 3, 1, 96)  # torch fan_out = 96 * 3 * 3 (not divided by groups)
    assert kernel.std() == pytest.approx(np.sqrt(2.0 / (96 * 9)), rel=0.1)
    se = effnet.SqueezeExcitation(96, 8, rngs=rngs, **KW)
    assert np.all(np.asarray(se.fc1.bias[...]) == 0) and np.all(np.asarray(se.fc2.bias[...]) == 0)
    head = effnet.classifier(1280, 100, 0.2, rngs=rngs, **KW)
    weight, bound = np.asarray(head[1].kernel[...]), 1.0 / np.sqrt(100)  # 1/sqrt(out_features)
    assert weight.shape == (1280, 100)
    assert np.abs(weight).max() <= bound and np.abs(weight).max() > 0.99 * bound
    assert weight.std() == pytest.approx(bound / np.sqrt(3.0), rel=0.05)
    assert np.all(np.asarray(head[1].bias[...]) == 0)


def test_bf16_compute_keeps_fp32_params_and_stats():
    """Smoke-size net (width/depth x0.25), traced in train mode: dtypes only."""
    abstract = model_parity.abstract_model(
        "efficientnet_v2_s", num_classes=7, dtype=jnp.bfloat16, width_mult=0.25, depth_mult=0.25
    )
    state = nnx.state(abstract)
    out, new_state = abstract_forward(abstract, jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32))
    assert (out.logits.shape, out.logits.dtype) == ((2, 7), jnp.bfloat16)
    for kind in (nnx.Param, nnx.BatchStat):
        dtypes = {a.dtype for a in jax.tree.leaves(nnx.state(abstract, kind))}
        assert dtypes == {np.dtype(np.float32)}
    assert jax.tree.map(lambda a: (a.shape, a.dtype), new_state) == jax.tree.map(
        lambda a: (a.shape, a.dtype), state
    )


# --- numerical identity with torchvision ----------------------------------------------------

# Dropout and stochastic depth off so that a train-mode forward is deterministic (both are
# identities in eval mode, so the eval check is the default model's function).
NO_DROP = dict(dropout=0.0, stochastic_depth_prob=0.0)


@pytest.fixture(scope="module")
def v2_s_pair():
    """Seeded torchvision efficientnet_v2_s and ours loaded from it (shared: a conversion costs
    seconds). The train test updates both models' BN statistics identically, so the eval test
    holds in either order."""
    torch_model = model_parity.torchvision_model("efficientnet_v2_s", **NO_DROP)
    return torch_model, model_parity.converted("efficientnet_v2_s", torch_model, **NO_DROP)


def test_eval_forward_matches_torchvision(v2_s_pair):
    model_parity.assert_same_logits(*v2_s_pair, 64)


def test_train_forward_and_running_stats_match_torchvision(v2_s_pair):
    """One train-mode forward (batch 4, 64 px: the last stage is 2x2 px, 16 values per channel):
    same logits, and every BN's running mean/var (momentum 0.1, unbiased var) as torch's."""
    torch = pytest.importorskip("torch")
    torch_model, model = v2_s_pair
    model_parity.assert_same_logits(torch_model, model, 64, batch=4, train=True, seed=1)
    checked = model_parity.assert_running_stats_match(model, torch_model)
    num_norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in torch_model.modules())
    assert checked == 2 * num_norms  # mean and var of each
