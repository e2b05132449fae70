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
from collections.abc import Mapping

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
    "id": "id",  # text or integer (LAION-5B's SAMPLE_ID is int64)
}
REQUIRED = ("url", "caption", "width", "height")
ONE_OF = ("punsafe", "nsfw")  # LAION-5B has punsafe, LAION-400M and Re-LAION have NSFW
# The match output's fields taken from LAION (role -> type).
OUTPUT_TYPES: Mapping[str, pa.DataType] = {
    "url": pa.string(),
    "width": pa.int64(),
    "height": pa.int64(),
    "punsafe": pa.float32(),
    "nsfw": pa.string(),
    "similarity": pa.float32(),
}


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
    metadata = files.read_metadata(path)
    schema = metadata.schema.to_arrow_schema()
    chosen = resolve_columns(path, schema, columns)
    checked = {column: KINDS[role] for role, column in chosen.items() if column}
    files.check_columns(path, schema, checked)
    sizes = tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
    starts = (0, *itertools.accumulate(sizes))[: len(sizes)]
    return Shard(path, chosen, starts, sizes)


def resolve_columns(
    path: pathlib.Path, schema: pa.Schema, columns: ml_collections.ConfigDict
) -> dict[str, str | None]:
    """role -> the first of its candidate names present in `schema` (None if none is)."""
    chosen = {}
    for role in KINDS:
        names = _candidates(columns, role)
        chosen[role] = next((n for n in names if n in schema.names), None)
        if chosen[role] is None and (role in REQUIRED or (role == "id" and names)):
            raise CurationError(
                f"{path}: missing column {' or '.join(map(repr, names))} for {role} "
                f"(config.laion.columns.{role}; has {', '.join(schema.names)})"
            )
    if not any(chosen[r] for r in ONE_OF):
        wanted = " or ".join(repr(n) for r in ONE_OF for n in _candidates(columns, r))
        raise CurationError(
            f"{path}: missing column {wanted} (config.laion.columns.punsafe/nsfw; "
            f"has {', '.join(schema.names)})"
        )
    return chosen


def _candidates(columns: ml_collections.ConfigDict, role: str) -> list[str]:
    """The column names config.laion.columns.<role> lists (comma-separated; '' or None: none)."""
    return [n.strip() for n in str(columns.get(role, "") or "").split(",") if n.strip()]


def read_row_group(shard: Shard, index: int) -> pa.Table:
    """Row group `index` with the shard's chosen columns, renamed to their roles."""
    roles = [r for r, name in shard.columns.items() if name]
    try:
        table = pq.ParquetFile(shard.path).read_row_group(
            index, columns=[shard.columns[r] for r in roles], use_threads=False
        )
    except (OSError, pa.ArrowException) as e:
        raise CurationError(
            f"{shard.path}: row group {index} is unreadable ({files.one_line(e)})"
        ) from None
    return table.rename_columns(roles)


def standardize(table: pa.Table) -> dict[str, pa.Array]:
    """The match output's LAION fields from a row-group table (roles as column names), typed
    as OUTPUT_TYPES says (text decoded as UTF-8; NaN width/height -> null); a role the file
    lacks is all null."""
    return {
        role: _cast(table.column(role).combine_chunks(), to)
        if role in table.column_names
        else pa.nulls(len(table), to)
        for role, to in OUTPUT_TYPES.items()
    }


def _cast(values: pa.Array, to: pa.DataType) -> pa.Array:
    if pa.types.is_string(to):
        return decode_utf8(values)[0]  # binary too; invalid UTF-8 replaced
    if pa.types.is_integer(to) and pa.types.is_floating(values.type):
        values = pc.if_else(pc.is_finite(values), values, pa.scalar(None, values.type))
    return values.cast(to, safe=False)
