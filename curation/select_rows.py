"""Rows for the select stage: its checked settings, per-row scores and seeded hashes, and the
input shards read and filtered (FILTERS, in order; each filter's rows in/out are counted).

Kept apart from `curation.select` (which de-duplicates and chooses) so that each stays small.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import pathlib
from collections.abc import Callable, Mapping, Sequence

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation import class_stats, files
from curation.errors import CurationError

# Input column -> (type in the manifest, files.KINDS kind). Optional columns that are missing
# are written as nulls (clip_score: NaN).
COLUMNS: Mapping[str, tuple[pa.DataType, str]] = {
    "key": (pa.string(), "string"),
    "wnid": (pa.string(), "string"),
    "url": (pa.string(), "string"),
    "caption": (pa.string(), "string"),
    "text_score": (pa.float32(), "number"),
    "clip_score": (pa.float32(), "number"),
    "lemma": (pa.string(), "string"),
    "width": (pa.int64(), "int"),
    "height": (pa.int64(), "int"),
    "punsafe": (pa.float32(), "number"),
    "nsfw": (pa.string(), "string"),
    "similarity": (pa.float32(), "number"),
    "source": (pa.string(), "string"),
    "row": (pa.int64(), "int"),
}
# Long texts that no selection step reads: read back for the chosen rows only (attach_late).
LATE = ("caption", "lemma")


@dataclasses.dataclass(frozen=True)
class Settings:
    """config.select checked, plus the few other fields select reads."""

    select: ml_collections.ConfigDict
    nsfw_drop: tuple[str, ...]
    clip: bool  # config.clip_score.enabled
    hops: int  # config.wordnet.spread_hops
    seed: int  # config.seed
    min_images: int
    sizes: Mapping[str, int]  # split -> images per class

    @property
    def per_class(self) -> int:
        return sum(self.sizes.values())

    @property
    def reserve(self) -> int:
        """Extra images per class for dead links: ceil(per_class * margin)."""
        return math.ceil(self.per_class * float(self.select.margin) - 1e-9)


def _field(config: ml_collections.ConfigDict, dotted: str) -> object:
    node = config
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise CurationError(f"config.{dotted}: missing (select reads it)")
        node = node[part]
    return node


def _optional(value: object) -> float | None:
    """None and NaN both mean 'off'."""
    return None if value is None or math.isnan(float(value)) else float(value)


def settings(config: ml_collections.ConfigDict) -> Settings:
    """Read and check the fields select uses; one-line CurationError naming the field."""
    s = _field(config, "select")
    clip = bool(_field(config, "clip_score.enabled"))
    sizes = {split: int(s[split]) for split in class_stats.SPLITS}
    if sum(sizes.values()) < 1 or min(sizes.values()) < 0:
        raise CurationError(
            f"config.select.train/validation/test: {sizes}; expected sizes >= 0, not all 0"
        )
    # With a train split, a class must fill its evaluation splits; an evaluation-only dataset
    # (LAIONet: test only) keeps classes with fewer images than the cap.
    floor = sizes["validation"] + sizes["test"] if sizes["train"] else 1
    min_images = sum(sizes.values()) if s.min_images is None else int(s.min_images)
    if min_images < max(floor, 1):
        raise CurationError(
            f"config.select.min_images={min_images}: expected >= max(1, validation + test) = "
            f"{max(floor, 1)}, so that every class fills its evaluation splits"
        )
    checks = {
        "score": (s.score in SCORES, f"one of {', '.join(SCORES)}"),
        "rank_by": (s.rank_by in class_stats.RANKERS, f"one of {', '.join(class_stats.RANKERS)}"),
        "num_classes": (int(s.num_classes) >= 1, ">= 1"),
        "clip_weight": (0.0 <= float(s.clip_weight) <= 1.0, "in [0, 1]"),
        "min_side": (int(s.min_side) >= 0, ">= 0 (0 = off)"),
        "margin": (float(s.margin) >= 0.0, ">= 0 (0 = no reserve images)"),
        "buckets": (int(s.buckets) >= 0, ">= 0 (0 = sized from the input rows)"),
    }
    for name, (ok, expected) in checks.items():
        if not ok:
            raise CurationError(f"config.select.{name}={s[name]!r}: expected {expected}")
    needs_clip = {"score": s.score in CLIP_SCORES, "rank_by": s.rank_by in class_stats.CLIP_RANKERS}
    for name, needed in needs_clip.items():
        if needed and not clip:
            raise CurationError(
                f"config.select.{name}={s[name]!r} needs the CLIP stage "
                "(config.clip_score.enabled=True)"
            )
    hops = int(_field(config, "wordnet.spread_hops"))
    if hops < 0:
        raise CurationError(f"config.wordnet.spread_hops={hops}: expected >= 0 (0 = off)")
    tags = tuple(t.strip().upper() for t in str(s.nsfw_drop or "").split(",") if t.strip())
    seed = int(_field(config, "seed"))
    return Settings(s, tags, clip, hops, seed, min_images, sizes)


# ---------------------------------------------------------------- scores and seeded hashes


def column(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64, nulls as NaN."""
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def _weighted(table: pa.Table, s: Settings) -> np.ndarray:
    w = float(s.select.clip_weight)
    return (1.0 - w) * column(table, "text_score") + w * column(table, "clip_score")


# score name -> per-row selection score (float64; NaN ranks last).
SCORES: Mapping[str, Callable[[pa.Table, Settings], np.ndarray]] = {
    "text_score": lambda t, s: column(t, "text_score"),
    "clip_score": lambda t, s: column(t, "clip_score"),
    "weighted": _weighted,
}
CLIP_SCORES = frozenset({"clip_score", "weighted"})


def seeded_hash(keys: pa.ChunkedArray | pa.Array, seed: int, purpose: bytes) -> np.ndarray:
    """uint64 per key: a seeded pseudo-random number that depends on the key alone, so ties
    and shuffles do not depend on row order. `purpose` separates independent uses."""
    keyed = hashlib.blake2b(digest_size=8, key=str(seed).encode(), person=purpose)
    digests = []
    for key in pc.cast(keys, pa.binary()).to_pylist():
        h = keyed.copy()  # the keyed state: the key block is compressed once, not per key
        h.update(key)
        digests.append(h.digest())
    return np.frombuffer(b"".join(digests), "<u8").astype(np.uint64)


# ---------------------------------------------------------------- order and de-duplication


def sort_indices(table: pa.Table, first: str | None = None) -> pa.Array:
    """Indices in the total order (first, score desc, tie hash, key, wnid)."""
    keys = [(first, "ascending")] if first else []
    keys += [(c, "ascending") for c in ("_neg_score", "_tie", "key", "wnid")]
    return pc.sort_indices(table, sort_keys=keys)


def group_starts(values: pa.Array) -> np.ndarray:
    """Boolean: row i starts a run of equal values (values sorted)."""
    if len(values) == 0:
        return np.zeros(0, bool)
    differs = pc.not_equal(values.slice(1), values.slice(0, len(values) - 1))
    return np.r_[True, np.asarray(differs, bool)]


def keep_best(table: pa.Table, group: str) -> tuple[pa.Table, dict[str, int]]:
    """One row per value of column `group`: the best in the total order."""
    order = sort_indices(table, group)
    starts = group_starts(table.column(group).take(order).combine_chunks())
    sizes = np.diff(np.r_[np.flatnonzero(starts), len(starts)])
    counts = {"rows_dropped": int(len(starts) - starts.sum()), "values": int((sizes > 1).sum())}
    return table.take(order.filter(pa.array(starts))), counts


def with_order_columns(table: pa.Table, s: Settings) -> pa.Table:
    score = SCORES[s.select.score](table, s)
    neg = np.where(np.isnan(score), np.inf, -score)  # ascending; NaN (no score) last
    table = table.append_column("_neg_score", pa.array(neg, pa.float64()))
    return table.append_column("_tie", pa.array(seeded_hash(table.column("key"), s.seed, b"tie")))


def by_class(table: pa.Table) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Rows grouped by wnid, best first within a class; each row's rank in its class; and the
    first row of each class (ascending)."""
    table = table.take(sort_indices(table, "wnid"))
    first_of = np.flatnonzero(group_starts(table.column("wnid").combine_chunks()))
    sizes = np.diff(np.r_[first_of, table.num_rows])
    rank = np.arange(table.num_rows, dtype=np.int64) - np.repeat(first_of, sizes)
    return table, rank, first_of


def deduplicate(table: pa.Table, s: Settings) -> tuple[pa.Table, dict[str, dict[str, int]]]:
    """One row per key (its best class), then, with unique_urls, one row per URL."""
    table, keys = keep_best(table, "key")
    urls = {"rows_dropped": 0, "values": 0}
    if s.select.unique_urls:
        table, urls = keep_best(table, "url")
    return table, {"key_in_several_classes": keys, "url_under_several_keys": urls}


def class_stats_of(ordered: pa.Table, starts: np.ndarray, k: int) -> class_stats.ClassStats:
    """class_stats.class_stats of rows grouped by class, best first (`by_class`)."""
    score = -column(ordered, "_neg_score")
    return class_stats.class_stats(
        ordered.column("wnid").take(pa.array(starts, pa.int64())).to_pylist(),
        starts,
        column(ordered, "text_score"),
        column(ordered, "clip_score"),
        np.where(np.isinf(score), np.nan, score),  # back from "no score ranks last"
        k,
    )


@dataclasses.dataclass(frozen=True)
class Eligible:
    """The rows after filters and de-duplication, as class and image choice need them, from
    either path: one in-memory table (curation.select) or partial aggregates
    (curation.select_partial)."""

    filtered: Filtered  # input and filter counts (its table: None on the bounded path)
    dedup: dict[str, dict[str, int]]  # de-duplication counts of the report
    rows: int  # eligible rows (after de-duplication)
    stats: class_stats.ClassStats  # of every class with eligible rows
    # wnids -> (their rows grouped by wnid, best first, at least each one's best per_class +
    # reserve; each row's rank in its class): what select.choose_images takes.
    top: Callable[[Sequence[str]], tuple[pa.Table, np.ndarray]]


# ---------------------------------------------------------------- reading and filters

Filter = Callable[[pa.Table, Settings], tuple[np.ndarray | None, dict[str, int]]]


def _keep_url(t: pa.Table, s: Settings) -> tuple[np.ndarray, dict[str, int]]:
    url = t.column("url")
    ok = pc.fill_null(pc.greater(pc.utf8_length(url), 0), False)
    return np.asarray(ok, bool), {}


def _keep_nsfw(t: pa.Table, s: Settings) -> tuple[np.ndarray | None, dict[str, int]]:
    if not s.nsfw_drop:
        return None, {}
    tag = pc.utf8_upper(pc.utf8_trim_whitespace(t.column("nsfw")))
    dropped = pc.fill_null(pc.is_in(tag, value_set=pa.array(s.nsfw_drop)), False)
    return ~np.asarray(dropped, bool), {"null_passed": t.column("nsfw").null_count}


def _keep_punsafe(t: pa.Table, s: Settings) -> tuple[np.ndarray | None, dict[str, int]]:
    limit = _optional(s.select.max_punsafe)
    if limit is None:
        return None, {}
    p = column(t, "punsafe")
    return ~(p > limit), {"null_passed": int(np.isnan(p).sum())}


def _keep_min_side(t: pa.Table, s: Settings) -> tuple[np.ndarray | None, dict[str, int]]:
    if not s.select.min_side:
        return None, {}
    side = np.minimum(column(t, "width"), column(t, "height"))
    unknown = np.isnan(side)
    keep = (side >= s.select.min_side) | (unknown & bool(s.select.keep_unknown_size))
    verb = "kept" if s.select.keep_unknown_size else "dropped"
    return keep, {f"unknown_size_{verb}": int(unknown.sum())}


def _keep_score(t: pa.Table, name: str, minimum: float | None, missing_drops: bool) -> tuple:
    x = column(t, name)
    missing = np.isnan(x) & missing_drops
    below = x < minimum if minimum is not None else np.zeros(len(x), bool)
    return ~(missing | below), {"missing": int(missing.sum()), "below_min": int(below.sum())}


def _keep_text(t: pa.Table, s: Settings) -> tuple[np.ndarray, dict[str, int]]:
    return _keep_score(t, "text_score", _optional(s.select.min_text_score), True)


def _keep_clip(t: pa.Table, s: Settings) -> tuple[np.ndarray | None, dict[str, int]]:
    minimum = _optional(s.select.min_clip_score)
    if not s.clip or (minimum is None and not s.select.drop_missing_clip_score):
        return None, {}
    return _keep_score(t, "clip_score", minimum, bool(s.select.drop_missing_clip_score))


FILTERS: tuple[tuple[str, Filter, tuple[str, ...]], ...] = (
    # (name, keep-mask function (None: off), input columns it needs when on)
    ("url", _keep_url, ()),
    ("nsfw", _keep_nsfw, ("nsfw",)),
    ("punsafe", _keep_punsafe, ("punsafe",)),
    ("min_side", _keep_min_side, ("width", "height")),
    ("text_score", _keep_text, ()),
    ("clip_score", _keep_clip, ("clip_score",)),
)


@dataclasses.dataclass
class FilterCount:
    rows_in: int = 0
    dropped: int = 0
    active: bool = False
    notes: collections.Counter = dataclasses.field(default_factory=collections.Counter)


@dataclasses.dataclass
class Filtered:
    # Surviving rows, all COLUMNS in their manifest types; None where they were spilled to disk
    # instead (curation.select_partial).
    table: pa.Table | None
    counts: dict[str, FilterCount]
    matched: collections.Counter  # wnid -> input rows (before filters)
    paths: tuple[pathlib.Path, ...]  # the input shards; `_file` indexes them
    rows: int


def new_counts() -> dict[str, FilterCount]:
    """One zero FilterCount per FILTERS entry, in FILTERS order."""
    return {name: FilterCount() for name, _, _ in FILTERS}


def add_counts(total: dict[str, FilterCount], part: Mapping[str, FilterCount]) -> None:
    """Adds `part`'s filter counts into `total` (the sums do not depend on the order)."""
    for name, count in part.items():
        mine = total[name]
        mine.rows_in += count.rows_in
        mine.dropped += count.dropped
        mine.active |= count.active
        mine.notes.update(count.notes)


def input_paths(in_dir: pathlib.Path) -> list[pathlib.Path]:
    """The input shards, sorted (their index is the `_file` column)."""
    paths = sorted(in_dir.glob("*.parquet"))
    if not paths:
        raise CurationError(f"{in_dir}: no *.parquet inputs; run the stage that writes them")
    return paths


def required_columns(s: Settings) -> dict[str, str]:
    """Input column -> files.KINDS kind, for the columns these settings read."""
    needed = {"key", "wnid", "url", "caption", "text_score"} | ({"clip_score"} if s.clip else set())
    probe = pa.table({name: pa.array([], t) for name, (t, _) in COLUMNS.items()})
    for _, keep, columns in FILTERS:
        if keep(probe, s)[0] is not None:
            needed.update(columns)
    return {name: COLUMNS[name][1] for name in COLUMNS if name in needed}


def read_shard(
    path: pathlib.Path,
    index: int,
    s: Settings,
    required: Mapping[str, str],
    row_groups: Sequence[int] | None = None,
    first_row: int = 0,
) -> pa.Table:
    """The shard's rows (or those of `row_groups`, whose first row is row `first_row` of the
    file) with every COLUMNS entry but LATE in its manifest type, plus `_file` (index) and
    `_row` (row in the file), which locate the LATE columns for `attach_late`."""
    schema = files.read_schema(path)
    files.check_columns(path, schema, required)
    present = [n for n in COLUMNS if n in schema.names and (n != "clip_score" or s.clip)]
    columns = [n for n in present if n not in LATE]
    if row_groups is None:
        table = pq.read_table(path, columns=columns)
    else:
        table = pq.ParquetFile(path).read_row_groups(list(row_groups), columns=columns)
    names = [n for n in COLUMNS if n not in LATE]
    arrays = [_cast(path, table, name, name in present) for name in names]
    arrays += [pa.array(np.full(table.num_rows, index, np.int32))]
    arrays += [pa.array(np.arange(first_row, first_row + table.num_rows, dtype=np.int64))]
    table = pa.table(arrays, names=[*names, "_file", "_row"])
    for name in ("key", "wnid"):
        if table.column(name).null_count:
            raise CurationError(f"{path}: column {name!r} has null values; expected none")
    return table


def _cast(path: pathlib.Path, table: pa.Table, name: str, present: bool) -> pa.ChunkedArray:
    arrow_type = COLUMNS[name][0]
    if not present:
        fill = math.nan if name == "clip_score" else None
        return pa.chunked_array([pa.array([fill] * table.num_rows, arrow_type)])
    try:
        return table.column(name).cast(arrow_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CurationError(
            f"{path}: column {name!r} cannot be read as {arrow_type} ({reason})"
        ) from None


def count_wnids(table: pa.Table, matched: collections.Counter) -> None:
    """Adds the table's rows per wnid into `matched`."""
    values, counts = pc.value_counts(table.column("wnid")).flatten()
    matched.update(dict(zip(values.to_pylist(), counts.to_pylist(), strict=True)))


def apply_filters(table: pa.Table, s: Settings, counts: dict[str, FilterCount]) -> pa.Table:
    """The rows that pass every filter (FILTERS order); each filter's rows in/out into `counts`."""
    for name, keep_fn, _ in FILTERS:
        keep, notes = keep_fn(table, s)
        count = counts[name]
        count.rows_in += table.num_rows
        count.notes.update(notes)
        if keep is not None:
            count.active = True
            count.dropped += int((~keep).sum())
            table = table.filter(pa.array(keep))
    return table


def read_filtered(in_dir: pathlib.Path, s: Settings) -> Filtered:
    """Every input shard, filtered (FILTERS order), concatenated (without the LATE columns)."""
    paths = input_paths(in_dir)
    required = required_columns(s)
    counts = new_counts()
    matched: collections.Counter = collections.Counter()
    kept, rows = [], 0
    for index, path in enumerate(files.progress(paths, desc="select: filter", unit="shard")):
        table = read_shard(path, index, s, required)
        rows += table.num_rows
        count_wnids(table, matched)
        kept.append(apply_filters(table, s, counts))
    table = pa.concat_tables(kept).combine_chunks()
    return Filtered(table, counts, matched, tuple(paths), rows)


def attach_late(table: pa.Table, paths: Sequence[pathlib.Path]) -> pa.Table:
    """Add the LATE columns to `table` (rows located by _file/_row), read back from their files
    for these rows only: the long texts of all the other rows never sit in memory."""
    file_of = table.column("_file").to_numpy()
    row_of = table.column("_row").to_numpy()
    order = np.argsort(file_of, kind="stable")  # rows grouped by file
    file_sorted, row_sorted = file_of[order], row_of[order]
    indices = np.unique(file_sorted)
    starts = np.searchsorted(file_sorted, indices, side="left")
    stops = np.searchsorted(file_sorted, indices, side="right")
    parts: dict[str, list[pa.Array]] = {name: [] for name in LATE}
    for index, start, stop in zip(indices, starts, stops, strict=True):
        path = paths[index]
        present = [n for n in LATE if n in files.read_schema(path).names]
        source = pq.read_table(path, columns=present)
        rows = pa.array(row_sorted[start:stop])
        for name in LATE:
            taken = _cast(path, source, name, name in present).take(rows)
            parts[name].extend(taken.chunks)
    back = pa.array(np.argsort(order))  # from file-grouped order back to the table's order
    for name in LATE:
        arrow_type = COLUMNS[name][0]
        values = pa.chunked_array(parts[name], arrow_type).take(back)
        table = table.append_column(name, values)
    return table.drop_columns(["_file", "_row"])
