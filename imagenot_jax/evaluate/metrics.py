"""Metrics of per-example predictions: accuracy, loss, per-class recall, exact intervals."""

from __future__ import annotations

import numpy as np
from scipy import stats


def summarize(predictions: dict[str, np.ndarray]) -> dict[str, float]:
    """Top-1, top-5, mean loss and the number of examples (what training logs as val_*)."""
    top5, labels = predictions["top5"], predictions["label"]
    return {
        "top1": float(np.mean(top5[:, 0] == labels)),
        "top5": float(np.mean((top5 == labels[:, None]).any(axis=1))),
        "loss": float(np.mean(predictions["loss"])),
        "n": len(labels),
    }


def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) binomial interval for a proportion."""
    alpha = 1.0 - level
    low = stats.beta.ppf(alpha / 2, successes, trials - successes + 1) if successes else 0.0
    high = 1.0
    if successes < trials:
        high = stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes)
    return float(low), float(high)


def per_class_recall(labels: np.ndarray, top1: np.ndarray, num_classes: int) -> list[float | None]:
    """Recall of every class (None where the split has no example of it)."""
    totals = np.bincount(labels, minlength=num_classes)
    hits = np.bincount(labels[top1 == labels], minlength=num_classes)
    return [float(h / t) if t else None for h, t in zip(hits, totals, strict=True)]


def metrics_from_predictions(predictions: dict[str, np.ndarray], num_classes: int) -> dict:
    """Top-1/5, loss, the top-1 interval and the equal-weighted accuracy (mean per-class recall
    over the classes present in the split)."""
    summary = summarize(predictions)
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
