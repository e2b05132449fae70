"""Auto-augment policies and RandomErasing vs torchvision.transforms.v2 on uint8 tensors."""

from __future__ import annotations

import collections
import functools
import math

import cv2
import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

from imagenot_jax.data import augment, input_pipeline, random_erasing
from imagenot_jax.data.datasets import IMAGENET_MEAN
from imagenot_jax.data.input_pipeline import ProcessShard
from tests.helpers import assert_same_batches, pipeline_config, take

H, W = 112, 144  # not square, so width/height mix-ups show


@pytest.fixture(scope="module", autouse=True)
def _single_threaded_torch():
    """torch's thread pool costs ~90 ms per tiny op on a busy 2-core machine; 1 thread: 0.3 ms."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photo (bundled with scikit-image): edges, texture and smooth regions."""
    import skimage.data

    return cv2.resize(skimage.data.astronaut()[20:420, 0:500], (W, H), interpolation=cv2.INTER_AREA)


@functools.cache
def _torch_policy(interpolation: str) -> v2.RandAugment:
    return v2.RandAugment(interpolation=InterpolationMode(interpolation))  # slow to build


def _torch_op(image: np.ndarray, op: str, magnitude: float, interpolation: str) -> np.ndarray:
    """torchvision v2's own (op, signed magnitude) -> functional call, on a uint8 CHW tensor."""
    policy = _torch_policy(interpolation)
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    out = policy._apply_image_or_video_transform(
        tensor, op, magnitude, interpolation=policy.interpolation, fill=policy._fill
    )
    return out.numpy().transpose(1, 2, 0)


def _magnitudes(op: str) -> list[float]:
    """Three signed magnitudes from torchvision's tables: RandAugment's default bin 9 with both
    signs and TrivialAugmentWide's largest."""
    ra, signed = augment.augmentation_space("ra", 31, H, W)[op]
    wide = augment.augmentation_space("ta_wide", 31, H, W)[op][0]
    if ra is None:
        return [0.0]
    return [float(ra[9]), -float(ra[9]) if signed else float(ra[3]), float(wide[30])]


# --- ops ---------------------------------------------------------------------------------------

POINT_OPS = ["Brightness", "Color", "Contrast", "Sharpness", "Posterize", "Solarize"]
POINT_OPS += ["AutoContrast", "Equalize", "Invert", "Identity"]
GEOMETRIC_OPS = ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"]
SOLARIZE_TABLES = [("ra", 31), ("ta_wide", 31), ("imagenet", 10)]


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("op", POINT_OPS)
def test_point_ops_are_bit_identical_to_torchvision(photo, op, channels):
    image = photo if channels == 3 else cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)[..., None]
    magnitudes = _magnitudes(op) if op != "Invert" else [0.0]
    if op in ("Solarize", "Posterize"):  # every distinct bin (thresholds near integers matter)
        tables = [augment.augmentation_space(p, n, H, W)[op][0] for p, n in SOLARIZE_TABLES]
        magnitudes = sorted({float(m) for table in tables for m in table})
    for magnitude in magnitudes:
        ours = augment.apply_op(image, op, magnitude, "nearest")
        assert ours.dtype == np.uint8 and ours.shape == image.shape
        np.testing.assert_array_equal(ours, _torch_op(image, op, magnitude, "nearest"), op)


def test_flat_image_edge_cases_match_torchvision():
    """AutoContrast with max == min and Equalize with a single level leave the image alone."""
    flat = np.full((8, 9, 3), 77, np.uint8)
    flat[0, 0] = 200  # Equalize: one non-max pixel, step == 0
    for op in ("AutoContrast", "Equalize", "Contrast", "Sharpness"):
        for image in (flat, np.full((8, 9, 3), 77, np.uint8)):
            ours = augment.apply_op(image, op, 0.5, "nearest")
            np.testing.assert_array_equal(ours, _torch_op(image, op, 0.5, "nearest"))


@pytest.mark.parametrize("op", GEOMETRIC_OPS)
def test_geometric_ops_nearest_match_torchvision(photo, op):
    """Only coordinates within OpenCV's 1/1024 px of a rounding tie may pick another pixel."""
    for magnitude in _magnitudes(op):
        ours = augment.apply_op(photo, op, magnitude, "nearest")
        expected = _torch_op(photo, op, magnitude, "nearest")
        same = (ours == expected).all(axis=-1).mean()
        if op.startswith("Translate"):
            np.testing.assert_array_equal(ours, expected)
        assert same >= 0.995, (op, magnitude, same)


@pytest.mark.parametrize("op", GEOMETRIC_OPS)
def test_geometric_ops_bilinear_are_within_a_few_grey_levels(photo, op):
    """OpenCV samples bilinearly at 1/32 px (torch: float32): a few grey levels at most."""
    for magnitude in _magnitudes(op):
        ours = augment.apply_op(photo, op, magnitude, "bilinear").astype(int)
        diff = np.abs(ours - _torch_op(photo, op, magnitude, "bilinear"))
        assert diff.max() <= 6 and diff.mean() < 0.3, (op, magnitude, diff.max(), diff.mean())


def test_rotate_fast_paths_match_torchvision(photo):
    square = photo[:, :H]
    for angle in (0.0, 90.0, 180.0, 270.0, -90.0, 360.0):
        expected = _torch_op(square, "Rotate", angle, "nearest")
        ours = augment.apply_op(square, "Rotate", angle, "nearest")
        np.testing.assert_array_equal(ours, expected)


# --- policy tables -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "cls", "bins"),
    [
        ("ra", v2.RandAugment, 31),
        ("ta_wide", v2.TrivialAugmentWide, 31),
        ("imagenet", v2.AutoAugment, 10),
        ("ra", v2.RandAugment, 10),
    ],
)
def test_magnitude_tables_equal_torchvision(policy, cls, bins):
    for height, width in ((H, W), (224, 224), (331, 500)):
        ours = augment.augmentation_space(policy, bins, height, width)
        theirs = cls._AUGMENTATION_SPACE
        assert list(ours) == list(theirs)  # the order RandAugment/TrivialAugmentWide draw from
        for op, (magnitudes_fn, signed) in theirs.items():
            expected = magnitudes_fn(bins, height, width)
            assert ours[op][1] == signed, op
            if expected is None:
                assert ours[op][0] is None, op
            else:
                np.testing.assert_array_equal(ours[op][0], expected.numpy(), op)


def test_imagenet_policy_and_op_lists_equal_torchvision():
    assert list(augment.IMAGENET_POLICY) == v2.AutoAugment()._policies
    v1 = __import__("torchvision").transforms
    assert list(augment.IMAGENET_POLICY) == v1.AutoAugment().policies
    # v1 lists the same ops in the same order (v1 states Solarize's thresholds as 0..255).
    assert list(augment.augmentation_space("ra", 31, H, W)) == list(
        v1.RandAugment()._augmentation_space(31, (H, W))
    )
    assert list(augment.augmentation_space("ta_wide", 31, H, W)) == list(
        v1.TrivialAugmentWide()._augmentation_space(31)
    )


# --- policy sampling -----------------------------------------------------------------------------


def _op_rates(policy, draws: int) -> tuple[collections.Counter, list[tuple[str, float]]]:
    rng = np.random.default_rng(0)
    ops = [op for _ in range(draws) for op in policy.sample(rng, H, W)]
    return collections.Counter(op for op, _ in ops), ops


def test_randaugment_samples_like_torchvision():
    policy = augment.make_policy("ra", ra_magnitude=9)
    space = augment.augmentation_space("ra", 31, H, W)
    counts, ops = _op_rates(policy, 10000)
    for op in space:  # 2 ops per image, uniform over the 14
        assert abs(counts[op] / 10000 - 2 / 14) < 0.015, op
    for op, magnitude in ops:
        magnitudes = space[op][0]
        assert abs(magnitude) == (0.0 if magnitudes is None else float(magnitudes[9]))
    negative = [m < 0 for op, m in ops if space[op][1] and m != 0]
    assert abs(np.mean(negative) - 0.5) < 0.02


def test_trivialaugment_samples_like_torchvision():
    space = augment.augmentation_space("ta_wide", 31, H, W)
    counts, ops = _op_rates(augment.make_policy("ta_wide"), 14000)
    assert all(abs(counts[op] / 14000 - 1 / 14) < 0.01 for op in space)
    rotations = {abs(m) for op, m in ops if op == "Rotate"}
    assert rotations == {float(m) for m in space["Rotate"][0]}  # every bin, uniformly drawn


def test_autoaugment_samples_like_torchvision():
    expected = collections.Counter()
    for sub_policy in augment.IMAGENET_POLICY:
        for op, probability, _ in sub_policy:
            expected[op] += probability / len(augment.IMAGENET_POLICY)
    counts, ops = _op_rates(augment.make_policy("imagenet"), 20000)
    for op, rate in expected.items():
        assert abs(counts[op] / 20000 - rate) < 0.012, op
    space = augment.augmentation_space("imagenet", 10, H, W)
    allowed = {
        (op, 0.0 if i is None else float(space[op][0][i]))
        for sub_policy in augment.IMAGENET_POLICY
        for op, _, i in sub_policy
    }
    assert {(op, abs(m)) for op, m in ops} <= allowed


@pytest.mark.parametrize("name", augment.POLICIES)
def test_policies_are_deterministic_per_seed_and_vary_across_seeds(photo, name):
    policy = augment.make_policy(name)
    outputs = []
    for seed in range(6):
        first = policy(photo, np.random.default_rng(seed))
        np.testing.assert_array_equal(first, policy(photo, np.random.default_rng(seed)))
        assert first.dtype == np.uint8 and first.shape == photo.shape
        outputs.append(first)
    assert len({o.tobytes() for o in outputs}) > 2


def test_bad_policy_settings_are_value_errors():
    with pytest.raises(ValueError, match=r"input\.auto_augment .*'ra', 'ta_wide', 'imagenet'"):
        augment.make_policy("rand-m9")
    with pytest.raises(ValueError, match=r"input\.ra_magnitude"):
        augment.make_policy("ra", ra_magnitude=31)
    with pytest.raises(ValueError, match=r"input\.auto_augment_interpolation"):
        augment.make_policy("ra", interpolation="bicubic")


# --- RandomErasing -----------------------------------------------------------------------------


def test_erase_boxes_follow_torchvision_statistics():
    rng, draws = np.random.default_rng(0), 4000
    scale, ratio = (0.02, 0.33), (0.3, 3.3)
    ours = np.array([random_erasing.erase_box(224, 160, scale, ratio, rng) for _ in range(draws)])
    torch.manual_seed(0)
    erasing, image = v2.RandomErasing(p=1.0), torch.zeros(3, 224, 160)
    theirs = np.array(
        [[p[k] for k in "ijhw"] for p in (erasing.make_params([image]) for _ in range(draws))]
    )
    for boxes in (ours, theirs):
        top, left, h, w = boxes.T
        assert (h < 224).all() and (w < 160).all() and (top + h <= 224).all()
        assert (left + w <= 160).all() and (top >= 0).all() and (left >= 0).all()
        area = h * w / (224 * 160)
        assert area.min() >= 0.02 * 0.8 and area.max() <= 0.33 * 1.1  # rounding of h, w
        assert (h / w).min() >= 0.3 * 0.8 and (h / w).max() <= 3.3 * 1.25
    # Same distributions of area fraction and log aspect ratio: means and spreads agree within
    # 4 standard errors.
    for stat in (lambda b: b[:, 2] * b[:, 3] / (224 * 160), lambda b: np.log(b[:, 2] / b[:, 3])):
        a, b = stat(ours), stat(theirs)
        assert abs(a.mean() - b.mean()) < 4 * np.sqrt((a.var() + b.var()) / draws)
        assert abs(a.std() - b.std()) < 4 * b.std() / np.sqrt(draws)
    # Top-left corners are uniform over the valid range: mean relative position ~ 0.5.
    rel = ours[:, 0] / np.maximum(224 - ours[:, 2], 1)
    assert abs(rel.mean() - 0.5) < 0.02


def test_random_erasing_probability_and_fill():
    fill = random_erasing.erase_fill(IMAGENET_MEAN, 3)
    np.testing.assert_array_equal(fill, [124, 116, 104])  # round(0.485*255, 0.456*255, 0.406*255)
    assert np.abs(fill - np.array(IMAGENET_MEAN)).max() <= 0.5
    image = np.zeros((40, 48, 3), np.uint8)
    rng, erased = np.random.default_rng(1), 0
    for _ in range(3000):
        out = random_erasing.random_erasing(image, rng, 0.3, fill)
        changed = (out != 0).any(axis=-1)
        if changed.any():
            erased += 1
            rows, cols = np.nonzero(changed)
            box = out[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            assert changed.sum() == box.shape[0] * box.shape[1]  # one rectangle
            assert (box == fill).all()
    assert abs(erased / 3000 - 0.3) < 0.03
    assert (
        random_erasing.erase_box(5, 5, (1.0, 1.0), (1.0, 1.0), rng) is None
    )  # 10 misses: no erasing
    gray = random_erasing.erase_fill((0.2860 * 255,), 1)
    assert gray.tolist() == [73]


# --- pipeline ---------------------------------------------------------------------------------


def _photo_config(pipeline_data_dir, **overrides):
    return pipeline_config(
        pipeline_data_dir, name="imagenot/full", global_batch_size=4, image_size=64,
        mean=IMAGENET_MEAN, **overrides,
    )  # fmt: skip


@pytest.mark.parametrize("name", augment.POLICIES)
def test_pipeline_with_policy_and_erasing_is_deterministic(pipeline_data_dir, name):
    config = _photo_config(pipeline_data_dir, auto_augment=name, random_erase=0.5)
    a = take(input_pipeline.make_train_dataset(config, ProcessShard()), 3)
    b = take(input_pipeline.make_train_dataset(config, ProcessShard()), 3)
    assert_same_batches(a, b)
    plain = take(
        input_pipeline.make_train_dataset(_photo_config(pipeline_data_dir), ProcessShard()), 3
    )
    for batch, reference in zip(a, plain, strict=True):
        assert batch["image"].shape == (4, 64, 64, 3) and batch["image"].dtype == np.uint8
        np.testing.assert_array_equal(batch["index"], reference["index"])  # same stream
    assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, plain, strict=True))


def test_pipeline_with_augmentation_resumes_exactly(pipeline_data_dir):
    config = _photo_config(pipeline_data_dir, auto_augment="ta_wide", random_erase=0.25)
    iterator = iter(input_pipeline.make_train_dataset(config, ProcessShard()))
    _ = [next(iterator) for _ in range(2)]
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(3)]  # 1 batch per epoch: crosses epochs
    restored = iter(input_pipeline.make_train_dataset(config, ProcessShard()))
    restored.set_state(state)
    assert_same_batches([next(restored) for _ in range(3)], expected)


def test_pipeline_workers_and_one_channel(pipeline_data_dir):
    config = pipeline_config(
        pipeline_data_dir, channels=1, auto_augment="ra", random_erase=0.5, mean=(0.2860 * 255,)
    )
    single = take(input_pipeline.make_train_dataset(config, ProcessShard()), 2)
    assert single[0]["image"].shape == (10, 24, 24, 1)
    config.input.num_workers = 2  # the augmentation pickles into grain's worker processes
    iterator = iter(input_pipeline.make_train_dataset(config, ProcessShard()))
    multi = [next(iterator) for _ in range(2)]
    iterator.close()
    assert_same_batches(single, multi)


def test_pipeline_config_errors(tmp_path):
    config = pipeline_config(tmp_path, auto_augment="autoaugment")
    with pytest.raises(ValueError, match=r"input\.auto_augment must be None or one of"):
        input_pipeline.make_train_dataset(config, ProcessShard())
    config = pipeline_config(
        tmp_path, random_erase=0.25
    )  # no input.mean in the bare pipeline config
    with pytest.raises(ValueError, match=r"input\.random_erase needs input\.mean"):
        input_pipeline.make_train_dataset(config, ProcessShard())
    assert input_pipeline.default_config().input.auto_augment is None  # off by default
    assert input_pipeline.default_config().input.random_erase == 0.0
    assert math.isclose(random_erasing.erase_fill((127.5,), 1)[0], 128)
