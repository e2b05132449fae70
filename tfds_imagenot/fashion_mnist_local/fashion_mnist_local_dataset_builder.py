"""Fashion-MNIST from local files, with two disjoint-class halves.

The embedded default dataset of the project: real images that need no network (Debian's
`dataset-fashion-mnist` ships the four original IDX files in /usr/share/datasets/fashion-mnist).
The `first5`/`last5` configs split the ten classes into two disjoint-class datasets drawn from one
source: the ImageNet/ImageNot pair of the paper in miniature.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import pathlib
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

DEBIAN_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049
_ALL_FILES = tuple(name for pair in SPLIT_FILES.values() for name in pair)


@dataclasses.dataclass
class FashionMnistConfig(tfds.core.BuilderConfig):
    """A config selects a subset of the original labels; they are renumbered 0..k-1 in order."""

    labels: tuple[int, ...] = tuple(range(10))


class Builder(tfds.core.GeneratorBasedBuilder):
    """Fashion-MNIST (28x28 grayscale PNG) read from the original IDX files on local disk."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        FashionMnistConfig(name="all", description="All 10 classes.", labels=tuple(range(10))),
        FashionMnistConfig(name="first5", description="Labels 0-4 only.", labels=(0, 1, 2, 3, 4)),
        FashionMnistConfig(name="last5", description="Labels 5-9 only.", labels=(5, 6, 7, 8, 9)),
    ]
    DEFAULT_CONFIG_NAME = "all"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Nothing to download: install Debian's package (`apt-get install dataset-fashion-mnist`, files
    in {DEBIAN_DIR}) or pass --manual_dir=DIR with the four original files: {", ".join(_ALL_FILES)}.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        names = [CLASS_NAMES[i] for i in self.builder_config.labels]
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(28, 28, 1), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=names),
                    # Index in the original split file: the same image has the same key in every
                    # config, so results can be joined across the halves.
                    "key": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        source = find_source_dir(_manual_dir_or_none(dl_manager))
        return {
            split: self._generate_examples(source / images, source / labels, split)
            for split, (images, labels) in SPLIT_FILES.items()
        }

    def _generate_examples(
        self, images_path: pathlib.Path, labels_path: pathlib.Path, split: str
    ) -> Iterator[tuple[str, dict]]:
        images = read_idx(images_path, _IMAGES_MAGIC)
        labels = read_idx(labels_path, _LABELS_MAGIC)
        if len(images) != len(labels):
            raise ValueError(
                f"{images_path}: {len(images)} images but {labels_path} has {len(labels)} labels"
            )
        new_label = {old: new for new, old in enumerate(self.builder_config.labels)}
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            if int(label) not in new_label:
                continue
            key = f"{split}_{index:05d}"
            yield key, {"image": _encode_png(image), "label": new_label[int(label)], "key": key}


def _manual_dir_or_none(dl_manager: tfds.download.DownloadManager) -> pathlib.Path | None:
    try:
        return pathlib.Path(dl_manager.manual_dir)
    except AssertionError:  # TFDS raises it when the manual dir is absent or empty.
        return None


def find_source_dir(manual_dir: pathlib.Path | None) -> pathlib.Path:
    """The first of `manual_dir` and the Debian directory that holds all four files."""
    candidates = [d for d in (manual_dir, DEBIAN_DIR) if d is not None]
    for directory in candidates:
        if all((directory / name).is_file() for name in _ALL_FILES):
            return directory
    looked = " and ".join(str(d) for d in candidates)
    raise FileNotFoundError(
        f"Fashion-MNIST files {', '.join(_ALL_FILES)} not found in {looked}: "
        "install them with `apt-get install dataset-fashion-mnist` "
        "or pass --manual_dir=DIR holding the four .gz files"
    )


def read_idx(path: pathlib.Path, magic: int) -> np.ndarray:
    """Reads a gzipped IDX file (the MNIST format: big-endian header, then uint8 data)."""
    data = gzip.decompress(path.read_bytes())
    ndim = magic & 0xFF
    header = np.frombuffer(data, dtype=">u4", count=1 + ndim)
    if int(header[0]) != magic:
        raise ValueError(f"{path}: magic number {int(header[0])}, expected {magic} (IDX file)")
    shape = tuple(int(n) for n in header[1:])
    offset = 4 * (1 + ndim)
    if len(data) - offset != int(np.prod(shape)):
        raise ValueError(f"{path}: {len(data) - offset} data bytes, expected shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _encode_png(image: np.ndarray) -> bytes:
    # PIL's encoder is several times faster than TensorFlow's eager one for 70k tiny images.
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()
