"""Select stage: filters, de-duplication, class choice, top-k images, splits, outputs that the
ImageNot TFDS builder accepts, and order independence (curation/select.py)."""

from __future__ import annotations

import csv
import json
import math
import pathlib
import random

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from curation import files, match, select
from curation.errors import CurationError
from curation.select_rows import seeded_hash

REPO = pathlib.Path(__file__).resolve().parents[1]
A, B, C, D = "n00000001", "n00000002", "n00000003", "n00000004"
# The text_score output: match's columns plus the score.
SCHEMA = match.SCHEMA.append(pa.field("text_score", pa.float32()))


def row(key: str, wnid: str, score: float, **fields) -> dict:
    """A text_score row with harmless defaults (passes every filter)."""
    base = {
        "key": key,
        "wnid": wnid,
        "lemma": f"lemma {wnid}",
        "url": f"http://x/{key}.jpg",
        "caption": f"a photo of {key}",
        "width": 400,
        "height": 300,
        "punsafe": 0.01,
        "nsfw": "UNLIKELY",
        "similarity": 0.3,
        "source": "part-0",
        "row": 0,
        "text_score": score,
    }
    return base | fields


def hand_rows() -> list[dict]:
    """The hand-checked case (per class: train 3, validation 1, test 1 -> 5 images, min 5).

    A: 7 clean rows (0.9 .. 0.3), a multi-class key (0.85 here, 0.1 in B), 8 filter cases.
    B: 5 clean rows (0.95 .. 0.75): top-5 mean 0.85, ranked first.
    C: 6 rows of 0.5 (one with a null nsfw) + a row repeating B's best URL (0.3): ranked third.
    D: 4 rows of 0.99: fewer than min_images=5.
    """
    rows = [row(f"a{i}", A, s) for i, s in enumerate([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])]
    rows += [
        row("multi", A, 0.85),
        row("multi", B, 0.1),
        row("a-empty-url", A, 0.99, url=""),
        row("a-nsfw", A, 0.99, nsfw="NSFW"),
        row("a-unsure", A, 0.99, nsfw=" unsure"),
        row("a-punsafe", A, 0.99, punsafe=0.5),
        row("a-small", A, 0.99, width=50, height=500),
        row("a-nowidth", A, 0.35, width=None),
        row("a-nopunsafe", A, 0.2, punsafe=None),
        row("a-notext", A, math.nan),
    ]
    rows += [row(f"b{i}", B, s) for i, s in enumerate([0.95, 0.9, 0.85, 0.8, 0.75])]
    rows[-1]["caption"] = None  # b4: a null caption becomes ""
    rows += [row(f"c{i}", C, 0.5) for i in range(5)] + [row("c5", C, 0.5, nsfw=None)]
    rows += [row("c-dup-url", C, 0.3, url="http://x/b0.jpg")]
    rows += [row(f"d{i}", D, 0.99) for i in range(4)]
    for i, r in enumerate(rows):
        r["row"] = i
    return rows


def write_inputs(
    workdir: pathlib.Path,
    rows: list[dict],
    shards: int = 1,
    stage: str = "text_score",
    wnids: tuple[str, ...] = (A, B, C, D),
) -> None:
    schema = (
        SCHEMA.append(pa.field("clip_score", pa.float32())) if stage == "clip_score" else SCHEMA
    )
    for i in range(shards):
        part = rows[i::shards]
        table = pa.Table.from_pylist(part, schema=schema)
        files.write_parquet_atomic(table, workdir / stage / f"part-{i:05d}.parquet")
    candidates = pa.table(
        {
            "wnid": list(wnids),
            "name": [f"Class\t{w[-1]}" for w in wnids],  # a tab: classes.tsv must not break
            "lemmas": [[f"lemma {w}"] for w in wnids],
            "gloss": [f"the gloss of {w}\nsecond line" for w in wnids],
            "lexname": ["noun.artifact"] * len(wnids),
            "depth": pa.array([5] * len(wnids), pa.int32()),
            "imagenet_hops": pa.array([None] * len(wnids), pa.int32()),
            "in_imagenet": [False] * len(wnids),
        }
    )
    files.write_parquet_atomic(candidates, workdir / "classes" / "candidates.parquet")


def make_config(**overrides) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.select = select.defaults()
    config.select.train, config.select.validation, config.select.test = 3, 1, 1
    config.select.num_classes = 2
    config.select.min_side = 100
    config.wordnet = ml_collections.ConfigDict({"spread_hops": 0})
    config.clip_score = ml_collections.ConfigDict({"enabled": False})
    for name, value in overrides.items():
        config.select[name] = value
    return config


def read_outputs(workdir: pathlib.Path) -> tuple[list[dict], list[dict]]:
    manifest = pq.read_table(workdir / "manifest.parquet").to_pylist()
    with (workdir / "classes.tsv").open(newline="", encoding="utf-8") as f:
        classes = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return manifest, classes


@pytest.fixture
def hand_case(tmp_path) -> tuple[pathlib.Path, dict]:
    write_inputs(tmp_path, hand_rows(), shards=2)
    return tmp_path, select.run(make_config(), tmp_path)


def test_filters_each_drop_their_rows(hand_case):
    _, report = hand_case
    by_name = {f["filter"]: f for f in report["filters"]}
    assert report["input"] == {"stage": "text_score", "files": 2, "rows": 33}
    expected = {  # filter -> (rows in, dropped)
        "url": (33, 1),
        "nsfw": (32, 2),
        "punsafe": (30, 1),
        "min_side": (29, 1),
        "text_score": (28, 1),
        "clip_score": (27, 0),
    }
    assert {n: (f["rows_in"], f["dropped"]) for n, f in by_name.items()} == expected
    assert by_name["nsfw"]["null_passed"] == 1
    assert by_name["punsafe"]["null_passed"] == 1
    assert by_name["min_side"]["unknown_size_kept"] == 1
    assert by_name["text_score"]["missing"] == 1
    assert not by_name["clip_score"]["active"]
    assert report["dedup"] == {
        "key_in_several_classes": {"rows_dropped": 1, "values": 1},
        "url_under_several_keys": {"rows_dropped": 1, "values": 1},
    }
    assert report["eligible_rows"] == 25


def test_hand_checked_selection(hand_case):
    workdir, report = hand_case
    manifest, classes = read_outputs(workdir)
    # B (top-5 mean 0.85) ranks before A (0.9, 0.85 multi, 0.8, 0.7, 0.6: 0.77) before C (0.5);
    # D has 4 < 5 images; num_classes=2 keeps B and A; labels follow sorted wnids.
    assert [(c["label"], c["wnid"], c["rank"]) for c in classes] == [("0", A, "1"), ("1", B, "0")]
    assert report["classes"] | {"unknown_wnids": 0} == {
        "with_eligible_images": 4,
        "min_images": 5,
        "below_min_images": 1,
        "ranked": 3,
        "spread_hops": 0,
        "dropped_by_spread": 0,
        "dropped_by_spread_before_cutoff": 0,
        "selected": 2,
        "requested": 2,
        "unknown_wnids": 0,
    }
    chosen = {w: {r["key"] for r in manifest if r["wnid"] == w} for w in (A, B)}
    assert chosen[A] == {"a0", "multi", "a1", "a2", "a3"}  # multi stays in A (0.85 > 0.1)
    assert chosen[B] == {f"b{i}" for i in range(5)}
    assert float(classes[0]["rank_by_value"]) == pytest.approx(0.77)
    assert [c["matched"] for c in classes] == ["16", "6"]  # A: 7 + multi + 8 filter cases
    assert [c["eligible"] for c in classes] == ["10", "5"]
    assert [(c["selected"], c["train"], c["validation"], c["test"]) for c in classes] == [
        ("5", "3", "1", "1"),
        ("5", "3", "1", "1"),
    ]
    assert classes[0]["name"] == "Class 1" and classes[0]["gloss"].endswith("second line")
    assert report["images"]["splits"] == {"train": 6, "validation": 2, "test": 2}


def test_manifest_order_types_and_splits(hand_case):
    workdir, _ = hand_case
    table = pq.read_table(workdir / "manifest.parquet")
    assert table.schema.names == list(select.MANIFEST_ORDER)
    assert table.schema.field("label").type == pa.int64()
    assert table.schema.field("text_score").type == pa.float32()
    assert all(math.isnan(v) for v in table.column("clip_score").to_pylist())  # no CLIP stage
    rows = table.to_pylist()
    split_order = {"train": 0, "validation": 1, "test": 2}
    keys = [(r["label"], split_order[r["split"]], r["rank"]) for r in rows]
    assert keys == sorted(keys)
    # caption and lemma are read back from the input files for the chosen rows only
    for r in rows:
        caption = "" if r["key"] == "b4" else f"a photo of {r['key']}"
        assert (r["caption"], r["lemma"]) == (caption, f"lemma {r['wnid']}")
    for label in (0, 1):
        mine = [r for r in rows if r["label"] == label]
        # rank = position by score in the class; splits: a seeded shuffle, test then validation
        assert sorted(r["rank"] for r in mine) == list(range(5))
        by_hash = sorted(mine, key=lambda r: seeded_hash(pa.array([r["key"]]), 0, b"split")[0])
        assert [r["split"] for r in by_hash] == ["test", "validation"] + ["train"] * 3


def test_outputs_pass_the_tfds_validator(hand_case, imagenot_manifest):
    workdir, _ = hand_case
    manifest_lib = imagenot_manifest
    classes = manifest_lib.read_classes(workdir / "classes.tsv")
    assert classes.wnids == (A, B)
    files_ = manifest_lib.manifest_files(workdir)
    manifest = manifest_lib.read_manifest(files_, classes)
    assert manifest.table.num_rows == 10
    report = json.loads((workdir / "select_report.json").read_text())
    assert report["images"]["selected"] == 10
    assert (
        "| nsfw | yes | 32 | 30 | 2 | null_passed 1 |" in (workdir / "select_report.md").read_text()
    )


def test_margin_adds_reserve_rows_ranked_after_the_split_rows(tmp_path, imagenot_manifest):
    write_inputs(tmp_path, hand_rows())
    select.run(make_config(), tmp_path)
    plain = pq.read_table(tmp_path / "manifest.parquet")
    report = select.run(make_config(margin=0.4), tmp_path)  # 5 per class -> 2 reserve
    manifest, classes = read_outputs(tmp_path)
    table = pq.read_table(tmp_path / "manifest.parquet")
    in_splits = table.filter(pc.not_equal(table.column("split"), "reserve"))
    nan = ["clip_score"]  # all NaN (no CLIP stage), which compares unequal to itself
    assert in_splits.drop_columns(nan).equals(plain.drop_columns(nan))  # the same split rows
    reserve = [(r["wnid"], r["rank"]) for r in manifest if r["split"] == "reserve"]
    assert reserve == [(A, 5), (A, 6)]  # B has exactly its 5 images: no reserve
    assert [(c["wnid"], c["selected"], c["reserve"]) for c in classes] == [
        (A, "5", "2"), (B, "5", "0")
    ]  # fmt: skip
    assert report["images"]["reserve"] == {
        "per_class": 2, "total": 2, "classes_short": 1, "short_wnids": [B]
    }  # fmt: skip
    # The builder reads it: `reserve` is a split it knows.
    built = imagenot_manifest.read_manifest(
        imagenot_manifest.manifest_files(tmp_path),
        imagenot_manifest.read_classes(tmp_path / "classes.tsv"),
    )
    assert built.table.num_rows == 12
    with pytest.raises(CurationError, match=r"config.select.margin=-0.1: expected >= 0"):
        select.run(make_config(margin=-0.1), tmp_path)


def test_output_independent_of_row_and_shard_order(tmp_path):
    rows = hand_rows()
    outputs = []
    for trial, shards in enumerate((1, 3)):
        random.Random(trial).shuffle(rows)
        workdir = tmp_path / str(trial)
        write_inputs(workdir, rows, shards=shards)
        select.run(make_config(), workdir)
        outputs.append(
            [(workdir / name).read_bytes() for name in ("manifest.parquet", "classes.tsv")]
        )
    assert outputs[0] == outputs[1]


def test_seeded_ties(tmp_path):
    """Seven equal scores, five chosen: the five smallest tie hashes of the seed, whatever the
    input order; some other seed chooses differently."""
    keys = [f"t{i}" for i in range(7)]
    rows = [row(k, A, 0.5) for k in keys]
    chosen_by_seed = []
    for seed in range(4):
        workdir = tmp_path / str(seed)
        write_inputs(workdir, rows[::-1] if seed % 2 else rows, wnids=(A,))
        config = make_config(num_classes=1)
        config.seed = seed
        select.run(config, workdir)
        chosen = {r["key"] for r in pq.read_table(workdir / "manifest.parquet").to_pylist()}
        ties = seeded_hash(pa.array(keys), seed, b"tie")
        assert chosen == {keys[i] for i in np.argsort(ties)[:5]}
        chosen_by_seed.append(frozenset(chosen))
    assert len(set(chosen_by_seed)) > 1


def test_fewer_classes_than_requested(tmp_path):
    write_inputs(tmp_path, hand_rows())
    report = select.run(make_config(num_classes=10), tmp_path)
    assert report["classes"]["selected"] == 3  # A, B, C qualify; a warning, not an error
    with pytest.raises(CurationError, match="only 3 classes qualify"):
        select.run(make_config(num_classes=10, require_num_classes=True), tmp_path)


def test_min_images_below_per_class_keeps_eval_splits_full(tmp_path):
    write_inputs(tmp_path, hand_rows())
    report = select.run(make_config(num_classes=4, min_images=4), tmp_path)
    _, classes = read_outputs(tmp_path)
    d = next(c for c in classes if c["wnid"] == D)
    assert (d["train"], d["validation"], d["test"]) == ("2", "1", "1")
    assert report["images"]["classes_short"] == 1
    with pytest.raises(CurationError, match=r"min_images=1: expected >= max\(1, validation"):
        select.run(make_config(min_images=1), tmp_path)


def test_clip_stage(tmp_path):
    """CLIP on: clip_score orders images and ranks classes; NaN and low CLIP scores dropped."""
    rows = hand_rows()
    for i, r in enumerate(rows):
        r["clip_score"] = 0.2 + 0.01 * i if r["wnid"] != C else 0.9  # C best by CLIP
    rows[0]["clip_score"] = math.nan  # a0: image unavailable at the CLIP stage
    rows[1]["clip_score"] = 0.01  # a1: below min_clip_score
    write_inputs(tmp_path, rows, stage="clip_score")
    config = make_config(score="clip_score", rank_by="clip_score_topk_mean", min_clip_score=0.1)
    config.clip_score.enabled = True
    report = select.run(config, tmp_path)
    clip = next(f for f in report["filters"] if f["filter"] == "clip_score")
    assert (clip["active"], clip["missing"], clip["below_min"]) == (True, 1, 1)
    manifest, classes = read_outputs(tmp_path)
    assert classes[[c["wnid"] for c in classes].index(C)]["rank"] == "0"
    assert not any(math.isnan(r["clip_score"]) for r in manifest)
    assert {"a0", "a1"}.isdisjoint(r["key"] for r in manifest)


def test_nothing_eligible(tmp_path):
    write_inputs(tmp_path, hand_rows())
    with pytest.raises(CurationError, match=r"no class has >= config\.select\.min_images=5"):
        select.run(make_config(min_text_score=2.0), tmp_path)


def test_clip_score_without_clip_stage_is_a_config_error(tmp_path):
    write_inputs(tmp_path, hand_rows())
    with pytest.raises(CurationError, match=r"config.select.score='clip_score' needs the CLIP"):
        select.run(make_config(score="clip_score"), tmp_path)


def test_bad_inputs(tmp_path):
    with pytest.raises(CurationError, match=r"candidates\.parquet: not found"):
        select.run(make_config(), tmp_path)
    write_inputs(tmp_path, hand_rows())
    for path in (tmp_path / "text_score").glob("*.parquet"):
        path.unlink()
    with pytest.raises(CurationError, match=r"no \*\.parquet inputs"):
        select.run(make_config(), tmp_path)
    table = pa.Table.from_pylist(hand_rows(), schema=SCHEMA).drop_columns(["text_score"])
    files.write_parquet_atomic(table, tmp_path / "text_score" / "part-0.parquet")
    with pytest.raises(CurationError, match="missing column 'text_score'") as info:
        select.run(make_config(), tmp_path)
    assert "\n" not in str(info.value)


def test_spread_on_wordnet(tmp_path):
    """hops=1: puppy (a hyponym of dog) is dropped when dog ranks above it."""
    if not pathlib.Path("/usr/share/wordnet/data.noun").is_file():
        pytest.skip("WordNet 3.0 not found at /usr/share/wordnet")
    wordnet = pytest.importorskip("curation.wordnet", reason="curation/wordnet.py not written")
    dog, puppy, violin = "n02084071", "n01322604", "n04536866"
    scores = {dog: 0.9, puppy: 0.8, violin: 0.7}
    rows = [row(f"{w}-{i}", w, s) for w, s in scores.items() for i in range(5)]
    write_inputs(tmp_path, rows, wnids=tuple(scores))
    config = make_config(num_classes=2)
    config.wordnet = wordnet.defaults()
    config.wordnet.dir = "/usr/share/wordnet"
    config.wordnet.cache_dir = str(tmp_path / "wordnet_cache")
    config.wordnet.spread_hops = 1
    report = select.run(config, tmp_path)
    _, classes = read_outputs(tmp_path)
    assert [c["wnid"] for c in classes] == [dog, violin]
    assert report["classes"]["dropped_by_spread"] == 1
    assert report["classes"]["dropped_by_spread_before_cutoff"] == 1
