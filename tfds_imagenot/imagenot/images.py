"""Turn one downloaded image into the JPEG bytes that get stored.

Web images come in every mode PIL knows (RGBA, palette, CMYK, 16-bit grey, ...), some carry an
EXIF rotation, some are truncated or are not images at all. Training wants upright RGB JPEGs, so
anything else is converted; but re-encoding a JPEG loses quality and costs CPU, so a JPEG that is
already what we would store keeps its original bytes. Decoding is always complete
(`Image.load()`), which is what catches truncated files.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps

# Transparent pixels become white, the usual background of product/clip-art web images.
_BACKGROUND = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
# Start-of-frame markers every JPEG decoder reads: baseline, extended sequential, progressive.
_PORTABLE_SOF = frozenset({0xC0, 0xC1, 0xC2})
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})


@dataclasses.dataclass(frozen=True)
class ImagePolicy:
    """How images are stored: resize bound (None = keep size) and JPEG re-encode quality."""

    max_short_side: int | None
    jpeg_quality: int = 90


class UndecodableImageError(ValueError):
    """The bytes are not an image PIL can fully decode (corrupt, truncated, too large, ...)."""


def normalize_image(data: bytes, policy: ImagePolicy) -> bytes:
    """Return the JPEG bytes to store for `data`, per `policy`; raise UndecodableImageError."""
    image = decode(data)
    rotated = exif_orientation(image) != 1
    too_big = policy.max_short_side is not None and min(image.size) > policy.max_short_side
    if not rotated and not too_big and _is_portable_rgb_jpeg(image, data):
        return data
    try:
        if rotated:
            image = ImageOps.exif_transpose(image)
        image = to_rgb(image)
        if too_big:
            image = resize_short_side(image, policy.max_short_side)
        return encode_jpeg(image, policy.jpeg_quality)
    except (OSError, ValueError) as e:  # e.g. a mode PIL cannot convert
        raise UndecodableImageError(f"cannot convert {image.mode} image: {e}") from e


def decode(data: bytes) -> Image.Image:
    """Open and fully decode; any failure (PIL raises many types) is an UndecodableImageError."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; truncated images would be stored. "
            "Set it to False before building."
        )
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Image.DecompressionBombError as e:
        raise UndecodableImageError(f"decompression bomb: {e}") from e
    except Exception as e:  # PIL signals bad input with many exception types
        raise UndecodableImageError(f"{type(e).__name__}: {e}") from e
    if image.width < 1 or image.height < 1:
        raise UndecodableImageError(f"empty image {image.size}")
    return image


def exif_orientation(image: Image.Image) -> int:
    """EXIF orientation 1..8 (1 = upright); invalid or absent values count as upright."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # malformed EXIF must not make a good image unusable
        return 1
    return value if isinstance(value, int) and 2 <= value <= 8 else 1


def _is_portable_rgb_jpeg(image: Image.Image, data: bytes) -> bool:
    return (
        image.format in _JPEG_FORMATS
        and image.mode == "RGB"
        and jpeg_sof_marker(data) in _PORTABLE_SOF
    )


def jpeg_sof_marker(data: bytes) -> int | None:
    """The JPEG start-of-frame marker (0xC0 baseline, 0xC2 progressive, ...), None if absent."""
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length field
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited on white, 16-bit/float scaled to 8 bits."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return _high_depth_to_l(image).convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """16-bit and float greyscale to 8 bits by scaling (PIL's convert('L') would clip)."""
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        values = values * 255.0 if values.size and values.max() <= 1.0 else values
    elif image.mode.startswith("I;16") or (values.size and values.max() > 255):
        values = np.clip(values, 0, 65535) / 257.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def resize_short_side(image: Image.Image, short_side: int) -> Image.Image:
    """Resize so min(width, height) == short_side exactly; BICUBIC antialiases when shrinking."""
    width, height = image.size
    scale = short_side / min(width, height)
    if width <= height:
        size = (short_side, max(1, int(height * scale + 0.5)))
    else:
        size = (max(1, int(width * scale + 0.5)), short_side)
    return image.resize(size, Image.Resampling.BICUBIC)


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    """RGB JPEG without ICC/EXIF (the pixels are already upright sRGB-as-is)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
