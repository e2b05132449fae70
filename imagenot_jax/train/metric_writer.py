"""Where training metrics go: metrics.jsonl, TensorBoard event files, W&B and the terminal.

Only process 0 writes. On a terminal a tqdm progress bar shows step and images/s; when output
is redirected (cluster logs) plain absl log lines are written instead, with the step, the epoch
and an ETA: `step 1200/37530 epoch 3.20/90: loss 2.31, ..., eta 5h12m`.

TensorBoard also gets the run's config (as hparams for the HParams dashboard, and whole as text)
when training starts, and a grid of training images at step 0. `logging.wandb=True` sends the
same scalars to Weights & Biases (wandb_writer.py).
"""

from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from imagenot_jax.train import progress
from imagenot_jax.train.wandb_writer import maybe_wandb

# The scalars the HParams dashboard shows beside each run's hyperparameters.
HPARAM_METRICS = ("val_top1", "val_top5", "val_loss", "loss", "train_top1")
NUM_SAMPLE_IMAGES = 8


class MetricWriter:
    def __init__(
        self,
        workdir: str,
        total_steps: int,
        initial_step: int,
        *,
        steps_per_epoch: int | None = None,
        config: ml_collections.ConfigDict | None = None,
    ) -> None:
        self._is_writer = jax.process_index() == 0
        self._total_steps, self._steps_per_epoch = total_steps, steps_per_epoch
        self._rate = progress.StepRate(total_steps)
        directory = epath.Path(workdir)
        self._jsonl = directory / "metrics.jsonl"
        # Local files are appended line by line (a kill tears at most the last line); cloud
        # object stores (gs://) cannot append, so there the file is rewritten whole each time.
        self._append = "://" not in str(directory)
        self._lines: list[str] = []
        self._tensorboard = None
        self._bar = None
        self._wandb = None
        if self._is_writer:
            from tensorboardX import SummaryWriter

            self._lines = resume_jsonl(self._jsonl, initial_step)
            # A resumed run tells TensorBoard to drop what the killed run logged after the
            # restored step (it is logged again), so no step shows twice.
            purge = initial_step + 1 if initial_step > 0 else None
            self._tensorboard = SummaryWriter(str(directory / "tensorboard"), purge_step=purge)
            if config is not None:
                self._write_config(initial_step, config)
                self._wandb = maybe_wandb(workdir, config)
            self._bar = progress.progress_bar(total_steps, initial=initial_step, unit="step")

    def _write_config(self, step: int, config: ml_collections.ConfigDict) -> None:
        """The config as TensorBoard hparams (flattened: `optim.lr` ...) and as text."""
        from tensorboardX.summary import hparams

        file_writer = self._tensorboard._get_file_writer()
        for summary in hparams(hparam_values(config), dict.fromkeys(HPARAM_METRICS, 0.0)):
            file_writer.add_summary(summary, step)
        text = json.dumps(config.to_dict(), indent=2, default=str)
        # Indented lines are a preformatted block in TensorBoard's markdown text view.
        preformatted = "\n".join("    " + line for line in text.split("\n"))
        self._tensorboard.add_text("config", preformatted, step)
        self._tensorboard.flush()

    def write_images(self, step: int, images: np.ndarray) -> None:
        """A grid of the first few images of a host batch (uint8 NHWC, as the input pipeline
        yields them: normalization happens on device, so these are the pixels the model sees
        before it, after host augmentation)."""
        if not self._is_writer:
            return
        sample = np.asarray(images[:NUM_SAMPLE_IMAGES])
        if sample.shape[-1] == 1:  # grayscale: the grid wants RGB
            sample = np.repeat(sample, 3, axis=-1)
        self._tensorboard.add_images("train/images", sample, step, dataformats="NHWC")
        self._tensorboard.flush()

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        """Appends one JSON object per call: {"step": step, **metrics}."""
        if not self._is_writer:
            return
        self._rate.mark(step)
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        if self._append:
            with self._jsonl.open("a") as f:
                f.write(json.dumps(record) + "\n")
        else:
            self._lines.append(json.dumps(record))
            self._jsonl.write_text("".join(line + "\n" for line in self._lines))
        scalars = {k: v for k, v in record.items() if k != "step" and isinstance(v, int | float)}
        for name, value in scalars.items():
            self._tensorboard.add_scalar(name, value, step)
        self._tensorboard.flush()
        if self._wandb is not None:
            self._wandb.write(step, scalars)
        summary = ", ".join(f"{k} {_fmt(v)}" for k, v in record.items() if k != "step")
        if self._bar is not None:
            if self._steps_per_epoch:
                self._bar.set_description_str(self._epoch(step), refresh=False)
            self._bar.set_postfix_str(summary, refresh=False)
        else:
            logging.info("%s", self.log_line(step, summary))

    def log_line(self, step: int, summary: str) -> str:
        """`step S/T epoch E/N: <summary>, eta D` (epoch and ETA where known)."""
        head = f"step {step}/{self._total_steps}"
        if self._steps_per_epoch:
            head += " " + self._epoch(step)
        eta = self._rate.eta_seconds(step)
        tail = f", eta {progress.format_duration(eta)}" if eta is not None else ""
        return f"{head}: {summary}{tail}"

    def _epoch(self, step: int) -> str:
        epochs = self._total_steps / self._steps_per_epoch
        return f"epoch {step / self._steps_per_epoch:.2f}/{epochs:.4g}"

    def advance(self, step: int) -> None:
        if not self._rate.started:  # the first step after (re)start, compiled by now
            self._rate.mark(step)
        if self._bar is not None:
            self._bar.n = step
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.close()


def resume_jsonl(path: epath.Path, initial_step: int) -> list[str]:
    """The lines of metrics.jsonl a run restarting at `initial_step` keeps: those of steps up to
    it that parse (a line torn by a kill is dropped, with a warning). The file is rewritten
    (atomically) only if something was dropped, so a resumed run logs no step twice."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    kept, torn = [], 0
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            torn += 1
            continue
        if int(record.get("step", 0)) <= initial_step:
            kept.append(line)
    if torn:
        logging.warning("%s: dropped %d unreadable line(s) (a killed run's last write)", path, torn)
    if len(kept) != len(lines):
        partial = path.parent / f"{path.name}.tmp"
        partial.write_text("".join(line + "\n" for line in kept))
        partial.replace(path)
    return kept


def hparam_values(config: ml_collections.ConfigDict) -> dict[str, bool | int | float | str]:
    """The config flattened to dotted names; tuples and other values as strings, None dropped
    (the HParams dashboard takes numbers, strings and booleans only)."""
    flat: dict[str, bool | int | float | str] = {}

    def visit(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                visit(f"{prefix}.{key}" if prefix else str(key), value)
        elif node is not None:
            flat[prefix] = node if isinstance(node, bool | int | float | str) else str(node)

    visit("", config.to_dict())
    return flat


def _plain(value: Any) -> Any:
    try:
        return float(value) if not isinstance(value, str | int) else value
    except TypeError:
        return str(value)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
