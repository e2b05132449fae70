"""Statistics of a ranking comparison between two result sets (pure numpy/scipy).

Every function takes the accuracies of the *same* models, in the same order, on side A and side
B (fractions in [0, 1]). Ranks are 1 for the most accurate model, tied models share the average
rank, as in Spearman's rho. The bootstrap resamples test examples: all models of one side that
were evaluated on the same examples are resampled with one draw of example indices, so their
accuracies keep their correlation (a hard example is hard for every model), and each side is
drawn independently of the other (they are different datasets).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import warnings

import numpy as np
from scipy import sparse, stats

from imagenot_jax.errors import UserError

PROBIT_EPS = 1e-6  # accuracies are clipped to [eps, 1 - eps] before the probit transform
EXACT_SPEARMAN_MAX = 9  # Spearman p-values by full enumeration up to this many models (9! draws)


def _finite(value: float | np.floating | None) -> float | None:
    """A plain float, or None for NaN/inf (correlations of constant inputs are undefined)."""
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def ranks(acc: np.ndarray) -> np.ndarray:
    """Rank of every model along the last axis: 1 = most accurate, ties share the mean rank."""
    return stats.rankdata(-np.asarray(acc, dtype=np.float64), method="average", axis=-1)


def pairs(m: int) -> list[tuple[int, int]]:
    """All model index pairs i < j, in the order `pair_signs` uses."""
    return list(itertools.combinations(range(m), 2))


def pair_signs(acc: np.ndarray) -> np.ndarray:
    """sign(acc_i - acc_j) for every pair i < j along the last axis: (..., m) -> (..., P)."""
    acc = np.asarray(acc, dtype=np.float64)
    i, j = np.triu_indices(acc.shape[-1], k=1)
    return np.sign(acc[..., i] - acc[..., j])


def kendall_tau_b(sign_a: np.ndarray, sign_b: np.ndarray) -> np.ndarray:
    """Kendall's tau-b from pair signs, vectorised over leading axes (NaN where a side is all
    tied): (concordant - discordant) / sqrt(untied pairs in A * untied pairs in B)."""
    numerator = np.sum(sign_a * sign_b, axis=-1)
    denominator = np.sqrt(
        np.count_nonzero(sign_a, axis=-1).astype(np.float64) * np.count_nonzero(sign_b, axis=-1)
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def spearman_rho(acc_a: np.ndarray, acc_b: np.ndarray) -> np.ndarray:
    """Spearman's rho (Pearson correlation of average ranks), vectorised over leading axes."""
    ra, rb = ranks(acc_a), ranks(acc_b)
    ra = ra - ra.mean(axis=-1, keepdims=True)
    rb = rb - rb.mean(axis=-1, keepdims=True)
    denominator = np.sqrt(np.sum(ra * ra, axis=-1) * np.sum(rb * rb, axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, np.sum(ra * rb, axis=-1) / denominator, np.nan)


def spearman_p_value(x: np.ndarray, y: np.ndarray) -> float | None:
    """Two-sided p-value of Spearman's rho: exact (every permutation of y) for up to
    EXACT_SPEARMAN_MAX models, where scipy's t approximation is far off (rho = 1 on nine models
    has p = 2/9! = 5.5e-6, not ~1e-60); scipy's otherwise."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    observed = spearman_rho(x, y)
    if not np.isfinite(observed):
        return None
    if len(x) > EXACT_SPEARMAN_MAX:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _finite(stats.spearmanr(x, y).pvalue)
    # Ranks commute with permutations: rho of every permutation is one matrix product.
    rx, ry = ranks(x) - (len(x) + 1) / 2, ranks(y) - (len(x) + 1) / 2
    rhos = ry[_permutations(len(y))] @ rx / np.sqrt(np.sum(rx * rx) * np.sum(ry * ry))
    return float(np.mean(np.abs(rhos) >= abs(observed) - 1e-12))


@functools.cache
def _permutations(n: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(n))), dtype=np.int8)


def rank_correlations(acc_a: np.ndarray, acc_b: np.ndarray) -> dict:
    """Kendall tau-b and Spearman rho with scipy's two-sided p-values (None where undefined)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: NaN, reported as None
        tau = stats.kendalltau(acc_a, acc_b, variant="b")
    # The values from the exact formulas the bootstrap uses (scipy's may be 1 - 1e-16).
    tau_b = kendall_tau_b(pair_signs(acc_a), pair_signs(acc_b))
    rho = spearman_rho(acc_a, acc_b)
    return {
        "kendall_tau_b": {"value": _finite(tau_b), "p_value": _finite(tau.pvalue)},
        "spearman_rho": {"value": _finite(rho), "p_value": spearman_p_value(acc_a, acc_b)},
    }


def pair_orders(names: list[str], acc_a: np.ndarray, acc_b: np.ndarray) -> dict:
    """The pairs ordered oppositely on the two sides (discordant) and those tied on a side."""
    sign_a, sign_b = pair_signs(acc_a), pair_signs(acc_b)
    discordant, tied = [], []
    for (i, j), sa, sb in zip(pairs(len(names)), sign_a, sign_b, strict=True):
        entry = {
            "models": [names[i], names[j]],
            "a": [float(acc_a[i]), float(acc_a[j])],
            "b": [float(acc_b[i]), float(acc_b[j])],
        }
        if sa * sb < 0:
            discordant.append(entry)
        elif sa == 0 or sb == 0:
            tied.append(entry)
    return {
        "n_pairs": len(sign_a),
        "n_discordant": len(discordant),
        "discordant_pairs": discordant,
        "tied_pairs": tied,
    }


def probit(acc: np.ndarray, eps: float = PROBIT_EPS) -> np.ndarray:
    """Inverse normal CDF of accuracies clipped away from 0 and 1 (where it is infinite)."""
    return stats.norm.ppf(np.clip(np.asarray(acc, dtype=np.float64), eps, 1.0 - eps))


def line_fit(x: np.ndarray, y: np.ndarray) -> dict | None:
    """Least-squares line y = slope x + intercept, its R^2 and residuals (None if x is constant:
    the line is undefined)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0:
        return None
    design = np.stack([x, np.ones_like(x)], axis=1)
    (slope, intercept), *_ = np.linalg.lstsq(design, y, rcond=None)
    residuals = y - (slope * x + intercept)
    total = np.sum((y - y.mean()) ** 2)
    r2 = 1.0 - np.sum(residuals**2) / total if total > 0 else None
    return {
        "slope": float(slope),
        "intercept": float(intercept),
        "r2": _finite(r2),
        "residuals": [float(r) for r in residuals],
    }


def accuracy_on_the_line(acc_a: np.ndarray, acc_b: np.ndarray) -> dict:
    """B against A on linear axes and on probit axes (the 'accuracy on the line' fits)."""
    probit_fit = line_fit(probit(acc_a), probit(acc_b))
    if probit_fit is not None:
        probit_fit["clip_eps"] = PROBIT_EPS
    return {"linear": line_fit(acc_a, acc_b), "probit": probit_fit}


def _correlation(x: np.ndarray, y: np.ndarray) -> dict:
    if len(x) < 2:
        return {"n": len(x), "pearson": None, "spearman": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input or n = 2
        pearson = stats.pearsonr(x, y)
    return {
        "n": len(x),
        "pearson": {"r": _finite(pearson.statistic), "p_value": _finite(pearson.pvalue)},
        "spearman": {"rho": _finite(spearman_rho(x, y)), "p_value": spearman_p_value(x, y)},
    }


def relative_improvements(acc: np.ndarray, base: int) -> np.ndarray:
    """X_i / X_base: every model's accuracy relative to the base model's."""
    acc = np.asarray(acc, dtype=np.float64)
    if acc[base] <= 0:
        raise UserError("the base model's accuracy is 0; relative improvements are undefined")
    return acc / acc[base]


def relative_improvement_agreement(acc_a: np.ndarray, acc_b: np.ndarray, base: int) -> dict:
    """Both sides' relative improvements and their Pearson/Spearman correlation, with the base
    model (the point (1, 1)) and without it."""
    ri_a, ri_b = relative_improvements(acc_a, base), relative_improvements(acc_b, base)
    keep = np.arange(len(ri_a)) != base
    return {
        "a": [float(v) for v in ri_a],
        "b": [float(v) for v in ri_b],
        "with_base": _correlation(ri_a, ri_b),
        "without_base": _correlation(ri_a[keep], ri_b[keep]),
    }


# --- bootstrap over test examples -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PerExample:
    """One side's per-example outcomes on a common set of examples.

    correct: (n, m) bool, example e counted as a hit for model k (top-1 or top-5 hit).
    labels: (n,) int class labels, given when the metric is mean per-class recall.
    """

    correct: np.ndarray
    labels: np.ndarray | None = None


def _resample_counts(rng: np.random.Generator, draws: int, n: int) -> np.ndarray:
    """How often each example appears in each of `draws` resamples of size n: (draws, n)."""
    indices = rng.integers(0, n, size=(draws, n)) + n * np.arange(draws)[:, None]
    return np.bincount(indices.ravel(), minlength=draws * n).reshape(draws, n)


def bootstrap_accuracies(
    data: PerExample, draws: int, rng: np.random.Generator, chunk: int = 64
) -> np.ndarray:
    """Accuracy of every model in `draws` resamples of the examples (one resample of example
    indices per draw shared by all models): (draws, m). With labels, the accuracy is the mean
    per-class recall over the classes present in the resample."""
    correct = np.asarray(data.correct, dtype=np.float64)
    n, m = correct.shape
    class_of = hits_of = None
    if data.labels is not None:  # (classes, n) indicator of each example's class, and of hits
        labels = np.asarray(data.labels, dtype=np.int64)
        class_of = sparse.csr_matrix((np.ones(n), (labels, np.arange(n))))
        hits_of = [class_of.multiply(correct[:, k][None, :]).tocsr() for k in range(m)]
    out = np.empty((draws, m))
    for start in range(0, draws, chunk):
        counts = _resample_counts(rng, min(chunk, draws - start), n).astype(np.float64)
        rows = slice(start, start + len(counts))
        if class_of is None:
            out[rows] = counts @ correct / n
            continue
        totals = class_of @ counts.T  # (classes, d): examples of each class in each draw
        present = totals > 0
        for k, hits in enumerate(hits_of):
            recall = np.divide(hits @ counts.T, totals, out=np.zeros_like(totals), where=present)
            out[rows, k] = recall.sum(axis=0) / present.sum(axis=0)
    return out


def percentile_interval(values: np.ndarray, level: float = 0.95) -> list[float] | None:
    """Percentile bootstrap interval, ignoring undefined (NaN) draws; None if all are."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    alpha = (1.0 - level) / 2
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return [float(low), float(high)]


def bootstrap_rankings(draws_a: np.ndarray, draws_b: np.ndarray, names: list[str]) -> dict:
    """Bootstrap distribution of the ranking statistics from per-draw accuracies of each side
    ((draws, m); a side held fixed is its accuracies broadcast to every draw).

    Returns 95% percentile intervals of tau-b and rho, the fraction of draws with undefined
    statistics, and per pair the probability its order flips: the fraction of draws in which
    the two models are ordered oppositely on A and B (strictly; a tie on either side is no flip).
    """
    draws_a, draws_b = np.broadcast_arrays(np.atleast_2d(draws_a), np.atleast_2d(draws_b))
    sign_a, sign_b = pair_signs(draws_a), pair_signs(draws_b)
    tau = kendall_tau_b(sign_a, sign_b)
    rho = spearman_rho(draws_a, draws_b)
    flips = np.mean(sign_a * sign_b < 0, axis=0)
    flip_list = [
        {"models": [names[i], names[j]], "p_flip": float(p)}
        for (i, j), p in zip(pairs(len(names)), flips, strict=True)
    ]
    flip_list.sort(key=lambda e: -e["p_flip"])
    return {
        "kendall_tau_b_ci95": percentile_interval(tau),
        "spearman_rho_ci95": percentile_interval(rho),
        "undefined_draws": int(np.sum(~np.isfinite(tau))),
        "pair_flip_probability": flip_list,
    }
