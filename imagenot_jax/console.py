"""Console scripts (pyproject's [project.scripts]): each runs the module that `python -m` runs,
so `imagenot-train ...` and `python -m imagenot_jax.main ...` are one code path.

Config flags take a path or, installed or not, a packaged config's name (config_files.py).
"""

from __future__ import annotations

import runpy
import sys

from imagenot_jax import config_files


def _run(module: str) -> None:
    # run_name="__main__" runs the module's command-line block; alter_sys makes it the
    # __main__ module, whose docstring absl's --help prints.
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def train() -> None:
    """imagenot-train: python -m imagenot_jax.main."""
    _run("imagenot_jax.main")


def evaluate() -> None:
    """imagenot-evaluate: python -m imagenot_jax.evaluate."""
    _run("imagenot_jax.evaluate")


def rank() -> None:
    """imagenot-rank: python -m imagenot_jax.rank."""
    _run("imagenot_jax.rank")


def suite() -> None:
    """imagenot-suite: python -m imagenot_jax.suite."""
    _run("imagenot_jax.suite")


def convert() -> None:
    """imagenot-convert: python -m imagenot_jax.models.convert."""
    _run("imagenot_jax.models.convert")


def curate() -> None:
    """imagenot-curate: python -m curation.run (every curation stage, resumable); its --config
    also takes the name of a config of curation/configs (`imagenot`, `laionet`)."""
    sys.argv = config_files.resolve_argv_or_exit(sys.argv, ["config"], "curation.configs")
    _run("curation.run")
