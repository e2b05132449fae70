"""torchvision's RandomErasing on uint8 HWC numpy images, drawing from a numpy Generator.

torchvision applies it after normalisation with value 0; here it runs before normalisation and
fills with the mean colour (the same pixels, see `erase_fill`). Used by augment.TrainAugment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from imagenot_jax.errors import UserError

Box = tuple[int, int, int, int]  # (top, left, height, width)


def erase_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> Box | None:
    """RandomErasing.get_params: 10 tries of area x aspect (h = sqrt(area * aspect)), else None."""
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        area = height * width * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        h = round(math.sqrt(area * aspect))
        w = round(math.sqrt(area / aspect))
        if h < height and w < width:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    return None


def erase_fill(mean: Sequence[float], channels: int) -> np.ndarray:
    """RandomErasing's value 0 after Normalize(mean, std) is the mean colour before it: rounded
    to uint8 that is off by at most 0.5 grey levels (0.5 / std ~ 0.009 in normalised units)."""
    fill = np.clip(np.round(np.asarray(mean, np.float64)), 0, 255).astype(np.uint8)
    if fill.size not in (1, channels):
        raise UserError(f"input.mean has {fill.size} values for {channels}-channel images")
    return np.broadcast_to(fill, (channels,)).copy()


def random_erasing(
    image: np.ndarray,
    rng: np.random.Generator,
    p: float,
    fill: np.ndarray,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
) -> np.ndarray:
    """RandomErasing(p, scale, ratio, value=0) on the uint8 image, filled with `fill`."""
    if not rng.random() < p:
        return image
    box = erase_box(image.shape[0], image.shape[1], scale, ratio, rng)
    if box is None:
        return image
    top, left, h, w = box
    out = image.copy()
    out[top : top + h, left : left + w] = fill
    return out
