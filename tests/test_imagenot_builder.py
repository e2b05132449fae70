"""The ImageNot TFDS builder: skips are counted, bad manifests fail clearly, images are normalised.

Every test builds a tiny manual dir with `tfds_imagenot.imagenot.testing.write_manual_dir` and
builds it into a tmp data_dir as ArrayRecord, then reads it back through `tfds.data_source`.
"""

from __future__ import annotations

import io
import os
import pathlib
import subprocess
import sys
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from tfds_imagenot.imagenot import Builder, ManifestError, testing
from tfds_imagenot.imagenot.testing import ClassRow, ManifestRow, jpeg_bytes

REPO = pathlib.Path(__file__).resolve().parents[1]
CLASSES = testing.DUMMY_CLASSES
WNIDS = [c.wnid for c in CLASSES]


def row(key: str, label: int = 0, split: str = "train", **kw) -> ManifestRow:
    return ManifestRow(key, CLASSES[label].wnid, label, split, caption=f"caption {key}", **kw)


def build(manual_dir: pathlib.Path, data_dir: pathlib.Path, config: str = "256") -> Builder:
    builder = Builder(config=config, data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)),
        file_format="array_record",
    )
    return builder


def stored(data_dir: pathlib.Path, config: str, split: str) -> dict[str, dict]:
    """{key: example} with the image left as its stored JPEG bytes."""
    source = tfds.data_source(
        f"imagenot/{config}",
        split=split,
        data_dir=str(data_dir),
        download=False,
        decoders={"image": tfds.decode.SkipDecoding()},
    )
    examples = [source[i] for i in range(len(source))]
    return {ex["key"].decode(): ex for ex in examples}


def pil(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# --- skips -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def skip_build(tmp_path_factory):
    """train: 2 good, truncated, random bytes, missing; validation: 1 good, missing; test: 1."""
    tmp = tmp_path_factory.mktemp("skips")
    good = jpeg_bytes(64, 48, seed=1)
    rows = [
        row("t_good0", 0, text_score=0.25, clip_score=0.5),
        row("t_good1", 1),
        row("t_trunc", 2),
        row("t_rand", 0),
        row("t_miss", 1),
        row("v_good", 2, "validation"),
        row("v_miss", 0, "validation"),
        row("x_good", 1, "test"),
    ]
    images = {
        "t_good0": good,
        "t_good1": jpeg_bytes(50, 70, seed=2),
        "t_trunc": jpeg_bytes(64, 64, seed=3)[:-200],
        "t_rand": np.random.default_rng(0).bytes(3000),
        "v_good": jpeg_bytes(30, 30, seed=4),
        "x_good": jpeg_bytes(40, 30, seed=5),
    }
    manual = testing.write_manual_dir(tmp / "manual", CLASSES, rows, images, images_per_shard=3)
    return manual, tmp / "data", build(manual, tmp / "data")


def test_skips_are_counted_per_split_and_reason(skip_build, capsys):
    _, data_dir, _ = skip_build
    info = tfds.builder("imagenot/256", data_dir=str(data_dir)).info  # reloaded from disk
    assert info.metadata["skipped"] == {
        "train": {"missing": 1, "undecodable": 2},
        "validation": {"missing": 1, "undecodable": 0},
        "test": {"missing": 0, "undecodable": 0},
    }
    assert info.metadata["kept"] == {"train": 2, "validation": 1, "test": 1}
    assert info.metadata["duplicate_image"] == {"train": 0, "validation": 0, "test": 0}
    assert {s: info.splits[s].num_examples for s in info.splits} == info.metadata["kept"]


def test_examples_round_trip_with_label_names(skip_build):
    _, data_dir, _ = skip_build
    info = tfds.builder("imagenot/256", data_dir=str(data_dir)).info
    assert info.features["label"].names == WNIDS
    assert info.supervised_keys == ("image", "label")
    train = stored(data_dir, "256", "train")
    assert sorted(train) == ["t_good0", "t_good1"]
    ex = train["t_good0"]
    assert ex["label"] == 0 and ex["wnid"] == WNIDS[0].encode()
    assert ex["caption"] == b"caption t_good0"
    assert ex["text_score"] == np.float32(0.25) and ex["clip_score"] == np.float32(0.5)
    assert ex["image"] == jpeg_bytes(64, 48, seed=1)  # SkipDecoding gives the stored bytes


def test_data_source_decodes_images_by_default(skip_build):
    _, data_dir, _ = skip_build
    source = tfds.data_source("imagenot/256", split="test", data_dir=str(data_dir), download=False)
    image = source[0]["image"]
    assert image.shape == (30, 40, 3) and image.dtype == np.uint8


def test_build_is_deterministic_across_thread_counts(skip_build, tmp_path, monkeypatch):
    manual, data_dir, _ = skip_build
    monkeypatch.setenv("IMAGENOT_BUILD_THREADS", "1")
    build(manual, tmp_path / "one")
    for split in ("train", "validation", "test"):
        a = sorted((data_dir / "imagenot/256/1.0.0").glob(f"imagenot-{split}.array_record-*"))
        b = sorted((tmp_path / "one/imagenot/256/1.0.0").glob(f"imagenot-{split}.array_record-*"))
        assert a and [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_bad_thread_count_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGENOT_BUILD_THREADS", "zero")
    manual = testing.write_manual_dir(tmp_path / "m", CLASSES, [row("a")], {"a": jpeg_bytes(8, 8)})
    with pytest.raises(ValueError, match="IMAGENOT_BUILD_THREADS"):
        build(manual, tmp_path / "data")


def test_split_without_any_image_fails_clearly(tmp_path):
    rows = [row("a"), row("b", split="test")]
    manual = testing.write_manual_dir(tmp_path / "m", CLASSES, rows, {"a": jpeg_bytes(8, 8)})
    with pytest.raises(ValueError, match="'test' has no usable image"):
        build(manual, tmp_path / "data")


def test_duplicate_image_uses_first_shard_and_is_counted(tmp_path):
    first, second = jpeg_bytes(20, 20, seed=1), jpeg_bytes(20, 20, seed=2)
    rows = [row("a"), row("b")]
    manual = testing.write_manual_dir(
        tmp_path / "m", CLASSES, rows, {"a": first, "b": first}, images_per_shard=1
    )
    with tarfile.open(manual / "images" / "00009.tar", "w") as tar:  # a later shard repeats "a"
        info = tarfile.TarInfo("a.png")
        info.size = len(second)
        tar.addfile(info, io.BytesIO(second))
    builder = build(manual, tmp_path / "data")
    assert builder.info.metadata["duplicate_image"] == {"train": 1}
    assert builder.info.metadata["skipped"] == {"train": {"missing": 0, "undecodable": 0}}
    assert stored(tmp_path / "data", "256", "train")["a"]["image"] == first


def test_damaged_shard_keeps_earlier_images_and_reports_the_shard(tmp_path):
    rows = [row("a"), row("b"), row("c")]
    images = {k: jpeg_bytes(64, 64, seed=i) for i, k in enumerate("abc")}
    manual = testing.write_manual_dir(tmp_path / "m", CLASSES, rows, images)
    shard = manual / "images" / "00000.tar"
    with tarfile.open(shard) as tar:
        cut = tar.getmember("c.jpg").offset_data + 100  # inside the last image's data
    shard.write_bytes(shard.read_bytes()[:cut])
    builder = build(manual, tmp_path / "data")
    assert builder.info.metadata["skipped"] == {"train": {"missing": 1, "undecodable": 0}}
    assert builder.info.metadata["bad_shards"] == [str(shard)]
    assert sorted(stored(tmp_path / "data", "256", "train")) == ["a", "b"]


# --- manifest errors ---------------------------------------------------------------------------


def _rewrite_manifest(manual: pathlib.Path, **columns) -> None:
    table = pq.read_table(manual / "manifest.parquet")
    for name, values in columns.items():
        if values is None:
            table = table.drop_columns([name])
        else:
            table = table.set_column(table.schema.get_field_index(name), name, [values])
    pq.write_table(table, manual / "manifest.parquet")


def _edit_classes(manual: pathlib.Path, text: str) -> None:
    (manual / "classes.tsv").write_text(text)


BAD_INPUTS = {
    "missing_manifest": (
        lambda m: (m / "manifest.parquet").unlink(),
        ["manifest.parquet", "manifest/*.parquet"],
    ),
    "missing_classes": (lambda m: (m / "classes.tsv").unlink(), ["classes.tsv", "not found"]),
    "missing_column": (
        lambda m: _rewrite_manifest(m, clip_score=None),
        ["manifest.parquet", "'clip_score'", "expected columns key, wnid, label"],
    ),
    "wnid_label_mismatch": (
        lambda m: _rewrite_manifest(m, wnid=["n00000001", "n00000003", "n00000003"]),
        ["manifest.parquet", "'k1'", "'n00000003'", "'n00000002'"],
    ),
    "unknown_wnid": (
        lambda m: _rewrite_manifest(m, wnid=["n00000001", "n09999999", "n00000003"]),
        ["manifest.parquet", "'k1'", "'n09999999'", "not in", "classes.tsv"],
    ),
    "label_out_of_range": (
        lambda m: _rewrite_manifest(m, label=[0, 7, 2]),
        ["manifest.parquet", "'k1'", "label 7", "expected 0..2"],
    ),
    "bad_split": (
        lambda m: _rewrite_manifest(m, split=["train", "val", "train"]),
        ["manifest.parquet", "'k1'", "'val'", "train, validation, test"],
    ),
    "duplicate_key": (
        lambda m: _rewrite_manifest(m, key=["k0", "k2", "k2"]),
        ["manifest.parquet", "duplicate key 'k2'"],
    ),
    "classes_header": (
        lambda m: _edit_classes(m, "label\twnid\tname\n0\tn00000001\ta\n"),
        ["classes.tsv", "lacks gloss"],
    ),
    "classes_labels_not_contiguous": (
        lambda m: _edit_classes(
            m, "label\twnid\tname\tgloss\n0\tn00000001\ta\tg\n2\tn00000003\tc\tg\n"
        ),
        ["classes.tsv", "contiguous 0..1", "missing [1]"],
    ),
    "classes_duplicate_wnid": (
        lambda m: _edit_classes(
            m, "label\twnid\tname\tgloss\n0\tn00000001\ta\tg\n1\tn00000001\tb\tg\n"
        ),
        ["classes.tsv:3", "duplicate wnid 'n00000001'"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_manifest_errors_name_the_problem(case, tmp_path):
    mutate, expected = BAD_INPUTS[case]
    rows = [row("k0", 0), row("k1", 1), row("k2", 2)]
    manual = testing.write_manual_dir(tmp_path / "m", CLASSES, rows, {})
    mutate(manual)
    with pytest.raises(ManifestError) as error:
        build(manual, tmp_path / "data")
    message = str(error.value)
    assert "\n" not in message
    for fragment in expected:
        assert fragment in message, message


def test_manifest_folder_is_read_in_order_and_errors_name_the_file(tmp_path):
    manual = testing.write_manual_dir(tmp_path / "m", CLASSES, [row("a")], {"a": jpeg_bytes(8, 8)})
    (manual / "manifest").mkdir()
    (manual / "manifest.parquet").rename(manual / "manifest" / "part-0.parquet")
    testing.write_manual_dir(tmp_path / "other", CLASSES, [row("b", split="bogus")], {})
    (tmp_path / "other" / "manifest.parquet").rename(manual / "manifest" / "part-1.parquet")
    with pytest.raises(ManifestError, match=r"part-1\.parquet: row key 'b': split 'bogus'"):
        build(manual, tmp_path / "data")


# --- image normalisation -----------------------------------------------------------------------


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    return jpeg_bytes(60, 40, seed=7, exif=exif.tobytes())


def _rgba_png() -> bytes:
    rgba = np.zeros((30, 20, 4), np.uint8)
    rgba[..., 0] = 255  # opaque red on the left half, fully transparent on the right
    rgba[:, :10, 3] = 255
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG")
    return buffer.getvalue()


def _gray16_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((10, 12), 65535, np.uint16)).save(buffer, "PNG")
    return buffer.getvalue()


FORMAT_IMAGES = {
    "big": jpeg_bytes(600, 400, seed=1),
    "small": jpeg_bytes(200, 150, seed=2),
    "progressive": jpeg_bytes(100, 80, seed=3, progressive=True),
    "gray_png": jpeg_bytes(40, 30, mode="L", fmt="PNG", seed=4),
    "cmyk_jpeg": jpeg_bytes(300, 280, mode="CMYK", seed=5),
    "rgba_png": _rgba_png(),
    "gray16_png": _gray16_png(),
    "rotated": _exif_rotated_jpeg(),
    "webp": jpeg_bytes(40, 30, fmt="WEBP", seed=6),
}


@pytest.fixture(scope="module")
def format_builds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("formats")
    rows = [row(key, i % 3) for i, key in enumerate(FORMAT_IMAGES)]
    manual = testing.write_manual_dir(tmp / "manual", CLASSES, rows, FORMAT_IMAGES)
    build(manual, tmp / "data", "256")
    build(manual, tmp / "data", "full")
    return {config: stored(tmp / "data", config, "train") for config in ("256", "full")}


def test_256_resizes_shorter_side_to_256(format_builds):
    assert pil(format_builds["256"]["big"]["image"]).size == (384, 256)
    assert pil(format_builds["256"]["cmyk_jpeg"]["image"]).size == (274, 256)


def test_256_keeps_small_rgb_jpegs_byte_identical(format_builds):
    for key in ("small", "progressive"):
        assert format_builds["256"][key]["image"] == FORMAT_IMAGES[key]


@pytest.mark.parametrize("key", ["gray_png", "cmyk_jpeg", "rgba_png", "gray16_png", "webp"])
@pytest.mark.parametrize("config", ["256", "full"])
def test_other_formats_become_rgb_jpeg(format_builds, config, key):
    image = pil(format_builds[config][key]["image"])
    assert image.format == "JPEG" and image.mode == "RGB"
    short_side = min(pil(FORMAT_IMAGES[key]).size)
    assert min(image.size) == (short_side if config == "full" else min(short_side, 256))


def test_transparency_is_composited_on_white_and_16_bit_is_scaled(format_builds):
    rgba = np.asarray(pil(format_builds["256"]["rgba_png"]["image"])).astype(int)
    assert np.all(np.abs(rgba[5, 2] - [255, 0, 0]) < 30)  # opaque red stays red
    assert np.all(rgba[5, 17] > 225)  # transparent becomes white
    assert np.all(np.asarray(pil(format_builds["256"]["gray16_png"]["image"])) > 245)


def test_exif_rotation_is_applied(format_builds):
    for config in ("256", "full"):
        image = pil(format_builds[config]["rotated"]["image"])
        assert image.size == (40, 60)
        assert image.getexif().get(0x0112) is None


def test_full_keeps_size_and_original_jpeg_bytes(format_builds):
    full = format_builds["full"]
    assert full["big"]["image"] == FORMAT_IMAGES["big"]
    assert pil(full["cmyk_jpeg"]["image"]).size == (300, 280)


# --- the real CLI ------------------------------------------------------------------------------


def _cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["IMAGENOT_BUILD_THREADS"] = "2"
    return env


def test_tfds_build_cli(tmp_path):
    tfds_cli = pathlib.Path(sys.executable).with_name("tfds")
    data_dir = tmp_path / "data"
    result = subprocess.run(
        [
            str(tfds_cli),
            "build",
            "tfds_imagenot/imagenot",
            f"--manual_dir={testing.DUMMY_DATA}",
            f"--data_dir={data_dir}",
            "--file_format=array_record",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=_cli_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for config in ("256", "full"):  # without --config, `tfds build` builds every config
        assert sorted(data_dir.glob(f"imagenot/{config}/1.0.0/*.array_record-*"))
    assert "train: kept 4, skipped 2 (missing 1, undecodable 1)" in result.stdout


def test_tfds_build_cli_reports_a_bad_manifest_in_one_line_with_exit_code_2(tmp_path):
    """absl's app.run (the TFDS CLI) prints a ManifestError without a traceback."""
    manual = testing.write_manual_dir(tmp_path / "m", CLASSES, [row("k0"), row("k1", 1, "val")], {})
    result = subprocess.run(
        [
            str(pathlib.Path(sys.executable).with_name("tfds")),
            "build",
            "tfds_imagenot/imagenot",
            f"--manual_dir={manual}",
            f"--data_dir={tmp_path / 'data'}",
            "--file_format=array_record",
            "--config=256",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=_cli_env(),
        check=False,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"{manual}/manifest.parquet: row key 'k1': split 'val' is not one of " + (
        "train, validation, test, reserve"
    )


def test_write_manual_dir_layout(tmp_path):
    rows = [row("a"), row("b")]
    manual = testing.write_manual_dir(
        tmp_path, [ClassRow(0, "n1", "x", "y")], rows, {"a": b"\xff\xd8"}, image_ext="jpeg"
    )
    with tarfile.open(manual / "images" / "00000.tar") as tar:
        assert tar.getnames() == ["a.jpeg", "a.json", "a.txt"]
    assert (manual / "classes.tsv").read_text().splitlines()[0] == "label\twnid\tname\tgloss"
