"""Orbax checkpoints of the train state and the grain iterator state, together (the run's
config is the workdir's config.json, written once by the trainer).

Keeps the latest `keep` checkpoints plus the best one by validation top-1. Saving is async for
the arrays (training continues while they are written); a checkpoint directory only becomes
visible once complete, so a process killed mid-save leaves the previous one intact.
"""

from __future__ import annotations

import json
import re
from typing import Any

import flax
import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
import tensorstore as ts
from absl import logging
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies

from imagenot_jax.errors import UserError

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

    def latest_intact_step(self) -> int:
        """The latest step whose files read back, for resuming. A damaged later step (a disk
        filled or a file torn after its save was committed) gets one warning and is renamed
        `<step>.damaged`, out of the way of the save that will redo it."""
        problems = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                self.verify(step)
                break
            except DamagedCheckpointError as error:
                logging.warning("%s; resuming from the previous checkpoint", error)
                problems.append(str(error))
                path = self.directory / str(step)
                path.rename(path.parent / f"{step}.damaged")
        else:
            raise UserError(f"no intact checkpoint in {self.directory}: {'; '.join(problems)}")
        if problems:
            self._manager.reload()
        return step

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

    def restore_weights(self, step: int, abstract_state: Any) -> Any:
        """The state at `step` without its optimizer state (None): what evaluation needs, at
        a fraction of the memory (Adam's moments alone are twice the parameters). The
        optimizer state's arrays are not read at all."""
        wanted = flax.serialization.to_state_dict(abstract_state)
        del wanted["opt_state"]
        restored = ocp.PyTreeCheckpointer().restore(
            self.state_directory(step),
            args=ocp.args.PyTreeRestore(
                item=wanted,
                restore_args=ocp.checkpoint_utils.construct_restore_args(wanted),
                partial_restore=True,
            ),
        )
        return flax.serialization.from_state_dict(
            abstract_state.replace(opt_state=None), {**restored, "opt_state": None}
        )

    def verify(self, step: int, *, skip: tuple[str, ...] = (), data: bool = True) -> None:
        """Raise DamagedCheckpointError if the files of `step` cannot be read back.

        Reads every stored array chunk (except those under the `skip` prefixes) before orbax
        does: orbax's concurrent reads, when one fails, spray the terminal with tracebacks of
        its other reads, and cannot tell which file was bad. A checkpoint that reads back but
        does not fit the config (another model) passes here and fails in `restore`, as a bug
        or config error, not as damage."""
        step_dir = self.directory / str(step)
        verify_step(step, step_dir / _STATE, step_dir / _DATA if data else None, skip)

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


class DamagedCheckpointError(UserError):
    """A checkpoint's files are truncated, garbled or missing."""

    def __init__(self, step: int, file: str, problem: str):
        super().__init__(f"checkpoint step {step} is damaged: {file}: {problem}")
        self.step, self.file, self.problem = step, file, problem


# Tensorstore's status codes for bytes that are not what was written (checksums, sizes,
# missing files); other codes (e.g. INVALID_ARGUMENT) stay internal errors with traceback.
_DAMAGE_CODES = ("DATA_LOSS", "OUT_OF_RANGE", "NOT_FOUND", "FAILED_PRECONDITION")
_LOCAL_FILE = re.compile(r'local file "([^"]+)"')


def verify_step(
    step: int, state_dir: epath.Path, data_dir: epath.Path | None, skip: tuple[str, ...] = ()
) -> None:
    """Read every file of one checkpoint; DamagedCheckpointError names the first bad one."""
    for path in (state_dir / "_METADATA", *([data_dir] if data_dir is not None else [])):
        if path.is_dir():  # the grain iterator's state: one JSON file per process
            for file in path.glob("process_*.json"):
                _check_json(step, file)
        else:
            _check_json(step, path)
    try:
        store = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{state_dir}/"}).result()
        for key in store.list().result():
            if not key.decode().startswith(skip):
                store.read(key).result()
    except ValueError as error:
        message = str(error)
        if not message.startswith(_DAMAGE_CODES):
            raise
        files = list(_LOCAL_FILE.finditer(message))
        if not files:
            raise DamagedCheckpointError(step, str(state_dir), message) from None
        problem = message[files[-1].end() :].lstrip(": ")
        raise DamagedCheckpointError(step, files[-1].group(1), problem) from None


def _check_json(step: int, path: epath.Path) -> None:
    if not path.exists():
        raise DamagedCheckpointError(step, str(path), "missing")
    try:
        json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DamagedCheckpointError(step, str(path), f"not valid JSON ({error})") from None
