"""imagenot_jax.train.mixing against torchvision.transforms.v2.MixUp / CutMix."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagenot_jax.train import mixing

B, H, W, C, K = 6, 10, 14, 3, 7
_STATIC = ("mixup_alpha", "cutmix_alpha", "num_groups")


def _batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(B, H, W, C)).astype(np.float32)
    labels = rng.integers(0, K, size=B)
    targets = np.eye(K, dtype=np.float32)[labels] * 0.9 + 0.1 / K  # label-smoothed rows
    return images, targets


class _FixedBeta:
    """Stands in for torchvision's Beta distribution: always draws `lam` (as float32, like it)."""

    def __init__(self, torch, lam: float):
        self._value = torch.tensor(lam, dtype=torch.float32)

    def sample(self, shape=()):
        return self._value


def _torch_nchw(torch, images):
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("lam", [0.0, 0.13, 0.5, 0.87, 1.0])
def test_mixup_matches_torchvision(lam):
    torch = pytest.importorskip("torch")
    v2 = pytest.importorskip("torchvision.transforms.v2")
    images, targets = _batch()
    lam = float(np.float32(lam))
    transform = v2.MixUp(alpha=1.0)
    transform._dist = _FixedBeta(torch, lam)
    out_images, out_targets = transform(_torch_nchw(torch, images), torch.from_numpy(targets))
    ours_images, ours_targets = mixing._mixup(jnp.asarray(images), jnp.asarray(targets), lam)
    np.testing.assert_array_equal(np.asarray(ours_images), out_images.numpy().transpose(0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(ours_targets), out_targets.numpy(), rtol=1e-6, atol=1e-7)


def _torch_cutmix(torch, v2, monkeypatch, images, targets, lam, r_x, r_y):
    transform = v2.CutMix(alpha=1.0)
    transform._dist = _FixedBeta(torch, lam)
    draws = iter([r_x, r_y])  # CutMix draws torch.randint(W) then torch.randint(H)
    monkeypatch.setattr(torch, "randint", lambda high, size: torch.tensor([next(draws)]))
    out = transform(_torch_nchw(torch, images), torch.from_numpy(targets))
    monkeypatch.undo()
    return out


CUTMIX_CASES = [
    (0.3, 7, 5),
    (0.3, 0, 0),  # box clipped at the top-left corner
    (0.05, W - 1, H - 1),  # big box clipped at the bottom-right corner
    (0.9, 3, 8),
    (1.0, 4, 4),  # empty box
    (0.0, 7, 5),  # box as large as the image (then clipped)
    (0.61, 13, 2),
]


@pytest.mark.parametrize(("lam", "r_x", "r_y"), CUTMIX_CASES)
def test_cutmix_matches_torchvision(monkeypatch, lam, r_x, r_y):
    torch = pytest.importorskip("torch")
    v2 = pytest.importorskip("torchvision.transforms.v2")
    images, targets = _batch(1)
    lam = float(np.float32(lam))
    out_images, out_targets = _torch_cutmix(torch, v2, monkeypatch, images, targets, lam, r_x, r_y)
    box, lam_adjusted = mixing._cutmix_box(jnp.float32(lam), r_x, r_y, H, W)
    ours_images, ours_targets = mixing._cutmix(
        jnp.asarray(images), jnp.asarray(targets), box, lam_adjusted
    )
    np.testing.assert_array_equal(np.asarray(ours_images), out_images.numpy().transpose(0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(ours_targets), out_targets.numpy(), rtol=1e-6, atol=1e-7)


def test_cutmix_box_matches_torchvision_formula_on_a_grid():
    """The box itself against CutMix.make_params, over many lam and centres."""
    torch = pytest.importorskip("torch")
    v2 = pytest.importorskip("torchvision.transforms.v2")
    rng = np.random.default_rng(3)
    transform = v2.CutMix(alpha=1.0)
    box_fn = jax.jit(mixing._cutmix_box, static_argnums=(3, 4))
    for _ in range(300):
        lam = float(rng.uniform(0, 1, size=()).astype(np.float32))
        r_x, r_y = int(rng.integers(W)), int(rng.integers(H))
        transform._dist = _FixedBeta(torch, lam)
        draws = iter([r_x, r_y])
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch, "randint", lambda high, size, d=draws: torch.tensor([next(d)]))
            params = transform.make_params([torch.zeros(B, C, H, W)])
        box, lam_adjusted = box_fn(jnp.float32(lam), r_x, r_y, H, W)
        assert tuple(int(v) for v in box) == params["box"], (lam, r_x, r_y)
        assert float(lam_adjusted) == pytest.approx(params["lam_adjusted"], abs=1e-6)


def _indexed_batch(batch: int, size: int = 8):
    """Sample i is the constant image i + 1 with one-hot class i: pairings are readable."""
    images = jnp.broadcast_to(
        jnp.arange(1, batch + 1, dtype=jnp.float32)[:, None, None, None], (batch, size, size, 1)
    )
    return images, jnp.eye(batch, dtype=jnp.float32)


def _many(n: int, batch: int, **kwargs):
    images, targets = _indexed_batch(batch)
    mix = jax.jit(jax.vmap(lambda key: mixing.mix_batch(key, images, targets, **kwargs)))
    return mix(jax.random.split(jax.random.key(0), n))


def test_mixup_lam_is_beta_distributed():
    _, targets = _many(4000, 4, mixup_alpha=0.2, cutmix_alpha=0.0, num_groups=1)
    lam = np.asarray(targets[:, 0, 0])  # sample 0's weight on its own class
    assert abs(lam.mean() - 0.5) < 0.03  # Beta(a, a) has mean 1/2
    assert abs(lam.var() - 1 / (4 * (2 * 0.2 + 1))) < 0.02  # and variance 1 / (4 (2a + 1))
    rolled = np.asarray(targets[:, 0, 3])  # paired with the last sample (roll by one)
    np.testing.assert_allclose(lam + rolled, 1.0, atol=1e-6)


def test_random_choice_between_mixup_and_cutmix_is_uniform():
    images, targets = _many(2000, 4, mixup_alpha=1.0, cutmix_alpha=1.0, num_groups=1)
    images, targets = np.asarray(images), np.asarray(targets)
    own, partner = np.float32(1.0), np.float32(4.0)  # sample 0 and its partner, sample 3
    pixels = images[:, 0]
    is_cutmix = np.all((pixels == own) | (pixels == partner), axis=(1, 2, 3))
    assert abs(is_cutmix.mean() - 0.5) < 0.05
    # CutMix targets carry the pasted area exactly: lam = share of own pixels.
    own_share = np.mean(pixels == own, axis=(1, 2, 3))
    np.testing.assert_allclose(targets[is_cutmix, 0, 0], own_share[is_cutmix], atol=1e-6)
    # MixUp pixels are the same convex combination as the targets.
    lam = targets[~is_cutmix, 0, 0]
    np.testing.assert_allclose(
        pixels[~is_cutmix, 0, 0, 0], lam * own + (1 - lam) * partner, rtol=1e-5
    )


def test_only_cutmix_when_mixup_alpha_is_zero():
    images, _ = _many(200, 4, mixup_alpha=0.0, cutmix_alpha=1.0, num_groups=1)
    pixels = np.asarray(images)[:, 0]
    assert np.all((pixels == 1.0) | (pixels == 4.0))


def test_groups_mix_only_within_themselves():
    groups, per_group = 4, 3
    batch = groups * per_group
    images, targets = _indexed_batch(batch)
    mix = functools.partial(mixing.mix_batch, mixup_alpha=0.4, cutmix_alpha=1.0, num_groups=groups)
    mixed_images, mixed_targets = jax.jit(mix)(jax.random.key(1), images, targets)
    mixed_images, mixed_targets = np.asarray(mixed_images), np.asarray(mixed_targets)
    for i in range(batch):
        g, j = divmod(i, per_group)
        partner = g * per_group + (j - 1) % per_group  # roll by one inside the group
        others = np.ones(batch, bool)
        others[[i, partner]] = False
        assert np.all(mixed_targets[i, others] == 0)
        # Pixels are sample i's, its partner's, or (MixUp) a value between the two.
        lo, hi = sorted((i + 1, partner + 1))
        assert np.all((mixed_images[i] >= lo - 1e-5) & (mixed_images[i] <= hi + 1e-5))
    np.testing.assert_allclose(mixed_targets.sum(axis=1), 1.0, rtol=1e-6)
    # Each group draws its own lam.
    own = [mixed_targets[g * per_group, g * per_group] for g in range(groups)]
    assert len(set(np.round(own, 6))) == groups


def test_targets_rows_sum_to_one_and_shapes_are_kept():
    images, targets = _batch()
    out_images, out_targets = jax.jit(mixing.mix_batch, static_argnames=_STATIC)(
        jax.random.key(2),
        jnp.asarray(images),
        jnp.asarray(targets),
        mixup_alpha=0.8,
        cutmix_alpha=1.0,
        num_groups=2,
    )
    assert out_images.shape == images.shape and out_images.dtype == images.dtype
    assert out_targets.shape == targets.shape
    np.testing.assert_allclose(np.asarray(out_targets).sum(axis=1), 1.0, rtol=1e-6)


def test_both_alphas_zero_is_identity():
    images, targets = _batch()
    out = mixing.mix_batch(
        jax.random.key(0), images, targets, mixup_alpha=0.0, cutmix_alpha=0.0, num_groups=3
    )
    assert out[0] is images and out[1] is targets


def test_jit_and_bf16_images():
    images, targets = _batch()
    mix = jax.jit(
        functools.partial(mixing.mix_batch, mixup_alpha=0.2, cutmix_alpha=1.0, num_groups=2)
    )
    a = mix(jax.random.key(5), jnp.asarray(images, jnp.bfloat16), jnp.asarray(targets))
    b = mix(jax.random.key(5), jnp.asarray(images, jnp.bfloat16), jnp.asarray(targets))
    assert a[0].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(a[0], np.float32), np.asarray(b[0], np.float32))


def test_bad_groups_and_alphas_are_errors():
    images, targets = _batch()
    with pytest.raises(ValueError, match="num_groups=4"):
        mixing.mix_batch(
            jax.random.key(0), images, targets, mixup_alpha=0.2, cutmix_alpha=0.0, num_groups=4
        )
    with pytest.raises(ValueError, match="mixup_alpha=-1"):
        mixing.mix_batch(
            jax.random.key(0), images, targets, mixup_alpha=-1.0, cutmix_alpha=0.0, num_groups=1
        )
