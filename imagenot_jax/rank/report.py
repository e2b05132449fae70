"""Reports of a ranking comparison: the terminal summary, report.md, a self-contained
report.html (figures embedded as base64 PNG, no external resources) and the PNG figures.

Everything is drawn from the comparison's result dict (what ranking.json holds), so a report can
be rebuilt from ranking.json alone. Figures use matplotlib's Agg canvas directly (no pyplot, no
global backend state).
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

COLORS = {"a": "tab:blue", "b": "tab:orange"}
FIGURES = {
    "relative_improvement.png": "Relative improvement over the base model by year",
    "accuracy_scatter.png": "B against A accuracy with the linear and probit fits",
    "rank_vs_rank.png": "Rank on B against rank on A",
}


# --- terminal -------------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _interval(ci: list[float] | None, fmt: str = "+.3f") -> str:
    return "" if not ci else f"[{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def _statistic(name: str, stat: dict) -> str:
    value = "undefined" if stat["value"] is None else f"{stat['value']:+.3f}"
    p = "" if stat["p_value"] is None else f"  p={stat['p_value']:.2g}"
    return f"{name:<15}{value} {_interval(stat.get('ci95'))}{p}"


def format_summary(result: dict) -> str:
    """The terminal summary: the aligned ranking table, tau and rho with their intervals."""
    metric, labels = result["metric"], result["labels"]
    width = max(len("model"), *(len(m["name"]) for m in result["models"]))
    header = f"{'model':<{width}}  {metric + ' A':>9}  {metric + ' B':>9}  rank A  rank B"
    lines = [f"A = {labels['a']}", f"B = {labels['b']}", header]
    for m in result["models"]:
        lines.append(
            f"{m['name']:<{width}}  {_percent(m['a']['accuracy']):>9}  "
            f"{_percent(m['b']['accuracy']):>9}  {m['a']['rank']:>6g}  {m['b']['rank']:>6g}"
        )
    lines.append(_statistic("Kendall tau-b", result["kendall_tau_b"]))
    lines.append(_statistic("Spearman rho", result["spearman_rho"]))
    pairs = result["pairs"]
    discordant = "; ".join(" vs ".join(p["models"]) for p in pairs["discordant_pairs"])
    lines.append(f"discordant pairs: {pairs['n_discordant']} of {pairs['n_pairs']} {discordant}")
    for side, only in result["unmatched"].items():
        if only:
            lines.append(f"only in {side[0].upper()} (not compared): {', '.join(only)}")
    lines += [f"note: {note}" for note in result["notes"]]
    return "\n".join(lines)


# --- figures --------------------------------------------------------------------------------


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _x_positions(result: dict) -> tuple[np.ndarray, str, list[str] | None]:
    """Paper years where every model has one, else the order of accuracy on A."""
    models = result["models"]
    years = [m["year"] for m in models]
    if all(y is not None for y in years):
        return np.array(years, dtype=float), "year of the architecture's paper", None
    order = np.arange(len(models), 0, -1, dtype=float)  # models are sorted best-on-A first
    return order, f"models by {result['metric']} on A (ascending)", [m["name"] for m in models]


def relative_improvement_figure(result: dict) -> Figure:
    """The study's Figure 1: X_i / X_base against the year, one series per set."""
    figure = Figure(figsize=(8, 4.8), layout="constrained")
    axes = figure.add_subplot()
    x, xlabel, ticks = _x_positions(result)
    for side, shift in (("a", -0.08), ("b", 0.08)):  # side by side where both sides agree
        y = [m[side]["relative_improvement"] for m in result["models"]]
        axes.plot(x + shift, y, "o", color=COLORS[side], label=result["labels"][side])
    for m, xi in zip(result["models"], x, strict=True):
        y = max(m["a"]["relative_improvement"], m["b"]["relative_improvement"])
        axes.annotate(
            m["name"], (xi + 0.1, y), fontsize=7, xytext=(2, 0), textcoords="offset points"
        )
    if ticks:
        axes.set_xticks(x, ticks, rotation=45, ha="right", fontsize=7)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(f"{result['metric']} / {result['metric']} of {result['base']}")
    axes.axhline(1.0, color="grey", lw=0.8, ls=":")
    axes.legend()
    axes.set_title(f"Relative improvement over {result['base']}")
    return figure


def _errors(models: list[dict], side: str) -> np.ndarray:
    """Clopper-Pearson error bars; none for a model without an interval (a table without n)."""
    acc = np.array([m[side]["accuracy"] for m in models])
    ci = np.array([m[side]["ci95"] or (m[side]["accuracy"],) * 2 for m in models])
    return np.abs(np.stack([acc - ci[:, 0], ci[:, 1] - acc]))


def accuracy_scatter_figure(result: dict) -> Figure:
    """B against A on linear axes (both fits drawn) and on probit axes (the probit fit)."""
    models, fits = result["models"], result["accuracy_on_the_line"]
    acc = {s: np.array([m[s]["accuracy"] for m in models]) for s in ("a", "b")}
    figure = Figure(figsize=(11, 5.2), layout="constrained")
    linear_axes, probit_axes = figure.subplots(1, 2)
    grid = np.linspace(acc["a"].min(), acc["a"].max(), 200)
    eps = (fits["probit"] or {}).get("clip_eps", 1e-6)
    probit = lambda v: stats.norm.ppf(np.clip(v, eps, 1 - eps))  # noqa: E731
    linear_axes.errorbar(
        acc["a"],
        acc["b"],
        xerr=_errors(models, "a"),
        yerr=_errors(models, "b"),
        fmt="o",
        color="black",
        ms=4,
        lw=0.8,
    )
    probit_axes.plot(probit(acc["a"]), probit(acc["b"]), "o", color="black", ms=4)
    for m, x, y in zip(models, acc["a"], acc["b"], strict=True):
        linear_axes.annotate(
            m["name"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
        probit_axes.annotate(
            m["name"], (probit(x), probit(y)), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    if fits["linear"]:
        f = fits["linear"]
        label = f"linear fit: slope {f['slope']:.2f}, R² {_fmt(f['r2'], '.2f')}"
        linear_axes.plot(grid, f["slope"] * grid + f["intercept"], color="tab:green", label=label)
    if fits["probit"]:
        f = fits["probit"]
        line = f["slope"] * probit(grid) + f["intercept"]
        label = f"probit fit: slope {f['slope']:.2f}, R² {_fmt(f['r2'], '.2f')}"
        linear_axes.plot(grid, stats.norm.cdf(line), color="tab:purple", ls="--", label=label)
        probit_axes.plot(probit(grid), line, color="tab:purple", ls="--", label=label)
    ticks = np.array([0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99])
    probit_axes.set_xticks(probit(ticks), [f"{100 * t:g}" for t in ticks])
    probit_axes.set_yticks(probit(ticks), [f"{100 * t:g}" for t in ticks])
    low = min(probit(acc["a"]).min(), probit(acc["b"]).min()) - 0.2
    high = max(probit(acc["a"]).max(), probit(acc["b"]).max()) + 0.2
    probit_axes.set_xlim(low, high)
    probit_axes.set_ylim(low, high)
    for axes, scale in ((linear_axes, "linear"), (probit_axes, "probit")):
        lims = [
            min(axes.get_xlim()[0], axes.get_ylim()[0]),
            max(axes.get_xlim()[1], axes.get_ylim()[1]),
        ]
        axes.plot(lims, lims, color="grey", lw=0.8, ls=":", label="y = x")
        axes.set_xlabel(f"{result['metric']} on A (%, {scale} axis)")
        axes.set_ylabel(f"{result['metric']} on B (%, {scale} axis)")
        axes.legend(fontsize=7, loc="upper left")
    figure.suptitle(f"A = {result['labels']['a']}, B = {result['labels']['b']}", fontsize=10)
    linear_axes.xaxis.set_major_formatter(lambda v, _: f"{100 * v:g}")
    linear_axes.yaxis.set_major_formatter(lambda v, _: f"{100 * v:g}")
    return figure


def rank_figure(result: dict) -> Figure:
    """Rank on B against rank on A; models in a discordant pair in red."""
    models = result["models"]
    flagged = {n for p in result["pairs"]["discordant_pairs"] for n in p["models"]}
    figure = Figure(figsize=(5.5, 5.5), layout="constrained")
    axes = figure.add_subplot()
    m = len(models)
    axes.plot([1, m], [1, m], color="grey", lw=0.8, ls=":")
    for model in models:
        color = "tab:red" if model["name"] in flagged else "black"
        x, y = model["a"]["rank"], model["b"]["rank"]
        axes.plot(x, y, "o", color=color)
        axes.annotate(model["name"], (x, y), fontsize=7, xytext=(4, -2), textcoords="offset points")
    axes.set_xlim(m + 0.5, 0.5)  # best (rank 1) on the right and at the top
    axes.set_ylim(m + 0.5, 0.5)
    axes.set_xlabel(f"rank on A: {result['labels']['a']} (1 = best)", fontsize=8)
    axes.set_ylabel(f"rank on B: {result['labels']['b']} (1 = best)", fontsize=8)
    tau = result["kendall_tau_b"]["value"]
    title = f"Kendall tau-b = {tau:.3f}" if tau is not None else "Kendall tau-b undefined"
    axes.set_title(title + (" (red: in a discordant pair)" if flagged else ""), fontsize=10)
    return figure


# --- report.md and report.html --------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else f"{value:{spec}}"


def _accuracy_cell(side: dict) -> str:
    if not side["ci95"]:  # a published table without n
        return _percent(side["accuracy"])
    low, high = side["ci95"]
    return f"{_percent(side['accuracy'])} [{_percent(low)}, {_percent(high)}]"


def _model_row(m: dict) -> list[str]:
    a, b = m["a"], m["b"]
    cells = [m["name"], str(m["year"] or "-"), _accuracy_cell(a), _accuracy_cell(b)]
    cells += [f"{a['rank']:g}", f"{b['rank']:g}"]
    cells += [_fmt(a["relative_improvement"]), _fmt(b["relative_improvement"])]
    return [*cells, _fmt(m["linear_residual"], "+.4f"), _fmt(m["probit_residual"], "+.3f")]


def _correlation_rows(result: dict) -> list[list[str]]:
    rows = []
    for key, title in (("with_base", "with the base"), ("without_base", "without the base")):
        c = result["relative_improvement"][key]
        pearson, spearman = c["pearson"] or {}, c["spearman"] or {}
        cells = [title, str(c["n"]), _fmt(pearson.get("r")), _fmt(pearson.get("p_value"), ".2g")]
        rows.append([*cells, _fmt(spearman.get("rho")), _fmt(spearman.get("p_value"), ".2g")])
    return rows


def _blocks(result: dict) -> list[tuple]:
    """The report as a list of blocks, rendered to Markdown and to HTML."""
    labels, metric, base = result["labels"], result["metric"], result["base"]
    boot = result["bootstrap"]
    stats_rows = [
        [name, _fmt(s["value"]), _interval(s["ci95"]) or "-", _fmt(s["p_value"], ".2g")]
        for name, s in (
            ("Kendall tau-b", result["kendall_tau_b"]),
            ("Spearman rho", result["spearman_rho"]),
        )
    ]
    pairs = result["pairs"]
    discordant = [" vs ".join(p["models"]) for p in pairs["discordant_pairs"]] or ["none"]
    flips = [
        [" vs ".join(p["models"]), f"{p['p_flip']:.3f}"]
        for p in (result["pair_flip_probability"] or [])
        if p["p_flip"] > 0
    ][:20]
    fits = [
        [kind, _fmt(f["slope"]), _fmt(f["intercept"]), _fmt(f["r2"])]
        for kind, f in result["accuracy_on_the_line"].items()
        if f
    ]
    model_header = ["model", "year", f"{metric} A (%)", f"{metric} B (%)", "rank A", "rank B"]
    model_header += [f"A / {base}", f"B / {base}", "linear residual", "probit residual"]
    resampled = ", ".join(s.upper() for s, r in boot["resampled"].items() if r) or "neither set"
    blocks = [
        ("h1", f"Ranking comparison: {labels['a']} (A) vs {labels['b']} (B)"),
        (
            "p",
            f"Metric: {metric}. {len(result['models'])} models in both sets; base model of "
            f"the relative improvements: {base}. Bootstrap: {boot['draws']} draws "
            f"(seed {boot['seed']}) over the test examples of {resampled}; 95% percentile "
            "intervals. Accuracy intervals are Clopper-Pearson 95% (none without n).",
        ),
        ("h2", "Rank correlation"),
        ("table", ["statistic", "value", "95% bootstrap interval", "p-value"], stats_rows),
        (
            "p",
            f"Discordant pairs ({pairs['n_discordant']} of {pairs['n_pairs']}): "
            f"{'; '.join(discordant)}.",
        ),
        ("h2", "Models"),
        ("table", model_header, [_model_row(m) for m in result["models"]]),
    ]
    if flips:
        blocks += [
            ("h2", "Pairs most likely to flip"),
            (
                "p",
                "Fraction of bootstrap draws in which the pair is ordered oppositely on A and B.",
            ),
            ("table", ["pair", "P(flip)"], flips),
        ]
    blocks += [
        ("h2", f"Relative improvement over {base}"),
        (
            "table",
            ["points", "n", "Pearson r", "p", "Spearman rho", "p"],
            _correlation_rows(result),
        ),
        ("img", "relative_improvement.png", FIGURES["relative_improvement.png"]),
        ("h2", "Accuracy on the line"),
        ("table", ["axes", "slope", "intercept", "R²"], fits),
        ("img", "accuracy_scatter.png", FIGURES["accuracy_scatter.png"]),
        ("h2", "Ranks"),
        ("img", "rank_vs_rank.png", FIGURES["rank_vs_rank.png"]),
    ]
    unmatched = [
        f"only in {side[0].upper()}: {', '.join(names)}"
        for side, names in result["unmatched"].items()
        if names
    ]
    notes = unmatched + result["notes"]
    if notes:
        blocks += [("h2", "Notes"), ("list", notes)]
    return blocks


def _markdown(blocks: list[tuple]) -> str:
    cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731
    out = []
    for kind, *body in blocks:
        if kind in ("h1", "h2"):
            out.append(f"{'#' * int(kind[1])} {body[0]}")
        elif kind == "p":
            out.append(body[0])
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in body[0]))
        elif kind == "table":
            header, rows = body
            lines = [header, ["---"] * len(header), *rows]
            out.append("\n".join("| " + " | ".join(map(cell, r)) + " |" for r in lines))
        elif kind == "img":
            out.append(f"![{body[1]}]({body[0]})")
    return "\n\n".join(out) + "\n"


_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
    "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
)


def _html(blocks: list[tuple], images: dict[str, bytes]) -> str:
    e = html.escape
    out = []
    for kind, *body in blocks:
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{e(body[0])}</{kind}>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in body[0]) + "</ul>")
        elif kind == "table":
            header, rows = body
            head = "".join(f"<th>{e(h)}</th>" for h in header)
            cells = "".join(
                "<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(images[body[0]]).decode("ascii")
            out.append(
                f'<figure><img alt="{e(body[1])}" src="data:image/png;base64,{data}">'
                f"<figcaption>{e(body[1])}</figcaption></figure>"
            )
    title = e(blocks[0][1])
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_STYLE}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n"
    )


def write_report(result: dict, out: epath.Path) -> list[str]:
    """Writes the PNG figures, report.md and report.html to out; returns their names."""
    out = epath.Path(out)
    makers = {
        "relative_improvement.png": relative_improvement_figure,
        "accuracy_scatter.png": accuracy_scatter_figure,
        "rank_vs_rank.png": rank_figure,
    }
    images = {name: _png(make(result)) for name, make in makers.items()}
    for name, data in images.items():
        (out / name).write_bytes(data)
    blocks = _blocks(result)
    (out / "report.md").write_text(_markdown(blocks))
    (out / "report.html").write_text(_html(blocks, images))
    return [*images, "report.md", "report.html"]
