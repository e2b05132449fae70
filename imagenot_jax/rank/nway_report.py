"""Reports of an N-way ranking comparison (nway.compare_sets): the terminal summary, report.md,
a self-contained report.html and two figures, drawn from ranking.json's dict alone (rendered
with report.py's Markdown/HTML writers)."""

from __future__ import annotations

import numpy as np
from etils import epath
from matplotlib.figure import Figure

from imagenot_jax.rank import report
from imagenot_jax.rank.report import _fmt, _interval, _percent

FIGURES = {
    "relative_improvement.png": "Relative improvement over the base model on every set",
    "correlation_matrix.png": "Pairwise Kendall tau-b and Spearman rho",
}
MARKERS = "osD^vP*Xph"


def _stat_cell(stat: dict) -> str:
    value = "undefined" if stat["value"] is None else f"{stat['value']:+.3f}"
    ci = _interval(stat.get("ci95"))
    return f"{value} {ci}".strip()


def format_summary(result: dict) -> str:
    """The terminal summary: accuracies and ranks per set, then every pair's tau and rho."""
    labels, metric = result["labels"], result["metric"]
    tags = [f"S{k + 1}" for k in range(len(labels))]
    lines = [f"{tag} = {label}" for tag, label in zip(tags, labels, strict=True)]
    width = max(len("model"), *(len(m["name"]) for m in result["models"]))
    header = f"{'model':<{width}}" + "".join(f"  {metric + ' ' + t:>9}  rank" for t in tags)
    lines.append(header)
    for m in result["models"]:
        cells = "".join(
            f"  {_percent(m['sets'][s]['accuracy']):>9}  {m['sets'][s]['rank']:>4g}" for s in labels
        )
        lines.append(f"{m['name']:<{width}}{cells}")
    index = {label: tag for label, tag in zip(labels, tags, strict=True)}
    for pair in result["pairs"]:
        name = f"{index[pair['a']]} vs {index[pair['b']]}"
        tau, rho = _stat_cell(pair["kendall_tau_b"]), _stat_cell(pair["spearman_rho"])
        lines.append(f"{name:<10} Kendall tau-b {tau:<24} Spearman rho {rho}")
    for label, names in result["dropped"].items():
        if names:
            lines.append(f"only in some sets, not compared ({label}): {', '.join(names)}")
    lines += [f"note: {note}" for note in result["notes"]]
    return "\n".join(lines)


# --- figures --------------------------------------------------------------------------------


def relative_improvement_figure(result: dict) -> Figure:
    """ImageNot's Figure 1 for N sets: X_i / X_base per model, one series per set, models by
    accuracy on the first set (ascending, left to right), 95% interval bars where available."""
    models = result["models"][::-1]  # least accurate on the first set on the left
    labels = result["labels"]
    figure = Figure(figsize=(max(7.0, 0.65 * len(models) + 3), 5.0), layout="constrained")
    axes = figure.add_subplot()
    x = np.arange(len(models), dtype=float)
    spread = min(0.3, 0.06 * len(labels))
    shifts = np.linspace(-spread, spread, len(labels)) if len(labels) > 1 else [0.0]
    for k, (label, shift) in enumerate(zip(labels, shifts, strict=True)):
        sides = [m["sets"][label] for m in models]
        y = np.array([s["relative_improvement"] for s in sides])
        errors = np.zeros((2, len(sides)))
        for j, side in enumerate(sides):
            if side["relative_improvement_ci95"]:
                low, high = side["relative_improvement_ci95"]
                errors[:, j] = [max(y[j] - low, 0.0), max(high - y[j], 0.0)]
        color = f"C{k % 10}"
        axes.plot(x + shift, y, "-", color=color, lw=0.8, alpha=0.6)
        axes.errorbar(
            x + shift, y, yerr=errors if errors.any() else None, fmt=MARKERS[k % len(MARKERS)],
            color=color, ms=5, lw=0.9, capsize=2, label=label,
        )  # fmt: skip
    ticks = [f"{m['name']} ({m['year']})" if m["year"] else m["name"] for m in models]
    axes.set_xticks(x, ticks, rotation=40, ha="right", fontsize=8)
    axes.axhline(1.0, color="grey", lw=0.8, ls=":")
    metric, base = result["metric"], result["base"]
    axes.set_xlabel(f"models by {metric} on {labels[0]} (ascending)")
    axes.set_ylabel(f"{metric} / {metric} of {base}")
    axes.set_title(f"Relative improvement over {base}")
    axes.legend(fontsize=8)
    return figure


def matrix_figure(result: dict) -> Figure:
    """Heat maps of the pairwise tau-b and rho matrices, values written in the cells."""
    labels = result["labels"]
    size = len(labels)
    figure = Figure(figsize=(4.2 * 2 + 1, 0.55 * size + 3), layout="constrained")
    titles = {"kendall_tau_b": "Kendall tau-b", "spearman_rho": "Spearman rho"}
    for axes, (key, title) in zip(figure.subplots(1, 2), titles.items(), strict=True):
        values = np.array(
            [[np.nan if v is None else v for v in row] for row in result["matrix"][key]["value"]]
        )
        image = axes.imshow(values, vmin=-1, vmax=1, cmap="RdBu")
        for i in range(size):
            for j in range(size):
                text = "-" if np.isnan(values[i, j]) else f"{values[i, j]:.2f}"
                color = "white" if abs(np.nan_to_num(values[i, j])) > 0.6 else "black"
                axes.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
        axes.set_xticks(range(size), labels, rotation=40, ha="right", fontsize=8)
        axes.set_yticks(range(size), labels, fontsize=8)
        axes.set_title(title)
    figure.colorbar(image, ax=figure.axes, shrink=0.8)
    return figure


# --- report.md and report.html --------------------------------------------------------------


def _accuracy_cell(side: dict) -> str:
    if not side["ci95"]:
        return _percent(side["accuracy"])
    low, high = side["ci95"]
    return f"{_percent(side['accuracy'])} [{_percent(low)}, {_percent(high)}]"


def _relative_cell(side: dict) -> str:
    ci = _interval(side["relative_improvement_ci95"], ".3f")
    return f"{side['relative_improvement']:.3f} {ci}".strip()


def _matrix_rows(result: dict, key: str) -> list[list[str]]:
    labels, matrix = result["labels"], result["matrix"][key]
    rows = []
    for i, label in enumerate(labels):
        cells = []
        for j in range(len(labels)):
            stat = {"value": matrix["value"][i][j], "ci95": matrix["ci95"][i][j]}
            cells.append("1" if i == j else _stat_cell(stat))
        rows.append([label, *cells])
    return rows


def _pair_rows(result: dict) -> tuple[list, list, list]:
    stats_rows, relative_rows, line_rows = [], [], []
    for pair in result["pairs"]:
        name = f"{pair['a']} vs {pair['b']}"
        tau, rho, orders = pair["kendall_tau_b"], pair["spearman_rho"], pair["pairs"]
        stats_rows.append([
            name, _stat_cell(tau), _fmt(tau["p_value"], ".2g"), _stat_cell(rho),
            _fmt(rho["p_value"], ".2g"), f"{orders['n_discordant']} of {orders['n_pairs']}",
        ])  # fmt: skip
        cells = [name]
        for key in ("with_base", "without_base"):
            c = pair["relative_improvement"][key]
            cells += [_fmt((c["pearson"] or {}).get("r")), _fmt((c["spearman"] or {}).get("rho"))]
        relative_rows.append(cells)
        cells = [f"{pair['b']} against {pair['a']}"]
        for kind in ("linear", "probit"):
            fit = pair["accuracy_on_the_line"][kind] or {}
            cells += [_fmt(fit.get("slope")), _fmt(fit.get("intercept")), _fmt(fit.get("r2"))]
        line_rows.append(cells)
    return stats_rows, relative_rows, line_rows


def _discordant(result: dict) -> list[str]:
    items = []
    for pair in result["pairs"]:
        found = [" vs ".join(p["models"]) for p in pair["pairs"]["discordant_pairs"]]
        flips = [p for p in pair["pair_flip_probability"] or [] if p["p_flip"] > 0][:3]
        likely = "; ".join(f"{' vs '.join(p['models'])} {p['p_flip']:.2f}" for p in flips)
        text = f"{pair['a']} vs {pair['b']}: {'; '.join(found) or 'none'}"
        items.append(text + (f" (most likely to flip: {likely})" if likely else ""))
    return items


def _set_rows(result: dict) -> list[list[str]]:
    rows = []
    for s in result["sets"]:
        source = s["reference"] or s["table"] or ", ".join(s["datasets"])
        examples = f"resampled ({s['examples']} examples)" if s["resampled"] else "held fixed"
        rows.append([s["label"], source, str(s["n_models"]), str(len(s["dropped"])), examples])
    return rows


def _blocks(result: dict) -> list[tuple]:
    labels, metric, base = result["labels"], result["metric"], result["base"]
    boot = result["bootstrap"]
    stats_rows, relative_rows, line_rows = _pair_rows(result)
    models = result["models"]
    model_rows = [
        [m["name"], str(m["year"] or "-")]
        + [f"{_accuracy_cell(m['sets'][s])} #{m['sets'][s]['rank']:g}" for s in labels]
        for m in models
    ]
    relative = [[m["name"]] + [_relative_cell(m["sets"][s]) for s in labels] for m in models]
    blocks = [
        ("h1", f"Ranking comparison of {len(labels)} sets: {', '.join(labels)}"),
        (
            "p",
            f"Metric: {metric}. {len(models)} models in all sets; base model of the relative "
            f"improvements: {base}. Bootstrap: {boot['draws']} draws (seed {boot['seed']}) over "
            "the test examples of the sets with per-example outcomes, the others held fixed; "
            "95% percentile intervals. Accuracy intervals are Clopper-Pearson 95% (none "
            "without n).",
        ),
        ("h2", "Sets"),
        ("table", ["set", "source", "models", "dropped", "bootstrap"], _set_rows(result)),
        ("h2", "Kendall tau-b (95% bootstrap interval)"),
        ("table", ["", *labels], _matrix_rows(result, "kendall_tau_b")),
        ("h2", "Spearman rho (95% bootstrap interval)"),
        ("table", ["", *labels], _matrix_rows(result, "spearman_rho")),
        ("img", "correlation_matrix.png", FIGURES["correlation_matrix.png"]),
        ("h2", "Pairs"),
        (
            "table",
            ["pair", "Kendall tau-b", "p", "Spearman rho", "p", "discordant pairs"],
            stats_rows,
        ),
        ("list", _discordant(result)),
        ("h2", "Models"),
        ("p", f"{metric} (%) [Clopper-Pearson 95%] #rank on each set."),
        ("table", ["model", "year", *labels], model_rows),
        ("h2", f"Relative improvement over {base}"),
        ("p", f"X_i / X_{base} [95% interval: {result['figure']['intervals']}]."),
        ("table", ["model", *labels], relative),
        ("img", "relative_improvement.png", FIGURES["relative_improvement.png"]),
        ("p", "Agreement of the relative improvements of each pair of sets."),
        (
            "table",
            [
                "pair",
                "Pearson r (with base)",
                "Spearman rho (with base)",
                "Pearson r (without base)",
                "Spearman rho (without base)",
            ],
            relative_rows,
        ),
        ("h2", "Accuracy on the line"),
        (
            "table",
            ["fit", "linear slope", "intercept", "R²", "probit slope", "intercept", "R²"],
            line_rows,
        ),
    ]
    dropped = [
        f"only in some sets, not compared ({label}): {', '.join(names)}"
        for label, names in result["dropped"].items()
        if names
    ]
    notes = dropped + result["notes"]
    if notes:
        blocks += [("h2", "Notes"), ("list", notes)]
    return blocks


def write_report(result: dict, out: epath.Path) -> list[str]:
    """Writes the PNG figures, report.md and report.html to out; returns their names."""
    out = epath.Path(out)
    makers = {
        "relative_improvement.png": relative_improvement_figure,
        "correlation_matrix.png": matrix_figure,
    }
    images = {name: report._png(make(result)) for name, make in makers.items()}
    for name, data in images.items():
        (out / name).write_bytes(data)
    blocks = _blocks(result)
    (out / "report.md").write_text(report._markdown(blocks))
    (out / "report.html").write_text(report._html(blocks, images))
    return [*images, "report.md", "report.html"]
