"""`python -m imagenot_jax.suite`: see the package docstring and docs/suite.md."""

from __future__ import annotations

import sys

from absl import app, flags
from etils import epath
from ml_collections import config_flags

from imagenot_jax.cli import define_compilation_cache_flag, define_path_flag, run_command
from imagenot_jax.data import data_dirs
from imagenot_jax.suite import claims, plan, runner


def define_flags() -> None:
    config_flags.DEFINE_config_file("suite", None, "Suite config file.", lock_config=True)
    define_path_flag("workdir", None, "Suite directory: one workdir per run, and report/.")
    define_path_flag("data_dir", None, data_dirs.DATA_DIR_RULE)
    flags.DEFINE_list("only", [], "Run just these runs: names (every stage) or stage/name ids.")
    flags.DEFINE_list("side", [], "Run just these stages: a, b, transfer.")
    flags.DEFINE_boolean(
        "list", False, "Print each run's id, status and command (tab-separated); train nothing."
    )
    flags.DEFINE_boolean(
        "rank_only", False, "Write the reports from the finished runs, saying what is missing."
    )
    flags.DEFINE_float(
        "claim_timeout",
        claims.DEFAULT_TIMEOUT_S,
        "Seconds without a heartbeat after which another process may take a claimed run over.",
    )
    define_compilation_cache_flag()
    flags.mark_flags_as_required(["suite", "workdir"])


def _list(suite, workdir: str, data_dir: str | None, only, side, timeout: float) -> None:
    runs = plan.select(plan.plan_runs(suite, epath.Path(workdir), data_dir), only, side)
    command = ["python", "-m", "imagenot_jax.suite", *plan.strip_selection(sys.argv[1:])]
    print("\n".join(plan.listing(runs, command, timeout)))


def main(argv: list[str]) -> None:
    o = flags.FLAGS
    if o.list:
        run_command(argv, _list, o.suite, o.workdir, o.data_dir, o.only, o.side, o.claim_timeout)
    elif o.rank_only:
        run_command(
            argv, runner.rank_only, o.suite, o.workdir, o.data_dir, claim_timeout=o.claim_timeout
        )
    else:
        try:
            run_command(
                argv,
                runner.run_suite,
                o.suite,
                o.workdir,
                o.data_dir,
                only=o.only,
                stages=o.side,
                claim_timeout=o.claim_timeout,
                compilation_cache=o.compilation_cache,
            )
        except runner.RunStopped as e:  # not a failure: exit 3 so schedulers see it unfinished
            print(f"suite: stopped: {e}", file=sys.stderr)
            sys.exit(3)


if __name__ == "__main__":
    from imagenot_jax import config_files

    define_flags()
    app.run(main, flags_parser=config_files.flags_parser("suite"))
