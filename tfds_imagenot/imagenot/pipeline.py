"""Plan the build (manifest + shard index) and turn one split's rows into TFDS examples.

Kept separate from the builder so it is plain Python (testable without TFDS) and so the builder
module stays free of direct file-system calls. Memory stays flat at any dataset size: row fields
are materialised one chunk at a time, and at most `max_in_flight` images are being read/decoded
at once in a thread pool (PIL releases the GIL while decoding and resizing).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from absl import logging

from . import fill, images, manifest, shards

THREADS_ENV = "IMAGENOT_BUILD_THREADS"
SKIP_REASONS = ("missing", "undecodable")
_CHUNK_ROWS = 1024  # rows materialised as Python dicts at a time
_LOGGED_SKIPS = 20  # per split and reason; the rest are only counted

T = TypeVar("T")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """One split's rows (indices into the manifest table) in (shard, offset) read order."""

    name: str
    rows: np.ndarray  # int64 manifest rows whose image was found, read-order sorted
    missing_keys: tuple[str, ...]  # rows whose key is in no shard
    duplicate_image: int  # rows whose key has several image members (the first is used)


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    classes: manifest.ClassTable
    manifest: manifest.Manifest
    index: shards.ShardIndex
    locations: shards.Locations
    splits: tuple[SplitPlan, ...]
    fill: fill.Fill


@dataclasses.dataclass
class SplitStats:
    """Counts reported in the dataset metadata and logs; nothing is dropped without a count."""

    kept: int = 0
    skipped: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0)
    )
    duplicate_image: int = 0

    def summary(self, split: str) -> str:
        skipped = ", ".join(f"{reason} {n}" for reason, n in self.skipped.items())
        return (
            f"{split}: kept {self.kept}, skipped {sum(self.skipped.values())} ({skipped}), "
            f"duplicate_image {self.duplicate_image}"
        )


def build_threads() -> int:
    """Worker threads: $IMAGENOT_BUILD_THREADS if set, else os.cpu_count()."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return os.cpu_count() or 1
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"${THREADS_ENV}={value!r}: expected a positive integer")
    return int(value)


def make_plan(manual_dir: str | os.PathLike[str], threads: int) -> BuildPlan:
    """Read + validate the manifest, index the shards, and order each split's rows for reading."""
    root = pathlib.Path(os.fspath(manual_dir))
    files = manifest.manifest_files(root)
    classes = manifest.read_classes(root / "classes.tsv")
    table = manifest.read_manifest(files, classes)
    shard_paths = shards.find_shards(root / "images")
    logging.info("imagenot: indexing %d tar shards under %s", len(shard_paths), root / "images")
    index = shards.index_shards(shard_paths, threads)
    if index.bad_shards:
        logging.warning("imagenot: %d damaged shards: %s", len(index.bad_shards), index.bad_shards)
    locations = shards.locate(index, table.table.column("key"))
    filled = _fill(table, locations, classes)
    rows_of = {name: np.flatnonzero(filled.split == i) for i, name in enumerate(manifest.SPLITS)}
    plans = tuple(
        _split_plan(name, rows, table, locations) for name, rows in rows_of.items() if rows.size
    )
    return BuildPlan(classes, table, index, locations, plans, filled)


def _fill(table: manifest.Manifest, loc: shards.Locations, classes) -> fill.Fill:
    """Reserve rows replace missing images (fill.py), and short classes are logged."""
    t = table.table
    rank = np.asarray(pc.fill_null(t.column("rank"), -1))
    rank = np.where(rank < 0, np.arange(len(rank)), rank)  # no rank column: manifest order
    labels = t.column("label").to_numpy()
    filled = fill.fill_splits(labels, t.column("split"), rank, loc.shard >= 0, classes.num_classes)
    short = filled.short_classes()
    if filled.reserve_rows:
        logging.info(
            "imagenot: %d of %d reserve images replaced missing ones",
            filled.reserve_used, filled.reserve_rows,
        )  # fmt: skip
    if len(short):
        listed = ", ".join(
            f"{classes.wnids[c]} {filled.got[c].sum()}/{filled.wanted[c].sum()}" for c in short[:20]
        )
        logging.warning(
            "imagenot: %d classes got fewer images than wanted (got/wanted): %s", len(short), listed
        )
    return filled


def _split_plan(
    name: str, rows: np.ndarray, table: manifest.Manifest, loc: shards.Locations
) -> SplitPlan:
    found = loc.shard[rows] >= 0
    present = rows[found]
    order = np.lexsort((loc.offset[present], loc.shard[present]))
    missing = table.table.column("key").take(pa.array(rows[~found])).to_pylist()
    return SplitPlan(
        name=name,
        rows=present[order],
        missing_keys=tuple(missing),
        duplicate_image=int(np.count_nonzero(loc.duplicated[rows])),
    )


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], *, threads: int, max_in_flight: int
) -> Iterator[R]:
    """`map(fn, items)` on a thread pool, in input order, with at most max_in_flight pending."""
    with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="imagenot") as pool:
        pending: collections.deque[concurrent.futures.Future[R]] = collections.deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= max_in_flight:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


@dataclasses.dataclass(frozen=True)
class _Job:
    row: dict[str, Any]
    path: pathlib.Path
    offset: int
    size: int


def _jobs(plan: BuildPlan, split: SplitPlan) -> Iterator[_Job]:
    """Rows of the split in read order, materialised one chunk at a time."""
    loc = plan.locations
    for start in range(0, len(split.rows), _CHUNK_ROWS):
        chunk = split.rows[start : start + _CHUNK_ROWS]
        rows = plan.manifest.table.take(pa.array(chunk)).to_pylist()
        for i, row in zip(chunk, rows, strict=True):
            path = plan.index.paths[loc.shard[i]]
            yield _Job(row, path, int(loc.offset[i]), int(loc.size[i]))


def _process(job: _Job, policy: images.ImagePolicy) -> tuple[_Job, bytes | None, str]:
    """Read and normalise one image in a worker thread; failure is data, not an exception."""
    try:
        data = shards.read_member(job.path, job.offset, job.size)
        return job, images.normalize_image(data, policy), ""
    except (images.UndecodableImageError, EOFError) as e:
        return job, None, str(e)


def generate_examples(
    plan: BuildPlan,
    split: SplitPlan,
    policy: images.ImagePolicy,
    stats: SplitStats,
    *,
    threads: int,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (key, example) for every decodable image of the split; count the rest in `stats`."""
    stats.skipped["missing"] = len(split.missing_keys)
    stats.duplicate_image = split.duplicate_image
    for key in split.missing_keys[:_LOGGED_SKIPS]:
        logging.warning("imagenot: %s: key %r: image missing from every shard", split.name, key)
    results = ordered_map(
        lambda job: _process(job, policy),
        _jobs(plan, split),
        threads=threads,
        max_in_flight=4 * threads,
    )
    for job, image, error in results:
        if image is None:
            stats.skipped["undecodable"] += 1
            if stats.skipped["undecodable"] <= _LOGGED_SKIPS:
                logging.warning(
                    "imagenot: %s: key %r (%s): undecodable: %s",
                    split.name,
                    job.row["key"],
                    job.path.name,
                    error,
                )
            continue
        stats.kept += 1
        yield job.row["key"], _example(job.row, image)
    if stats.kept == 0:
        raise ValueError(
            f"imagenot: split {split.name!r} has no usable image ({stats.summary(split.name)}); "
            "check the images/ folder of the manual dir"
        )


def _example(row: dict[str, Any], image: bytes) -> dict[str, Any]:
    return {
        "image": image,
        "label": row["label"],
        "wnid": row["wnid"],
        "key": row["key"],
        "caption": row["caption"],
        "text_score": np.float32(row["text_score"]),
        "clip_score": np.float32(row["clip_score"]),
    }
