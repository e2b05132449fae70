"""Evaluate a checkpoint on any prepared TFDS dataset with the run's eval transform.

    python -m imagenot_jax.evaluate --workdir DIR [--step S] [--dataset NAME[/CONFIG]]
        [--split SPLIT] [--data_dir D] [--batch_size B] [--noema]

Writes DIR/eval/<dataset>-<split>-<step>.json (top-1, top-5, loss, n, per-class recall, mean
per-class recall, a Clopper-Pearson 95% interval on top-1, step, model, dataset name/version)
and, beside it, <...>.examples.npz with per-example key, label, top-5 and correctness: what the
ranking stage bootstraps over. Every example is counted exactly once across devices/processes.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags
from etils import epath
from scipy import stats

from imagenot_jax import checkpoint, input_pipeline, sharding, train
from imagenot_jax.cli import quiet_library_logs, run_user_command


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; --workdir must be a training workdir")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for a proportion."""
    alpha = 1.0 - level
    low = stats.beta.ppf(alpha / 2, successes, trials - successes + 1) if successes else 0.0
    high = (
        stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes)
        if successes < trials
        else 1.0
    )
    return float(low), float(high)


def per_class_recall(labels: np.ndarray, top1: np.ndarray, num_classes: int) -> list[float | None]:
    """Recall of every class (None where the split has no example of it)."""
    totals = np.bincount(labels, minlength=num_classes)
    hits = np.bincount(labels[top1 == labels], minlength=num_classes)
    return [float(h / t) if t else None for h, t in zip(hits, totals, strict=True)]


def metrics_from_predictions(predictions: dict[str, np.ndarray], num_classes: int) -> dict:
    summary = train.summarize(predictions)
    labels, top1 = predictions["label"], predictions["top5"][:, 0]
    recall = per_class_recall(labels, top1, num_classes)
    present = [r for r in recall if r is not None]
    correct = int(np.sum(top1 == labels))
    return {
        **summary,
        "correct": correct,
        "top1_ci95": clopper_pearson(correct, summary["n"]),
        "mean_per_class_recall": float(np.mean(present)) if present else float("nan"),
        "per_class_recall": recall,
    }


def _keys(config: ml_collections.ConfigDict, split: str, indices: np.ndarray) -> np.ndarray:
    source = input_pipeline.open_source(config.data.name, split, config.data.get("data_dir"))
    if "key" not in source.dataset_info.features:
        return np.array([f"{split}:{i}" for i in indices])
    return np.array([bytes(source[int(i)]["key"]).decode() for i in indices])


def evaluate_checkpoint(
    workdir: str,
    *,
    step: int | None = None,
    dataset: str | None = None,
    split: str | None = None,
    data_dir: str | None = None,
    batch_size: int | None = None,
    use_ema: bool = True,
) -> tuple[dict[str, Any], epath.Path]:
    """Evaluates one checkpoint; returns the metrics and the path of the JSON written."""
    config = load_run_config(workdir)
    sharding.initialize_distributed(config.mesh)
    if dataset:
        config.data.name = dataset
    if data_dir:
        config.data.data_dir = data_dir
    if batch_size:
        config.input.eval_batch_size = batch_size
    split = split or config.data.eval_split
    mesh = sharding.make_mesh()
    # The optimizer's shape does not depend on the epoch length: one step per epoch will do.
    setup = train.make_setup(config, mesh, num_train_examples=config.input.global_batch_size)
    checkpointer = checkpoint.Checkpointer(workdir, config.checkpoint, read_only=True)
    step = step if step is not None else checkpointer.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {checkpointer.directory}")
    abstract = checkpoint.abstract_with_shardings(setup.abstract_state, setup.state_shardings)
    state = checkpointer.restore(step, abstract)
    checkpointer.close()
    used_ema = use_ema and state.ema is not None
    if not used_ema:
        state = state.replace(ema=None)
    predictions = train.predict_split(train.make_eval_step(setup), setup, state, config, split)
    builder_info = input_pipeline.open_source(
        config.data.name, split, config.data.get("data_dir")
    ).dataset_info
    result = {
        **metrics_from_predictions(predictions, config.model.num_classes),
        "step": int(step),
        "model": config.model.name,
        "dataset": config.data.name,
        "dataset_version": str(builder_info.version),
        "split": split,
        "ema": used_ema,
        "workdir": str(workdir),
    }
    out = epath.Path(workdir) / "eval" / f"{config.data.name.replace('/', '_')}-{split}-{step}"
    if jax.process_index() == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        with (out.parent / f"{out.name}.examples.npz").open("wb") as f:
            np.savez_compressed(
                f,
                key=_keys(config, split, predictions["index"]),
                label=predictions["label"],
                top5=predictions["top5"],
                correct=predictions["top5"][:, 0] == predictions["label"],
            )
    return result, out.with_suffix(".json")


def format_result(result: dict[str, Any]) -> str:
    low, high = result["top1_ci95"]
    return (
        f"{result['model']} step {result['step']} on {result['dataset']} {result['split']} "
        f"(n={result['n']}): top-1 {100 * result['top1']:.2f}% "
        f"[{100 * low:.2f}, {100 * high:.2f}], top-5 {100 * result['top5']:.2f}%, "
        f"mean per-class recall {100 * result['mean_per_class_recall']:.2f}%, "
        f"loss {result['loss']:.4f}"
    )


def define_flags() -> None:
    """Flags of the command line (defined only when run as a program, so importing this module
    from another absl program does not clash with its flags)."""
    flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_string("dataset", None, "TFDS name[/config] (default: the run's).")
    flags.DEFINE_string("split", None, "Split (default: the run's eval split).")
    flags.DEFINE_string("data_dir", None, "TFDS data dir (default: the run's).")
    flags.DEFINE_integer("batch_size", None, "Global eval batch size.")
    flags.DEFINE_boolean("ema", True, "Use the EMA weights when the run kept them.")
    flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    options = flags.FLAGS
    quiet_library_logs()

    def run() -> None:
        result, path = evaluate_checkpoint(
            options.workdir,
            step=options.step,
            dataset=options.dataset,
            split=options.split,
            data_dir=options.data_dir,
            batch_size=options.batch_size,
            use_ema=options.ema,
        )
        print(format_result(result))
        print(f"wrote {path}")

    run_user_command(run)


if __name__ == "__main__":
    define_flags()
    app.run(main)
