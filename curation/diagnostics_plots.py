"""Figures of the diagnostics stage, as PNG files. Matplotlib's Agg canvas is used directly (no
pyplot): no global figure state, no display backend needed on a cluster node.

The primitives take plain arrays keyed by dataset label, so one figure shows one dataset or
overlays two (the `compare` workdir); `figures` draws the stage's figures from its sections.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_DPI = 110
_SPLIT_ORDER = ("train", "validation", "test")
_INTRA_SCATTER = "intra-class similarity per class (bars: intervals)"
_TEXT_SCATTER = "median text score per class (bars: 25-75%)"


def _axes(width: float, height: float) -> tuple[Figure, Axes]:
    """A figure of `width` x `height` inches with one set of axes."""
    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.add_subplot()


def _save(
    figure: Figure,
    ax: Axes,
    path: pathlib.Path,
    title: str,
    xlabel: str,
    ylabel: str | None = None,
    legend: str = "best",
) -> str:
    """Labels the axes (and the legend at `legend`) and writes the PNG; returns its file name
    (the report links it relative to its folder)."""
    ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc=legend, fontsize=8)
    FigureCanvasAgg(figure)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=_DPI)
    return path.name


def histograms(
    path: pathlib.Path,
    series: Mapping[str, np.ndarray],
    xlabel: str,
    title: str,
    bins: int | np.ndarray = 50,
    ylabel: str = "density",
) -> str:
    """Overlaid step histograms normalized to densities, so series of different sizes (splits,
    datasets) compare by shape; the legend gives each series' n."""
    figure, ax = _axes(7, 4.2)
    finite = {k: np.asarray(v, float)[np.isfinite(v)] for k, v in series.items()}
    pooled = np.concatenate([v for v in finite.values() if v.size] or [np.zeros(1)])
    edges = np.histogram_bin_edges(pooled, bins=bins)
    for label, values in finite.items():
        if values.size:
            label = f"{label} (n={values.size:,})"
            ax.hist(values, bins=edges, density=True, histtype="step", lw=1.6, label=label)
    return _save(figure, ax, path, title, xlabel, ylabel)


def sorted_bands(
    path: pathlib.Path,
    curves: Mapping[str, Mapping[str, np.ndarray]],
    ylabel: str,
    title: str,
) -> str:
    """Per-class statistics sorted by `center` (e.g. the median), drawn against the class's
    rank fraction (0..1, so datasets with different class counts overlay): the center line,
    shaded bands [`lo`, `hi`] and [`outer_lo`, `outer_hi`] where given, and `points` (e.g. the
    means) as dots."""
    figure, ax = _axes(8, 4.5)
    for index, (label, curve) in enumerate(curves.items()):
        center = np.asarray(curve["center"], float)
        order = np.argsort(center, kind="stable")
        x = np.linspace(0, 1, len(center)) if len(center) > 1 else np.zeros(len(center))
        color = f"C{index}"
        ax.plot(x, center[order], color=color, lw=1.5, label=f"{label} ({len(center)} classes)")
        for lo, hi, alpha in (("outer_lo", "outer_hi", 0.12), ("lo", "hi", 0.25)):
            if lo in curve:
                low, high = np.asarray(curve[lo])[order], np.asarray(curve[hi])[order]
                ax.fill_between(x, low, high, color=color, alpha=alpha, lw=0)
        if "points" in curve:
            ax.plot(x, np.asarray(curve["points"])[order], ".", color=color, ms=2.5)
    return _save(figure, ax, path, title, "classes, sorted (rank fraction)", ylabel)


def scatter_pairs(
    path: pathlib.Path,
    a: np.ndarray,
    b: np.ndarray,
    labels: tuple[str, str],
    title: str,
    a_err: np.ndarray | None = None,
    b_err: np.ndarray | None = None,
) -> str:
    """One point per class shared by both datasets (A on x, B on y) with the y = x line, as in
    LAIONet's per-class comparison with ImageNet; `*_err` are (2, n) interval half-widths."""
    figure, ax = _axes(5.5, 5.5)
    ax.errorbar(a, b, xerr=a_err, yerr=b_err, fmt="o", ms=3, lw=0.6, alpha=0.7, capsize=0)
    both = np.concatenate([a, b])
    both = both[np.isfinite(both)]
    lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1, label="y = x")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    return _save(figure, ax, path, title, labels[0], labels[1], legend="upper left")


def grouped_barh(
    path: pathlib.Path,
    categories: Sequence[str],
    series: Mapping[str, Sequence[float]],
    xlabel: str,
    title: str,
) -> str:
    """Horizontal bars, one group per category (top to bottom in the given order), one bar per
    dataset within a group."""
    height = max(2.5, 0.28 * len(categories) * max(len(series), 1) + 1.2)
    figure, ax = _axes(7, height)
    y = np.arange(len(categories))[::-1]
    width = 0.8 / max(len(series), 1)
    for index, (label, values) in enumerate(series.items()):
        offset = (len(series) - 1) / 2 - index
        ax.barh(y + offset * width, values, height=width, label=label)
    ax.set_yticks(y, labels=list(categories), fontsize=8)
    return _save(figure, ax, path, title, xlabel, legend="lower right")


# ---------------------------------------------------------------- the stage's figures


def _text_figures(out_dir: pathlib.Path, results: dict) -> dict[str, str]:
    figures = {}
    for index, (name, r) in enumerate(results.items()):
        table = r["dataset"].manifest
        scores = table.column("text_score").to_numpy()
        splits = np.asarray(table.column("split").to_pylist(), dtype=object)
        order = {s: i for i, s in enumerate(_SPLIT_ORDER)}
        names = sorted(set(splits.tolist()), key=lambda s: (order.get(s, len(order)), s))
        series = {s: scores[splits == s] for s in names}
        figures[f"text_splits_{index}"] = histograms(
            out_dir / f"text_splits_{index}.png",
            series,
            "text score",
            f"{name}: text score by split",
        )
    if len(results) == 2:
        series = {
            n: r["dataset"].manifest.column("text_score").to_numpy() for n, r in results.items()
        }
        figures["text_datasets"] = histograms(
            out_dir / "text_datasets.png", series, "text score", "text score of selected images"
        )
    curves = {}
    for name, r in results.items():
        stats = list(r["text"]["per_class"].values())
        keys = {"center": "q50", "lo": "q25", "hi": "q75", "outer_lo": "q05", "outer_hi": "q95"}
        curves[name] = {k: np.array([s[q] for s in stats]) for k, q in keys.items()}
        curves[name]["points"] = np.array([s["mean"] for s in stats])
    figures["text_per_class"] = sorted_bands(
        out_dir / "text_per_class.png",
        curves,
        "text score",
        "per class: median (line), mean (dots), 25-75% and 5-95% bands",
    )
    if len(results) == 2:
        figures["text_scatter"] = _scatter(
            out_dir, "text_scatter.png", results, "q50", "q25", "q75", "text", _TEXT_SCATTER
        )
    return figures


def _scatter(out_dir, file, results, key, lo_key, hi_key, section, title) -> str | None:
    """A vs B per class shared by both (None if there is none), with interval bars."""
    (na, a), (nb, b) = ((n, r[section].get("per_class", {})) for n, r in results.items())
    common = sorted(a.keys() & b.keys())
    if not common:
        return None
    xa = np.array([a[w][key] for w in common])
    xb = np.array([b[w][key] for w in common])

    def err(side, x):  # (2, n) distances to the interval ends
        lo = np.array([side[w][lo_key] for w in common])
        hi = np.array([side[w][hi_key] for w in common])
        return np.nan_to_num(np.stack([x - lo, hi - x]), nan=0.0)

    return scatter_pairs(out_dir / file, xa, xb, (na, nb), title, err(a, xa), err(b, xb))


def _intra_figures(out_dir: pathlib.Path, results: dict) -> dict[str, str]:
    have = {n: r["intra"]["per_class"] for n, r in results.items() if r["intra"].get("per_class")}
    if not have:
        return {}
    figures = {
        "intra_hist": histograms(
            out_dir / "intra_hist.png",
            {n: np.array([c["value"] for c in pc.values()]) for n, pc in have.items()},
            "intra-class similarity (mean pairwise cosine)",
            "intra-class similarity of classes",
        ),
        "intra_per_class": sorted_bands(
            out_dir / "intra_per_class.png",
            {
                n: {k: np.array([c[k] for c in pc.values()]) for k in ("lo", "hi")}
                | {"center": np.array([c["value"] for c in pc.values()])}
                for n, pc in have.items()
            },
            "intra-class similarity",
            "per class, sorted, with per-class intervals",
        ),
    }
    if len(have) == 2:
        figures["intra_scatter"] = _scatter(
            out_dir, "intra_scatter.png", results, "value", "lo", "hi", "intra", _INTRA_SCATTER
        )
    return figures


def _class_figures(out_dir: pathlib.Path, results: dict) -> dict[str, str]:
    figures = {}
    lex = {
        n: dict((c, s) for c, _, s in r["classes"]["lexname"])
        for n, r in results.items()
        if r["classes"]["lexname"]
    }
    if lex:
        totals: dict[str, float] = {}
        for shares in lex.values():
            for c, s in shares.items():
                totals[c] = totals.get(c, 0.0) + s
        cats = sorted(totals, key=lambda c: (-totals[c], c))
        figures["classes_lexname"] = grouped_barh(
            out_dir / "classes_lexname.png",
            cats,
            {n: [shares.get(c, 0.0) for c in cats] for n, shares in lex.items()},
            "share of classes",
            "WordNet lexicographer files of the classes",
        )
    depth = {n: r["dataset"].classes.fields["depth"] for n, r in results.items()}
    depth = {n: np.array([d for d in v if d is not None], float) for n, v in depth.items() if v}
    if any(v.size for v in depth.values()):
        pooled = np.concatenate(list(depth.values()))
        bins = np.arange(pooled.min() - 0.5, pooled.max() + 1.5)
        figures["classes_depth"] = histograms(
            out_dir / "classes_depth.png",
            depth,
            "WordNet depth",
            "depth of the classes",
            bins,
            "share of classes",
        )
    return figures


def figures(out_dir: pathlib.Path, results: dict) -> dict[str, str]:
    """Writes every PNG (after removing those of an earlier run); returns {id: file name}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    found = _text_figures(out_dir, results) | _intra_figures(out_dir, results)
    found |= _class_figures(out_dir, results)
    return {k: v for k, v in found.items() if v}
