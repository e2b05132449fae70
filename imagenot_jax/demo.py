"""`make demo`: build the embedded default data, train on it, evaluate the final checkpoint.

    python -m imagenot_jax.demo --config configs/demo.py --workdir .data/demo \
        [--data_dir DIR] [--config.schedule.epochs=2 ...]

Idempotent: the dataset is built once, and a finished workdir is not trained again (an
interrupted one resumes). Later stages (ranking) extend this demo.
"""

from __future__ import annotations

import time

from absl import app, flags
from ml_collections import config_flags

from imagenot_jax import evaluate, input_pipeline, train
from imagenot_jax.cli import quiet_library_logs, run_user_command

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Demo config file.")
_WORKDIR = flags.DEFINE_string("workdir", ".data/demo", "Training workdir.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)."
)
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Source files for the builder (default: the builder's own default)."
)


def prepare_dataset(name: str, data_dir: str, manual_dir: str | None = None) -> dict[str, int]:
    """Builds the project's TFDS dataset `name` as ArrayRecord unless already built."""
    import tensorflow_datasets as tfds

    import tfds_imagenot.fashion_mnist_local  # noqa: F401  (registers the builder)

    builder = tfds.builder(name, data_dir=data_dir)
    start = time.perf_counter()
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
    )
    sizes = {split: info.num_examples for split, info in builder.info.splits.items()}
    print(f"dataset {name}: {sizes} in {builder.data_dir} ({time.perf_counter() - start:.1f} s)")
    return sizes


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


def run(config, workdir: str, data_dir: str, manual_dir: str | None) -> None:
    config.data.data_dir = data_dir
    prepare_dataset(config.data.name, data_dir, manual_dir)
    start = time.perf_counter()
    train.train_and_evaluate(config, workdir)
    train_seconds = time.perf_counter() - start
    result, path = evaluate.evaluate_checkpoint(workdir)
    print_result(result, train_seconds)
    print(f"\nwrote {path}")


def main(argv: list[str]) -> None:
    del argv
    data_dir = _DATA_DIR.value or input_pipeline.default_data_dir()
    quiet_library_logs()
    run_user_command(run, _CONFIG.value, _WORKDIR.value, data_dir, _MANUAL_DIR.value)


if __name__ == "__main__":
    app.run(main)
