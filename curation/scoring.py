"""Helpers shared by the scoring stages (text_score, clip_score): class texts, similarity
scores, stage inputs and summaries.

numpy and pyarrow only: the stages' `defaults()` and these helpers import without torch or
transformers, which load (through `curation.encoders`) only when a stage builds its model.
"""

from __future__ import annotations

import json
import os
import pathlib
import string
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from absl import logging

from curation import engine, files
from curation.errors import CurationError
from curation.text import decode_utf8

CANDIDATE_COLUMNS = {"wnid": "string", "name": "string", "lemmas": "list", "gloss": "text"}
# Placeholders of the class text template: the row's matched lemma, and the class's fields.
PLACEHOLDERS = ("lemma", "name", "gloss", "lemmas", "wnid")


# --- class texts ----------------------------------------------------------------------------


def placeholders(template: str, field: str) -> set[str]:
    """The {names} of a format string; a one-line error naming `field` when it is not one."""
    try:
        return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise CurationError(f"{field}={template!r} is not a format string ({e})") from None


def check_template(template: str, field: str) -> None:
    """One-line error unless `template` is a format string over PLACEHOLDERS."""
    names = placeholders(template, field)
    unknown = sorted(names - set(PLACEHOLDERS))
    if unknown:
        raise CurationError(
            f"{field}={template!r}: unknown placeholder {{{unknown[0]}}}; "
            f"use {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
        )


def read_classes(workdir: pathlib.Path) -> dict[str, dict[str, str]]:
    """wnid -> the class's template fields, from `W/classes/candidates.parquet`."""
    table = files.read_candidates(workdir, CANDIDATE_COLUMNS)
    names = decode_utf8(table["name"])[0].to_pylist()
    glosses = decode_utf8(table["gloss"])[0].to_pylist()
    classes = {}
    for wnid, name, gloss, lemmas in zip(
        table["wnid"].to_pylist(), names, glosses, table["lemmas"].to_pylist(), strict=True
    ):
        classes[wnid] = {
            "wnid": wnid,
            "name": name or "",
            "gloss": gloss or "",
            "lemmas": ", ".join(lemmas or []),
        }
    return classes


def distinct(values: Iterable[Hashable]) -> tuple[list, np.ndarray]:
    """(the distinct values in first-seen order, each value's index into them): what a model
    then encodes once each."""
    first: dict[Hashable, int] = {}
    index = np.fromiter((first.setdefault(v, len(first)) for v in values), dtype=np.int64)
    return list(first), index


def class_texts(
    table: pa.Table,
    classes: dict[str, dict[str, str]],
    template: str,
    path: pathlib.Path,
) -> tuple[list[str], np.ndarray]:
    """(distinct class texts, index into them per row) of a shard's `wnid` and `lemma` columns:
    each (wnid, lemma) pair is formatted once; `path` names the shard in the error for a wnid
    missing from the candidates."""
    wnids, lemmas = table["wnid"].to_pylist(), table["lemma"].to_pylist()
    pairs, index = distinct(zip(wnids, lemmas, strict=True))
    texts = []
    for wnid, lemma in pairs:
        if wnid not in classes:
            raise CurationError(f"{path}: wnid {wnid!r} is not in classes/candidates.parquet")
        texts.append(template.format(**{**classes[wnid], "lemma": lemma or ""}))
    return texts, index


# --- scores and summaries -------------------------------------------------------------------


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm; zero rows become NaN (no direction, no cosine)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def similarity(a: np.ndarray, b: np.ndarray, normalize: bool = True) -> np.ndarray:
    """Row-wise cosine (or dot product when normalize=False) of two [N, D] arrays -> [N]."""
    if len(a) == 0:
        return np.zeros(0, np.float32)
    if normalize:
        a, b = l2_normalize(a), l2_normalize(b)
    return np.einsum("ij,ij->i", a, b).astype(np.float32)


def with_column(table: pa.Table, name: str, values: np.ndarray) -> pa.Table:
    """`table` with float32 column `name` last (replacing one of that name)."""
    if name in table.column_names:
        table = table.drop_columns([name])
    return table.append_column(name, pa.array(values, pa.float32()))


def score_stats(out_dir: pathlib.Path, column: str) -> dict:
    """Rows, NaN count and quantiles of a score column over all of a stage's outputs."""
    scores = files.read_stage(out_dir, [column])[column]
    finite = pc.filter(scores, pc.invert(pc.is_nan(scores))) if len(scores) else scores
    stats = {"rows": len(scores), "nan": len(scores) - len(finite)}
    if len(finite):
        names, levels = ("p5", "p25", "p50", "p75", "p95"), [0.05, 0.25, 0.5, 0.75, 0.95]
        quantiles = pc.quantile(finite, q=levels).to_pylist()
        stats.update(mean=pc.mean(finite).as_py(), **dict(zip(names, quantiles, strict=True)))
    return stats


def write_summary(
    stage: str,
    out_dir: pathlib.Path,
    class_text: str,
    shards: Sequence[pathlib.Path],
    processed: int,
    fields: dict,
) -> dict:
    """The summary a scoring stage writes to `out_dir/summary.json` (keys sorted), logs and
    returns: the stage's own `fields`, its class text template, how many shards it has and
    scored now, and the statistics of its score column (named after the stage) over all its
    outputs."""
    summary = {
        **fields,
        "class_text": class_text,
        "shards": len(shards),
        "shards_processed_now": processed,
        stage: score_stats(out_dir, stage),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    files.write_json(out_dir / "summary.json", summary, sort_keys=True)
    logging.info("%s: %s", stage, json.dumps(summary))
    return summary


def stage_inputs(in_dir: pathlib.Path, previous_stage: str) -> list[pathlib.Path]:
    """The input shards of a stage, or a one-line error naming the stage to run first."""
    if not sorted(in_dir.glob("*.parquet")):
        raise CurationError(f"{in_dir}: no *.parquet inputs; run the {previous_stage} stage first")
    return files.input_shards(str(in_dir / "*.parquet"))


# --- model workers --------------------------------------------------------------------------

# Seconds each shard waits first: lets tests kill a stage in the middle. Never set it otherwise.
DELAY_ENV = "CURATION_SCORE_TEST_DELAY_S"


def worker_defaults(c: ml_collections.ConfigDict) -> None:
    """The scoring stages' worker fields (each worker loads the model once, then scores whole
    shards: a shard is scored the same way whichever worker gets it, so outputs do not depend
    on the engine or the number of workers)."""
    # Model workers: 0 = one per GPU (local: this machine's; ray: the cluster's / num_gpus),
    # or one without GPUs; n = n processes (local, CPU ones too) or Ray actors.
    c.workers = 0
    # GPUs per Ray actor; -1 = 1 when the Ray cluster has GPUs, else 0 (CPU actors).
    c.num_gpus = -1.0


def score_shards(
    shards: Sequence[pathlib.Path],
    out_dir: pathlib.Path,
    make_scorer: Callable,
    args: tuple,
    section: ml_collections.ConfigDict,
    engine_cfg: ml_collections.ConfigDict,
    desc: str,
) -> tuple[int, Counter]:
    """Scores the unfinished `shards` on the engine's model workers (each builds
    `make_scorer(section, *args)` once: shard -> output table, with a `counts` Counter) and
    writes each output atomically; returns (shards scored now, summed counts)."""
    todo = files.pending_shards(shards, out_dir)
    if not todo:
        return 0, Counter()
    workers, num_gpus = _workers(section, engine_cfg)
    results = engine.run_on_workers(
        todo, shard_worker, (make_scorer, section, out_dir, args), engine_cfg, workers, num_gpus,
        desc,
    )  # fmt: skip
    return len(todo), sum((Counter(r) for r in results), Counter())


def _workers(section: ml_collections.ConfigDict, engine_cfg) -> tuple[int, float]:
    num_gpus = float(section.num_gpus)
    if engine_cfg.name == "ray":
        engine.init_ray(engine_cfg.ray_address)
        gpus = engine.cluster_gpus()
        num_gpus = (1.0 if gpus else 0.0) if num_gpus < 0 else num_gpus
        workers = int(section.workers) or (int(gpus // num_gpus) if num_gpus else 1)
        return max(1, workers), num_gpus
    return int(section.workers) or max(1, _local_gpus(section.device)), 0.0


def _local_gpus(device: str) -> int:
    """GPUs a local scoring run spreads over: all visible ones unless a device is named."""
    if device not in ("", "cuda"):
        return 1
    import torch  # only here: the stage loads it for its model anyway

    return torch.cuda.device_count()


def shard_worker(
    index: int, make_scorer: Callable, section: ml_collections.ConfigDict, out_dir, args: tuple
) -> Callable[[pathlib.Path], dict]:
    """One model worker (engine.run_on_workers): worker `index` of a local pool takes GPU
    `index` when the stage runs on all of them; returns shard -> its counts, having written
    the shard's output."""
    if index and section.device in ("", "cuda"):
        import torch

        if torch.cuda.device_count() > 1:
            section = ml_collections.ConfigDict(section.to_dict())
            section.device = f"cuda:{index % torch.cuda.device_count()}"
    scorer = make_scorer(section, *args)

    def score(shard: pathlib.Path) -> dict:
        time.sleep(float(os.environ.get(DELAY_ENV) or 0))
        before = Counter(scorer.counts)
        files.write_parquet_atomic(scorer(shard), files.output_path(out_dir, shard))
        return dict(scorer.counts - before)

    return score
