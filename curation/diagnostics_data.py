"""Inputs of the diagnostics stage: a curated workdir's manifest, class list (with WordNet
extras) and CLIP image embeddings of a seeded per-class sample of its images.

Missing required files (manifest, classes.tsv) are CurationErrors; missing optional ones
(candidates, embeddings) become notes in the report, because diagnostics should still describe
what a partial workdir has.
"""

from __future__ import annotations

import csv
import dataclasses
import pathlib
from collections.abc import Callable, Iterator, Mapping

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation import files
from curation.diagnostics_stats import group_rows, subsample
from curation.errors import CurationError

_MANIFEST_COLUMNS = {"key": "string", "wnid": "string", "text_score": "number"}


def _parse_bool(text: str) -> bool:
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(
        text.strip().lower()
    )
    if value is None:
        raise ValueError(f"{text!r} is not a boolean")
    return value


# WordNet extras of a class (classes.tsv or classes/candidates.parquet) -> parser of TSV text.
CLASS_FIELDS: Mapping[str, Callable[[str], object]] = {
    "lexname": str,
    "depth": int,
    "imagenet_hops": int,
    "in_imagenet": _parse_bool,
}


@dataclasses.dataclass
class ClassInfo:
    """The classes of classes.tsv; `fields[f]` has one value (None = no value) per class, or is
    None when no source has field f; `sources[f]` says where it came from."""

    wnids: list[str]
    names: list[str]
    fields: dict[str, list | None]
    sources: dict[str, str]


@dataclasses.dataclass
class Dataset:
    """One curated workdir: `manifest` columns key, wnid, split (str), text_score (float64)."""

    name: str
    workdir: pathlib.Path
    manifest: pa.Table
    classes: ClassInfo


@dataclasses.dataclass
class Embeddings:
    """Per-class image embeddings (float16) of the sampled images that have one, and counts:
    sampled, used, missing (no row / no image for the key), invalid (NaN row, undecodable)."""

    by_class: dict[str, np.ndarray]
    counts: dict[str, int]
    source: str


def read_manifest(workdir: pathlib.Path) -> pa.Table:
    """key, wnid, split ('all' when the column is absent), text_score (float64, NaN for null)."""
    tables = []
    for path in files.manifest_files(workdir):
        schema = files.read_schema(path)
        files.check_columns(path, schema, _MANIFEST_COLUMNS)
        has_split = "split" in schema.names
        if has_split:
            files.check_columns(path, schema, {"split": "string"})
        table = pq.read_table(path, columns=[*_MANIFEST_COLUMNS, *(["split"] if has_split else [])])
        split = table.column("split") if has_split else pa.array(["all"] * table.num_rows)
        tables.append(
            pa.table(
                {
                    "key": table.column("key").cast(pa.string()),
                    "wnid": table.column("wnid").cast(pa.string()),
                    "split": pc.fill_null(pc.cast(split, pa.string()), "n/a"),
                    "text_score": pc.fill_null(
                        table.column("text_score").cast(pa.float64()), float("nan")
                    ),
                }
            )
        )
    return pa.concat_tables(tables).combine_chunks()


def _tsv_rows(path: pathlib.Path) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        raise CurationError(f"{path}: not found; run the select stage (it writes classes.tsv)")
    with path.open(newline="", encoding="utf-8") as f:
        lines = [row for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if row]
    if not lines or "wnid" not in [h.strip() for h in lines[0]]:
        raise CurationError(f"{path}: expected a tab-separated header with a 'wnid' field")
    header = [h.strip() for h in lines[0]]
    for line_no, row in enumerate(lines[1:], start=2):
        if len(row) < len(header):
            raise CurationError(f"{path}:{line_no}: {len(row)} fields, expected {len(header)}")
    return header, lines[1:]


def _tsv_field(path: pathlib.Path, header: list[str], rows: list[list[str]], field: str) -> list:
    col = header.index(field)
    values = []
    for line_no, row in enumerate(rows, start=2):
        text = row[col].strip()
        try:
            values.append(CLASS_FIELDS[field](text) if text else None)
        except ValueError as e:
            raise CurationError(f"{path}:{line_no}: field {field!r}: {e}") from None
    return values


def _candidate_fields(
    workdir: pathlib.Path, wnids: list[str], wanted: list[str]
) -> dict[str, list]:
    """The `wanted` columns that candidates.parquet has, looked up by wnid (None if absent)."""
    table = files.read_candidates(workdir, {"wnid": "string"}, optional=wanted).to_pydict()
    present = [f for f in wanted if f in table]
    if not present:
        return {}
    index = {w: i for i, w in enumerate(table["wnid"])}
    rows = [index.get(w) for w in wnids]
    return {f: [None if i is None else table[f][i] for i in rows] for f in present}


def imagenet_wnids(override: str = "") -> tuple[set[str], pathlib.Path] | None:
    """ImageNet-1k WNIDs and their file, found as the wordnet stage finds them (`override`, else
    the list inside the installed tensorflow-datasets); None when there is none (report: n/a)."""
    from curation import wordnet  # imports nltk: only when a class file lacks in_imagenet

    try:
        path = wordnet.imagenet_labels_path(
            ml_collections.ConfigDict({"imagenet_labels": override})
        )
    except CurationError:
        return None
    if not path.is_file():
        return None
    return set(wordnet.read_wnids(path, "wordnet.imagenet_labels")), path


def read_classes(workdir: pathlib.Path, imagenet_labels: str = "") -> ClassInfo:
    """classes.tsv, its WordNet extras completed from classes/candidates.parquet, and
    in_imagenet at last from the ImageNet-1k WNID list."""
    path = workdir / "classes.tsv"
    header, rows = _tsv_rows(path)
    wnids = [row[header.index("wnid")].strip() for row in rows]
    names = [row[header.index("name")] for row in rows] if "name" in header else list(wnids)
    fields: dict[str, list | None] = dict.fromkeys(CLASS_FIELDS)
    sources = dict.fromkeys(CLASS_FIELDS, "n/a")
    for field in CLASS_FIELDS:
        if field in header:
            fields[field], sources[field] = _tsv_field(path, header, rows, field), str(path)
    candidates = workdir / files.CANDIDATES
    missing = [f for f in CLASS_FIELDS if fields[f] is None]
    if missing and candidates.is_file():
        for field, values in _candidate_fields(workdir, wnids, missing).items():
            fields[field], sources[field] = values, str(candidates)
    found = None if fields["in_imagenet"] is not None else imagenet_wnids(imagenet_labels)
    if found is not None:
        imagenet, labels = found
        fields["in_imagenet"], sources["in_imagenet"] = [w in imagenet for w in wnids], str(labels)
    return ClassInfo(wnids=wnids, names=names, fields=fields, sources=sources)


def load_dataset(workdir: pathlib.Path, name: str, imagenet_labels: str = "") -> Dataset:
    if not workdir.is_dir():
        raise CurationError(f"{workdir}: workdir not found")
    return Dataset(
        name=name or workdir.resolve().name,
        workdir=workdir,
        manifest=read_manifest(workdir),
        classes=read_classes(workdir, imagenet_labels),
    )


def sample_images(manifest: pa.Table, cap: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keys, wnids): at most `cap` images per class, seeded. Rows are sorted by key and classes
    by wnid first, so the draw does not depend on the manifest's row order."""
    rng = np.random.default_rng(seed)
    keys = np.asarray(manifest.column("key").to_pylist(), dtype=object)
    order = np.argsort(keys, kind="stable")  # row order of the manifest must not matter
    wnids = np.asarray(manifest.column("wnid").to_pylist(), dtype=object)
    groups = group_rows(wnids[order])
    chosen = [order[subsample(rows, cap, rng)] for rows in groups.values()]
    rows = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    return keys[rows], wnids[rows]


def _clip_score_source(
    workdir: pathlib.Path, keys: np.ndarray, config: ml_collections.ConfigDict
) -> tuple[np.ndarray | None, np.ndarray, str]:
    """Rows of W/clip_score/<shard>.embeddings.npy for `keys` (first occurrence: a key matched
    to several classes has one image). Returns (embeddings, found mask, what is missing
    when nothing is there)."""
    del config
    from curation.clip_score import embeddings_path  # only on this route

    pairs = [(p, embeddings_path(p)) for p in sorted((workdir / "clip_score").glob("*.parquet"))]
    pairs = [(p, npy) for p, npy in pairs if npy.is_file()]
    if not pairs:
        return None, np.zeros(len(keys), bool), f"{workdir / 'clip_score'}/*.embeddings.npy"
    wanted = pa.array(keys.tolist(), pa.string())
    out, found = None, np.zeros(len(keys), bool)
    for parquet, npy in files.progress(pairs, desc="diagnostics: embeddings", unit="shard"):
        files.check_columns(parquet, files.read_schema(parquet), {"key": "string"})
        shard_keys = pq.read_table(parquet, columns=["key"]).column("key")
        emb = np.load(npy, mmap_mode="r")
        if emb.ndim != 2 or len(emb) != len(shard_keys):
            raise CurationError(
                f"{npy}: shape {emb.shape}, expected ({len(shard_keys)}, D): one row per row of "
                f"{parquet}"
            )
        if out is None:  # float16 as stored: 1 GB for 1M images x 512 dims; rows not found stay 0
            out = np.zeros((len(keys), emb.shape[1]), np.float16)
        if emb.shape[1] != out.shape[1]:
            raise CurationError(f"{npy}: embedding dim {emb.shape[1]}, others have {out.shape[1]}")
        pos = pc.fill_null(pc.index_in(shard_keys, value_set=wanted), -1).to_numpy()
        pos, rows = np.unique(pos, return_index=True)  # first row of each wanted key
        keep = (pos >= 0) & ~found[np.maximum(pos, 0)]
        pos, rows = pos[keep], rows[keep]
        order = np.argsort(rows)  # ascending reads from the memory map
        out[pos[order]] = emb[rows[order]]
        found[pos] = True
    return out, found, ""


def _images_source(
    workdir: pathlib.Path, keys: np.ndarray, config: ml_collections.ConfigDict
) -> tuple[np.ndarray | None, np.ndarray, str]:
    """Encodes the sampled images of W/images/*.tar with the clip_score stage's CLIP model
    (config.clip_score). Only the sampled keys are read and decoded (tar header index), and
    images stream to the model batch by batch. Undecodable images stay 0 (invalid)."""
    from curation import clip_score, encoders  # encoders imports torch: only on this route

    images_dir = workdir / "images"
    found = np.zeros(len(keys), bool)
    if not sorted(images_dir.glob("*.tar")):
        return None, found, f"{images_dir}/*.tar"
    if "clip_score" not in config:
        raise CurationError("config.clip_score: missing; diagnostics.embeddings='images' needs it")
    clip = clip_score.load_clip(config.clip_score)
    batch_size = int(config.clip_score.get("batch_size", 64))
    index = clip_score.ImageIndex(images_dir)
    row_of = {k: i for i, k in enumerate(keys.tolist())}  # a repeated key: its last row
    present = [k for k in row_of if k in index.members]
    found[[row_of[k] for k in present]] = True
    decoded: list[int] = []

    def images() -> Iterator[object]:
        for key, image in index.load(present):
            if image is not None:
                decoded.append(row_of[key])
                yield image

    emb = encoders.encode_images(clip, images(), batch_size)
    # float16, as the clip_score stage stores them; rows without an image stay 0 (invalid)
    out = np.zeros((len(keys), emb.shape[1] if decoded else 1), np.float16)
    if decoded:
        out[decoded] = emb
    return out, found, ""


# config.diagnostics.embeddings -> reader of (embeddings, found mask, what is missing).
EMBEDDING_SOURCES = {"clip_score": _clip_score_source, "images": _images_source}


def load_embeddings(
    dataset: Dataset, source: str, config: ml_collections.ConfigDict, cap: int, seed: int
) -> Embeddings | str:
    """Embeddings of a seeded sample of <= cap images per class, or the reason there are none.
    `source` is a key of EMBEDDING_SOURCES (diagnostics checks the config up front)."""
    keys, wnids = sample_images(dataset.manifest, cap, seed)
    emb, found, missing_input = EMBEDDING_SOURCES[source](dataset.workdir, keys, config)
    if emb is None:
        return f"{missing_input} not found"
    valid = found.copy()
    for start in range(0, len(emb), 1 << 16):  # blocks: no full-size temporaries
        block = emb[start : start + (1 << 16)]
        valid[start : start + len(block)] &= np.isfinite(block).all(1) & (block != 0).any(1)
    counts = {
        "sampled": len(keys),
        "used": int(valid.sum()),
        "missing": int((~found).sum()),
        "invalid": int((found & ~valid).sum()),
    }
    if not valid.any():
        return f"none of the {len(keys)} sampled images has a valid embedding ({source})"
    rows = np.flatnonzero(valid)
    by_class = {w: emb[rows[group]] for w, group in group_rows(wnids[rows]).items()}
    return Embeddings(by_class=by_class, counts=counts, source=source)
