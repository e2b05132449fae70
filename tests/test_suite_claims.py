"""The suite's claims (one process per run across machines), run selection and statuses: no
training here (tests/test_suite_parallel.py runs suites)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import ml_collections
import pytest
from etils import epath

from imagenot_jax.errors import UserError
from imagenot_jax.suite import claims, plan, runner
from tests.conftest import REPO


def _age(directory: epath.Path, generation: int, seconds: float) -> None:
    """Backdates a claim's heartbeat, as if its owner had stopped `seconds` ago."""
    path = directory / f"suite_claim.{generation}.json"
    fields = json.loads(path.read_text())
    fields["time"] -= seconds
    path.write_text(json.dumps(fields))


def test_claim_is_exclusive_among_threads(tmp_path):
    directory = epath.Path(tmp_path) / "run"
    barrier = threading.Barrier(8)
    won = []

    def contend() -> None:
        barrier.wait()
        claim = claims.try_acquire(directory, timeout_s=60)
        if claim is not None:
            won.append(claim)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    assert claims.generations(directory) == [0]
    held = claims.current(directory)
    assert held.token == won[0].info.token and held.is_fresh(60)
    assert not list(directory.glob("*.tmp"))  # no temporary files left behind


def test_fresh_claim_is_respected_and_stale_one_taken_over_once(tmp_path):
    directory = epath.Path(tmp_path)
    first = claims.try_acquire(directory, timeout_s=100)
    assert first is not None
    assert claims.try_acquire(directory, timeout_s=100) is None  # held: fresh
    _age(directory, 0, 101)
    takers = [claims.try_acquire(directory, timeout_s=100) for _ in range(2)]
    assert takers[0] is not None and takers[1] is None  # the new generation is fresh
    assert takers[0].info.generation == 1 and claims.generations(directory) == [0, 1]
    # The old owner has lost the run: it neither beats nor releases over the new claim.
    assert not first.refresh() and first.lost
    first.release()
    assert claims.current(directory).token == takers[0].info.token
    assert not claims.current(directory).released


def test_heartbeat_refreshes_while_held_and_release_frees(tmp_path):
    directory = epath.Path(tmp_path)
    claim = claims.try_acquire(directory, timeout_s=0.8, heartbeat_s=0.1)
    with claim:
        beat0 = claims.current(directory).time
        time.sleep(1.2)  # longer than the timeout: only the heartbeat keeps the claim fresh
        held = claims.current(directory)
        assert held.time > beat0 and held.is_fresh(0.8)
        assert claims.try_acquire(directory, timeout_s=0.8) is None
    released = claims.current(directory)
    assert released.released and not released.is_fresh(0.8)
    again = claims.try_acquire(directory, timeout_s=0.8)  # a released run is claimable at once
    assert again is not None and again.info.generation == 1


def test_lost_claim_interrupts_the_training_thread(tmp_path):
    # Python's own SIGINT handler, as in the suite's process (interrupt_main calls the handler
    # installed; an earlier test in this worker may have left another).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    directory = epath.Path(tmp_path)
    claim = claims.try_acquire(directory, timeout_s=100, heartbeat_s=0.05)
    _age(directory, 0, 101)
    assert claims.try_acquire(directory, timeout_s=100) is not None  # taken over
    try:
        with pytest.raises(KeyboardInterrupt), claim:
            deadline = time.monotonic() + 120  # a loaded machine can delay the first beat
            while time.monotonic() < deadline:  # training: the interrupt lands between calls
                time.sleep(0.05)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert claim.lost


def test_agree_on_choice_on_one_process():
    calls = []
    assert runner.agree_on_choice(lambda: calls.append(1) or 3) == 3
    assert runner.agree_on_choice(lambda: -1) == -1
    assert calls == [1]


# --- runs, selection, statuses, --list ------------------------------------------------------


def _suite(transfer: bool = True) -> ml_collections.ConfigDict:
    from configs import demo

    config = ml_collections.ConfigDict()
    config.a = ml_collections.ConfigDict({"label": "first5", "data": "fashion_mnist/first5"})
    config.b = ml_collections.ConfigDict({"label": "last5", "data": "fashion_mnist/last5"})
    config.base = "narrow"
    config.bootstrap = 10
    config.runs = ml_collections.ConfigDict({n: demo.get_config() for n in ("narrow", "wide")})
    if transfer:
        config.transfer = ml_collections.ConfigDict(
            {"label": "t5", "data": "fashion_mnist/first5", "of": "b", "arg": "smoke"}
        )
        config.transfer.overrides = {"data": {"eval_split": "test"}}
    return config


def test_plan_and_select(tmp_path):
    runs = plan.plan_runs(_suite(), epath.Path(tmp_path), "/data")
    ids = [r.id for r in runs]
    assert ids == [
        "a/narrow", "a/wide", "b/narrow", "b/wide", "transfer/narrow", "transfer/wide",
    ]  # fmt: skip
    assert runs[0].workdir == epath.Path(tmp_path) / "first5" / "narrow"
    assert runs[4].needs.id == "b/narrow" and runs[4].workdir.parent.name == "t5"
    config = runs[2].config()
    assert config.data.name == "fashion_mnist_local/last5" and config.data.data_dir == "/data"
    # A transfer run's config: configs/transfer.py on its pretrained run's config.json, then the
    # suite's overrides.
    pretrained = runs[2].workdir
    pretrained.mkdir(parents=True)
    (pretrained / "config.json").write_text(json.dumps(config.to_dict()))
    fine_tune = runs[4].config()
    assert fine_tune.model.init == str(pretrained) and fine_tune.model.name == "resnet_mini"
    assert (
        fine_tune.data.name == "fashion_mnist_local/first5" and fine_tune.data.data_dir == "/data"
    )
    assert fine_tune.data.eval_split == "test" and fine_tune.schedule.num_steps == 2
    assert fine_tune.optim.lr == 0.01  # the recipe's, untouched by the overrides
    pick = [r.id for r in plan.select(runs, ["wide"], ["b", "transfer"])]
    assert pick == ["b/wide", "transfer/wide"]
    assert [r.id for r in plan.select(runs, ["a/narrow", "b/wide"])] == ["a/narrow", "b/wide"]
    with pytest.raises(UserError, match="--only=resnet: no such run"):
        plan.select(runs, ["resnet"])
    with pytest.raises(UserError, match="--side=c: this suite's stages are a, b, transfer"):
        plan.select(runs, (), ["c"])


def test_side_a_as_a_table_trains_nothing_on_a(tmp_path):
    suite = _suite()
    suite.a.table = "torchvision-imagenet1k"
    assert {r.stage for r in plan.plan_runs(suite, epath.Path(tmp_path), None)} == {
        "b", "transfer",
    }  # fmt: skip
    suite.transfer.of = "a"
    with pytest.raises(UserError, match=re.escape("suite.transfer.of='a'")):
        plan.plan_runs(suite, epath.Path(tmp_path), None)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: setattr(s, "base", "resnet"), "suite.base='resnet'"),
        (lambda s: setattr(s.b, "label", "first5"), "labels must be distinct"),
        (lambda s: setattr(s.b, "data", ""), "suite.b: expected `data`"),
    ],
)
def test_bad_suite_configs_are_one_line_errors(tmp_path, change, message):
    suite = _suite()
    change(suite)
    with pytest.raises(UserError, match=message):
        plan.plan_runs(suite, epath.Path(tmp_path), None)


def test_statuses_and_listing(tmp_path):
    root = epath.Path(tmp_path)
    runs = {r.id: r for r in plan.plan_runs(_suite(), root, None)}
    runs["a/narrow"].workdir.mkdir(parents=True)
    (runs["a/narrow"].workdir / plan.DONE).write_text('{"eval": "x"}')
    claims.try_acquire(runs["a/wide"].workdir, timeout_s=100)  # running
    claims.try_acquire(runs["b/narrow"].workdir, timeout_s=100)
    _age(runs["b/narrow"].workdir, 0, 101)  # its process died: stale
    (runs["b/wide"].workdir / "checkpoints").mkdir(parents=True)  # interrupted, no claim
    states = {i: plan.status(r, 100) for i, r in runs.items()}
    assert states["a/narrow"] == ("done", "")
    assert states["a/wide"][0] == "running" and "last beat 0 s ago" in states["a/wide"][1]
    assert states["b/narrow"][0] == "partial" and states["b/narrow"][1].startswith("stale claim")
    assert states["b/wide"] == ("partial", "checkpoints, no claim")
    assert states["transfer/narrow"] == ("waiting", "needs b/narrow")
    (runs["b/narrow"].workdir / plan.DONE).write_text('{"eval": "x"}')
    assert plan.status(runs["transfer/narrow"], 100) == ("not started", "")
    command = ["python", "-m", "imagenot_jax.suite", "--suite", "s.py", "--workdir", "W"]
    lines = plan.listing(list(runs.values()), command, 100)
    assert lines[0].split("\t") == [
        "a/narrow", "done",
        "python -m imagenot_jax.suite --suite s.py --workdir W --only=a/narrow",
    ]  # fmt: skip
    assert lines[1].split("\t")[1].startswith("running (")
    assert [line.split("\t")[0] for line in lines] == list(runs)


def test_strip_selection_keeps_the_suite_and_its_overrides():
    argv = [
        "--suite=s.py:published", "--list", "--only", "a/x", "--side=b", "--workdir", "W",
        "--suite.bootstrap=10", "--norank_only", "--only=y", "--claim_timeout=60",
    ]  # fmt: skip
    assert plan.strip_selection(argv) == [
        "--suite=s.py:published", "--workdir", "W", "--suite.bootstrap=10", "--claim_timeout=60",
    ]  # fmt: skip


def test_rank_only_with_nothing_done_exits_2_naming_what_is_missing(tmp_path):
    config = tmp_path / "suite.py"
    config.write_text("from tests.test_suite import _tiny_suite\n\nget_config = _tiny_suite\n")
    result = subprocess.run(
        [
            sys.executable, "-m", "imagenot_jax.suite", f"--suite={config}",
            f"--workdir={tmp_path / 'w'}", "--rank_only",
        ],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "no report" in error[0]
    assert "done: none; missing: a/mid, a/narrow, a/wide, b/mid, b/narrow, b/wide" in error[0]
