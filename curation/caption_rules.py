"""Rules that real captions need on top of whole-word matching (`curation.text`).

Longest-match suppression: a lemma occurrence inside a longer matched one does not count, so
"hot dog" is not also "dog" and "domestic cat" not also "cat". Occurrences are spans of the
joined text (`text.joined_text`); one is nested when another span covers it. Spans that only
overlap ("hot dog house": "hot dog" and "dog house") both count.

Head noun: a caption naming several candidate synsets keeps the synset of the last noun of its
first noun phrase, found without a parser: the last matched lemma before the first preposition
or comma that follows its first match ("sunset over the ocean" -> sunset; "a tabby cat, a dog"
-> cat; "dog and cat" -> cat, no boundary). Everything is array code over a whole row group:
no per-caption Python.
"""

from __future__ import annotations

import functools
import itertools

import ahocorasick
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.text import Lexicon, normalize_array

# Multi-synset policies (config.match.multi_synset).
MULTI_SYNSET_POLICIES = ("drop", "best", "head_noun")

# English prepositions that end a noun phrase in alt text ("dog on the beach", "view from a
# hill"); normalized, single words. Conjunctions are left out: "salt and pepper" is one phrase.
PREPOSITIONS = tuple(
    " ".join(
        (
            "about above across after against along among around at before behind below",
            "beneath beside besides between beyond by despite down during except for from in",
            "inside into near of off on onto out outside over past per since through throughout",
            "to toward towards under underneath until up upon via with within without",
        )
    ).split()
)


def outermost(lexicon: Lexicon, lemma: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Mask of the occurrences not nested in a longer one (`text.find_spans`' output)."""
    if not len(end):
        return np.ones(0, bool)
    start = end - lexicon.lengths[lemma] - 1  # the space before the lemma
    order = np.lexsort((-end, start))  # by start, the longest first
    reach = np.maximum.accumulate(end[order])
    nested = np.zeros(len(end), bool)
    # Covered iff an occurrence starting no later already reaches as far (captions never share
    # a span: each ends with a separator).
    nested[order[1:]] = reach[:-1] >= end[order[1:]]
    return ~nested


@functools.lru_cache(maxsize=1)
def _preposition_automaton() -> ahocorasick.Automaton:
    automaton = ahocorasick.Automaton()
    for word in PREPOSITIONS:
        automaton.add_word(f" {word} ", len(word))
    automaton.make_automaton()
    return automaton


def boundaries(captions: pa.Array, text: str, ends: np.ndarray) -> np.ndarray:
    """Sorted offsets in the joined `text` where a noun phrase ends: the space before each
    preposition, and where each caption's first comma falls."""
    pairs = _preposition_automaton().iter(text)
    flat = np.fromiter(itertools.chain.from_iterable(pairs), np.int64)
    before_preposition = flat[0::2] - flat[1::2] - 1
    # A caption's first comma: its text before the comma, normalized, is a prefix of the
    # normalized caption, which starts one past the caption's leading space.
    parts = pc.split_pattern(captions.fill_null(""), ",", max_splits=1)
    has = np.flatnonzero(pc.list_value_length(parts).to_numpy(zero_copy_only=False) > 1)
    before_comma = np.zeros(0, np.int64)
    if len(has):
        first_part = pc.list_element(parts.take(pa.array(has)), 0)
        length = pc.utf8_length(normalize_array(first_part)).to_numpy(zero_copy_only=False)
        before_comma = np.r_[0, ends[:-1]][has] + 1 + length
    return np.sort(np.concatenate([before_preposition, before_comma]))


def heads(caption: np.ndarray, end: np.ndarray, cuts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Index of each matched caption's head occurrence (one per caption, caption order): the
    last occurrence ending at or before the first cut (`boundaries`) after its first one, or its
    last occurrence when no cut follows. `caption`/`end`: occurrences in text order."""
    if not len(caption):
        return np.zeros(0, np.int64)
    first = np.flatnonzero(np.r_[True, caption[1:] != caption[:-1]])
    at = np.searchsorted(cuts, end[first], side="left")
    cut = cuts[np.minimum(at, len(cuts) - 1)] if len(cuts) else np.zeros(len(first), np.int64)
    caption_end = ends[caption[first]]
    cut = np.where((at < len(cuts)) & (cut < caption_end), cut, caption_end)
    return np.searchsorted(end, cut, side="right") - 1
