"""Candidate rules of the WordNet classes stage: pure functions over WordNet 3.0 noun synsets.

Hops. One hop is one hypernym or hyponym pointer, followed in either direction; instance
pointers count too (instance_hypernyms/instance_hyponyms), because an instance (a city, a
person, a war) hangs below its class only through them: without them instances would be
infinitely far from everything, and "Paris" would never count as close to "national capital".
The distance of two synsets is the fewest such links between them, so with 2 hops siblings and
grandparents are within reach. `Graph.distances` gives it; `spread` and the ImageNet
exclusion use it.

Rules run in the order of `RULES`, each on the pool (wnid -> lemmas) that the previous one left,
and each is counted (synsets and lemmas in and out, and how many reference WNIDs survive).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import ml_collections
from nltk.corpus.reader.wordnet import Synset, WordNetCorpusReader

from curation import files
from curation.errors import CurationError
from curation.text import normalize

WNID_RE = re.compile(r"n\d{8}")

Pool = dict[str, tuple[str, ...]]  # wnid -> lemmas (raw WordNet names, later normalized)


def wnid_of(synset: Synset) -> str:
    """ImageNet's id of a noun synset: 'n' + its 8-digit WordNet 3.0 data.noun offset."""
    return f"n{synset.offset():08d}"


class Graph:
    """The undirected hypernym/hyponym graph of a reader's noun synsets, built lazily (a
    `spread` over a few thousand WNIDs touches only their neighbourhoods) and memoized."""

    def __init__(self, wn: WordNetCorpusReader):
        self._wn = wn
        self._links: dict[str, tuple[str, ...]] = {}

    def synset(self, wnid: str) -> Synset:
        """The noun synset of `wnid`, or a CurationError naming it."""
        found = None
        if WNID_RE.fullmatch(wnid):
            with warnings.catch_warnings():  # nltk warns, then returns None; we raise instead
                warnings.simplefilter("ignore")
                found = self._wn.synset_from_pos_and_offset("n", int(wnid[1:]))
        if found is None:
            raise CurationError(f"{wnid!r} is not a WordNet 3.0 noun synset id (WNID)")
        return found

    def links(self, wnid: str) -> tuple[str, ...]:
        found = self._links.get(wnid)
        if found is None:
            s = self.synset(wnid)
            related = (
                *s.hypernyms(),
                *s.instance_hypernyms(),
                *s.hyponyms(),
                *s.instance_hyponyms(),
            )
            found = self._links[wnid] = tuple(wnid_of(r) for r in related)
        return found

    def distances(self, sources: Iterable[str], hops: int) -> dict[str, int]:
        """Every synset within `hops` links of a source -> its distance (breadth first)."""
        dist = {s: 0 for s in sources}
        for s in dist:
            self.synset(s)  # checked even when hops == 0 follows no link
        frontier = list(dist)
        for d in range(1, hops + 1):
            reached = []
            for w in frontier:
                for n in self.links(w):
                    if n not in dist:
                        dist[n] = d
                        reached.append(n)
            frontier = reached
        return dist


@functools.lru_cache(maxsize=8)
def graph(wn: WordNetCorpusReader) -> Graph:
    """One memoized graph per reader (readers are cached per process by `wordnet.load`)."""
    return Graph(wn)


@functools.lru_cache(maxsize=8)
def noun_synsets(wn: WordNetCorpusReader) -> dict[str, Synset]:
    """Every noun synset by WNID, in WordNet (offset) order; 82,115 in WordNet 3.0."""
    synsets = files.progress(wn.all_synsets("n"), desc="WordNet nouns", unit="synset")
    return {wnid_of(s): s for s in synsets}


def spread(wn: WordNetCorpusReader, ranked_wnids: Sequence[str], hops: int) -> list[str]:
    """Greedy in rank order: keep a wnid unless it is within `hops` links of one already kept
    (a repeated wnid is at distance 0, so it is dropped). hops=0 keeps every distinct wnid.

    Marking the neighbourhood of each kept wnid is equivalent to checking each new wnid against
    all kept ones, because the distance is symmetric."""
    g = graph(wn)
    blocked: set[str] = set()
    kept = []
    for w in ranked_wnids:
        g.synset(w)
        if w in blocked:
            continue
        kept.append(w)
        blocked.update(g.distances([w], hops))
    return kept


# --- rules ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Context:
    """What the rules read besides the pool."""

    lemmas: Mapping[str, tuple[str, ...]]  # every noun synset -> raw lemma names, WordNet order
    imagenet_hops: Mapping[str, int]  # links to the nearest ImageNet-1k synset (only <= a cap)
    cfg: ml_collections.ConfigDict  # the wordnet config section


@dataclasses.dataclass(frozen=True)
class Rule:
    apply: Callable[[Pool, Context], Pool]
    enabled: Callable[[ml_collections.ConfigDict], bool]
    describe: Callable[[ml_collections.ConfigDict], str]
    lemma_rule: bool = False  # reports lemma counts (the earlier rules only move synsets)


def normalized_lemmas(names: Iterable[str]) -> tuple[str, ...]:
    """Normalized lemma names, empty ones dropped, duplicates dropped keeping the first
    ("jack-o'-lantern" and "jack_o'_lantern" are one lemma once normalized)."""
    return tuple(dict.fromkeys(n for n in map(normalize, names) if n))


def lemma_owners(pool: Mapping[str, Iterable[str]]) -> collections.Counter:
    """Normalized lemma -> number of synsets in `pool` that have it."""
    return collections.Counter(lemma for lemmas in pool.values() for lemma in set(lemmas))


def _keep_synsets(pool: Pool, keep: Callable[[str], bool]) -> Pool:
    return {w: lemmas for w, lemmas in pool.items() if keep(w)}


def _keep_lemmas(pool: Pool, keep: Callable[[str], bool]) -> Pool:
    """Drops lemmas, then the synsets left without any."""
    kept = {w: tuple(lemma for lemma in lemmas if keep(lemma)) for w, lemmas in pool.items()}
    return {w: lemmas for w, lemmas in kept.items() if lemmas}


def _not_imagenet(pool: Pool, ctx: Context) -> Pool:
    return _keep_synsets(pool, lambda w: ctx.imagenet_hops.get(w) != 0)


def _not_near_imagenet(pool: Pool, ctx: Context) -> Pool:
    near = ctx.cfg.max_hops
    return _keep_synsets(pool, lambda w: not 0 < ctx.imagenet_hops.get(w, near + 1) <= near)


def _normalize(pool: Pool, ctx: Context) -> Pool:
    normalized = {w: normalized_lemmas(lemmas) for w, lemmas in pool.items()}
    return {w: lemmas for w, lemmas in normalized.items() if lemmas}


def _long_enough(pool: Pool, ctx: Context) -> Pool:
    return _keep_lemmas(pool, lambda lemma: len(lemma) >= ctx.cfg.min_lemma_chars)


# Which synsets a lemma must be unique among to be kept (config wordnet.ambiguous_among).
AMBIGUITY_SCOPES: Mapping[str, Callable[[Pool, Context], Mapping[str, Iterable[str]]]] = {
    "candidates": lambda pool, ctx: pool,
    "nouns": lambda pool, ctx: {w: normalized_lemmas(n) for w, n in ctx.lemmas.items()},
}


def _unambiguous(pool: Pool, ctx: Context) -> Pool:
    owners = lemma_owners(AMBIGUITY_SCOPES[ctx.cfg.ambiguous_among](pool, ctx))
    return _keep_lemmas(pool, lambda lemma: owners[lemma] <= 1)


# The rules, in the order they run; keys are the rule names of the report.
RULES: Mapping[str, Rule] = {
    "exclude_imagenet": Rule(
        _not_imagenet,
        lambda c: c.exclude_imagenet,
        lambda c: "drop the ImageNet-1k synsets themselves",
    ),
    "imagenet_neighbours": Rule(
        _not_near_imagenet,
        lambda c: c.exclude_imagenet and c.max_hops > 0,
        lambda c: f"drop synsets within {c.max_hops} hypernym/hyponym links of an ImageNet-1k one",
    ),
    "normalize": Rule(
        _normalize,
        lambda c: True,
        lambda c: "lemmas lowercased, non-alphanumeric runs -> one space, duplicates merged",
        lemma_rule=True,
    ),
    "min_lemma_chars": Rule(
        _long_enough,
        lambda c: True,
        lambda c: f"drop normalized lemmas shorter than {c.min_lemma_chars} characters",
        lemma_rule=True,
    ),
    "drop_ambiguous": Rule(
        _unambiguous,
        lambda c: c.drop_ambiguous,
        lambda c: f"drop lemmas shared by several synsets among the {c.ambiguous_among}",
        lemma_rule=True,
    ),
}


# Not a rule but the first report row: the universe (wordnet.classes) as WordNet nouns.
_IN_WORDNET = Rule(
    lambda pool, ctx: pool,
    lambda c: True,
    lambda c: "the synsets asked for (wordnet.classes) that are WordNet 3.0 noun synsets",
)


@dataclasses.dataclass(frozen=True)
class Step:
    """One rule's outcome: its report row and the pool it left."""

    row: dict
    pool: Pool


def _row(name: str, rule: Rule, enabled: bool, cfg, before: Pool, after: Pool, ref) -> dict:
    """A report row; lemma counts only for lemma rules (the others move whole synsets)."""
    row = {
        "rule": name,
        "enabled": enabled,
        "description": rule.describe(cfg),
        "synsets_in": len(before),
        "synsets_out": len(after),
        "lemmas_in": sum(map(len, before.values())) if rule.lemma_rule else None,
        "lemmas_out": sum(map(len, after.values())) if rule.lemma_rule else None,
    }
    if ref is not None:
        row["reference_in"] = sum(w in before for w in ref)
        row["reference_out"] = sum(w in after for w in ref)
    return row


def apply_rules(
    universe: Sequence[str], ctx: Context, reference: Sequence[str] | None = None
) -> list[Step]:
    """Runs every rule from `universe` on; the first step is the universe itself restricted to
    WordNet 3.0 nouns, the last step's pool is the candidates. `reference` (distinct WNIDs) is
    only counted, never used to choose."""
    ref = None if reference is None else list(dict.fromkeys(reference))
    universe = list(dict.fromkeys(universe))
    listed: Pool = {w: () for w in universe}
    pool: Pool = {w: ctx.lemmas[w] for w in universe if w in ctx.lemmas}
    steps = [Step(_row("in_wordnet", _IN_WORDNET, True, ctx.cfg, listed, pool, ref), pool)]
    for name, rule in RULES.items():
        enabled = bool(rule.enabled(ctx.cfg))
        after = rule.apply(pool, ctx) if enabled else pool
        steps.append(Step(_row(name, rule, enabled, ctx.cfg, pool, after, ref), after))
        pool = after
    return steps
