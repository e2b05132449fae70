"""Progress on the terminal and in logs: tqdm bars when stderr is a terminal (process 0 only),
and the step rate and ETA that the plain log lines of redirected runs (cluster logs) carry."""

from __future__ import annotations

import collections
import sys
import time
from typing import Any

import jax


def progress_bar(total: int | None, *, initial: int = 0, unit: str, **kwargs: Any) -> Any | None:
    """A tqdm bar on stderr on process 0 when stderr is a terminal; None otherwise.

    Redirected output gets no bar: a bar's carriage returns turn a log file into one long line.
    Training and evaluation both decide here, so they show progress alike."""
    if jax.process_index() != 0 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit=unit, file=sys.stderr, **kwargs)


class StepRate:
    """Steps per second over the last few logged intervals, and the ETA it gives.

    The clock starts at the first step after (re)starting, once that step has been dispatched:
    its compilation, which can take minutes on a big model, would otherwise skew the rate for a
    long time. A window of recent points, not the whole run, follows speed changes (evaluation,
    another job on the host)."""

    def __init__(self, total_steps: int, window: int = 5) -> None:
        self._total = total_steps
        self._points: collections.deque[tuple[float, int]] = collections.deque(maxlen=window)

    def mark(self, step: int, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        if not self._points or step > self._points[-1][1]:
            self._points.append((now, step))

    @property
    def started(self) -> bool:
        return bool(self._points)

    def steps_per_second(self) -> float | None:
        if len(self._points) < 2:
            return None
        (t0, s0), (t1, s1) = self._points[0], self._points[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else None

    def eta_seconds(self, step: int) -> float | None:
        rate = self.steps_per_second()
        return None if rate is None or rate <= 0 else max(self._total - step, 0) / rate


def format_duration(seconds: float) -> str:
    """Compact h/m/s: 45s, 3m04s, 5h12m, 2d03h."""
    seconds = round(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
