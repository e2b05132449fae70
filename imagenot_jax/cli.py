"""Shared command-line behaviour of the entry points."""

from __future__ import annotations

import logging as logging_std
import sys
from collections.abc import Callable

from absl import logging

# Bad configs and missing data are the user's to fix: one line and exit code 2 (run with
# --verbosity=1 for the traceback). Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError)


def run_user_command(fn: Callable, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except USER_ERRORS as e:
        logging.vlog(1, "user error", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


_CHATTY_LIBRARIES = ("/orbax/", "/tensorflow_datasets/", "/grain/", "/jax/_src/")


class _LibraryInfoFilter(logging_std.Filter):
    """Drops INFO records of libraries that log every checkpoint write and dataset open."""

    def filter(self, record: logging_std.LogRecord) -> bool:
        if record.levelno >= logging_std.WARNING:
            return True
        return not any(part in record.pathname for part in _CHATTY_LIBRARIES)


def quiet_library_logs() -> None:
    """Keeps this project's INFO lines (progress, metrics) and the libraries' warnings."""
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_LibraryInfoFilter())
