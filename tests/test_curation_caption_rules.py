"""Caption rules of the match stage: nested lemmas and the multi-synset policies, end to end
through `match.run` on captions that need them (curation.testing.CAPTION_RULES_*)."""

from __future__ import annotations

import collections

import ml_collections
import pyarrow as pa
import pytest

from curation import caption_rules, engine, files, laion, match, testing, text
from curation.errors import CurationError


def _run(tmp_path, policy: str, longest_match: bool = True) -> tuple[dict, dict[int, list]]:
    """Runs the stage; returns its summary and the wnids of each caption's output rows."""
    workdir = tmp_path / f"{policy}-{longest_match}"
    testing.write_candidates(workdir / files.CANDIDATES, testing.CAPTION_RULES_SYNSETS)
    captions = [caption for caption, _ in testing.CAPTION_RULES_CAPTIONS]
    testing.write_laion_shard(tmp_path / "laion" / "part-0.parquet", captions, row_group_size=4)
    config = ml_collections.ConfigDict()
    config.laion = laion.defaults()
    config.laion.paths = str(tmp_path / "laion" / "*.parquet")
    config.engine = engine.defaults()
    config.match = match.defaults()
    config.match.multi_synset = policy
    config.match.longest_match = longest_match
    summary = match.run(config, workdir)
    out = files.read_stage(workdir / match.OUT_DIR)
    rows = collections.defaultdict(list)
    for row, wnid in zip(out["row"].to_pylist(), out["wnid"].to_pylist(), strict=True):
        rows[row].append(wnid)
    return summary, {i: sorted(rows[i]) for i in range(len(captions))}


@pytest.mark.parametrize("policy", caption_rules.MULTI_SYNSET_POLICIES)
def test_each_policy_gives_each_caption_its_synsets(tmp_path, policy):
    summary, got = _run(tmp_path, policy)
    expected = {i: want[policy] for i, (_, want) in enumerate(testing.CAPTION_RULES_CAPTIONS)}
    assert got == expected
    # "hot dog with mustard": "dog" inside "hot dog" is not counted, so that caption is single.
    assert summary["nested_lemmas_suppressed"] == 2  # "dog" in "hot dog", "cat" in "house cat"
    assert summary["matched_captions"] == 8 and summary["multi_synset_captions"] == 6
    kept = {"drop": 0, "best": 6, "head_noun": 5}[policy]
    assert summary["kept_multi_synset"] == kept
    assert summary["dropped_multi_synset"] == 6 - kept
    assert summary["rows"] == sum(len(v) for v in expected.values())
    assert summary["multi_synset"] == policy and summary["longest_match"] is True


def test_without_longest_match_a_nested_lemma_counts(tmp_path):
    summary, got = _run(tmp_path, "drop", longest_match=False)
    assert got[1] == []  # "hot dog" + "dog": two synsets, dropped
    assert summary["nested_lemmas_suppressed"] == 0 and summary["multi_synset_captions"] == 7


def test_a_policy_the_stage_does_not_know_is_one_line(tmp_path):
    with pytest.raises(CurationError, match=r"config.match.multi_synset='first': expected one of"):
        _run(tmp_path, "first")


def _lexicon(*synsets: list[str]) -> text.Lexicon:
    return text.build_lexicon([f"n{i}" for i in range(len(synsets))], list(synsets))


def _found(lexicon: text.Lexicon, captions: list[str]):
    joined, ends = text.joined_text(pa.array(captions))
    caption, lemma, end = text.find_spans(lexicon, joined, ends)
    return joined, ends, caption, lemma, end


def test_outermost_drops_nested_spans_and_keeps_overlapping_ones():
    lexicon = _lexicon(["hot dog"], ["dog"], ["dog house"], ["hot"])
    _, _, caption, lemma, end = _found(lexicon, ["hot dog house", "dog", "a hot dog"])
    keep = caption_rules.outermost(lexicon, lemma, end)
    kept = sorted(
        zip(caption[keep].tolist(), lexicon.lemmas.take(lemma[keep]).to_pylist(), strict=True)
    )
    # Caption 0: "hot dog" and "dog house" overlap, neither holds the other; "hot" and "dog"
    # are each inside one of them.
    assert kept == [(0, "dog house"), (0, "hot dog"), (1, "dog"), (2, "hot dog")]


def test_heads_stop_at_the_first_preposition_or_comma_after_the_first_match():
    lexicon = _lexicon(["dog"], ["cat"], ["sea"], ["bird"])
    captions = [
        "dog cat on the sea",  # cat: last before "on"
        "on a dog, cat",  # the "on" before the first match does not count: dog (comma)
        "dog cat sea",  # no cut: the last
        "bird",
        "Ça, la mer: dog with cat",  # non-ASCII before the comma: offsets in code points
    ]
    joined, ends, caption, lemma, end = _found(lexicon, captions)
    cuts = caption_rules.boundaries(pa.array(captions), joined, ends)
    head = caption_rules.heads(caption, end, cuts, ends)
    assert lexicon.lemmas.take(lemma[head]).to_pylist() == ["cat", "dog", "sea", "bird", "dog"]
    assert caption[head].tolist() == [0, 1, 2, 3, 4]
