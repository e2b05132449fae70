"""The suite on many machines, at test size: two processes sharing one suite directory train each
run once and write the same report as one process; --only/--side/--list/--rank_only; the
transfer stage."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import pytest
from etils import epath

from imagenot_jax.errors import UserError
from imagenot_jax.suite import claims, plan, runner
from tests.conftest import REPO
from tests.test_suite import _tiny_suite, halves_data_dir  # noqa: F401  (a fixture)

pytestmark = pytest.mark.usefixtures("fast_compile")

_CONFIG = """
from tests.test_suite import _tiny_suite


def get_config():
    return _tiny_suite()
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory, halves_data_dir):  # noqa: F811
    """The tiny suite run by one process (in this one), as fast_compile runs it."""
    root = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
        previous = jax.config.read("jax_disable_most_optimizations")
        jax.config.update("jax_disable_most_optimizations", True)
        try:
            runner.run_suite(_tiny_suite(), str(root), str(halves_data_dir))
        finally:
            jax.config.update("jax_disable_most_optimizations", previous)
    return root


def _command(config: str, workdir, data_dir, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "imagenot_jax.suite", f"--suite={config}", f"--workdir={workdir}",
        f"--data_dir={data_dir}", "--compilation_cache=", *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _comparable(summary: dict) -> dict:
    """What two runs of the same suite must agree on (sources and file paths differ)."""
    models = {
        m["name"]: {s: (m[s]["accuracy"], m[s]["rank"], m[s]["n"]) for s in ("a", "b")}
        for m in summary["models"]
    }
    keys = ("kendall_tau_b", "spearman_rho", "relative_improvement", "base", "labels")
    return {"models": models, **{k: summary[k] for k in keys}}


def test_two_processes_train_each_run_once_and_report_the_same(
    tmp_path,
    halves_data_dir,  # noqa: F811
    reference,
):
    config = tmp_path / "tiny_suite.py"
    config.write_text(_CONFIG)
    workdir = tmp_path / "shared"
    command = _command(str(config), workdir, halves_data_dir)
    procs = [
        subprocess.Popen(
            command,
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    started = [re.findall(r"^suite: ([ab]/\w+) \(", out, re.M) for out in outs]
    ids = [r.id for r in plan.plan_runs(_tiny_suite(), epath.Path(workdir), None)]
    assert sorted(started[0] + started[1]) == sorted(ids), started  # each run once, in all
    for run_id in ids:
        directory = epath.Path(workdir) / {"a": "first5", "b": "last5"}[run_id[0]] / run_id[2:]
        assert claims.generations(directory) == [0]  # claimed once, never taken over
        assert claims.current(directory).released
        assert (directory / plan.DONE).exists()
    # The last finisher wrote the report (a process that finished earlier said what was pending).
    assert sum("report in" in out for out in outs) >= 1
    summary = json.loads((workdir / "report" / "ranking.json").read_text())
    expected = json.loads((reference / "report" / "ranking.json").read_text())
    assert _comparable(summary) == _comparable(expected)


def test_only_and_side_run_just_those(tmp_path, halves_data_dir, capsys):  # noqa: F811
    suite = _tiny_suite()
    assert runner.run_suite(suite, str(tmp_path), str(halves_data_dir), only=["narrow"],
                            stages=["b"]) is None  # fmt: skip
    out = capsys.readouterr().out
    assert "suite: 1 runs trained, 0 already done" in out
    assert "5 runs not done yet" in out and "a/mid: not started" in out
    done = sorted(
        p.parent.relative_to(tmp_path).as_posix() for p in tmp_path.glob("*/*/" + plan.DONE)
    )
    assert done == ["last5/narrow"]


def test_list_prints_status_and_commands(tmp_path, halves_data_dir, reference):  # noqa: F811
    config = tmp_path / "tiny_suite.py"
    config.write_text(_CONFIG)
    result = subprocess.run(
        _command(str(config), reference, halves_data_dir, "--list", "--side=b"),
        cwd=REPO, env=_env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [r[:2] for r in rows] == [["b/mid", "done"], ["b/narrow", "done"], ["b/wide", "done"]]
    assert rows[0][2].endswith("--compilation_cache= --only=b/mid")
    assert "--list" not in rows[0][2] and "--side" not in rows[0][2]


def test_rank_only_reports_what_is_done_and_names_what_is_missing(tmp_path, reference, capsys):
    root = tmp_path / "copy"
    shutil.copytree(reference, root)
    shutil.rmtree(root / "report")
    suite = _tiny_suite()
    suite.runs.extra = suite.runs.narrow  # never trained
    summary = runner.rank_only(suite, str(root))
    out = capsys.readouterr().out
    assert "2 of 8 runs not done: a/extra, b/extra" in out
    assert "(without a/extra, b/extra: not done)" in out
    assert sorted(m["name"] for m in summary["models"]) == ["mid", "narrow", "wide"]
    expected = json.loads((reference / "report" / "ranking.json").read_text())
    assert _comparable(summary) == _comparable(expected)
    (root / "first5" / "wide" / plan.DONE).unlink()
    with pytest.raises(UserError, match=r"no report: .* 2 model\(s\) done on both sides"):
        runner.rank_only(suite, str(root))


def test_transfer_stage_fine_tunes_and_is_ranked(tmp_path, halves_data_dir, reference):  # noqa: F811
    root = tmp_path / "copy"
    shutil.copytree(reference, root)
    suite = _tiny_suite()
    suite.transfer = {"label": "t5", "data": "fashion_mnist/first5", "of": "b", "arg": "smoke"}
    suite.transfer.overrides = {"data": {"eval_split": "test"}}  # smoke's test[:64] > 14 images
    summary = runner.run_suite(suite, str(root), str(halves_data_dir), stages=["transfer"])
    assert summary is not None  # every run done: both reports written
    transfer = json.loads((root / "report_t5" / "ranking.json").read_text())
    assert transfer["labels"] == {"a": "last5", "b": "t5"}
    assert sorted(m["name"] for m in transfer["models"]) == ["mid", "narrow", "wide"]
    for name in ("narrow", "mid", "wide"):
        config = json.loads((root / "t5" / name / "config.json").read_text())
        assert config["model"]["init"] == str(root / "last5" / name)
        assert config["data"]["name"] == "fashion_mnist_local/first5"
        assert config["data"]["eval_split"] == "test" and config["schedule"]["num_steps"] == 2
        assert config["model"]["kwargs"]["widths"] == list(suite.runs[name].model.kwargs.widths)


def test_sigterm_stops_the_suite_and_leaves_the_run_resumable(tmp_path, halves_data_dir):  # noqa: F811
    """A preempted run (the trainer checkpoints and returns on SIGTERM) is not marked done: the
    process stops (exit 3) and releases its claim, so the next process resumes the run."""
    config = tmp_path / "tiny_suite.py"
    config.write_text(_CONFIG)
    workdir = tmp_path / "w"
    long = "--suite.runs.narrow.schedule.epochs=5000"  # 30,000 steps: SIGTERM lands mid-run
    command = _command(str(config), workdir, halves_data_dir, "--only=a/narrow", long)
    proc = subprocess.Popen(
        command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        # Training, past its first checkpoint (every epoch: 6 steps). A log line is
        # "step 100/30000 epoch ...": the first metric line at or after step 100 will do.
        logged = re.search(r"\bstep (\d+)/\d+ epoch", line)
        if logged and int(logged.group(1)) >= 100:
            proc.send_signal(signal.SIGTERM)
            break
    else:
        raise AssertionError("the suite ended before step 100:\n" + "".join(lines[-20:]))
    out = "".join(lines) + proc.communicate(timeout=300)[0]
    assert proc.returncode == 3, out
    assert "suite: a/narrow stopped early (SIGTERM)" in out
    runs = {r.id: r for r in plan.plan_runs(_tiny_suite(), epath.Path(workdir), None)}
    run = runs["a/narrow"]
    assert not run.done() and (run.workdir / "checkpoints").exists()
    state, detail = plan.status(run, 3600)
    assert state == "partial" and detail.startswith("released claim")
