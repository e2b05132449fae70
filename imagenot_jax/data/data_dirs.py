"""Where datasets are looked for when no data dir is given: one rule for `make` and for direct
commands, logged once per process."""

from __future__ import annotations

import os
import pathlib

from absl import logging

from imagenot_jax.cli import absolute_path

# Where `make demo` builds its datasets: .data/tensorflow_datasets of the checkout this package
# runs from (an installed wheel has none, and falls through to TFDS's default).
CHECKOUT_DATA_DIR = pathlib.Path(__file__).resolve().parents[2] / ".data" / "tensorflow_datasets"
DATA_DIR_RULE = (
    "TFDS data dir (default: $TFDS_DATA_DIR, else the checkout's .data/tensorflow_datasets when "
    "it exists, else ~/tensorflow_datasets)."
)


def default_data_dir_and_origin() -> tuple[str, str]:
    """The data dir when none is given, and where the choice came from: $TFDS_DATA_DIR, else the
    checkout's .data/tensorflow_datasets when it exists (make and direct commands then agree),
    else TFDS's own default ~/tensorflow_datasets."""
    if os.environ.get("TFDS_DATA_DIR"):
        return absolute_path(os.environ["TFDS_DATA_DIR"]), "$TFDS_DATA_DIR"
    if CHECKOUT_DATA_DIR.is_dir():
        return str(CHECKOUT_DATA_DIR), "the checkout's .data"
    return os.path.expanduser("~/tensorflow_datasets"), "TFDS's default"


_announced: set[str] = set()


def resolve_data_dir(data_dir: str | None) -> str:
    """`data_dir`, else the default; the first time a process uses a data dir it logs which and
    why, so that where datasets are looked for is never a guess."""
    origin = "given"
    if not data_dir:
        data_dir, origin = default_data_dir_and_origin()
    if data_dir not in _announced:
        _announced.add(data_dir)
        logging.info("TFDS data dir: %s (%s)", data_dir, origin)
    return data_dir
