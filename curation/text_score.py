"""Text score: cosine similarity between each matched caption and its class text.

Reads `W/match/*.parquet` and `W/classes/candidates.parquet`; writes `W/text_score/<shard>.parquet`
(the match columns + `text_score` float32) per match shard, resumably, and `summary.json`.

The class text ("{lemma}: {gloss}" by default) says what the class means, so a caption that
merely contains the word in another sense ("crane" the machine vs the bird) scores low. The
encoder is a sentence-level RoBERTa (ImageNot's choice) by default, or MPNet, or a CLIP text
tower (LAION-style text-text similarity). Each distinct class text is encoded once per run;
captions are batched by length on the GPU when there is one.
"""

from __future__ import annotations

import json
import pathlib
import string
from collections import Counter
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from absl import logging

from curation import cli, encoders, files
from curation.errors import CurationError
from curation.text import decode_utf8

MATCH_COLUMNS = {"key": "string", "wnid": "string", "lemma": "string", "caption": "text"}
CANDIDATE_COLUMNS = {"wnid": "string", "name": "string", "lemmas": "list", "gloss": "text"}
# Placeholders of the class text template: the row's matched lemma, and the class's fields.
PLACEHOLDERS = ("lemma", "name", "gloss", "lemmas", "wnid")

Encode = Callable[[list[str]], np.ndarray]


def defaults() -> ml_collections.ConfigDict:
    """The `text_score` config section."""
    c = ml_collections.ConfigDict()
    # transformers model of encoder='mean_pool': a name in the local Hugging Face cache, a local
    # folder (AutoModel.from_pretrained), or 'tiny-random:roberta' / 'tiny-random:mpnet' (tests).
    c.model = "sentence-transformers/all-roberta-large-v1"
    # 'mean_pool': AutoModel + attention-masked mean pooling (RoBERTa, MPNet sentence models);
    # 'clip': open_clip text tower (LAION-style text-text similarity), see clip_model.
    c.encoder = "mean_pool"
    c.clip_model = "ViT-B-32"  # open_clip model of encoder='clip' ('tiny-random' for tests).
    # Its weights: open_clip tag already in the local cache, a checkpoint file, or '' (only for
    # 'tiny-random': seeded random weights).
    c.clip_pretrained = "laion2b_s34b_b79k"
    # Class text compared with each caption; placeholders: {lemma} (the matched lemma,
    # normalized), {name} (the class's first lemma), {gloss}, {lemmas} (all, comma-separated),
    # {wnid}.
    c.class_text = "{lemma}: {gloss}"
    c.batch_size = 256  # Texts per forward pass.
    c.max_length = 128  # Tokens per text for 'mean_pool' (longer ones are truncated).
    c.dtype = "float32"  # Weights/activations: float32 | float16 (GPU only) | bfloat16.
    c.device = ""  # torch device; '' = cuda if available else cpu.
    # True: L2-normalize embeddings, text_score = cosine; False: raw dot product (for models
    # trained with a dot-product objective).
    c.normalize = True
    return c


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


def class_texts(
    wnids: Sequence[str],
    lemmas: Sequence[str | None],
    classes: dict[str, dict[str, str]],
    template: str,
    path: pathlib.Path,
) -> tuple[list[str], np.ndarray]:
    """(distinct class texts, index into them per row): each (wnid, lemma) pair is formatted
    once; `path` names the shard in the error for a wnid missing from the candidates."""
    pairs: dict[tuple[str, str | None], int] = {}
    index = np.fromiter(
        (pairs.setdefault(pair, len(pairs)) for pair in zip(wnids, lemmas, strict=True)),
        dtype=np.int64,
        count=len(wnids),
    )
    texts = []
    for wnid, lemma in pairs:
        if wnid not in classes:
            raise CurationError(f"{path}: wnid {wnid!r} is not in classes/candidates.parquet")
        texts.append(template.format(**{**classes[wnid], "lemma": lemma or ""}))
    return texts, index


# --- scores and summaries -------------------------------------------------------------------


def similarity(a: np.ndarray, b: np.ndarray, normalize: bool = True) -> np.ndarray:
    """Row-wise cosine (or dot product when normalize=False) of two [N, D] arrays -> [N]."""
    if len(a) == 0:
        return np.zeros(0, np.float32)
    if normalize:
        a, b = encoders.l2_normalize(a), encoders.l2_normalize(b)
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


def write_summary(out_dir: pathlib.Path, summary: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    files.write_json(out_dir / "summary.json", summary, sort_keys=True)


def stage_inputs(in_dir: pathlib.Path, previous_stage: str) -> list[pathlib.Path]:
    """The input shards of a stage, or a one-line error naming the stage to run first."""
    if not sorted(in_dir.glob("*.parquet")):
        raise CurationError(f"{in_dir}: no *.parquet inputs; run the {previous_stage} stage first")
    return files.input_shards(str(in_dir / "*.parquet"))


# --- encoders -------------------------------------------------------------------------------


def _mean_pool(section: ml_collections.ConfigDict, device: torch.device, dtype) -> Encode:
    encoder = encoders.load_mean_pool(
        section.model, device, dtype, section.max_length, "text_score.model"
    )
    return lambda texts: encoders.encode_by_length(
        texts, section.batch_size, encoder.encode_batch, "text_score batches"
    )


def _clip(section: ml_collections.ConfigDict, device: torch.device, dtype) -> Encode:
    fields = ("text_score.clip_model", "text_score.clip_pretrained")
    clip = encoders.load_clip_model(
        section.clip_model, section.clip_pretrained, device, dtype, fields
    )
    return lambda texts: encoders.encode_texts(clip, texts, section.batch_size, normalize=False)


# encoder name -> loader returning a function: texts -> [N, D] float32 raw embeddings.
ENCODERS: dict[str, Callable[..., Encode]] = {"mean_pool": _mean_pool, "clip": _clip}


def load_encoder(section: ml_collections.ConfigDict) -> Encode:
    """The configured text encoder: texts -> [N, D] float32 embeddings (not normalized)."""
    if section.encoder not in ENCODERS:
        raise CurationError(
            f"text_score.encoder={section.encoder!r}; expected one of {', '.join(ENCODERS)}"
        )
    device = encoders.resolve_device(section.device, "text_score.device")
    dtype = encoders.resolve_dtype(section.dtype, device, "text_score.dtype")
    logging.info("text_score: %s encoder on %s (%s)", section.encoder, device, dtype)
    return ENCODERS[section.encoder](section, device, dtype)


# --- stage ----------------------------------------------------------------------------------


class _Scorer:
    """Scores one match shard; the model loads on the first shard that needs it, so a rerun
    with every shard done loads nothing."""

    def __init__(self, section: ml_collections.ConfigDict, classes: dict[str, dict[str, str]]):
        self.section, self.classes, self.counts = section, classes, Counter()
        self._encode: Encode | None = None
        self._class_embeddings: encoders.EmbeddingCache | None = None

    def encode(self, texts: list[str]) -> np.ndarray:
        if self._encode is None:
            self._encode = load_encoder(self.section)
            self._class_embeddings = encoders.EmbeddingCache(self._encode)
        return self._encode(texts)

    def __call__(self, shard: pathlib.Path) -> pa.Table:
        files.check_columns(shard, files.read_schema(shard), MATCH_COLUMNS)
        table = pq.read_table(shard)
        texts, index = class_texts(
            table["wnid"].to_pylist(),
            table["lemma"].to_pylist(),
            self.classes,
            self.section.class_text,
            shard,
        )
        captions = decode_utf8(table["caption"])[0].to_pylist()
        valid = np.array([c is not None for c in captions], dtype=bool)
        scores = np.full(len(captions), np.nan, np.float32)
        if valid.any():
            caption_embeddings = self.encode([c for c in captions if c is not None])
            class_embeddings = self._class_embeddings(texts)[index[valid]]
            scores[valid] = similarity(caption_embeddings, class_embeddings, self.section.normalize)
        self.counts.update(rows=len(captions), null_captions=int((~valid).sum()))
        return with_column(table, "text_score", scores)


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    """Score every pending match shard; returns (and writes) the summary."""
    section = config.text_score
    check_template(section.class_text, "text_score.class_text")
    shards = stage_inputs(workdir / "match", "match")
    scorer = _Scorer(section, read_classes(workdir))
    out_dir = workdir / "text_score"
    processed = files.run_per_shard(shards, out_dir, scorer, desc="text_score")
    summary = {
        "encoder": section.encoder,
        "model": section.model if section.encoder == "mean_pool" else section.clip_model,
        "class_text": section.class_text,
        "shards": len(shards),
        "shards_processed_now": processed,
        "rows_scored_now": scorer.counts["rows"],
        "null_captions_now": scorer.counts["null_captions"],
        "text_score": score_stats(out_dir, "text_score"),
    }
    write_summary(out_dir, summary)
    logging.info("text_score: %s", json.dumps(summary))
    return summary


if __name__ == "__main__":
    cli.run_stage(run)
