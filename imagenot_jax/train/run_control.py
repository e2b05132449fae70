"""Run control for the training loop: preemption (SIGTERM), per-step metrics with the
non-finite loss check that guards every checkpoint, and a profiler window over chosen steps."""

from __future__ import annotations

import signal
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from imagenot_jax.errors import UserError


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; no checkpoint is written from that state."""


class Preemption:
    """SIGTERM stops training after a checkpoint; `reached(step)` says at which step.

    One process: a Python SIGTERM handler sets a flag, seen at the next step. With
    jax.distributed, processes get SIGTERM at different moments (or only some do), yet a
    checkpoint is a collective: all must save the same step. JAX's preemption sync manager
    (started by jax.distributed.initialize) catches SIGTERM in C++ and tells the coordination
    service; the processes agree on a step (the furthest one's next) and `reached` is True there
    on every process. No Python handler then: it would replace that C++ one.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        self._synced = jax.distributed.is_initialized()
        if not self._synced:
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        del signum, frame
        logging.warning("SIGTERM: saving a checkpoint and stopping")
        self.requested = True

    def reached(self, step: int) -> bool:
        """Call once after every train step; True: save `step` and stop (the same step on
        every process)."""
        if self._synced and not self.requested:
            # Blocks while the processes agree on the step (the sync manager holds its lock).
            self.requested = multihost_utils.reached_preemption_sync_point(step)
            if self.requested:
                logging.warning("preemption: every process saves step %d and stops", step)
        return self.requested

    def restore(self) -> None:
        if not self._synced:
            # None: the previous handler was not set from Python (it cannot be put back).
            previous = signal.SIG_DFL if self._previous is None else self._previous
            signal.signal(signal.SIGTERM, previous)


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


class Profiler:
    """A jax.profiler trace of steps first..last (1-based, as logged) in `directory`.

    The trace starts before step `first` is dispatched and stops once step `last` has finished
    on device (the loop blocks on the state), so the window holds that device work and no more.
    View it with TensorBoard's profile plugin or Perfetto (the `.xplane.pb`/`.trace.json.gz`).
    """

    def __init__(self, steps: tuple[int, int] | None, directory: str) -> None:
        if steps is not None:
            first, last = (int(s) for s in steps)
            if not 1 <= first <= last:
                raise UserError(
                    f"logging.profile_steps={tuple(steps)}: expected (first, last) steps with "
                    "1 <= first <= last"
                )
            steps = (first, last)
        self._steps, self._directory, self._active = steps, directory, False

    def before_step(self, step: int) -> None:
        """Call before dispatching step `step` (the state's step + 1)."""
        if self._steps and not self._active and self._steps[0] <= step <= self._steps[1]:
            logging.info("profiling steps %d-%d into %s", step, self._steps[1], self._directory)
            jax.profiler.start_trace(self._directory)
            self._active = True

    def after_step(self, step: int, state: Any) -> None:
        """Call after step `step` was dispatched; stops the trace after the window's last step."""
        if self._active and step >= self._steps[1]:
            self.stop(state)

    def stop(self, state: Any = None) -> None:
        """Ends the trace (also when the loop ends early inside the window)."""
        if self._active:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self._active = False
