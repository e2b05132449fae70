"""Caption matching throughput: the match stage (Aho-Corasick) vs a naive per-lemma loop.

    python -m benchmarks.curation_match [--captions 1000000] [--workers 1,0] [--repeats 3]
                                        [--naive 200] [--subset 1000]

Lexicon: every noun lemma of WordNet 3.0 (/usr/share/wordnet/index.noun, Debian's wordnet-base),
each synset a candidate class: the worst case, as real candidate sets are smaller. Captions:
`curation.testing.synthetic_captions` (LAION-like: 5-20 words, mixed case, punctuation, URLs,
numbers, about 1 in 9 with non-ASCII text, 0-2 WordNet lemmas each), written as LAION-5B-style
parquet shards (131,072 rows, row groups of 32,768). Matching runs end to end through
`curation.match.run` with the local engine (parquet read, normalization, matching, multi-synset
resolution, output write, summary), the lexicon's automaton built beforehand (its build time is
reported apart: once per process). The naive peer, on a sample of the same captions in the same
run: for each caption, normalize it, then for each lemma a whole-word `in` test (" lemma " in
" caption "); the two must find the same lemmas.

A second run takes `--subset` random noun synsets as candidates (captions then hold their
lemmas): closer to a real candidate set, where many captions give output rows, so reading the
other columns, building rows and writing them count too. With all nouns nearly every caption
is ambiguous ("a", "set", "case" have many senses) and dropped.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import platform
import shutil
import statistics
import tempfile
import time

import ml_collections
import numpy as np
import pyarrow as pa

from curation import caption_rules, engine, files, laion, match, testing, text
from curation.text import decode_utf8, joined_text, normalize

INDEX_NOUN = pathlib.Path("/usr/share/wordnet/index.noun")
ROOT = pathlib.Path(__file__).resolve().parent / "results" / "curation_match"
ROWS_PER_SHARD, ROW_GROUP = 131_072, 32_768


def noun_lexicon(path: pathlib.Path = INDEX_NOUN) -> dict[str, list[str]]:
    """wnid -> lemmas of every WordNet noun synset, from the database's index.noun."""
    synsets: dict[str, list[str]] = collections.defaultdict(list)
    for line in path.read_text().splitlines():
        if line.startswith(" "):  # the license header
            continue
        fields = line.split()
        count = int(fields[2])
        for offset in fields[-count:]:
            synsets[f"n{offset}"].append(fields[0])
    return dict(sorted(synsets.items()))


def make_data(directory: pathlib.Path, n: int, lexicon: dict[str, list[str]]) -> dict:
    lemmas = sorted({m for ms in lexicon.values() for m in ms})
    started = time.perf_counter()
    captions = testing.synthetic_captions(n, lemmas, seed=0)
    shards = testing.write_laion_shards(
        directory / "laion", captions, rows_per_shard=ROWS_PER_SHARD, row_group_size=ROW_GROUP
    )
    testing.write_candidates(
        directory / "work" / files.CANDIDATES, [(w, ms[0], ms) for w, ms in lexicon.items()]
    )
    print(f"data: {n:,} captions in {len(shards)} shards, {time.perf_counter() - started:.0f} s")
    return {"captions": captions, "shards": shards, "workdir": directory / "work"}


def config_for(data: dict, workers: int) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.laion = laion.defaults()
    config.laion.paths = ",".join(str(s) for s in data["shards"])
    config.engine = engine.defaults()
    config.engine.workers = workers
    config.match = match.defaults()
    return config


def time_stage(data: dict, workers: int) -> float:
    """Seconds for one full match stage from scratch (outputs of earlier runs removed)."""
    shutil.rmtree(data["workdir"] / match.OUT_DIR, ignore_errors=True)
    started = time.perf_counter()
    match.run(config_for(data, workers), data["workdir"])
    return time.perf_counter() - started


def naive(captions: list[str], lemmas: list[str]) -> tuple[float, list[set[str]]]:
    """Seconds and lemmas found by the per-lemma loop (lemmas padded outside the timing)."""
    padded = [f" {m} " for m in lemmas]
    started = time.perf_counter()
    found = []
    for caption in captions:
        text = f" {normalize(caption)} "
        found.append({m[1:-1] for m in padded if m in text})
    return time.perf_counter() - started, found


def automaton_finds(lexicon: text.Lexicon, captions: list[str]) -> list[set[str]]:
    caption, lemma = text.find_lemmas(lexicon, pa.array(captions))
    found = [set() for _ in captions]
    for c, m in zip(caption.tolist(), lexicon.lemmas.take(lemma).to_pylist(), strict=True):
        found[c].add(m)
    return found


def profile_stages(data: dict, lexicon: text.Lexicon) -> tuple[dict[str, float], dict]:
    """Microseconds per caption of each step of `match.match_table` in one process over the
    first shard, and what its captions hold (lemma hits, matched, multi-synset fractions)."""
    shard = laion.open_shard(data["shards"][0], laion.defaults().columns)
    times: dict[str, float] = collections.defaultdict(float)
    stats: dict[str, float] = collections.defaultdict(float)

    def step(name, fn, *args):
        started = time.perf_counter()
        result = fn(*args)
        times[name] += time.perf_counter() - started
        return result

    for index in range(len(shard.sizes)):
        table = step("read parquet", laion.read_row_group, shard, index)
        captions, _ = step("decode UTF-8", decode_utf8, table.column("caption"))
        joined, ends = step("normalize + join", joined_text, captions)
        caption, lemma, end = step("automaton pass", text.find_spans, lexicon, joined, ends)
        keep = step("nested lemmas", caption_rules.outermost, lexicon, lemma, end)
        caption, lemma = caption[keep], lemma[keep]
        found = step("resolve synsets", text.resolve, lexicon, caption, lemma, "drop")
        out = step("output rows", match.output_table, lexicon, shard, index, table, captions, found)
        step("write parquet", files.write_parquet_atomic, out, data["workdir"] / "profile.parquet")
        stats["lemma hits"] += len(lemma)
        stats["matched"] += found.matched
        stats["multi-synset"] += found.multi
        stats["output rows"] += len(out)
    n = sum(shard.sizes)
    return {k: v / n * 1e6 for k, v in times.items()}, {k: v / n for k, v in stats.items()}


def scenario(directory: pathlib.Path, name: str, synsets: dict[str, list[str]], args) -> dict:
    """Throughput of the stage with `synsets` as candidates on captions holding their lemmas,
    beside the naive loop on a sample, and the profile of one process."""
    data = make_data(directory, args.captions, synsets)
    started = time.perf_counter()
    lexicon = match.load_lexicon(data["workdir"] / files.CANDIDATES)  # cached: not timed
    build_s = time.perf_counter() - started
    sample = data["captions"][: args.naive]
    naive_s, naive_found = naive(sample, lexicon.lemmas.to_pylist())
    rows = []
    for workers in (int(w) for w in args.workers.split(",")):
        cores = workers or engine.cpu_count()
        runs = [time_stage(data, workers) for _ in range(args.repeats)]
        seconds = statistics.median(runs)
        rows.append({"workers": cores, "seconds": seconds, "runs": runs,
                     "captions_per_s": args.captions / seconds,
                     "captions_per_s_per_core": args.captions / seconds / cores})  # fmt: skip
    summary = json.loads((data["workdir"] / match.OUT_DIR / "summary.json").read_text())
    profile, held = profile_stages(data, lexicon)
    return {
        "lexicon": name,
        "synsets": len(lexicon.wnids),
        "lemmas": len(lexicon.lemmas),
        "automaton_build_s": build_s,
        "naive": {"captions": len(sample), "seconds": naive_s,
                  "captions_per_s": len(sample) / naive_s,
                  "same_lemmas_found": naive_found == automaton_finds(lexicon, sample)},
        "rows": rows,
        "profile_us_per_caption": profile,
        "per_caption": held,
        "summary": {k: summary[k] for k in match.COUNTS},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=1_000_000)
    parser.add_argument("--workers", default="1,0", help="comma-separated; 0 = all cores")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive", type=int, default=200, help="captions for the naive loop")
    parser.add_argument("--subset", type=int, default=1000, help="synsets of the 2nd run; 0: none")
    args = parser.parse_args()
    if args.naive < 1:
        parser.error(f"--naive={args.naive}: the peer needs a sample of at least 1 caption")

    nouns = noun_lexicon()
    lexicons = {"all WordNet nouns": nouns}
    if args.subset:
        items = list(nouns.items())
        chosen = np.random.default_rng(0).choice(len(items), args.subset, replace=False)
        subset = dict(sorted(items[i] for i in chosen))
        lexicons[f"{args.subset:,} random noun synsets"] = subset
    scenarios = []
    for name, synsets in lexicons.items():
        with tempfile.TemporaryDirectory(prefix="curation_match_") as tmp:
            scenarios.append(scenario(pathlib.Path(tmp), name, synsets, args))
    result = {
        "machine": machine(),
        "versions": _versions(),
        "date": time.strftime("%Y-%m-%d"),
        "captions": args.captions,
        "scenarios": scenarios,
    }
    ROOT.mkdir(parents=True, exist_ok=True)
    (ROOT / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)


def machine() -> str:
    """The CPU model and how many cores the curation engine uses (benchmark headers)."""
    model = next(
        (line.split(":", 1)[1].strip() for line in pathlib.Path("/proc/cpuinfo").read_text()
         .splitlines() if line.startswith("model name")),
        platform.processor() or platform.machine(),
    )  # fmt: skip
    return f"{model}, {engine.cpu_count()} cores"


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("pyahocorasick", "pyarrow", "numpy")}


def print_table(result: dict) -> None:
    print(f"\n{result['captions']:,} captions, {result['machine']}; medians of repeated runs")
    print("| candidates | workers | captions/s | captions/s/core | naive captions/s | ratio/core |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for scenario in result["scenarios"]:
        naive = scenario["naive"]["captions_per_s"]
        name = f"{scenario['lexicon']} ({scenario['synsets']:,} / {scenario['lemmas']:,} lemmas)"
        for row in scenario["rows"]:
            print(f"| {name} | {row['workers']} | {row['captions_per_s']:,.0f} | "
                  f"{row['captions_per_s_per_core']:,.0f} | {naive:,.1f} | "
                  f"**{row['captions_per_s_per_core'] / naive:,.0f}x** |")  # fmt: skip
    for scenario in result["scenarios"]:
        naive = scenario["naive"]
        print(f"\n{scenario['lexicon']}: naive on {naive['captions']} captions, same lemmas "
              f"found: {naive['same_lemmas_found']}; automaton build "
              f"{scenario['automaton_build_s']:.2f} s; per caption: "
              f"{ {k: round(v, 3) for k, v in scenario['per_caption'].items()} }")  # fmt: skip
    names = [s["lexicon"] for s in result["scenarios"]]
    print("\none process, microseconds per caption:\n| step | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    steps = result["scenarios"][0]["profile_us_per_caption"]
    for step in [*steps, "total"]:
        values = [s["profile_us_per_caption"] for s in result["scenarios"]]
        cells = [sum(v.values()) if step == "total" else v[step] for v in values]
        print(f"| {step} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
