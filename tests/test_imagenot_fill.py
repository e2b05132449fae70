"""Over-selection for dead links: the builder fills each class's splits from its reserve rows in
rank order, evaluation splits first, and reports the classes that still fall short."""

from __future__ import annotations

import collections

import numpy as np
import pyarrow as pa
import tensorflow_datasets as tfds

from tfds_imagenot.imagenot import Builder, fill, testing
from tfds_imagenot.imagenot.testing import ManifestRow, jpeg_bytes

CLASSES = testing.DUMMY_CLASSES
WANTED = {"train": 6, "validation": 2, "test": 2}
RESERVE = 6  # margin 0.6 of 10


def _rows(label: int) -> list[ManifestRow]:
    """A class as select writes it with margin 0.6: 10 rows with splits, then 6 reserve rows
    ranked 10..15 (ranks of the split rows are shuffled over the splits, as select's are)."""
    splits = ["test", "validation", "train", "train", "test", "train"]
    splits += ["validation", "train", "train", "train"]
    split_of_rank = splits + ["reserve"] * RESERVE
    wnid = CLASSES[label].wnid
    return [
        ManifestRow(f"c{label}-r{rank:02d}", wnid, label, split, rank=rank)
        for rank, split in enumerate(split_of_rank)
    ]


def test_fill_takes_reserve_in_rank_order_evaluation_splits_first():
    labels = np.array([0] * 6)
    split = pa.chunked_array([["train", "test", "train", "reserve", "reserve", "reserve"]])
    rank = np.array([0, 1, 2, 5, 3, 4])
    found = np.array([False, False, True, True, False, True])  # ranks 0, 1 and 3 died
    filled = fill.fill_splits(labels, split, rank, found, classes=1)
    # The test image died: the best reserve that arrived (rank 4) replaces it; the train one
    # is replaced by the next (rank 5).
    assert filled.split.tolist() == [0, 2, 0, 0, -1, 2]
    assert filled.wanted.tolist() == [[2, 0, 1]] and filled.got.tolist() == [[2, 0, 1]]
    assert (filled.reserve_rows, filled.reserve_used) == (3, 2)
    assert not len(filled.short_classes())


def test_a_download_with_35_percent_dead_links_fills_every_class_that_had_enough(tmp_path):
    rows = [r for label in range(3) for r in _rows(label)]
    rng = np.random.default_rng(0)
    dead = set()
    for label in (0, 1):  # 35% of 16 is about 6: within the 6-image reserve
        dead |= {f"c{label}-r{i:02d}" for i in rng.choice(16, 6, replace=False)}
    dead |= {f"c2-r{i:02d}" for i in range(0, 16, 2)}  # class 2 loses half: 8 > its reserve
    images = {r.key: jpeg_bytes(40, 30, seed=i) for i, r in enumerate(rows) if r.key not in dead}
    manual = testing.write_manual_dir(tmp_path / "manual", CLASSES, rows, images)
    builder = Builder(config="256", data_dir=str(tmp_path / "data"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual)),
        file_format="array_record",
    )
    info = tfds.builder("imagenot/256", data_dir=str(tmp_path / "data")).info
    per_class = collections.Counter()
    for split in ("train", "validation", "test"):
        source = tfds.data_source("imagenot/256", split=split, data_dir=str(tmp_path / "data"))
        for i in range(len(source)):
            per_class[(split, int(source[i]["label"]))] += 1
    for label in (0, 1):
        assert {s: per_class[(s, label)] for s in WANTED} == WANTED
    # Class 2 got 8 of 16: its evaluation splits are full, train takes the loss.
    assert {s: per_class[(s, 2)] for s in WANTED} == {"train": 4, "validation": 2, "test": 2}
    report = info.metadata["fill"]
    assert report["classes_short"] == 1 and report["reserve_rows"] == 3 * RESERVE
    assert report["short"] == {
        CLASSES[2].wnid: {
            "wanted": {"train": 6, "validation": 2, "test": 2},
            "got": {"train": 4, "validation": 2, "test": 2},
        }
    }
