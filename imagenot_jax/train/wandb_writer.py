"""Optional Weights & Biases logging (`logging.wandb=True`), next to TensorBoard.

The run id is kept in WORKDIR/wandb_run_id, so a resumed training run (same workdir) logs into
the same W&B run. wandb is imported only when enabled: it is not a dependency of training.
"""

from __future__ import annotations

import sys
import types

import ml_collections
from etils import epath

from imagenot_jax.errors import UserError

RUN_ID_FILE = "wandb_run_id"
STEP_KEY = "train_step"  # the x-axis of every metric (see WandbWriter.__init__)
MODES = ("online", "offline", "disabled", "shared")


def import_wandb() -> types.ModuleType:
    """The wandb module, or a UserError saying how to install it."""
    try:
        import wandb
    except ImportError:
        raise UserError("logging.wandb=True needs the wandb package: pip install wandb") from None
    return wandb


class WandbWriter:
    """One W&B run per workdir; scalars logged against the training step."""

    def __init__(self, workdir: str, config: ml_collections.ConfigDict) -> None:
        wandb = import_wandb()
        cfg = config.logging
        mode = cfg.get("wandb_mode")
        if mode is not None and mode not in MODES:
            raise UserError(f"logging.wandb_mode={mode!r}: expected one of {MODES} or None")
        directory = epath.Path(workdir)
        id_file = directory / RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.exists() else None  # None: a new run
        try:
            self._run = wandb.init(
                project=cfg.get("wandb_project") or "imagenot_jax",
                entity=cfg.get("wandb_entity"),
                name=cfg.get("wandb_name") or directory.name,
                mode=mode,  # None: wandb's default (WANDB_MODE, login state)
                id=run_id,
                resume="allow",
            )
        except wandb.errors.UsageError as e:  # not logged in, no entity, ...
            raise UserError(
                f"logging.wandb: {e} (`wandb login`, or logging.wandb_mode=offline)"
            ) from None
        # A resumed run may change fields (e.g. schedule.num_steps extended): the latest wins.
        self._run.config.update(config.to_dict(), allow_val_change=True)
        # W&B's own step must only grow, but a run resumed from its last checkpoint logs steps
        # again that it had logged before being stopped: plot against our step instead.
        self._run.define_metric(STEP_KEY)
        self._run.define_metric("*", step_metric=STEP_KEY)
        if run_id is None:
            id_file.write_text(self._run.id + "\n")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        self._run.log({STEP_KEY: int(step), **scalars})

    def close(self) -> None:
        # Called from the trainer's `finally`: an exception on its way out marks the run failed.
        self._run.finish(exit_code=1 if sys.exc_info()[0] is not None else 0)


def maybe_wandb(workdir: str, config: ml_collections.ConfigDict) -> WandbWriter | None:
    """A WandbWriter when the config enables W&B (call on process 0 only), else None."""
    if not config.logging.get("wandb"):
        return None
    return WandbWriter(workdir, config)
