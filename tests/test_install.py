"""The package as a user installs it: `pip install .` (a wheel, not editable) into a fresh venv,
its console scripts, its configs found by name from any directory, its license and extras."""

from __future__ import annotations

import email
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile

import pytest

from tests.conftest import REPO

# Console script -> the module `python -m` runs (its docstring is the script's --help).
SCRIPTS = {
    "train": "imagenot_jax.main",
    "evaluate": "imagenot_jax.evaluate",
    "rank": "imagenot_jax.rank",
    "suite": "imagenot_jax.suite",
    "convert": "imagenot_jax.models.convert",
    "curate": "curation.run",
}
_NOT_SOURCE = (".venv", ".data", ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> pathlib.Path:
    """A venv with the project installed from a copy of the checkout by `pip install .`; its
    dependencies come from the test venv through a .pth line (nothing is downloaded)."""
    root = tmp_path_factory.mktemp("install")
    source = _copy(root)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (pathlib.Path(purelib) / "test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-build-isolation", "--disable-pip-version-check", str(source)],
        check=True,
    )  # fmt: skip
    return venv


def _run(venv: pathlib.Path, *args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    # As a user runs them: no PYTHONPATH, and the machine's one CPU device, not the tests' 8.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    env["TFDS_DATA_DIR"] = str(cwd / "tfds")  # empty: nothing prepared
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_installed_not_editable(installed, tmp_path):
    out = _run(installed, "python", "-c", "import imagenot_jax; print(imagenot_jax.__file__)",
               cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert pathlib.Path(out.stdout.strip()).is_relative_to(installed), out.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_console_script_runs_its_module(installed, tmp_path, script):
    out = _run(installed, f"imagenot-{script}", "--helpshort", cwd=tmp_path)
    assert out.returncode == 1, out.stderr[-2000:]  # absl's exit code after --help
    assert f"python -m {SCRIPTS[script]}" in out.stdout, out.stdout


def test_configs_found_by_name_outside_the_checkout(installed, tmp_path):
    # The config loads (its data section names the dataset) and training stops only at the
    # unprepared dataset: a one-line user error, exit 2.
    out = _run(installed, "imagenot-train", "--config", "demo", "--workdir", str(tmp_path / "w"),
               cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    assert "fashion_mnist_local" in out.stderr and "not prepared" in out.stderr
    # The study suite by name: its run configs come from the installed recipes.
    study = _run(installed, "imagenot-suite", "--suite", "suites/imagenot_study:published",
                 "--workdir", str(tmp_path / "study"), "--list", cwd=tmp_path)  # fmt: skip
    assert study.returncode == 0, study.stderr[-2000:]
    runs = [line.split("\t") for line in study.stdout.splitlines()]
    assert len(runs) == 18  # nine on ImageNot, their nine CIFAR-10 transfers
    status = {run_id: state for run_id, state, _ in runs}
    assert status["b/resnet152"] == "not started"
    assert status["transfer/resnet152"].startswith("waiting (needs b/resnet152")
    bad = _run(installed, "imagenot-train", "--config=resnet5", "--workdir", "w", cwd=tmp_path)
    assert bad.returncode == 2
    assert "error: config 'resnet5'" in bad.stderr and "resnet50" in bad.stderr
    curate = _run(installed, "imagenot-curate", "--config", "nosuch", "--workdir", "w",
                  cwd=tmp_path)  # fmt: skip
    assert curate.returncode == 2 and "curation.configs" in curate.stderr


def test_wheel_ships_configs_and_license(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", str(tmp_path), str(_copy(tmp_path))],
        check=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    configs = {p.relative_to(REPO / "configs").as_posix() for p in REPO.glob("configs/**/*.py")}
    assert configs <= {n.removeprefix("imagenot_jax/configs/") for n in names}
    license_file = next(n for n in names if n.endswith("/LICENSE"))
    assert "Apache License" in zipfile.ZipFile(wheel).read(license_file).decode()
    metadata = email.message_from_bytes(
        zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("/METADATA")))
    )
    assert metadata["License-Expression"] == "Apache-2.0"
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if "entry_points" in n))
    assert all(f"imagenot-{s} =" in entry_points.decode() for s in SCRIPTS)


def _copy(tmp_path: pathlib.Path) -> pathlib.Path:
    """The checkout's sources: setuptools' build/ folder there may hold files since removed."""
    source = tmp_path / "src"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
    return source


def test_extras_and_scripts_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert "jax[tpu]" in extras["tpu"]
    assert "jax[cuda13]" in extras["gpu"]
    # The demo's install leaves out the `tfds` CLI's Beam and Croissant.
    assert not {"apache-beam", "mlcroissant"} & set(extras["train"] + extras["data"])
    pins = (REPO / "constraints.txt").read_text()
    # One CUDA major: jax's CUDA plugin matches the cuBLAS that torch's wheels pin.
    cublas = next(line for line in pins.splitlines() if line.startswith("nvidia-cublas=="))
    assert cublas.split("==")[1].startswith("13.")
    for package in ("jax-cuda13-plugin", "jax-cuda13-pjrt", "libtpu"):
        assert f"\n{package}==" in pins, package
    assert set(project["scripts"]) == {f"imagenot-{s}" for s in SCRIPTS}
