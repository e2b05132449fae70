"""`python tests/kill_worker.py MODULE ARGS...`: runs `python -m MODULE ARGS...` and SIGKILLs
itself at the moment $KILL_WORKER names (the kill-and-resume tests' way to land a real SIGKILL
at an exact point without a hook in the code under test):

    line:REGEX             just after the process writes (stdout or stderr) a line matching REGEX
    before:MODULE:NAME     on entering the function MODULE.NAME (NAME may be Class.method)
    after:MODULE:NAME      as MODULE.NAME returns, before its caller goes on

A SIGKILL leaves no chance to clean up: no `finally`, no atexit, no flush of Python's buffers
(the line that triggered it is flushed first, so the test sees it).
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import runpy
import signal
import sys
from typing import Any, TextIO


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class _KillOnLine:
    """A text stream that forwards everything and dies after a line matching `pattern`."""

    def __init__(self, stream: TextIO, pattern: re.Pattern) -> None:
        self._stream, self._pattern, self._partial = stream, pattern, ""

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        *lines, self._partial = (self._partial + text).split("\n")
        if any(self._pattern.search(line) for line in lines):
            _die()
        return written

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, flush, encoding, ...
        return getattr(self._stream, name)


def _patch(when: str, target: str) -> None:
    module_name, _, qualname = target.partition(":")
    *owners, name = qualname.split(".")
    owner: Any = importlib.import_module(module_name)
    for part in owners:
        owner = getattr(owner, part)
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if when == "before":
            _die()
        result = original(*args, **kwargs)
        _die()
        return result

    setattr(owner, name, wrapper)


def main() -> None:
    when, _, what = os.environ["KILL_WORKER"].partition(":")
    if when == "line":  # before anything (absl's log handler) holds on to the real streams
        pattern = re.compile(what)
        sys.stdout = _KillOnLine(sys.stdout, pattern)
        sys.stderr = _KillOnLine(sys.stderr, pattern)
    elif when in ("before", "after"):
        _patch(when, what)
    else:
        raise SystemExit(
            f"KILL_WORKER={os.environ['KILL_WORKER']!r}: expected line:, before:, after:"
        )
    module, *args = sys.argv[1:]
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
