"""Image decoding and torchvision-semantics crops on numpy arrays (uint8 HWC).

Why not PIL end to end: libjpeg-turbo through simplejpeg can decode a JPEG at 1/2, 1/4 or 1/8
scale in the DCT domain when the crop will be shrunk anyway, and OpenCV resizes small crops several
times faster than PIL. The crop *geometry* follows torchvision exactly (same box sampling, same
output sizes); interpolation is bilinear, switching to area averaging for real downscaling so that
it stays anti-aliased like torchvision's PIL path.
"""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
import simplejpeg
from PIL import Image

# Workers are separate processes (one core each); OpenCV's own thread pool would oversubscribe.
cv2.setNumThreads(1)

_JPEG_MAGIC = b"\xff\xd8"
# Above this shrink factor bilinear sampling starts to alias; area averaging does not.
_AREA_THRESHOLD = 1.25

Box = tuple[int, int, int, int]  # (top, left, height, width) as torchvision's get_params returns


def image_size(data: bytes) -> tuple[int, int]:
    """(height, width) of an encoded image, reading only the header."""
    if data[:2] == _JPEG_MAGIC:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        return height, width
    width, height = Image.open(io.BytesIO(data)).size
    return height, width


def decode(data: bytes, channels: int, min_size: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Decodes to uint8 HWC with `channels` (1 or 3; grayscale is replicated for 3).

    For JPEGs, `min_size` = (height, width) lets libjpeg decode at the smallest DCT scale that is
    still at least that large: decoding 4x fewer pixels when the image will be shrunk anyway.
    """
    if data[:2] == _JPEG_MAGIC:
        colorspace = "RGB" if channels == 3 else "GRAY"
        return simplejpeg.decode_jpeg(
            data,
            colorspace=colorspace,
            min_height=min_size[0],
            min_width=min_size[1],
        )
    image = Image.open(io.BytesIO(data)).convert("RGB" if channels == 3 else "L")
    array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array


def random_resized_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> Box:
    """torchvision's RandomResizedCrop.get_params: 10 tries, then a central crop."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_shorter_side(height: int, width: int, size: int) -> tuple[int, int]:
    """Output (height, width) of torchvision's Resize(size) with an int size."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def center_crop_box(height: int, width: int, size: int) -> Box:
    """torchvision's CenterCrop offsets (rounded half-differences)."""
    top = round((height - size) / 2.0)
    left = round((width - size) / 2.0)
    return top, left, size, size


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize to (height, width), area-averaged when shrinking by more than 1.25x."""
    if image.shape[:2] == (height, width):
        return image
    shrink = max(image.shape[0] / height, image.shape[1] / width)
    interpolation = cv2.INTER_AREA if shrink > _AREA_THRESHOLD else cv2.INTER_LINEAR
    out = cv2.resize(image, (width, height), interpolation=interpolation)
    return out[..., None] if out.ndim == 2 else out


def hflip(image: np.ndarray) -> np.ndarray:
    """Mirror left-right into a contiguous array (OpenCV: ~10x faster than numpy's [:, ::-1])."""
    out = cv2.flip(image, 1)
    return out[..., None] if out.ndim == 2 else out


def crop(image: np.ndarray, box: Box) -> np.ndarray:
    top, left, h, w = box
    return image[top : top + h, left : left + w]


def decode_random_resized_crop(
    data: bytes,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    channels: int,
    rng: np.random.Generator,
    dct_downscale: bool = False,
) -> np.ndarray:
    """Decode + RandomResizedCrop(size) with the box drawn on the full-resolution image.

    `dct_downscale` decodes JPEGs at the smallest DCT scale that keeps the crop >= `size`: much
    faster for large images, at a small pixel-level deviation from torchvision (mean |diff| of a
    few grey levels, like a JPEG re-encode); off by default for fidelity.
    """
    height, width = image_size(data)
    box = random_resized_crop_box(height, width, scale, ratio, rng)
    top, left, h, w = box
    min_size = (math.ceil(height * size / h), math.ceil(width * size / w))
    image = decode(data, channels, min_size if dct_downscale else (0, 0))
    if image.shape[:2] == (height, width):
        return resize(crop(image, box), size, size)
    # Decoded at a reduced DCT scale: the box is fractional there. Rounding it would shift the
    # crop by up to half a decoded pixel, so PIL resamples the exact box (antialiased, as
    # torchvision does); the image is already small, which keeps this cheap.
    fy, fx = image.shape[0] / height, image.shape[1] / width
    exact = (left * fx, top * fy, (left + w) * fx, (top + h) * fy)
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    out = np.asarray(pil.resize((size, size), Image.BILINEAR, box=exact))
    return out[..., None] if out.ndim == 2 else out


def decode_resize_center_crop(
    data: bytes, resize_to: int, crop_to: int, channels: int, dct_downscale: bool = False
) -> np.ndarray:
    """Decode + Resize(resize_to) on the shorter side + CenterCrop(crop_to), as torchvision eval.

    With `dct_downscale`, JPEGs decode at the smallest DCT scale still >= the resized size.
    """
    height, width = resized_shorter_side(*image_size(data), resize_to)
    min_size = (height, width) if dct_downscale else (0, 0)
    image = resize(decode(data, channels, min_size), height, width)
    return crop(image, center_crop_box(height, width, crop_to))
