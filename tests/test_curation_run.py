"""The whole curation pipeline through `python -m curation.run` on real WordNet, tiny random
models and a small synthetic LAION (download and tfds build: tests/test_curation_download.py)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from curation import run as curation_run
from curation import testing, tiny
from curation.configs import imagenot, laionet

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_SYNSETS, CAPTIONS_PER_SYNSET = 6, 6
# Words around the lemma that are no WordNet noun, so each caption names exactly one synset.
TEMPLATES = ("The {}.", "{}!", "my {}", "{}, again", "THE {} ...", "very {}")

pytestmark = pytest.mark.skipif(
    not pathlib.Path("/usr/share/wordnet/data.noun").exists(),
    reason="WordNet 3.0 not found at /usr/share/wordnet: sudo apt-get install wordnet-base",
)


def _captions(lemmas: list[str]) -> list[str | None]:
    """CAPTIONS_PER_SYNSET captions per lemma, plus captions matching nothing, a null one and
    one naming two synsets (dropped)."""
    captions: list[str | None] = [t.format(lemma) for lemma in lemmas for t in TEMPLATES]
    return [*captions, "nothing to see here", None, f"{lemmas[0]} and {lemmas[1]}"]


def _pick_synsets(candidates: pathlib.Path) -> list[str]:
    """One-lemma candidates whose lemma is a single lowercase word, spread over the table."""
    table = pq.read_table(candidates, columns=["wnid", "lemmas"]).to_pylist()
    simple = [r for r in table if len(r["lemmas"]) == 1 and r["lemmas"][0].isalpha()]
    step = len(simple) // NUM_SYNSETS
    return [simple[i * step]["lemmas"][0] for i in range(NUM_SYNSETS)]


def _write_embeddings(laion_dir: pathlib.Path, shards: list[pathlib.Path]) -> str:
    """Stand-ins for LAION's img_emb_NNNNN.npy: one random unit vector per metadata row."""
    rng = np.random.default_rng(0)
    for shard in shards:
        rows = pq.read_metadata(shard).num_rows
        emb = rng.normal(size=(rows, tiny.CLIP_CONFIG["embed_dim"])).astype(np.float16)
        index = shard.stem.rsplit("-", 1)[-1]
        np.save(laion_dir / f"img_emb_{index}.npy", emb)
    return str(laion_dir / "img_emb_{index}.npy")


@pytest.fixture(scope="module")
def imagenot_run(tmp_path_factory):
    """Runs the wordnet stage, writes a LAION fixture with its lemmas, then the whole pipeline
    (minus download) through the command line with CLIP scores from precomputed embeddings."""
    root = tmp_path_factory.mktemp("curation_run")
    workdir, laion_dir = root / "work", root / "laion"
    config = imagenot.get_config("smoke")
    config.stages = "wordnet"
    curation_run.run(config, workdir)
    lemmas = _pick_synsets(workdir / "classes" / "candidates.parquet")
    shards = testing.write_laion_shards(
        laion_dir, _captions(lemmas), rows_per_shard=20, row_group_size=8
    )
    embeddings = _write_embeddings(laion_dir, shards)
    command = [
        sys.executable, "-m", "curation.run",
        "--config", f"{REPO}/curation/configs/imagenot.py:smoke",
        "--workdir", str(workdir),
        f"--config.laion.paths={laion_dir}/part-*.parquet",
        "--config.stages=wordnet,match,text_score,clip_score,select,diagnostics",
        "--config.clip_score.enabled=True",
        "--config.clip_score.source=embeddings",
        f"--config.clip_score.embeddings={embeddings}",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, lemmas, config


def test_pipeline_writes_a_manifest_the_builder_accepts(imagenot_run, imagenot_manifest):
    workdir, lemmas, _ = imagenot_run
    classes_table = imagenot_manifest.read_classes(workdir / "classes.tsv")
    imagenot_manifest.read_manifest([workdir / "manifest.parquet"], classes_table)
    manifest = pq.read_table(workdir / "manifest.parquet").to_pandas()
    classes = (workdir / "classes.tsv").read_text().splitlines()
    assert classes[0].split("\t")[:4] == ["label", "wnid", "name", "gloss"]
    num_classes = len(classes) - 1
    # 4 classes (smoke) unless WordNet spread dropped neighbours; each with 3/1/1 images.
    assert 1 <= num_classes <= 4
    assert sorted(manifest["label"].unique()) == list(range(num_classes))
    sizes = manifest.groupby(["label", "split"]).size().unstack()
    assert (sizes[["train", "validation", "test"]].to_numpy() == [3, 1, 1]).all()
    assert set(manifest["lemma"]) <= set(lemmas)
    assert manifest["key"].is_unique
    assert np.isfinite(manifest["text_score"]).all() and np.isfinite(manifest["clip_score"]).all()


def test_every_stage_reports_what_it_counted(imagenot_run):
    workdir, _, _ = imagenot_run
    summary = json.loads((workdir / "run_summary.json").read_text())
    assert list(summary) == [
        *("wordnet", "match", "text_score", "clip_score", "select", "diagnostics")
    ]
    match = json.loads((workdir / "match" / "summary.json").read_text())
    # Every templated caption gives one row; the null one is counted, the two-synset one dropped.
    assert match["rows"] == NUM_SYNSETS * CAPTIONS_PER_SYNSET
    assert (match["captions"], match["null_captions"]) == (len(_captions(["a"] * NUM_SYNSETS)), 1)
    assert match["dropped_multi_synset"] >= 1
    assert (workdir / "diagnostics" / "report.md").is_file()
    assert list((workdir / "diagnostics").glob("*.png"))


def test_rerun_resumes_and_changes_nothing(imagenot_run):
    workdir, _, config = imagenot_run
    before = (workdir / "manifest.parquet").read_bytes(), (workdir / "classes.tsv").read_bytes()
    match_files = {p: p.stat().st_mtime_ns for p in (workdir / "match").glob("*.parquet")}
    config = json.loads((workdir / "config.json").read_text())
    rerun = imagenot.get_config("smoke")
    rerun.laion.paths = config["laion"]["paths"]
    rerun.clip_score.update(config["clip_score"])
    rerun.stages = "match,text_score,clip_score,select"
    curation_run.run(rerun, workdir)
    assert {p: p.stat().st_mtime_ns for p in match_files} == match_files  # shards skipped
    after = (workdir / "manifest.parquet").read_bytes(), (workdir / "classes.tsv").read_bytes()
    assert after == before


def test_laionet_puts_everything_in_test(tmp_path):
    """LAIONet: ImageNet-1k's own classes, CLIP text-text scores, all images in `test`."""
    laion_dir = tmp_path / "laion"
    lemmas = ["goldfish", "tench", "hammerhead"]  # ImageNet-1k classes n01443537, ...
    testing.write_laion_shards(laion_dir, _captions(lemmas), rows_per_shard=40, row_group_size=16)
    config = laionet.get_config("smoke")
    config.laion.paths = str(laion_dir / "*.parquet")
    config.stages = "wordnet,match,text_score,select"
    # The fixture's sizes and NSFW tags are random: filters off, so every caption is eligible.
    config.select.min_side, config.select.max_punsafe, config.select.nsfw_drop = 0, None, ""
    curation_run.run(config, tmp_path / "work")
    manifest = pq.read_table(tmp_path / "work" / "manifest.parquet").to_pandas()
    assert set(manifest["split"]) == {"test"}
    assert set(manifest["lemma"]) == set(lemmas)
    assert manifest.groupby("wnid").size().tolist() == [5, 5, 5]  # test=5 per class (smoke)


def test_unknown_stage_is_a_one_line_error(tmp_path):
    command = [
        sys.executable, "-m", "curation.run",
        "--config", f"{REPO}/curation/configs/imagenot.py:smoke",
        "--workdir", str(tmp_path), "--config.stages=wordnet,mtach",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: config.stages: unknown")


def test_curation_never_imports_jax():
    """The PyTorch side stays apart from the JAX side (DESIGN: curation never imports jax)."""
    stages = ", ".join(f"curation.{s}" for s in ("run", "configs.base", "tiny", "testing"))
    code = (
        f"import sys, {stages}\n"
        "roots = {m.split('.')[0] for m in sys.modules}\n"
        "bad = sorted(roots & {'jax', 'flax', 'imagenot_jax'})\n"
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
