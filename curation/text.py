"""Text: normalization shared by lemmas and captions (so that matching is whole-word and
insensitive to case and punctuation), and the search of lemmas in captions.

Normalization has two implementations: `normalize` (Python, one string: lemmas, tests) and
`normalize_array` (Arrow compute, whole columns: captions). They agree on every code point that
Python's Unicode database assigns (checked over all of them in tests/test_curation_match.py):
lowercasing is the per-code-point mapping that Arrow's `utf8_lower` does, so Python's two
context-dependent exceptions are undone (capital I with dot -> "i", not "i" + combining dot;
capital sigma -> small sigma, never the word-final form). `joined_text` is the matcher's fast
path: one string holding a whole row group of normalized, space-padded captions.

Search: every lemma, normalized and padded with spaces, is a key of one Aho-Corasick automaton
(`build_lexicon`); one pass over a `joined_text` finds every whole-word occurrence of every
lemma, overlapping ones included (`find_lemmas`), and numpy maps them back to captions and
synsets (`resolve`): no per-lemma loop, and no per-caption Python.
"""

from __future__ import annotations

import dataclasses
import itertools
import re

import ahocorasick
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.errors import CurationError

_NOT_WORD = re.compile(r"[\W_]+")  # \W is Unicode-aware; "_" is a word character in regex
NOT_WORD_RE2 = r"[^\p{L}\p{N}]+"  # The same class for Arrow (RE2): not a letter, not a digit.
# str.lower's full case mappings that Arrow's simple mapping lacks (see the module docstring).
_AS_ARROW = str.maketrans({"\u0130": "i", "\u03a3": "\u03c3"})

# Separates captions in `joined_text`; normalized text never holds it (not a letter or digit).
SEPARATOR = "\n"
_SPACE, _NEWLINE = ord(" "), ord(SEPARATOR)
# ASCII bytes: A-Z -> a-z, other non-alphanumerics -> space. Bytes >= 0x80 (UTF-8 multi-byte
# sequences) are left alone: captions holding them take the Arrow path first.
_ASCII_MAP = np.arange(256, dtype=np.uint8)
_ASCII_MAP[:128] = [
    (c | 0x20) if chr(c).isalpha() else c if chr(c).isalnum() else _SPACE for c in range(128)
]


def normalize(text: str) -> str:
    """'Jack-O'-Lantern!' -> 'jack o lantern': lowercase; runs of non-letters/digits -> ' '."""
    return _NOT_WORD.sub(" ", text.translate(_AS_ARROW).lower()).strip()


def normalize_array(texts: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """`normalize` of every string of an Arrow string array (nulls stay null)."""
    spaced = pc.replace_substring_regex(pc.utf8_lower(texts), NOT_WORD_RE2, " ")
    return pc.utf8_trim(spaced, " ")


def decode_utf8(values: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, int]:
    """A string or binary column as a string array, and how many values were not valid UTF-8
    (those are decoded with U+FFFD replacement characters; nulls stay null)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_null(values.type):
        return pa.nulls(len(values), pa.string()), 0
    if pa.types.is_string(values.type):
        return values, 0
    if pa.types.is_large_string(values.type) or pa.types.is_string_view(values.type):
        return values.cast(pa.string()), 0
    try:  # binary: fast when valid, the common case
        return values.cast(pa.string()), 0
    except pa.ArrowInvalid:
        pass
    decoded, invalid = [], 0
    for value in values.to_pylist():
        if value is not None:
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                value, invalid = value.decode("utf-8", errors="replace"), invalid + 1
        decoded.append(value)
    return pa.array(decoded, pa.string()), invalid


def joined_text(captions: pa.Array) -> tuple[str, np.ndarray]:
    """All captions as one string for a single Aho-Corasick pass, and where each one ends.

    Caption i becomes " " + normalize(caption) + " " (one space if it normalizes to nothing;
    nulls count as empty) followed by SEPARATOR, so keys " lemma " match whole words only and
    never across captions. `ends[i]` is the code-point offset just past caption i's separator:
    a match ending at offset e lies in caption `np.searchsorted(ends, e, side="right")`.
    ASCII captions are normalized by a byte table in numpy; the others by `normalize_array`.
    """
    captions = captions.fill_null("")
    non_ascii = pc.invert(pc.string_is_ascii(captions))
    any_non_ascii = pc.any(non_ascii).as_py() or False
    if any_non_ascii:
        captions = pc.replace_with_mask(
            captions, non_ascii, normalize_array(captions.filter(non_ascii))
        )
    offsets, data = _string_buffers(captions)
    mapped = pa.Array.from_buffers(
        pa.string(), len(captions), [None, pa.py_buffer(offsets), pa.py_buffer(_ASCII_MAP[data])]
    )
    padded = pc.binary_join_element_wise(" ", mapped, " " + SEPARATOR, "")
    _, text = _string_buffers(padded)
    space = text == _SPACE
    keep = np.ones(len(text), bool)
    np.logical_not(space[1:] & space[:-1], out=keep[1:])
    text = text[keep]  # runs of spaces -> one space
    ends = np.flatnonzero(text == _NEWLINE) + 1
    if any_non_ascii:  # byte offsets -> code-point offsets: less the UTF-8 continuation bytes
        continuation = pc.subtract(pc.binary_length(captions), pc.utf8_length(captions))
        ends -= np.cumsum(continuation.to_numpy(zero_copy_only=False))
    return text.tobytes().decode("utf-8"), ends


def _string_buffers(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets rebased to 0, data bytes) of a string array, as numpy views where possible."""
    if pa.types.is_large_string(strings.type):
        strings = strings.cast(pa.string())
    _, offsets_buf, data_buf = strings.buffers()
    offsets = np.frombuffer(offsets_buf, np.int32, len(strings) + 1, strings.offset * 4)
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return offsets - offsets[0], data[offsets[0] : offsets[-1]]


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashable, by identity
class Lexicon:
    """Candidate synsets and their lemmas, ready for matching.

    Lemma ids are the automaton's values; the (lemma, synset) pairs of lemma l are
    `pair_wnid/pair_rank[pair_ptr[l]:pair_ptr[l + 1]]` (rank: the lemma's place in the synset's
    list), and `synset_lemma[synset_ptr[w] + rank]` is the lemma id back.
    """

    wnids: pa.Array  # string, candidates order: `wnids.take(synset ids)`
    lemmas: pa.Array  # string, normalized, by lemma id: `lemmas.take(lemma ids)`
    lengths: np.ndarray  # int64, characters of each lemma
    longest: int  # lengths.max()
    rank_bits: int  # bits of the largest rank
    automaton: ahocorasick.Automaton  # keys " lemma " -> lemma id
    pair_ptr: np.ndarray
    pair_wnid: np.ndarray
    pair_rank: np.ndarray
    synset_ptr: np.ndarray
    synset_lemma: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class Found:
    """Resolved matches of a batch of captions: one entry per output row, sorted by caption
    then synset; `matched`/`multi`: captions with >= 1 / > 1 synsets (before any drop);
    `kept_multi`: multi-synset captions kept (policy best: all; head_noun: those with one
    synset for their head)."""

    caption: np.ndarray
    wnid: np.ndarray
    lemma: np.ndarray
    matched: int
    multi: int
    kept_multi: int = 0


def build_lexicon(wnids: list[str], lemma_lists: list[list[str]]) -> Lexicon:
    """Lexicon of synsets `wnids` with lemmas `lemma_lists` (normalized here again, which is
    idempotent; empty and repeated lemmas of a synset are skipped)."""
    ids: dict[str, int] = {}
    pairs: list[tuple[int, int, int]] = []  # (lemma id, synset, rank)
    for synset, lemmas in enumerate(lemma_lists):
        kept = list(dict.fromkeys(n for n in map(normalize, lemmas) if n))
        pairs += [(ids.setdefault(m, len(ids)), synset, r) for r, m in enumerate(kept)]
    pair = np.array(pairs, np.int64).reshape(-1, 3)
    by_lemma = pair[np.lexsort((pair[:, 1], pair[:, 0]))]
    by_synset = pair[np.lexsort((pair[:, 2], pair[:, 1]))]
    automaton = ahocorasick.Automaton()
    for lemma, index in ids.items():
        automaton.add_word(f" {lemma} ", index)
    automaton.make_automaton()
    return Lexicon(
        wnids=pa.array(wnids, pa.string()),
        lemmas=pa.array(list(ids), pa.string()),
        lengths=np.array([len(m) for m in ids], np.int64),
        longest=max(map(len, ids), default=0),
        rank_bits=int(pair[:, 2].max(initial=0)).bit_length(),
        automaton=automaton,
        pair_ptr=np.searchsorted(by_lemma[:, 0], np.arange(len(ids) + 1)),
        pair_wnid=by_lemma[:, 1],
        pair_rank=by_lemma[:, 2],
        synset_ptr=np.searchsorted(by_synset[:, 1], np.arange(len(wnids) + 1)),
        synset_lemma=by_synset[:, 0],
    )


def find_lemmas(lexicon: Lexicon, captions: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(caption index, lemma id) of every whole-word lemma occurrence, in text order."""
    return find_in_text(lexicon, *joined_text(captions))


def find_in_text(lexicon: Lexicon, text: str, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`find_lemmas` over captions already joined by `text.joined_text`."""
    return find_spans(lexicon, text, ends)[:2]


def find_spans(lexicon: Lexicon, text: str, ends: np.ndarray) -> tuple[np.ndarray, ...]:
    """(caption index, lemma id, end offset) of every whole-word lemma occurrence in the joined
    `text`, in text order (end offset: the space after the lemma, in code points)."""
    if not len(lexicon.lemmas) or not text:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    # (end offset, lemma id) pairs, flattened: no Python object per match survives.
    flat = np.fromiter(itertools.chain.from_iterable(lexicon.automaton.iter(text)), np.int64)
    return np.searchsorted(ends, flat[0::2], side="right"), flat[1::2], flat[0::2]


def resolve(
    lexicon: Lexicon,
    caption: np.ndarray,
    lemma: np.ndarray,
    policy: str = "drop",
    head: np.ndarray | None = None,
) -> Found:
    """Lemma matches (`caption` ascending, as `find_lemmas` gives them) -> one (caption,
    synset, lemma) per matched pair, the lemma being the longest (then first listed) of that
    synset's matches in that caption. Captions of more than one synset, by `policy`: `drop`
    them; keep each of their synsets (`best`: select then keeps each sample's best-scoring
    class); or keep the synset of their head occurrence (`head_noun`: `head` holds one index
    into `caption`/`lemma` per matched caption, see caption_rules.heads; dropped if that lemma
    has several senses)."""
    if not len(caption):
        return Found(caption, caption, caption, matched=0, multi=0)
    if policy == "best":
        return _resolve_all(lexicon, caption, lemma)
    single = _resolve_single(lexicon, caption, lemma)
    if policy == "drop":
        return single
    if policy != "head_noun" or head is None:
        raise ValueError(f"policy {policy!r} (head given: {head is not None})")
    picked = head[~np.isin(caption[head], single.caption)]  # the multi-synset captions
    by_head = _resolve_single(lexicon, caption[picked], lemma[picked])
    merged = [np.concatenate([getattr(single, f), getattr(by_head, f)]) for f in _ROWS]
    order = np.argsort(merged[0], kind="stable")
    rows = dict(zip(_ROWS, (m[order] for m in merged), strict=True))
    kept = len(by_head.caption)
    return Found(**rows, matched=single.matched, multi=single.multi, kept_multi=kept)


_ROWS = ("caption", "wnid", "lemma")


def _resolve_single(lexicon: Lexicon, caption: np.ndarray, lemma: np.ndarray) -> Found:
    """`resolve` keeping single-synset captions only, without expanding lemmas to synsets: a
    caption has one synset iff each of its lemmas has one sense and they all agree, which
    per-caption reductions over its (contiguous) matches tell."""
    start = lexicon.pair_ptr[lemma]
    synset, rank = lexicon.pair_wnid[start], lexicon.pair_rank[start]  # the first sense
    first = np.flatnonzero(np.r_[True, caption[1:] != caption[:-1]])
    senses = np.maximum.reduceat(lexicon.pair_ptr[lemma + 1] - start, first)
    low, high = np.minimum.reduceat(synset, first), np.maximum.reduceat(synset, first)
    single = (senses == 1) & (low == high)
    # The lemma to report: least (longest - length, rank) among the caption's matches.
    score = ((lexicon.longest - lexicon.lengths[lemma]) << lexicon.rank_bits) | rank
    rank = np.minimum.reduceat(score, first)[single] & ((1 << lexicon.rank_bits) - 1)
    wnid = low[single]
    lemma = lexicon.synset_lemma[lexicon.synset_ptr[wnid] + rank]
    multi = len(first) - int(single.sum())
    return Found(caption[first[single]], wnid, lemma, matched=len(first), multi=multi)


def _resolve_all(lexicon: Lexicon, caption: np.ndarray, lemma: np.ndarray) -> Found:
    """`resolve` keeping every (caption, synset) pair: lemmas expanded to all their synsets,
    then one sort of one int64 key (caption, synset, longest - length, rank), so that the first
    entry of each (caption, synset) run holds its longest, then first-listed, lemma."""
    start = lexicon.pair_ptr[lemma]
    count = lexicon.pair_ptr[lemma + 1] - start
    pair = np.repeat(start - np.cumsum(count) + count, count) + np.arange(count.sum())
    caption, lemma = np.repeat(caption, count), np.repeat(lemma, count)
    wnid, rank = lexicon.pair_wnid[pair], lexicon.pair_rank[pair]
    fields = (wnid, lexicon.longest - lexicon.lengths[lemma], rank)
    widths = [len(lexicon.wnids).bit_length(), lexicon.longest.bit_length(), lexicon.rank_bits]
    if int(caption.max()).bit_length() + sum(widths) > 63:
        raise CurationError("row group too large to match at once: rewrite it in smaller ones")
    key = caption.astype(np.int64)
    for values, width in zip(fields, widths, strict=True):
        key = (key << width) | values
    key = np.sort(key)
    group = key >> (widths[1] + widths[2])
    first = np.ones(len(key), bool)
    first[1:] = group[1:] != group[:-1]
    key, group = key[first], group[first]
    caption, wnid = group >> widths[0], group & ((1 << widths[0]) - 1)
    lemma = lexicon.synset_lemma[lexicon.synset_ptr[wnid] + (key & ((1 << widths[2]) - 1))]
    synsets = np.diff(np.flatnonzero(np.r_[True, caption[1:] != caption[:-1], True]))
    multi = int((synsets > 1).sum())  # all kept, one row per synset
    return Found(caption, wnid, lemma, matched=len(synsets), multi=multi, kept_multi=multi)
