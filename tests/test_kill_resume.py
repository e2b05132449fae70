"""SIGKILL anywhere, then rerun: the suite and a transfer run end with exactly the outputs of an
uninterrupted run (eval JSONs, ranking.json, final parameters, eval metrics).

The kills are real SIGKILLs landed at chosen moments by tests/kill_worker.py (mid-training on
a step's log line; between the end of training and the eval JSON; between the eval JSON and the
run's done record; between the ranking's reports and its ranking.json). Each suite test starts
from a copy of one uninterrupted reference suite with one run (or the report) removed, so only
that run is trained again. The killed process's claims are left fresh; the reruns take them
over with --claim_timeout=1.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from imagenot_jax.train import trainer
from tests.conftest import REPO
from tests.helpers import checkpoint_steps, saved_state, tiny_config
from tests.test_suite import halves_data_dir  # noqa: F401  (a fixture)

pytestmark = pytest.mark.usefixtures("fast_compile")

KILLED = -signal.SIGKILL
# The tiny suite of test_suite.py, 2 epochs of 3 steps per run, a log line per step; the
# trainer checkpoints at each epoch's end (steps 3 and 6).
_CONFIG = """
from tests.test_suite import _tiny_suite


def get_config():
    suite = _tiny_suite()
    for run in suite.runs.values():
        run.schedule.epochs = 2
        run.logging.every_steps = 1
    return suite
"""
TRAINING_LINE = re.compile(r"training resnet_mini: \d+ steps")
EVAL_LINE = re.compile(r"resnet_mini step \d+ on \S+ test \(n=\d+\): top-1")


def _python(module: str, kill: str | None) -> list[str]:
    if kill is None:
        return [sys.executable, "-m", module]
    return [sys.executable, str(REPO / "tests" / "kill_worker.py"), module]


def _run(command: list[str], kill: str | None) -> subprocess.CompletedProcess:
    # Every process compiles alike (the module-scoped reference is made before the
    # function-scoped fast_compile fixture sets this): results are compared bit for bit.
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    if kill is not None:
        env["KILL_WORKER"] = kill
    result = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    expected = 0 if kill is None else KILLED
    assert result.returncode == expected, (result.returncode, result.stderr[-3000:])
    return result


def _suite(workdir: pathlib.Path, data_dir, *extra: str, kill: str | None = None) -> str:
    """The suite CLI on `workdir` (killed as `kill` says); its stdout and stderr."""
    config = workdir.parent / "kill_suite.py"
    config.write_text(_CONFIG)
    command = [
        *_python("imagenot_jax.suite", kill), f"--suite={config}", f"--workdir={workdir}",
        f"--data_dir={data_dir}", "--compilation_cache=", *extra,
    ]  # fmt: skip
    result = _run(command, kill)
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def reference(tmp_path_factory, halves_data_dir) -> pathlib.Path:  # noqa: F811
    """The suite run once, uninterrupted."""
    root = tmp_path_factory.mktemp("reference") / "suite"
    out = _suite(root, halves_data_dir)
    assert "6 runs trained, 0 already done" in out
    return root


def _copy_without(reference: pathlib.Path, tmp_path: pathlib.Path, *removed: str) -> pathlib.Path:
    """The reference suite with its report and the `removed` run directories deleted."""
    root = tmp_path / "suite"
    shutil.copytree(reference, root)
    for name in ("report", *removed):
        shutil.rmtree(root / name)
    return root


def _eval_files(run_dir: pathlib.Path) -> list[pathlib.Path]:
    return sorted((run_dir / "eval").glob("*.json"))


def _assert_same_results(root: pathlib.Path, reference: pathlib.Path, rerun: str = "") -> None:
    """Every run's eval JSON and examples, and ranking.json, as in the reference; `rerun` (a
    run directory, e.g. "first5/narrow") was evaluated in `root`, the others are copies."""
    for done in sorted(reference.glob("*/*/suite_done.json")):
        run = done.parent.relative_to(reference).as_posix()
        [want] = _eval_files(reference / run)
        [got] = _eval_files(root / run)
        a, b = json.loads(got.read_text()), json.loads(want.read_text())
        if run == rerun:
            assert json.loads((root / run / "suite_done.json").read_text())["eval"] == str(got)
            assert a["workdir"] == str(root / run)
        assert {**a, "workdir": None} == {**b, "workdir": None}, run
        with (
            np.load(got.with_suffix(".examples.npz")) as x,
            np.load(want.with_suffix(".examples.npz")) as y,
        ):
            assert sorted(x) == sorted(y)
            for name in x:
                np.testing.assert_array_equal(x[name], y[name], err_msg=f"{run}: {name}")
    # The copies' eval paths are the reference's own (suite_done.json holds absolute paths).
    ranking = (root / "report" / "ranking.json").read_text()
    expected = (reference / "report" / "ranking.json").read_text()
    assert ranking.replace(str(root), str(reference)) == expected


def _assert_same_parameters(workdir: pathlib.Path, reference: pathlib.Path, step: int) -> None:
    a, b = saved_state(workdir, step), saved_state(reference, step)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def _stamps(run_dir: pathlib.Path) -> dict[pathlib.Path, int]:
    return {p: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").rglob("*") if p.is_file()}


# --- the suite -------------------------------------------------------------------------------


def test_sigkill_mid_training_resumes_to_the_uninterrupted_results(
    tmp_path,
    halves_data_dir,  # noqa: F811
    reference,
):
    root = _copy_without(reference, tmp_path, "first5/narrow")
    run = root / "first5" / "narrow"
    _suite(root, halves_data_dir, kill=r"line:\bstep 4/6 epoch")
    assert not (run / "suite_done.json").exists() and not _eval_files(run)
    saved = checkpoint_steps(run)
    assert saved in ([], [3])  # step 3's (asynchronous) save may not have finished
    out = _suite(root, halves_data_dir, "--claim_timeout=1")
    assert "1 runs trained, 5 already done" in out
    assert ("resuming from step 3" in out) == bool(saved)
    _assert_same_parameters(run, reference / "first5" / "narrow", 6)
    _assert_same_results(root, reference, rerun="first5/narrow")


@pytest.mark.parametrize("when", ["before", "after"])
def test_sigkill_around_the_evaluation_resumes_into_one_evaluation_without_retraining(
    when,
    tmp_path,
    halves_data_dir,  # noqa: F811
    reference,
):
    """`before`: training done, nothing evaluated; `after`: the eval JSON written, the run not
    yet marked done. Either way the rerun evaluates once more and trains nothing."""
    root = _copy_without(reference, tmp_path, "first5/narrow")
    run = root / "first5" / "narrow"
    out = _suite(
        root, halves_data_dir, kill=f"{when}:imagenot_jax.evaluate.evaluation:evaluate_checkpoint"
    )
    assert len(TRAINING_LINE.findall(out)) == 1
    assert checkpoint_steps(run)[-1] == 6 and not (run / "suite_done.json").exists()
    assert len(_eval_files(run)) == (when == "after")
    stamps = _stamps(run)
    out = _suite(root, halves_data_dir, "--claim_timeout=1")
    assert "is already trained to step 6" in out and not TRAINING_LINE.search(out)
    assert len(EVAL_LINE.findall(out)) == 1  # one evaluation, of this run only
    assert _stamps(run) == stamps  # no checkpoint rewritten
    assert len(_eval_files(run)) == 1
    _assert_same_results(root, reference, rerun="first5/narrow")


def test_sigkill_while_ranking_resumes_to_the_same_ranking(
    tmp_path,
    halves_data_dir,  # noqa: F811
    reference,
):
    root = _copy_without(reference, tmp_path)
    # The reports and figures are written, ranking.json is not, the report's claim is held.
    _suite(root, halves_data_dir, kill="after:imagenot_jax.rank.report:write_report")
    assert (root / "report" / "report.html").exists()
    assert not (root / "report" / "ranking.json").exists()
    out = _suite(root, halves_data_dir, "--claim_timeout=1")
    assert "0 runs trained, 6 already done" in out and not TRAINING_LINE.search(out)
    _assert_same_results(root, reference)


# --- transfer --------------------------------------------------------------------------------

TRANSFER_STEPS = 12


def _transfer(workdir, data_dir, pretrained, kill: str | None = None) -> str:
    """configs/transfer.py (smoke) fine-tuning `pretrained` on the 10-class fake Fashion-MNIST."""
    overrides = {
        "schedule.num_steps": TRANSFER_STEPS,
        "checkpoint.every_steps": 4,
        "logging.every_steps": 1,
        "input.num_workers": 0,
        "data.eval_split": "test",  # smoke's test[:64]: more than the 21 fake images
    }
    command = [
        *_python("imagenot_jax.main", kill),
        "--config", f"configs/transfer.py:init={pretrained},dataset=fashion_mnist,smoke",
        f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
        *(f"--config.{k}={v}" for k, v in overrides.items()), "--compilation_cache=",
    ]  # fmt: skip
    result = _run(command, kill)
    return result.stdout + result.stderr


def _val_metrics(workdir: pathlib.Path) -> dict:
    """The last evaluation's metrics in metrics.jsonl (at the final step)."""
    lines = map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
    *_, last = (r for r in lines if "val_top1" in r)
    return {k: v for k, v in last.items() if k == "step" or k.startswith("val_")}


def test_sigkill_mid_fine_tuning_resumes_to_the_uninterrupted_parameters(
    tmp_path, fake_fashion_mnist
):
    pretrained = tmp_path / "pretrained"
    trainer.train_and_evaluate(
        tiny_config(fake_fashion_mnist, **{"schedule.num_steps": 3}), str(pretrained)
    )
    straight = tmp_path / "straight"
    _transfer(straight, fake_fashion_mnist, pretrained)
    interrupted = tmp_path / "interrupted"
    _transfer(interrupted, fake_fashion_mnist, pretrained, kill=r"line:\bstep 7/12\b")
    saved = checkpoint_steps(interrupted)
    assert saved in ([], [4])  # step 4's (asynchronous) save may not have finished
    out = _transfer(interrupted, fake_fashion_mnist, pretrained)
    assert ("resuming from step 4" in out) == bool(saved)
    _assert_same_parameters(interrupted, straight, TRANSFER_STEPS)
    assert _val_metrics(interrupted) == _val_metrics(straight)
    assert _val_metrics(straight)["step"] == TRANSFER_STEPS
