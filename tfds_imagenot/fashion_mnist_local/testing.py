"""Writes Fashion-MNIST-format IDX files; used for dummy_data/ and by tests.

Regenerate the committed dummy data with:
    python -m tfds_imagenot.fashion_mnist_local.testing tfds_imagenot/fashion_mnist_local/dummy_data
"""

from __future__ import annotations

import gzip
import pathlib
import sys

import numpy as np

from tfds_imagenot.fashion_mnist_local.fashion_mnist_local_dataset_builder import SPLIT_FILES

DUMMY_SIZES = {"train": 20, "test": 10}  # Labels cycle 0..9, so each half gets half of them.


def write_idx(path: pathlib.Path, array: np.ndarray) -> None:
    """Writes a uint8 array as a gzipped IDX file (magic 0x0800 | ndim, big-endian dims)."""
    header = np.array([0x0800 | array.ndim, *array.shape], dtype=">u4").tobytes()
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0))


def write_fake_fashion_mnist(directory: pathlib.Path, sizes: dict[str, int] = DUMMY_SIZES) -> None:
    """Random 28x28 images with labels 0, 1, ..., 9, 0, ... for each split."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, (images_name, labels_name) in SPLIT_FILES.items():
        n = sizes[split]
        write_idx(directory / images_name, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(directory / labels_name, np.arange(n, dtype=np.uint8) % 10)


if __name__ == "__main__":
    write_fake_fashion_mnist(pathlib.Path(sys.argv[1]))
