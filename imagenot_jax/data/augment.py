"""torchvision's AutoAugment (ImageNet), RandAugment, TrivialAugmentWide and RandomErasing on
uint8 HWC numpy images, drawing from a numpy Generator (grain's per-element RNG, so the stream
stays deterministic and resumable).

Reference: `torchvision.transforms.v2` on uint8 CHW tensors (torchvision 0.29): the same op lists,
magnitude bins (float32, as torch.linspace computes them), signs and probabilities, and each op
as `torchvision.transforms.v2.functional` computes it. Point ops are LUTs or numpy arithmetic that
reproduces torch's float32 rounding (including its fused multiply-adds), so they are bit-identical.
Geometric ops use cv2.warpAffine with torch's inverse matrix and pixel-centre convention: NEAREST
matches except where a source coordinate lies within OpenCV's 1/1024-pixel fixed point of a
rounding tie (~0.1% of pixels for rotations, none for translations); BILINEAR (what torchvision's
reference recipes pass, as their `--interpolation`) samples at 1/32 pixel and so is within a few
grey levels of torch's float grid_sample. torchvision's recipe applies the policies to PIL images
(`--backend pil`); PIL's ops differ from the tensor ops by similar small amounts.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from imagenot_jax.data.random_erasing import erase_fill, random_erasing
from imagenot_jax.errors import UserError

Space = dict[str, tuple[np.ndarray | None, bool]]  # op -> (magnitude bins or None, signed)

POLICIES = ("ra", "ta_wide", "imagenet")  # torchvision reference `--auto-augment` values
INTERPOLATIONS = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR}

# torchvision AutoAugmentPolicy.IMAGENET: pairs of (op, probability, magnitude bin of 10).
IMAGENET_POLICY: tuple[tuple[tuple[str, float, int | None], ...], ...] = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
    (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)


# ---------------------------------------------------------------------------------------------
# Magnitude spaces (torchvision's _AUGMENTATION_SPACE tables, in float32 like torch).
# ---------------------------------------------------------------------------------------------


def _fma32(a: Any, b: Any, c: Any) -> np.ndarray:
    """float32 a*b + c rounded once, as torch's CPU kernels fuse it (the f64 product is exact)."""
    return (np.float64(np.float32(a)) * np.float32(b) + np.float32(c)).astype(np.float32)


def linspace32(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace(start, end, steps) in float32, bit for bit (its serial FMA kernel)."""
    s, e = np.float32(start), np.float32(end)
    step = (e - s) / np.float32(steps - 1)
    idx = np.arange(steps)
    low = _fma32(step, idx.astype(np.float32), s)
    high = _fma32(-step, (steps - 1 - idx).astype(np.float32), e)
    return np.where(idx < steps // 2, low, high)


def _posterize_bits(num_bins: int, span: int) -> np.ndarray:
    """(8 - arange(n) / ((n - 1) / span)).round().int() in float32, round-half-even."""
    return np.rint(8 - np.arange(num_bins, dtype=np.float32) / np.float32((num_bins - 1) / span))


@functools.lru_cache(maxsize=256)
def augmentation_space(policy: str, num_bins: int, height: int, width: int) -> Space:
    """The op -> (magnitudes, signed) table of a policy, in torchvision's order (which RandAugment
    and TrivialAugmentWide draw from uniformly). Cached per image size: treat it as read-only."""
    wide = policy == "ta_wide"
    top = 0.99 if wide else 0.9
    space: Space = {} if policy == "imagenet" else {"Identity": (None, False)}
    space["ShearX"] = (linspace32(0.0, 0.99 if wide else 0.3, num_bins), True)
    space["ShearY"] = space["ShearX"]
    for name, size in (("TranslateX", width), ("TranslateY", height)):
        space[name] = (linspace32(0.0, 32.0 if wide else 150.0 / 331.0 * size, num_bins), True)
    space["Rotate"] = (linspace32(0.0, 135.0 if wide else 30.0, num_bins), True)
    for name in ("Brightness", "Color", "Contrast", "Sharpness"):
        space[name] = (linspace32(0.0, top, num_bins), True)
    space["Posterize"] = (_posterize_bits(num_bins, 6 if wide else 4), False)
    space["Solarize"] = (linspace32(1.0, 0.0, num_bins), False)
    space["AutoContrast"] = (None, False)
    space["Equalize"] = (None, False)
    if policy == "imagenet":
        space["Invert"] = (None, False)
    for magnitudes, _ in space.values():
        if magnitudes is not None:
            magnitudes.flags.writeable = False
    return space


# ---------------------------------------------------------------------------------------------
# Ops (uint8 HWC in, uint8 HWC out), each as torchvision.transforms.v2.functional on a tensor.
# ---------------------------------------------------------------------------------------------


def _lut(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Applies a (256,) or per-channel (C, 256) lookup table."""
    table = np.asarray(table, np.uint8)
    if table.ndim == 2:
        table = table[0] if image.shape[2] == 1 else np.ascontiguousarray(table.T[:, None, :])
    return cv2.LUT(image, table).reshape(image.shape)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """torch's clamp_(0, 255).to(uint8) of a float tensor: clamp, then truncate."""
    return np.clip(values, 0, 255).astype(np.uint8)


def _inverse_affine(center, angle, translate, shear) -> list[float]:
    """torchvision's _get_inverse_affine_matrix (scale 1): output -> input, centred coords."""
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    a = math.cos(rot - sy) / math.cos(sy)
    b = -(a * math.tan(sx) + math.sin(rot))
    c = math.sin(rot - sy) / math.cos(sy)
    d = math.cos(rot) - c * math.tan(sx)
    m = [d, -b, 0.0, -c, a, 0.0]
    px, py = center[0] + translate[0], center[1] + translate[1]
    m[2] += center[0] - m[0] * px - m[1] * py
    m[5] += center[1] - m[3] * px - m[4] * py
    return m


def _warp(image: np.ndarray, m: list[float], interpolation: str) -> np.ndarray:
    """Samples like grid_sample(align_corners=False, zero padding): torch's matrix acts on
    coordinates centred at ((w-1)/2, (h-1)/2), here folded into a pixel-index matrix."""
    h, w = image.shape[:2]
    cx, cy = (w - 1) / 2, (h - 1) / 2
    matrix = np.array(
        [
            [m[0], m[1], m[2] + cx - m[0] * cx - m[1] * cy],
            [m[3], m[4], m[5] + cy - m[3] * cx - m[4] * cy],
        ]
    )
    flags = INTERPOLATIONS[interpolation] | cv2.WARP_INVERSE_MAP
    out = cv2.warpAffine(image, matrix, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT)
    return out.reshape(image.shape)


def affine(
    image: np.ndarray,
    translate: Sequence[float] = (0.0, 0.0),
    shear: Sequence[float] = (0.0, 0.0),
    center: Sequence[float] | None = None,
    interpolation: str = "nearest",
) -> np.ndarray:
    """F.affine(angle=0, scale=1) with fill 0; `shear` in degrees, `center` in pixels."""
    h, w = image.shape[:2]
    centre = (0.0, 0.0) if center is None else (center[0] - w * 0.5, center[1] - h * 0.5)
    return _warp(image, _inverse_affine(centre, 0.0, translate, shear), interpolation)


def rotate(image: np.ndarray, angle: float, interpolation: str = "nearest") -> np.ndarray:
    """F.rotate(angle) counter-clockwise about the centre, expand=False, fill 0."""
    angle = angle % 360
    square = image.shape[0] == image.shape[1]
    if angle == 0 or angle == 180 or (square and angle in (90, 270)):  # torch's exact fast paths
        return np.ascontiguousarray(np.rot90(image, int(angle) // 90, axes=(0, 1)))
    return _warp(image, _inverse_affine((0.0, 0.0), -angle, (0, 0), (0, 0)), interpolation)


_LEVELS = np.arange(256, dtype=np.float32)


def _split(image: np.ndarray) -> list[np.ndarray]:
    return list(cv2.split(image)) if image.shape[2] > 1 else [image[..., 0]]


def _grayscale(image: np.ndarray) -> np.ndarray:
    """floor(0.2989 r + 0.587 g + 0.114 b) as torch computes it, as uint8: fma(b, .114, fma(g,
    .587, r * .2989)) in float32 (products by float32 constants are exact in float64)."""
    r, g, b = cv2.split(image)
    partial = (g * np.float64(np.float32(0.587)) + r * np.float32(0.2989)).astype(np.float32)
    gray = (b * np.float64(np.float32(0.114)) + partial).astype(np.float32)
    return np.floor(gray).astype(np.uint8)


def _pairwise(table: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """table[x, y] for a (256, 256) uint8 table and two uint8 images of one shape."""
    index = x.astype(np.uint16) << 8
    index |= y
    return table.ravel().take(index)


@functools.lru_cache(maxsize=128)  # policies use a few dozen factors; 64 KiB each
def _blend_table(factor: float) -> np.ndarray:
    """[x, y] -> torch's _blend(x, y, factor) = trunc(clip(fma(y, 1 - factor, x * factor)))."""
    return _to_uint8(_fma32(_LEVELS[None, :], 1.0 - factor, _LEVELS[:, None] * np.float32(factor)))


@functools.lru_cache(maxsize=128)
def _sharpness_table(factor: float) -> np.ndarray:
    """[x, blurred] -> torch's x + (1 - factor) * (blurred - x), fused, clamped, truncated."""
    return _to_uint8(_fma32(_LEVELS[None, :] - _LEVELS[:, None], 1.0 - factor, _LEVELS[:, None]))


def adjust_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    return _lut(image, _to_uint8(_LEVELS * np.float32(factor)))


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the (floored) grayscale image; a no-op on one channel, like PIL."""
    if image.shape[2] == 1:
        return image
    gray = _grayscale(image)
    return _pairwise(_blend_table(factor), image, cv2.merge([gray, gray, gray]))


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the mean of the (floored) grayscale image: a LUT once the mean is known."""
    gray = _grayscale(image) if image.shape[2] == 3 else image
    # torch's float32 sum of integers is exact below 2**24; then one float32 division.
    mean = np.float32(cv2.sumElems(gray)[0]) / np.float32(gray.size)
    return _lut(image, _to_uint8(_fma32(mean, 1.0 - factor, _LEVELS * np.float32(factor))))


_SHARPNESS_KERNEL = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13


def adjust_sharpness(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend the interior with a [[1,1,1],[1,5,1],[1,1,1]]/13 blur; the border stays.

    The blur of integers is never within 1/26 of a rounding tie, so OpenCV's rounded uint8 blur
    equals torch's float32 conv + round; the blend is a (pixel, blurred) table.
    """
    h, w = image.shape[:2]
    if h <= 2 or w <= 2:
        return image
    blurred = cv2.filter2D(image, -1, _SHARPNESS_KERNEL).reshape(image.shape)
    out = image.copy()
    out[1:-1, 1:-1] = _pairwise(_sharpness_table(factor), image[1:-1, 1:-1], blurred[1:-1, 1:-1])
    return out


def posterize(image: np.ndarray, bits: int) -> np.ndarray:
    return image if bits >= 8 else image & np.uint8((0xFF << (8 - bits)) & 0xFF)


def solarize(image: np.ndarray, threshold: float) -> np.ndarray:
    """Inverts pixels >= threshold (compared in float32, as torch promotes the scalar)."""
    values = np.arange(256)
    return _lut(image, np.where(values >= np.float32(threshold), 255 - values, values))


def autocontrast(image: np.ndarray) -> np.ndarray:
    """Per channel, stretches [min, max] to [0, 255] (float32, truncated)."""
    tables = []
    for channel in _split(image):
        low, high = (np.float32(v) for v in cv2.minMaxLoc(channel)[:2])
        if low == high:
            tables.append(_LEVELS)
            continue
        scale = (high - low) * np.float32(1.0 / 255)
        tables.append((_LEVELS - low) / scale)
    return _lut(image, _to_uint8(np.stack(tables)))


def equalize(image: np.ndarray) -> np.ndarray:
    """Per-channel histogram equalisation with PIL's LUT, as torchvision's tensor kernel."""
    tables = []
    for channel in _split(image):
        hist = cv2.calcHist([channel], [0], None, [256], [0, 256])[:, 0].astype(np.int64)
        cum = np.cumsum(hist)
        step = (channel.size - hist[np.argmax(cum)]) // 255
        if step == 0:
            tables.append(np.arange(256))
        else:
            tables.append(np.concatenate([[0], np.clip((cum[:-1] + step // 2) // step, 0, 255)]))
    return _lut(image, np.stack(tables))


def invert(image: np.ndarray) -> np.ndarray:
    return 255 - image


def apply_op(image: np.ndarray, op: str, magnitude: float, interpolation: str) -> np.ndarray:
    """One op with a signed magnitude, as torchvision v2's _apply_image_or_video_transform."""
    image = np.ascontiguousarray(image)  # OpenCV wants contiguous rows
    if op in ("ShearX", "ShearY"):
        degrees = math.degrees(math.atan(magnitude))
        shear = (degrees, 0.0) if op == "ShearX" else (0.0, degrees)
        return affine(image, shear=shear, center=(0.0, 0.0), interpolation=interpolation)
    if op in ("TranslateX", "TranslateY"):
        shift = (int(magnitude), 0) if op == "TranslateX" else (0, int(magnitude))
        return affine(image, translate=shift, interpolation=interpolation)
    if op == "Rotate":
        return rotate(image, magnitude, interpolation)
    if op == "Brightness":
        return adjust_brightness(image, 1.0 + magnitude)
    if op == "Color":
        return adjust_saturation(image, 1.0 + magnitude)
    if op == "Contrast":
        return adjust_contrast(image, 1.0 + magnitude)
    if op == "Sharpness":
        return adjust_sharpness(image, 1.0 + magnitude)
    if op == "Posterize":
        return posterize(image, int(magnitude))
    if op == "Solarize":
        return solarize(image, 255 * magnitude)
    if op == "AutoContrast":
        return autocontrast(image)
    if op == "Equalize":
        return equalize(image)
    if op == "Invert":
        return invert(image)
    if op == "Identity":
        return image
    raise UserError(f"unknown augmentation op {op!r}")


# ---------------------------------------------------------------------------------------------
# Policies: sample() draws the ops (consuming the RNG like torchvision draws its own), __call__
# applies them.
# ---------------------------------------------------------------------------------------------


def _signed(magnitude: float, signed: bool, rng: np.random.Generator) -> float:
    return -magnitude if signed and rng.random() <= 0.5 else magnitude


class Policy:
    """An auto-augment policy: `policy(image, rng)` with the example's grain RNG."""

    interpolation: str

    def sample(self, rng: np.random.Generator, height: int, width: int) -> list[tuple[str, float]]:
        raise NotImplementedError

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for op, magnitude in self.sample(rng, *image.shape[:2]):
            image = apply_op(image, op, magnitude, self.interpolation)
        return image


class AutoAugment(Policy):
    """AutoAugment(AutoAugmentPolicy.IMAGENET): one of 25 sub-policies of two ops each."""

    def __init__(self, interpolation: str = "nearest") -> None:
        self.interpolation = interpolation

    def sample(self, rng: np.random.Generator, height: int, width: int) -> list[tuple[str, float]]:
        space = augmentation_space("imagenet", 10, height, width)
        ops = []
        for op, probability, index in IMAGENET_POLICY[rng.integers(len(IMAGENET_POLICY))]:
            if not rng.random() <= probability:
                continue
            magnitudes, signed = space[op]
            magnitude = 0.0 if magnitudes is None else float(magnitudes[index])
            ops.append((op, _signed(magnitude, signed, rng)))
        return ops


class RandAugment(Policy):
    """RandAugment: `num_ops` uniformly drawn ops, all at bin `magnitude` of the bins."""

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: int = 9,
        num_magnitude_bins: int = 31,
        interpolation: str = "nearest",
    ) -> None:
        self.num_ops, self.magnitude, self.num_bins = num_ops, magnitude, num_magnitude_bins
        self.interpolation = interpolation

    def sample(self, rng: np.random.Generator, height: int, width: int) -> list[tuple[str, float]]:
        space = augmentation_space("ra", self.num_bins, height, width)
        names = list(space)
        ops = []
        for _ in range(self.num_ops):
            op = names[rng.integers(len(names))]
            magnitudes, signed = space[op]
            if magnitudes is None:
                ops.append((op, 0.0))
            else:
                ops.append((op, _signed(float(magnitudes[self.magnitude]), signed, rng)))
        return ops


class TrivialAugmentWide(Policy):
    """TrivialAugmentWide: one op drawn uniformly at a uniformly drawn magnitude bin."""

    def __init__(self, num_magnitude_bins: int = 31, interpolation: str = "nearest") -> None:
        self.num_bins, self.interpolation = num_magnitude_bins, interpolation

    def sample(self, rng: np.random.Generator, height: int, width: int) -> list[tuple[str, float]]:
        space = augmentation_space("ta_wide", self.num_bins, height, width)
        names = list(space)
        op = names[rng.integers(len(names))]
        magnitudes, signed = space[op]
        if magnitudes is None:
            return [(op, 0.0)]
        return [(op, _signed(float(magnitudes[rng.integers(self.num_bins)]), signed, rng))]


def make_policy(
    name: str | None, ra_magnitude: int = 9, interpolation: str = "bilinear"
) -> Policy | None:
    """The policy torchvision's ClassificationPresetTrain builds for `--auto-augment name`."""
    if name is None:
        return None
    if interpolation not in INTERPOLATIONS:
        raise UserError(
            f"input.auto_augment_interpolation must be one of {sorted(INTERPOLATIONS)}; "
            f"got {interpolation!r}"
        )
    if name == "ra":
        if not (isinstance(ra_magnitude, int) and 0 <= ra_magnitude < 31):
            raise UserError(f"input.ra_magnitude must be an int in [0, 30]; got {ra_magnitude!r}")
        return RandAugment(magnitude=ra_magnitude, interpolation=interpolation)
    if name == "ta_wide":
        return TrivialAugmentWide(interpolation=interpolation)
    if name == "imagenet":
        return AutoAugment(interpolation=interpolation)
    raise UserError(f"input.auto_augment must be None or one of {list(POLICIES)}; got {name!r}")


class TrainAugment:
    """The per-example augmentations after RandomResizedCrop and flip, in the preset's order."""

    def __init__(self, policy: Policy | None, erase_p: float, fill: np.ndarray | None) -> None:
        self.policy, self.erase_p, self.fill = policy, erase_p, fill

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.policy is not None:
            image = self.policy(image, rng)
        if self.erase_p > 0:
            image = random_erasing(image, rng, self.erase_p, self.fill)
        return image


def train_augment(input_cfg: Any) -> TrainAugment | None:
    """From the `input` config section; None when both augmentations are off (the RNG stream and
    outputs are then exactly the plain crop + flip pipeline's)."""
    policy = make_policy(
        input_cfg.get("auto_augment"),
        input_cfg.get("ra_magnitude", 9),
        input_cfg.get("auto_augment_interpolation", "bilinear"),
    )
    erase_p = float(input_cfg.get("random_erase", 0.0) or 0.0)
    if not 0.0 <= erase_p <= 1.0:
        raise UserError(f"input.random_erase must be a probability in [0, 1]; got {erase_p}")
    if policy is None and erase_p == 0:
        return None
    fill = None
    if erase_p > 0:
        if input_cfg.get("mean") is None:
            raise UserError("input.random_erase needs input.mean (0..255) for its fill colour")
        fill = erase_fill(input_cfg.mean, input_cfg.channels)
    return TrainAugment(policy, erase_p, fill)
