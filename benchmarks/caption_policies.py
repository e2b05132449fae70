"""How many captions each caption rule keeps: longest-match suppression off/on, and the three
multi-synset policies (config.match: longest_match, multi_synset), on the test fixtures and on
the synthetic LAION-like corpus of benchmarks/curation_match.py.

    python -m benchmarks.caption_policies [--captions 200000] [--subset 1000]

Prints a markdown table (docs/pipeline.md, "Caption rules", quotes it). Counts, not timings:
the same on every machine.
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import pyarrow as pa

from benchmarks.curation_match import noun_lexicon
from curation import caption_rules, match, testing, text


def _lexicon(synsets) -> text.Lexicon:
    return text.build_lexicon([w for w, *_ in synsets], [lemmas for *_, lemmas in synsets])


def corpora(n: int, subset: int) -> list[tuple[str, text.Lexicon, pa.Array]]:
    fixture = [
        c.decode("utf-8", errors="replace") if isinstance(c, bytes) else c
        for c in testing.FIXTURE_CAPTIONS_0 + testing.FIXTURE_CAPTIONS_1
    ]
    rules = [caption for caption, _ in testing.CAPTION_RULES_CAPTIONS]
    nouns = noun_lexicon()
    picked = sorted(random.Random(0).sample(sorted(nouns), subset))
    out = [
        ("LAION fixture (14 captions)", _lexicon(testing.FIXTURE_SYNSETS), pa.array(fixture)),
        ("caption-rules fixture (9)", _lexicon(testing.CAPTION_RULES_SYNSETS), pa.array(rules)),
    ]
    for name, synsets in (
        (f"all {len(nouns):,} noun synsets", nouns),
        (f"{subset:,} random noun synsets", {w: nouns[w] for w in picked}),
    ):
        # As benchmarks/curation_match.py: captions hold lemmas of the candidates at hand.
        lemmas = sorted({m for ms in synsets.values() for m in ms})
        captions = pa.array(testing.synthetic_captions(n, lemmas, seed=0))
        lexicon = _lexicon([(w, w, ms) for w, ms in synsets.items()])
        out.append((f"synthetic {n:,}, {name}", lexicon, captions))
    return out


def count(lexicon: text.Lexicon, captions: pa.Array, longest: bool, policy: str) -> dict:
    found, counts = match.match_captions(lexicon, captions, longest, policy)
    return {**counts, "kept_captions": len(np.unique(found.caption)), "rows": len(found.caption)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=200_000)
    parser.add_argument("--subset", type=int, default=1000, help="synsets of the 2nd corpus")
    args = parser.parse_args()
    print("| corpus | nested lemmas | matched | multi-synset | policy | captions kept | rows |")
    print("| --- | --- | ---: | ---: | --- | ---: | ---: |")
    for name, lexicon, captions in corpora(args.captions, args.subset):
        for longest in (False, True):
            for policy in caption_rules.MULTI_SYNSET_POLICIES:
                c = count(lexicon, captions, longest, policy)
                nested = f"suppressed ({c['nested_lemmas_suppressed']:,})" if longest else "count"
                print(
                    f"| {name} | {nested} | {c['matched_captions']:,} | "
                    f"{c['multi_synset_captions']:,} | {policy} | {c['kept_captions']:,} | "
                    f"{c['rows']:,} |"
                )


if __name__ == "__main__":
    main()
