"""Fill each class's splits from its reserve when links died.

LAION links die (30-40% of them by the time a list is downloaded), so select over-selects: each
class's best train + validation + test images get a split, and the next ones, in rank order, the
split `reserve` (config.select.margin). Once the download is done, the builder knows which images
arrived: a missing image of a class is replaced by the best-ranked reserve image of that class
that arrived, evaluation splits first (test, then validation, then train), so a class short of
images loses train images, never evaluation ones (as select does). Classes that still fall short
are reported with what they got against what they wanted.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SPLITS = ("train", "validation", "test")
RESERVE = "reserve"
FILL_ORDER = (2, 1, 0)  # indices into SPLITS: test, validation, train


@dataclasses.dataclass(frozen=True)
class Fill:
    """Per manifest row, its split after filling (index into SPLITS; -1: a reserve row left
    unused); per class and split, the images wanted and those found."""

    split: np.ndarray
    wanted: np.ndarray  # int64 [classes, len(SPLITS)]
    got: np.ndarray  # int64 [classes, len(SPLITS)]
    reserve_rows: int
    reserve_used: int

    def short_classes(self) -> np.ndarray:
        """Labels of the classes with fewer images than wanted in some split."""
        return np.flatnonzero((self.got < self.wanted).any(axis=1))

    def report(self, wnids: list[str]) -> dict:
        """For the dataset metadata: totals, and every short class's got/wanted per split."""
        short = self.short_classes()
        return {
            "reserve_rows": self.reserve_rows,
            "reserve_used": self.reserve_used,
            "classes_short": len(short),
            "short": {
                wnids[c]: {
                    "wanted": dict(zip(SPLITS, self.wanted[c].tolist(), strict=True)),
                    "got": dict(zip(SPLITS, self.got[c].tolist(), strict=True)),
                }
                for c in short
            },
        }


def fill_splits(
    labels: np.ndarray, split: pa.ChunkedArray, rank: np.ndarray, found: np.ndarray, classes: int
) -> Fill:
    """Fill (see the module docstring) of manifest rows with these labels, split names, ranks
    within their class and image-found flags."""
    index = np.full(len(labels), -1, np.int64)
    for i, name in enumerate(SPLITS):
        index[np.asarray(pc.equal(split, name), bool)] = i
    reserve = np.asarray(pc.equal(split, RESERVE), bool)
    primary = index >= 0
    wanted = np.zeros((classes, len(SPLITS)), np.int64)
    got = np.zeros((classes, len(SPLITS)), np.int64)
    np.add.at(wanted, (labels[primary], index[primary]), 1)
    arrived = primary & found
    np.add.at(got, (labels[arrived], index[arrived]), 1)
    # Reserve rows that arrived, by class then rank: the candidates of each class, best first.
    spare = np.flatnonzero(reserve & found)
    spare = spare[np.lexsort((rank[spare], labels[spare]))]
    starts = np.searchsorted(labels[spare], np.arange(classes + 1))
    used = 0
    for c in np.flatnonzero((got < wanted).any(axis=1)):
        pool = spare[starts[c] : starts[c + 1]]
        taken = 0
        for s in FILL_ORDER:
            n = min(int(wanted[c, s] - got[c, s]), len(pool) - taken)
            index[pool[taken : taken + n]] = s
            got[c, s] += n
            taken += n
        used += taken
    return Fill(index, wanted, got, reserve_rows=int(reserve.sum()), reserve_used=used)
