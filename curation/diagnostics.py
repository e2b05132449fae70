"""Diagnostics stage: how the curated dataset looks, as PNG figures, a markdown report and
summary.json in W/diagnostics/.

- Text similarity (ImageNot's Figures 4-5): the caption-to-class-definition scores of the selected
  images, overall, per split and per class (quantile bands), and the extreme classes.
- Intra-class similarity (LAIONet): mean pairwise cosine of CLIP image embeddings within each
  class, with a per-class interval and a dataset mean with a bootstrap interval over classes.
  A low value means diverse images; LAIONet found it far lower than ImageNet's.
- Class report: WordNet lexicographer-file mix, depth, and overlap with ImageNet-1k.
`config.diagnostics.compare` names a second workdir (e.g. LAIONet beside ImageNot, or an
ImageNet reference); its classes are matched by wnid for paired tests and per-class scatter
plots, and compared as independent samples otherwise (ImageNot and ImageNet share no class).

The stage reads only finished outputs and rewrites all of its own, so a rerun is a redo.
"""

from __future__ import annotations

import math
import pathlib

import ml_collections
import numpy as np
from absl import logging

from curation import cli, diagnostics_plots, diagnostics_report, files
from curation import diagnostics_stats as dstats
from curation.diagnostics_data import EMBEDDING_SOURCES, Dataset, load_dataset, load_embeddings
from curation.errors import CurationError


def defaults() -> ml_collections.ConfigDict:
    """config.diagnostics."""
    c = ml_collections.ConfigDict()
    c.name = ""  # label of this workdir in figures and tables ('' = its folder name)
    c.compare = ""  # another curated workdir to compare with ('' = none), e.g. LAIONet's
    c.compare_name = ""  # its label ('' = its folder name)
    # Image embeddings for intra-class similarity: 'clip_score' (W/clip_score/*.embeddings.npy),
    # 'images' (encode W/images/*.tar with config.clip_score's model), '' (skip that section).
    c.embeddings = "clip_score"
    c.max_images_per_class = 1000  # images per class drawn (seeded) for it; 0 = all
    c.min_images_per_class = 10  # classes with fewer usable embeddings get no value
    c.class_interval = "jackknife"  # per-class interval: 'jackknife' (O(n d)) | 'bootstrap'
    c.bootstrap_samples = 1000  # resamples of every bootstrap interval
    c.confidence = 0.95  # level of every interval
    c.extreme_classes = 10  # rows in the tables of the lowest / highest classes
    c.max_hops = 3  # overlap with ImageNet-1k reported within 1..max_hops WordNet links
    c.seed = -1  # sampling and bootstrap seed; -1 = config.seed
    return c


def _check(cfg: ml_collections.ConfigDict) -> None:
    if cfg.embeddings and cfg.embeddings not in EMBEDDING_SOURCES:
        raise CurationError(
            f"config.diagnostics.embeddings: {cfg.embeddings!r}, expected one of "
            f"{', '.join(EMBEDDING_SOURCES)} or '' (skip)"
        )
    if cfg.class_interval not in dstats.CLASS_INTERVALS:
        raise CurationError(
            f"config.diagnostics.class_interval: {cfg.class_interval!r}, expected one of "
            f"{', '.join(dstats.CLASS_INTERVALS)}"
        )
    if not 0 < cfg.confidence < 1:
        raise CurationError(f"config.diagnostics.confidence: {cfg.confidence}, expected in (0, 1)")
    if cfg.bootstrap_samples < 1:
        raise CurationError("config.diagnostics.bootstrap_samples: expected >= 1")


def text_section(dataset: Dataset) -> dict:
    """Summaries of text_score: overall, per split, per class, and of the per-class medians."""
    table = dataset.manifest
    scores = table.column("text_score").to_numpy()
    wnids = np.asarray(table.column("wnid").to_pylist(), dtype=object)
    per_class = dstats.per_group_summary(wnids, scores)
    return {
        "images": len(scores),
        "nan_skipped": int(np.sum(~np.isfinite(scores))),
        "overall": dstats.summarize(scores),
        "splits": dstats.per_group_summary(table.column("split").to_pylist(), scores),
        "class_medians": dstats.summarize(np.array([s["q50"] for s in per_class.values()])),
        "per_class": per_class,
    }


def intra_section(dataset: Dataset, config: ml_collections.ConfigDict, seed: int) -> dict:
    """Per-class mean pairwise cosine of image embeddings + interval; dataset mean + CI."""
    cfg = config.diagnostics
    if not cfg.embeddings:
        return {"skipped": "intra-class similarity skipped (config.diagnostics.embeddings='')"}
    emb = load_embeddings(dataset, cfg.embeddings, config, cfg.max_images_per_class, seed)
    if isinstance(emb, str):
        logging.warning("diagnostics %s: no embeddings: %s", dataset.name, emb)
        return {"skipped": f"no embeddings: intra-class similarity skipped ({emb})"}
    rng = np.random.default_rng(seed)
    per_class, too_few = {}, 0
    items = sorted(emb.by_class.items())
    for wnid, x in files.progress(items, desc=f"diagnostics: {dataset.name} classes"):
        if len(x) < max(cfg.min_images_per_class, 2):
            too_few += 1
            continue
        value, lo, hi = dstats.class_similarity(
            x, cfg.class_interval, cfg.confidence, rng, cfg.bootstrap_samples
        )
        per_class[wnid] = {"n": len(x), "value": value, "lo": lo, "hi": hi}
    values = np.array([c["value"] for c in per_class.values()])
    mean, lo, hi = dstats.mean_ci(values, cfg.bootstrap_samples, cfg.confidence, seed)
    return {
        "source": emb.source,
        "images": emb.counts,
        "classes": len(per_class),
        "classes_too_few_images": too_few,
        "interval": cfg.class_interval,
        "mean": mean,
        "mean_lo": lo,
        "mean_hi": hi,
        "per_class_summary": dstats.summarize(values),
        "per_class": per_class,
    }


def _value_counts(values: list[int]) -> dict[int, int]:
    uniques, counts = np.unique(np.asarray(values, dtype=np.int64), return_counts=True)
    return dict(zip(uniques.tolist(), counts.tolist(), strict=True))


def class_section(dataset: Dataset, max_hops: int) -> dict:
    """Lexicographer-file mix, WordNet depth, ImageNet-1k overlap of the classes."""
    info = dataset.classes
    fields = info.fields
    depths = None if fields["depth"] is None else [d for d in fields["depth"] if d is not None]
    present = set(dataset.manifest.column("wnid").to_pylist())
    return {
        "classes": len(info.wnids),
        "classes_without_images": sum(w not in present for w in info.wnids),
        "sources": info.sources,
        "lexname": None if fields["lexname"] is None else dstats.category_counts(fields["lexname"]),
        "depth": None if depths is None else dstats.summarize(np.array(depths, float)),
        "depth_counts": None if depths is None else _value_counts(depths),
        "imagenet": dstats.imagenet_overlap(
            fields["in_imagenet"], fields["imagenet_hops"], max_hops
        ),
    }


def _values(section: dict, key: str) -> dict[str, float]:
    return {w: s[key] for w, s in section.get("per_class", {}).items()}


def compare_section(a: dict, b: dict, key: str, cfg: ml_collections.ConfigDict, seed: int) -> dict:
    """Paired (classes both have, by wnid) and unpaired comparison of a per-class value."""
    va, vb = _values(a, key), _values(b, key)
    args = (cfg.bootstrap_samples, cfg.confidence, seed)
    paired = dstats.paired_comparison(va, vb, *args)
    return {
        "paired": paired,
        "unpaired": dstats.unpaired_comparison(list(va.values()), list(vb.values()), *args),
    }


def _load(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> list[Dataset]:
    cfg = config.diagnostics
    labels = config.wordnet.get("imagenet_labels", "") if "wordnet" in config else ""
    datasets = [load_dataset(workdir, cfg.name, labels)]
    if cfg.compare:
        other = load_dataset(pathlib.Path(cfg.compare).expanduser(), cfg.compare_name, labels)
        if other.name == datasets[0].name:
            other.name += " (compare)"
        datasets.append(other)
    return datasets


def _plain(value):
    """JSON-safe: NaN -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _without_per_class(section: dict) -> dict:
    return {k: v for k, v in section.items() if k != "per_class"}


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    """Writes W/diagnostics/{*.png, report.md, per_class.tsv, summary.json}; returns the summary."""
    cfg = config.diagnostics
    _check(cfg)
    seed = int(cfg.seed if cfg.seed >= 0 else config.get("seed", 0))
    datasets = _load(config, workdir)
    results = {
        d.name: {
            "dataset": d,
            "text": text_section(d),
            "intra": intra_section(d, config, seed),
            "classes": class_section(d, cfg.max_hops),
        }
        for d in datasets
    }
    comparison = {}
    if len(datasets) == 2:
        a, b = (results[d.name] for d in datasets)
        comparison = {
            "text_median": compare_section(a["text"], b["text"], "q50", cfg, seed),
            "intra": compare_section(a["intra"], b["intra"], "value", cfg, seed),
        }
    out_dir = workdir / "diagnostics"
    figures = diagnostics_plots.figures(out_dir, results)
    summary = _plain(
        {
            "datasets": {n: {"workdir": str(r["dataset"].workdir)} for n, r in results.items()},
            "text_score": {n: _without_per_class(r["text"]) for n, r in results.items()},
            "intra_class": {n: _without_per_class(r["intra"]) for n, r in results.items()},
            "classes": {n: r["classes"] for n, r in results.items()},
            "comparison": comparison,
            "figures": figures,
        }
    )
    files.write_text_atomic(out_dir / "per_class.tsv", diagnostics_report.per_class_tsv(results))
    files.write_text_atomic(
        out_dir / "report.md", diagnostics_report.markdown(results, comparison, figures, cfg)
    )
    files.write_json(out_dir / "summary.json", summary)
    for name, r in results.items():
        intra = r["intra"]
        logging.info(
            "diagnostics %s: %d images, text_score median %.4f; intra-class similarity %s",
            name,
            r["text"]["images"],
            r["text"]["overall"]["q50"],
            intra.get("skipped") or f"{intra['mean']:.4f} over {intra['classes']} classes",
        )
    return summary


if __name__ == "__main__":
    cli.run_stage(run)
