"""End-to-end smoke test of `make demo`'s module on the builder's dummy data."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tfds_imagenot.fashion_mnist_local.testing import write_fake_fashion_mnist

# End-to-end runs: see the fast_compile fixture.
pytestmark = pytest.mark.usefixtures("fast_compile")


def _run_demo(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TFDS_DATA_DIR"}
    return subprocess.run(
        [sys.executable, "-m", "imagenot_jax.demo", "--config", "configs/demo.py", *args],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env, check=False,
    )  # fmt: skip


def test_demo_builds_trains_evaluates_and_is_idempotent(tmp_path):
    write_fake_fashion_mnist(tmp_path / "manual", {"train": 40, "test": 12})
    args = (
        f"--data_dir={tmp_path / 'data'}",
        f"--manual_dir={tmp_path / 'manual'}",
        f"--workdir={tmp_path / 'run'}",
        "--norun_suite",  # tests/test_suite.py runs a suite at test size
        "--config.input.global_batch_size=8",
        "--config.input.eval_batch_size=8",
        "--config.input.num_workers=0",
        "--config.model.kwargs.widths=(4, 8, 8)",
        "--config.schedule.epochs=1",
        "--config.schedule.warmup_epochs=0",
    )
    result = _run_demo(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dataset fashion_mnist_local/all: {'train': 40, 'test': 12}" in result.stdout
    assert re.search(r"checkpoint step +5\n", result.stdout), result.stdout
    assert "fashion_mnist_local/all test (n=12)" in result.stdout
    assert (tmp_path / "run" / "eval" / "fashion_mnist_local_all-test-5.json").exists()
    rerun = _run_demo(*args)  # idempotent: reuses the dataset, does not train again
    assert rerun.returncode == 0 and re.search(r"checkpoint step +5\n", rerun.stdout)
    assert "training resnet_mini" not in rerun.stderr


def test_demo_without_source_files_exits_2_with_the_fix(tmp_path):
    # Run the demo with the Debian location pointed at an empty folder.
    code = (
        "import pathlib, sys\n"
        "from tfds_imagenot.fashion_mnist_local import fashion_mnist_local_dataset_builder as m\n"
        f"m.DEBIAN_DIR = pathlib.Path({str(tmp_path / 'none')!r})\n"
        "from absl import app\n"
        "from imagenot_jax import demo\n"
        "app.run(demo.main)\n"
    )
    result = subprocess.run(
        [
            sys.executable, "-c", code, f"--data_dir={tmp_path}", f"--workdir={tmp_path / 'run'}",
            "--norun_suite",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: Fashion-MNIST files")
    assert str(tmp_path / "none") in last_line
    assert "apt-get install dataset-fashion-mnist" in last_line and "--manual_dir" in last_line
