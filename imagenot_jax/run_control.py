"""Run control for the training loop: preemption (SIGTERM) and per-step metrics with the
non-finite loss check that guards every checkpoint."""

from __future__ import annotations

import signal
import time

import jax
import numpy as np
from absl import logging


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; no checkpoint is written from that state."""


class Preemption:
    """SIGTERM sets a flag; the loop saves a checkpoint at the next step and exits cleanly."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        del signum, frame
        logging.warning("SIGTERM: saving a checkpoint and stopping")
        self.requested = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


class PendingMetrics:
    """Per-step metrics stay on device until a log/checkpoint step fetches them all at once;
    every step's loss is checked there, so a NaN is never checkpointed."""

    def __init__(self) -> None:
        self._steps: list[tuple[int, dict]] = []
        self._timer = time.perf_counter()

    def add(self, step: int, metrics: dict) -> None:
        self._steps.append((step, metrics))

    def flush(self, images_per_step: int) -> dict[str, float] | None:
        if not self._steps:
            return None
        fetched = jax.device_get([metrics for _, metrics in self._steps])
        for (step, _), metrics in zip(self._steps, fetched, strict=True):
            if not np.isfinite(metrics["loss"]):
                raise NonFiniteLossError(f"loss is {metrics['loss']} at step {step}")
        seconds = time.perf_counter() - self._timer
        summary = {name: float(np.mean([m[name] for m in fetched])) for name in fetched[0]}
        summary["lr"] = float(fetched[-1]["lr"])
        summary["images_per_s"] = len(fetched) * images_per_step / seconds
        self._steps, self._timer = [], time.perf_counter()
        return summary
