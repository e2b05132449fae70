"""Report of the WordNet classes stage: rule counts, and how a released class list (e.g. the
1,000 ImageNot classes) fares under the same rules, to tell which rules the release followed."""

from __future__ import annotations

import collections
from collections.abc import Sequence

from nltk.corpus.reader.wordnet import WordNetCorpusReader

from curation import wordnet_rules as rules

_EXAMPLES = 10  # WNIDs listed per finding


def build(
    wn: WordNetCorpusReader,
    ctx: rules.Context,
    steps: Sequence[rules.Step],
    reference: Sequence[str] | None,
    imagenet: Sequence[str],
) -> dict:
    """The report (report.json; also the stage's summary)."""
    pool = steps[-1].pool
    lexnames = collections.Counter(rules.noun_synsets(wn)[w].lexname() for w in pool)
    return {
        "wordnet": {"version": wn.get_version(), "noun_synsets": len(ctx.lemmas)},
        "imagenet_synsets": len(imagenet),
        "config": ctx.cfg.to_dict(),
        "candidates": len(pool),
        "candidate_lemmas": sum(map(len, pool.values())),
        "candidates_by_lexname": dict(lexnames.most_common()),
        "rules": [step.row for step in steps],
        "reference": None if reference is None else _reference(wn, ctx, steps, reference),
    }


def _label(ctx: rules.Context, wnid: str) -> str:
    """'n01234567 (first lemma)' for examples."""
    lemmas = ctx.lemmas.get(wnid)
    return f"{wnid} ({lemmas[0]})" if lemmas else wnid


def _reference(wn, ctx: rules.Context, steps: Sequence[rules.Step], listed: Sequence[str]) -> dict:
    ref = list(dict.fromkeys(listed))
    known = [w for w in ref if w in ctx.lemmas]
    cap = max(ctx.cfg.imagenet_hops_cap, ctx.cfg.max_hops)
    hops = collections.Counter(ctx.imagenet_hops.get(w, cap + 1) for w in known)
    return {
        "file": ctx.cfg.reference_classes,
        "listed": len(listed),
        "distinct": len(ref),
        "in_wordnet": len(known),
        "not_in_wordnet": [w for w in ref if w not in ctx.lemmas][:_EXAMPLES],
        "in_imagenet": hops[0],
        "imagenet_hops": {
            **{str(h): hops[h] for h in range(cap + 1)},
            f">{cap}": hops[cap + 1],
        },
        "candidates": sum(w in steps[-1].pool for w in ref),
        "dropped_by": _dropped_by(ctx, steps, ref),
        "within_spread_hops": _close_pairs(wn, known, ctx.cfg.spread_hops, ctx),
        "lemmas": _lemma_findings(ctx, steps, known),
    }


def _dropped_by(ctx: rules.Context, steps: Sequence[rules.Step], ref: list[str]) -> dict:
    """Rule -> how many reference WNIDs it dropped (the first rule whose pool lacks them)."""
    dropped: dict[str, list[str]] = {}
    left = list(ref)
    for step in steps:
        gone = [w for w in left if w not in step.pool]
        if gone:
            dropped[step.row["rule"]] = gone
        left = [w for w in left if w in step.pool]
    return {
        rule: {"count": len(ws), "examples": [_label(ctx, w) for w in ws[:_EXAMPLES]]}
        for rule, ws in dropped.items()
    }


def _close_pairs(wn, known: list[str], hops: int, ctx: rules.Context) -> dict:
    """Reference pairs within `hops` links (select's spread rule would keep one of each)."""
    graph = rules.graph(wn)
    members = set(known)
    pairs = {}
    for w in known:
        for other, d in graph.distances([w], hops).items():
            if other in members and other != w:
                pairs[tuple(sorted((w, other)))] = d
    examples = sorted(pairs.items())[:_EXAMPLES]
    return {
        "hops": hops,
        "pairs": len(pairs),
        "classes": len({w for pair in pairs for w in pair}),
        "examples": [[_label(ctx, a), _label(ctx, b), d] for (a, b), d in examples],
    }


def _lemma_findings(ctx: rules.Context, steps: Sequence[rules.Step], known: list[str]) -> dict:
    """Short and ambiguous lemmas of the reference synsets, whichever rules dropped them.
    Ambiguous 'among candidates' = shared with another synset of the pool that reaches the
    drop_ambiguous rule; 'among nouns' = shared with any other WordNet noun synset."""
    names = [s.row["rule"] for s in steps]
    pool = steps[names.index("drop_ambiguous") - 1].pool
    among = {
        "candidates": rules.lemma_owners(pool),
        "nouns": rules.lemma_owners(rules.AMBIGUITY_SCOPES["nouns"](pool, ctx)),
    }
    own_in = {"candidates": pool, "nouns": {w: () for w in ctx.lemmas}}
    short = lemmas_total = without_long = 0
    ambiguous = {scope: collections.Counter() for scope in among}
    for w in known:
        lemmas = rules.normalized_lemmas(ctx.lemmas[w])
        long = [lemma for lemma in lemmas if len(lemma) >= ctx.cfg.min_lemma_chars]
        lemmas_total += len(lemmas)
        short += len(lemmas) - len(long)
        without_long += not long
        for scope, owners in among.items():
            # Its own entry does not make a lemma ambiguous (in 'nouns' every synset has one).
            mine = scope == "nouns" or w in own_in[scope]
            shared = sum(owners[lemma] - mine > 0 for lemma in long)
            ambiguous[scope]["lemmas"] += shared
            ambiguous[scope]["classes_with_any"] += shared > 0
            ambiguous[scope]["classes_with_all"] += bool(long) and shared == len(long)
    return {
        "normalized": lemmas_total,
        "shorter_than_min": short,
        "classes_without_long_lemma": without_long,
        **{f"ambiguous_among_{scope}": dict(counts) for scope, counts in ambiguous.items()},
    }


def markdown(report: dict) -> str:
    """report.md: the rule table, then the reference findings."""
    ref = report["reference"]
    lines = [
        "# WordNet classes",
        "",
        f"WordNet {report['wordnet']['version']}: {report['wordnet']['noun_synsets']} noun "
        f"synsets; ImageNet-1k: {report['imagenet_synsets']} synsets. "
        f"**{report['candidates']} candidates** with {report['candidate_lemmas']} lemmas.",
        "",
        "| rule | on | synsets in | out | lemmas in | out |"
        + (" reference in | out |" if ref else "")
        + " what |",
        "|---|---|---:|---:|---:|---:|" + ("---:|---:|" if ref else "") + "---|",
    ]
    for row in report["rules"]:
        cells = [row["rule"], "yes" if row["enabled"] else "no"]
        keys = ["synsets_in", "synsets_out", "lemmas_in", "lemmas_out"]
        keys += ["reference_in", "reference_out"] if ref else []
        cells += ["" if row[k] is None else str(row[k]) for k in keys]
        lines.append("| " + " | ".join([*cells, row["description"]]) + " |")
    if ref:
        lines += ["", f"## Reference classes ({ref['file']})", "", *_reference_md(ref)]
    return "\n".join(lines) + "\n"


def _reference_md(ref: dict) -> list[str]:
    close = ref["within_spread_hops"]
    lemmas = ref["lemmas"]
    lines = [
        f"- {ref['listed']} listed, {ref['distinct']} distinct, {ref['in_wordnet']} WordNet 3.0 "
        f"nouns (missing: {', '.join(ref['not_in_wordnet']) or 'none'}).",
        f"- ImageNet-1k classes among them: {ref['in_imagenet']}; links to the nearest ImageNet "
        f"class: {', '.join(f'{k}: {v}' for k, v in ref['imagenet_hops'].items())}.",
        f"- End up as candidates: **{ref['candidates']}**.",
        f"- Pairs within spread_hops={close['hops']} links of each other: {close['pairs']} "
        f"(involving {close['classes']} classes).",
        *(f"  - e.g. {a} / {b}: {d} link(s)" for a, b, d in close["examples"]),
        f"- Normalized lemmas: {lemmas['normalized']}, of which {lemmas['shorter_than_min']} "
        f"shorter than min_lemma_chars; {lemmas['classes_without_long_lemma']} classes have no "
        "long enough lemma.",
    ]
    for scope in ("candidates", "nouns"):
        counts = lemmas[f"ambiguous_among_{scope}"]
        lines.append(
            f"- Lemmas shared with another synset among the {scope}: {counts.get('lemmas', 0)}; "
            f"classes with any: {counts.get('classes_with_any', 0)}, with all: "
            f"{counts.get('classes_with_all', 0)}."
        )
    for rule, dropped in ref["dropped_by"].items():
        lines.append(
            f"- Dropped by {rule}: {dropped['count']} (e.g. {', '.join(dropped['examples'][:5])})."
        )
    return lines
