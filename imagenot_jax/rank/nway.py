"""N-way ranking comparisons: two or more result sets over the models present in all of them.

    python -m imagenot_jax.rank --set ImageNet=torchvision-imagenet1k --set ImageNot='runs/*' \\
        --set ImageNetV2=imagenetv2.csv --out report/ [--base alexnet] [--metric top1]

Every pair of sets gets what the two-set comparison (ranking.compare) computes, from the same
functions: Kendall tau-b and Spearman rho with p-values and bootstrap intervals, discordant pairs
and flip probabilities, the relative improvements' agreement and the accuracy-on-the-line fits.
Sets with per-example outcomes (.examples.npz) are resampled over their test examples, each with
its own generator (set k draws from child k of the seed), sets without them are held fixed; a
set's draws are shared by all the pairs it is in, so with two sets the numbers equal compare's.
The figure shows every set's relative improvement X_i / X_base per model, models ordered by
accuracy on the first set (see docs/rank.md).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np

from imagenot_jax.errors import UserError
from imagenot_jax.evaluate.metrics import clopper_pearson
from imagenot_jax.rank import nway_report, stats, tables
from imagenot_jax.rank.ranking import (
    METRICS,
    ModelResult,
    ResultSet,
    bootstrap_draws,
    load_result_set,
    write_result,
)

CORRELATIONS = ("kendall_tau_b", "spearman_rho")


def _common_models(sets: dict[str, ResultSet], base: str, metric: str) -> tuple[list, dict]:
    """The models of every set, most accurate on the first set first, and those dropped per set;
    one-line errors for what is missing."""
    for label, result_set in sets.items():
        lacking = [n for n, r in result_set.models.items() if metric not in r.metrics]
        if lacking:
            raise UserError(f"set {label}: no {metric} for {', '.join(lacking)}")
    first = next(iter(sets.values()))
    names = [n for n in first.models if all(n in s.models for s in sets.values())]
    dropped = {label: [n for n in s.models if n not in names] for label, s in sets.items()}
    if len(names) < 3:
        have = "; ".join(f"{label} has {', '.join(s.models)}" for label, s in sets.items())
        raise UserError(
            f"{len(names)} model(s) in all {len(sets)} sets ({', '.join(names) or 'none'}); "
            f"comparing rankings needs at least 3; {have}"
        )
    for label, result_set in sets.items():
        if base not in result_set.models:
            raise UserError(
                f"base model {base!r} is not in set {label}; --base must be one of "
                f"{', '.join(names)}"
            )
    names.sort(key=lambda n: (-first.models[n].metrics[metric], n))
    return names, dropped


def _relative_interval(
    result: ModelResult, metric: str, k: int, base: int, acc: np.ndarray, draws: np.ndarray | None
) -> tuple[list[float] | None, str | None]:
    """95% interval of X_k / X_base and how it was made: the bootstrap percentile interval of
    the ratio where the set is resampled (model and base drawn jointly), else the model's
    Clopper-Pearson interval over the base's point estimate (the base's own uncertainty is left
    out), else none (no n)."""
    if draws is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            return stats.percentile_interval(draws[:, k] / draws[:, base]), "bootstrap"
    if result.n is None:
        return None, None
    hits = round(acc[k] * result.n)
    if metric == "top1" and result.correct is not None:
        hits = result.correct
    low, high = clopper_pearson(hits, result.n)
    return [low / acc[base], high / acc[base]], "clopper-pearson"


def _entry(
    result: ModelResult, metric: str, k: int, base: int, acc: np.ndarray, rank: float,
    draws: np.ndarray | None,
) -> dict:  # fmt: skip
    hits = None if result.n is None else round(acc[k] * result.n)
    if metric == "top1" and result.correct is not None:
        hits = result.correct
    interval, method = _relative_interval(result, metric, k, base, acc, draws)
    return {
        "accuracy": float(acc[k]),
        "n": result.n,
        "ci95": None if hits is None else clopper_pearson(hits, result.n),
        "bootstrap_ci95": None if draws is None else stats.percentile_interval(draws[:, k]),
        "rank": rank,
        "relative_improvement": float(acc[k] / acc[base]),
        "relative_improvement_ci95": interval,
        "relative_improvement_ci95_method": method,
        "dataset": result.dataset,
        "split": result.split,
        "source": result.source,
    }


def pair_statistics(
    names: list[str], acc_a: np.ndarray, acc_b: np.ndarray, base: int,
    draws_a: np.ndarray | None, draws_b: np.ndarray | None,
) -> dict:  # fmt: skip
    """What the two-set comparison reports about a pair of sets, from the same functions."""
    result: dict[str, Any] = stats.rank_correlations(acc_a, acc_b)
    result["pairs"] = stats.pair_orders(names, acc_a, acc_b)
    relative = stats.relative_improvement_agreement(acc_a, acc_b, base)
    result["relative_improvement"] = {k: relative[k] for k in ("with_base", "without_base")}
    line = stats.accuracy_on_the_line(acc_a, acc_b)
    for fit in filter(None, line.values()):
        fit["residuals"] = dict(zip(names, fit["residuals"], strict=True))
    result["accuracy_on_the_line"] = line
    boot: dict[str, Any] = {}
    if draws_a is not None or draws_b is not None:
        fixed_a = acc_a[None] if draws_a is None else draws_a
        boot = stats.bootstrap_rankings(fixed_a, acc_b[None] if draws_b is None else draws_b, names)
    for key in CORRELATIONS:
        result[key]["ci95"] = boot.get(f"{key}_ci95")
    result["pair_flip_probability"] = boot.get("pair_flip_probability")
    result["undefined_draws"] = boot.get("undefined_draws")
    return result


def _matrix(labels: list[str], pairs: list[dict]) -> dict:
    """Symmetric label x label matrices of each correlation's value, interval and p-value."""
    index = {label: k for k, label in enumerate(labels)}
    out = {}
    for key in CORRELATIONS:
        size = len(labels)
        value = [[1.0 if i == j else None for j in range(size)] for i in range(size)]
        ci95 = [[None] * size for _ in range(size)]
        p_value = [[None] * size for _ in range(size)]
        for pair in pairs:
            i, j = index[pair["a"]], index[pair["b"]]
            for x, y in ((i, j), (j, i)):
                value[x][y] = pair[key]["value"]
                ci95[x][y] = pair[key]["ci95"]
                p_value[x][y] = pair[key]["p_value"]
        out[key] = {"value": value, "ci95": ci95, "p_value": p_value}
    return out


def _check_sets(sets: dict[str, ResultSet], metric: str) -> None:
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    if len(sets) < 2:
        raise UserError(f"{len(sets)} result set(s); a comparison needs at least 2")
    for label in sets:
        if not label or not isinstance(label, str):
            raise UserError(f"result set label {label!r}: expected a non-empty name")


def compare_sets(
    sets: dict[str, ResultSet], out_dir: str, *, base: str = "alexnet", metric: str = "top1",
    bootstrap: int = 1000, seed: int = 0,
) -> dict:  # fmt: skip
    """Compares the rankings of the models present in all sets (keyed by label, in order: the
    first orders the models and the figure), writes ranking.json, report.md, report.html and the
    figures to out_dir, and returns what ranking.json holds."""
    _check_sets(sets, metric)
    labels = list(sets)
    names, dropped = _common_models(sets, base, metric)
    b = names.index(base)
    acc = {s: np.array([sets[s].models[n].metrics[metric] for n in names]) for s in labels}
    display = {s: s for s in labels}
    samples, summary, notes = bootstrap_draws(sets, names, metric, bootstrap, seed, display)
    if all(v is None for v in samples.values()):
        why = "--bootstrap 0" if bootstrap <= 0 else "no set has per-example outcomes"
        notes.append(f"no bootstrap intervals: {why}")
    if metric == "mean_per_class_recall":
        notes.append("Clopper-Pearson intervals treat mean per-class recall as a proportion of n")
    pairs = []
    for x, y in itertools.combinations(labels, 2):
        pair = pair_statistics(names, acc[x], acc[y], b, samples[x], samples[y])
        pairs.append({"a": x, "b": y, **pair})
    ranks = {s: stats.ranks(acc[s]) for s in labels}
    models = []
    for k, name in enumerate(names):
        results = [sets[s].models[name] for s in labels]
        entry: dict[str, Any] = {"name": name, "model": results[0].model}
        entry["year"] = next((r.year for r in results if r.year), None)
        entry["sets"] = {
            s: _entry(r, metric, k, b, acc[s], ranks[s][k], samples[s])
            for s, r in zip(labels, results, strict=True)
        }
        models.append(entry)
    result = {
        "kind": "nway",
        "metric": metric,
        "base": base,
        "labels": labels,
        "sets": [_describe(sets[s], s, names, dropped[s], summary, s) for s in labels],
        "models": models,
        "dropped": dropped,
        "matrix": _matrix(labels, pairs),
        "pairs": pairs,
        "bootstrap": summary,
        "figure": {
            "x": f"models by {metric} on {labels[0]} (ascending)",
            "intervals": "bootstrap percentile of X_i / X_base where a set is resampled; else "
            "Clopper-Pearson of X_i over X_base (base held fixed); none without n",
        },
        "notes": list(dict.fromkeys([*(n for s in sets.values() for n in s.notes), *notes])),
    }
    return write_result(result, out_dir, nway_report.write_report)


def _describe(
    result_set: ResultSet, label: str, names: list[str], dropped: list[str], summary: dict,
    key: str,
) -> dict:  # fmt: skip
    return {
        "label": label,
        "reference": result_set.reference,
        "table": result_set.table,
        "datasets": sorted({result_set.models[n].dataset for n in names}),
        "n_models": len(result_set.models),
        "dropped": dropped,
        "resampled": summary["resampled"][key],
        "examples": summary["examples"][key],
    }


def parse_set_flags(values: list[str]) -> list[tuple[str, str]]:
    """(label, spec) of each --set LABEL=SPEC; one-line errors for a missing or repeated label."""
    parsed = []
    for value in values:
        label, sep, spec = value.partition("=")
        if not sep or not label.strip() or not spec.strip():
            raise UserError(f"--set {value!r}: expected LABEL=SPEC (e.g. ImageNot='runs/*')")
        if label.strip() in (p[0] for p in parsed):
            raise UserError(f"--set: label {label.strip()!r} given twice; labels name the sets")
        parsed.append((label.strip(), spec.strip()))
    if len(parsed) < 2:
        raise UserError(f"{len(parsed)} --set given; a comparison needs at least 2")
    return parsed


def parse_set_metrics(values: list[str], labels: list[str]) -> dict[str, str]:
    """{label: metric} of each --set_metric LABEL=METRIC."""
    parsed = {}
    for value in values:
        label, _, metric = (part.strip() for part in value.partition("="))
        if label not in labels:
            raise UserError(f"--set_metric {value!r}: no --set labelled {label!r} ({labels})")
        if metric not in METRICS:
            raise UserError(f"--set_metric {value!r}: metric must be one of {', '.join(METRICS)}")
        parsed[label] = metric
    return parsed


def ranked_as(result_set: ResultSet, metric: str, as_metric: str, label: str) -> ResultSet:
    """The set with its `metric` compared as the others' `as_metric` (ReaL's real_top1 beside
    top-1 sets); its per-example outcomes (of another metric) are dropped: held fixed."""
    if metric == as_metric:
        return result_set
    models = {
        name: dataclasses.replace(r, metrics={as_metric: r.metrics[metric]}, examples=None)
        for name, r in result_set.models.items()
    }
    note = f"{label}: ranked by {metric} (as {as_metric}), held fixed in the bootstrap"
    return dataclasses.replace(result_set, models=models, notes=[*result_set.notes, note])


def run_flags(options: Any, two_set_flags: tuple[str, ...]) -> dict:
    """The --set form of the command line: loads each LABEL=SPEC and compares them."""
    mixed = [f"--{f}" for f in two_set_flags if options[f].value is not None]
    if mixed:
        raise UserError(f"--set cannot be mixed with {', '.join(mixed)}; use one form")
    sets = {}
    parsed = parse_set_flags(options.set)
    set_metrics = parse_set_metrics(options.set_metric or [], [label for label, _ in parsed])
    for label, spec in parsed:
        if "=" not in spec and "," not in spec and tables.is_table(spec):
            spec = f"{label}={spec}"  # the set's label names the table in notes too
        metric = set_metrics.get(label, options.metric)
        loaded = load_result_set(spec, metric, dataset=options.dataset, split=options.split)
        sets[label] = ranked_as(loaded, metric, options.metric, label)
    return compare_sets(
        sets, options.out, base=options.base, metric=options.metric,
        bootstrap=options.bootstrap, seed=options.seed,
    )  # fmt: skip
