"""The suite runner: every run on both datasets, evaluated, ranked; resumable; the real suite
config is well-formed (its models build at their sizes)."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import pytest
from flax import nnx

from configs import demo
from imagenot_jax import suite
from imagenot_jax.data import datasets
from imagenot_jax.data.datasets import prepare_dataset
from imagenot_jax.train import trainer
from tests.conftest import REPO
from tfds_imagenot.fashion_mnist_local.testing import write_fake_fashion_mnist

# End-to-end runs: see the fast_compile fixture.
pytestmark = pytest.mark.usefixtures("fast_compile")


def _load_suite_config(path: str) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("suite_config", REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture(scope="module")
def halves_data_dir(tmp_path_factory):
    """fashion_mnist_local/first5 and /last5 from fake images (the suite builds nothing more)."""
    root = tmp_path_factory.mktemp("halves")
    write_fake_fashion_mnist(root / "manual", {"train": 96, "test": 24})
    for name in ("fashion_mnist_local/first5", "fashion_mnist_local/last5"):
        prepare_dataset(name, str(root), str(root / "manual"))
    return root


def _size(dataset: str, split: str, data_dir) -> int:
    """Examples in a split of the registered dataset `dataset`."""
    import tensorflow_datasets as tfds

    name = datasets.get(dataset).tfds_name
    return tfds.builder(name, data_dir=str(data_dir)).info.splits[split].num_examples


def _tiny_suite() -> ml_collections.ConfigDict:
    """Three resnet_mini widths under three run names: ranks that can differ, cheaply."""
    config = ml_collections.ConfigDict()
    config.a = ml_collections.ConfigDict({"label": "first5", "data": "fashion_mnist/first5"})
    config.b = ml_collections.ConfigDict({"label": "last5", "data": "fashion_mnist/last5"})
    config.base = "narrow"
    config.bootstrap = 50
    config.runs = ml_collections.ConfigDict()
    for name, widths in {"narrow": (2, 2, 2), "mid": (4, 4, 8), "wide": (8, 8, 16)}.items():
        run = demo.get_config()
        run.data.name = None
        run.model.kwargs.widths = widths
        run.input.global_batch_size = 16
        run.input.eval_batch_size = 8
        run.input.num_workers = 0
        run.schedule.epochs = 1
        run.schedule.warmup_epochs = 0
        config.runs[name] = run
    return config


def test_suite_trains_evaluates_ranks_and_resumes(tmp_path, halves_data_dir, capsys):
    config = _tiny_suite()
    summary = suite.run_suite(config, str(tmp_path), str(halves_data_dir))
    out = capsys.readouterr().out
    assert "6 runs trained, 0 already done" in out
    for side in ("a", "b"):
        n_test = _size(config[side].data, "test", halves_data_dir)
        for name in ("narrow", "mid", "wide"):
            done = json.loads(
                (tmp_path / config[side].label / name / "suite_done.json").read_text()
            )
            assert json.loads(pathlib.Path(done["eval"]).read_text())["n"] == n_test
    report = tmp_path / "report"
    assert (report / "ranking.json").exists() and (report / "report.html").exists()
    assert summary == json.loads((report / "ranking.json").read_text())  # returned = written
    assert sorted(m["name"] for m in summary["models"]) == ["mid", "narrow", "wide"]
    assert summary["base"] == "narrow" and summary["labels"] == {"a": "first5", "b": "last5"}
    for m in summary["models"]:
        assert m["a"]["n"] == _size(config.a.data, "test", halves_data_dir)
    tau = summary["kendall_tau_b"]["value"]  # None where undefined (tied accuracies)
    assert tau is None or -1.0 <= tau <= 1.0
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/*/checkpoints/*")}
    suite.run_suite(config, str(tmp_path), str(halves_data_dir))  # resumable: trains nothing
    assert "0 runs trained, 6 already done" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/*/checkpoints/*")} == stamps


def test_interrupted_run_resumes_instead_of_restarting(tmp_path, halves_data_dir):
    config = _tiny_suite()
    run = suite.run_configs(config, "a", str(halves_data_dir))["narrow"]
    run.schedule.num_steps = 1
    trainer.train_and_evaluate(run, str(tmp_path / "w"))  # a run cut short: no suite_done.json
    run.schedule.num_steps = None
    path, ran = suite.run_one(run, tmp_path / "w")
    steps = _size(config.a.data, "train", halves_data_dir) // 16
    assert steps > 1
    assert ran and json.loads(path.read_text())["step"] == steps


@pytest.mark.parametrize(
    "path", ["configs/suites/fashion_halves.py", "configs/suites/imagenot_study.py"]
)
def test_suite_config_models_build_at_their_sizes(path):
    config = _load_suite_config(path)
    assert len(config.runs) >= 5
    assert config.base in config.runs
    for name, run in config.runs.items():
        run.data.name = datasets.get(config.a.data).tfds_name
        model = nnx.eval_shape(lambda run=run: trainer.build_model(run, 5))
        graphdef, state = nnx.split(model)
        size = run.input.image_size
        x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)

        def forward(state, x, graphdef=graphdef):
            model = nnx.merge(graphdef, state)
            model.train()
            return model(x).logits

        assert jax.eval_shape(forward, state, x).shape == (2, 5), name
