"""Markdown report and per-class table of the diagnostics stage, built from the sections that
`curation.diagnostics` computes (`results[name]` = {dataset, text, intra, classes};
`comparison` = {text_median, intra} when a second workdir is compared). The report links the
PNG figures that `curation.diagnostics_plots` draws, by file name."""

from __future__ import annotations

import math

import ml_collections

from curation.diagnostics_stats import SUMMARY_KEYS

_NA = "n/a"


def _fmt(value, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return _NA
    return format(value, spec) if isinstance(value, float) else str(value)


def _cell(value) -> str:
    return _fmt(value).replace("|", "\\|")  # a '|' in a class name would split the cell


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _ci(mean, lo, hi) -> str:
    return f"{_fmt(mean)} [{_fmt(lo)}, {_fmt(hi)}]"


def _names(results: dict, dataset_name: str) -> dict[str, str]:
    info = results[dataset_name]["dataset"].classes
    return dict(zip(info.wnids, info.names, strict=True))


def _image(figures: dict, key: str, alt: str) -> str:
    return f"![{alt}]({figures[key]})\n\n" if key in figures else ""


def _inputs(results: dict) -> str:
    rows = [
        [
            n,
            str(r["dataset"].workdir),
            r["text"]["images"],
            r["classes"]["classes"],
            r["classes"]["classes_without_images"],
            r["text"]["nan_skipped"],
        ]
        for n, r in results.items()
    ]
    header = ["dataset", "workdir", "images", "classes", "classes without images", "NaN scores"]
    return _table(header, rows)


def _text(results: dict, figures: dict, k: int) -> str:
    rows = []
    for name, r in results.items():
        rows.append([name, "all"] + [r["text"]["overall"][q] for q in SUMMARY_KEYS])
        rows += [[name, s] + [v[q] for q in SUMMARY_KEYS] for s, v in r["text"]["splits"].items()]
        rows.append([name, "class medians"] + [r["text"]["class_medians"][q] for q in SUMMARY_KEYS])
    out = ["## Text similarity (caption vs class definition)\n\n"]
    out += [
        "Scores of the selected images; q05..q95 are quantiles (q50 the median). ",
        "'class medians' summarizes the per-class medians.\n\n",
        _table(["dataset", "rows", *SUMMARY_KEYS], rows),
        "\n",
    ]
    out += [_image(figures, key, key) for key in sorted(figures) if key.startswith("text_")]
    for name, r in results.items():
        per_class, names = r["text"]["per_class"], _names(results, name)
        ranked = sorted(per_class, key=lambda w: (per_class[w]["q50"], w))
        for label, chosen in (("lowest", ranked[:k]), ("highest", ranked[::-1][:k])):
            out.append(f"### {name}: {label} {len(chosen)} classes by median text score\n\n")
            rows = [
                [
                    w,
                    names.get(w, ""),
                    *(per_class[w][q] for q in ("n", "mean", "q05", "q50", "q95")),
                ]
                for w in chosen
            ]
            out.append(_table(["wnid", "name", "n", "mean", "q05", "median", "q95"], rows) + "\n")
    return "".join(out)


def _intra(results: dict, figures: dict, k: int, cfg: ml_collections.ConfigDict) -> str:
    out = [
        "## Intra-class image similarity\n\n",
        "Mean cosine similarity of CLIP image embeddings over pairs of distinct images of a ",
        f"class (at most {cfg.max_images_per_class or 'all'} images per class, seeded); ",
        f"per-class intervals: {cfg.class_interval}; dataset mean: {cfg.confidence:.0%} ",
        "bootstrap interval over classes.\n\n",
    ]
    rows = []
    for name, r in results.items():
        intra = r["intra"]
        if "skipped" in intra:
            out.append(f"- {name}: {intra['skipped']}\n")
            continue
        c, s = intra["images"], intra["per_class_summary"]
        rows.append(
            [
                name,
                intra["source"],
                c["sampled"],
                c["used"],
                c["missing"],
                c["invalid"],
                intra["classes"],
                intra["classes_too_few_images"],
                _ci(intra["mean"], intra["mean_lo"], intra["mean_hi"]),
                s["min"],
                s["q50"],
                s["max"],
            ]
        )
    if rows:
        header = [
            "dataset",
            "source",
            "sampled",
            "used",
            "missing",
            "NaN/undecodable",
            "classes",
            f"classes < {cfg.min_images_per_class} images",
            "mean [CI]",
            "class min",
            "class median",
            "class max",
        ]
        out += ["\n", _table(header, rows), "\n"]
    out += [_image(figures, key, key) for key in sorted(figures) if key.startswith("intra_")]
    for name, r in results.items():
        per_class, names = r["intra"].get("per_class", {}), _names(results, name)
        ranked = sorted(per_class, key=lambda w: (per_class[w]["value"], w))
        for label, chosen in (("most diverse", ranked[:k]), ("most uniform", ranked[::-1][:k])):
            if chosen:
                out.append(f"### {name}: {label} {len(chosen)} classes\n\n")
                rows = [
                    [
                        w,
                        names.get(w, ""),
                        per_class[w]["n"],
                        _ci(per_class[w]["value"], per_class[w]["lo"], per_class[w]["hi"]),
                    ]
                    for w in chosen
                ]
                out.append(_table(["wnid", "name", "images", "similarity [interval]"], rows) + "\n")
    return "".join(out)


def _comparison(results: dict, comparison: dict, cfg: ml_collections.ConfigDict) -> str:
    a, b = results
    out = [
        f"## Comparison: {a} (A) vs {b} (B)\n\n",
        "Paired: classes of both (same wnid), A - B, bootstrap interval over classes, Wilcoxon ",
        "signed-rank test. Unpaired: all classes of each, difference of means, independent ",
        f"bootstrap, Mann-Whitney U test. Intervals: {cfg.confidence:.0%}.\n\n",
    ]
    rows = []
    for label, key in (("median text score", "text_median"), ("intra-class similarity", "intra")):
        p, u = comparison[key]["paired"], comparison[key]["unpaired"]
        rows.append(
            [
                label,
                "paired",
                p["n"],
                p.get("mean_a"),
                p.get("mean_b"),
                _ci(p.get("mean_diff"), p.get("diff_lo"), p.get("diff_hi")),
                f"Wilcoxon p={_fmt(p.get('wilcoxon_p'), '.3g')}",
                f"A > B in {p.get('a_greater', _NA)}/{p['n']}",
            ]
        )
        rows.append(
            [
                label,
                "unpaired",
                f"{u['n_a']} / {u['n_b']}",
                u.get("mean_a"),
                u.get("mean_b"),
                _ci(u.get("mean_diff"), u.get("diff_lo"), u.get("diff_hi")),
                f"Mann-Whitney p={_fmt(u.get('mannwhitney_p'), '.3g')}",
                "",
            ]
        )
    header = [
        "per-class value",
        "test",
        "classes",
        "mean A",
        "mean B",
        "A - B [CI]",
        "p",
        "direction",
    ]
    return "".join(out) + _table(header, rows) + "\n"


def _classes(results: dict, figures: dict) -> str:
    out = ["## Classes\n\n"]
    lex = {n: {c: (k, s) for c, k, s in r["classes"]["lexname"] or []} for n, r in results.items()}
    cats = sorted(
        {c for v in lex.values() for c in v},
        key=lambda c: (-sum(v.get(c, (0, 0))[0] for v in lex.values()), c),
    )
    if cats:
        rows = [
            [c] + [f"{v[c][0]} ({v[c][1]:.1%})" if c in v else "0" for v in lex.values()]
            for c in cats
        ]
        out += ["### Lexicographer files\n\n", _table(["lexname", *lex], rows), "\n"]
    out.append(_image(figures, "classes_lexname", "lexname mix"))
    rows = [
        [n] + [(r["classes"]["depth"] or {}).get(q) for q in SUMMARY_KEYS]
        for n, r in results.items()
    ]
    out += ["### WordNet depth\n\n", _table(["dataset", *SUMMARY_KEYS], rows), "\n"]
    out.append(_image(figures, "classes_depth", "depth"))
    keys = list(dict.fromkeys(k for r in results.values() for k in r["classes"]["imagenet"]))
    rows = [[k] + [r["classes"]["imagenet"].get(k) for r in results.values()] for k in keys]
    out.append("### Overlap with ImageNet-1k\n\n")
    out.append(
        "in_imagenet: classes that are ImageNet-1k synsets; within_k: classes within k "
        "WordNet links of one (cumulative; hops_null: beyond the computed range).\n\n"
    )
    out.append(_table(["measure", *results], rows) if rows else f"{_NA}\n")
    rows = [
        [f, *(r["classes"]["sources"][f] for r in results.values())]
        for f in next(iter(results.values()))["classes"]["sources"]
    ]
    out += ["\n### Where the class fields come from\n\n", _table(["field", *results], rows)]
    return "".join(out)


def markdown(results: dict, comparison: dict, figures: dict, cfg: ml_collections.ConfigDict) -> str:
    """report.md: tables in markdown, figures embedded by relative path (same folder)."""
    title = " vs ".join(results)
    parts = [
        f"# Diagnostics: {title}\n\n",
        _inputs(results),
        "\n",
        _text(results, figures, cfg.extreme_classes),
        _intra(results, figures, cfg.extreme_classes, cfg),
    ]
    if comparison:
        parts.append(_comparison(results, comparison, cfg))
    parts.append(_classes(results, figures))
    return "".join(parts)


def per_class_tsv(results: dict) -> str:
    """One line per (dataset, class): WordNet fields, text-score summary, intra-class value."""
    fields = ("lexname", "depth", "imagenet_hops", "in_imagenet")
    text_keys = [f"text_{q}" for q in SUMMARY_KEYS]
    header = [
        "dataset",
        "wnid",
        "name",
        *fields,
        *text_keys,
        "intra_n",
        "intra",
        "intra_lo",
        "intra_hi",
    ]
    lines = ["\t".join(header)]
    for name, r in results.items():
        info = r["dataset"].classes
        text, intra = r["text"]["per_class"], r["intra"].get("per_class", {})
        for i, (wnid, cname) in enumerate(zip(info.wnids, info.names, strict=True)):
            extra = [info.fields[f][i] if info.fields[f] is not None else None for f in fields]
            t, c = text.get(wnid, {}), intra.get(wnid, {})
            values = [
                name,
                wnid,
                cname,
                *extra,
                *(t.get(q) for q in SUMMARY_KEYS),
                *(c.get(q) for q in ("n", "value", "lo", "hi")),
            ]
            lines.append("\t".join("" if v is None else _fmt(v, ".6g") for v in values))
    return "\n".join(lines) + "\n"
