"""Numeric cores of the diagnostics stage: pure numpy/scipy, no files, no plots.

Intra-class similarity is LAIONet's measure (Shirali & Hardt 2023): the mean cosine similarity
over all pairs of distinct images of a class, from L2-normalized CLIP image embeddings. With
S = sum of the n unit vectors, sum_{i != j} x_i . x_j = ||S||^2 - n, so the mean is
(||S||^2 - n) / (n (n - 1)): O(n d) instead of the O(n^2 d) of forming all pairs, which matters
at 1,000 images x 1,000 classes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import special, stats

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# Keys of `summarize`, in table order: q05 = 5% quantile, q50 = median.
SUMMARY_KEYS = ("n", "mean", "std", "min", "q05", "q25", "q50", "q75", "q95", "max")


def summarize(values: np.ndarray) -> dict[str, float]:
    """n, mean, sample std (ddof=1; NaN when n < 2), min, 5/25/50/75/95% quantiles (numpy's
    linear interpolation), max of the finite values (NaNs are not counted)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    out: dict[str, float] = {k: float("nan") for k in SUMMARY_KEYS}
    out["n"] = int(values.size)
    if values.size == 0:
        return out
    out["mean"] = float(values.mean())
    out["std"] = float(values.std(ddof=1)) if values.size > 1 else float("nan")
    out["min"], out["max"] = float(values.min()), float(values.max())
    for q, value in zip(QUANTILES, np.quantile(values, QUANTILES), strict=True):
        out[f"q{round(q * 100):02d}"] = float(value)
    return out


def group_rows(groups: Sequence[str] | np.ndarray) -> dict[str, np.ndarray]:
    """{group: row indices}, groups in sorted order; one stable argsort instead of a mask per
    group (1,000 classes x 1M rows would be 1e9 comparisons)."""
    groups = np.asarray(groups, dtype=object).astype(str)
    if groups.size == 0:
        return {}
    order = np.argsort(groups, kind="stable")
    names, starts = np.unique(groups[order], return_index=True)
    return dict(zip(names.tolist(), np.split(order, starts[1:]), strict=True))


def per_group_summary(groups: Sequence[str], values: np.ndarray) -> dict[str, dict[str, float]]:
    """`summarize` of `values` within each group."""
    values = np.asarray(values, dtype=np.float64)
    return {g: summarize(values[rows]) for g, rows in group_rows(groups).items()}


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm in float64 (stored embeddings are float16, so their norms are
    only ~1e-3 from 1; the closed forms below assume exactly 1)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.sqrt(np.einsum("nd,nd->n", x, x))[:, None]


# The functions on `units` take rows that are already unit vectors (float64), so a class is
# normalized once for its value and its interval.


def _pairwise_mean(units: np.ndarray) -> float:
    n = len(units)
    if n < 2:
        return float("nan")
    total = units.sum(axis=0)
    return float((total @ total - n) / (n * (n - 1)))


def mean_pairwise_cosine(x: np.ndarray) -> float:
    """Mean cosine over ordered pairs of distinct rows: (||sum||^2 - n) / (n (n - 1)); NaN for
    n < 2. Rows are L2-normalized here."""
    return _pairwise_mean(unit_rows(x))


def _normal_interval(center: float, se: float, confidence: float) -> tuple[float, float]:
    z = float(special.ndtri(0.5 + confidence / 2))
    return max(center - z * se, -1.0), min(center + z * se, 1.0)


def _jackknife(
    units: np.ndarray, confidence: float, rng: np.random.Generator | None, samples: int
) -> tuple[float, float]:
    del rng, samples  # deterministic; the signature matches the bootstrap's
    n = len(units)
    if n < 3:
        return float("nan"), float("nan")
    total = units.sum(axis=0)
    # einsum, not `units @ total`: a BLAS matrix-vector product here is ~20x slower when
    # BLAS threads contend with other processes, for no gain at this size.
    dots = np.einsum("nd,d->n", units, total)
    left_out = (total @ total - 2 * dots + 1 - (n - 1)) / ((n - 1) * (n - 2))
    se = float(np.sqrt((n - 1) / n * np.sum((left_out - left_out.mean()) ** 2)))
    return _normal_interval(_pairwise_mean(units), se, confidence)


def jackknife_interval(x: np.ndarray, confidence: float) -> tuple[float, float]:
    """Normal interval from the jackknife standard error of the pairwise mean, in O(n d): without
    row i the sum is S - x_i and ||S - x_i||^2 = ||S||^2 - 2 S.x_i + 1. The jackknife variance is
    a consistent estimate for U-statistics like this one (Arvesen 1969). NaN when n < 3."""
    return _jackknife(unit_rows(x), confidence, None, 0)


def _bootstrap(
    units: np.ndarray, confidence: float, rng: np.random.Generator, samples: int
) -> tuple[float, float]:
    n = len(units)
    if n < 3:
        return float("nan"), float("nan")
    values = []
    for start in range(0, samples, 128):  # chunks bound the (chunk, n) count matrix
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=min(128, samples - start))
        sums = counts @ units
        same = np.sum(counts.astype(np.float64) ** 2, axis=1)
        values.append((np.einsum("bd,bd->b", sums, sums) - same) / (n * n - same))
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(np.concatenate(values), [alpha, 1 - alpha])
    return float(lo), float(hi)


def bootstrap_interval(
    x: np.ndarray, confidence: float, rng: np.random.Generator, samples: int = 1000
) -> tuple[float, float]:
    """Percentile bootstrap over images. A resample with counts c_i would pair an image drawn
    twice with itself (cosine 1), inflating the mean; pairs of the same image are left out:
    (||sum c_i x_i||^2 - sum c_i^2) / (n^2 - sum c_i^2). Cost O(samples n d). NaN when n < 3."""
    return _bootstrap(unit_rows(x), confidence, rng, samples)


# Per-class interval methods (config.diagnostics.class_interval), on unit rows.
CLASS_INTERVALS: Mapping[str, Callable[..., tuple[float, float]]] = {
    "jackknife": _jackknife,
    "bootstrap": _bootstrap,
}


def class_similarity(
    x: np.ndarray, interval: str, confidence: float, rng: np.random.Generator, samples: int
) -> tuple[float, float, float]:
    """(mean pairwise cosine, interval low, interval high) of one class's embeddings."""
    units = unit_rows(x)
    return _pairwise_mean(units), *CLASS_INTERVALS[interval](units, confidence, rng, samples)


def subsample(rows: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """At most `cap` of `rows` (cap <= 0: all), drawn without replacement, in their order."""
    if cap <= 0 or len(rows) <= cap:
        return rows
    return np.sort(rng.choice(rows, size=cap, replace=False))


def mean_ci(
    values: np.ndarray, samples: int, confidence: float, seed: int
) -> tuple[float, float, float]:
    """(mean, lo, hi): percentile bootstrap interval of the mean over the finite values (e.g.
    over classes); NaN interval with fewer than 2 values."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    if values.size < 2:
        return float(values.mean()), float("nan"), float("nan")
    result = stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=samples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    ci = result.confidence_interval
    return float(values.mean()), float(ci.low), float(ci.high)


def paired_comparison(
    a: Mapping[str, float], b: Mapping[str, float], samples: int, confidence: float, seed: int
) -> dict:
    """A vs B on the keys (wnids) both have with finite values: mean of A - B with a paired
    bootstrap interval (resampling keys), Wilcoxon signed-rank p-value, and how often A > B."""
    common = sorted(k for k in a.keys() & b.keys() if np.isfinite(a[k]) and np.isfinite(b[k]))
    out: dict = {"n": len(common)}
    if not common:
        return out
    xa = np.array([a[k] for k in common])
    xb = np.array([b[k] for k in common])
    diff = xa - xb
    out["mean_a"], out["mean_b"] = float(xa.mean()), float(xb.mean())
    out["mean_diff"], out["diff_lo"], out["diff_hi"] = mean_ci(diff, samples, confidence, seed)
    out["a_greater"] = int(np.sum(diff > 0))
    out["wilcoxon_p"] = _wilcoxon_p(diff)
    return out


def _wilcoxon_p(diff: np.ndarray) -> float:
    """Two-sided signed-rank p; 1.0 when every difference is 0 (scipy would warn and give NaN)."""
    if not np.any(diff != 0):
        return 1.0
    return float(stats.wilcoxon(diff).pvalue)


def unpaired_comparison(
    a: np.ndarray, b: np.ndarray, samples: int, confidence: float, seed: int
) -> dict:
    """A vs B as independent samples (e.g. per-class values of datasets with disjoint classes,
    ImageNot vs LAIONet): difference of means with an independent-resampling percentile
    bootstrap interval, and the Mann-Whitney U p-value."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    out: dict = {"n_a": int(a.size), "n_b": int(b.size)}
    if a.size < 2 or b.size < 2:
        return out
    result = stats.bootstrap(
        (a, b),
        lambda x, y, axis: x.mean(axis=axis) - y.mean(axis=axis),
        n_resamples=samples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    out["mean_a"], out["mean_b"] = float(a.mean()), float(b.mean())
    out["mean_diff"] = out["mean_a"] - out["mean_b"]
    out["diff_lo"] = float(result.confidence_interval.low)
    out["diff_hi"] = float(result.confidence_interval.high)
    out["mannwhitney_p"] = float(stats.mannwhitneyu(a, b).pvalue)
    return out


def category_counts(values: Sequence[str | None]) -> list[tuple[str, int, float]]:
    """[(category, count, share)] by decreasing count then name; None counts as 'n/a'."""
    names = ["n/a" if v is None else str(v) for v in values]
    uniques, counts = np.unique(np.asarray(names, dtype=object).astype(str), return_counts=True)
    total = max(len(names), 1)
    rows = sorted(zip(uniques.tolist(), counts.tolist(), strict=True), key=lambda r: (-r[1], r[0]))
    return [(name, int(count), count / total) for name, count in rows]


def imagenet_overlap(
    in_imagenet: Sequence[bool | None] | None,
    hops: Sequence[int | None] | None,
    max_hops: int = 3,
) -> dict:
    """How close classes are to ImageNet-1k: classes that are ImageNet synsets, and classes
    within 1..max_hops WordNet links of one (cumulative: within 2 includes within 1; a hop count
    of 0 is an ImageNet synset). A null hop count means farther than the wordnet stage computed
    (or unknown), counted under `hops_null`. A None input means the column is not available."""
    out: dict = {}
    if in_imagenet is not None:
        known = [v for v in in_imagenet if v is not None]
        out["in_imagenet"] = int(sum(bool(v) for v in known))
        out["in_imagenet_unknown"] = len(in_imagenet) - len(known)
    if hops is not None:
        values = np.array([-1 if h is None else int(h) for h in hops], dtype=np.int64)
        known = values >= 0
        out["hops_0"] = int(np.sum(values == 0))
        for k in range(1, max_hops + 1):
            out[f"within_{k}"] = int(np.sum(known & (values <= k)))
        out["hops_null"] = int(np.sum(~known))
    return out
