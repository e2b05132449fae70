"""MixUp and CutMix on device, with torchvision's reference-script semantics.

torchvision's train.py (--mixup-alpha, --cutmix-alpha) applies
`RandomChoice([MixUp(alpha=mixup_alpha), CutMix(alpha=cutmix_alpha)])` in the DataLoader's
collate function: once per per-GPU batch it picks one of the enabled methods uniformly, draws
lam ~ Beta(alpha, alpha) and pairs every sample with its neighbour in the batch rolled by one.
Here the global batch is split into `num_groups` contiguous groups (one per data-parallel device)
that each get their own draw, so a run on N devices mixes like torchvision on N GPUs.

Everything is shape-static and jit-friendly: the CutMix box is a mask built from iota comparisons,
and MixUp and CutMix share one blend `w * x + (1 - w) * x_rolled` whose per-pixel weight is lam
(MixUp) or 0/1 outside/inside the box (CutMix).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from imagenot_jax.errors import UserError

Box = tuple[jax.Array, jax.Array, jax.Array, jax.Array]  # (x1, y1, x2, y2), pixels, end-exclusive


def _cutmix_box(
    lam: jax.Array, r_x: jax.Array, r_y: jax.Array, height: int, width: int
) -> tuple[Box, jax.Array]:
    """torchvision.transforms.v2.CutMix's box around centre (r_x, r_y), and the adjusted lam.

    The box side is sqrt(1 - lam) of the image side before clipping to the image; lam is then
    recomputed from the clipped area, as torchvision does, so targets match the pixels.
    """
    r = 0.5 * jnp.sqrt(1.0 - lam)
    r_w_half = jnp.floor(r * width).astype(jnp.int32)  # int(): truncation, r >= 0
    r_h_half = jnp.floor(r * height).astype(jnp.int32)
    x1 = jnp.maximum(r_x - r_w_half, 0)
    y1 = jnp.maximum(r_y - r_h_half, 0)
    x2 = jnp.minimum(r_x + r_w_half, width)
    y2 = jnp.minimum(r_y + r_h_half, height)
    area = ((x2 - x1) * (y2 - y1)).astype(jnp.float32)
    return (x1, y1, x2, y2), 1.0 - area / (width * height)


def _box_mask(box: Box, height: int, width: int) -> jax.Array:
    """(H, W) bool: True inside the box (rows y1:y2, columns x1:x2)."""
    x1, y1, x2, y2 = box
    rows = jax.lax.broadcasted_iota(jnp.int32, (height, width), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (height, width), 1)
    return (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)


def _blend(
    images: jax.Array, targets: jax.Array, image_weight: jax.Array, target_lam: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """x * w + roll(x, 1) * (1 - w) per pixel; targets the same with one weight per batch.

    Computed in float32 and cast back, so that bf16 images still see torch's float32 lam.
    """
    x = images.astype(jnp.float32)
    w = image_weight.astype(jnp.float32)[..., None]  # (H, W, 1) or scalar
    mixed = x * w + jnp.roll(x, 1, axis=0) * (1.0 - w)
    t = targets.astype(jnp.float32)
    mixed_targets = t * target_lam + jnp.roll(t, 1, axis=0) * (1.0 - target_lam)
    return mixed.astype(images.dtype), mixed_targets.astype(targets.dtype)


def _mixup(images: jax.Array, targets: jax.Array, lam: jax.Array) -> tuple[jax.Array, jax.Array]:
    """torchvision.transforms.v2.MixUp with a given lam, on one (per-device) batch, NHWC."""
    lam = jnp.asarray(lam, jnp.float32)
    return _blend(images, targets, lam, lam)


def _cutmix(
    images: jax.Array, targets: jax.Array, box: Box, lam_adjusted: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """torchvision.transforms.v2.CutMix with a given box, on one (per-device) batch, NHWC."""
    height, width = images.shape[1:3]
    weight = 1.0 - _box_mask(box, height, width).astype(jnp.float32)
    return _blend(images, targets, weight, jnp.asarray(lam_adjusted, jnp.float32))


def _mix_group(
    key: jax.Array,
    images: jax.Array,
    targets: jax.Array,
    mixup_alpha: float,
    cutmix_alpha: float,
) -> tuple[jax.Array, jax.Array]:
    """One RandomChoice([MixUp, CutMix]) draw applied to one group (B, H, W, C)."""
    height, width = images.shape[1:3]
    k_choice, k_lam, k_x, k_y = jax.random.split(key, 4)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = jax.random.bernoulli(k_choice)  # RandomChoice, p = [0.5, 0.5]
    else:
        use_cutmix = jnp.asarray(cutmix_alpha > 0)
    alpha = jnp.where(use_cutmix, cutmix_alpha, mixup_alpha)
    lam = jax.random.beta(k_lam, alpha, alpha, dtype=jnp.float32)
    r_x = jax.random.randint(k_x, (), 0, width)
    r_y = jax.random.randint(k_y, (), 0, height)
    box, lam_adjusted = _cutmix_box(lam, r_x, r_y, height, width)
    box_weight = 1.0 - _box_mask(box, height, width).astype(jnp.float32)
    image_weight = jnp.where(use_cutmix, box_weight, lam)
    target_lam = jnp.where(use_cutmix, lam_adjusted, lam)
    return _blend(images, targets, image_weight, target_lam)


def mix_batch(
    rng: jax.Array,
    images: jax.Array,
    targets: jax.Array,
    *,
    mixup_alpha: float,
    cutmix_alpha: float,
    num_groups: int,
) -> tuple[jax.Array, jax.Array]:
    """MixUp or CutMix (chosen per group) on float NHWC images and (B, K) soft targets.

    The batch is split into `num_groups` equal contiguous groups (pass the number of data-parallel
    devices); each gets its own choice, lam and pairing within the group, like torchvision's
    per-GPU collate. An alpha of 0 disables that method; both 0 returns the inputs unchanged.
    """
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise UserError(f"mixup_alpha={mixup_alpha}, cutmix_alpha={cutmix_alpha}: must be >= 0")
    if mixup_alpha == 0 and cutmix_alpha == 0:
        return images, targets
    batch = images.shape[0]
    if num_groups < 1 or batch % num_groups:
        raise UserError(f"batch of {batch} does not split into num_groups={num_groups} groups")
    grouped_images = images.reshape(num_groups, batch // num_groups, *images.shape[1:])
    grouped_targets = targets.reshape(num_groups, batch // num_groups, *targets.shape[1:])
    mix = functools.partial(
        _mix_group, mixup_alpha=float(mixup_alpha), cutmix_alpha=float(cutmix_alpha)
    )
    keys = jax.random.split(rng, num_groups)
    mixed_images, mixed_targets = jax.vmap(mix)(keys, grouped_images, grouped_targets)
    return mixed_images.reshape(images.shape), mixed_targets.reshape(targets.shape)
