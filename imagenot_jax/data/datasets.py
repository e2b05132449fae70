"""The dataset registry: what the code knows about each dataset, in one `DatasetSpec` apiece.

Recipes (`dataset=<name>`), the transfer config, evaluation's label views, the demo and the suite
read it. Adding a dataset is its TFDS builder folder (`tfds_imagenot/<name>/`, or a TFDS catalog
name) plus one `register(DatasetSpec(...))` below; configs then accept `dataset=<name>`.

Datasets the project builds itself from files on this machine (no download) carry a `builder`:
the module whose import registers the TFDS builder; `prepare_dataset` builds them on first use.
The others the user prepares with TFDS (`preparation` says how); nothing here downloads.
"""

from __future__ import annotations

import dataclasses
import importlib
import time

from imagenot_jax.errors import MissingInputError, UserError

# torchvision's ImageNet normalisation, in the pipeline's 0..255 pixel units.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One dataset as this project uses it."""

    name: str  # the registry key: configs' `dataset=<name>`
    tfds_name: str  # TFDS name[/config]
    splits: tuple[str, ...]
    eval_split: str  # the split a run validates on
    train_split: str | None = None  # None: an evaluation-only dataset
    # Normalisation, per channel in 0..255 units (the pipeline normalises uint8 pixels).
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3  # stored channels (1: grayscale, replicated unless input.channels=1)
    image_size: int | None = None  # native side in px; None: varies per image
    label_feature: str = "label"  # the single-label ClassLabel feature
    key_feature: str | None = None  # a stable example id; None: `split:index`
    wnid_labels: bool = False  # label names are WordNet ids (so `--class_map=wnid` applies)
    real_feature: str | None = None  # ReaL multi-label set (Beyer et al. 2020)
    builder: str | None = None  # module registering the project's builder; None: user-prepared
    preparation: str = ""  # how the dataset gets into the TFDS data dir

    @property
    def trainable(self) -> bool:
        return self.train_split is not None


_REGISTRY: dict[str, DatasetSpec] = {}


class UnknownDatasetError(UserError):
    """A dataset name the registry does not know (a user error: one line)."""


def register(spec: DatasetSpec) -> DatasetSpec:
    """Adds `spec` under `spec.name`; a name is registered once."""
    if spec.name in _REGISTRY:
        raise ValueError(f"dataset {spec.name!r} is already registered")
    if spec.eval_split not in spec.splits or spec.train_split not in (None, *spec.splits):
        raise ValueError(f"dataset {spec.name!r}: train/eval splits must be among {spec.splits}")
    _REGISTRY[spec.name] = spec
    return spec


def list_datasets(*, trainable: bool | None = None) -> list[str]:
    """Registered names, in registration order; `trainable=True`: those with a train split."""
    return [n for n, s in _REGISTRY.items() if trainable is None or s.trainable == trainable]


def get(name: str) -> DatasetSpec:
    """The spec registered as `name`, else a one-line error listing the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; registered: {', '.join(_REGISTRY)}"
        ) from None


def find_by_tfds_name(tfds_name: str) -> DatasetSpec | None:
    """The spec of a TFDS name[/config][:version], or None for a dataset nobody registered
    (evaluation still opens those, finding their features by convention)."""
    base = tfds_name.split(":", 1)[0]
    return next((s for s in _REGISTRY.values() if s.tfds_name == base), None)


def preparation_hint(tfds_name: str) -> str:
    """How to get a missing dataset: its spec's instructions, else TFDS's generic command."""
    spec = find_by_tfds_name(tfds_name)
    if spec is not None and spec.preparation:
        return spec.preparation
    return "build it with `tfds build ... --file_format=array_record` (see README)"


def import_builder(tfds_name: str) -> None:
    """Registers the project's TFDS builder of `tfds_name` with TFDS (a no-op for others)."""
    spec = find_by_tfds_name(tfds_name)
    if spec is not None and spec.builder:
        importlib.import_module(spec.builder)


def prepare_dataset(tfds_name: str, data_dir: str, manual_dir: str | None = None) -> dict[str, int]:
    """Builds one of the project's TFDS datasets as ArrayRecord unless already built; returns the
    examples per split. Others are the user's to prepare: a one-line error says how."""
    import tensorflow_datasets as tfds

    spec = find_by_tfds_name(tfds_name)
    if spec is None or spec.builder is None:
        raise UserError(
            f"dataset {tfds_name!r} is not one this project builds; {preparation_hint(tfds_name)}"
        )
    import_builder(tfds_name)
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    start = time.perf_counter()
    try:
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
        )
    except FileNotFoundError as e:  # the builder's one-line message names the missing sources
        raise MissingInputError(str(e)) from e
    sizes = {split: info.num_examples for split, info in builder.info.splits.items()}
    print(
        f"dataset {tfds_name}: {sizes} in {builder.data_dir} ({time.perf_counter() - start:.1f} s)"
    )
    return sizes


# ---------------------------------------------------------------------------------------------
# The registered datasets.
# ---------------------------------------------------------------------------------------------

_IMAGENET_MANUAL = (
    "ImageNet-1k needs the user's own copy: put ILSVRC2012_img_{train,val}.tar in TFDS's manual "
    "dir and run `tfds build imagenet2012 --file_format=array_record`"
)
_FASHION = dict(
    splits=("train", "test"),
    train_split="train",
    eval_split="test",
    mean=(72.94,) * 3,  # over the training images
    std=(90.02,) * 3,
    channels=1,
    image_size=28,
    key_feature="key",
    builder="tfds_imagenot.fashion_mnist_local",
    preparation="built on first use from Debian's dataset-fashion-mnist (`make demo` does it)",
)

register(
    DatasetSpec(
        name="imagenot",
        tfds_name="imagenot/256",
        splits=("train", "validation", "test"),
        train_split="train",
        eval_split="validation",
        # The study's recipes normalise with ImageNet's statistics on either dataset.
        key_feature="key",
        wnid_labels=True,
        builder="tfds_imagenot.imagenot",
        preparation=(
            "curate it (`python -m curation.run --config curation/configs/imagenot.py "
            "--workdir W`), then `tfds build tfds_imagenot/imagenot --manual_dir=W "
            "--file_format=array_record` (README: Curating ImageNot)"
        ),
    )
)
register(
    DatasetSpec(
        name="imagenet",
        tfds_name="imagenet2012",
        splits=("train", "validation"),
        train_split="train",
        eval_split="validation",
        key_feature="file_name",
        wnid_labels=True,
        preparation=_IMAGENET_MANUAL,
    )
)
for _variant in ("matched-frequency", "threshold-0.7", "top-images"):
    register(
        DatasetSpec(
            name=f"imagenet_v2/{_variant}",
            tfds_name=f"imagenet_v2/{_variant}",
            splits=("test",),
            eval_split="test",
            key_feature="file_name",
            wnid_labels=True,
            preparation=f"`tfds build imagenet_v2/{_variant} --file_format=array_record`",
        )
    )
register(
    DatasetSpec(
        name="imagenet_real",
        tfds_name="imagenet2012_real",
        splits=("validation",),
        eval_split="validation",
        label_feature="original_label",
        key_feature="file_name",
        wnid_labels=True,
        real_feature="real_label",
        preparation=_IMAGENET_MANUAL.replace("imagenet2012 ", "imagenet2012_real "),
    )
)
register(
    DatasetSpec(
        name="laionet",
        tfds_name="laionet/256",
        splits=("test",),
        eval_split="test",
        key_feature="key",
        wnid_labels=True,
        builder="tfds_imagenot.laionet",
        preparation=(
            "curate it (`python -m curation.run --config curation/configs/laionet.py "
            "--workdir W`), then `tfds build tfds_imagenot/laionet --manual_dir=W "
            "--file_format=array_record`"
        ),
    )
)
register(
    DatasetSpec(
        name="cifar10",
        tfds_name="cifar10",
        splits=("train", "test"),
        train_split="train",
        eval_split="test",
        mean=(125.31, 122.95, 113.87),  # over the training images
        std=(62.99, 62.09, 66.70),
        image_size=32,  # (its `id` feature is not used as key: eval keys stay split:index)
        preparation="`tfds build cifar10 --file_format=array_record`",
    )
)
register(DatasetSpec(name="fashion_mnist", tfds_name="fashion_mnist_local/all", **_FASHION))
register(
    DatasetSpec(name="fashion_mnist/first5", tfds_name="fashion_mnist_local/first5", **_FASHION)
)
register(DatasetSpec(name="fashion_mnist/last5", tfds_name="fashion_mnist_local/last5", **_FASHION))
