"""Projected wall time and cost of curating ImageNot from LAION-2B-en on a cluster, from the
per-core rates measured on this project's CPU host (benchmarks/BENCHMARKS.md) and, for the GPU
stage, a FLOP bound or a measured per-GPU rate when one is given.

    python -m benchmarks.curation_scale [--cores 64] [--gpus 8] [--matched_rows 5e8]
        [--text_score_gpu_rate N]   # captions/s per GPU, once measured (benchmarks.text_score)

What is measured and what is assumed is printed with the table. The TFDS build rate is measured
here and now (the builder's per-image work on synthetic 512 px JPEGs, one core); every other rate
is a constant below, each naming the BENCHMARKS.md table it comes from. Stages run one after the
other (each needs the previous one's output), so the wall times add up.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from tfds_imagenot.imagenot import images, testing

LAION2B_EN_CAPTIONS = 2_322_161_808  # LAION-5B paper, table 1 (laion2B-en)
# Measured here (benchmarks/BENCHMARKS.md):
MATCH_PER_CORE = 104_872  # captions/s/core, all WordNet nouns, 2 workers ("caption matching")
# rows/s, 100M rows on 2 workers ("select in bounded memory"); not scaled with the cores: its
# partition and bucket phases spread, but the driver's merges and ranking are serial.
SELECT_MEASURED = 485_581
TEXT_SCORE_HOST_PER_CORE = 4_625 / 2  # captions/s/core with a negligible model (tokenize, pad,
# pool, copy): "random RoBERTa tiny" of "text_score's caption encoder"; bounds a GPU's rate
ROBERTA_LARGE_MFLOP_PER_TOKEN = 690.6  # torch's forward FLOP count ("random RoBERTa large")
BPE_TOKENS_PER_CAPTION = 21.7  # open_clip's BPE on the synthetic LAION-like captions (+2 specials)
# Published: img2dataset's LAION2B-en download, 8,782 images/s on 10 nodes of 16 cores.
DOWNLOAD_PER_CORE = 8_782 / 160
H100_BF16_DENSE_TFLOPS = 989  # NVIDIA H100 SXM datasheet


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    work: float  # items
    unit: str
    rate: float  # items/s on the whole cluster
    on: str  # "cpu" | "gpu"
    needs: str
    source: str

    @property
    def seconds(self) -> float:
        return self.work / self.rate


def build_seconds_per_image(samples: int = 64) -> float:
    """Core-seconds the builder spends per downloaded image: decode, resize to 256, JPEG encode."""
    data = [testing.jpeg_bytes(512, 384 + i % 64, seed=i) for i in range(samples)]
    policy = images.ImagePolicy(max_short_side=256)
    started = time.process_time()
    for blob in data:
        images.normalize_image(blob, policy)
    return (time.process_time() - started) / samples


def stages(args: argparse.Namespace) -> list[Stage]:
    flop_bound = (
        H100_BF16_DENSE_TFLOPS
        * 1e12
        * args.mfu
        / (ROBERTA_LARGE_MFLOP_PER_TOKEN * 1e6 * BPE_TOKENS_PER_CAPTION)
    )
    host_bound = TEXT_SCORE_HOST_PER_CORE * args.cores / args.gpus
    per_gpu = args.text_score_gpu_rate or min(flop_bound, host_bound)
    gpu_source = (
        "measured (--text_score_gpu_rate)"
        if args.text_score_gpu_rate
        else f"projected: min(FLOP bound {flop_bound:,.0f} at {args.mfu:.0%} MFU of an H100, "
        f"host bound {host_bound:,.0f} on {args.cores // args.gpus} cores)"
    )
    images_wanted = args.classes * args.images_per_class * (1 + args.margin)
    return [
        Stage(
            "match",
            args.captions,
            "captions",
            MATCH_PER_CORE * args.cores,
            "cpu",
            "0.5 GB per worker (the lemma automaton); reads ~130 GB of parquet",
            "measured per core, 2 cores",
        ),
        Stage(
            "text_score",
            args.matched_rows,
            "captions",
            per_gpu * args.gpus,
            "gpu",
            "1 GPU (bf16, ~1 GB of weights) + CPU cores to tokenize per actor",
            gpu_source,
        ),
        Stage(
            "select",
            args.matched_rows,
            "rows",
            SELECT_MEASURED,
            "cpu",
            "1.5 GB per worker, flat in rows; spill disk for the eligible rows",
            "measured on 2 cores at 100M rows, not scaled (a floor)",
        ),
        Stage(
            "download",
            images_wanted,
            "images",
            DOWNLOAD_PER_CORE * args.cores,
            "cpu",
            "network-bound; img2dataset's shards kept as written",
            "published (img2dataset's LAION2B-en run)",
        ),
        Stage(
            "tfds build",
            images_wanted * (1 - args.dead_links),
            "images",
            args.build_cores / build_seconds_per_image(),
            "cpu",
            f"one host ({args.build_cores} cores: a thread pool)",
            "measured here, per core",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=64)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--captions", type=float, default=LAION2B_EN_CAPTIONS)
    parser.add_argument(
        "--matched_rows",
        type=float,
        default=5e8,
        help="rows match writes (caption, synset); an assumption until a real run counts them",
    )
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--images_per_class", type=int, default=1100)  # train + val + test
    parser.add_argument("--margin", type=float, default=0.6)  # curation/configs/imagenot.py
    parser.add_argument("--dead_links", type=float, default=0.35)
    parser.add_argument("--build_cores", type=int, default=16, help="the TFDS build's one host")
    parser.add_argument("--mfu", type=float, default=0.4)
    parser.add_argument("--text_score_gpu_rate", type=float, default=0.0)
    parser.add_argument("--gpu_hour_usd", type=float, default=3.0, help="per GPU, host included")
    parser.add_argument("--core_hour_usd", type=float, default=0.04)
    args = parser.parse_args()
    rows = stages(args)
    print(
        f"LAION-2B-en ({args.captions:,.0f} captions), {args.matched_rows:,.0f} matched rows, "
        f"{args.cores} CPU cores + {args.gpus} GPUs"
    )
    print(
        f"cost: the {args.cores} cores at ${args.core_hour_usd}/core-h through every stage, the "
        f"GPUs at ${args.gpu_hour_usd}/GPU-h only while text_score runs (a Ray autoscaler)"
    )
    print("| stage | work | cluster rate | wall time | cost | needs | rate from |")
    print("| --- | ---: | ---: | ---: | ---: | --- | --- |")
    total_s = total_usd = 0.0
    for s in rows:
        hours = s.seconds / 3600
        usd = hours * (args.cores * args.core_hour_usd)
        if s.on == "gpu":
            usd += hours * args.gpus * args.gpu_hour_usd
        total_s, total_usd = total_s + s.seconds, total_usd + usd
        print(
            f"| {s.name} | {s.work:,.0f} {s.unit} | {s.rate:,.0f}/s | {hours:.2f} h | "
            f"${usd:,.2f} | {s.needs} | {s.source} |"
        )
    print(f"| total | | | {total_s / 3600:.1f} h | ${total_usd:,.2f} | | |")


if __name__ == "__main__":
    main()
