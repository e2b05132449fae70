"""`make demo`: build the embedded default data, train on it, evaluate the final checkpoint,
then run the ImageNot experiment in miniature (configs/suites/fashion_halves.py: six
architectures on two disjoint-class halves of Fashion-MNIST, ranked against each other).

    python -m imagenot_jax.demo --config configs/demo.py --workdir .data/demo \
        [--suite configs/suites/fashion_halves.py --suite_workdir .data/suite | --norun_suite] \
        [--data_dir DIR] [--config.schedule.epochs=2 ...]

Idempotent: the datasets are built once, and finished workdirs are not trained again
(interrupted ones resume).
"""

from __future__ import annotations

import time

from absl import app, flags
from ml_collections import config_flags

from imagenot_jax import config_files, suite
from imagenot_jax.cli import (
    define_compilation_cache_flag,
    define_path_flag,
    run_command,
    run_user_command,
)
from imagenot_jax.data import data_dirs
from imagenot_jax.data.datasets import prepare_dataset
from imagenot_jax.evaluate import evaluation
from imagenot_jax.train import trainer

# Defaults resolved to the packaged files: the demo runs from any directory, installed or not.
_CONFIG = config_flags.DEFINE_config_file(
    "config", config_files.resolve("demo"), "Demo config file."
)
_WORKDIR = define_path_flag("workdir", ".data/demo", "Training workdir.")
_SUITE = config_flags.DEFINE_config_file(
    "suite", config_files.resolve("suites/fashion_halves"), "Suite run after the single-model demo."
)
_SUITE_WORKDIR = define_path_flag("suite_workdir", ".data/suite", "The suite's directory.")
_RUN_SUITE = flags.DEFINE_boolean("run_suite", True, "Run the suite after the demo.")
_DATA_DIR = define_path_flag("data_dir", None, data_dirs.DATA_DIR_RULE)
_MANUAL_DIR = define_path_flag(
    "manual_dir", None, "Source files for the builder (default: the builder's own default)."
)
_COMPILATION_CACHE = define_compilation_cache_flag()


def print_result(result: dict, train_seconds: float) -> None:
    low, high = result["top1_ci95"]
    rows = [
        ("model", result["model"]),
        ("dataset", f"{result['dataset']} {result['split']} (n={result['n']})"),
        ("checkpoint step", str(result["step"])),
        ("top-1", f"{100 * result['top1']:.2f}%  (95% CI {100 * low:.2f}-{100 * high:.2f})"),
        ("top-5", f"{100 * result['top5']:.2f}%"),
        ("mean per-class recall", f"{100 * result['mean_per_class_recall']:.2f}%"),
        ("training time", f"{train_seconds:.0f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n" + "\n".join(f"  {name:<{width}}  {value}" for name, value in rows))


def run(config, workdir: str, data_dir: str | None, manual_dir: str | None) -> None:
    data_dir = data_dirs.resolve_data_dir(data_dir)
    config.data.data_dir = data_dir
    prepare_dataset(config.data.name, data_dir, manual_dir)
    start = time.perf_counter()
    trainer.train_and_evaluate(config, workdir)
    train_seconds = time.perf_counter() - start
    result, path = evaluation.evaluate_checkpoint(workdir)
    print_result(result, train_seconds)
    print(f"\nwrote {path}")


def main(argv: list[str]) -> None:
    data_dir = _DATA_DIR.value  # None: the default rule, resolved (and logged) in run()
    config, workdir, manual_dir = _CONFIG.value, _WORKDIR.value, _MANUAL_DIR.value
    # The cache also lets the suite's runs share programs.
    cache = _COMPILATION_CACHE.value
    run_command(argv, run, config, workdir, data_dir, manual_dir, compilation_cache=cache)
    if _RUN_SUITE.value:
        start = time.perf_counter()
        run_user_command(suite.run_suite, _SUITE.value, _SUITE_WORKDIR.value, data_dir)
        print(f"suite: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    app.run(main, flags_parser=config_files.flags_parser("config", "suite"))
