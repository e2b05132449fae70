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
    app.run(lambda argv: _main(stage, argv), flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, the user's errors in it one line on stderr and exit code 2: a
    CurationError from get_config (a bad config argument), a config file that is not there, a
    bad flag or override value. Any other error while the config loads is a bug: traceback.
    (imagenot_jax/config_files.py does the same for the training side; curation never imports
    imagenot_jax.)"""
    _check_config_file(argv)
    try:
        rest = flags.FLAGS(argv)
        hasattr(_CONFIG.value, "lock")  # config_flags defers a load OSError to the first use
    except Exception as e:  # re-raised below unless it is the user's
        message = _user_message(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    return rest


def _user_message(error: BaseException) -> str | None:
    chain, current = [], error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    ours = [e for e in chain if isinstance(e, CurationError)]
    if ours:  # the innermost: config_flags copies it with a traceback in its message
        return str(ours[-1])
    if isinstance(error, flags.Error) and "Error whilst parsing config file" not in str(error):
        return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if isinstance(error, AttributeError | KeyError) and _raised_in_config_path(error):
        return f"a --config.FIELD override names no field of the config ({error})"
    return None


def _raised_in_config_path(error: BaseException) -> bool:
    """Raised where config_flags looks an override's dotted path up in the config."""
    where = pathlib.Path("ml_collections", "config_flags", "config_path.py")
    frame = error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_filename.endswith(str(where)):
            return True
        frame = frame.tb_next
    return False


def _check_config_file(argv: list[str]) -> None:
    """A --config file that is not there: one line (config_flags' message lists attempts)."""
    for i, arg in enumerate(argv):
        value = arg.removeprefix("--config=") if arg.startswith("--config=") else None
        if arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
        path = (value or "").split(":", 1)[0]
        if value and "://" not in value and not pathlib.Path(path).is_file():
            print(f"error: --config {value}: {path} is not a file", file=sys.stderr)
            sys.exit(2)


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
