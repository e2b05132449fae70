"""Vision Transformer family: parameter counts, init, and numerical identity with torchvision
(eval logits, and the train-mode loss and gradients of one step).

The position embedding is never resized, so every comparison builds *both* torchvision's model
and ours at the same small image_size (64 px: 4x4 patches at /16, 2x2 at /32). torchvision
initialises the head's weight, the class token and the attention in_proj_bias to zeros; they are
randomised here, or the logits would not depend on the encoder at all.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import imagenot_jax.models.vit as vit  # registers the family
from imagenot_jax.models.registry import list_models
from imagenot_jax.models.torch_weights import load_torchvision
from imagenot_jax.train import optim

import model_parity

# torchvision parameter counts at 224 px and 1000 classes (its weights' meta "num_params").
TORCHVISION_PARAMS = {"vit_b_16": 86_567_656, "vit_b_32": 88_224_232, "vit_l_16": 304_326_632}

# A small VisionTransformer that both libraries build from the class itself. All real (eager)
# inits use these shapes, so the per-op compiles of the initialisers are shared between tests.
TINY = dict(
    image_size=32,
    patch_size=8,
    num_layers=2,
    num_heads=4,
    hidden_dim=64,
    mlp_dim=128,
    num_classes=10,
    representation_size=48,
)


def _tiny(**kwargs) -> vit.VisionTransformer:
    return vit.VisionTransformer(**{**TINY, **kwargs}, rngs=nnx.Rngs(0))


def test_registered():
    assert set(TORCHVISION_PARAMS) <= set(list_models())


def _torchvision_vit(name_or_none: str | None, **kwargs):
    """model_parity.torchvision_model plus random values for what torchvision zero-initialises:
    heads.head.weight (else logits = bias), class_token and in_proj_bias."""
    torch = pytest.importorskip("torch")
    if name_or_none is None:
        tv = pytest.importorskip("torchvision")
        torch.manual_seed(0)
        torch_model = tv.models.VisionTransformer(**kwargs)
        with torch.no_grad():  # what torchvision_model does for a named model
            for module in torch_model.modules():
                if isinstance(module, torch.nn.LayerNorm | torch.nn.Linear | torch.nn.Conv2d):
                    module.bias.normal_(0.0, 0.01)
                if isinstance(module, torch.nn.LayerNorm):
                    module.weight.uniform_(0.5, 1.5)
    else:
        torch_model = model_parity.torchvision_model(name_or_none, **kwargs)
    with torch.no_grad():
        torch_model.class_token.normal_(0.0, 0.02)
        for module in torch_model.modules():
            if isinstance(module, torch.nn.MultiheadAttention):
                module.in_proj_bias.normal_(0.0, 0.02)
            if isinstance(module, torch.nn.Linear) and not module.weight.abs().sum():
                module.weight.normal_(0.0, 0.02)
                module.bias.normal_(0.0, 0.01)
    return torch_model


@functools.cache
def _pair(name: str, size: int):
    """(torchvision model, our converted model), built once per (name, size) for this module."""
    torch_model = _torchvision_vit(name, image_size=size)
    return torch_model, model_parity.converted(name, torch_model, image_size=size)


def _assert_eval_identity(torch_model, model, size: int, batch: int = 2) -> None:
    model_parity.assert_same_logits(torch_model, model, size, batch=batch)


@pytest.mark.parametrize(("name", "size"), [("vit_b_16", 64), ("vit_b_32", 64)])
def test_eval_forward_matches_torchvision(name, size):
    _assert_eval_identity(*_pair(name, size), size)


@pytest.mark.slow
def test_eval_forward_matches_torchvision_vit_l_16():
    torch_model = _torchvision_vit("vit_l_16", image_size=32)
    _assert_eval_identity(
        torch_model, model_parity.converted("vit_l_16", torch_model, image_size=32), 32
    )


def test_representation_size_head_matches_torchvision():
    """heads.pre_logits + tanh (representation_size), on a tiny model built from the classes."""
    torch_model = _torchvision_vit(None, **TINY)
    model = _tiny()
    load_torchvision(model, torch_model.state_dict())
    _assert_eval_identity(torch_model, model, TINY["image_size"], batch=3)


@nnx.jit
def _loss_and_grads(model, x, labels):
    def loss_fn(model):
        logits = model(x).logits
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return nnx.value_and_grad(loss_fn)(model)


def _assert_train_step_matches(torch_model, model, size: int, labels: np.ndarray) -> None:
    """Train mode (dropout 0, torchvision's default): the same cross-entropy, and the gradient of
    every parameter within 1e-4 x its max |gradient| of torch's autograd."""
    torch = pytest.importorskip("torch")
    x, x_torch = model_parity.random_input((len(labels), size, size, 3), seed=1)
    torch_model.train()
    torch_model.zero_grad()
    torch_loss = torch.nn.functional.cross_entropy(torch_model(x_torch), torch.from_numpy(labels))
    torch_loss.backward()
    model.train()
    loss, grads = _loss_and_grads(model, x, labels)
    np.testing.assert_allclose(float(loss), torch_loss.item(), rtol=1e-5)
    # torch's gradients in our layout: load them like weights into a copy of the model.
    expected = nnx.clone(model)
    load_torchvision(expected, {k: p.grad for k, p in torch_model.named_parameters()})
    expected_grads = dict(nnx.state(expected, nnx.Param).flat_state())
    checked = 0
    for path, got in grads.flat_state():
        want = np.asarray(expected_grads[path].get_value())
        error, scale = np.abs(np.asarray(got.get_value()) - want).max(), np.abs(want).max()
        assert scale > 0, path
        assert error <= 1e-4 * scale, f"{path}: max |diff| {error:.3g}, max |grad| {scale:.3g}"
        checked += 1
    assert checked == len(list(torch_model.parameters()))


def test_train_step_loss_and_gradients_match_torch_autograd():
    torch_model = _torchvision_vit(None, **TINY)
    model = _tiny()
    load_torchvision(model, torch_model.state_dict())
    _assert_train_step_matches(torch_model, model, TINY["image_size"], np.array([3, 9, 0]))


def test_train_step_loss_and_gradients_match_torch_autograd_vit_b_16():
    _assert_train_step_matches(*_pair("vit_b_16", 64), 64, np.array([3, 997]))


def test_dropout_only_in_train_mode():
    model = _tiny(dropout=0.1, attention_dropout=0.2)
    block = model.encoder.layers[0]
    assert block.self_attention.dropout.rate == 0.2
    assert model.encoder.dropout.rate == block.dropout.rate == 0.1
    assert block.mlp[2].rate == block.mlp[4].rate == 0.1
    model.heads.head.kernel[...] = jnp.ones_like(model.heads.head.kernel[...])
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    with pytest.raises(ValueError):  # the mode must be set
        model_parity.jit_logits(model, x)
    model.eval()
    np.testing.assert_array_equal(
        model_parity.jit_logits(model, x), model_parity.jit_logits(model, x)
    )
    model.train()
    a, b = model_parity.jit_logits(model, x), model_parity.jit_logits(model, x)
    assert a.shape == (2, 10)
    assert not np.array_equal(a, b)  # the Rngs streams advance between calls


def test_init_matches_torchvision_scheme():
    model = _tiny()
    dim, mlp_dim, patch = TINY["hidden_dim"], TINY["mlp_dim"], TINY["patch_size"]

    def arr(variable):
        return np.asarray(variable[...])

    stem = arr(model.conv_proj.kernel)  # HWIO; trunc_normal(std sqrt(1/fan_in))
    assert stem.shape == (patch, patch, 3, dim)
    assert stem.std() == pytest.approx(np.sqrt(1.0 / (3 * patch * patch)), rel=0.03)
    assert not arr(model.conv_proj.bias).any() and not arr(model.class_token).any()
    assert model.conv_proj.strides == (patch, patch)
    assert model.conv_proj.padding == ((0, 0), (0, 0))
    assert arr(model.encoder.pos_embedding).shape == (1, 17, dim)
    assert arr(model.encoder.pos_embedding).std() == pytest.approx(0.02, rel=0.1)
    block = model.encoder.layers[1]
    attn = block.self_attention
    in_proj = arr(attn.in_proj_weight)  # xavier_uniform on (3D, D)
    bound = np.sqrt(6.0 / (4 * dim))
    assert in_proj.shape == (3 * dim, dim) and np.abs(in_proj).max() <= bound
    assert in_proj.std() == pytest.approx(bound / np.sqrt(3), rel=0.03)
    assert not arr(attn.in_proj_bias).any() and not arr(attn.out_proj.bias).any()
    out_proj = arr(attn.out_proj.kernel)  # nn.Linear's default U(+-1/sqrt(fan_in))
    assert np.abs(out_proj).max() <= 1.0 / np.sqrt(dim)
    assert out_proj.std() == pytest.approx(1.0 / np.sqrt(3 * dim), rel=0.05)
    for fc in (block.mlp[0], block.mlp[3]):  # xavier_uniform, N(0, 1e-6) bias
        assert arr(fc.kernel).std() == pytest.approx(np.sqrt(2.0 / (dim + mlp_dim)), rel=0.05)
        assert arr(fc.bias).std() == pytest.approx(1e-6, rel=0.3)
    for norm in (block.ln_1, block.ln_2, model.encoder.ln):
        assert norm.epsilon == 1e-6
        assert np.all(arr(norm.scale) == 1) and not arr(norm.bias).any()
    pre_logits = arr(model.heads.pre_logits.kernel)  # trunc_normal(std sqrt(1/fan_in))
    assert pre_logits.std() == pytest.approx(np.sqrt(1.0 / dim), rel=0.05)
    assert not arr(model.heads.pre_logits.bias).any()
    assert not arr(model.heads.head.kernel).any() and not arr(model.heads.head.bias).any()


def test_weight_decay_groups_as_torchvision():
    """torchvision's set_weight_decay: "bias" matches a parameter named exactly `bias`, so MHA's
    in_proj_bias is "other" there too; LayerNorms are "norm"; class/position tokens "embedding"."""
    abstract = nnx.eval_shape(_tiny)
    labels = {
        ".".join(map(str, path)): v.get_value()
        for path, v in optim.weight_decay_groups(abstract).flat_state()
    }
    attn = "encoder.layers.0.self_attention"
    assert labels[f"{attn}.in_proj_weight"] == labels[f"{attn}.in_proj_bias"] == "other"
    assert labels[f"{attn}.out_proj.bias"] == labels["conv_proj.bias"] == "bias"
    assert labels["encoder.layers.1.ln_2.scale"] == labels["encoder.ln.bias"] == "norm"
    assert labels["class_token"] == labels["encoder.pos_embedding"] == "embedding"
    assert labels["heads.pre_logits.kernel"] == labels["encoder.layers.1.mlp.3.kernel"] == "other"


def test_torch_key_names_and_legacy_mlp_names():
    adapted = vit.VisionTransformer.adapt_torch_state_dict(
        {
            "encoder.layers.encoder_layer_10.mlp.linear_1.weight": 1,
            "encoder.layers.encoder_layer_10.mlp.linear_2.bias": 2,
            "encoder.layers.encoder_layer_3.self_attention.in_proj_weight": 3,
            "encoder.pos_embedding": 4,
        }
    )
    assert adapted == {
        "encoder.layers.10.mlp.0.weight": 1,
        "encoder.layers.10.mlp.3.bias": 2,
        "encoder.layers.3.self_attention.in_proj_weight": 3,
        "encoder.pos_embedding": 4,
    }


def test_bf16_compute_with_fp32_params():
    """bf16 matmuls (fp32 softmax and residual stream) stay close to the fp32 function."""
    torch_model = _torchvision_vit(None, **TINY)
    models = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        models[dtype] = _tiny(dtype=dtype)
        load_torchvision(models[dtype], torch_model.state_dict())
        models[dtype].eval()
    x = jax.random.normal(jax.random.key(2), (4, 32, 32, 3))
    reference = np.asarray(model_parity.jit_logits(models[jnp.float32], x))
    logits = model_parity.jit_logits(models[jnp.bfloat16], x)
    assert logits.dtype == jnp.bfloat16
    dtypes = {a.dtype for a in jax.tree.leaves(nnx.state(models[jnp.bfloat16], nnx.Param))}
    assert dtypes == {np.dtype(np.float32)}
    error = np.abs(np.asarray(logits, np.float32) - reference).max()
    assert error <= 3e-2 * np.abs(reference).max()
    # As under torch autocast: the residual stream and the attention softmax stay float32.
    graphdef, state = nnx.split(models[jnp.bfloat16])

    def block(state, x):
        return nnx.merge(graphdef, state).encoder.layers[0](x)

    tokens = jax.ShapeDtypeStruct((2, 17, TINY["hidden_dim"]), jnp.float32)
    assert jax.eval_shape(block, state, tokens).dtype == jnp.float32
    exps = [e for e in jax.make_jaxpr(block)(state, tokens).eqns if e.primitive.name == "exp"]
    assert exps and all(e.outvars[0].aval.dtype == jnp.float32 for e in exps)


def test_wrong_image_size_raises():
    model = nnx.eval_shape(_tiny)
    model.eval()
    with pytest.raises(ValueError, match="32x32"):
        model(jnp.zeros((1, 64, 64, 3)))
    with pytest.raises(ValueError, match="divisible"):
        nnx.eval_shape(lambda: _tiny(image_size=36))
