"""Where training metrics go: metrics.jsonl, TensorBoard event files and the terminal.

Only process 0 writes files. On a terminal a tqdm progress bar shows step and images/s; when
output is redirected (cluster logs) plain absl log lines are written instead.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import jax
from absl import logging
from etils import epath


class MetricWriter:
    def __init__(self, workdir: str, total_steps: int, initial_step: int):
        self._is_writer = jax.process_index() == 0
        directory = epath.Path(workdir)
        self._jsonl = directory / "metrics.jsonl"
        # Cloud object stores (gs://) cannot append, so the file is rewritten whole each time:
        # a few hundred KB for a long run. A resumed run keeps the lines written before.
        self._lines = self._jsonl.read_text().splitlines() if self._jsonl.exists() else []
        self._tensorboard = None
        self._bar = None
        if self._is_writer:
            from tensorboardX import SummaryWriter

            self._tensorboard = SummaryWriter(str(directory / "tensorboard"))
            if sys.stderr.isatty():
                from tqdm import tqdm

                self._bar = tqdm(total=total_steps, initial=initial_step, unit="step")

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        """Appends one JSON object per call: {"step": step, **metrics}."""
        if not self._is_writer:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        self._lines.append(json.dumps(record))
        self._jsonl.write_text("\n".join(self._lines) + "\n")
        for name, value in record.items():
            if name != "step" and isinstance(value, int | float):
                self._tensorboard.add_scalar(name, value, step)
        self._tensorboard.flush()
        summary = ", ".join(f"{k} {_fmt(v)}" for k, v in record.items() if k != "step")
        if self._bar is not None:
            self._bar.set_postfix_str(summary, refresh=False)
        else:
            logging.info("step %d: %s", step, summary)

    def advance(self, step: int) -> None:
        if self._bar is not None:
            self._bar.n = step
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def _plain(value: Any) -> Any:
    try:
        return float(value) if not isinstance(value, str | int) else value
    except TypeError:
        return str(value)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
