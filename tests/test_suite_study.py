"""The ImageNot study's suite config: the nine paper models with their recipes on ImageNet and
ImageNot, the published-table variant and the CIFAR-10 transfer stage (no training; the models'
abstract builds are in tests/test_suite.py)."""

from __future__ import annotations

import importlib

import pytest
from etils import epath

from configs.suites import imagenot_study
from imagenot_jax.errors import UserError
from imagenot_jax.rank import ranking, reference
from imagenot_jax.suite import plan


def test_study_runs_are_the_recipes_on_both_datasets(tmp_path):
    suite = imagenot_study.get_config()
    assert list(suite.runs) == sorted(reference.PAPER_MODELS) and len(suite.runs) == 9
    assert (suite.a.data, suite.b.data, suite.base) == ("imagenet", "imagenot", "alexnet")
    assert (suite.transfer.data, suite.transfer.of) == ("cifar10", "b")
    runs = plan.plan_runs(suite, epath.Path(tmp_path), "/data")
    assert len(runs) == 27
    for run in runs:
        if run.stage == "transfer":
            assert run.needs.id == f"b/{run.name}"
            continue
        recipe = importlib.import_module(f"configs.{run.name}").get_config("dataset=imagenot")
        config = run.config()
        expected = {"a": "imagenet2012", "b": "imagenot/256"}[run.stage]
        assert config.data.name == expected and config.data.data_dir == "/data"
        config.data.name, config.data.data_dir = recipe.data.name, recipe.data.get("data_dir")
        assert config.to_dict() == recipe.to_dict(), run.id  # the whole recipe, unchanged
        assert not config.mesh.distributed


def test_published_variant_trains_nothing_on_imagenet(tmp_path):
    suite = imagenot_study.get_config("published,notransfer")
    assert suite.a.table == "torchvision-imagenet1k" and "transfer" not in suite
    runs = plan.plan_runs(suite, epath.Path(tmp_path), None)
    assert [r.id for r in runs] == [f"b/{m}" for m in sorted(reference.PAPER_MODELS)]
    table = ranking.load_result_set(suite.a.table)
    assert set(reference.PAPER_MODELS) <= set(table.models)  # all nine get compared


def test_distributed_marks_every_run(tmp_path):
    suite = imagenot_study.get_config("published")
    suite.distributed = True
    runs = plan.plan_runs(suite, epath.Path(tmp_path), None)
    assert all(r.config().mesh.distributed for r in runs if r.stage == "b")


def test_bad_argument_is_a_one_line_error():
    with pytest.raises(UserError, match="argument 'smoke': expected any of published"):
        imagenot_study.get_config("published,smoke")
