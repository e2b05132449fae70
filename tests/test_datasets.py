"""The dataset registry: the study's datasets are registered once, and a new dataset is its TFDS
builder plus one registry entry: recipes, transfer and evaluation then take it by name."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import tensorflow_datasets as tfds

from imagenot_jax import defaults
from imagenot_jax.data import datasets
from imagenot_jax.evaluate import evaluation
from imagenot_jax.train import trainer
from tests.conftest import REPO

# End-to-end runs: see the fast_compile fixture.
pytestmark = pytest.mark.usefixtures("fast_compile")


STUDY_DATASETS = [
    "imagenot",
    "imagenet",
    "imagenet_v2/matched-frequency",
    "imagenet_v2/threshold-0.7",
    "imagenet_v2/top-images",
    "imagenet_real",
    "laionet",
    "cifar10",
    "fashion_mnist",
    "fashion_mnist/first5",
    "fashion_mnist/last5",
]


def load_config(path: str, arg: str | None = None):
    """A config file's get_config(arg), imported by path as config_flags does."""
    spec = importlib.util.spec_from_file_location("config_under_test", REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_the_study_datasets_are_registered_consistently():
    assert datasets.list_datasets() == STUDY_DATASETS
    assert datasets.list_datasets(trainable=True) == [
        "imagenot", "imagenet", "cifar10", "fashion_mnist", "fashion_mnist/first5",
        "fashion_mnist/last5",
    ]  # fmt: skip
    for name in STUDY_DATASETS:
        spec = datasets.get(name)
        assert spec.eval_split in spec.splits and len(spec.mean) == len(spec.std) == 3
        assert datasets.find_by_tfds_name(spec.tfds_name) is spec
        assert datasets.find_by_tfds_name(f"{spec.tfds_name}:1.0.0") is spec
    assert datasets.get("imagenet_real").real_feature == "real_label"
    assert datasets.get("imagenet_real").label_feature == "original_label"
    # The project's own builders are importable and register under the spec's TFDS name.
    for name in ("imagenot", "laionet", "fashion_mnist"):
        spec = datasets.get(name)
        datasets.import_builder(spec.tfds_name)
        assert tfds.builder_cls(spec.tfds_name.split("/")[0]) is not None
    assert datasets.find_by_tfds_name("mnist") is None


def test_unknown_names_are_one_line_errors():
    with pytest.raises(datasets.UnknownDatasetError, match="unknown dataset 'imagenot2'; regis"):
        datasets.get("imagenot2")
    with pytest.raises(ValueError, match=r"'dataset=imagenet_real': expected 'dataset=<imagenot\|"):
        load_config("configs/resnet50.py", "dataset=imagenet_real")  # evaluation-only
    with pytest.raises(ValueError, match="not one this project builds; ImageNet-1k needs"):
        datasets.prepare_dataset("imagenet2012", "/nonexistent")
    with pytest.raises(ValueError, match="already registered"):
        datasets.register(datasets.get("cifar10"))


# --- a throwaway dataset, added the documented way: a TFDS builder + one registry entry -----

CLASSES = ["n01440764", "n01443537", "n01484850"]  # WordNet ids, as ImageNot's labels are


class Throwaway(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Random 16 px images in three classes: 24 train, 70 holdout."""

    name = "throwaway_blobs"
    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "image": tfds.features.Image(shape=(16, 16, 3), encoding_format="png"),
            "label": tfds.features.ClassLabel(names=CLASSES),
            "key": tfds.features.Text(),
        }
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(24, 0), "holdout": self._generate_examples(70, 1)}

    def _generate_examples(self, n: int, seed: int):
        rng = np.random.default_rng(seed)
        for i in range(n):
            image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            yield f"{seed}-{i}", {"image": image, "label": i % 3, "key": f"blob-{seed}-{i}"}


@pytest.fixture
def throwaway(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "_REGISTRY", dict(datasets._REGISTRY))  # restored afterwards
    Throwaway(data_dir=str(tmp_path / "data")).download_and_prepare(file_format="array_record")
    spec = datasets.register(
        datasets.DatasetSpec(
            name="throwaway",
            tfds_name="throwaway_blobs",
            splits=("train", "holdout"),
            train_split="train",
            eval_split="holdout",
            mean=(127.5,) * 3,
            std=(73.9,) * 3,
            image_size=16,
            key_feature="key",
            wnid_labels=True,
        )
    )
    return spec, tmp_path / "data"


def test_a_registered_dataset_trains_with_a_recipe_and_evaluates(throwaway, tmp_path):
    spec, data_dir = throwaway
    assert datasets.get("throwaway") is spec and "throwaway" in datasets.list_datasets(
        trainable=True
    )
    config = load_config("configs/resnet50.py", "dataset=throwaway,smoke")
    assert (config.data.name, config.data.train_split) == ("throwaway_blobs", "train")
    assert config.data.eval_split == "holdout[:64]"
    assert tuple(config.input.mean) == datasets.IMAGENET_MEAN  # the recipes' normalisation
    config.data.data_dir = str(data_dir)
    config.model.num_classes = None  # from the dataset
    workdir = tmp_path / "run"
    trainer.train_and_evaluate(config, str(workdir))

    result, path = evaluation.evaluate_checkpoint(str(workdir))
    assert (result["dataset"], result["n"]) == ("throwaway_blobs", 64)  # the smoke slice
    assert path.name == "throwaway_blobs-holdout[:64]-2.json"
    keys = np.load(str(path).replace(".json", ".examples.npz"))["key"]
    assert len(set(keys)) == 64 and all(k.startswith("blob-1-") for k in keys)  # spec's key

    # Transfer takes it by name too, keeping the pretrained run's normalisation.
    transfer = load_config("configs/transfer.py", f"init={workdir},dataset=throwaway,smoke")
    assert transfer.data.name == "throwaway_blobs" and transfer.data.train_split == "train"
    assert tuple(transfer.input.mean) == datasets.IMAGENET_MEAN


def test_set_dataset_points_a_config_at_the_registry_entry():
    config = defaults.base_config()
    assert config.data.name == "imagenot/256" and config.data.eval_split == "validation"
    defaults.set_dataset(config, "cifar10")
    assert (config.data.name, config.data.train_split, config.data.eval_split) == (
        "cifar10",
        "train",
        "test",
    )
    assert tuple(config.input.mean) == datasets.get("cifar10").mean
