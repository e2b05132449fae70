"""Select stage memory and throughput: the bounded-memory path (curation/select_partial.py)
against the in-memory one, on a synthetic LAION-like text_score corpus.

    python -m benchmarks.curation_select [--rows 1000000,3000000] [--classes 60000]
                                         [--paths memory,bounded] [--workers 0] [--repeats 2]

Corpus, per size (generated with numpy/pyarrow straight into text_score parquet shards of
1,048,576 rows, row groups of 131,072): LAION samples with keys `shard:row`, ~9% of them in two
classes (the same key and URL under two wnids), ~8% reusing another sample's URL; classes drawn
from a Zipf law (s = 1) over `--classes` synsets; text scores ~ N(0.3, 0.04), float32; sizes,
punsafe and NSFW tags such that the default filters drop ~20% of the rows; candidates for every
synset. Select runs with the ImageNot settings that matter here: 1,000 classes of 1,000 + 50 +
50 images, margin 0.6 (K = 1,760 rows per class), spread_hops 0 (no WordNet: the same for both).

Each path runs `curation.select.run` in a fresh child process, `--repeats` times, alternating
which goes first; reported: the median seconds of select.run (rows/s = input rows / seconds),
the peak RSS of the largest process (os.wait4's ru_maxrss: the child or one of the pool workers
it waited for) and the peak of the process tree's summed RSS (sampled every 0.2 s with psutil;
forked workers' shared pages count once per process). The two paths' manifest.parquet,
classes.tsv and select_report.json must be byte-identical (checked).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks import curation_match
from curation import engine, files, match, select, testing

ROOT = pathlib.Path(__file__).resolve().parent / "results" / "curation_select"
ROWS_PER_SHARD, ROW_GROUP = 1 << 20, 1 << 17
SCHEMA = match.SCHEMA.append(pa.field("text_score", pa.float32()))
OUTPUTS = ("manifest.parquet", "classes.tsv", "select_report.json")


def _strings(prefix: str, ints: np.ndarray, suffix: str = "") -> pa.Array:
    text = pc.cast(pa.array(ints), pa.string())
    return pc.binary_join_element_wise(prefix, text, suffix, "")


def shard_rows(shard: int, samples: int, classes: int, rng: np.random.Generator) -> pa.Table:
    """text_score rows of `samples` LAION samples of shard `shard` (some in two classes)."""
    ids = np.arange(samples, dtype=np.int64)
    twice = rng.random(samples) < 0.09
    sample = np.r_[ids, ids[twice]]  # a multi-synset sample: two rows, one key, one URL
    n = len(sample)
    cdf = np.cumsum(1.0 / np.arange(1, classes + 1))
    rank = np.searchsorted(cdf, rng.random(n) * cdf[-1])
    global_id = shard * ROWS_PER_SHARD + sample
    reuse = rng.random(samples) < 0.08  # this sample's URL is some earlier sample's
    earlier = rng.integers(0, shard * ROWS_PER_SHARD + samples, samples)
    url_id = np.where(reuse, earlier, shard * ROWS_PER_SHARD + ids)[sample]
    nsfw = np.where(rng.random(n) < 0.03, "UNSURE", "UNLIKELY")
    nsfw[rng.random(n) < 0.02] = "NSFW"
    source = f"part-{shard:05d}"
    columns = {
        "key": _strings(f"{source}:", sample),
        "wnid": _strings("n", 10_000_000 + rank),
        "lemma": _strings("lemma ", rank),
        "url": _strings("https://img.example.com/photos/", url_id, ".jpg"),
        "caption": _strings("a photo of a synthetic thing, number ", global_id),
        "width": rng.integers(64, 1600, n),
        "height": rng.integers(64, 1600, n),
        "punsafe": (rng.random(n) ** 40).astype(np.float32),
        "nsfw": pa.array(nsfw),
        "similarity": rng.uniform(0.2, 0.4, n).astype(np.float32),
        "source": pa.array([source] * n),
        "row": sample,
        "text_score": np.clip(rng.normal(0.3, 0.04, n), 0, 1).astype(np.float32),
    }
    order = np.argsort(sample, kind="stable")  # rows in source order, as match writes them
    return pa.table(columns).cast(SCHEMA).take(pa.array(order))


def make_corpus(workdir: pathlib.Path, rows: int, classes: int) -> dict:
    """text_score shards with ~`rows` rows, and candidates.parquet; returns counts."""
    started, written, shard = time.perf_counter(), 0, 0
    rng = np.random.default_rng(0)
    while written < rows:
        samples = min(ROWS_PER_SHARD, round((rows - written) / 1.09)) or 1
        table = shard_rows(shard, samples, classes, rng)
        path = workdir / "text_score" / f"part-{shard:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, row_group_size=ROW_GROUP)
        written, shard = written + table.num_rows, shard + 1
    wnids = [f"n{10_000_000 + r}" for r in range(classes)]
    testing.write_candidates(
        workdir / files.CANDIDATES, [(w, f"class {w}", [f"lemma {w}"]) for w in wnids]
    )
    seconds = time.perf_counter() - started
    print(f"corpus: {written:,} rows in {shard} shards, {seconds:.0f} s", flush=True)
    return {"rows": written, "shards": shard, "seconds": seconds}


def config_for(bounded: bool, workers: int) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.select = select.defaults()
    config.select.margin = 0.6
    config.select.bounded_memory = bounded
    config.wordnet = ml_collections.ConfigDict({"spread_hops": 0})
    config.clip_score = ml_collections.ConfigDict({"enabled": False})
    config.engine = engine.defaults()
    config.engine.workers = workers
    return config


def child(workdir: pathlib.Path, bounded: bool, workers: int) -> None:
    """Runs in the measured process: select.run, timed; prints the result."""
    started = time.perf_counter()
    report = select.run(config_for(bounded, workers), workdir)
    seconds = time.perf_counter() - started
    print("RESULT " + json.dumps({"seconds": seconds, "classes": report["classes"]["selected"],
                                  "eligible_rows": report["eligible_rows"]}))  # fmt: skip


def measure(workdir: pathlib.Path, bounded: bool, workers: int) -> dict:
    """One select run in a child process: its result, largest-process and summed peak RSS."""
    import psutil

    command = [sys.executable, "-m", "benchmarks.curation_select", "--child", str(workdir),
               f"--bounded={int(bounded)}", f"--workers={workers}"]  # fmt: skip
    log = workdir / f"select-{int(bounded)}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    peak_sum, stop = [0], threading.Event()

    def sample() -> None:
        parent = psutil.Process(proc.pid)
        while not stop.wait(0.2):
            try:
                tree = [parent, *parent.children(recursive=True)]
                peak_sum[0] = max(peak_sum[0], sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                continue

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stop.set()
    sampler.join()
    text = log.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"select failed ({proc.returncode}):\n{text[-3000:]}")
    result = json.loads(next(line for line in text.splitlines() if line.startswith("RESULT "))[7:])
    return result | {"max_rss_gib": usage.ru_maxrss / 2**20, "tree_rss_gib": peak_sum[0] / 2**30}


def run_size(directory: pathlib.Path, rows: int, args) -> dict:
    """Both paths on one corpus, `--repeats` times in alternating order: median seconds, the
    highest peaks."""
    corpus = make_corpus(directory, rows, args.classes)
    out: dict = {"rows": corpus["rows"], "corpus_seconds": corpus["seconds"]}
    paths = args.paths.split(",")
    runs: dict[str, list[dict]] = {path: [] for path in paths}
    outputs = {}
    for repeat in range(args.repeats):
        for path in paths if repeat % 2 == 0 else paths[::-1]:
            result = measure(directory, {"memory": False, "bounded": True}[path], args.workers)
            runs[path].append(result)
            outputs[path] = [(directory / name).read_bytes() for name in OUTPUTS]
            print(f"{corpus['rows']:,} rows, {path}: {json.dumps(result)}", flush=True)
    for path, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        out[path] = {
            "seconds": seconds,
            "runs": [r["seconds"] for r in results],
            "rows_per_s": corpus["rows"] / seconds,
            "max_rss_gib": max(r["max_rss_gib"] for r in results),
            "tree_rss_gib": max(r["tree_rss_gib"] for r in results),
            "classes": results[0]["classes"],
            "eligible_rows": results[0]["eligible_rows"],
        }
    if len(outputs) == 2:
        out["identical_outputs"] = outputs["memory"] == outputs["bounded"]
        assert out["identical_outputs"], "the two paths' outputs differ"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,3000000", help="comma-separated sizes")
    parser.add_argument("--classes", type=int, default=60_000)
    parser.add_argument("--paths", default="memory,bounded", help="memory and/or bounded")
    parser.add_argument("--workers", type=int, default=0, help="engine.workers; 0 = all cores")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each path per size")
    parser.add_argument("--tmp", default=None, help="where the corpus goes (default: $TMPDIR)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--bounded", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(pathlib.Path(args.child), bool(args.bounded), args.workers)
        return
    sizes = []
    for rows in (int(r) for r in args.rows.split(",")):
        directory = pathlib.Path(tempfile.mkdtemp(prefix="curation_select_", dir=args.tmp))
        try:
            sizes.append(run_size(directory, rows, args))
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    result = {"machine": curation_match.machine(), "date": time.strftime("%Y-%m-%d"),
              "sizes": sizes, "workers": args.workers or engine.cpu_count(),
              "classes": args.classes}  # fmt: skip
    ROOT.mkdir(parents=True, exist_ok=True)
    (ROOT / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)


def print_table(result: dict) -> None:
    print(f"\n{result['machine']}; bounded path with {result['workers']} workers")
    print("| rows | in-memory rows/s | bounded rows/s | speed ratio | in-memory peak RSS | "
          "bounded peak RSS (largest process / all) | RSS ratio |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for size in result["sizes"]:
        old, new = size.get("memory"), size.get("bounded")
        cells = [f"{size['rows']:,}"]
        cells.append(f"{old['rows_per_s']:,.0f}" if old else "-")
        cells.append(f"{new['rows_per_s']:,.0f}" if new else "-")
        both = old and new
        cells.append(f"**{new['rows_per_s'] / old['rows_per_s']:.2f}x**" if both else "-")
        cells.append(f"{old['max_rss_gib']:.2f} GiB" if old else "-")
        cells.append(f"{new['max_rss_gib']:.2f} / {new['tree_rss_gib']:.2f} GiB" if new else "-")
        cells.append(f"**{new['max_rss_gib'] / old['max_rss_gib']:.2f}x**" if both else "-")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
