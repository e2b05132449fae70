"""Select in bounded memory (curation/select_partial.py) against the in-memory reference path:
manifest.parquet, classes.tsv and select_report.json byte for byte, on the local engine and on
Ray."""

from __future__ import annotations

import math
import pathlib
import random

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation import engine, files, select, select_partial
from curation.errors import CurationError
from tests.test_curation_select import hand_rows, make_config, row, write_inputs

OUTPUTS = ("manifest.parquet", "classes.tsv", "select_report.json")


def run_both(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> dict[str, bytes]:
    """Runs the in-memory path, then the bounded one in the same workdir (the report names its
    output paths); asserts equal bytes and that no spill files remain; returns the outputs."""
    config.select.bounded_memory = False
    reference = select.run(config, workdir)
    expected = {name: (workdir / name).read_bytes() for name in OUTPUTS}
    for name in OUTPUTS:
        (workdir / name).unlink()
    config.select.bounded_memory = True
    assert select.run(config, workdir) == reference
    for name in OUTPUTS:
        assert (workdir / name).read_bytes() == expected[name], name
    assert not (workdir / select_partial.SPILL_DIR).exists()
    return expected


def random_rows(n: int, classes: int, seed: int, clip: bool = False) -> list[dict]:
    """A LAION-like mess: Zipf class sizes, keys in several classes, URLs under several keys,
    tied scores (2 decimals), filter failures, float32 scores."""
    rng = random.Random(seed)
    wnids = [f"n{i:08d}" for i in range(1, classes + 1)]
    weights = [1 / (i + 1) for i in range(classes)]
    rows = []
    for i in range(n):
        key = f"k{i}"
        url = f"http://x/{rng.randrange(n // 5)}.jpg" if rng.random() < 0.2 else f"http://y/{i}"
        extra = {}
        if rng.random() < 0.05:
            extra["nsfw"] = "NSFW"
        if rng.random() < 0.05:
            extra["width"] = 20
        if clip:
            extra["clip_score"] = math.nan if rng.random() < 0.05 else rng.uniform(0.1, 0.4)
        for wnid in rng.choices(wnids, weights, k=rng.choice((1, 1, 1, 2, 3))):
            score = round(rng.uniform(0.05, 1.0), 2)
            rows.append(row(key, wnid, score, url=url, **extra))
    for i, r in enumerate(rows):
        r["row"] = i
    return rows


def big_config(**overrides) -> ml_collections.ConfigDict:
    config = make_config(num_classes=8, min_images=12, margin=0.5, buckets=5, **overrides)
    config.select.train, config.select.validation, config.select.test = 10, 3, 3
    config.engine = engine.defaults()
    return config


def test_hand_case_and_margin(tmp_path):
    write_inputs(tmp_path, hand_rows(), shards=2)
    run_both(tmp_path, make_config(buckets=3))
    run_both(tmp_path, make_config(margin=0.4))  # buckets=0: sized from the rows (one here)
    run_both(tmp_path, make_config(num_classes=4, min_images=4, rank_by="text_score_mean"))


@pytest.mark.parametrize("rank_by", ["text_score_topk_mean", "text_score_mean", "count"])
def test_random_multi_shard(tmp_path, monkeypatch, rank_by):
    """Several shards of several row groups, partition tasks of a few row groups each."""
    rows = random_rows(3000, 60, seed=1)
    random.Random(2).shuffle(rows)
    write_inputs(tmp_path, rows, shards=4, wnids=tuple(sorted({r["wnid"] for r in rows})))
    for path in (tmp_path / "text_score").glob("*.parquet"):
        pq.write_table(pq.read_table(path), path, row_group_size=100)
    monkeypatch.setattr(select_partial, "ROWS_PER_TASK", 250)  # 2-3 row groups a task
    outputs = run_both(tmp_path, big_config(rank_by=rank_by))
    report = outputs["select_report.json"].decode()
    assert '"rows_dropped": 0' not in report  # both de-duplications did drop rows
    no_urls = big_config(rank_by=rank_by, unique_urls=False)  # buckets by key
    run_both(tmp_path, no_urls)


def test_clip_stage_weighted_score(tmp_path):
    rows = random_rows(1500, 30, seed=3, clip=True)
    wnids = tuple(sorted({r["wnid"] for r in rows}))
    write_inputs(tmp_path, rows, shards=3, stage="clip_score", wnids=wnids)
    for rank_by in ("score_topk_mean", "clip_score_mean", "clip_score_topk_mean"):
        config = big_config(score="weighted", rank_by=rank_by, min_clip_score=0.15)
        config.select.drop_missing_clip_score = False  # NaN CLIP scores stay: NaN-aware means
        config.clip_score.enabled = True
        run_both(tmp_path, config)


def test_exact_means_against_numpy():
    """Partial sums merged exactly give numpy's mean where numpy's float64 sum is exact (scores
    of either sign, all >= 2**-10 in size: exact for up to ~2**20 of them); NaN and infinities
    as numpy."""
    rng = np.random.default_rng(0)
    values = rng.uniform(2**-10, 1, 5000) * rng.choice([-1.0, 1.0], 5000)
    values = values.astype(np.float32).astype(np.float64)
    parts = []
    for part in np.array_split(values, 3):  # three buckets' partial sums, merged
        ordered = pa.table({"text_score": part, "clip_score": np.full(len(part), np.nan)})
        sums, classes = select_partial._class_sums(ordered, np.array([0]), np.array([len(part)]))
        parts.append(sums.append_column("wnid", pa.array(["a"] * len(classes))))
    means = select_partial._exact_stats(pa.concat_tables(parts), ["a"])
    assert means["count"].tolist() == [5000]
    assert means["text_score_mean"][0] == np.mean(values)
    assert math.isnan(means["clip_score_mean"][0])
    assert select_partial._mean([], 0, 2, 0) == math.inf
    assert math.isnan(select_partial._mean([], 0, 1, 1))


def test_a_key_with_two_urls_is_an_error(tmp_path):
    rows = [*hand_rows(), row("a0", "n00000002", 0.5, url="http://elsewhere/a0.jpg")]
    write_inputs(tmp_path, rows)
    with pytest.raises(CurationError, match=r"key 'a0' has several URLs"):
        select.run(make_config(), tmp_path)
    config = make_config(bounded_memory=False)  # the in-memory path does not need it
    select.run(config, tmp_path)
    with pytest.raises(CurationError, match=r"config.select.buckets=-1: expected >= 0"):
        select.run(make_config(buckets=-1), tmp_path)


def test_bad_input_from_a_task_is_a_curation_error(tmp_path):
    write_inputs(tmp_path, hand_rows())
    table = pa.Table.from_pylist(hand_rows()).drop_columns(["text_score"])
    files.write_parquet_atomic(table, tmp_path / "text_score" / "part-00009.parquet")
    with pytest.raises(CurationError, match="missing column 'text_score'"):
        select.run(make_config(buckets=2), tmp_path)
    assert not (tmp_path / select_partial.SPILL_DIR).exists()


# Ray last (conftest's ray_local): its threads stay up until the module ends, and later tests fork.


def test_ray_engine(tmp_path, ray_local):
    rows = random_rows(1500, 30, seed=4)
    write_inputs(tmp_path, rows, shards=3, wnids=tuple(sorted({r["wnid"] for r in rows})))
    config = big_config()
    config.engine.name = "ray"
    run_both(tmp_path, config)
