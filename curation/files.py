"""Files between stages: input shard lists, atomic parquet writes, per-shard resume.

A stage writes one output file per input shard, named after the shard, and writes it atomically
(temporary file + rename). The presence of the output therefore means "this shard is done", so
a rerun skips finished shards and a killed run never leaves a half-written or duplicated shard.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pathlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from curation.errors import CurationError

T = TypeVar("T")

# Column kinds accepted by `check_columns`; the predicate sees the (dictionary value) type.
KINDS: Mapping[str, Callable[[pa.DataType], bool]] = {
    "string": lambda t: (
        pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
    ),
    "text": lambda t: (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_string_view(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
    ),
    "int": pa.types.is_integer,
    "number": lambda t: pa.types.is_integer(t) or pa.types.is_floating(t),
    "list": lambda t: pa.types.is_list(t) or pa.types.is_large_list(t),
    "id": lambda t: KINDS["text"](t) or pa.types.is_integer(t),  # LAION-5B's SAMPLE_ID: int64
}
_PARQUET_SUFFIX = re.compile(r"(\.[A-Za-z0-9]+)?\.parquet$")
# The wordnet stage's output, which later stages read: one row per candidate class.
CANDIDATES = pathlib.Path("classes") / "candidates.parquet"
# Characters not allowed in shard names and sample keys (they name files); replaced by "_".
UNSAFE_CHARS = r"[^A-Za-z0-9_.-]"
_UNSAFE = re.compile(UNSAFE_CHARS)


def input_shards(patterns: str | Sequence[str]) -> list[pathlib.Path]:
    """Files matching comma-separated globs (or a list of them), sorted; each must exist and
    have a distinct `shard_name`, because outputs are named after it."""
    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(",") if p.strip()]
    files: set[pathlib.Path] = set()
    for pattern in patterns:
        matched = glob.glob(os.path.expanduser(pattern.strip()), recursive=True)
        if not matched:
            raise CurationError(f"no input file matches {pattern!r}")
        files.update(pathlib.Path(m) for m in matched if pathlib.Path(m).is_file())
    shards = sorted(files)
    seen: dict[str, pathlib.Path] = {}
    for shard in shards:
        name = shard_name(shard)
        if name in seen:
            raise CurationError(
                f"input files {seen[name]} and {shard} share the shard name {name!r}; "
                "outputs are named after it, so rename one"
            )
        seen[name] = shard
    return shards


def shard_name(path: pathlib.Path) -> str:
    """'part-00001.snappy.parquet' -> 'part-00001'; characters unsafe in file names or sample
    keys become '_'."""
    return _UNSAFE.sub("_", _PARQUET_SUFFIX.sub("", path.name))


def output_path(out_dir: pathlib.Path, shard: pathlib.Path | str) -> pathlib.Path:
    name = shard if isinstance(shard, str) else shard_name(shard)
    return out_dir / f"{name}.parquet"


@contextlib.contextmanager
def atomic_path(path: pathlib.Path) -> Iterator[pathlib.Path]:
    """Yields a temporary name beside `path` to write to; renamed to `path` when the block ends
    without an error, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    yield tmp
    os.replace(tmp, path)


def write_parquet_atomic(table: pa.Table, path: pathlib.Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_text_atomic(path: pathlib.Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: pathlib.Path, value: Any, **dumps_kwargs) -> None:
    """Atomic JSON file (indent=2 unless given; numpy scalars and paths as strings)."""
    dumps_kwargs.setdefault("indent", 2)
    dumps_kwargs.setdefault("default", str)
    write_text_atomic(path, json.dumps(value, **dumps_kwargs) + "\n")


def pending_shards(shards: Sequence[pathlib.Path], out_dir: pathlib.Path) -> list[pathlib.Path]:
    """The shards whose output is not written yet."""
    return [s for s in shards if not output_path(out_dir, s).exists()]


def run_per_shard(
    shards: Sequence[pathlib.Path],
    out_dir: pathlib.Path,
    process: Callable[[pathlib.Path], pa.Table],
    desc: str,
) -> int:
    """Sequential resumable stage: `process(shard)` -> output table, for each unfinished shard.
    Returns the number of shards processed now (the others were done before)."""
    todo = pending_shards(shards, out_dir)
    for shard in progress(todo, desc=desc, unit="shard"):
        write_parquet_atomic(process(shard), output_path(out_dir, shard))
    return len(todo)


def manifest_files(workdir: pathlib.Path) -> list[pathlib.Path]:
    """W/manifest.parquet, else W/manifest/*.parquet sorted (as the TFDS builder reads them)."""
    single = workdir / "manifest.parquet"
    if single.is_file():
        return [single]
    found = sorted((workdir / "manifest").glob("*.parquet"))
    if not found:
        raise CurationError(
            f"no manifest: expected {single} or {workdir / 'manifest'}/*.parquet (select stage)"
        )
    return found


def read_stage(out_dir: pathlib.Path, columns: Sequence[str] | None = None) -> pa.Table:
    """All of a stage's outputs, concatenated in shard-name order."""
    files = sorted(out_dir.glob("*.parquet"))
    if not files:
        raise CurationError(f"{out_dir}: no *.parquet outputs; run the stage that writes them")
    tables = [pq.read_table(f, columns=columns) for f in files]
    return pa.concat_tables(tables, promote_options="default")


def check_columns(path: pathlib.Path, schema: pa.Schema, required: Mapping[str, str]) -> None:
    """One-line error naming the file and column when a column is missing or of the wrong kind
    (`required`: column -> key of KINDS)."""
    for name, kind in required.items():
        if name not in schema.names:
            raise CurationError(
                f"{path}: missing column {name!r} (expected {kind}; has {', '.join(schema.names)})"
            )
        value_type = schema.field(name).type
        if pa.types.is_dictionary(value_type):
            value_type = value_type.value_type
        if not (KINDS[kind](value_type) or pa.types.is_null(value_type)):
            raise CurationError(f"{path}: column {name!r} has type {value_type}, expected {kind}")


def read_metadata(path: pathlib.Path) -> pq.FileMetaData:
    """The parquet footer (schema, row groups), or a one-line error naming the file."""
    try:
        return pq.read_metadata(path)
    except (OSError, pa.ArrowException) as e:
        raise CurationError(f"{path}: not a readable parquet file ({one_line(e)})") from None


def read_schema(path: pathlib.Path) -> pa.Schema:
    """The parquet schema, or a one-line error naming the file."""
    return read_metadata(path).schema.to_arrow_schema()


def one_line(error: Exception) -> str:
    """An exception's message on one line (Arrow's often span several)."""
    return " ".join(str(error).split())


def read_candidates(
    workdir: pathlib.Path, required: Mapping[str, str], optional: Sequence[str] = ()
) -> pa.Table:
    """W/classes/candidates.parquet: the `required` columns (checked, name -> kind) and those of
    `optional` it has; a one-line error when it is missing or a required column is wrong."""
    path = workdir / CANDIDATES
    if not path.is_file():
        raise CurationError(f"{path}: not found; run the wordnet stage first")
    schema = read_schema(path)
    check_columns(path, schema, required)
    present = [c for c in optional if c in schema.names and c not in required]
    return pq.read_table(path, columns=[*required, *present])


def progress(items: Iterable[T], **kwargs) -> Iterable[T]:
    """tqdm progress bar (stderr); `desc`, `total`, `unit` as in tqdm."""
    return tqdm(items, dynamic_ncols=True, **kwargs)
