"""Shared command-line behaviour of the entry points."""

from __future__ import annotations

import logging as logging_std
import os
import sys
from collections.abc import Callable

from absl import app, flags, logging

from imagenot_jax.errors import UserError


def absolute_path(path: str | None) -> str | None:
    """A local path made absolute against the current directory (`~` expanded); URIs such as
    gs://... and empty values stay as given.

    Every CLI resolves its paths once, where they enter: orbax refuses relative checkpoint paths,
    and TFDS, grain workers and spawned processes would resolve them against other directories."""
    if not path or "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


class _PathParser(flags.ArgumentParser):
    def parse(self, argument):
        return absolute_path(argument)

    def flag_type(self) -> str:
        return "path"


def define_path_flag(name: str, default: str | None, help: str, **kwargs) -> flags.FlagHolder:
    """A string flag holding a path, made absolute as it is parsed (see absolute_path)."""
    return flags.DEFINE(
        _PathParser(), name, default, help, serializer=flags.ArgumentSerializer(), **kwargs
    )


def run_command(
    argv: list[str], fn: Callable, *args, compilation_cache: str | bool | None = False, **kwargs
):
    """The entry points' prologue and error handling: no stray arguments, this project's log
    lines only, the persistent compilation cache (unless `compilation_cache` is False: the
    commands that compile nothing), then `fn(*args, **kwargs)`.

    A `UserError` (bad config or input: the user's to fix) prints one line and exits with code 2
    (--verbosity=1 adds its traceback); any other exception is a bug and keeps its traceback."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_library_logs()
    if compilation_cache is not False:
        enable_compilation_cache(compilation_cache)
    return run_user_command(fn, *args, **kwargs)


def run_user_command(fn: Callable, *args, **kwargs):
    """`fn(*args, **kwargs)`, a UserError turned into one line on stderr and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except UserError as e:
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


DEFAULT_COMPILATION_CACHE = "~/.cache/imagenot_jax/jax_cache"


def define_compilation_cache_flag() -> flags.FlagHolder:
    return flags.DEFINE_string(
        "compilation_cache",
        None,
        "Persistent XLA compilation cache directory, so a resumed or repeated run does not "
        "recompile (default: $JAX_COMPILATION_CACHE_DIR, else "
        f"{DEFAULT_COMPILATION_CACHE}; '' disables it).",
    )


def enable_compilation_cache(directory: str | None) -> str | None:
    """Turns on JAX's persistent compilation cache in `directory` (see the flag); returns the
    directory used, or None when disabled. Call before anything compiles."""
    import jax  # here: rank's CLI shares this module and needs no jax

    if directory is None:
        directory = os.environ.get("JAX_COMPILATION_CACHE_DIR") or DEFAULT_COMPILATION_CACHE
    if not directory:
        return None
    if "://" not in directory:  # gs:// and other remote caches are used as given
        directory = os.path.expanduser(directory)
    jax.config.update("jax_compilation_cache_dir", directory)
    # Cache every program (jax's default skips those compiled in under 1 s), so that whether a
    # step is cached does not depend on how fast it happened to compile.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
