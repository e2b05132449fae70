"""Write small ImageNot manual dirs (manifest + classes + img2dataset-style tars) for tests.

Used by the tests, by benchmarks and to regenerate the committed `dummy_data/`:

    python -m tfds_imagenot.imagenot.testing   # rewrites tfds_imagenot/imagenot/dummy_data
"""

from __future__ import annotations

import dataclasses
import io
import json
import pathlib
import shutil
import tarfile
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

DUMMY_DATA = pathlib.Path(__file__).parent / "dummy_data"


@dataclasses.dataclass(frozen=True)
class ClassRow:
    label: int
    wnid: str
    name: str
    gloss: str


@dataclasses.dataclass(frozen=True)
class ManifestRow:
    key: str
    wnid: str
    label: int
    split: str
    url: str = ""
    caption: str = ""
    text_score: float = 0.0
    clip_score: float = 0.0
    rank: int | None = None  # in its class; written only when some row has one


def write_manual_dir(
    root: pathlib.Path,
    classes: Sequence[ClassRow],
    rows: Sequence[ManifestRow],
    images: Mapping[str, bytes],
    *,
    images_per_shard: int = 1000,
    image_ext: str = "jpg",
) -> pathlib.Path:
    """Write classes.tsv, manifest.parquet and images/NNNNN.tar; rows without bytes get no image."""
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _write_classes(root / "classes.tsv", classes)
    _write_manifest(root / "manifest.parquet", rows)
    with_image = [row for row in rows if row.key in images]
    (root / "images").mkdir(exist_ok=True)
    for shard, start in enumerate(range(0, len(with_image), max(1, images_per_shard))):
        chunk = with_image[start : start + images_per_shard]
        _write_shard(root / "images" / f"{shard:05d}.tar", chunk, images, image_ext)
    return root


def _write_classes(path: pathlib.Path, classes: Sequence[ClassRow]) -> None:
    lines = ["label\twnid\tname\tgloss"]
    lines += [f"{c.label}\t{c.wnid}\t{c.name}\t{c.gloss}" for c in classes]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_manifest(path: pathlib.Path, rows: Sequence[ManifestRow]) -> None:
    columns = {
        "key": pa.array([r.key for r in rows], pa.string()),
        "wnid": pa.array([r.wnid for r in rows], pa.string()),
        "label": pa.array([r.label for r in rows], pa.int64()),
        "split": pa.array([r.split for r in rows], pa.string()),
        "url": pa.array([r.url for r in rows], pa.string()),
        "caption": pa.array([r.caption for r in rows], pa.string()),
        "text_score": pa.array([r.text_score for r in rows], pa.float64()),
        "clip_score": pa.array([r.clip_score for r in rows], pa.float64()),
    }
    if any(r.rank is not None for r in rows):
        columns["rank"] = pa.array([r.rank for r in rows], pa.int64())
    pq.write_table(pa.table(columns), path)


def _write_shard(
    path: pathlib.Path, rows: Sequence[ManifestRow], images: Mapping[str, bytes], ext: str
) -> None:
    """img2dataset layout: {key}.{ext}, .json, .txt per row; a fixed mtime keeps it reproducible."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for row in rows:
            meta = {"key": row.key, "url": row.url, "caption": row.caption, "status": "success"}
            _add(tar, f"{row.key}.{ext}", images[row.key])
            _add(tar, f"{row.key}.json", json.dumps(meta).encode())
            _add(tar, f"{row.key}.txt", row.caption.encode())
    stats = {"count": len(rows), "successes": len(rows), "failed_to_download": 0}
    path.with_name(f"{path.stem}_stats.json").write_text(json.dumps(stats))


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def jpeg_bytes(
    width: int, height: int, *, seed: int = 0, mode: str = "RGB", fmt: str = "JPEG", **save: object
) -> bytes:
    """A smooth synthetic image (compresses small) in `mode`, encoded as `fmt`."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(0, 255, size=3)
    rgb = np.stack([(x * (c + 1) + y * (2 - c) + base[c]) % 256 for c in range(3)], axis=-1)
    image = Image.fromarray(rgb.astype(np.uint8), "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


DUMMY_CLASSES = (
    ClassRow(0, "n00000001", "alpha", "the first dummy class"),
    ClassRow(1, "n00000002", "beta", "the second dummy class"),
    ClassRow(2, "n00000003", "gamma", "the third dummy class"),
)
# Kept per split (the builder test asserts these): train 4 of 6, validation 2, test 2.
DUMMY_SPLITS = {"train": 4, "validation": 2, "test": 2}


def make_dummy_data(root: pathlib.Path = DUMMY_DATA) -> pathlib.Path:
    """Rewrite dummy_data/: a few small images per split plus one missing and one corrupt image."""
    rows, images = [], {}
    layout = {"train": 6, "validation": 2, "test": 2}
    for split, count in layout.items():
        for i in range(count):
            c = DUMMY_CLASSES[i % len(DUMMY_CLASSES)]
            key = f"{split[:2]}{i:04d}"
            rows.append(
                ManifestRow(
                    key,
                    c.wnid,
                    c.label,
                    split,
                    f"https://example.com/{key}.jpg",
                    f"a photo of {c.name} {i}",
                    0.5 + i / 100,
                    0.3 + i / 100,
                )
            )
            images[key] = jpeg_bytes(48 + 8 * i, 40, seed=len(images))
    images["tr0000"] = jpeg_bytes(320, 200, seed=99)  # resized by the 256 config
    images["tr0001"] = jpeg_bytes(40, 40, mode="RGBA", fmt="PNG", seed=98)  # re-encoded
    images["tr0004"] = b"not an image at all"  # undecodable
    del images["tr0005"]  # missing
    if root.exists():
        shutil.rmtree(root)
    return write_manual_dir(root, DUMMY_CLASSES, rows, images, images_per_shard=5)


if __name__ == "__main__":
    print(f"wrote {make_dummy_data()}")
