"""Crop geometry follows torchvision; pixels agree with PIL's antialiased bilinear reference."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from imagenot_jax.data import image_ops


def _jpeg(width: int, height: int, quality: int = 95) -> bytes:
    import skimage.data

    photo = Image.fromarray(skimage.data.astronaut()).resize((width, height), Image.BICUBIC)
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@settings(max_examples=200, deadline=None)
@given(
    height=st.integers(1, 900),
    width=st.integers(1, 900),
    scale_low=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_resized_crop_box_stays_inside_and_respects_scale_and_ratio(
    height, width, scale_low, seed
):
    scale, ratio = (scale_low, 1.0), (3 / 4, 4 / 3)
    top, left, h, w = image_ops.random_resized_crop_box(
        height, width, scale, ratio, np.random.default_rng(seed)
    )
    assert min(top, left) >= 0 and min(h, w) > 0
    assert top + h <= height and left + w <= width
    # Either a sampled box (area and aspect within range, up to integer rounding) or
    # torchvision's fallback: a central crop with the aspect ratio clamped into range.
    rounding = (h + 1) * (w + 1) / (h * w)
    sampled = scale[0] / rounding <= h * w / (height * width) <= scale[1] * rounding
    if sampled:
        assert ratio[0] / rounding <= w / h <= ratio[1] * rounding
    else:
        assert (top, left) == ((height - h) // 2, (width - w) // 2)


def test_fallback_matches_torchvision_central_crop():
    # No box of 90-100% area with ratio in [3/4, 4/3] fits a 10x100 image: central crop, clamped.
    box = image_ops.random_resized_crop_box(
        10, 100, (0.9, 1.0), (3 / 4, 4 / 3), np.random.default_rng(0)
    )
    assert box == (0, (100 - 13) // 2, 10, 13)  # w = round(10 * 4/3)


def test_torchvision_resize_and_center_crop_geometry():
    assert image_ops.resized_shorter_side(375, 500, 256) == (256, 341)
    assert image_ops.resized_shorter_side(500, 375, 256) == (341, 256)
    assert image_ops.center_crop_box(256, 341, 224) == (16, 58, 224, 224)  # round(58.5) = 58


@pytest.mark.parametrize(
    ("size", "dct_downscale", "tolerance"),
    [
        ((500, 375), False, 2.5),  # only the bilinear/area kernels differ from PIL's
        ((341, 256), False, 2.5),
        ((200, 180), False, 2.5),
        ((1000, 750), True, 6.0),  # + libjpeg's DCT-domain downscale instead of a full decode
        ((500, 375), True, 6.0),
    ],
)
def test_random_resized_crop_pixels_match_pil_reference(size, dct_downscale, tolerance):
    data = _jpeg(*size)
    reference = Image.open(io.BytesIO(data)).convert("RGB")
    for seed in range(8):
        got = image_ops.decode_random_resized_crop(
            data, 96, (0.08, 1.0), (3 / 4, 4 / 3), 3, np.random.default_rng(seed), dct_downscale
        )
        top, left, h, w = image_ops.random_resized_crop_box(
            size[1], size[0], (0.08, 1.0), (3 / 4, 4 / 3), np.random.default_rng(seed)
        )
        expected = np.asarray(
            reference.resize((96, 96), Image.BILINEAR, box=(left, top, left + w, top + h))
        )
        assert got.shape == expected.shape == (96, 96, 3)
        # A crop shifted by 3 px differs by ~17 grey levels on this image: geometry is exact.
        assert np.abs(got.astype(float) - expected).mean() < tolerance, (seed, h, w)


@pytest.mark.parametrize("size", [(500, 375), (341, 256), (300, 600)])
@pytest.mark.parametrize("dct_downscale", [False, True])
def test_resize_center_crop_pixels_match_torchvision_style_reference(size, dct_downscale):
    data = _jpeg(*size)
    got = image_ops.decode_resize_center_crop(data, 128, 112, 3, dct_downscale)
    image = Image.open(io.BytesIO(data)).convert("RGB")
    height, width = image_ops.resized_shorter_side(size[1], size[0], 128)
    resized = image.resize((width, height), Image.BILINEAR)
    top, left, _, _ = image_ops.center_crop_box(height, width, 112)
    expected = np.asarray(resized)[top : top + 112, left : left + 112]
    assert got.shape == (112, 112, 3)
    assert np.abs(got.astype(float) - expected).mean() < (6.0 if dct_downscale else 2.5)


def test_grayscale_png_and_jpeg_decode_to_requested_channels():
    gray = np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))
    for fmt in ("PNG", "JPEG"):
        buffer = io.BytesIO()
        Image.fromarray(gray, "L").save(buffer, fmt)
        rgb = image_ops.decode(buffer.getvalue(), channels=3)
        one = image_ops.decode(buffer.getvalue(), channels=1)
        assert rgb.shape == (48, 64, 3) and one.shape == (48, 64, 1)
        np.testing.assert_array_equal(rgb[..., 0], rgb[..., 1])
        assert math.isclose(float(one.mean()), float(gray.mean()), abs_tol=2)
