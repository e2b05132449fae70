"""Train a fixed list of models on two datasets, evaluate each, and compare the rankings.

    python -m imagenot_jax.suite --suite configs/suites/fashion_halves.py --workdir DIR \
        [--data_dir D] [--suite.runs.resnet18.schedule.epochs=3 ...]

The suite config names the two datasets (`a`, `b`: names registered in
imagenot_jax/data/datasets.py), the runs (one full run config each, its data section filled in per
dataset) and the ranking's base model. Every run trains in
`DIR/<a|b label>/<run>`, is evaluated from its final checkpoint, and is marked done; a rerun
skips finished runs and resumes interrupted ones, so the suite is resumable at any point.
The comparison (`imagenot_jax.rank`) goes to `DIR/report/`.
"""

from __future__ import annotations

import json
import time
from typing import Any

import ml_collections
from absl import app, flags
from etils import epath
from ml_collections import config_flags

from imagenot_jax.cli import define_compilation_cache_flag, run_command
from imagenot_jax.data import datasets, input_pipeline
from imagenot_jax.evaluate import evaluation
from imagenot_jax.train import trainer

_DONE = "suite_done.json"  # written last in a run's workdir: {"eval": <eval json path>, ...}


def run_one(config: ml_collections.ConfigDict, workdir: epath.Path) -> tuple[epath.Path, bool]:
    """Trains (or resumes) and evaluates one run; returns its eval JSON and whether it ran."""
    done = workdir / _DONE
    if done.exists():
        return epath.Path(json.loads(done.read_text())["eval"]), False
    start = time.perf_counter()
    trainer.train_and_evaluate(config, str(workdir))
    seconds = time.perf_counter() - start
    result, path = evaluation.evaluate_checkpoint(str(workdir))
    print(evaluation.format_result(result))
    done.write_text(json.dumps({"eval": str(path), "train_seconds": seconds}) + "\n")
    return path, True


def run_configs(
    suite: ml_collections.ConfigDict, side: str, data_dir: str | None
) -> dict[str, ml_collections.ConfigDict]:
    """The runs of one side (`a` or `b`), their data section pointed at that side's dataset
    (the runs' own splits, slices included, and normalisation stay)."""
    spec = datasets.get(suite[side].data)
    runs = {}
    for name, base in suite.runs.items():
        config = ml_collections.ConfigDict(base.to_dict())
        config.data.name = spec.tfds_name
        if data_dir:
            config.data.data_dir = data_dir
        runs[name] = config
    return runs


def run_suite(
    suite: ml_collections.ConfigDict, workdir: str, data_dir: str | None = None
) -> dict[str, Any]:
    """Every run on both datasets (skipping finished ones), then the ranking comparison."""
    root = epath.Path(workdir)
    for side in ("a", "b"):  # builds the project's own offline datasets; a no-op where built
        spec = datasets.get(suite[side].data)
        if spec.builder:
            datasets.prepare_dataset(spec.tfds_name, data_dir or input_pipeline.default_data_dir())
    evals: dict[str, list[str]] = {}
    trained = 0
    for side in ("a", "b"):
        label = suite[side].label
        evals[side] = []
        for name, config in run_configs(suite, side, data_dir).items():
            print(f"suite: {name} on {suite[side].data}")
            path, ran = run_one(config, root / label / name)
            evals[side].append(f"{name}={path}")
            trained += ran
    # matplotlib & co., needed only now
    from imagenot_jax.rank import ranking, report

    summary = ranking.compare(
        ranking.load_result_set(evals["a"]),
        ranking.load_result_set(evals["b"]),
        str(root / "report"),
        base=suite.base,
        bootstrap=suite.bootstrap,
        a_label=suite.a.label,
        b_label=suite.b.label,
    )
    print(f"suite: {trained} runs trained, {2 * len(suite.runs) - trained} already done")
    print(report.format_summary(summary))
    print(f"suite: report in {root / 'report'}")
    return summary


# --- command line ---------------------------------------------------------------------------


def define_flags() -> None:
    config_flags.DEFINE_config_file("suite", None, "Suite config file.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Suite directory: one workdir per run, and report/.")
    flags.DEFINE_string("data_dir", None, "TFDS data dir (default: $TFDS_DATA_DIR).")
    define_compilation_cache_flag()
    flags.mark_flags_as_required(["suite", "workdir"])


def main(argv: list[str]) -> None:
    options = flags.FLAGS
    run_command(
        argv,
        run_suite,
        options.suite,
        options.workdir,
        options.data_dir,
        compilation_cache=options.compilation_cache,
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
