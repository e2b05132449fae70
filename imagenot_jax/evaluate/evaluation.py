"""Evaluate a checkpoint on any prepared TFDS dataset with the run's eval transform.

    python -m imagenot_jax.evaluate --workdir DIR [--step S] [--dataset NAME[/CONFIG]]
        [--split SPLIT] [--data_dir D] [--batch_size B] [--noema]
        [--class_map identity|wnid|FILE] [--real|--noreal] [--save_logits]

Writes DIR/eval/<dataset>-<split>-<step>.json (top-1, top-5, loss, n, per-class recall, the
equal-weighted accuracy `mean_per_class_recall` (LAIONet's metric: the mean over the classes
present of each class's recall, so frequent classes do not dominate), a Clopper-Pearson 95%
interval on top-1, step, model, dataset name/version) and, beside it, <...>.examples.npz with
per-example key, label, top-5 and correctness: what the ranking stage bootstraps over. Every
example is counted exactly once across devices/processes.

Views (see views.py): `--class_map` restricts the model to the classes a dataset's labels
map to (the JSON records the map; the file name gets `-classmap_<name>`; `unrestricted_top1/5`
keep the plain argmax); datasets with a `real_label` feature (TFDS imagenet2012_real) add ReaL
multi-label accuracy (`real_top1` over `real_n` images, `real_excluded` with no label).
ImageNetV2 (`--dataset imagenet_v2/matched-frequency --split test`) shares ImageNet's label space
and needs nothing more.

Only the weights are read (params, BatchNorm statistics, EMA), not the optimizer state. A
damaged checkpoint (the one asked for, or the latest by default) is an error naming its step
and file and the latest intact step to pass as --step: never a silent switch to another step.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags
from etils import epath

from imagenot_jax.cli import define_compilation_cache_flag, define_path_flag, run_command
from imagenot_jax.data import input_pipeline
from imagenot_jax.errors import MissingInputError, UserError
from imagenot_jax.evaluate import predict, views
from imagenot_jax.evaluate.metrics import clopper_pearson, metrics_from_predictions, summarize
from imagenot_jax.evaluate.views import ClassMap
from imagenot_jax.train import checkpoint, sharding, trainer


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise MissingInputError(f"{path}: not found; --workdir must be a training workdir")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def _check_mapped(predictions: dict[str, np.ndarray], class_map: ClassMap | None, num_x: int):
    bad = predictions["label"] < 0
    if not bad.any():
        return
    if class_map is None:
        raise UserError(
            f"{int(bad.sum())} examples have labels outside the model's {num_x} classes; "
            "pass --class_map"
        )
    labels = np.unique(predictions["y_label"][bad])
    raise UserError(
        f"class map {class_map.source} has no entry for labels {labels[:5].tolist()} "
        f"({int(bad.sum())} examples)"
    )


# ---------------------------------------------------------------------------------------------
# Evaluation.
# ---------------------------------------------------------------------------------------------


def _restore(workdir: str, config: ml_collections.ConfigDict, step: int | None, use_ema: bool):
    """(setup, state, step) of a checkpoint; the EMA weights dropped unless wanted."""
    mesh = sharding.make_mesh()
    # The optimizer's shape does not depend on the epoch length: one step per epoch will do.
    setup = trainer.make_setup(config, mesh, num_train_examples=config.input.global_batch_size)
    checkpointer = checkpoint.Checkpointer(workdir, config.checkpoint, read_only=True)
    step = step if step is not None else checkpointer.latest_step()
    if step is None:
        raise MissingInputError(f"no checkpoint in {checkpointer.directory}")
    _verify(checkpointer, step)
    abstract = checkpoint.abstract_with_shardings(setup.abstract_state, setup.state_shardings)
    state = checkpointer.restore_weights(step, abstract)
    checkpointer.close()
    if not (use_ema and state.ema is not None):
        state = state.replace(ema=None)
    return setup, state, int(step)


def _verify(checkpointer: checkpoint.Checkpointer, step: int) -> None:
    """Stop on a damaged checkpoint, naming the latest intact one: evaluating another step
    than the one asked for (or the latest) would be a silent substitution."""
    try:
        checkpointer.verify(step, skip=("opt_state.",), data=False)
    except checkpoint.DamagedCheckpointError as error:
        intact = None
        for earlier in sorted((s for s in checkpointer.all_steps() if s < step), reverse=True):
            try:
                checkpointer.verify(earlier, skip=("opt_state.",), data=False)
                intact = earlier
                break
            except checkpoint.DamagedCheckpointError:
                continue
        hint = f"; the latest intact one is step {intact} (--step={intact})" if intact else ""
        problem = error.problem + hint
        raise checkpoint.DamagedCheckpointError(error.step, error.file, problem) from None


def evaluate_checkpoint(
    workdir: str,
    *,
    step: int | None = None,
    dataset: str | None = None,
    split: str | None = None,
    data_dir: str | None = None,
    batch_size: int | None = None,
    use_ema: bool = True,
    class_map: str | None = None,
    real: bool | None = None,
    save_logits: bool = False,
) -> tuple[dict[str, Any], epath.Path]:
    """Evaluates one checkpoint; returns the metrics and the path of the JSON written.

    `class_map` ("identity", "wnid" or a file, see views.py) restricts the model to the mapped
    classes; `real` (default: when the dataset has a `real_label` feature) adds ReaL accuracy;
    `save_logits` keeps every example's logits in the .examples.npz (float32, n x classes)."""
    config = load_run_config(workdir)
    sharding.initialize_distributed(config.mesh)
    training_data = (config.data.name, config.data.get("data_dir"))
    if dataset:
        config.data.name = dataset
    if data_dir:
        config.data.data_dir = data_dir
    if batch_size is not None:
        config.input.eval_batch_size = batch_size
    data = views.open_eval_data(
        config.data.name, split or config.data.eval_split, config.data.get("data_dir")
    )
    mapping = _class_map(class_map, data, training_data, config)
    if real and not data.has_real:
        raise UserError(f"--real: dataset {data.name!r} has no {views.REAL_FEATURE!r} feature")
    use_real = data.has_real if real is None else real

    setup, state, step = _restore(workdir, config, step, use_ema)
    eval_step = predict.make_eval_step(setup, mapping, save_logits)
    batches = input_pipeline.make_eval_dataset(config, data.eval_source)
    total = predict.num_batches(config, data.eval_source)
    predictions = predict.predict(eval_step, setup, state, batches, total, keep_bar=True)
    _check_mapped(predictions, mapping, config.model.num_classes)
    result = {
        **metrics_from_predictions(predictions, config.model.num_classes),
        "step": step,
        "model": config.model.name,
        "dataset": data.name,
        "dataset_version": str(data.source.dataset_info.version),
        "split": data.split,
        "label_feature": data.label_feature,
        "ema": state.ema is not None,
        "workdir": str(workdir),
        "class_map": mapping.describe() if mapping else None,
    }
    if mapping:
        unrestricted = summarize({**predictions, "top5": predictions["top5_unrestricted"]})
        result |= {
            "unrestricted_top1": unrestricted["top1"],
            "unrestricted_top5": unrestricted["top5"],
        }
    writer = jax.process_index() == 0
    fields = [data.real_feature] * use_real
    fields += [data.key_feature] * (writer and data.key_feature is not None)
    records = views.read_fields(data.source, predictions["index"], fields)
    arrays: dict[str, np.ndarray] = {}
    if use_real:
        sets = views.map_label_sets(records[data.real_feature], mapping)
        result |= _real_result(predictions["top5"][:, 0], sets, arrays)
    out = epath.Path(workdir) / "eval" / _result_name(data, step, mapping)
    if writer:
        arrays["key"] = views.example_keys(data, records, predictions["index"])
        _write(out, result, predictions, arrays)
    return result, out.parent / f"{out.name}.json"


def _class_map(
    spec: str | None,
    data: views.EvalData,
    training_data: tuple[str, str | None],
    config: ml_collections.ConfigDict,
) -> ClassMap | None:
    """The requested class map; without one, a check that the labels are the model's classes."""
    num_x = config.model.num_classes
    x_names = None
    if spec != views.IDENTITY:  # the training data's class names, where they are known
        same = training_data == (data.name, config.data.get("data_dir"))
        x_names = data.names if same else views.training_class_names(*training_data)
    if not spec:
        views.check_label_space(data, x_names, num_x)
        return None
    return views.load_class_map(
        spec,
        y_names=data.names,
        num_y=data.num_classes,
        x_names=x_names,
        num_x=num_x,
        present_labels=data.present_labels,
    )


def _real_result(top1: np.ndarray, sets: list[np.ndarray], arrays: dict) -> dict[str, Any]:
    """ReaL metrics; adds the per-example sets and outcomes to `arrays` (for the npz)."""
    result = views.real_metrics(top1, sets)
    result["real_top1_ci95"] = clopper_pearson(result["real_correct"], result["real_n"])
    correct, valid = views.multilabel_correct(top1, sets)
    arrays |= {"real_labels": views.pad_label_sets(sets), "real_correct": correct}
    arrays["real_valid"] = valid
    return result


def _result_name(data: views.EvalData, step: int, mapping: ClassMap | None) -> str:
    name = f"{data.name.replace('/', '_')}-{data.split}-{step}"
    return f"{name}-classmap_{mapping.tag()}" if mapping else name


def _write(out: epath.Path, result: dict, predictions: dict[str, np.ndarray], arrays: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    # Not with_suffix: a versioned dataset name ("imagenot/256:1.0.0") has dots of its own.
    (out.parent / f"{out.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    extra = {
        name: predictions[name]
        for name in ("y_label", "top5_unrestricted", "logits")
        if name in predictions
    }
    with (out.parent / f"{out.name}.examples.npz").open("wb") as f:
        np.savez_compressed(
            f,
            label=predictions["label"],
            top5=predictions["top5"],
            correct=predictions["top5"][:, 0] == predictions["label"],
            **arrays,
            **extra,
        )


def format_result(result: dict[str, Any]) -> str:
    low, high = result["top1_ci95"]
    text = (
        f"{result['model']} step {result['step']} on {result['dataset']} {result['split']} "
        f"(n={result['n']}): top-1 {100 * result['top1']:.2f}% "
        f"[{100 * low:.2f}, {100 * high:.2f}], top-5 {100 * result['top5']:.2f}%, "
        f"equal-weighted accuracy (mean per-class recall) "
        f"{100 * result['mean_per_class_recall']:.2f}%, loss {result['loss']:.4f}"
    )
    if result.get("class_map"):
        mapping = result["class_map"]
        text += (
            f"\n  restricted to the {mapping['num_classes']} classes of class map "
            f"{mapping['source']}; unrestricted top-1 {100 * result['unrestricted_top1']:.2f}%, "
            f"top-5 {100 * result['unrestricted_top5']:.2f}%"
        )
    if "real_top1" in result:
        low, high = result["real_top1_ci95"]
        text += (
            f"\n  ReaL top-1 {100 * result['real_top1']:.2f}% [{100 * low:.2f}, "
            f"{100 * high:.2f}] (n={result['real_n']}, {result['real_excluded']} images "
            "without a ReaL label excluded)"
        )
    return text


def define_flags() -> None:
    """Flags of the command line (defined only when run as a program, so importing this module
    from another absl program does not clash with its flags)."""
    define_path_flag("workdir", None, "Training workdir (config.json + checkpoints).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_string("dataset", None, "TFDS name[/config] (default: the run's).")
    flags.DEFINE_string("split", None, "Split (default: the run's eval split).")
    define_path_flag("data_dir", None, "TFDS data dir (default: the run's).")
    flags.DEFINE_integer("batch_size", None, "Global eval batch size.", lower_bound=1)
    flags.DEFINE_boolean("ema", True, "Use the EMA weights when the run kept them.")
    flags.DEFINE_string(
        "class_map",
        None,
        "Score the model only among the classes the dataset's labels map to: `identity` "
        "(labels are the model's class indices), `wnid` (same class names), or a file of "
        "`y_label<TAB>model_class` lines / a JSON {y_label: model_class} object.",
    )
    flags.DEFINE_boolean(
        "real", None, "ReaL multi-label accuracy (default: when the dataset has `real_label`)."
    )
    flags.DEFINE_boolean("save_logits", False, "Keep every example's logits in .examples.npz.")
    define_compilation_cache_flag()
    flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    options = flags.FLAGS

    def run() -> None:
        result, path = evaluate_checkpoint(
            options.workdir,
            step=options.step,
            dataset=options.dataset,
            split=options.split,
            data_dir=options.data_dir,
            batch_size=options.batch_size,
            use_ema=options.ema,
            class_map=options.class_map,
            real=options.real,
            save_logits=options.save_logits,
        )
        print(format_result(result))
        print(f"wrote {path}")

    run_command(argv, run, compilation_cache=options.compilation_cache)
