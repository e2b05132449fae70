"""Do architectures rank the same on different datasets? Compare result sets.

    python -m imagenot_jax.rank --a torchvision-imagenet1k --b W1,W2,... --out report/ \\
        [--base alexnet] [--metric top1|top5|mean_per_class_recall] [--bootstrap 1000] \\
        [--dataset D --split S | --b_dataset D --b_split S] [--a_label L --b_label L]
    python -m imagenot_jax.rank --set ImageNet=torchvision-imagenet1k --set ImageNot='runs/*' \\
        --set ImageNetV2=published/imagenetv2.csv ... --out report/ [--base ...] [--metric ...]

A result set is the built-in table `torchvision-imagenet1k` (published IMAGENET1K_V1 accuracies),
a table file of published results (`[label=]table.csv` or `.json`: columns model, top1[, top5]
[, n][, year]; accuracies in percent if any value of the column is above 1, else fractions; no
`n`, no interval; see tables.py and docs/rank.md) or a list of paths (comma-separated or repeated
flags; shell-style globs are expanded): training workdirs (their newest `eval/*.json`, or the
newest one matching --dataset/--split), eval JSON files of `imagenot_jax.evaluate`, each
optionally as `name=path` to name a run (models are matched across sets by name, by default the
JSON's `model`, a table's `model` column).

--a/--b compare two sets: the models present in both, rankings, Kendall tau-b and Spearman rho
with p-values and bootstrap intervals over test examples, discordant pairs and each pair's flip
probability, relative improvements over the base model, accuracy-on-the-line fits and
Clopper-Pearson intervals. A repeated --set LABEL=SPEC (instead of --a/--b) compares two or more
sets over the models present in all of them (nway.py): the pairwise tau/rho matrix, every pair's
statistics and one relative-improvement figure of every set. Either writes ranking.json,
report.md, report.html (self-contained) and PNG figures to --out.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import flags
from etils import epath

from imagenot_jax.cli import absolute_path, define_path_flag, run_command
from imagenot_jax.errors import MissingInputError, UserError
from imagenot_jax.evaluate.metrics import clopper_pearson
from imagenot_jax.rank import reference, report, stats, tables

# real_top1: ImageNet-ReaL multi-label accuracy (evaluations of imagenet2012_real), over real_n.
METRICS = ("top1", "top5", "mean_per_class_recall", "real_top1")


@dataclasses.dataclass
class ModelResult:
    """One model's evaluation in a result set."""

    name: str  # the name models are matched by across sets
    model: str  # the architecture (the eval JSON's `model`)
    metrics: dict[str, float]  # fractions in [0, 1], for the metrics the source has
    n: int | None  # evaluated examples (None: a published table without n, no interval)
    correct: int | None  # top-1 hits, where the source gives them
    dataset: str
    split: str | None
    source: str  # eval JSON path or the reference table's name
    examples: str | None  # the .examples.npz beside the JSON, None if absent
    year: int | None


@dataclasses.dataclass
class ResultSet:
    """Models (by name) of one side of a comparison."""

    models: dict[str, ModelResult]
    label: str  # default label: the datasets' names
    reference: str | None = None  # the built-in table's name, if this is one
    table: str | None = None  # the results table file, if this is one
    notes: list[str] = dataclasses.field(default_factory=list)


def reference_set(name: str) -> ResultSet:
    """A built-in table as a result set (accuracies only: no per-example outcomes)."""
    table, dataset, n = reference.REFERENCE_SETS[name]
    models = {}
    for row in table.values():
        metrics = {"top1": row.acc1 / 100, "top5": row.acc5 / 100}
        models[row.model] = ModelResult(
            row.model, row.model, metrics, n, None, dataset, None, name, None, row.year
        )
    note = f"{name}: published accuracies; n = {n:,} (the {dataset} size) for intervals"
    return ResultSet(models, f"{dataset} ({name})", reference=name, notes=[note])


def _read_json(path: epath.Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(record, dict) or "model" not in record:
        raise UserError(f"{path}: no 'model' field; expected an imagenot_jax.evaluate JSON")
    return record


def _matches(record: dict, dataset: str | None, split: str | None) -> bool:
    name = str(record.get("dataset", ""))
    dataset_ok = dataset is None or name == dataset or name.startswith(dataset + "/")
    return dataset_ok and (split is None or record.get("split") == split)


def _pick_eval(directory: epath.Path, dataset: str | None, split: str | None) -> epath.Path:
    """The newest eval JSON of a workdir (or eval dir) matching the filters."""
    folder = directory / "eval" if (directory / "eval").is_dir() else directory
    if folder == directory and (directory / "config.json").exists():  # a workdir, no eval yet
        raise MissingInputError(f"{directory}/eval: not found; run imagenot_jax.evaluate first")
    found = [(p, _read_json(p)) for p in folder.glob("*.json")]
    if not found:
        raise MissingInputError(f"{folder}: no eval JSON; run imagenot_jax.evaluate first")
    matching = [(p, r) for p, r in found if _matches(r, dataset, split)]
    # Prefer plain evaluations to class-restricted views (evaluate --class_map); a view is
    # ranked by naming its JSON.
    plain = [(p, r) for p, r in matching if not r.get("class_map")]
    matching = plain or matching
    if not matching:
        have = sorted({f"{r.get('dataset')}/{r.get('split')}" for _, r in found})
        raise UserError(
            f"{folder}: no eval JSON for dataset={dataset} split={split} (has: {', '.join(have)})"
        )
    return max(matching, key=lambda pr: (pr[0].stat().mtime, pr[1].get("step", -1)))[0]


def _load_eval(name: str | None, path: epath.Path, metric: str) -> ModelResult:
    record = _read_json(path)
    n_field = "real_n" if metric == "real_top1" else "n"  # ReaL: images with real labels
    for field in (n_field, metric):
        if field not in record:
            raise UserError(f"{path}: no {field!r} field")
    examples = path.parent / f"{path.name.removesuffix('.json')}.examples.npz"
    return ModelResult(
        name=name or str(record["model"]),
        model=str(record["model"]),
        metrics={m: float(record[m]) for m in METRICS if record.get(m) is not None},
        n=int(record[n_field]),
        correct=int(record["correct"]) if "correct" in record and n_field == "n" else None,
        dataset=str(record.get("dataset", "?")),
        split=record.get("split"),
        source=str(path),
        examples=str(examples) if examples.exists() else None,
        year=reference.year_of(str(record["model"])),
    )


def _expand(item: str) -> list[tuple[str | None, epath.Path]]:
    """`[name=]path` with a glob pattern expanded; a missing path is a one-line error."""
    name, path = None, item
    if "=" in item and not epath.Path(item).exists():
        name, path = item.split("=", 1)
    # A literal path wins over a pattern: eval JSONs of sliced splits ("test[:2500]") contain
    # glob characters.
    if "://" not in path and any(c in path for c in "*?[") and not epath.Path(path).exists():
        paths = sorted(glob.glob(path))
        if not paths:
            raise MissingInputError(f"{path}: matches no file")
        if name is not None and len(paths) > 1:
            raise UserError(f"{item}: a name can label one path, the pattern matches {paths}")
        return [(name, epath.Path(absolute_path(p))) for p in paths]
    if not epath.Path(path).exists():
        known = ", ".join(reference.REFERENCE_SETS)
        if "/" not in path and not path.endswith(tables.TABLE_SUFFIXES):
            raise UserError(f"unknown result set {path!r}: not a path nor a table ({known})")
        raise MissingInputError(
            f"{path}: not found (expected a workdir, an eval JSON, a results table or {known})"
        )
    return [(name, epath.Path(absolute_path(path)))]


def load_result_set(
    spec: str | list[str], metric: str = "top1", *, dataset: str | None = None,
    split: str | None = None,
) -> ResultSet:  # fmt: skip
    """A result set from a spec: a built-in table's name, a results table file (`[label=]path`
    of a .csv or .json table, see tables.py), or paths (a list, or one string of comma-separated
    ones) of workdirs and eval JSONs, each optionally `name=path`. `dataset` and `split` choose
    among a workdir's eval results (default: its newest)."""
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    parts = [spec] if isinstance(spec, str) else spec
    items = [s.strip() for part in parts for s in part.split(",") if s.strip()]
    if not items:
        raise UserError("empty result set: give a built-in table's name or paths")
    if any(s in reference.REFERENCE_SETS for s in items):
        if len(items) > 1:
            raise UserError(f"a built-in table cannot be mixed with paths: {items}")
        result_set = reference_set(items[0])
        if metric not in next(iter(result_set.models.values())).metrics:
            raise UserError(f"{items[0]} has no {metric}; use --metric top1 or top5")
        return result_set
    named = [
        (s.split("=", 1) if "=" in s and not epath.Path(s).exists() else (None, s)) for s in items
    ]
    if any(tables.is_table(path) for _, path in named):
        if len(items) > 1:
            raise UserError(f"a results table cannot be mixed with other paths: {items}")
        return tables.load_table(named[0][1], metric, label=named[0][0])
    models: dict[str, ModelResult] = {}
    for name, path in (entry for item in items for entry in _expand(item)):
        json_path = _pick_eval(path, dataset, split) if path.is_dir() else path
        result = _load_eval(name, json_path, metric)
        if result.name in models:
            raise UserError(
                f"two runs named {result.name!r} ({models[result.name].source}, {json_path}); "
                "name them with name=path"
            )
        models[result.name] = result
    datasets = sorted({f"{r.dataset} {r.split}" if r.split else r.dataset for r in models.values()})
    notes = [f"models evaluated on different datasets: {', '.join(datasets)}"] * (len(datasets) > 1)
    return ResultSet(models, ", ".join(datasets), notes=notes)


# --- per-example outcomes for the bootstrap -------------------------------------------------


def _outcomes(path: str, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys, labels, hit per example) of one .examples.npz for the metric."""
    with np.load(io.BytesIO(epath.Path(path).read_bytes()), allow_pickle=False) as npz:
        keys, labels = npz["key"].astype(str), npz["label"].astype(np.int64)
        top5 = npz["top5"]
        hit = np.any(top5 == labels[:, None], axis=1) if metric == "top5" else top5[:, 0] == labels
    if len(np.unique(keys)) != len(keys):
        raise UserError(f"{path}: duplicate example keys")
    return keys, labels, hit


def per_example(
    result_set: ResultSet, names: list[str], metric: str
) -> tuple[stats.PerExample | None, str | None]:
    """The side's outcomes aligned on the examples every model was evaluated on (by key), or
    None and why not (then the side's accuracies are held fixed in the bootstrap)."""
    if result_set.reference or result_set.table:
        return None, f"{result_set.reference or result_set.table} has no per-example outcomes"
    if metric == "real_top1":  # .examples.npz holds the original single labels only
        return None, "no per-example ReaL outcomes (.examples.npz has the original labels)"
    missing = [n for n in names if result_set.models[n].examples is None]
    if missing:
        return None, f"no .examples.npz for {', '.join(missing)}"
    loaded = [_outcomes(result_set.models[n].examples, metric) for n in names]
    common = loaded[0][0]
    for keys, _, _ in loaded[1:]:
        common = np.intersect1d(common, keys)
    if not len(common):
        return None, "the models share no evaluated example"
    columns, labels = [], None
    for keys, side_labels, hit in loaded:
        order = np.argsort(keys)
        index = order[np.searchsorted(keys, common, sorter=order)]
        columns.append(hit[index])
        labels = side_labels[index] if labels is None else labels
    largest = max(len(keys) for keys, _, _ in loaded)
    note = None if len(common) == largest else f"{len(common)} shared examples of {largest}"
    labels = labels if metric == "mean_per_class_recall" else None
    return stats.PerExample(np.stack(columns, axis=1), labels), note


# --- the comparison -------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars/arrays to Python, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def _check_models(a: ResultSet, b: ResultSet, labels: dict, base: str, metric: str) -> list[str]:
    """The models of both sets, most accurate on A first; one-line errors for what is missing."""
    for side, result_set in (("a", a), ("b", b)):
        lacking = [n for n, r in result_set.models.items() if metric not in r.metrics]
        if lacking:
            raise UserError(f"set {labels[side]}: no {metric} for {', '.join(lacking)}")
    names = [n for n in a.models if n in b.models]
    if len(names) < 3:
        raise UserError(
            f"{len(names)} model(s) in both sets ({', '.join(names) or 'none'}); comparing "
            "rankings needs at least 3 (Kendall tau needs 2, a correlation without the base "
            f"needs 2 more); A has {', '.join(a.models)}; B has {', '.join(b.models)}"
        )
    for side, result_set in (("a", a), ("b", b)):
        if base not in result_set.models:
            raise UserError(
                f"base model {base!r} is not in set {labels[side]}; --base must be one of "
                f"{', '.join(names)}"
            )
    return sorted(names, key=lambda n: (-a.models[n].metrics[metric], n))


def _describe(result_set: ResultSet, label: str, names: list[str]) -> dict:
    datasets = sorted({result_set.models[n].dataset for n in names})
    return {
        "label": label,
        "reference": result_set.reference,
        "table": result_set.table,
        "datasets": datasets,
    }


def _side(
    result: ModelResult, metric: str, rank: float, relative: float, draws: np.ndarray | None,
    k: int,
) -> dict:  # fmt: skip
    acc = result.metrics[metric]
    hits = None if result.n is None else round(acc * result.n)
    if metric == "top1" and result.correct is not None:
        hits = result.correct
    return {
        "accuracy": acc,
        "n": result.n,
        "ci95": None if hits is None else clopper_pearson(hits, result.n),
        "bootstrap_ci95": None if draws is None else stats.percentile_interval(draws[:, k]),
        "rank": rank,
        "relative_improvement": relative,
        "dataset": result.dataset,
        "split": result.split,
        "source": result.source,
    }


def bootstrap_draws(
    sets: dict[str, ResultSet], names: list[str], metric: str, draws: int, seed: int,
    display: dict[str, str],
) -> tuple[dict[str, np.ndarray | None], dict, list[str]]:  # fmt: skip
    """Per-draw accuracies (draws, models) of each set resampled over its test examples, None
    for a set held fixed (no per-example outcomes); the summary; notes naming sets by
    `display`. Set k (in dict order) draws from the k-th child of the seed's generator, so a
    set's draws depend only on the seed and its position."""
    generators = dict(zip(sets, np.random.default_rng(seed).spawn(len(sets)), strict=True))
    samples, summary, notes = {}, {"draws": draws, "seed": seed, "method": "percentile"}, []
    summary["resampled"], summary["examples"] = {}, {}
    for key, result_set in sets.items():
        data, why = per_example(result_set, names, metric) if draws > 0 else (None, None)
        samples[key] = None
        if data is not None:
            samples[key] = stats.bootstrap_accuracies(data, draws, generators[key])
        summary["resampled"][key] = data is not None
        summary["examples"][key] = None if data is None else int(data.correct.shape[0])
        if why:
            held = "resampled over" if data is not None else "accuracies held fixed:"
            notes.append(f"bootstrap, set {display[key]}: {held} {why}")
    return samples, summary, notes


def _bootstrap(
    sets: dict[str, ResultSet], names: list[str], acc: dict, metric: str, draws: int, seed: int
) -> tuple[dict, dict, list[str]]:
    """Per-draw accuracies of each side (None where held fixed), the summary, and notes."""
    display = {side: side.upper() for side in sets}
    samples, summary, notes = bootstrap_draws(sets, names, metric, draws, seed, display)
    if all(s is None for s in samples.values()):
        why = "--bootstrap 0" if draws <= 0 else "neither set has per-example outcomes"
        notes.append(f"no bootstrap intervals: {why}")
        return samples, summary, notes
    fixed = {s: acc[s][None] if samples[s] is None else samples[s] for s in samples}
    summary.update(stats.bootstrap_rankings(fixed["a"], fixed["b"], names))
    return samples, summary, notes


def compare(
    a: ResultSet, b: ResultSet, out_dir: str, *, base: str = "alexnet", metric: str = "top1",
    bootstrap: int = 1000, seed: int = 0, a_label: str | None = None, b_label: str | None = None,
) -> dict:  # fmt: skip
    """Compares the rankings of the models present in both sets, writes ranking.json, the
    reports and figures to out_dir, and returns what ranking.json holds."""
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    labels = {"a": a_label or a.label, "b": b_label or b.label}
    if labels["a"] == labels["b"]:
        labels = {"a": f"A: {labels['a']}", "b": f"B: {labels['b']}"}
    names = _check_models(a, b, labels, base, metric)
    sets = {"a": a, "b": b}
    acc = {s: np.array([sets[s].models[n].metrics[metric] for n in names]) for s in sets}
    correlations = stats.rank_correlations(acc["a"], acc["b"])
    relative = stats.relative_improvement_agreement(acc["a"], acc["b"], names.index(base))
    line = stats.accuracy_on_the_line(acc["a"], acc["b"])
    for fit in filter(None, line.values()):
        fit["residuals"] = dict(zip(names, fit["residuals"], strict=True))
    samples, summary, notes = _bootstrap(sets, names, acc, metric, bootstrap, seed)
    if metric == "mean_per_class_recall":
        notes.append("Clopper-Pearson intervals treat mean per-class recall as a proportion of n")
    ranks = {s: stats.ranks(acc[s]) for s in sets}
    models = []
    for k, name in enumerate(names):
        entry: dict[str, Any] = {"name": name, "model": a.models[name].model}
        entry["year"] = a.models[name].year or b.models[name].year
        for s in sets:
            entry[s] = _side(
                sets[s].models[name], metric, ranks[s][k], relative[s][k], samples[s], k
            )
        for kind, fit in line.items():
            entry[f"{kind}_residual"] = None if fit is None else fit["residuals"][name]
        models.append(entry)
    correlations["kendall_tau_b"]["ci95"] = summary.pop("kendall_tau_b_ci95", None)
    correlations["spearman_rho"]["ci95"] = summary.pop("spearman_rho_ci95", None)
    result = {
        "metric": metric,
        "base": base,
        "labels": labels,
        "sets": {s: _describe(sets[s], labels[s], names) for s in sets},
        "models": models,
        "unmatched": {
            "a_only": [n for n in a.models if n not in b.models],
            "b_only": [n for n in b.models if n not in a.models],
        },
        **correlations,
        "pairs": stats.pair_orders(names, acc["a"], acc["b"]),
        "pair_flip_probability": summary.pop("pair_flip_probability", None),
        "relative_improvement": {k: relative[k] for k in ("with_base", "without_base")},
        "accuracy_on_the_line": line,
        "bootstrap": summary,
        "notes": list(dict.fromkeys([*a.notes, *b.notes, *notes])),
    }
    return write_result(result, out_dir, report.write_report)


def write_result(result: dict, out_dir: str, write_report: Callable) -> dict:
    """A comparison's ranking.json, reports and figures in out_dir; returns it JSON-ready, with
    the files written under `files`."""
    out = epath.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = _plain(result)
    result["files"] = [*write_report(result, out), "ranking.json"]
    (out / "ranking.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    return result


# --- command line ---------------------------------------------------------------------------


def define_flags() -> None:
    """Flags of the command line (defined only under __main__, see evaluation.py)."""
    sets = "torchvision-imagenet1k, a results table ([label=]table.csv/.json) or paths"
    flags.DEFINE_multi_string("a", None, f"Result set A: {sets}.")
    flags.DEFINE_multi_string("b", None, f"Result set B: {sets}.")
    flags.DEFINE_multi_string(
        "set", None, f"LABEL=SPEC, repeated: two or more result sets (SPEC: {sets}) compared "
        "over the models in all of them; instead of --a/--b.",
    )  # fmt: skip
    flags.DEFINE_multi_string(
        "set_metric", None, "LABEL=METRIC, repeated: the metric of one --set set, ranked as "
        "--metric's (e.g. ReaL=real_top1 beside top1 sets).",
    )  # fmt: skip
    define_path_flag("out", None, "Output directory of ranking.json, reports and figures.")
    flags.DEFINE_string("base", "alexnet", "Base model of the relative improvements.")
    flags.DEFINE_enum("metric", "top1", list(METRICS), "Accuracy metric compared.")
    flags.DEFINE_integer("bootstrap", 1000, "Bootstrap draws over test examples (0: none).")
    flags.DEFINE_integer("seed", 0, "Bootstrap seed.")
    flags.DEFINE_string("a_label", None, "Name of set A in the report (default: its datasets).")
    flags.DEFINE_string("b_label", None, "Name of set B in the report (default: its datasets).")
    for side in ("", "a_", "b_"):
        which = f"set {side[0].upper()}'s" if side else "every set's"
        flags.DEFINE_string(f"{side}dataset", None, f"Dataset of {which} workdir evals.")
        flags.DEFINE_string(f"{side}split", None, f"Split of {which} workdir evals.")
    flags.mark_flags_as_required(["out"])


_TWO_SET_FLAGS = ("a", "b", "a_label", "b_label", "a_dataset", "a_split", "b_dataset", "b_split")


def main(argv: list[str]) -> None:
    options = flags.FLAGS

    def load(side: str) -> ResultSet:
        dataset = options[f"{side}_dataset"].value or options.dataset
        split = options[f"{side}_split"].value or options.split
        return load_result_set(options[side].value, options.metric, dataset=dataset, split=split)

    def run() -> None:
        if options.set:
            from imagenot_jax.rank import nway  # nway imports this module

            result = nway.run_flags(options, _TWO_SET_FLAGS)
            print(nway.nway_report.format_summary(result))
        elif options.a is None or options.b is None:
            raise UserError("give two result sets with --a and --b, or two or more with --set")
        else:
            result = compare(
                load("a"), load("b"), options.out, base=options.base, metric=options.metric,
                bootstrap=options.bootstrap, seed=options.seed, a_label=options.a_label,
                b_label=options.b_label,
            )  # fmt: skip
            print(report.format_summary(result))
        print(f"wrote {', '.join(result['files'])} to {options.out}")

    run_command(argv, run)  # compiles nothing: no JAX cache
