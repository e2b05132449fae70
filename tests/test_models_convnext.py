"""ConvNeXt family: parameter counts, init, stochastic depth, and identity with torchvision.

Fast on CPU: whole models are only traced (nnx.eval_shape) or filled from a seeded torchvision
model and run under nnx.jit, at 32-64 px (32 px is the minimum: a 4x stem and three 2x
downsamplings). torchvision initialises every layer_scale to 1e-6, which makes each residual
branch invisible in the logits; the parity tests set it to U(0.5, 1.5) so that the blocks count.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import imagenot_jax.models.convnext as convnext  # registers the family
from imagenot_jax.models.registry import list_models
from imagenot_jax.models.torch_nn import StochasticDepth

import model_parity

# torchvision parameter counts at 1000 classes (its weights' meta "num_params").
TORCHVISION_PARAMS = {
    "convnext_tiny": 28_589_128,
    "convnext_small": 50_223_688,
    "convnext_base": 88_591_464,
    "convnext_large": 197_767_336,
}
NAMES = list(TORCHVISION_PARAMS)
DEFAULT_SD_PROB = {
    "convnext_tiny": 0.1,
    "convnext_small": 0.4,
    "convnext_base": 0.5,
    "convnext_large": 0.5,
}
SMALL_SETTING = [convnext.CNBlockConfig(16, 32, 2), convnext.CNBlockConfig(32, None, 2)]


@functools.cache
def _abstract(name: str) -> nnx.Module:
    return model_parity.abstract_model(name)


@functools.cache
def _torch_tiny():
    """Seeded torchvision convnext_tiny (no stochastic depth) with layer_scale ~ U(0.5, 1.5)."""
    torch = pytest.importorskip("torch")
    torch_model = model_parity.torchvision_model("convnext_tiny", stochastic_depth_prob=0.0)
    with torch.no_grad():
        for key, param in torch_model.named_parameters():
            if key.endswith("layer_scale"):
                param.uniform_(0.5, 1.5)
    return torch_model


def _block_probs(model: nnx.Module) -> list[float]:
    return [node.p for _, node in nnx.iter_graph(model) if isinstance(node, StochasticDepth)]


@functools.cache
def _small_split() -> tuple[nnx.GraphDef, nnx.State]:
    """A small ConvNeXt (4 blocks, stochastic depth 0.9), initialised once under one nnx.jit
    (eager init compiles every initialiser separately); tests merge a fresh copy."""
    build = nnx.jit(
        lambda: convnext.ConvNeXt(
            SMALL_SETTING, stochastic_depth_prob=0.9, num_classes=1000, rngs=nnx.Rngs(0)
        )
    )
    return nnx.split(build())


def _small_model() -> convnext.ConvNeXt:
    graphdef, state = _small_split()
    return nnx.merge(graphdef, jax.tree.map(jnp.array, state))


def test_registered():
    assert set(NAMES) <= set(list_models())


@pytest.mark.parametrize("name", NAMES)
def test_stochastic_depth_schedule_matches_torchvision(name):
    """Per-block drop probabilities (and the variant's default) exactly as torchvision's."""
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    with torch.device("meta"):
        torch_model = getattr(tv.models, name)()
    expected = [m.p for m in torch_model.modules() if isinstance(m, tv.ops.StochasticDepth)]
    probs = _block_probs(_abstract(name))
    assert probs == expected
    assert probs[0] == 0.0 and probs[-1] == pytest.approx(DEFAULT_SD_PROB[name])


def test_structure_mirrors_torchvision_keys():
    model = _abstract("convnext_tiny")
    block = model.features[5][8]
    assert isinstance(block.block[1], convnext.Permute)
    assert isinstance(block.block[2], convnext.LayerNorm) and block.block[2].epsilon == 1e-6
    assert block.block[0].kernel.shape == (7, 7, 1, 384)  # depthwise, HWIO
    assert block.layer_scale.shape == (384,)
    assert model.features[0][0].kernel.shape == (4, 4, 3, 96)
    assert model.features[6][1].kernel.shape == (2, 2, 384, 768)
    assert model.classifier[2].kernel.shape == (768, 1000)


def test_layer_norm_matches_torch():
    """One LayerNorm (torch semantics) serves nn.LayerNorm and LayerNorm2d; nnx.LayerNorm with
    epsilon=1e-6, use_fast_variance=False computes the same in fp32; bf16 keeps fp32 stats."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = (3.0 + 2.0 * rng.standard_normal((2, 5, 5, 64))).astype(np.float32)
    weight = rng.uniform(0.5, 1.5, 64).astype(np.float32)
    bias = rng.normal(0.0, 0.1, 64).astype(np.float32)
    expected = torch.nn.functional.layer_norm(
        torch.from_numpy(x), (64,), torch.from_numpy(weight), torch.from_numpy(bias), 1e-6
    ).numpy()
    kw = dict(param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    ours = convnext.LayerNorm(64, dtype=jnp.float32, **kw)
    flax_ln = nnx.LayerNorm(64, epsilon=1e-6, use_fast_variance=False, dtype=jnp.float32, **kw)
    for ln in (ours, flax_ln):
        ln.scale[...], ln.bias[...] = jnp.asarray(weight), jnp.asarray(bias)
        np.testing.assert_allclose(np.asarray(ln(jnp.asarray(x))), expected, atol=2e-6)
    # bf16 compute: the (bf16) input normalised with fp32 statistics, only the output rounded.
    bf16 = convnext.LayerNorm(64, dtype=jnp.bfloat16, **kw)
    bf16.scale[...], bf16.bias[...] = jnp.asarray(weight), jnp.asarray(bias)
    x16 = jnp.asarray(x + 100.0, jnp.bfloat16)  # bf16 statistics would be off at this offset
    got = bf16(x16)
    assert got.dtype == jnp.bfloat16
    reference = torch.nn.functional.layer_norm(
        torch.from_numpy(np.asarray(x16, np.float32)),
        (64,),
        torch.from_numpy(weight),
        torch.from_numpy(bias),
        1e-6,
    ).numpy()
    np.testing.assert_allclose(np.asarray(got, np.float32), reference, rtol=1e-2, atol=1e-2)


def test_init_matches_torchvision_scheme():
    """trunc_normal(std 0.02) conv/linear weights, zero biases, LayerNorm 1/0, layer_scale 1e-6."""
    model = _small_model()
    kernels, biases = [], []
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Conv | nnx.Linear):
            kernels.append(np.asarray(node.kernel[...]).ravel())
            biases.append(np.asarray(node.bias[...]))
    assert len(kernels) == 3 + 4 * 3  # stem, downsample, head; dwconv + 2 linears per block
    weights = np.concatenate(kernels)
    assert weights.std() == pytest.approx(0.02, rel=0.02)  # torch truncates at +-2: ~untruncated
    assert np.abs(weights).max() > 3 * 0.02
    assert all(np.all(b == 0) for b in biases)
    head = np.asarray(model.classifier[2].kernel[...])
    assert head.std() == pytest.approx(0.02, rel=0.02)
    for _, node in nnx.iter_graph(model):
        if isinstance(node, convnext.LayerNorm):
            assert node.epsilon == 1e-6
            assert np.all(np.asarray(node.scale[...]) == 1)
            assert np.all(np.asarray(node.bias[...]) == 0)
        if isinstance(node, convnext.CNBlock):
            assert np.all(np.asarray(node.layer_scale[...]) == np.float32(1e-6))


def test_eval_forward_matches_torchvision():
    """64 px (last stage 2x2); 32 px is covered by the train-mode test (same function with
    stochastic depth off). Our model keeps its default stochastic depth: eval disables it."""
    torch_model = _torch_tiny()
    model = model_parity.converted("convnext_tiny", torch_model)  # default stochastic depth
    model_parity.assert_same_logits(torch_model, model, 64)


def _to_ours(key: str, grad: np.ndarray) -> tuple[str, np.ndarray]:
    """A torch parameter name and gradient in our path and layout."""
    *path, leaf = key.split(".")
    if leaf == "layer_scale":
        return ".".join([*path, leaf]), grad.reshape(-1)
    if leaf == "weight":
        perm = {4: (2, 3, 1, 0), 2: (1, 0)}.get(grad.ndim)
        leaf = "kernel" if perm else "scale"
        grad = grad.transpose(perm) if perm else grad
    return ".".join([*path, leaf]), grad


@nnx.jit
def _loss_and_grads(model: nnx.Module, x: jax.Array, labels: jax.Array):
    def loss_fn(model):
        logits = model(x).logits
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
        return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1)), logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    return loss, logits, grads


def test_train_mode_logits_and_gradients_match_torch_autograd():
    """Train mode with stochastic_depth_prob=0: same logits, loss and cross-entropy gradients
    (stem, block internals, layer_scale, downsampling, head) as torch autograd."""
    torch = pytest.importorskip("torch")
    torch_model = _torch_tiny().train()
    torch_model.zero_grad()
    model = model_parity.converted("convnext_tiny", torch_model, stochastic_depth_prob=0.0)
    model.train()
    x, x_torch = model_parity.random_input((2, 32, 32, 3))
    labels = np.array([3, 917])
    logits_torch = torch_model(x_torch)
    loss_torch = torch.nn.functional.cross_entropy(logits_torch, torch.from_numpy(labels))
    loss_torch.backward()
    loss, logits, grads = _loss_and_grads(model, x, jnp.asarray(labels))
    model_parity.assert_logits_match(logits, logits_torch.detach().numpy())
    assert float(loss) == pytest.approx(loss_torch.item(), rel=1e-5)
    ours = {".".join(map(str, path)): np.asarray(v) for path, v in nnx.to_flat_state(grads)}
    torch_params = dict(torch_model.named_parameters())
    keys = [
        "features.0.0.weight",
        "features.0.1.bias",
        "features.1.0.layer_scale",
        "features.1.0.block.0.weight",
        "features.3.2.block.2.weight",
        "features.5.8.block.3.weight",
        "features.5.8.block.5.bias",
        "features.6.1.weight",
        "features.7.2.layer_scale",
        "classifier.0.weight",
        "classifier.2.weight",
    ]
    for key in keys:
        path, expected = _to_ours(key, torch_params[key].grad.numpy())
        got = ours[path]
        assert got.shape == expected.shape, key
        error, scale = np.abs(got - expected).max(), np.abs(expected).max()
        assert scale > 0, key
        assert error <= 1e-4 * scale, f"{key}: max |diff| {error:.3g}, max |grad| {scale:.3g}"


def test_stochastic_depth_only_in_train_mode():
    model = _small_model()
    assert _block_probs(model) == pytest.approx([0.0, 0.3, 0.6, 0.9])
    x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
    forward = nnx.jit(lambda module, x: module(x))  # the model, then one of its blocks
    with pytest.raises(ValueError, match="train"):
        forward(model, x)  # the mode must be set: no silent default
    model.eval()
    np.testing.assert_array_equal(forward(model, x).logits, forward(model, x).logits)
    model.train()
    assert not np.array_equal(forward(model, x).logits, forward(model, x).logits)

    # Row mode on the residual branch only: per sample, out - x is 0 or branch / (1 - p).
    block = model.features[3][0]  # p = 0.6
    block.layer_scale[...] = jnp.ones_like(block.layer_scale[...])
    h = jax.random.normal(jax.random.key(2), (64, 4, 4, 32))
    block.eval()
    branch = np.asarray(forward(block, h) - h)
    block.train()
    delta = np.asarray(forward(block, h) - h)
    dropped = np.all(np.abs(delta) < 1e-6, axis=(1, 2, 3))
    assert 0 < dropped.sum() < 64
    np.testing.assert_allclose(delta[~dropped], branch[~dropped] / 0.4, rtol=1e-4, atol=1e-4)


def test_bf16_compute_with_fp32_params():
    """bf16 compute (fp32 params, fp32 LayerNorm statistics): within bf16 rounding of torch's
    fp32 logits (measured ~1e-2 of max |logit|, as torch's own bf16 autocast)."""
    torch = pytest.importorskip("torch")
    torch_model = _torch_tiny().eval()
    model = model_parity.converted("convnext_tiny", torch_model, dtype=jnp.bfloat16)
    assert {a.dtype for a in jax.tree.leaves(nnx.state(model, nnx.Param))} == {np.dtype("float32")}
    model.eval()
    x, x_torch = model_parity.random_input((2, 32, 32, 3))
    with torch.no_grad():
        expected = model_parity.torch_logits(torch_model(x_torch))
    logits = model_parity.jit_logits(model, x)
    assert logits.dtype == jnp.bfloat16
    model_parity.assert_logits_match(logits, expected, tolerance=3e-2)
