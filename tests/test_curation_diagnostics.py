"""curation.diagnostics: closed forms of the intra-class similarity and its intervals, summaries
against numpy on hand-made inputs, the class report's counts, and run() end to end on small
fake workdirs (one alone, two compared, inputs missing)."""

from __future__ import annotations

import io
import json
import pathlib
import re
import subprocess
import sys
import tarfile
import textwrap

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation import diagnostics, diagnostics_data, files
from curation import diagnostics_stats as dstats
from curation.errors import CurationError

REPO = pathlib.Path(__file__).resolve().parents[1]

# --- intra-class similarity: closed forms ---------------------------------------------------


def _direct_pairwise(x: np.ndarray) -> float:
    """The O(n^2) definition: mean cosine over ordered pairs i != j."""
    units = x / np.linalg.norm(x, axis=1, keepdims=True)
    gram = units @ units.T
    n = len(x)
    return float((gram.sum() - np.trace(gram)) / (n * (n - 1)))


def _cluster(rng, n, dim, spread, center=None):
    center = rng.normal(size=dim) if center is None else center
    x = center / np.linalg.norm(center) + spread * rng.normal(size=(n, dim)) / np.sqrt(dim)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_mean_pairwise_cosine_closed_forms():
    assert dstats.mean_pairwise_cosine(np.tile([[0.6, 0.8, 0.0]], (7, 1))) == pytest.approx(1.0)
    assert dstats.mean_pairwise_cosine(np.eye(6)) == pytest.approx(0.0, abs=1e-12)
    # Two opposite vectors: cosine -1.
    assert dstats.mean_pairwise_cosine(np.array([[1.0, 2.0], [-2.0, -4.0]])) == pytest.approx(-1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8)) * rng.uniform(0.5, 3, size=(40, 1))  # not unit rows
    assert dstats.mean_pairwise_cosine(x) == pytest.approx(_direct_pairwise(x), abs=1e-12)
    assert np.isnan(dstats.mean_pairwise_cosine(x[:1]))


def test_jackknife_matches_leave_one_out_by_hand():
    rng = np.random.default_rng(1)
    x = _cluster(rng, 25, 6, 1.0)
    n = len(x)
    left_out = np.array([_direct_pairwise(np.delete(x, i, axis=0)) for i in range(n)])
    se = np.sqrt((n - 1) / n * np.sum((left_out - left_out.mean()) ** 2))
    lo, hi = dstats.jackknife_interval(x, 0.95)
    center = _direct_pairwise(x)
    assert (lo, hi) == pytest.approx((center - 1.959964 * se, center + 1.959964 * se), abs=1e-6)


def test_intervals_contain_the_mean_and_bootstrap_is_seeded():
    rng = np.random.default_rng(2)
    x = _cluster(rng, 60, 16, 1.2)
    value = dstats.mean_pairwise_cosine(x)
    jack = dstats.jackknife_interval(x, 0.95)
    boot = dstats.bootstrap_interval(x, 0.95, np.random.default_rng(5), samples=400)
    for lo, hi in (jack, boot):
        assert lo < value < hi
    # Same seed, same interval; another seed, another one. Both methods agree on the width.
    assert dstats.bootstrap_interval(x, 0.95, np.random.default_rng(5), samples=400) == boot
    assert dstats.bootstrap_interval(x, 0.95, np.random.default_rng(6), samples=400) != boot
    assert 0.6 < (boot[1] - boot[0]) / (jack[1] - jack[0]) < 1.6
    # Identical images: no spread at all; too few images: no interval.
    same = np.tile(x[:1], (5, 1))
    assert dstats.jackknife_interval(same, 0.95) == pytest.approx((1.0, 1.0))
    assert dstats.bootstrap_interval(same, 0.9, rng, samples=20) == pytest.approx((1.0, 1.0))
    assert np.isnan(dstats.jackknife_interval(x[:2], 0.95)).all()


def test_bootstrap_leaves_out_pairs_of_the_same_image():
    """Orthogonal images: every distinct pair has cosine 0, so every resample must give 0 (a
    naive resample would pair duplicates with themselves and give > 0)."""
    lo, hi = dstats.bootstrap_interval(np.eye(8), 0.95, np.random.default_rng(0), samples=50)
    assert (lo, hi) == pytest.approx((0.0, 0.0), abs=1e-12)


def test_mean_ci_and_comparisons_are_seeded_and_detect_shifts():
    values = np.array([0.1, 0.2, 0.25, 0.3, 0.5, np.nan])
    mean, lo, hi = dstats.mean_ci(values, 500, 0.9, seed=3)
    assert mean == pytest.approx(np.nanmean(values)) and lo < mean < hi
    assert dstats.mean_ci(values, 500, 0.9, seed=3) == (mean, lo, hi)
    rng = np.random.default_rng(4)
    a = {f"n{i:08d}": v for i, v in enumerate(rng.uniform(0, 1, 12))}
    b = {w: v + 0.1 + rng.uniform(0, 0.01) for w, v in a.items()}
    paired = dstats.paired_comparison(a, b | {"n99999999": 0.0}, 500, 0.95, seed=0)
    assert paired["n"] == 12 and paired["a_greater"] == 0
    assert paired["diff_hi"] < 0 and paired["wilcoxon_p"] < 0.001
    assert paired["mean_diff"] == pytest.approx(np.mean([a[w] - b[w] for w in a]))
    same = dstats.paired_comparison(a, a, 100, 0.95, seed=0)
    assert same["wilcoxon_p"] == 1.0 and same["mean_diff"] == 0.0
    unpaired = dstats.unpaired_comparison(list(a.values()), list(b.values()), 500, 0.95, seed=0)
    assert unpaired["diff_lo"] < unpaired["mean_diff"] < unpaired["diff_hi"]
    assert unpaired["mean_diff"] == pytest.approx(
        np.mean(list(a.values())) - np.mean(list(b.values()))
    )
    assert unpaired == dstats.unpaired_comparison(list(a.values()), list(b.values()), 500, 0.95, 0)


# --- fake workdirs ----------------------------------------------------------------------------

SPLITS = ("train", "validation", "test")
# wnid, name, lexname, depth, imagenet_hops ('' = beyond the wordnet stage's range)
CLASSES = [
    ("n01440764", "tench", "noun.animal", 11, 0),  # an ImageNet-1k synset
    ("n03000001", "thing one", "noun.artifact", 7, 1),
    ("n03000002", "thing two", "noun.artifact", 8, 2),
    ("n03000003", "thing three", "noun.artifact", 7, ""),
    ("n09000004", "place four", "noun.location", 5, 3),
    ("n07000005", "food five", "noun.food", 9, ""),
]


def _write_classes(workdir, extras=True, classes=CLASSES):
    header = ["label", "wnid", "name", "gloss"] + (["lexname", "depth", "imagenet_hops"] * extras)
    lines = ["\t".join(header)]
    for label, (wnid, name, lexname, depth, hops) in enumerate(classes):
        row = [str(label), wnid, name, f"gloss of {name}"]
        lines.append("\t".join(row + ([lexname, str(depth), str(hops)] if extras else [])))
    (workdir / "classes.tsv").write_text("\n".join(lines) + "\n")


def _fake_workdir(root, spreads, per_class=30, dim=16, seed=0, embeddings=True, classes=CLASSES):
    """Manifest + classes.tsv + two clip_score shards whose embeddings cluster around one center
    per class with the class's `spread` (larger: more diverse). The shards also hold rows that
    are not in the manifest, a key twice, and one NaN row; one manifest key has no row."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(100).normal(size=(len(classes), dim))  # shared by workdirs
    keys, wnids, labels, emb = [], [], [], []
    for label, ((wnid, *_), spread) in enumerate(zip(classes, spreads, strict=True)):
        keys += [f"{wnid}-{i:04d}" for i in range(per_class)]
        wnids += [wnid] * per_class
        labels += [label] * per_class
        emb.append(_cluster(rng, per_class, dim, spread, centers[label]))
    n = len(keys)
    manifest = pa.table(
        {
            "key": keys,
            "wnid": wnids,
            "label": pa.array(labels, pa.int64()),
            "split": [SPLITS[i % 3] for i in range(n)],
            "url": [f"http://x/{k}.jpg" for k in keys],
            "caption": ["a caption"] * n,
            "text_score": pa.array(rng.uniform(0.2, 0.9, n), pa.float32()),
            "clip_score": pa.array(np.full(n, np.nan), pa.float32()),
        }
    )
    files.write_parquet_atomic(manifest, root / "manifest.parquet")
    _write_classes(root, classes=classes)
    if embeddings:
        emb = np.concatenate(emb).astype(np.float16)
        emb[3] = np.nan  # a missing image
        extra = [f"other-{i}" for i in range(5)]
        rows = np.arange(1, n)  # keys[0] has no row at all
        shard_keys = [keys[i] for i in rows] + extra + [keys[5]]
        shard_emb = np.concatenate([emb[rows], np.ones((5, dim), np.float16), emb[[5]]])
        for part, sel in enumerate(np.array_split(np.arange(len(shard_keys)), 2)):
            table = pa.table({"key": [shard_keys[i] for i in sel], "wnid": ["x"] * len(sel)})
            files.write_parquet_atomic(table, root / "clip_score" / f"part-{part}.parquet")
            np.save(root / "clip_score" / f"part-{part}.embeddings.npy", shard_emb[sel])
    return root


def _config(**diag) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict({"seed": 0, "diagnostics": diagnostics.defaults()})
    config.diagnostics.update(
        {"bootstrap_samples": 200, "extreme_classes": 3, "min_images_per_class": 5} | diag
    )
    return config


# --- sections on hand-made inputs -------------------------------------------------------------


def test_text_summary_matches_numpy(tmp_path):
    workdir = _fake_workdir(tmp_path / "w", [1.0] * 6, per_class=11, embeddings=False)
    table = pq.read_table(workdir / "manifest.parquet")
    scores = table.column("text_score").to_numpy().astype(np.float64)
    scores[[0, 15]] = np.nan  # NaN scores are skipped and counted
    table = table.set_column(
        table.schema.get_field_index("text_score"), "text_score", pa.array(scores, pa.float32())
    )
    files.write_parquet_atomic(table, workdir / "manifest.parquet")
    dataset = diagnostics_data.load_dataset(workdir, "")
    section = diagnostics.text_section(dataset)
    assert section["images"] == 66 and section["nan_skipped"] == 2
    scores = np.asarray(table.column("text_score").to_numpy(), np.float64)
    wnids = np.array(table.column("wnid").to_pylist())
    for wnid, *_ in CLASSES:
        got, values = section["per_class"][wnid], scores[wnids == wnid]
        values = values[np.isfinite(values)]
        assert got["n"] == len(values)
        assert got["mean"] == pytest.approx(values.mean())
        assert got["std"] == pytest.approx(values.std(ddof=1))
        assert got["min"] == pytest.approx(values.min())
        assert [got[q] for q in ("q05", "q25", "q50", "q75", "q95")] == pytest.approx(
            np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95])
        )
    finite = scores[np.isfinite(scores)]
    assert section["overall"]["q50"] == pytest.approx(np.median(finite))
    assert section["splits"]["test"]["n"] == np.isfinite(scores[2::3]).sum()


def _counts(section):
    return {name: count for name, count, _ in section["lexname"]}


def test_class_report_counts(tmp_path):
    workdir = _fake_workdir(tmp_path / "w", [1.0] * 6, per_class=3, embeddings=False)
    section = diagnostics.class_section(diagnostics_data.load_dataset(workdir, ""), max_hops=3)
    assert _counts(section) == {
        "noun.artifact": 3, "noun.animal": 1, "noun.food": 1, "noun.location": 1,
    }  # fmt: skip
    assert section["lexname"][0] == ("noun.artifact", 3, 0.5)
    assert section["depth"]["n"] == 6 and section["depth"]["mean"] == pytest.approx(47 / 6)
    assert section["depth_counts"] == {5: 1, 7: 2, 8: 1, 9: 1, 11: 1}
    assert section["imagenet"] == {
        "in_imagenet": 1, "in_imagenet_unknown": 0,  # from the tfds ImageNet-1k labels file
        "hops_0": 1, "within_1": 2, "within_2": 3, "within_3": 4, "hops_null": 2,
    }  # fmt: skip
    assert section["sources"]["lexname"].endswith("classes.tsv")


def test_class_fields_from_candidates_or_na(tmp_path):
    workdir = _fake_workdir(tmp_path / "w", [1.0] * 6, per_class=3, embeddings=False)
    _write_classes(workdir, extras=False)
    dataset = diagnostics_data.load_dataset(workdir, "", imagenet_labels=str(tmp_path / "none"))
    section = diagnostics.class_section(dataset, max_hops=3)
    assert section["lexname"] is None and section["depth"] is None and section["imagenet"] == {}
    assert set(section["sources"].values()) == {"n/a"}
    # candidates.parquet (the wordnet stage's output) completes what classes.tsv lacks.
    cands = pa.table(
        {
            "wnid": [c[0] for c in CLASSES[1:]],  # one class missing from the candidates
            "lexname": [c[2] for c in CLASSES[1:]],
            "depth": pa.array([c[3] for c in CLASSES[1:]], pa.int32()),
            "imagenet_hops": pa.array([c[4] if c[4] != "" else None for c in CLASSES[1:]]),
            "in_imagenet": [False] * 5,
        }
    )
    files.write_parquet_atomic(cands, workdir / "classes" / "candidates.parquet")
    section = diagnostics.class_section(diagnostics_data.load_dataset(workdir, ""), max_hops=2)
    assert _counts(section) == {"noun.artifact": 3, "noun.food": 1, "noun.location": 1, "n/a": 1}
    assert section["imagenet"] == {
        "in_imagenet": 0, "in_imagenet_unknown": 1, "hops_0": 0, "within_1": 1, "within_2": 2,
        "hops_null": 3,
    }  # fmt: skip
    assert section["sources"]["depth"].endswith("candidates.parquet")


def test_sample_images_is_capped_seeded_and_order_independent(tmp_path):
    workdir = _fake_workdir(tmp_path / "w", [1.0] * 6, per_class=20, embeddings=False)
    table = diagnostics_data.read_manifest(workdir)
    keys, wnids = diagnostics_data.sample_images(table, cap=7, seed=1)
    assert len(keys) == 42 and all(np.sum(wnids == c[0]) == 7 for c in CLASSES)
    assert all(k.startswith(w) for k, w in zip(keys, wnids, strict=True))
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    again, _ = diagnostics_data.sample_images(shuffled, cap=7, seed=1)
    assert sorted(again) == sorted(keys)
    other, _ = diagnostics_data.sample_images(table, cap=7, seed=2)
    assert sorted(other) != sorted(keys)
    everything, _ = diagnostics_data.sample_images(table, cap=0, seed=1)
    assert len(everything) == 120


# --- run() end to end ---------------------------------------------------------------------------


def _pngs_open(folder):
    names = sorted(p.name for p in folder.glob("*.png"))
    for name in names:
        with Image.open(folder / name) as image:
            image.verify()
    return names


def test_run_writes_figures_report_and_summary(tmp_path):
    workdir = _fake_workdir(tmp_path / "w", [0.5, 1.0, 1.5, 2.0, 1.0, 0.7])
    summary = diagnostics.run(_config(name="ImageNot"), workdir)
    out = workdir / "diagnostics"
    report = (out / "report.md").read_text()
    names = _pngs_open(out)
    assert {"text_per_class.png", "intra_hist.png", "classes_lexname.png"} <= set(names)
    assert sorted(re.findall(r"\]\(([^)]+\.png)\)", report)) == names  # each one, relatively
    assert "noun.artifact" in report and "# Diagnostics: ImageNot" in report
    assert json.loads((out / "summary.json").read_text()) == summary
    intra = summary["intra_class"]["ImageNot"]
    # keys[0] has no row, row 3 is NaN; the duplicate key and rows outside the manifest unused.
    assert intra["images"] == {"sampled": 180, "used": 178, "missing": 1, "invalid": 1}
    assert intra["classes"] == 6 and intra["mean_lo"] < intra["mean"] < intra["mean_hi"]
    tsv = (out / "per_class.tsv").read_text().splitlines()
    assert len(tsv) == 7 and tsv[0].startswith("dataset\twnid\tname\tlexname")
    rows = {line.split("\t")[1]: line.split("\t") for line in tsv[1:]}
    intra_col = tsv[0].split("\t").index("intra")
    # Tighter class (spread 0.5) is more similar than the loosest one (spread 2.0).
    assert float(rows["n01440764"][intra_col]) > float(rows["n03000003"][intra_col])
    # A second run with fewer images per class: same files, no stale figures.
    diagnostics.run(_config(name="ImageNot", max_images_per_class=10), workdir)
    assert _pngs_open(out) == names
    again = json.loads((out / "summary.json").read_text())
    assert again["intra_class"]["ImageNot"]["images"]["sampled"] == 60


def test_compare_detects_tighter_clusters(tmp_path):
    loose = _fake_workdir(tmp_path / "laionet", [1.6] * 6, seed=1)
    tight_classes = [*CLASSES[:5], ("n04000009", "other", "noun.artifact", 6, "")]
    tight = _fake_workdir(tmp_path / "imagenet", [0.6] * 6, seed=2, classes=tight_classes)
    config = _config(compare=str(tight), class_interval="bootstrap", bootstrap_samples=100)
    summary = diagnostics.run(config, loose)
    paired = summary["comparison"]["intra"]["paired"]
    assert paired["n"] == 5 and paired["a_greater"] == 0  # 5 shared wnids
    assert paired["diff_hi"] < 0 and paired["wilcoxon_p"] < 0.1  # 5 pairs: exact p = 2/32
    unpaired = summary["comparison"]["intra"]["unpaired"]
    assert unpaired["n_a"] == unpaired["n_b"] == 6 and unpaired["mannwhitney_p"] < 0.01
    means = summary["intra_class"]
    assert means["laionet"]["mean_hi"] < means["imagenet"]["mean_lo"]
    names = _pngs_open(loose / "diagnostics")
    assert {"intra_scatter.png", "text_scatter.png", "text_datasets.png"} <= set(names)
    report = (loose / "diagnostics" / "report.md").read_text()
    assert "## Comparison: laionet (A) vs imagenet (B)" in report
    assert summary["classes"]["imagenet"]["imagenet"]["hops_null"] == 2


def test_no_embeddings_is_a_reported_skip(tmp_path):
    workdir = _fake_workdir(tmp_path / "w", [1.0] * 6, per_class=4, embeddings=False)
    summary = diagnostics.run(_config(), workdir)
    skipped = summary["intra_class"]["w"]["skipped"]
    assert skipped.startswith("no embeddings: intra-class similarity skipped (")
    assert "clip_score" in skipped
    assert skipped in (workdir / "diagnostics" / "report.md").read_text()
    assert "intra_hist.png" not in _pngs_open(workdir / "diagnostics")
    summary = diagnostics.run(_config(embeddings=""), workdir)
    assert "skipped" in summary["intra_class"]["w"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("no_manifest", r"no manifest: expected .*manifest\.parquet"),
        ("no_classes", r"classes\.tsv: not found"),
        ("no_text_score", r"missing column 'text_score'"),
        ("bad_depth", r"classes\.tsv:3: field 'depth'"),
        ("short_npy", r"part-0\.embeddings\.npy: shape \(3, 16\)"),
        ("bad_source", r"config\.diagnostics\.embeddings: 'laion'"),
        ("bad_interval", r"config\.diagnostics\.class_interval: 'exact'"),
        ("no_compare", r"missing-dir: workdir not found"),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path, change, message):
    workdir = _fake_workdir(tmp_path / "w", [1.0] * 6, per_class=4)
    config = _config()
    manifest = workdir / "manifest.parquet"
    edits = {
        "no_manifest": lambda: manifest.unlink(),
        "no_classes": lambda: (workdir / "classes.tsv").unlink(),
        "no_text_score": lambda: pq.write_table(
            pq.read_table(manifest).drop_columns(["text_score"]), manifest
        ),
        "bad_depth": lambda: (workdir / "classes.tsv").write_text(
            (workdir / "classes.tsv").read_text().replace("\t7\t1\n", "\tseven\t1\n")
        ),
        "short_npy": lambda: np.save(
            workdir / "clip_score" / "part-0.embeddings.npy", np.zeros((3, 16), np.float16)
        ),
        "bad_source": lambda: config.diagnostics.update({"embeddings": "laion"}),
        "bad_interval": lambda: config.diagnostics.update({"class_interval": "exact"}),
        "no_compare": lambda: config.diagnostics.update({"compare": str(tmp_path / "missing-dir")}),
    }
    edits[change]()
    with pytest.raises(CurationError, match=message) as error:
        diagnostics.run(config, workdir)
    assert "\n" not in str(error.value)


def test_command_line_error_exits_2(tmp_path):
    config_file = tmp_path / "config.py"
    config_file.write_text(
        textwrap.dedent(
            """
            import ml_collections
            from curation import diagnostics

            def get_config():
                return ml_collections.ConfigDict({"seed": 0, "diagnostics": diagnostics.defaults()})
            """
        )
    )
    (tmp_path / "w").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "curation.diagnostics", f"--config={config_file}",
         f"--workdir={tmp_path / 'w'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert re.search(r"^error: no manifest: expected .*manifest\.parquet", result.stderr, re.M)


def _jpeg(rng) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_embeddings_from_images_with_the_clip_stage_model(tmp_path):
    clip_score = pytest.importorskip("curation.clip_score")
    encoders = pytest.importorskip("curation.encoders")  # torch: skip where it is not installed
    workdir = _fake_workdir(tmp_path / "w", [1.0] * 6, per_class=4, embeddings=False)
    keys = pq.read_table(workdir / "manifest.parquet").column("key").to_pylist()
    rng = np.random.default_rng(0)
    members = {f"{k}.jpg": _jpeg(rng) for k in keys[1:]}  # keys[0]: no image
    members[f"{keys[2]}.jpg"] = b"not a jpeg"
    (workdir / "images").mkdir()
    with tarfile.open(workdir / "images" / "part-0.tar", "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    config = _config(embeddings="images", min_images_per_class=2)
    config.clip_score = clip_score.defaults()
    config.clip_score.update(model="tiny-random", pretrained="", batch_size=3, device="cpu")
    summary = diagnostics.run(config, workdir)
    intra = summary["intra_class"]["w"]
    assert intra["images"] == {"sampled": 24, "used": 22, "missing": 1, "invalid": 1}
    # The first class (keys 0-3) keeps keys 1 and 3; its value equals a direct computation.
    clip = clip_score.load_clip(config.clip_score)
    images = [Image.open(io.BytesIO(members[f"{keys[i]}.jpg"])).convert("RGB") for i in (1, 3)]
    direct = _direct_pairwise(encoders.encode_images(clip, images, 2))
    tsv = (workdir / "diagnostics" / "per_class.tsv").read_text().splitlines()
    header, first = tsv[0].split("\t"), tsv[1].split("\t")
    assert first[1] == keys[0].split("-")[0] and first[header.index("intra_n")] == "2"
    assert float(first[header.index("intra")]) == pytest.approx(direct, abs=1e-5)


def test_compare_with_disjoint_classes_is_unpaired_only(tmp_path):
    """ImageNot vs LAIONet share no class: no paired test, no scatter, the unpaired one runs."""
    a = _fake_workdir(tmp_path / "a", [1.0] * 6, per_class=8)
    other = [(f"n0500000{i}", f"c{i}", "noun.plant", 4, "") for i in range(6)]
    b = _fake_workdir(tmp_path / "b", [0.5] * 6, per_class=8, classes=other)
    summary = diagnostics.run(_config(compare=str(b)), a)
    for key in ("text_median", "intra"):
        assert summary["comparison"][key]["paired"] == {"n": 0}
        assert summary["comparison"][key]["unpaired"]["n_b"] == 6
    names = _pngs_open(a / "diagnostics")
    assert "intra_scatter.png" not in names and "text_scatter.png" not in names
    report = (a / "diagnostics" / "report.md").read_text()
    assert "| noun.plant | 0 | 6 (100.0%) |" in report
