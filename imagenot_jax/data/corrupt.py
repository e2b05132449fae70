"""Corrupt dataset records (a truncated or overwritten ArrayRecord shard, an image that does not
decode): a one-line error naming the shard and record, or, with `input.skip_corrupt_records`,
a skip counted in a warning line.

The error is built from its message alone, so that it pickles back from a grain worker process
to the trainer (which then exits with the one line, instead of hanging or printing a traceback).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import logging

from imagenot_jax.errors import UserError

_skips = itertools.count(1)  # per process: each grain worker counts its own


class CorruptRecordError(UserError):
    """A dataset record that cannot be read or decoded."""

    @classmethod
    def at(cls, where: str, problem: str) -> CorruptRecordError:
        return cls(f"corrupt data: {where}: {problem}")


def skip(error: CorruptRecordError) -> None:
    """Log a skipped record with this process's running count of skips."""
    logging.warning("skipped %s (%d skipped so far in this process)", error, next(_skips))


def read_skipping(read: Callable[[list[int]], list[Any]], indices: Sequence[int]) -> list[Any]:
    """`read(indices)`, with None (and a skip logged) for each record that cannot be read."""
    try:
        return read(list(indices))
    except CorruptRecordError:
        pass
    records = []
    for index in indices:  # the batched read does not say which records failed
        try:
            records.append(read([index])[0])
        except CorruptRecordError as error:
            skip(error)
            records.append(None)
    return records


def fill_skipped(
    batch: dict[str, np.ndarray], good: list[int], where: Callable[[int], str]
) -> dict[str, np.ndarray]:
    """A train batch keeps its size: each skipped slot takes a copy of a good one's example."""
    size = len(batch["index"])
    if not good:
        raise CorruptRecordError.at(where(int(batch["index"][0])), "no readable record in batch")
    for i in sorted(set(range(size)) - set(good)):
        for array in batch.values():
            array[i] = array[good[i % len(good)]]
    return batch
