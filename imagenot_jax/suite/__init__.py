"""Train a fixed list of models on two datasets, evaluate each, and compare the rankings; on one
machine or many.

    python -m imagenot_jax.suite --suite configs/suites/fashion_halves.py --workdir DIR \
        [--data_dir D] [--only NAME,...] [--side a|b|transfer] [--list] [--rank_only] \
        [--claim_timeout SECONDS] [--suite.runs.resnet18.schedule.epochs=3 ...]

The suite config names the two datasets (`a`, `b`: names registered in
imagenot_jax/data/datasets.py, or `table`: a built-in result table standing in for a side), the
runs (one full run config each, its data section filled in per dataset), the ranking's base
model, and optionally a `transfer` stage (each run of one side fine-tuned on another dataset).
Every run trains in `DIR/<stage label>/<run>`, is evaluated from its final checkpoint, and is
marked done; a rerun skips finished runs and resumes interrupted ones. Processes that share DIR
(other machines included) split the runs between them through claims (claims.py). The
comparisons (`imagenot_jax.rank`) go to `DIR/report/` (and `DIR/report_<transfer label>/`).
docs/suite.md: running a suite on many machines.
"""

from imagenot_jax.suite.claims import Claim, ClaimInfo, try_acquire
from imagenot_jax.suite.plan import Run, plan_runs, select, status
from imagenot_jax.suite.runner import (
    agree_on_choice,
    rank_only,
    run_configs,
    run_one,
    run_suite,
    write_reports,
)

__all__ = [
    "Claim",
    "ClaimInfo",
    "Run",
    "agree_on_choice",
    "plan_runs",
    "rank_only",
    "run_configs",
    "run_one",
    "run_suite",
    "select",
    "status",
    "try_acquire",
    "write_reports",
]
