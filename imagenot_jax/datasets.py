"""Building the project's own TFDS datasets (the offline ones: no download) on first use."""

from __future__ import annotations

import time


def prepare_dataset(name: str, data_dir: str, manual_dir: str | None = None) -> dict[str, int]:
    """Builds the project's TFDS dataset `name` as ArrayRecord unless already built."""
    import tensorflow_datasets as tfds

    import tfds_imagenot.fashion_mnist_local  # noqa: F401  (registers the builder)

    builder = tfds.builder(name, data_dir=data_dir)
    start = time.perf_counter()
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
    )
    sizes = {split: info.num_examples for split, info in builder.info.splits.items()}
    print(f"dataset {name}: {sizes} in {builder.data_dir} ({time.perf_counter() - start:.1f} s)")
    return sizes
