"""Paths as a new user types them: relative to the directory a command runs in, and one rule for
where datasets are looked for."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import flags
from conftest import REPO
from helpers import cli_overrides

from imagenot_jax import cli
from imagenot_jax.data import data_dirs


def test_absolute_path_resolves_local_paths_and_keeps_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.absolute_path("run") == str(tmp_path / "run")
    assert cli.absolute_path("a/../b") == str(tmp_path / "b")
    assert cli.absolute_path("~/x") == os.path.expanduser("~/x")
    assert cli.absolute_path("gs://bucket/run") == "gs://bucket/run"
    assert cli.absolute_path(None) is None and cli.absolute_path("") == ""


def test_path_flags_are_absolute_once_parsed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    values = flags.FlagValues()
    cli.define_path_flag("workdir", None, "a path", flag_values=values)
    values(["prog", "--workdir=out/run"])
    assert values.workdir == str(tmp_path / "out" / "run")
    values(["prog", "--workdir=gs://b/run"])
    assert values.workdir == "gs://b/run"


def test_data_dir_rule_env_then_checkout_then_tfds_default(tmp_path, monkeypatch):
    checkout = tmp_path / "checkout" / ".data" / "tensorflow_datasets"
    monkeypatch.setattr(data_dirs, "CHECKOUT_DATA_DIR", checkout)
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    default = os.path.expanduser("~/tensorflow_datasets")
    assert data_dirs.default_data_dir_and_origin() == (default, "TFDS's default")
    checkout.mkdir(parents=True)  # what `make demo` creates
    assert data_dirs.default_data_dir_and_origin() == (str(checkout), "the checkout's .data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TFDS_DATA_DIR", "mine")  # relative: against the current directory
    expected = (str(tmp_path / "mine"), "$TFDS_DATA_DIR")
    assert data_dirs.default_data_dir_and_origin() == expected
    monkeypatch.setenv("TFDS_DATA_DIR", "gs://bucket/tfds")  # a URI stays as given
    assert data_dirs.default_data_dir_and_origin() == ("gs://bucket/tfds", "$TFDS_DATA_DIR")


def test_the_checkout_data_dir_is_the_repos():
    assert data_dirs.CHECKOUT_DATA_DIR == REPO / ".data" / "tensorflow_datasets"


def _run(*command: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TFDS_DATA_DIR"}
    return subprocess.run(
        [sys.executable, "-m", *command],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_readme_train_and_evaluate_commands_with_relative_paths(tmp_path, fake_fashion_mnist):
    """README's `main --config configs/demo.py --workdir run` and `evaluate --workdir run`, run
    from the repo root with relative workdir and data dir (orbax refuses relative checkpoint
    paths: the CLIs must make them absolute)."""
    workdir = os.path.relpath(tmp_path / "run", REPO)
    data_dir = os.path.relpath(fake_fashion_mnist, REPO)
    assert not os.path.isabs(workdir) and not os.path.isabs(data_dir)
    overrides = cli_overrides(data_dir, **{"schedule.num_steps": 3, "checkpoint.every_steps": 2})
    command = ("imagenot_jax.main", "--config", "configs/demo.py", "--workdir", workdir)
    train = _run(*command, *overrides)
    assert train.returncode == 0, train.stderr[-3000:]
    assert f"TFDS data dir: {fake_fashion_mnist} (given)" in train.stderr
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "3"]
    # The run's config records the data dir absolute, so evaluate finds it from anywhere.
    assert json.loads((run / "config.json").read_text())["data"]["data_dir"] == str(
        fake_fashion_mnist
    )
    evaluate = _run("imagenot_jax.evaluate", "--workdir", workdir)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert [p.name for p in (run / "eval").glob("*.json")], evaluate.stdout
    # An explicit relative --data_dir is resolved the same way.
    again = _run("imagenot_jax.evaluate", "--workdir", workdir, "--data_dir", data_dir, "--step=2")
    assert again.returncode == 0, again.stderr[-3000:]


def test_suite_lists_its_runs_from_relative_paths(tmp_path):
    """`--list` plans every run (its config validated) from a relative suite file, workdir and
    data dir, as typed from the repo root."""
    workdir = os.path.relpath(tmp_path / "suite", REPO)
    data_dir = os.path.relpath(tmp_path / "data", REPO)
    suite = ("imagenot_jax.suite", "--suite", "configs/suites/fashion_halves.py", "--list")
    listed = _run(*suite, "--workdir", workdir, "--data_dir", data_dir)
    assert listed.returncode == 0, listed.stderr[-3000:]
    runs = [line.split("\t") for line in listed.stdout.splitlines()]
    assert len(runs) == 12 and all(state == "not started" for _, state, _ in runs)
