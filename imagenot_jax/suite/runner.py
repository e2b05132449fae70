"""The suite loop: claim a run nobody holds, train and evaluate it, repeat; rank when all are done.

Any number of processes (machines, SLURM tasks, TPU slices) may run the loop on one suite
directory at once: each run trains exactly once (see claims.py), a process that finds every
remaining run held or waiting stops, and whoever finds every run done writes the report.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import ml_collections
import numpy as np
from etils import epath

from imagenot_jax.data import data_dirs, datasets
from imagenot_jax.errors import UserError
from imagenot_jax.suite import claims
from imagenot_jax.suite.plan import DONE, SIDES, TRANSFER, Run, plan_runs, select, status


class RunStopped(RuntimeError):
    """Training returned before its last step: the trainer got SIGTERM (a preemption, a SLURM
    time limit), checkpointed and stopped. The run is not done; rerunning resumes it."""


def _steps(config: ml_collections.ConfigDict, workdir: epath.Path) -> tuple[int, int]:
    """(latest checkpoint step, the run's total steps) after training."""
    from imagenot_jax.train import checkpoint, trainer

    num_train, _ = trainer.num_examples_and_classes(config)
    # The trainer returns normally when SIGTERM stops it early: compare with its step count.
    _, total = trainer.step_counts(config, num_train)
    path = str(workdir) if "://" in str(workdir) else os.path.abspath(workdir)
    ckpt = checkpoint.Checkpointer(path, checkpoint.default_checkpoint_config(), read_only=True)
    try:
        return ckpt.latest_step() or 0, int(total)
    finally:
        ckpt.close()


def run_one(config: ml_collections.ConfigDict, workdir: epath.Path) -> tuple[epath.Path, bool]:
    """Trains (or resumes) and evaluates one run; returns its eval JSON and whether it ran.
    Raises RunStopped if training stopped early (SIGTERM): nothing is evaluated or marked done."""
    import jax

    from imagenot_jax.evaluate import evaluation
    from imagenot_jax.train import trainer

    done = workdir / DONE
    if done.exists():
        return epath.Path(json.loads(done.read_text())["eval"]), False
    start = time.perf_counter()
    trainer.train_and_evaluate(config, str(workdir))
    seconds = time.perf_counter() - start
    step, total = _steps(config, workdir)
    if step < total:
        raise RunStopped(f"{workdir} stopped at step {step} of {total}")
    result, path = evaluation.evaluate_checkpoint(str(workdir))
    print(evaluation.format_result(result))
    if jax.process_index() == 0:
        # Whole or absent, even if the process is killed while writing it: a torn record
        # would make the run look done yet unreadable.
        claims.replace_file(done, json.dumps({"eval": str(path), "train_seconds": seconds}) + "\n")
    return path, True


def run_configs(
    suite: ml_collections.ConfigDict, side: str, data_dir: str | None
) -> dict[str, ml_collections.ConfigDict]:
    """The run configs of one side (`a` or `b`), their data section pointed at its dataset."""
    runs = plan_runs(suite, epath.Path("."), data_dir)
    return {r.name: r.config() for r in runs if r.stage == side}


# --- multi-host: every process of a slice trains the same run ------------------------------


def agree_on_choice(choose: Any) -> int:
    """`choose()` (an index, -1 for none) called on process 0 only, the result broadcast to every
    process of a multi-host JAX program; so only process 0 claims, and all train the same run.
    One process: just `choose()`."""
    import jax

    if jax.process_count() == 1:
        return int(choose())
    from jax.experimental import multihost_utils

    index = int(choose()) if jax.process_index() == 0 else 0
    return int(multihost_utils.broadcast_one_to_all(np.int32(index)))


def _next_run(
    runs: Sequence[Run], attempted: set[str], timeout_s: float
) -> tuple[Run, claims.Claim] | None:
    """The first run that is not done, not waiting and not held, claimed (process 0 only)."""
    held: dict[str, claims.Claim] = {}

    def choose() -> int:
        for k, run in enumerate(runs):
            if run.id in attempted or run.done():
                continue
            if run.needs is not None and not run.needs.done():
                continue
            claim = claims.try_acquire(run.workdir, timeout_s)
            if claim is not None:
                held[run.id] = claim
                return k
        return -1

    index = agree_on_choice(choose)
    if index < 0:
        return None
    run = runs[index]
    return run, held.get(run.id)


def _prepare_datasets(suite: ml_collections.ConfigDict, data_dir: str | None) -> None:
    """Builds the project's own offline datasets (a no-op where built)."""
    names = [suite[s].data for s in SIDES if not suite[s].get("table")]
    names += [suite.transfer.data] if TRANSFER in suite else []
    for name in names:
        spec = datasets.get(name)
        if spec.builder:
            try:
                datasets.prepare_dataset(spec.tfds_name, data_dirs.resolve_data_dir(data_dir))
            except FileExistsError:  # TFDS's final rename: another process built it first
                print(f"suite: {spec.tfds_name} was built by another process")


def run_suite(
    suite: ml_collections.ConfigDict,
    workdir: str,
    data_dir: str | None = None,
    *,
    only: Iterable[str] = (),
    stages: Iterable[str] = (),
    claim_timeout: float = claims.DEFAULT_TIMEOUT_S,
) -> dict[str, Any] | None:
    """Trains the chosen runs (all by default) that nobody else holds, skipping finished ones;
    then, if every run of the suite is done, the rankings. Returns the main comparison's
    ranking.json content, or None while runs are pending."""
    import jax

    root = epath.Path(workdir)
    runs = plan_runs(suite, root, data_dir)
    chosen = select(runs, only, stages)
    _prepare_datasets(suite, data_dir)
    if suite.get("distributed", False):  # before the hosts agree on a run (once per process)
        from imagenot_jax.train import sharding

        mesh = ml_collections.ConfigDict(next(iter(suite.runs.values())).mesh.to_dict())
        mesh.distributed = True
        sharding.initialize_distributed(mesh)
    done_before = sum(r.done() for r in chosen)
    trained, attempted = 0, set()
    while (picked := _next_run(chosen, attempted, claim_timeout)) is not None:
        run, claim = picked
        attempted.add(run.id)
        print(f"suite: {run.id} ({run.workdir})")
        try:
            if claim is None:  # processes other than 0 of a slice
                trained += run_one(run.config(), run.workdir)[1]
                continue
            with claim:  # released on the way out, whatever happens: claimable at once
                trained += run_one(run.config(), run.workdir)[1]
        except RunStopped:  # the machine is going away: take no further run
            print(f"suite: {run.id} stopped early (SIGTERM); the next suite process resumes it")
            raise
    print(f"suite: {trained} runs trained, {done_before} already done")
    pending = [r for r in runs if not r.done()]
    if pending:
        lines = [f"  {r.id}: {' '.join(status(r, claim_timeout))}" for r in pending]
        print(f"suite: {len(pending)} runs not done yet; the report waits for them:")
        print("\n".join(lines))
        return None
    if jax.process_index() != 0:
        return None
    return write_reports(suite, root, runs, claim_timeout=claim_timeout)


# --- the rankings ----------------------------------------------------------------------------


def _result_set(suite: ml_collections.ConfigDict, stage: str, runs: Sequence[Run]) -> Any:
    from imagenot_jax.rank import ranking

    if stage in SIDES and suite[stage].get("table"):
        return ranking.load_result_set(suite[stage].table)
    done = [f"{r.name}={r.eval_path()}" for r in runs if r.stage == stage and r.done()]
    return ranking.load_result_set(done) if done else None


def comparisons(suite: ml_collections.ConfigDict) -> list[tuple[str, str, str]]:
    """(stage a, stage b, report directory name) of each ranking the suite writes: the two
    sides in report/; the transfer stage against its pretrained side in report_<label>/."""
    pairs = [("a", "b", "report")]
    if TRANSFER in suite:
        pairs.append((suite.transfer.get("of", "b"), TRANSFER, f"report_{suite.transfer.label}"))
    return pairs


def _missing(runs: Sequence[Run], stages: Iterable[str]) -> list[str]:
    return [r.id for r in runs if r.stage in stages and not r.done()]


def write_reports(
    suite: ml_collections.ConfigDict,
    root: epath.Path,
    runs: Sequence[Run],
    *,
    partial: bool = False,
    claim_timeout: float = claims.DEFAULT_TIMEOUT_S,
) -> dict[str, Any] | None:
    """Each comparison's report from the finished runs (`partial`: whatever is finished, noting
    what is missing). Returns the main report's content (None if it was not written). A report
    another process is writing is left to it."""
    from imagenot_jax.rank import ranking, report

    written: dict[str, dict] = {}
    skipped = []
    for stage_a, stage_b, name in comparisons(suite):
        missing = _missing(runs, (stage_a, stage_b))
        sets = [_result_set(suite, s, runs) for s in (stage_a, stage_b)]
        if None in sets:
            skipped.append(f"{name}: nothing done on one side yet")
            continue
        common = [n for n in sets[0].models if n in sets[1].models]
        if len(common) < 3 or suite.base not in common:
            skipped.append(f"{name}: {len(common)} model(s) done on both sides ({common})")
            continue
        claim = claims.try_acquire(root / name, claim_timeout)
        if claim is None:
            print(f"suite: {root / name} is being written by another process")
            continue
        with claim:
            summary = ranking.compare(
                *sets,
                str(root / name),
                base=suite.base,
                bootstrap=suite.bootstrap,
                a_label=suite[stage_a].label,
                b_label=suite[stage_b].label,
            )
        written[name] = summary
        print(report.format_summary(summary))
        note = f" (without {', '.join(missing)}: not done)" if missing else ""
        print(f"suite: report in {root / name}{note}")
    if partial and not written and skipped:
        done = [r.id for r in runs if r.done()]
        raise UserError(
            f"no report: comparing rankings needs {suite.base!r} and at least 3 models done on "
            f"both sides ({'; '.join(skipped)}); done: {', '.join(done) or 'none'}; missing: "
            f"{', '.join(r.id for r in runs if not r.done())}"
        )
    for line in skipped:
        print(f"suite: no report {line}")
    return written.get("report")


def rank_only(
    suite: ml_collections.ConfigDict,
    workdir: str,
    data_dir: str | None = None,
    *,
    claim_timeout: float = claims.DEFAULT_TIMEOUT_S,
) -> dict[str, Any] | None:
    """The reports from whatever runs are finished, saying which are missing; trains nothing."""
    root = epath.Path(workdir)
    runs = plan_runs(suite, root, data_dir)
    missing = [r.id for r in runs if not r.done()]
    if missing:
        print(f"suite: {len(missing)} of {len(runs)} runs not done: {', '.join(missing)}")
    return write_reports(suite, root, runs, partial=True, claim_timeout=claim_timeout)
