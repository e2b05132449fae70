"""Select stage: filter the scored matches, choose the classes and their images, assign splits,
and write `W/manifest.parquet` + `W/classes.tsv` (exactly what tfds_imagenot/imagenot reads).

1. Filters, per input shard, in FILTERS order (a row failing several is counted by the first):
   url present, NSFW tag, punsafe, minimum side, text score (missing / below min_text_score),
   CLIP score (missing / below min_clip_score; only with the CLIP stage).
2. De-duplication. A key matched to several classes (match may keep multi-synset captions) stays
   only in the class where its selection score is highest: an image has one label. With
   `unique_urls`, a URL under several keys stays only on its best row: the same image twice
   would otherwise leak between splits or sit in two classes.
3. Classes: those with >= min_images eligible images, ranked by RANKERS[rank_by]; walking the
   ranking, the WordNet spread rule drops a class within `wordnet.spread_hops` links of a kept
   one; the first num_classes kept are chosen. Labels 0..C-1 follow sorted wnids (ImageNet's
   convention), so a label does not depend on the ranking; the rank is the `rank` column.
4. Images: each chosen class's best train+validation+test images by the score. Splits: a seeded
   shuffle of the chosen images of a class; test, then validation, take the first slots and
   train the rest. So the splits are i.i.d. draws from the same chosen set (test images are not
   simply the best-scoring ones), and a class short of images loses train images, never
   evaluation ones (min_images >= validation + test keeps the evaluation splits full).

Order: every sort is a total order on (score, a seeded hash of the key, key, wnid), so the outputs
are a function of the set of input rows and config.seed, not of the order of rows or shards.

Memory: steps 1-3 need every eligible row at once only on the reference path
(select.bounded_memory=False: one in-memory table, ~0.4 KB a row). The default computes the same
de-duplication counts, class statistics and chosen classes' rows by partial aggregation
(curation/select_partial.py): rows hashed by URL to buckets on disk, each bucket de-duplicated
alone, per-class partials (best per_class + reserve rows, exact score sums) merged per class
group; tasks run on config.engine (local processes or Ray). Memory is then flat in the number of
rows and the outputs byte-identical; select.buckets only changes how the work is cut.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Mapping, Sequence

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from absl import logging
from ml_collections import config_dict

from curation import class_stats, cli, files, select_partial
from curation.errors import CurationError
from curation.select_rows import (
    Eligible,
    Filtered,
    Settings,
    attach_late,
    by_class,
    class_stats_of,
    deduplicate,
    read_filtered,
    seeded_hash,
    with_order_columns,
)
from curation.select_rows import settings as read_settings

MANIFEST_ORDER = ("key", "wnid", "label", "split", "url", "caption", "text_score", "clip_score")
MANIFEST_ORDER += ("rank", "lemma", "width", "height", "punsafe", "nsfw", "similarity")
MANIFEST_ORDER += ("source", "row")


def defaults() -> ml_collections.ConfigDict:
    """config.select."""
    c = ml_collections.ConfigDict()
    # Values of LAION's `nsfw` column (comma-separated, case-insensitive) whose rows are
    # dropped; "" = off. Rows with a null nsfw pass (counted).
    c.nsfw_drop = "NSFW,UNSURE"
    # Drop rows whose punsafe (LAION's safety-model probability of unsafe content, 0..1) is
    # above this; None = off. Rows with a null punsafe pass (counted).
    c.max_punsafe = 0.1
    # Pixels: drop rows whose min(width, height) is smaller (the builder stores the shorter
    # side at 256 and training crops 224, so smaller images would be upsampled); 0 = off.
    c.min_side = 128
    # Rows with a null width or height: keep (True) or drop (False); counted either way.
    c.keep_unknown_size = True
    # Drop rows whose text_score is below this; None = off. Rows without a text score (null or
    # NaN) are always dropped: they cannot be ranked.
    c.min_text_score = config_dict.placeholder(float)
    # With the CLIP stage: drop rows whose clip_score is below this; None = off.
    c.min_clip_score = config_dict.placeholder(float)
    # With the CLIP stage: drop rows whose clip_score is NaN (the image could not be fetched
    # then, so it most likely cannot be downloaded now either).
    c.drop_missing_clip_score = True
    # Keep one row per URL (the best-scoring): the same image under two keys would leak
    # between splits or sit in two classes.
    c.unique_urls = True
    # What orders images within a class (and de-duplicates), a key of select_rows.SCORES:
    # 'text_score', 'clip_score' (CLIP stage needed) or 'weighted' ((1 - clip_weight) *
    # text_score + clip_weight * clip_score; raw scores, not normalized).
    c.score = "text_score"
    c.clip_weight = 0.5  # in [0, 1]; used by score='weighted' only
    # Class ranking statistic (larger is better), a key of class_stats.RANKERS:
    # 'text_score_topk_mean' (mean text score of the class's best train+validation+test
    # images: the images it would contribute), 'clip_score_topk_mean', 'score_topk_mean' (of
    # the `score` above), 'text_score_mean', 'clip_score_mean' (all eligible images), 'count'.
    c.rank_by = "text_score_topk_mean"
    c.num_classes = 1000  # classes kept (the best-ranked that the spread rule allows)
    # Fewer than num_classes qualify: error (True) or keep them all with a warning (False).
    c.require_num_classes = False
    # A class needs at least this many eligible images (after filters and de-duplication);
    # None = train + validation + test (every class full). At least validation + test.
    c.min_images = config_dict.placeholder(int)
    # Images per class and split. ~1,000 train images per class as in the paper (ImageNet has
    # ~1,281) and 50 validation like ImageNet's validation set; test the same size again, so
    # model selection (validation) and the final ranking (test) use disjoint images.
    c.train = 1000
    c.validation = 50
    c.test = 50
    # Over-selection for dead links: each class also gets its next ceil(margin * (train +
    # validation + test)) images, in rank order, with split `reserve`; the TFDS builder replaces
    # images that did not download with them (evaluation splits first). LAION loses 30-40% of
    # its links, so a full class needs margin ~0.6; 0 = none (every image is in a split).
    c.margin = 0.0
    # Memory: True = partial aggregation (curation/select_partial.py): rows hashed to buckets
    # on disk (W/select_tmp, removed at the end), per-bucket de-duplication and per-class
    # partials merged into the same outputs, memory flat in the number of rows; False = every
    # eligible row in one in-memory table (~0.4 KB a row; the reference, byte-identical).
    c.bounded_memory = True
    # Buckets of the bounded path; 0 = one per 2**19 input rows (< 1 GB per process).
    # Any value gives the same outputs.
    c.buckets = 0
    return c


# ---------------------------------------------------------------- choosing images and splits


def _spread_fn(config: ml_collections.ConfigDict, hops: int) -> Callable[[list[str]], list[str]]:
    """WordNet spread rule over the ranked wnids; identity for hops == 0 (and WordNet is then
    not even loaded: that takes seconds)."""
    if hops == 0:
        return lambda ranked: ranked
    from curation import wordnet, wordnet_rules  # only here: nltk + WordNet load, see above

    wn = wordnet.load(config.wordnet)
    return lambda ranked: wordnet_rules.spread(wn, ranked, hops)


def _assign_splits(
    chosen: pa.Table, labels: np.ndarray, rank: np.ndarray, s: Settings
) -> np.ndarray:
    """Split index (into MANIFEST_SPLITS) per row: per label, a seeded shuffle of its best
    per_class rows; test, validation first; the rows beyond them are the reserve."""
    out = np.full(len(labels), class_stats.MANIFEST_SPLITS.index(class_stats.RESERVE), np.int64)
    primary = rank < s.per_class
    out[primary] = _shuffled_splits(chosen.filter(pa.array(primary)), labels[primary], s)
    return out


def _shuffled_splits(chosen: pa.Table, labels: np.ndarray, s: Settings) -> np.ndarray:
    shuffle = seeded_hash(chosen.column("key"), s.seed, b"split")
    order = np.lexsort((shuffle, labels))
    starts = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1]])
    position = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    test, validation = s.sizes["test"], s.sizes["validation"]
    split = np.where(position < test, 2, np.where(position < test + validation, 1, 0))
    out = np.empty(len(order), np.int64)
    out[order] = split
    return out


def choose_images(
    ordered: pa.Table,
    rank: np.ndarray,
    wnids: Sequence[str],
    s: Settings,
    paths: Sequence[pathlib.Path],
) -> pa.Table:
    """Manifest rows: each chosen class's best per_class rows, ordered (label, split, rank)."""
    classes = pa.array(sorted(wnids), pa.string())  # label = index in sorted wnids
    keep = np.asarray(pc.is_in(ordered.column("wnid"), value_set=classes), bool)
    keep &= rank < s.per_class + s.reserve
    # The bounded path hands over only rows to keep: no copy then (it is the largest table).
    chosen = ordered if keep.all() else ordered.filter(pa.array(keep))
    rank = rank[keep]
    labels = np.asarray(pc.index_in(chosen.column("wnid"), value_set=classes)).astype(np.int64)
    split = _assign_splits(chosen, labels, rank, s)
    final = np.lexsort((rank, split, labels))
    manifest = chosen.take(pa.array(final)).drop_columns(["_neg_score", "_tie"])
    manifest = attach_late(manifest, paths)
    split_names = pa.array(class_stats.MANIFEST_SPLITS, pa.string()).take(pa.array(split[final]))
    manifest = manifest.append_column("label", pa.array(labels[final]))
    manifest = manifest.append_column("split", split_names)
    manifest = manifest.append_column("rank", pa.array(rank[final]))
    caption = pc.fill_null(manifest.column("caption"), "")  # null caption: empty text
    manifest = manifest.set_column(manifest.schema.get_field_index("caption"), "caption", caption)
    return manifest.select(list(MANIFEST_ORDER)).combine_chunks()


# ---------------------------------------------------------------- the stage


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    """Writes W/manifest.parquet, W/classes.tsv, W/select_report.{json,md}; returns the report."""
    s = read_settings(config)
    stage = "clip_score" if s.clip else "text_score"
    candidates = class_stats.read_candidates(workdir)
    try:
        if s.select.bounded_memory:
            rows = select_partial.eligible(config, workdir, workdir / stage, s)
        else:
            rows = eligible_in_memory(workdir / stage, s)
        return _choose_and_write(config, workdir, s, stage, candidates, rows)
    finally:
        select_partial.remove_spill(workdir)


def eligible_in_memory(in_dir: pathlib.Path, s: Settings) -> Eligible:
    """The reference path: every eligible row in one table (~0.4 KB a row in memory)."""
    filtered = read_filtered(in_dir, s)
    table, dups = deduplicate(with_order_columns(filtered.table, s), s)
    ordered, rank, starts = by_class(table)
    stats = class_stats_of(ordered, starts, s.per_class)
    return Eligible(filtered, dups, table.num_rows, stats, lambda wnids: (ordered, rank))


def _choose_and_write(
    config: ml_collections.ConfigDict,
    workdir: pathlib.Path,
    s: Settings,
    stage: str,
    candidates: Mapping,
    rows: Eligible,
) -> dict:
    filtered, stats = rows.filtered, rows.stats
    for name, count in filtered.counts.items():
        logging.info(
            "select: filter %-10s dropped %d of %d rows", name, count.dropped, count.rows_in
        )
    spread = _spread_fn(config, s.hops)
    num_classes = int(s.select.num_classes)
    choice = class_stats.choose_classes(stats, s.select.rank_by, s.min_images, num_classes, spread)
    _check_choice(choice, s, candidates)
    manifest = choose_images(*rows.top(choice.chosen), choice.chosen, s, filtered.paths)
    manifest_path, classes_path = workdir / "manifest.parquet", workdir / "classes.tsv"
    files.write_parquet_atomic(manifest, manifest_path)
    eligible = dict(zip(stats.wnids, stats.values["count"].tolist(), strict=True))
    columns = class_stats.classes_columns(manifest, choice, candidates, filtered.matched, eligible)
    class_stats.write_classes_tsv(classes_path, columns)
    report = _report(s, stage, filtered, rows.rows, rows.dedup)
    report["classes"] = class_stats.class_counts(choice, stats, s.min_images, s.hops)
    report["classes"]["requested"] = num_classes
    report["classes"]["unknown_wnids"] = sum(w not in candidates for w in filtered.matched)
    report["images"] = class_stats.image_counts(columns, s.per_class, s.reserve)
    report["outputs"] = {"manifest": str(manifest_path), "classes": str(classes_path)}
    class_stats.write_report(report, workdir)
    logging.info("select: classes %s", json.dumps(report["classes"]))
    logging.info("select: images %s", json.dumps(report["images"]))
    return report


def _report(
    s: Settings, stage: str, filtered: Filtered, eligible_rows: int, dups: Mapping[str, dict]
) -> dict:
    """The row-level part of the report: inputs, filters in order, de-duplication."""
    filters = []
    for name, count in filtered.counts.items():
        rows_out = count.rows_in - count.dropped
        entry = {"filter": name, "active": count.active, "rows_in": count.rows_in}
        entry |= {"rows_out": rows_out, "dropped": count.dropped}
        filters.append(entry | {k: int(v) for k, v in sorted(count.notes.items())})
    return {
        "input": {"stage": stage, "files": len(filtered.paths), "rows": filtered.rows},
        "filters": filters,
        "dedup": dict(dups),
        "eligible_rows": eligible_rows,
        "settings": {
            "seed": s.seed,
            "clip_stage": s.clip,
            "score": s.select.score,
            "rank_by": s.select.rank_by,
            "min_images": s.min_images,
            "per_class": dict(s.sizes),
            "spread_hops": s.hops,
        },
    }


def _check_choice(choice: class_stats.ClassChoice, s: Settings, candidates: Mapping) -> None:
    wanted = int(s.select.num_classes)
    if not choice.chosen:
        raise CurationError(
            f"no class has >= config.select.min_images={s.min_images} eligible images; "
            "see the filter counts in the log, or lower min_images"
        )
    if len(choice.chosen) < wanted:
        message = f"only {len(choice.chosen)} classes qualify, config.select.num_classes={wanted}"
        if s.select.require_num_classes:
            raise CurationError(message + " (config.select.require_num_classes=True)")
        logging.warning("select: %s; keeping them all", message)
    unknown = [w for w in choice.chosen if w not in candidates]
    if unknown:
        raise CurationError(
            f"{files.CANDIDATES} lacks chosen wnid(s) {unknown[:5]}; "
            "rerun the wordnet stage, or match with its candidates"
        )


if __name__ == "__main__":
    cli.run_stage(run)
