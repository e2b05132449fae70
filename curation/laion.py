"""Reading LAION metadata parquet (LAION-400M/5B, Re-LAION) whatever its column names.

Each output field ("role") names comma-separated candidate columns in `config.laion.columns`;
the first one present in a file wins, per file, so shards of both spellings can be mixed. The
schema is checked before any work starts: a missing or mistyped column is a one-line
CurationError naming the file and the column.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
from collections.abc import Mapping, Sequence

import ml_collections
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation import files
from curation.errors import CurationError
from curation.text import decode_utf8

# role -> kind of files.KINDS its column must have.
KINDS: Mapping[str, str] = {
    "url": "text",
    "caption": "text",
    "width": "number",
    "height": "number",
    "punsafe": "number",
    "nsfw": "string",
    "similarity": "number",
    "id": "text",  # or integer (LAION-5B's SAMPLE_ID is int64)
}
REQUIRED = ("url", "caption", "width", "height")
ONE_OF = ("punsafe", "nsfw")  # LAION-5B has punsafe, LAION-400M and Re-LAION have NSFW


def defaults() -> ml_collections.ConfigDict:
    """config.laion: where the LAION metadata is and what its columns are called."""
    c = ml_collections.ConfigDict()
    # Comma-separated globs of LAION metadata parquet files ('~' and '**' expand). Outputs are
    # named after each file's name, so names must be distinct.
    c.paths = ""
    # Candidate column names per field, comma-separated: the first present in a file wins.
    c.columns = ml_collections.ConfigDict()
    c.columns.url = "URL,url"  # image URL (string)
    c.columns.caption = "TEXT,caption"  # alt text (string, or binary: decoded as UTF-8)
    c.columns.width = "WIDTH,width"  # image width in pixels (int or float; null ok)
    c.columns.height = "HEIGHT,height"  # image height in pixels (int or float; null ok)
    c.columns.punsafe = "punsafe"  # LAION-5B's probability of unsafe content (float)
    c.columns.nsfw = "NSFW,nsfw"  # LAION-400M's tag: UNLIKELY|UNSURE|NSFW (string)
    c.columns.similarity = "similarity"  # CLIP image-text cosine similarity (float); optional
    # Sample id column (e.g. 'SAMPLE_ID' or 'key'); '' = key by file and row. Values must be
    # unique over all inputs (checked); characters unsafe in file names become '_'.
    c.columns.id = ""
    return c


@dataclasses.dataclass(frozen=True)
class Shard:
    """One input file: its path, the column chosen for each role (None: absent) and its row
    groups' first row indices (`starts[i]`) and sizes."""

    path: pathlib.Path
    columns: Mapping[str, str | None]
    starts: tuple[int, ...]
    sizes: tuple[int, ...]

    @property
    def name(self) -> str:
        return files.shard_name(self.path)


def open_shard(path: pathlib.Path, columns: ml_collections.ConfigDict) -> Shard:
    """Checks the file's schema against `config.laion.columns`; one-line error if it fails."""
    try:
        metadata = pq.read_metadata(path)
    except (OSError, pa.ArrowException) as e:
        raise CurationError(f"{path}: not a readable parquet file ({_one_line(e)})") from None
    schema = metadata.schema.to_arrow_schema()
    chosen = resolve_columns(path, schema, columns)
    checked = {role: column for role, column in chosen.items() if column}
    if checked.get("id") and pa.types.is_integer(schema.field(checked["id"]).type):
        del checked["id"]  # an integer id is fine too
    files.check_columns(path, schema, {column: KINDS[role] for role, column in checked.items()})
    sizes = tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
    starts = (0, *itertools.accumulate(sizes))[: len(sizes)]
    return Shard(path, chosen, starts, sizes)


def resolve_columns(
    path: pathlib.Path, schema: pa.Schema, columns: ml_collections.ConfigDict
) -> dict[str, str | None]:
    """role -> the first of its candidate names present in `schema` (None if none is)."""
    chosen = {}
    for role in KINDS:
        names = [n.strip() for n in str(columns.get(role, "") or "").split(",") if n.strip()]
        chosen[role] = next((n for n in names if n in schema.names), None)
        if chosen[role] is None and (role in REQUIRED or (role == "id" and names)):
            raise CurationError(
                f"{path}: missing column {' or '.join(map(repr, names))} for {role} "
                f"(config.laion.columns.{role}; has {', '.join(schema.names)})"
            )
    if not any(chosen[r] for r in ONE_OF):
        names = [n.strip() for r in ONE_OF for n in str(columns.get(r, "")).split(",")]
        wanted = " or ".join(repr(n) for n in names if n)
        raise CurationError(
            f"{path}: missing column {wanted} (config.laion.columns.punsafe/nsfw; "
            f"has {', '.join(schema.names)})"
        )
    return chosen


def read_row_group(shard: Shard, index: int) -> pa.Table:
    """Row group `index` with the shard's chosen columns, renamed to their roles."""
    roles = [r for r, name in shard.columns.items() if name]
    try:
        table = pq.ParquetFile(shard.path).read_row_group(
            index, columns=[shard.columns[r] for r in roles], use_threads=False
        )
    except (OSError, pa.ArrowException) as e:
        raise CurationError(
            f"{shard.path}: row group {index} is unreadable ({_one_line(e)})"
        ) from None
    return table.rename_columns(roles)


def standardize(table: pa.Table, roles: Sequence[str]) -> dict[str, pa.Array]:
    """The match output's LAION fields from a row-group table (roles as column names): url
    (str), width/height (int64; NaN -> null), punsafe/similarity (float32), nsfw (str); a role
    the file lacks is all null."""
    n = len(table)
    out = {}
    for role, kind in _OUTPUT_FIELDS.items():
        values = table.column(role).combine_chunks() if role in roles else None
        out[role] = pa.nulls(n, _TYPES[kind]) if values is None else _CASTS[kind](values)
    return out


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _to_int(values: pa.Array) -> pa.Array:
    if pa.types.is_floating(values.type):
        values = pc.if_else(pc.is_finite(values), values, pa.scalar(None, values.type))
    return values.cast(pa.int64(), safe=False)


_TYPES = {"string": pa.string(), "int": pa.int64(), "float": pa.float32()}
_CASTS = {
    "string": lambda v: decode_utf8(v)[0],
    "int": _to_int,
    "float": lambda v: v.cast(pa.float32(), safe=False),
}
_OUTPUT_FIELDS = {
    "url": "string",
    "width": "int",
    "height": "int",
    "punsafe": "float",
    "nsfw": "string",
    "similarity": "float",
}
