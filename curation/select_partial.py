"""Select in bounded memory (select.bounded_memory=True): the eligible rows and the class
statistics by partial aggregation over buckets on disk instead of one in-memory table, with the
same outputs, byte for byte, as the in-memory path (`curation.select.eligible_in_memory`).

Three phases of engine tasks (`curation.engine.run_tasks`: local processes or Ray), then the
driver. P = select.buckets (0: one per 2**19 input rows) buckets and as many class groups.

1. partition, one task per ~2**19 input rows (whole row groups of one shard): read and filter
   exactly as the in-memory path (select_rows.read_shard, apply_filters), add the order
   columns, and hash each eligible row by its URL (its key when unique_urls is off) to a
   bucket: one Arrow IPC file per task, one record batch per bucket.
2. bucket, one task per bucket: its batch from every partition file, in task order (the
   in-memory path's row order); de-duplication by key then URL exactly as the in-memory path.
   Both are complete within a bucket because a key's rows share one URL (match writes one row
   per (key, synset), each with the key's URL; each partition task checks it) and rows with no
   URL never pass the url filter. Then per class: its best K = per_class + reserve rows, and
   exact sums of its text and CLIP scores; both hashed by wnid to class groups.
3. class group, one task per group: its classes' rows from every bucket, merged in the total
   order, cut to the best K (the best K of a union are among each part's best K), and their
   statistics: count, means from the exact sums, top-k means from the merged rows (the same
   values in the same order as the in-memory path's).
4. the driver: statistics of all classes, class choice, then the chosen classes' rows from the
   group files; select.py does the rest as for the in-memory path.

Memory: a task holds one bucket (~2**19 input rows; a class group also up to P x K rows of a
class with more than K rows in most buckets), the driver O(classes) statistics and the chosen
classes' K rows each. Disk: the eligible rows about twice, in W/select_tmp (removed at the end).

Means over all of a class's images (rank_by text_score_mean / clip_score_mean) are exact here:
each float32 score is an integer mantissa times a power of two, summed as integers per (class,
exponent), so the merge loses nothing and the mean is the correctly rounded quotient. numpy's
mean on the in-memory path is the same float whenever its float64 sums are exact: when the sum,
in units of the finest ulp among the class's scores, stays below 2**53 (e.g. a million scores all
>= 2**-10). Otherwise the two may differ in the last bit, which changes an output only if two
classes tie within that bit. Top-k means (the default ranker) are always identical: the same
values in the same order.
"""

from __future__ import annotations

import collections
import fractions
import math
import pathlib
import shutil
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from absl import logging

from curation import class_stats, engine, files
from curation.errors import CurationError
from curation.select_rows import (
    Eligible,
    Filtered,
    Settings,
    add_counts,
    apply_filters,
    by_class,
    class_stats_of,
    column,
    deduplicate,
    input_paths,
    new_counts,
    read_shard,
    required_columns,
    with_order_columns,
)

SPILL_DIR = "select_tmp"  # under the workdir; removed when select ends
ROWS_PER_TASK = 1 << 19  # input rows per partition task (whole row groups)
ROWS_PER_BUCKET = 1 << 19  # input rows per bucket when select.buckets = 0
_IPC = pa.ipc.IpcWriteOptions(compression="lz4")
# Per-class sums (long format, one row per class, statistic and exponent): STATS[stat] names it.
_SCORES = ("text_score", "clip_score")
STATS = ("rows", *(f"{n}{part}" for n in _SCORES for part in ("", ":finite", ":+inf", ":-inf")))
_MANTISSA_BITS = 24  # float32: each finite score is an integer < 2**24 times 2**(exp - 24)


def eligible(
    config: ml_collections.ConfigDict, workdir: pathlib.Path, in_dir: pathlib.Path, s: Settings
) -> Eligible:
    """The bounded-memory counterpart of select.eligible_in_memory (the same values)."""
    paths = input_paths(in_dir)
    spill = workdir / SPILL_DIR
    remove_spill(workdir)
    cfg = config.get("engine") or engine.defaults()
    tasks, input_rows = _partition_tasks(paths, spill, s)
    buckets = int(s.select.buckets) or max(1, math.ceil(input_rows / ROWS_PER_BUCKET))
    logging.info("select: %d input rows, %d tasks, %d buckets", input_rows, len(tasks), buckets)
    for task in tasks:
        task["buckets"] = buckets
    results = engine.run_tasks(tasks, partition_task, cfg, desc="select: partition")
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise CurationError(errors[0])
    counts = new_counts()
    for result in results:
        add_counts(counts, result["counts"])
    matched = _matched([t["out"] for t in tasks])
    common = {"settings": s, "buckets": buckets, "spill": spill}
    bucket_tasks = [common | {"bucket": b, "partitions": len(tasks)} for b in range(buckets)]
    done = engine.run_tasks(bucket_tasks, bucket_task, cfg, desc="select: buckets")
    group_tasks = [common | {"group": g} for g in range(buckets)]
    groups = engine.run_tasks(group_tasks, group_task, cfg, desc="select: class groups")
    filtered = Filtered(None, counts, matched, tuple(paths), sum(r["rows"] for r in results))
    return Eligible(
        filtered,
        _sum_dedup([r["dedup"] for r in done]),
        sum(r["rows"] for r in done),
        _merge_stats(groups),
        lambda wnids: _top(wnids, spill, buckets),
    )


def _sum_dedup(parts: Sequence[Mapping[str, Mapping[str, int]]]) -> dict[str, dict[str, int]]:
    """The buckets' de-duplication counts added up (a key or URL is in one bucket only)."""
    total = {name: dict.fromkeys(counts, 0) for name, counts in parts[0].items()}
    for part in parts:
        for name, counts in part.items():
            for field, value in counts.items():
                total[name][field] += value
    return total


def remove_spill(workdir: pathlib.Path) -> None:
    """Deletes W/select_tmp (left by this run, or by one that crashed)."""
    shutil.rmtree(workdir / SPILL_DIR, ignore_errors=True)


# ---------------------------------------------------------------- 1. partition


def _partition_tasks(
    paths: Sequence[pathlib.Path], spill: pathlib.Path, s: Settings
) -> tuple[list[dict[str, Any]], int]:
    """Tasks of whole row groups, ~ROWS_PER_TASK rows each; and the input rows."""
    tasks, total = [], 0
    for index, path in enumerate(paths):
        meta = files.read_metadata(path)
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        total += sum(sizes)
        chunks: list[list[int]] = [[]]
        for group, size in enumerate(sizes):
            if chunks[-1] and sum(sizes[i] for i in chunks[-1]) + size > ROWS_PER_TASK:
                chunks.append([])
            chunks[-1].append(group)
        first = 0
        for chunk in chunks:
            tasks.append(
                {
                    "path": path,
                    "index": index,
                    "row_groups": chunk if sizes else None,  # no row groups: read it whole
                    "first_row": first,
                    "settings": s,
                    "out": _partition_path(spill, len(tasks)),
                }
            )
            first += sum(sizes[i] for i in chunk)
    return tasks, total


def partition_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """The engine's task: filter some row groups of a shard and hash the eligible rows to
    buckets (one IPC file); returns the filter counts, matched rows per wnid and input rows (or
    {"error": one line} for bad input, which both engines hand back the same way)."""
    s: Settings = task["settings"]
    path = task["path"]
    try:
        table = read_shard(
            path, task["index"], s, required_columns(s), task["row_groups"], task["first_row"]
        )
        rows = table.num_rows
        matched = pc.value_counts(table.column("wnid")).flatten()
        counts = new_counts()
        table = apply_filters(table, s, counts)
        if s.select.unique_urls:
            _check_one_url_per_key(table, path)
    except CurationError as e:
        return {"error": str(e)}
    # Rows per wnid before the filters: a file, not the result (results stay in memory until
    # every task is done, and tasks x classes may be large).
    matched = pa.table({"wnid": matched[0], "rows": matched[1].cast(pa.int64())})
    files.write_parquet_atomic(matched, _matched_path(task["out"]))
    table = with_order_columns(table, s)
    by = "url" if s.select.unique_urls else "key"
    tables = _split(table, bucket_of(table.column(by), task["buckets"]), task["buckets"])
    _write_batches(task["out"], table.schema, tables)
    return {"counts": counts, "rows": rows}


def _partition_path(spill: pathlib.Path, task: int) -> pathlib.Path:
    return spill / "partition" / f"part-{task:06d}.arrow"


def _matched_path(partition: pathlib.Path) -> pathlib.Path:
    return partition.with_suffix(".matched.parquet")


def _matched(partitions: Sequence[pathlib.Path]) -> collections.Counter:
    """Input rows per wnid, summed over the partition tasks' files (a few at a time)."""
    total = pa.table({"wnid": pa.array([], pa.string()), "rows": pa.array([], pa.int64())})
    for start in range(0, len(partitions), 64):
        parts = [pq.read_table(_matched_path(p)) for p in partitions[start : start + 64]]
        table = pa.concat_tables([total, *parts])
        total = table.group_by("wnid").aggregate([("rows", "sum")]).rename_columns(["wnid", "rows"])
    pairs = zip(total.column("wnid").to_pylist(), total.column("rows").to_pylist(), strict=True)
    return collections.Counter(dict(pairs))


def _check_one_url_per_key(table: pa.Table, path: pathlib.Path) -> None:
    """Keys and URLs are de-duplicated within a bucket of URLs: a key must have one URL."""
    per_key = table.select(["key", "url"]).group_by("key").aggregate([("url", "count_distinct")])
    several = per_key.filter(pc.greater(per_key.column("url_count_distinct"), 1))
    if several.num_rows:
        key = several.column("key")[0].as_py()
        raise CurationError(
            f"{path}: key {key!r} has several URLs; expected one URL per key (as match writes), "
            "or config.select.bounded_memory=False"
        )


# ---------------------------------------------------------------- 2. buckets


def bucket_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """The engine's task: de-duplicate one bucket; write each class's best K rows and its score
    sums, by class group; returns the de-duplication counts and the eligible rows."""
    s: Settings = task["settings"]
    groups = task["buckets"]
    paths = [_partition_path(task["spill"], i) for i in range(task["partitions"])]
    parts = [_read_batch(path, task["bucket"]) for path in paths]  # in task order
    table, dedup = deduplicate(pa.concat_tables(parts), s)
    ordered, rank, starts = by_class(table)
    wnids = ordered.column("wnid").take(pa.array(starts, pa.int64())).combine_chunks()
    group_of = bucket_of(wnids, groups)
    sizes = np.diff(np.r_[starts, table.num_rows]).astype(np.int64)
    best = rank < s.per_class + s.reserve
    top = ordered.filter(pa.array(best))
    top_group = np.repeat(group_of, sizes)[best]
    name = f"bucket-{task['bucket']:06d}"
    folder = task["spill"] / "bucket"
    _write_batches(folder / f"{name}.rows.arrow", top.schema, _split(top, top_group, groups))
    sums, sums_class = _class_sums(ordered, starts, sizes)
    sums = sums.append_column("wnid", wnids.take(pa.array(sums_class)))
    sums_group = group_of[sums_class]
    _write_batches(folder / f"{name}.sums.arrow", sums.schema, _split(sums, sums_group, groups))
    return {"dedup": dedup, "rows": table.num_rows}


def _class_sums(
    ordered: pa.Table, starts: np.ndarray, sizes: np.ndarray
) -> tuple[pa.Table, np.ndarray]:
    """Per class (index into starts): STATS rows (stat, exp, value) with the class's row count
    and, per score, its finite values' mantissa sums per exponent and its finite/+inf/-inf
    counts; and each row's class."""
    classes = np.arange(len(starts), dtype=np.int64)
    of_row = np.repeat(classes, sizes)
    stat, klass, exp, value = [np.zeros(len(starts), np.int8)], [classes], [], [sizes]
    exp.append(np.zeros(len(starts), np.int32))
    for name in _SCORES:
        x = column(ordered, name)
        finite = np.isfinite(x)
        for part, mask in ((":finite", finite), (":+inf", x == np.inf), (":-inf", x == -np.inf)):
            counts = np.bincount(of_row[mask], minlength=len(starts)).astype(np.int64)
            stat.append(np.full(len(starts), STATS.index(name + part), np.int8))
            klass.append(classes), exp.append(np.zeros(len(starts), np.int32))
            value.append(counts)
        mantissa, exponent = np.frexp(x[finite])
        scaled = mantissa * float(1 << _MANTISSA_BITS)
        integer = scaled.astype(np.int64)
        if not np.array_equal(integer, scaled):  # COLUMNS makes every score float32
            raise RuntimeError(f"{name}: values with more than {_MANTISSA_BITS} mantissa bits")
        stat.append(np.full(len(integer), STATS.index(name), np.int8))
        klass.append(of_row[finite]), exp.append(exponent.astype(np.int32)), value.append(integer)
    long = pa.table(
        {
            "class": np.concatenate(klass),
            "stat": np.concatenate(stat),
            "exp": np.concatenate(exp),
            "value": np.concatenate(value),
        }
    )
    summed = long.group_by(["class", "stat", "exp"]).aggregate([("value", "sum")])
    summed = summed.filter(pc.not_equal(summed.column("value_sum"), 0))
    table = summed.select(["stat", "exp", "value_sum"]).rename_columns(["stat", "exp", "value"])
    return table, summed.column("class").to_numpy()


# ---------------------------------------------------------------- 3. class groups


def group_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """The engine's task: merge one class group's best rows and sums over all buckets; write
    its classes' best K rows; returns their statistics (one entry per class: small)."""
    s: Settings = task["settings"]
    group = task["group"]
    buckets = [f"bucket-{b:06d}" for b in range(task["buckets"])]
    folder = task["spill"] / "bucket"
    rows = pa.concat_tables([_read_batch(folder / f"{b}.rows.arrow", group) for b in buckets])
    ordered, rank, starts = by_class(rows)
    keep = s.per_class + s.reserve
    best = ordered.filter(pa.array(rank < keep))
    sizes = np.minimum(np.diff(np.r_[starts, rows.num_rows]), keep).astype(np.int64)
    best_starts = np.r_[0, np.cumsum(sizes)[:-1]].astype(np.int64)[: len(starts)]
    _write_batches(_group_path(task["spill"], group), best.schema, [best])
    stats = class_stats_of(best, best_starts, s.per_class)
    sums = pa.concat_tables([_read_batch(folder / f"{b}.sums.arrow", group) for b in buckets])
    exact = _exact_stats(sums, stats.wnids)
    values = dict(stats.values) | exact
    return {"wnids": list(stats.wnids), "values": {k: v.tolist() for k, v in values.items()}}


def _exact_stats(sums: pa.Table, wnids: Sequence[str]) -> dict[str, np.ndarray]:
    """count, text_score_mean and clip_score_mean of `wnids` from their STATS rows."""
    summed = sums.group_by(["wnid", "stat", "exp"]).aggregate([("value", "sum")])
    index = {w: i for i, w in enumerate(wnids)}
    row_of = np.array([index[w] for w in summed.column("wnid").to_pylist()], np.int64)
    stat = summed.column("stat").to_numpy()
    value = summed.column("value_sum").to_numpy()

    def per_class(code: int) -> np.ndarray:  # a count statistic (exp 0), 0 where absent
        out = np.zeros(len(wnids), np.int64)
        out[row_of[stat == code]] = value[stat == code]
        return out

    out = {"count": per_class(STATS.index("rows"))}
    exps = summed.column("exp").to_numpy()
    for name in _SCORES:
        code = STATS.index(name)
        mantissas: list[list[tuple[int, int]]] = [[] for _ in wnids]
        mine = np.flatnonzero(stat == code)
        rows = (row_of[mine].tolist(), exps[mine].tolist(), value[mine].tolist())
        for i, exp, v in zip(*rows, strict=True):
            mantissas[i].append((exp, v))
        counts = zip(*(per_class(code + i).tolist() for i in (1, 2, 3)), strict=True)
        means = [_mean(m, *c) for m, c in zip(mantissas, counts, strict=True)]
        out[f"{name}_mean"] = np.array(means, np.float64)
    return out


def _mean(mantissas: list[tuple[int, int]], finite: int, pos_inf: int, neg_inf: int) -> float:
    """numpy's mean of the non-NaN values (NaN when none), from exact sums."""
    if finite + pos_inf + neg_inf == 0 or (pos_inf and neg_inf):
        return math.nan
    if pos_inf or neg_inf:
        return math.inf if pos_inf else -math.inf
    if not mantissas:
        return 0.0
    low = min(exp for exp, _ in mantissas)
    total = sum(value << (exp - low) for exp, value in mantissas)  # x 2**(low - 24)
    shift = low - _MANTISSA_BITS
    ratio = fractions.Fraction(total << max(shift, 0), finite << max(-shift, 0))
    return float(ratio)  # int / int: correctly rounded


def _merge_stats(groups: Sequence[Mapping[str, Any]]) -> class_stats.ClassStats:
    """The groups' statistics as one ClassStats, classes in sorted wnid order."""
    wnids = [w for g in groups for w in g["wnids"]]
    order = np.asarray(pc.sort_indices(pa.array(wnids, pa.string())), np.int64)
    values = {}
    for name in groups[0]["values"]:  # P >= 1 groups, each with every statistic
        values[name] = np.asarray([v for g in groups for v in g["values"][name]], np.float64)[order]
    values["count"] = values["count"].astype(np.int64)
    return class_stats.ClassStats(wnids=tuple(wnids[i] for i in order), values=values)


def _top(wnids: Sequence[str], spill: pathlib.Path, groups: int) -> tuple[pa.Table, np.ndarray]:
    """The best K rows of classes `wnids` from their group files, by_class-ordered; ranks."""
    wanted = pa.array(sorted(wnids), pa.string())
    mine = sorted(set(bucket_of(wanted, groups).tolist()))
    parts = []
    for group in mine:
        table = _read_batch(_group_path(spill, group), 0)
        parts.append(table.filter(pc.is_in(table.column("wnid"), value_set=wanted)))
    ordered, rank, _ = by_class(pa.concat_tables(parts))
    return ordered, rank


def _group_path(spill: pathlib.Path, group: int) -> pathlib.Path:
    return spill / "group" / f"group-{group:06d}.arrow"


# ---------------------------------------------------------------- spill files


def bucket_of(values: pa.Array | pa.ChunkedArray, n: int) -> np.ndarray:
    """0..n-1 per string, a function of the string alone (any process, any host): CRC-32 (fast;
    the buckets need not be secret, only spread), mixed by a multiplication."""
    crc = np.fromiter(map(zlib.crc32, pc.cast(values, pa.binary()).to_pylist()), np.uint64)
    mixed = (crc * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)  # wraps mod 2**64
    return (mixed % np.uint64(n)).astype(np.int64)


def _split(table: pa.Table, ids: np.ndarray, n: int) -> list[pa.Table]:
    """`table` cut into n tables by `ids` (0..n-1), each in the table's row order."""
    order = np.argsort(ids, kind="stable")
    bounds = np.searchsorted(ids[order], np.arange(n + 1))
    table = table.take(pa.array(order, pa.int64()))
    return [table.slice(bounds[i], bounds[i + 1] - bounds[i]) for i in range(n)]


def _write_batches(path: pathlib.Path, schema: pa.Schema, tables: Sequence[pa.Table]) -> None:
    """An Arrow IPC file with one record batch per table (batch i = tables[i]), atomically."""
    with (
        files.atomic_path(path) as tmp,  # renamed last, once the writer and file are closed
        pa.OSFile(str(tmp), "wb") as sink,
        pa.ipc.new_file(sink, schema, options=_IPC) as writer,
    ):
        for table in tables:
            arrays = [
                pa.concat_arrays(c.chunks) if c.num_chunks else pa.array([], c.type)
                for c in table.columns
            ]
            writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))


def _read_batch(path: pathlib.Path, index: int) -> pa.Table:
    """Batch `index` of an IPC file written by _write_batches (read, not mapped)."""
    with pa.OSFile(str(path), "rb") as source:
        return pa.Table.from_batches([pa.ipc.open_file(source).get_batch(index)])
