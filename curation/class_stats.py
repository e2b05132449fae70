"""Per-class statistics, class ranking, `classes.tsv` and the report of the select stage.

Kept apart from `curation.select` (which filters rows and picks images) because these functions
see one row per class: they rank the classes that have enough eligible images, keep the best
`num_classes` of them (after the WordNet spread rule) and describe the chosen ones.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation import files
from curation.errors import CurationError

SPLITS = ("train", "validation", "test")  # manifest split order (tfds_imagenot's SPLITS)
RESERVE = "reserve"  # over-selected rows (select.margin), used by the builder for dead links
MANIFEST_SPLITS = (*SPLITS, RESERVE)
# candidates.parquet columns copied into classes.tsv when present (after label, wnid, name,
# gloss); the wordnet stage may or may not write the last two.
CANDIDATE_EXTRAS = ("lexname", "depth", "imagenet_hops", "in_imagenet")
_TSV_UNSAFE = re.compile(r"[\t\r\n]+")


@dataclasses.dataclass(frozen=True)
class ClassStats:
    """Statistics of each class's eligible images (after filters and de-duplication).

    `values[name][i]` is statistic `name` of class `wnids[i]`; the `*_topk_mean` statistics are
    means over the class's best `k` images by the selection score (k = images kept per class),
    i.e. over exactly the images the class would contribute, which is what a class's quality
    should be judged on (a class with 5,000 mediocre and 1,100 excellent matches is excellent).
    """

    wnids: tuple[str, ...]
    values: Mapping[str, np.ndarray]


# rank_by name -> function of the per-class statistics; larger ranks first.
RANKERS: Mapping[str, Callable[[ClassStats], np.ndarray]] = {
    "text_score_topk_mean": lambda s: s.values["text_score_topk_mean"],
    "clip_score_topk_mean": lambda s: s.values["clip_score_topk_mean"],
    "score_topk_mean": lambda s: s.values["score_topk_mean"],
    "text_score_mean": lambda s: s.values["text_score_mean"],
    "clip_score_mean": lambda s: s.values["clip_score_mean"],
    "count": lambda s: s.values["count"].astype(np.float64),
}
# Rankers that mean nothing without the CLIP stage (every clip_score would be NaN).
CLIP_RANKERS = frozenset({"clip_score_topk_mean", "clip_score_mean"})


def _nan_stat(fn: Callable[[np.ndarray], float], values: np.ndarray) -> float:
    """fn over the non-NaN values; NaN when there are none (no CLIP stage, or no images)."""
    values = values[~np.isnan(values)]
    return float(fn(values)) if values.size else math.nan


def class_stats(
    wnids: Sequence[str],
    starts: np.ndarray,
    text: np.ndarray,
    clip: np.ndarray,
    score: np.ndarray,
    k: int,
) -> ClassStats:
    """Statistics per class: class `wnids[i]`'s rows start at row `starts[i]` (ascending) and
    end where the next class starts; rows are sorted best-first within a class (so
    `[start:start+k]` is the class's top k)."""
    stops = np.r_[starts[1:], len(text)][: len(starts)]
    names = ("count", "text_score_mean", "text_score_topk_mean", "clip_score_mean")
    names += ("clip_score_topk_mean", "score_topk_mean")
    values = {name: np.empty(len(starts), np.float64) for name in names}
    for i, (start, stop) in enumerate(zip(starts, stops, strict=True)):
        top = slice(start, min(stop, start + k))
        values["count"][i] = stop - start
        values["text_score_mean"][i] = _nan_stat(np.mean, text[start:stop])
        values["text_score_topk_mean"][i] = _nan_stat(np.mean, text[top])
        values["clip_score_mean"][i] = _nan_stat(np.mean, clip[start:stop])
        values["clip_score_topk_mean"][i] = _nan_stat(np.mean, clip[top])
        values["score_topk_mean"][i] = _nan_stat(np.mean, score[top])
    values["count"] = values["count"].astype(np.int64)
    return ClassStats(wnids=tuple(wnids), values=values)


@dataclasses.dataclass(frozen=True)
class ClassChoice:
    """The outcome of ranking: `chosen` in rank order (best first)."""

    ranked: tuple[str, ...]  # classes with >= min_images eligible images, best first
    chosen: tuple[str, ...]  # the first num_classes of `ranked` that the spread rule kept
    below_min_images: int  # classes with eligible images, but fewer than min_images
    dropped_by_spread: int  # of all ranked classes
    dropped_by_spread_before_cutoff: int  # ranked above the last chosen class
    rank_value: Mapping[str, float]  # wnid -> the rank_by statistic


def _rank_key(value: float, wnid: str) -> tuple[bool, float, str]:
    """NaN last, then larger value first, then wnid: a total order, so ties are fixed."""
    nan = math.isnan(value)
    return nan, 0.0 if nan else -value, wnid


def choose_classes(
    stats: ClassStats,
    rank_by: str,
    min_images: int,
    num_classes: int,
    spread: Callable[[list[str]], list[str]],
) -> ClassChoice:
    """Rank the classes with >= min_images eligible images by RANKERS[rank_by] (descending, NaN
    last, ties by wnid), apply `spread` (keeps a subsequence of the ranked list) and keep the
    first num_classes. Greedy spread over the whole list then truncating equals walking the
    ranked list until num_classes are kept, because a greedy decision only looks backwards."""
    value = np.asarray(RANKERS[rank_by](stats), np.float64)
    counts = stats.values["count"]
    eligible = [i for i in range(len(stats.wnids)) if counts[i] >= min_images]
    eligible.sort(key=lambda i: _rank_key(value[i], stats.wnids[i]))
    ranked = [stats.wnids[i] for i in eligible]
    kept = list(spread(ranked))
    unknown = sorted(set(kept) - set(ranked))
    if unknown:
        raise CurationError(f"wordnet.spread returned wnids that were not ranked: {unknown[:5]}")
    chosen = kept[:num_classes]
    last = ranked.index(chosen[-1]) if chosen else -1
    return ClassChoice(
        ranked=tuple(ranked),
        chosen=tuple(chosen),
        below_min_images=len(stats.wnids) - len(ranked),
        dropped_by_spread=len(ranked) - len(kept),
        dropped_by_spread_before_cutoff=last + 1 - len(chosen),
        rank_value={stats.wnids[i]: float(value[i]) for i in eligible},
    )


def read_candidates(workdir: pathlib.Path) -> dict[str, dict[str, object]]:
    """W/classes/candidates.parquet -> {wnid: {name, gloss, and the CANDIDATE_EXTRAS it has}}."""
    required = {"wnid": "string", "name": "string", "gloss": "string"}
    rows = files.read_candidates(workdir, required, CANDIDATE_EXTRAS).to_pylist()
    return {row["wnid"]: row for row in rows}


def selected_stats(labels: np.ndarray, values: np.ndarray, num_classes: int) -> dict[str, list]:
    """mean/median/min/max of `values` per label (NaN where a class has none); `labels` sorted
    (the manifest's order)."""
    fns = {"mean": np.mean, "median": np.median, "min": np.min, "max": np.max}
    bounds = np.searchsorted(labels, np.arange(num_classes + 1))
    slices = [values[bounds[i] : bounds[i + 1]] for i in range(num_classes)]
    return {name: [_nan_stat(fn, mine) for mine in slices] for name, fn in fns.items()}


def _cell(value: object) -> str:
    """One TSV field: no tabs or newlines (classes.tsv is read with quoting off)."""
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating):
        return "nan" if math.isnan(value) else f"{float(value):.6g}"
    return _TSV_UNSAFE.sub(" ", str(value)).strip()


def write_classes_tsv(path: pathlib.Path, columns: Mapping[str, Sequence[object]]) -> None:
    """Tab-separated, header first, one line per label; written atomically."""
    names = list(columns)
    rows = zip(*(columns[n] for n in names), strict=True)
    lines = ["\t".join(names)] + ["\t".join(_cell(v) for v in row) for row in rows]
    files.write_text_atomic(path, "\n".join(lines) + "\n")


def classes_columns(
    manifest: pa.Table,
    choice: ClassChoice,
    candidates: Mapping[str, Mapping[str, object]],
    matched: Mapping[str, int],
    eligible: Mapping[str, int],
) -> dict[str, list]:
    """classes.tsv columns in label order (labels follow sorted wnids): label, wnid, name, gloss
    (what tfds_imagenot reads), then rank (0 = best), rank_by_value, the candidate extras, row
    counts (matched: rows from match; eligible: after filters and de-duplication; selected and
    per split) and score statistics of the selected images."""
    wnids = sorted(choice.chosen)
    rank = {w: i for i, w in enumerate(choice.chosen)}
    columns: dict[str, list] = {
        "label": list(range(len(wnids))),
        "wnid": wnids,
        "name": [candidates[w]["name"] for w in wnids],
        "gloss": [candidates[w]["gloss"] for w in wnids],
        "rank": [rank[w] for w in wnids],
        "rank_by_value": [choice.rank_value[w] for w in wnids],
    }
    for extra in CANDIDATE_EXTRAS:
        if any(extra in candidates[w] for w in wnids):
            columns[extra] = [candidates[w].get(extra) for w in wnids]
    columns["matched"] = [int(matched.get(w, 0)) for w in wnids]
    columns["eligible"] = [int(eligible.get(w, 0)) for w in wnids]
    labels = manifest.column("label").to_numpy()
    split = manifest.column("split")
    reserve = np.asarray(pc.equal(split, RESERVE), bool)
    columns["selected"] = np.bincount(labels[~reserve], minlength=len(wnids)).tolist()
    for name in SPLITS:
        mine = np.asarray(pc.equal(split, name), bool)
        columns[name] = np.bincount(labels[mine], minlength=len(wnids)).tolist()
    if reserve.any():
        columns[RESERVE] = np.bincount(labels[reserve], minlength=len(wnids)).tolist()
    for score in ("text_score", "clip_score"):
        values = manifest.column(score).to_numpy(zero_copy_only=False).astype(np.float64)
        stats = selected_stats(labels[~reserve], values[~reserve], len(wnids))
        for stat, per_class in stats.items():
            columns[f"{score}_{stat}"] = per_class
    return columns


def class_counts(choice: ClassChoice, stats: ClassStats, min_images: int, hops: int) -> dict:
    """How many classes each class rule kept and dropped."""
    return {
        "with_eligible_images": len(stats.wnids),
        "min_images": min_images,
        "below_min_images": choice.below_min_images,
        "ranked": len(choice.ranked),
        "spread_hops": hops,
        "dropped_by_spread": choice.dropped_by_spread,
        "dropped_by_spread_before_cutoff": choice.dropped_by_spread_before_cutoff,
        "selected": len(choice.chosen),
    }


def image_counts(columns: Mapping[str, Sequence], per_class: int, reserve: int = 0) -> dict:
    """Manifest sizes: total, per split, and chosen classes short of per_class images; with a
    reserve (select.margin), its size and the classes short of it: those would need more
    candidates if more of their links die than the margin allows."""
    selected = list(columns["selected"])
    counts = {
        "per_class": per_class,
        "selected": int(sum(selected)),
        "splits": {name: int(sum(columns[name])) for name in SPLITS},
        "classes_short": sum(n < per_class for n in selected),
        "fewest_in_a_class": min(selected) if selected else 0,
    }
    if reserve:
        spare = list(columns.get(RESERVE, [0] * len(selected)))
        short = [w for w, n in zip(columns["wnid"], spare, strict=True) if n < reserve]
        counts[RESERVE] = {
            "per_class": reserve,
            "total": int(sum(spare)),
            "classes_short": len(short),
            "short_wnids": short,
        }
    return counts


def write_report(report: Mapping, workdir: pathlib.Path) -> None:
    """W/select_report.json and a readable W/select_report.md."""
    files.write_json(workdir / "select_report.json", report)
    files.write_text_atomic(workdir / "select_report.md", _markdown(report))


def _markdown(report: Mapping) -> str:
    source = report["input"]
    lines = ["# Select report", "", f"Input: {source['rows']} rows in {source['files']} files"]
    lines += [f"of the {source['stage']} stage.", "", "## Filters (in order)", ""]
    lines += [
        "| filter | active | rows in | rows out | dropped | notes |",
        "|---|---|---|---|---|---|",
    ]
    for f in report["filters"]:
        notes = ", ".join(f"{k} {v}" for k, v in f.items() if k not in _FILTER_FIELDS)
        lines.append(
            f"| {f['filter']} | {'yes' if f['active'] else 'off'} | {f['rows_in']} | "
            f"{f['rows_out']} | {f['dropped']} | {notes} |"
        )
    for title in ("dedup", "classes", "images", "settings"):
        lines += ["", f"## {title.capitalize()}", ""]
        lines += [f"- {key}: {value}" for key, value in report[title].items()]
    lines += ["", f"Rows eligible after filters and de-duplication: {report['eligible_rows']}"]
    return "\n".join(lines) + "\n"


_FILTER_FIELDS = frozenset({"filter", "active", "rows_in", "rows_out", "dropped"})
