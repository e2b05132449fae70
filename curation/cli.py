"""Command lines of the stages: `python -m curation.<stage> --config FILE[:arg] --workdir DIR`.

Flags are defined here once, so that `curation.run` can import every stage without clashes.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable
from typing import Any

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from curation.errors import CurationError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Curation config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Curation workdir (the tfds manual dir).")
_RAY_ADDRESS = flags.DEFINE_string(
    "ray_address", None, "Run parallel stages on this Ray cluster ('auto': the local one)."
)

Stage = Callable[[ml_collections.ConfigDict, pathlib.Path], Any]


def run_stage(stage: Stage) -> None:
    """absl entry point that runs `stage(config, workdir)`; user errors exit 2 in one line."""
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(lambda argv: _main(stage, argv))


def _main(stage: Stage, argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    config = _CONFIG.value
    if _RAY_ADDRESS.value:
        config.engine.name = "ray"
        config.engine.ray_address = _RAY_ADDRESS.value
    try:
        stage(config, pathlib.Path(_WORKDIR.value).expanduser().absolute())
    except CurationError as e:
        logging.vlog(1, "user error", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
