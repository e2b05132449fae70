"""`make demo`: build the embedded default dataset and stream it through the input pipeline.

    python -m imagenot_jax.demo --config configs/demo.py [--config.input.num_workers=2]

Prints what it built, then one epoch of training batches and one full eval pass with their
throughput. Later stages (training, evaluation, ranking) extend this demo.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from imagenot_jax import input_pipeline

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Demo config file.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)."
)
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Source files for the builder (default: the builder's own default)."
)


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


def stream_train_epoch(config, num_examples: int) -> None:
    batch = config.input.global_batch_size
    steps = num_examples // batch
    iterator = iter(input_pipeline.make_train_dataset(config))
    first = next(iterator)  # Worker start-up is not throughput: time from the second batch.
    start = time.perf_counter()
    labels = [first["label"]]
    for _ in range(steps - 1):
        labels.append(next(iterator)["label"])
    seconds = time.perf_counter() - start
    iterator.close()  # An infinite stream: stop its worker processes now.
    shape, dtype = first["image"].shape, first["image"].dtype
    counts = np.bincount(np.concatenate(labels))
    print(
        f"train: {steps} batches of {shape} {dtype} ({steps * batch} images, one epoch; "
        f"{len(counts)} classes, {counts.min()}-{counts.max()} images each), "
        f"{(steps - 1) * batch / seconds:,.0f} images/s with {config.input.num_workers} workers"
    )


def stream_eval_pass(config) -> None:
    start = time.perf_counter()
    seen = batches = 0
    for batch in input_pipeline.make_eval_dataset(config):
        seen += int(batch["mask"].sum())
        batches += 1
    seconds = time.perf_counter() - start
    print(
        f"eval ({config.data.eval_split}): {batches} batches, {seen} images seen once each, "
        f"{seen / seconds:,.0f} images/s"
    )


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    data_dir = (
        _DATA_DIR.value
        or os.environ.get("TFDS_DATA_DIR")
        or os.path.expanduser("~/tensorflow_datasets")
    )
    config.data.data_dir = data_dir
    logging.set_verbosity(logging.WARNING)
    try:
        sizes = prepare_dataset(config.data.name, data_dir, _MANUAL_DIR.value)
    except FileNotFoundError as e:  # missing source files: a user error, not a bug
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    stream_train_epoch(config, sizes[config.data.train_split])
    stream_eval_pass(config)


if __name__ == "__main__":
    app.run(main)
