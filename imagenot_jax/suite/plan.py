"""The suite's runs: what each stage trains, where, what it waits for, and how far it got.

Stages: `a` and `b` train every run of `suite.runs` on their dataset (a side with `table` set
trains nothing: a built-in result table such as `torchvision-imagenet1k` stands in for it);
`transfer` (optional `suite.transfer`) fine-tunes each run of side `transfer.of` on another
dataset with configs/transfer.py (argument `init=<pretrained>,dataset=<data>[,<arg>]`, then the
nested `overrides`), once that pretrained run is done. A run's id is
`<stage>/<name>`; it trains in `<workdir>/<stage's label>/<name>`.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ml_collections
from etils import epath

from imagenot_jax.data import datasets
from imagenot_jax.errors import UserError
from imagenot_jax.suite import claims

DONE = "suite_done.json"  # written last in a run's workdir: {"eval": <eval json path>, ...}
SIDES = ("a", "b")
TRANSFER = "transfer"
STAGES = (*SIDES, TRANSFER)

# Statuses, as --list prints them.
DONE_STATUS, RUNNING, PARTIAL, WAITING, NOT_STARTED = (
    "done", "running", "partial", "waiting", "not started",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of the suite; `config()` builds its run config (transfer runs: only once the
    pretrained run is done, since configs/transfer.py reads its config.json)."""

    stage: str
    name: str
    workdir: epath.Path
    config: Callable[[], ml_collections.ConfigDict]
    needs: Run | None = None  # the pretrained run of a transfer run

    @property
    def id(self) -> str:
        return f"{self.stage}/{self.name}"

    def done(self) -> bool:
        return (self.workdir / DONE).exists()

    def eval_path(self) -> str:
        return json.loads((self.workdir / DONE).read_text())["eval"]


def check_suite(suite: ml_collections.ConfigDict) -> None:
    """One-line errors for an ill-formed suite config."""
    stages = [s for s in STAGES if s in suite]
    for side in SIDES:
        if side not in suite:
            raise UserError(f"suite config: no side {side!r} (label, and data or table)")
        if not (suite[side].get("data") or suite[side].get("table")):
            raise UserError(f"suite.{side}: expected `data` (a dataset name) or `table`")
    labels = [suite[s].label for s in stages]
    if len(set(labels)) != len(labels) or "report" in labels:
        raise UserError(f"suite config: stage labels must be distinct and not 'report': {labels}")
    if suite.base not in suite.runs:
        raise UserError(f"suite.base={suite.base!r}: expected one of {', '.join(suite.runs)}")
    bad = [n for n in suite.runs if "/" in n or "," in n]
    if bad:
        raise UserError(f"suite.runs: names may not contain '/' or ',': {bad}")
    if TRANSFER in suite:
        of = suite.transfer.get("of", "b")
        if of not in SIDES or suite[of].get("table"):
            raise UserError(f"suite.transfer.of={of!r}: expected a side that trains (a or b)")


def _check_run_configs(runs: Iterable[Run]) -> None:
    """Every run's config validated before the first run trains (the device count's checks
    wait for the run itself): a bad field of the last run fails now, not hours later."""
    from imagenot_jax.train import validate  # here: the models' imports, for this check only

    for run in runs:
        try:
            validate.check_train_config(run.config(), num_devices=1)
        except UserError as e:
            raise UserError(f"suite.runs.{run.name}: {e}") from e


def _place(config: ml_collections.ConfigDict, data_dir: str | None, distributed: bool) -> None:
    if data_dir:
        config.data.data_dir = data_dir
    if distributed:  # every process of a multi-host slice runs the suite (docs/suite.md)
        config.mesh.distributed = True


def _side_config(
    base: ml_collections.ConfigDict,
    spec: datasets.DatasetSpec,
    data_dir: str | None,
    distributed: bool,
) -> Callable[[], ml_collections.ConfigDict]:
    def build() -> ml_collections.ConfigDict:
        # The run's own splits (slices included) and normalisation stay: the study trains each
        # architecture the same way on both datasets.
        config = ml_collections.ConfigDict(base.to_dict())
        config.data.name = spec.tfds_name
        _place(config, data_dir, distributed)
        return config

    return build


def _merge(config: ml_collections.ConfigDict, overrides: Any) -> None:
    """`overrides` (a nested dict: {"schedule": {"epochs": 5}}) written into `config`."""
    for key, value in overrides.items():
        nested = isinstance(value, (Mapping, ml_collections.ConfigDict))
        if nested and isinstance(config.get(key), ml_collections.ConfigDict):
            _merge(config[key], value)
        else:
            config[key] = value


def _transfer_config(
    transfer: ml_collections.ConfigDict,
    pretrained: epath.Path,
    data_dir: str | None,
    distributed: bool,
) -> Callable[[], ml_collections.ConfigDict]:
    def build() -> ml_collections.ConfigDict:
        from configs import transfer as transfer_recipe  # the documented fine-tuning recipe

        arg = ",".join(filter(None, [f"init={pretrained}", f"dataset={transfer.data}"]))
        arg = ",".join(filter(None, [arg, transfer.get("arg", "")]))
        config = transfer_recipe.get_config(arg)
        _merge(config, transfer.get("overrides") or {})
        _place(config, data_dir, distributed)
        return config

    return build


def plan_runs(
    suite: ml_collections.ConfigDict, root: epath.Path, data_dir: str | None
) -> list[Run]:
    """Every run of the suite, stage by stage, in the order of `suite.runs`."""
    check_suite(suite)
    distributed = bool(suite.get("distributed", False))
    runs: dict[str, Run] = {}
    for side in SIDES:
        if suite[side].get("table"):
            continue
        spec = datasets.get(suite[side].data)
        for name, base in suite.runs.items():
            workdir = root / suite[side].label / name
            build = _side_config(base, spec, data_dir, distributed)
            runs[f"{side}/{name}"] = Run(side, name, workdir, build)
    # Transfer runs' configs need their pretrained workdirs: checked when they start.
    _check_run_configs(runs.values())
    if TRANSFER in suite:
        transfer = suite.transfer
        datasets.get(transfer.data)  # an unknown name fails here, not after the pretraining
        for name in suite.runs:
            needs = runs[f"{transfer.get('of', 'b')}/{name}"]
            build = _transfer_config(transfer, needs.workdir, data_dir, distributed)
            workdir = root / transfer.label / name
            runs[f"{TRANSFER}/{name}"] = Run(TRANSFER, name, workdir, build, needs)
    return list(runs.values())


def select(runs: list[Run], only: Iterable[str] = (), stages: Iterable[str] = ()) -> list[Run]:
    """The runs `--only` (names or stage/name ids) and `--side` (stages) choose; all if empty."""
    only, stages = [o for o in only if o], [s for s in stages if s]
    for stage in stages:
        if stage not in {r.stage for r in runs}:
            known = sorted({r.stage for r in runs}, key=STAGES.index)
            raise UserError(f"--side={stage}: this suite's stages are {', '.join(known)}")
    for item in only:
        if not any(item in (r.name, r.id) for r in runs):
            ids = ", ".join(r.id for r in runs)
            raise UserError(f"--only={item}: no such run; the suite's runs are {ids}")
    return [
        r
        for r in runs
        if (not stages or r.stage in stages) and (not only or r.name in only or r.id in only)
    ]


def status(run: Run, timeout_s: float) -> tuple[str, str]:
    """(status, detail) of one run: done; running (a fresh claim); partial (checkpoints or a
    stale/released claim, nothing done); waiting (its pretrained run is not done); not started."""
    if run.done():
        return DONE_STATUS, ""
    claim = claims.current(run.workdir)
    if claim is not None and claim.is_fresh(timeout_s):
        return RUNNING, claim.describe()
    if claim is not None or (run.workdir / "checkpoints").exists():
        if claim is None:
            return PARTIAL, "checkpoints, no claim"
        return PARTIAL, f"{'released' if claim.released else 'stale'} claim: {claim.describe()}"
    if run.needs is not None and not run.needs.done():
        return WAITING, f"needs {run.needs.id}"
    return NOT_STARTED, ""


def listing(runs: Sequence[Run], command: Sequence[str], timeout_s: float) -> list[str]:
    """One tab-separated line per run: id, status (detail), and the command that runs it alone
    (`command` + `--only <id>`); `cut -f1` gives the ids (the SLURM script reads them so)."""
    lines = []
    for run in runs:
        state, detail = status(run, timeout_s)
        state = f"{state} ({detail})" if detail else state
        lines.append("\t".join([run.id, state, shlex.join([*command, f"--only={run.id}"])]))
    return lines


_SELECTING = ("list", "only", "side", "rank_only")


def strip_selection(argv: Sequence[str]) -> list[str]:
    """`argv` without the flags that choose what to do (--list, --only, --side, --rank_only), so
    that adding `--only=<id>` gives the command running one run of the same suite."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.lstrip("-").split("=", 1)[0]
        if arg.startswith("-") and (name in _SELECTING or name in {f"no{s}" for s in _SELECTING}):
            skip = "=" not in arg and name in ("only", "side")  # `--only X`: X follows
            continue
        out.append(arg)
    return out
