"""Orbax checkpoints of the train state and the grain iterator state, together (the run's
config is the workdir's config.json, written once by the trainer).

Keeps the latest `keep` checkpoints plus the best one by validation top-1. Saving is async for
the arrays (training continues while they are written); a checkpoint directory only becomes
visible once complete, so a process killed mid-save leaves the previous one intact.
"""

from __future__ import annotations

from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies

_STATE, _DATA = "state", "data"


def default_checkpoint_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.every_steps = 1000  # also at the end of every epoch and of training
    config.keep = 3  # latest checkpoints kept (plus the best by validation top-1)
    config.async_save = True
    return config


def checkpoints_directory(workdir: str | epath.Path) -> epath.Path:
    """Where a workdir's checkpoints live."""
    return epath.Path(workdir) / "checkpoints"


class Checkpointer:
    """One workdir's checkpoints: `workdir/checkpoints/<step>/{state,data}`."""

    def __init__(self, workdir: str, cfg: ml_collections.ConfigDict, *, read_only: bool = False):
        policy = policies.AnyPreservationPolicy(
            [
                policies.LatestN(n=cfg.keep),
                policies.BestN(
                    get_metric_fn=lambda metrics: metrics["top1"],
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        self.directory = checkpoints_directory(workdir)
        self._manager = ocp.CheckpointManager(
            self.directory,
            item_handlers={
                _STATE: ocp.StandardCheckpointHandler(),
                _DATA: grain.checkpoint.CheckpointHandler(),
            },
            options=ocp.CheckpointManagerOptions(
                preservation_policy=policy,
                enable_async_checkpointing=cfg.async_save,
                read_only=read_only,
                create=not read_only,
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(
        self,
        step: int,
        state: Any,
        data_iterator: Any | None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        args = {_STATE: ocp.args.StandardSave(state)}
        if data_iterator is not None:  # None: weights only (converted torchvision weights)
            args[_DATA] = grain.checkpoint.CheckpointSave(data_iterator)
        self._manager.save(step, args=ocp.args.Composite(**args), metrics=metrics, force=True)

    def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None) -> Any:
        """The state at `step` (placed per the shardings in `abstract_state`); the iterator, if
        given, is set to its saved position."""
        args = {_STATE: ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            args[_DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self._manager.restore(step, args=ocp.args.Composite(**args))[_STATE]

    def state_directory(self, step: int) -> epath.Path:
        """Where the train state of `step` lies (for reading parts of it, as transfer does)."""
        return self.directory / str(step) / _STATE

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def abstract_with_shardings(state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the target shardings, for restoring straight onto devices."""
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        state,
        shardings,
    )
