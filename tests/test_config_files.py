"""Config files by path or by name (imagenot_jax/config_files.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from imagenot_jax import config_files
from imagenot_jax.errors import UserError
from tests.conftest import REPO

PACKAGED = config_files.package_dir()


def test_the_package_is_the_checkouts_configs_folder():
    assert PACKAGED.resolve() == (REPO / "configs").resolve()
    assert {"demo", "resnet50", "suites/fashion_halves"} <= set(config_files.known_configs())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("resnet50", "resnet50.py"),
        ("resnet50.py", "resnet50.py"),
        ("configs/resnet50.py:dataset=imagenot", "resnet50.py:dataset=imagenot"),
        ("suites/fashion_halves", "suites/fashion_halves.py"),
        ("transfer:init=W,dataset=cifar10", "transfer.py:init=W,dataset=cifar10"),
    ],
)
def test_names_resolve_from_any_directory(value, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_files.resolve(value) == f"{PACKAGED}/{expected}"


def test_an_existing_file_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "resnet50.py").write_text("")
    assert config_files.resolve("resnet50.py:x") == f"{tmp_path}/resnet50.py:x"  # absolute
    assert config_files.resolve("gs://bucket/c.py") == "gs://bucket/c.py"


def test_unknown_name_suggests_close_ones():
    with pytest.raises(UserError, match=r"config 'resnet5'.*did you mean resnet50"):
        config_files.resolve("resnet5")


def test_argv_rewrites_only_the_config_flags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["prog", "--config", "demo", "--suite=suites/fashion_halves", "--config.seed=1",
            "--workdir", "demo"]  # fmt: skip
    assert config_files.resolve_argv(argv, ["config", "suite"]) == [
        "prog", "--config", f"{PACKAGED}/demo.py",
        f"--suite={PACKAGED}/suites/fashion_halves.py", "--config.seed=1", "--workdir", "demo",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "error"),
    [("return undefined_name", "NameError"), ("return int('x')", "ValueError")],
)
def test_a_bug_in_get_config_keeps_its_traceback(tmp_path, body, error):
    """Only the user's errors become one line (tests/test_bad_inputs.py); a bug does not."""
    path = tmp_path / "buggy.py"
    path.write_text(f"def get_config(arg=None):\n    {body}\n")
    command = [sys.executable, "-m", "imagenot_jax.main", f"--config={path}", "--workdir=w"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 1, run.stderr[-2000:]
    assert "Traceback" in run.stderr and error in run.stderr, run.stderr[-2000:]
    assert "\nerror: " not in run.stderr


def _raised(make):
    try:
        make()
    except Exception as e:
        return e
    raise AssertionError("nothing raised")


def test_user_message_unwraps_only_the_wrappers_of_config_flags_and_absl():
    from absl import flags

    def wrapped():  # config_flags copies the error, absl wraps the copy
        try:
            try:
                raise UserError("config argument 'x': expected 'smoke'")
            except UserError as e:
                raise UserError("Error whilst parsing config file:\n\nTraceback ...") from e
        except UserError as e:
            raise flags.IllegalFlagValueError("flag --config=c.py:x: ...") from e

    message = "config argument 'x': expected 'smoke'"
    assert config_files.user_message(_raised(wrapped)) == message

    def handler_bug():
        try:
            raise UserError("the user's")
        except UserError:
            raise RuntimeError("a bug while handling it") from None

    assert config_files.user_message(_raised(handler_bug)) is None
    bad_value = flags.IllegalFlagValueError("flag --config.optim.lr=abc: could not convert")
    assert config_files.user_message(bad_value) == str(bad_value)
