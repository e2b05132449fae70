"""CLIP score: open_clip image-text cosine between each sample's image and its class text.

Reads `W/text_score/*.parquet`; writes per shard `W/clip_score/<shard>.embeddings.npy` (float16
[rows, D] L2-normalized image embeddings, NaN rows where missing) first and then, atomically,
`W/clip_score/<shard>.parquet` (the text_score columns + `clip_score` float32, NaN where the
image or embedding is unavailable), so the parquet's presence means the shard is done.

Image embeddings come from downloaded images (webdataset *.tar shards whose image members are
named `{key}.jpg`) or from LAION's precomputed img_emb .npy files, whose row order is the row
order of the metadata parquet each sample came from (`source`, `row` columns).
"""

from __future__ import annotations

import io
import itertools
import os
import pathlib
import re
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from absl import logging
from PIL import Image

from curation import cli, engine, files, scoring
from curation.errors import CurationError

if TYPE_CHECKING:  # annotations only: torch loads with the model (`curation.encoders`)
    from curation.encoders import ClipModel

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
INPUT_COLUMNS = {"key": "string", "wnid": "string", "lemma": "string"}
EMBEDDING_COLUMNS = {"source": "string", "row": "int"}
_TRAILING_DIGITS = re.compile(r"(\d+)$")


def defaults() -> ml_collections.ConfigDict:
    """The `clip_score` config section."""
    c = ml_collections.ConfigDict()
    c.enabled = False  # Run this stage (False: it does nothing and select ignores CLIP scores).
    c.model = "ViT-B-32"  # open_clip model name, 'local-dir:PATH', or 'tiny-random' (tests).
    # Weights: open_clip tag already in the local cache, a checkpoint file path, or '' (only for
    # 'tiny-random': seeded random weights). Nothing is downloaded.
    c.pretrained = "laion2b_s34b_b79k"
    c.source = "images"  # 'images' (webdataset shards) | 'embeddings' (LAION img_emb .npy).
    c.images = ""  # Folder of webdataset *.tar with members {key}.jpg; '' = W/images.
    # Path pattern of LAION img_emb .npy files (rows aligned with the metadata parquet rows):
    # {source} = the sample's `source` shard name, {index} = its trailing digits
    # (metadata_0042 -> 0042); e.g. '/data/laion/img_emb/img_emb_{index}.npy'.
    c.embeddings = ""
    c.class_text = "{lemma}: {gloss}"  # Class text; placeholders as text_score.class_text.
    c.batch_size = 256  # Images or texts per forward pass.
    c.dtype = "float32"  # float32 | float16 (GPU only) | bfloat16.
    c.device = ""  # torch device; '' = cuda if available else cpu.
    scoring.worker_defaults(c)  # workers, num_gpus
    return c


def load_clip(section: ml_collections.ConfigDict) -> ClipModel:
    """The open_clip model of a `clip_score`-like section (model, pretrained, device, dtype)."""
    # Imported here, not at the top: torch and open_clip load only when a model is built, so
    # configs (which import every stage's defaults) and the CPU stages stay light.
    from curation import encoders

    device = encoders.resolve_device(section.device, "clip_score.device")
    dtype = encoders.resolve_dtype(section.dtype, device, "clip_score.dtype")
    fields = ("clip_score.model", "clip_score.pretrained")
    return encoders.load_clip_model(section.model, section.pretrained, device, dtype, fields)


# --- webdataset images ----------------------------------------------------------------------


def _image_key(member: tarfile.TarInfo) -> str | None:
    """'dir/part-000000042.jpg' -> 'part-000000042' for image members, else None."""
    name = os.path.basename(member.name)
    stem, ext = os.path.splitext(name)
    return stem if member.isfile() and ext.lower() in IMAGE_EXTENSIONS else None


def decode_image(data: bytes) -> Image.Image | None:
    """RGB image, or None when the bytes are not a decodable image (counted by the caller)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _tars(directory: pathlib.Path) -> list[pathlib.Path]:
    if not directory.is_dir():
        raise CurationError(f"{directory}: image folder not found (clip_score.images)")
    tars = sorted(directory.glob("*.tar"))
    if not tars:
        raise CurationError(
            f"{directory}: no *.tar webdataset shards (run download, or set clip_score.source="
            "'embeddings')"
        )
    return tars


def _manifest_keys(tar: pathlib.Path) -> dict[str, str]:
    """Member stem -> manifest key for a tar of the download stage: img2dataset names members
    by its own key, and its parquet beside the tar maps them (as the TFDS builder reads them);
    {} for tars named by key already."""
    beside = tar.with_suffix(".parquet")
    if not beside.is_file() or "manifest_key" not in pq.read_schema(beside).names:
        return {}
    table = pq.read_table(beside, columns=["key", "manifest_key"]).to_pydict()
    return {a: b for a, b in zip(table["key"], table["manifest_key"], strict=True) if a and b}


class ImageIndex:
    """key -> (tar, data offset, size) over the folder's webdataset shards, from the tar headers
    only, so that a caller (a parquet shard here, the diagnostics' sample) reads and decodes
    just the images it wants (in file order) instead of every image. The first copy of a key
    wins. Plain tuples keep the index small (millions of images)."""

    def __init__(self, directory: pathlib.Path | str):
        self.tars = _tars(pathlib.Path(directory))
        self.members: dict[str, tuple[int, int, int]] = {}
        for number, path in enumerate(files.progress(self.tars, desc="index images", unit="tar")):
            named = _manifest_keys(path)
            with tarfile.open(path) as tar:
                for member in tar:
                    key = _image_key(member)
                    if key is not None:
                        key = named.get(key, key)
                        self.members.setdefault(key, (number, member.offset_data, member.size))

    def load(self, keys: Iterable[str]) -> Iterator[tuple[str, Image.Image | None]]:
        """(key, RGB image or None if undecodable) for the keys present, read tar by tar in
        file order."""
        found = sorted((self.members[k], k) for k in keys if k in self.members)
        for number, group in itertools.groupby(found, key=lambda item: item[0][0]):
            with open(self.tars[number], "rb") as f:
                for (_, offset, size), key in group:
                    f.seek(offset)
                    yield key, decode_image(f.read(size))


# --- embedding sources -----------------------------------------------------------------------


class _Images:
    """Image embeddings computed with the CLIP image tower from the webdataset shards."""

    def __init__(self, section: ml_collections.ConfigDict, workdir: pathlib.Path):
        self.index = ImageIndex(section.images or workdir / "images")
        self.batch_size = section.batch_size

    def __call__(
        self, table: pa.Table, clip: ClipModel, dim: int, path: pathlib.Path, counts: Counter
    ) -> np.ndarray:
        keys = table["key"].to_pylist()
        unique = list(dict.fromkeys(keys))
        decoded: list[str] = []

        def images() -> Iterator[Image.Image]:
            for key, image in self.index.load(unique):
                if image is None:
                    counts["corrupt_images"] += 1
                    continue
                decoded.append(key)
                yield image

        from curation import encoders  # already imported by load_clip

        embedded = encoders.encode_images(clip, images(), self.batch_size)
        counts["missing_images"] += sum(k not in self.index.members for k in unique)
        by_key = dict(zip(decoded, embedded, strict=True))
        missing = np.full(dim, np.nan, np.float32)
        if not keys:
            return np.zeros((0, dim), np.float32)
        return np.stack([by_key.get(k, missing) for k in keys])


class _Embeddings:
    """LAION's precomputed image embeddings: row `row` of the .npy file of `source`."""

    def __init__(self, section: ml_collections.ConfigDict, workdir: pathlib.Path):
        self.pattern = section.embeddings
        names = scoring.placeholders(self.pattern, "clip_score.embeddings")
        if not self.pattern or not names & {"source", "index"} or names - {"source", "index"}:
            raise CurationError(
                f"clip_score.embeddings={self.pattern!r}: expected a path pattern with {{source}} "
                "and/or {index} (and no other placeholder)"
            )

    def _file(self, source: str, path: pathlib.Path) -> pathlib.Path:
        digits = _TRAILING_DIGITS.search(source)
        if digits is None and "{index}" in self.pattern:
            raise CurationError(f"{path}: source {source!r} has no trailing digits for {{index}}")
        return pathlib.Path(self.pattern.format(source=source, index=digits and digits.group(1)))

    def __call__(
        self, table: pa.Table, clip: ClipModel, dim: int, path: pathlib.Path, counts: Counter
    ) -> np.ndarray:
        files.check_columns(path, table.schema, EMBEDDING_COLUMNS)
        if table["source"].null_count or table["row"].null_count:
            raise CurationError(f"{path}: null source/row values; cannot find their embeddings")
        sources = np.array(table["source"].to_pylist(), dtype=object)
        rows = table["row"].to_numpy(zero_copy_only=False)
        out = np.full((len(rows), dim), np.nan, np.float32)
        for source in dict.fromkeys(sources.tolist()):
            at = np.flatnonzero(sources == source)
            out[at] = self._rows(self._file(source, path), rows[at], dim)
        out = scoring.l2_normalize(out)  # NaN or all-zero stored rows -> NaN
        counts["nan_embeddings"] += int(np.isnan(out).any(axis=1).sum())
        return out

    @staticmethod
    def _rows(npy: pathlib.Path, rows: np.ndarray, dim: int) -> np.ndarray:
        if not npy.is_file():
            raise CurationError(f"{npy}: embedding file not found (clip_score.embeddings)")
        try:
            array = np.load(npy, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise CurationError(f"{npy}: not a readable .npy file ({e})") from None
        if array.ndim != 2 or array.shape[1] != dim:
            raise CurationError(
                f"{npy}: embeddings of shape {array.shape}, expected [rows, {dim}] "
                "(the CLIP model's embedding size: is clip_score.model the one that made them?)"
            )
        if len(rows) and (rows.min() < 0 or rows.max() >= len(array)):
            raise CurationError(f"{npy}: row {rows.max()} requested but the file has {len(array)}")
        order = np.argsort(rows)  # mmap reads in file order
        out = np.empty((len(rows), dim), np.float32)
        out[order] = array[rows[order]]
        return out


# source name -> constructor(section, workdir) of table -> [rows, D] image embeddings.
SOURCES = {"images": _Images, "embeddings": _Embeddings}


# --- stage ----------------------------------------------------------------------------------


def embeddings_path(parquet: pathlib.Path) -> pathlib.Path:
    """`<shard>.embeddings.npy` beside a clip_score output `<shard>.parquet`: its rows' image
    embeddings."""
    return parquet.with_name(parquet.name.removesuffix(".parquet") + ".embeddings.npy")


def _save_npy_atomic(array: np.ndarray, path: pathlib.Path) -> None:
    with files.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


class _Scorer:
    """Scores one text_score shard; model and image index load on the first pending shard."""

    def __init__(
        self,
        section: ml_collections.ConfigDict,
        workdir: pathlib.Path,
        classes: dict[str, dict[str, str]],
        out_dir: pathlib.Path,
    ):
        self.section, self.workdir, self.classes, self.out_dir = section, workdir, classes, out_dir
        self.counts: Counter = Counter()
        self._clip: ClipModel | None = None

    def _load(self) -> None:
        self._source = SOURCES[self.section.source](self.section, self.workdir)
        self._clip = load_clip(self.section)
        from curation import encoders  # already imported by load_clip

        self._texts = encoders.EmbeddingCache(
            lambda texts: encoders.encode_texts(self._clip, texts, self.section.batch_size)
        )
        self._dim = self._texts(["a"]).shape[1]  # The model's embedding size.

    def __call__(self, shard: pathlib.Path) -> pa.Table:
        files.check_columns(shard, files.read_schema(shard), INPUT_COLUMNS)
        if self._clip is None:
            self._load()
        table = pq.read_table(shard)
        texts, index = scoring.class_texts(table, self.classes, self.section.class_text, shard)
        images = self._source(table, self._clip, self._dim, shard, self.counts)
        scores = scoring.similarity(images, self._texts(texts)[index], normalize=False)
        self.counts.update(rows=len(scores), nan_scores=int(np.isnan(scores).sum()))
        npy = embeddings_path(files.output_path(self.out_dir, shard))
        _save_npy_atomic(images.astype(np.float16), npy)
        return scoring.with_column(table, "clip_score", scores)


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    """Score every pending text_score shard (when enabled); returns (and writes) the summary."""
    section = config.clip_score
    if not section.enabled:
        logging.info("clip_score: disabled (clip_score.enabled=False); nothing to do")
        return {"enabled": False}
    if section.source not in SOURCES:
        raise CurationError(
            f"clip_score.source={section.source!r}; expected one of {', '.join(SOURCES)}"
        )
    scoring.check_template(section.class_text, "clip_score.class_text")
    shards = scoring.stage_inputs(workdir / "text_score", "text_score")
    out_dir = workdir / "clip_score"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = (workdir, scoring.read_classes(workdir), out_dir)
    engine_cfg = config.get("engine") or engine.defaults()
    processed, counts = scoring.score_shards(
        shards, out_dir, _Scorer, args, section, engine_cfg, desc="clip_score"
    )
    fields = {
        "enabled": True,
        "model": section.model,
        "pretrained": section.pretrained,
        "source": section.source,
        **{f"{k}_now": v for k, v in sorted(counts.items())},
    }
    return scoring.write_summary(
        "clip_score", out_dir, section.class_text, shards, processed, fields
    )


if __name__ == "__main__":
    cli.run_stage(run)
