"""Run tooling: a jax.profiler trace of a window of steps, and the persistent compilation cache
(a resumed CLI run compiles nothing new)."""

from __future__ import annotations

import pathlib

import pytest

from imagenot_jax.train import trainer
from imagenot_jax.train.run_control import Profiler
from tests.helpers import run_main, tiny_config


def test_profile_steps_write_a_trace_of_the_window(tmp_path, fake_fashion_mnist):
    config = tiny_config(
        fake_fashion_mnist, **{"schedule.num_steps": 4, "logging.profile_steps": (2, 3)}
    )
    trainer.train_and_evaluate(config, str(tmp_path))
    traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1, list((tmp_path / "profile").rglob("*"))
    assert b"jit_step" in traces[0].read_bytes()  # the train step ran inside the window


def test_profile_steps_are_validated(tmp_path):
    with pytest.raises(ValueError, match=r"logging.profile_steps=\(3, 2\)"):
        Profiler((3, 2), str(tmp_path))
    with pytest.raises(ValueError, match=r"logging.profile_steps=\(0, 1\)"):
        Profiler((0, 1), str(tmp_path))
    Profiler(None, str(tmp_path)).stop()  # off: a no-op


def _cache_entries(cache: pathlib.Path) -> set[str]:
    return {p.name for p in cache.rglob("*") if p.is_file()}


def test_a_resumed_cli_run_adds_no_compilation_cache_entries(tmp_path, fake_fashion_mnist):
    cache = tmp_path / "jax_cache"
    flag = f"--compilation_cache={cache}"
    first = run_main(tmp_path / "run", fake_fashion_mnist, flag, **{"schedule.num_steps": 2})
    assert first.returncode == 0, first.stderr[-3000:]
    entries = _cache_entries(cache)
    assert any("step" in name for name in entries), sorted(entries)  # the train step is cached
    resumed = run_main(tmp_path / "run", fake_fashion_mnist, flag, **{"schedule.num_steps": 4})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step 2" in resumed.stderr
    assert _cache_entries(cache) - entries == set()
