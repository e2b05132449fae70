"""Read and validate the ImageNot manifest (parquet) and class list (classes.tsv).

The manifest has ~1.2M rows, so every check here is a vectorised pyarrow/numpy operation; a
Python loop only runs over the (≤ 1000-line) classes file. Every problem is reported as one
`ManifestError` line that names the file, the row key or column, what was found and what was
expected, because a build that dies an hour in on a bad row is worse than one that refuses early.
"""

from __future__ import annotations

import csv
import dataclasses
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from absl import app

SPLITS = ("train", "validation", "test")
# Over-selected rows (config.select.margin): they replace rows whose image did not arrive (fill.py).
RESERVE = "reserve"
CLASS_FIELDS = ("label", "wnid", "name", "gloss")
# Column -> kind; the kind decides the accepted arrow types and the cast target.
MANIFEST_COLUMNS = {
    "key": "string",
    "wnid": "string",
    "label": "int",
    "split": "string",
    "url": "string",
    "caption": "string",
    "text_score": "float",
    "clip_score": "float",
}
# Optional columns (null where a file lacks them): `rank`, the row's rank in its class (0 =
# best), orders the reserve; without it, manifest order does.
OPTIONAL_COLUMNS = {"rank": "int"}
# Columns whose nulls are filled (free text and scores); nulls elsewhere are errors.
_FILL_NULLS = {"url": "", "caption": "", "text_score": float("nan"), "clip_score": float("nan")}
_HEADER = "\t".join(CLASS_FIELDS)
_CAST_TARGET = {"string": pa.string(), "int": pa.int64(), "float": pa.float32()}


class ManifestError(ValueError, app.UsageError):
    """A manifest or classes file that cannot be built from; the message says where and why.

    Also an absl UsageError: `tfds build` runs under absl's app.run, which prints a UsageError
    as a usage line and its message, with no traceback, and exits with its `exitcode` (2, the
    project's exit code for bad input; any other exception exits 1 after a traceback).
    """

    exitcode = 2  # a class attribute: ValueError.__init__ skips UsageError's, which sets it


@dataclasses.dataclass(frozen=True)
class ClassTable:
    """classes.tsv in label order: `wnids[i]` is the wnid of label i."""

    path: pathlib.Path
    wnids: tuple[str, ...]
    names: tuple[str, ...]
    glosses: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.wnids)


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The validated manifest: one row per image, columns cast to MANIFEST_COLUMNS' kinds."""

    table: pa.Table
    files: tuple[pathlib.Path, ...]


def manifest_files(manual_dir: pathlib.Path) -> list[pathlib.Path]:
    """DIR/manifest.parquet, else DIR/manifest/*.parquet sorted (a deterministic row order)."""
    single = manual_dir / "manifest.parquet"
    if single.is_file():
        return [single]
    folder = manual_dir / "manifest"
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        raise ManifestError(f"no manifest found: expected {single} or {folder}/*.parquet")
    return files


def read_classes(path: pathlib.Path) -> ClassTable:
    """Parse classes.tsv (header label, wnid, name, gloss); labels must be 0..C-1, wnids unique."""
    if not path.is_file():
        raise ManifestError(f"classes file not found: expected {path}")
    with path.open(newline="", encoding="utf-8") as f:
        lines = [row for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if row]
    if not lines:
        raise ManifestError(f"{path}: empty; expected a header line {_HEADER!r}")
    header = [h.strip() for h in lines[0]]
    missing = [c for c in CLASS_FIELDS if c not in header]
    if missing:
        raise ManifestError(
            f"{path}: header lacks {', '.join(missing)}; expected fields {', '.join(CLASS_FIELDS)}"
            f" (found {', '.join(header)})"
        )
    col = {c: header.index(c) for c in CLASS_FIELDS}
    by_label: dict[int, tuple[str, str, str]] = {}
    line_of_wnid: dict[str, int] = {}
    for line_no, row in enumerate(lines[1:], start=2):
        if len(row) < len(header):
            raise ManifestError(
                f"{path}:{line_no}: {len(row)} fields, expected {len(header)} (tab-separated)"
            )
        label_text, wnid = row[col["label"]].strip(), row[col["wnid"]].strip()
        try:
            label = int(label_text)
        except ValueError:
            raise ManifestError(
                f"{path}:{line_no}: label {label_text!r} is not an integer"
            ) from None
        if label in by_label:
            raise ManifestError(f"{path}:{line_no}: label {label} appears more than once")
        if wnid in line_of_wnid:
            raise ManifestError(
                f"{path}:{line_no}: duplicate wnid {wnid!r} (also on line {line_of_wnid[wnid]})"
            )
        line_of_wnid[wnid] = line_no
        by_label[label] = (wnid, row[col["name"]], row[col["gloss"]])
    return _class_table(path, by_label)


def _class_table(path: pathlib.Path, by_label: dict[int, tuple[str, str, str]]) -> ClassTable:
    """Checks that labels are exactly 0..C-1 so that a label can index the wnid list."""
    if not by_label:
        raise ManifestError(f"{path}: no classes below the header")
    expected = set(range(len(by_label)))
    if set(by_label) != expected:
        gaps = sorted(expected - set(by_label))[:5]
        extra = sorted(set(by_label) - expected)[:5]
        raise ManifestError(
            f"{path}: labels must be contiguous 0..{len(by_label) - 1}; "
            f"missing {gaps}, out of range {extra}"
        )
    rows = [by_label[i] for i in range(len(by_label))]
    return ClassTable(
        path=path,
        wnids=tuple(r[0] for r in rows),
        names=tuple(r[1] for r in rows),
        glosses=tuple(r[2] for r in rows),
    )


def read_manifest(files: list[pathlib.Path], classes: ClassTable) -> Manifest:
    """Read the manifest parquet file(s) and validate every row against `classes`."""
    tables = [_read_one(path) for path in files]
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    table = table.combine_chunks()
    manifest = Manifest(table=table, files=tuple(files))
    row_file = _row_file_index(tables)
    _check_nulls(manifest, row_file)
    _check_splits(manifest, row_file)
    _check_unique_keys(manifest, row_file)
    _check_labels(manifest, row_file, classes)
    return manifest


def _read_one(path: pathlib.Path) -> pa.Table:
    """Reads only the needed columns, cast to one schema so files can be concatenated."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise ManifestError(f"{path}: not a readable parquet file ({e})") from None
    for name in MANIFEST_COLUMNS:
        if name not in schema.names:
            raise ManifestError(
                f"{path}: missing column {name!r}; expected columns {', '.join(MANIFEST_COLUMNS)}"
            )
    optional = [name for name in OPTIONAL_COLUMNS if name in schema.names]
    table = pq.read_table(path, columns=[*MANIFEST_COLUMNS, *optional])
    kinds = {**MANIFEST_COLUMNS, **OPTIONAL_COLUMNS}
    columns = [
        _cast_column(path, name, table.column(name), kinds[name])
        if name in table.column_names
        else pa.nulls(table.num_rows, _CAST_TARGET[kinds[name]])
        for name in kinds
    ]
    return pa.table(columns, names=list(kinds))


def _cast_column(
    path: pathlib.Path, name: str, column: pa.ChunkedArray, kind: str
) -> pa.ChunkedArray:
    value_type = column.type
    if pa.types.is_dictionary(value_type):
        value_type = value_type.value_type
    accepted = {
        "string": pa.types.is_string(value_type)
        or pa.types.is_large_string(value_type)
        or pa.types.is_string_view(value_type),
        "int": pa.types.is_integer(value_type),
        "float": pa.types.is_floating(value_type) or pa.types.is_integer(value_type),
    }[kind]
    if not accepted and not pa.types.is_null(value_type):
        raise ManifestError(f"{path}: column {name!r} has type {column.type}, expected {kind}")
    column = column.cast(_CAST_TARGET[kind])
    if name in _FILL_NULLS:
        column = pc.fill_null(column, pa.scalar(_FILL_NULLS[name], _CAST_TARGET[kind]))
    return column


def _row_file_index(tables: list[pa.Table]) -> np.ndarray:
    """Cumulative row counts, so that a global row index maps back to its file."""
    return np.cumsum([t.num_rows for t in tables])


def _where(manifest: Manifest, row_file: np.ndarray, row: int) -> str:
    """'FILE: row KEY' for error messages."""
    path = manifest.files[int(np.searchsorted(row_file, row, side="right"))]
    key = manifest.table.column("key")[row].as_py()
    return f"{path}: row key {key!r}"


def _first_true(mask: pa.ChunkedArray | pa.Array | np.ndarray) -> int | None:
    mask = np.asarray(mask, dtype=bool)
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def _check_nulls(manifest: Manifest, row_file: np.ndarray) -> None:
    for name in MANIFEST_COLUMNS:
        if name in _FILL_NULLS:
            continue
        column = manifest.table.column(name)
        if column.null_count:
            row = _first_true(pc.is_null(column))
            raise ManifestError(f"{_where(manifest, row_file, row)}: column {name!r} is null")


def _check_splits(manifest: Manifest, row_file: np.ndarray) -> None:
    split = manifest.table.column("split")
    bad = _first_true(pc.invert(pc.is_in(split, value_set=pa.array([*SPLITS, RESERVE]))))
    if bad is not None:
        raise ManifestError(
            f"{_where(manifest, row_file, bad)}: split {split[bad].as_py()!r} is not one of "
            f"{', '.join([*SPLITS, RESERVE])}"
        )


def _check_unique_keys(manifest: Manifest, row_file: np.ndarray) -> None:
    keys = manifest.table.column("key")
    if pc.count_distinct(keys).as_py() == len(keys):
        return
    counts = pc.value_counts(keys).flatten()
    dup_values = pc.filter(counts[0], pc.greater(counts[1], 1))
    first = _first_true(pc.is_in(keys, value_set=dup_values))
    raise ManifestError(
        f"{_where(manifest, row_file, first)}: duplicate key {keys[first].as_py()!r} "
        "(manifest keys must be unique)"
    )


def _check_labels(manifest: Manifest, row_file: np.ndarray, classes: ClassTable) -> None:
    """Each row's (label, wnid) must be a line of classes.tsv."""
    labels = manifest.table.column("label").to_numpy()
    wnids = manifest.table.column("wnid")
    class_wnids = pa.array(classes.wnids, pa.string())
    out_of_range = _first_true((labels < 0) | (labels >= classes.num_classes))
    if out_of_range is not None:
        raise ManifestError(
            f"{_where(manifest, row_file, out_of_range)}: label {labels[out_of_range]} is not in "
            f"{classes.path} (expected 0..{classes.num_classes - 1})"
        )
    unknown = _first_true(pc.invert(pc.is_in(wnids, value_set=class_wnids)))
    if unknown is not None:
        raise ManifestError(
            f"{_where(manifest, row_file, unknown)}: wnid {wnids[unknown].as_py()!r} is not in "
            f"{classes.path}"
        )
    expected = pc.take(class_wnids, pa.array(labels))
    mismatch = _first_true(pc.not_equal(expected, wnids))
    if mismatch is not None:
        raise ManifestError(
            f"{_where(manifest, row_file, mismatch)}: label {labels[mismatch]} with wnid "
            f"{wnids[mismatch].as_py()!r}, but {classes.path} gives label {labels[mismatch]} "
            f"wnid {expected[mismatch].as_py()!r}"
        )
