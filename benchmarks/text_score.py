"""text_score's caption encoder against the peer, sentence-transformers' `encode`, on the same
model (a RoBERTa with mean pooling: what sentence-transformers/all-roberta-large-v1 is) and the
same captions, in one process, rounds alternating.

    python -m benchmarks.text_score [--captions 4000] [--device cpu] [--sizes tiny,small]

Models are random RoBERTas saved as local transformers folders (nothing is downloaded): `tiny`
(2 layers, width 32: the tests' model, where tokenization dominates), `small` (4 layers, width
256) and `large` (all-roberta-large-v1's 24 layers of width 1024), or on a GPU host any local
model folder with `--model PATH` (e.g. a copy of all-roberta-large-v1). Needs the `bench` extra
(sentence-transformers). Prints a markdown table: captions/s of each and ours / peer, the largest
difference between the two embeddings, and the forward FLOPs per caption and per token that torch
counts for ours (what a GPU projection needs).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import tempfile
import time

import numpy as np
import torch
import transformers

from curation import encoders, testing, tiny

SIZES = {
    "tiny": {},  # tiny._HIDDEN as is
    "small": {
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 1024,
    },
    # all-roberta-large-v1's architecture (random weights): the per-core rate of the real model.
    "large": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "max_position_embeddings": 514,
    },
}


def save_model(size: str, directory: pathlib.Path) -> pathlib.Path:
    """A seeded random RoBERTa of `size` with the tests' byte-level tokenizer, as a folder."""
    tokenizer = tiny.byte_level_tokenizer()
    config = transformers.RobertaConfig(
        vocab_size=len(tokenizer), **{**tiny._HIDDEN, **SIZES[size]}
    )
    with tiny.seeded():
        model = transformers.RobertaModel(config, add_pooling_layer=False).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def runners(ours: encoders.MeanPoolEncoder, path: pathlib.Path, device: str, batch: int):
    from sentence_transformers import SentenceTransformer

    peer = SentenceTransformer(str(path), device=device, local_files_only=True)
    peer.max_seq_length = ours.max_length

    def run_ours(texts):
        return encoders.encode_by_length(texts, batch, ours.encode_batch, "ours")

    def run_peer(texts):
        return peer.encode(texts, batch_size=batch, convert_to_numpy=True)

    return run_ours, run_peer


def measure(path, captions, device: str, batch: int, max_length: int, rounds: int) -> dict:
    ours = encoders.load_mean_pool(str(path), torch.device(device), torch.float32, max_length, "")
    run_ours, run_peer = runners(ours, path, device, batch)
    a, b = run_ours(captions[:256]), run_peer(captions[:256])  # warm up; same computation?
    seconds = {"ours": [], "peer": []}
    for _ in range(rounds):
        for name, fn in (("ours", run_ours), ("peer", run_peer)):
            started = time.perf_counter()
            fn(captions)
            seconds[name].append(time.perf_counter() - started)
    rate = {k: len(captions) / statistics.median(v) for k, v in seconds.items()}
    return {
        **rate,
        **forward_flops(ours, captions[:256], batch),
        "ratio": rate["ours"] / rate["peer"],
        "max_diff": float(np.abs(a - b).max()),
    }


def forward_flops(encoder: encoders.MeanPoolEncoder, captions: list[str], batch: int) -> dict:
    """Forward FLOPs per caption and per (non-padding) token of ours, as torch counts them
    (matmuls and attention; padding within a length-sorted batch included)."""
    from torch.utils.flop_counter import FlopCounterMode

    ids = encoder.tokenizer(captions, truncation=True, max_length=encoder.max_length)["input_ids"]
    tokens = sum(len(i) for i in ids)
    with FlopCounterMode(display=False) as counter:
        encoders.encode_by_length(captions, batch, encoder.encode_batch, "flops")
    flops = counter.get_total_flops()
    return {
        "gflop": flops / len(captions) / 1e9,
        "mflop_token": flops / tokens / 1e6,
        "tokens": tokens / len(captions),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=4000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--model", default="", help="a local transformers folder instead")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    words = [f"lemma{i}" for i in range(200)]
    captions = testing.synthetic_captions(args.captions, words, seed=0)
    print(
        f"{args.captions} LAION-like captions, batch {args.batch}, max_length {args.max_length}, "
        f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"medians of {args.rounds} alternating rounds"
    )
    print(
        "| model | ours captions/s | sentence-transformers captions/s | ours / peer | max diff "
        "| tokens/caption | GFLOP/caption | MFLOP/token |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        models = {args.model: pathlib.Path(args.model)} if args.model else {}
        for size in args.sizes.split(",") if not args.model else []:
            models[f"random RoBERTa {size}"] = save_model(size, pathlib.Path(tmp) / size)
        for name, path in models.items():
            r = measure(path, captions, args.device, args.batch, args.max_length, args.rounds)
            print(
                f"| {name} | {r['ours']:,.0f} | {r['peer']:,.0f} | **{r['ratio']:.2f}x** | "
                f"{r['max_diff']:.1e} | {r['tokens']:.1f} | {r['gflop']:.2f} | "
                f"{r['mflop_token']:,.1f} |"
            )


if __name__ == "__main__":
    main()
