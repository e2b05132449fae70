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

import pathlib
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from absl import logging

from curation import cli, engine, files, scoring
from curation.errors import CurationError
from curation.text import decode_utf8

if TYPE_CHECKING:  # annotations only: torch loads with the model (`curation.encoders`)
    import torch

    from curation import encoders

MATCH_COLUMNS = {"key": "string", "wnid": "string", "lemma": "string", "caption": "text"}

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
    scoring.worker_defaults(c)  # workers, num_gpus
    return c


# --- encoders -------------------------------------------------------------------------------


def _mean_pool(section: ml_collections.ConfigDict, device: torch.device, dtype) -> Encode:
    from curation import encoders

    encoder = encoders.load_mean_pool(
        section.model, device, dtype, section.max_length, "text_score.model"
    )
    return lambda texts: encoders.encode_by_length(
        texts, section.batch_size, encoder.encode_batch, "text_score batches"
    )


def _clip(section: ml_collections.ConfigDict, device: torch.device, dtype) -> Encode:
    from curation import encoders

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
    # Imported here, not at the top: torch and transformers load only when a model is built,
    # so configs (which import every stage's defaults) and the CPU stages stay light.
    from curation import encoders

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
            from curation import encoders  # already imported by load_encoder

            self._encode = load_encoder(self.section)
            self._class_embeddings = encoders.EmbeddingCache(self._encode)
        return self._encode(texts)

    def __call__(self, shard: pathlib.Path) -> pa.Table:
        files.check_columns(shard, files.read_schema(shard), MATCH_COLUMNS)
        table = pq.read_table(shard)
        texts, index = scoring.class_texts(table, self.classes, self.section.class_text, shard)
        captions = decode_utf8(table["caption"])[0].to_pylist()
        valid = np.array([c is not None for c in captions], dtype=bool)
        scores = np.full(len(captions), np.nan, np.float32)
        if valid.any():
            # A caption kept for several synsets (multi_synset='best') is one row per synset:
            # encode each distinct caption once.
            texts_once, rows = scoring.distinct(c for c in captions if c is not None)
            caption_embeddings = self.encode(texts_once)[rows]
            class_embeddings = self._class_embeddings(texts)[index[valid]]
            scores[valid] = scoring.similarity(
                caption_embeddings, class_embeddings, self.section.normalize
            )
        self.counts.update(rows=len(captions), null_captions=int((~valid).sum()))
        return scoring.with_column(table, "text_score", scores)


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    """Score every pending match shard; returns (and writes) the summary."""
    section = config.text_score
    scoring.check_template(section.class_text, "text_score.class_text")
    shards = scoring.stage_inputs(workdir / "match", "match")
    out_dir = workdir / "text_score"
    args = (scoring.read_classes(workdir),)
    engine_cfg = config.get("engine") or engine.defaults()
    processed, counts = scoring.score_shards(
        shards, out_dir, _Scorer, args, section, engine_cfg, desc="text_score"
    )
    fields = {
        "encoder": section.encoder,
        "model": section.model if section.encoder == "mean_pool" else section.clip_model,
        "rows_scored_now": counts["rows"],
        "null_captions_now": counts["null_captions"],
    }
    return scoring.write_summary(
        "text_score", out_dir, section.class_text, shards, processed, fields
    )


if __name__ == "__main__":
    cli.run_stage(run)
