"""Index img2dataset webdataset tar shards by reading their headers only.

A full ImageNot download is 100s of GB of tars; reading them to find images would cost a full
pass, and holding the bytes would not fit in memory. Tar headers already record where each
member's data starts (`TarInfo.offset_data`) and how long it is, so one header pass gives a
key -> (shard, offset, size) table and each image is later read with one seek.

Keys: img2dataset names members by its own sequential key and writes, beside each tar, a parquet
of its rows (`NNNNN.parquet`: `key`, `status` and the columns passed through, among them the
manifest key as `manifest_key`, see curation/download.py). Members are looked up by manifest key
through that mapping, so the tars are used as downloaded (no rewrite, no second copy). A tar
without such a parquet has members named by manifest key already (hand-made or older tars).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import pathlib
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from absl import logging

# Members with these suffixes are images; .json/.txt and anything else are ignored.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# The column of img2dataset's per-shard parquet holding the manifest key (img2dataset reserves
# `key` for its own); curation/download.py passes it through.
MANIFEST_KEY_COLUMN = "manifest_key"


@dataclasses.dataclass(frozen=True)
class ShardIndex:
    """Image members of all shards, in (shard, offset) order; arrays are aligned."""

    paths: tuple[pathlib.Path, ...]
    keys: pa.Array  # string, one per image member; a key may repeat across shards
    shard: np.ndarray  # int32 index into paths
    offset: np.ndarray  # int64 byte offset of the member's data in its tar
    size: np.ndarray  # int64 byte size of the member's data
    bad_shards: tuple[str, ...] = ()  # shards whose headers could not all be read


@dataclasses.dataclass(frozen=True)
class Locations:
    """Where each requested key lives; shard == -1 means the key is in no shard."""

    shard: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    duplicated: np.ndarray  # bool: the key has more than one image member (first one is used)


def find_shards(images_dir: pathlib.Path) -> list[pathlib.Path]:
    """All `*.tar` below images_dir, sorted so "first shard wins" is deterministic."""
    if not images_dir.is_dir():
        return []
    return sorted(p for p in images_dir.rglob("*.tar") if p.is_file())


def _member_key(name: str) -> str | None:
    """The key of an image member ('a/b/000123.jpg' -> '000123'), else None."""
    base = name.rsplit("/", 1)[-1]
    stem, dot, suffix = base.rpartition(".")
    if not dot or not stem or f".{suffix.lower()}" not in IMAGE_SUFFIXES:
        return None
    return stem


def manifest_keys(tar: pathlib.Path) -> dict[str, str]:
    """img2dataset key -> manifest key of the samples of `tar`, from the parquet img2dataset
    wrote beside it ({} when there is none, or it has no manifest key column)."""
    table_path = tar.with_suffix(".parquet")
    if not table_path.is_file():
        return {}
    try:
        names = pq.read_schema(table_path).names
        if "key" not in names or MANIFEST_KEY_COLUMN not in names:
            return {}
        table = pq.read_table(table_path, columns=["key", MANIFEST_KEY_COLUMN])
    except (pa.ArrowException, OSError) as e:
        logging.warning("imagenot: %s is unreadable (%s); members keep their names", table_path, e)
        return {}
    own, ours = table.column("key").to_pylist(), table.column(MANIFEST_KEY_COLUMN).to_pylist()
    return {k: m for k, m in zip(own, ours, strict=True) if k and m}


def _index_one(path: pathlib.Path) -> tuple[list[str], list[int], list[int], bool]:
    """Header pass over one tar; a damaged tar keeps the members read before the damage."""
    rename = manifest_keys(path)
    keys: list[str] = []
    offsets: list[int] = []
    sizes: list[int] = []
    file_size = path.stat().st_size
    ok = True
    try:
        with tarfile.open(path, mode="r:") as tar:
            while (member := tar.next()) is not None:
                tar.members.clear()  # headers are not needed once read; keeps memory flat
                key = _member_key(member.name) if member.isfile() else None
                if key is None:
                    continue
                if member.offset_data + member.size > file_size:
                    ok = False  # truncated last member (e.g. an interrupted download)
                    break
                keys.append(rename.get(key, key))
                offsets.append(member.offset_data)
                sizes.append(member.size)
    except (tarfile.TarError, EOFError, OSError) as e:
        logging.warning("imagenot: shard %s is damaged after %d images: %s", path, len(keys), e)
        ok = False
    return keys, offsets, sizes, ok


def index_shards(paths: list[pathlib.Path], threads: int) -> ShardIndex:
    """Index every shard (in parallel; headers only) and concatenate in shard order."""
    keys: list[str] = []
    shard: list[np.ndarray] = []
    offset: list[int] = []
    size: list[int] = []
    bad: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        for i, (k, o, s, ok) in enumerate(pool.map(_index_one, paths)):
            keys.extend(k)
            offset.extend(o)
            size.extend(s)
            shard.append(np.full(len(k), i, dtype=np.int32))
            if not ok:
                bad.append(str(paths[i]))
    return ShardIndex(
        paths=tuple(paths),
        keys=pa.array(keys, pa.string()),
        shard=np.concatenate(shard) if shard else np.zeros(0, np.int32),
        offset=np.asarray(offset, dtype=np.int64),
        size=np.asarray(size, dtype=np.int64),
        bad_shards=tuple(bad),
    )


def locate(index: ShardIndex, keys: pa.Array | pa.ChunkedArray) -> Locations:
    """Vectorised lookup of manifest keys; the first (shard, offset) occurrence wins."""
    pos = pc.index_in(keys, value_set=index.keys)
    found = np.asarray(pc.is_valid(pos), dtype=bool)
    pos_np = np.asarray(pc.fill_null(pos, 0), dtype=np.int64)
    shard = np.where(found, index.shard[pos_np] if len(index.keys) else -1, -1).astype(np.int32)
    offset = np.where(found, index.offset[pos_np] if len(index.keys) else 0, 0)
    size = np.where(found, index.size[pos_np] if len(index.keys) else 0, 0)
    return Locations(shard=shard, offset=offset, size=size, duplicated=_duplicated(index, keys))


def _duplicated(index: ShardIndex, keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if len(index.keys) == 0 or pc.count_distinct(index.keys).as_py() == len(index.keys):
        return np.zeros(len(keys), dtype=bool)
    counts = pc.value_counts(index.keys).flatten()
    repeated = pc.filter(counts[0], pc.greater(counts[1], 1))
    return np.asarray(pc.is_in(keys, value_set=repeated), dtype=bool)


def read_member(path: pathlib.Path, offset: int, size: int) -> bytes:
    """Read one member's bytes; a short read (tar changed since indexing) raises EOFError."""
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise EOFError(f"{path}: expected {size} bytes at offset {offset}, got {len(data)}")
    return data
