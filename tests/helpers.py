"""Helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import io
import itertools
import pathlib
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorflow_datasets as tfds
from flax import nnx
from PIL import Image

from configs import demo
from imagenot_jax.data import input_pipeline
from tests.conftest import REPO
from tfds_imagenot.fashion_mnist_local import Builder as FashionBuilder
from tfds_imagenot.fashion_mnist_local.testing import write_fake_fashion_mnist
from tfds_imagenot.imagenot import Builder as ImageNotBuilder
from tfds_imagenot.imagenot.testing import ClassRow, ManifestRow, write_manual_dir

# --- models, traced only ----------------------------------------------------------------------


def abstract_forward(model: nnx.Module, x: jax.ShapeDtypeStruct, *, train: bool = True):
    """(outputs, new state) of the model's train- (or eval-) mode forward on `x`, traced with
    jax.eval_shape: shapes and dtypes at any model size, nothing allocated."""
    graphdef, state = nnx.split(model)

    def forward(state, x):
        model = nnx.merge(graphdef, state)
        model.train() if train else model.eval()
        return model(x), nnx.state(model)

    return jax.eval_shape(forward, state, x)


# --- training runs on the tiny Fashion-MNIST (fixture fake_fashion_mnist) ---------------------

# Small enough to compile and run in seconds on 2 cores.
TINY = {
    "input.global_batch_size": 16,
    "input.eval_batch_size": 8,
    "input.num_workers": 0,
    "model.kwargs.widths": (4, 8, 8),
    "schedule.epochs": 2,
    "checkpoint.every_steps": 3,
    "logging.every_steps": 2,
}


def tiny_config(data_dir: pathlib.Path, **overrides):
    config = demo.get_config()
    config.data.data_dir = str(data_dir)
    for dotted, value in {**TINY, **overrides}.items():
        *parents, leaf = dotted.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


def cli_overrides(data_dir: pathlib.Path, **overrides) -> list[str]:
    values = {"data.data_dir": str(data_dir), **TINY, **overrides}
    return [f"--config.{k}={v}" for k, v in values.items()]


def run_main(workdir, data_dir, *extra, wait=True, **overrides):
    command = [
        sys.executable, "-m", "imagenot_jax.main", "--config", "configs/demo.py",
        f"--workdir={workdir}", *cli_overrides(data_dir, **overrides), *extra,
    ]  # fmt: skip
    kwargs = dict(cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return subprocess.Popen(command, **kwargs)
    return subprocess.run(command, timeout=600, check=False, **kwargs)


def saved_state(workdir: pathlib.Path, step: int) -> dict:
    return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")


def checkpoint_steps(workdir: pathlib.Path) -> list[int]:
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


# --- input pipeline datasets and checks (fixture pipeline_data_dir) --------------------------

# Sizes of the pipeline tests' datasets (pipeline_data_dir).
PIPELINE_TRAIN, PIPELINE_TEST = 60, 25
PHOTO_SIZES = [(400, 300), (300, 500), (256, 256), (640, 200), (180, 240), (333, 257)]


def build_dataset(
    builder_cls, config: str, data_dir: pathlib.Path, manual_dir: pathlib.Path
) -> None:
    builder = builder_cls(config=config, data_dir=str(data_dir))
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)),
    )


def photo_jpeg(width: int, height: int, seed: int) -> bytes:
    import skimage.data

    rng = np.random.default_rng(seed)
    photo = Image.fromarray(skimage.data.astronaut() if seed % 2 else skimage.data.coffee())
    left, top = int(rng.integers(0, 50)), int(rng.integers(0, 50))
    image = photo.crop((left, top, left + 300, top + 300)).resize((width, height))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def pipeline_config(data_dir, name="fashion_mnist_local/all", **input_overrides):
    config = input_pipeline.default_config()
    config.data.name = name
    config.data.data_dir = str(data_dir)
    config.data.eval_split = "test"
    config.input.update(
        dict(global_batch_size=10, eval_batch_size=8, image_size=24, eval_resize=28, eval_crop=24)
    )
    config.input.num_workers = 0  # in-process unless a test asks for workers (default: auto)
    config.input.update(input_overrides)
    return config


def take(dataset, n):
    return list(itertools.islice(iter(dataset), n))


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def build_pipeline_datasets(root: pathlib.Path) -> pathlib.Path:
    """fashion_mnist_local/all (60 train, 25 test) and imagenot/full (photos, 4 train, 2 test)."""
    fashion = root / "fashion_manual"
    write_fake_fashion_mnist(fashion, {"train": PIPELINE_TRAIN, "test": PIPELINE_TEST})
    build_dataset(FashionBuilder, "all", root, fashion)

    classes = [ClassRow(0, "n00000001", "a", "first"), ClassRow(1, "n00000002", "b", "second")]
    rows, images = [], {}
    for i, (w, h) in enumerate(PHOTO_SIZES):
        split = "train" if i < 4 else "test"
        rows.append(ManifestRow(f"k{i}", classes[i % 2].wnid, i % 2, split))
        images[f"k{i}"] = photo_jpeg(w, h, seed=i)
    build_dataset(
        ImageNotBuilder,
        "full",
        root,
        write_manual_dir(root / "imagenot_manual", classes, rows, images),
    )
    return root
