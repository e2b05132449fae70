"""Fashion-MNIST builder: source lookup, IDX parsing, disjoint halves, the real Debian files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfds_imagenot.fashion_mnist_local import fashion_mnist_local_dataset_builder as fm
from tfds_imagenot.fashion_mnist_local.testing import write_fake_fashion_mnist, write_idx


def test_manual_dir_is_preferred_then_debian_then_a_clear_error(tmp_path, monkeypatch):
    manual, debian = tmp_path / "manual", tmp_path / "debian"
    write_fake_fashion_mnist(manual)
    write_fake_fashion_mnist(debian)
    monkeypatch.setattr(fm, "DEBIAN_DIR", debian)
    assert fm.find_source_dir(manual) == manual
    assert fm.find_source_dir(None) == debian
    assert fm.find_source_dir(tmp_path) == debian  # a manual dir without the files
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "absent")
    with pytest.raises(FileNotFoundError) as error:
        fm.find_source_dir(tmp_path)
    message = str(error.value)
    assert "train-images-idx3-ubyte.gz" in message and str(tmp_path / "absent") in message
    assert "apt-get install dataset-fashion-mnist" in message and "--manual_dir" in message


def test_idx_reader_checks_magic_and_size(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "ok.gz", array)
    np.testing.assert_array_equal(fm.read_idx(tmp_path / "ok.gz", 2051), array)
    with pytest.raises(ValueError, match=r"ok.gz: magic number 2051, expected 2049"):
        fm.read_idx(tmp_path / "ok.gz", 2049)
    (tmp_path / "short.gz").write_bytes(
        gzip.compress(gzip.decompress((tmp_path / "ok.gz").read_bytes())[:-1])
    )
    with pytest.raises(ValueError, match=r"short.gz: 23 data bytes, expected shape \(2, 3, 4\)"):
        fm.read_idx(tmp_path / "short.gz", 2051)


def test_halves_are_disjoint_renumbered_and_keep_original_keys(tmp_path):
    manual = tmp_path / "manual"
    write_fake_fashion_mnist(manual, {"train": 30, "test": 10})
    examples = {}
    for config in ("first5", "last5"):
        builder = fm.Builder(config=config, data_dir=str(tmp_path / "data"))
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual)),
        )
        source = builder.as_data_source(split="train")
        examples[config] = {bytes(ex["key"]).decode(): int(ex["label"]) for ex in source}
        expected = [fm.CLASS_NAMES[i] for i in builder.builder_config.labels]
        assert builder.info.features["label"].names == expected
    first, last = examples["first5"], examples["last5"]
    assert len(first) == len(last) == 15 and not set(first) & set(last)
    # Fake labels cycle 0..9 by index, so the original label is index % 10.
    assert all(label == int(key[-5:]) % 10 for key, label in first.items())
    assert all(label == int(key[-5:]) % 10 - 5 for key, label in last.items())


def test_real_debian_files_parse():
    if not fm.DEBIAN_DIR.is_dir():
        pytest.skip(f"{fm.DEBIAN_DIR} absent: apt-get install dataset-fashion-mnist")
    for split, (images_name, labels_name) in fm.SPLIT_FILES.items():
        images = fm.read_idx(fm.DEBIAN_DIR / images_name, 2051)
        labels = fm.read_idx(fm.DEBIAN_DIR / labels_name, 2049)
        n = {"train": 60_000, "test": 10_000}[split]
        assert images.shape == (n, 28, 28) and labels.shape == (n,)
        assert np.bincount(labels).tolist() == [n // 10] * 10
