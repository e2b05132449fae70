"""Config files by path or by name (imagenot_jax/config_files.py)."""

from __future__ import annotations

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
