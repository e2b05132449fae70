"""Match stage: normalization, exact output on the LAION-like fixture, engines, resume, errors."""

from __future__ import annotations

import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time
import unicodedata

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation import engine, files, laion, match, testing, text
from curation.errors import CurationError
from curation.text import joined_text, normalize, normalize_array

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(paths: str, **engine_fields) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.laion = laion.defaults()
    config.laion.paths = paths
    config.engine = engine.defaults()
    config.engine.update(engine_fields)
    config.match = match.defaults()
    return config


@pytest.fixture
def fixture(tmp_path) -> testing.LaionFixture:
    return testing.write_laion_fixture(tmp_path)


def _workdir(fixture: testing.LaionFixture) -> pathlib.Path:
    return fixture.candidates.parents[1]


def _copy_candidates(fixture: testing.LaionFixture, workdir: pathlib.Path) -> pathlib.Path:
    workdir.joinpath(files.CANDIDATES).parent.mkdir(parents=True)
    workdir.joinpath(files.CANDIDATES).write_bytes(fixture.candidates.read_bytes())
    return workdir


def _output(workdir: pathlib.Path) -> pa.Table:
    return files.read_stage(workdir / match.OUT_DIR).replace_schema_metadata()


# Normalization ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Jack-O'-Lantern!", "jack o lantern"),
        ("St._John's_wort", "st john s wort"),
        ("  Hot\tDOG,, 2x ", "hot dog 2x"),
        ("CAFÉ—Crème", "café crème"),
        ("İSTANBUL ΟΔΟΣ", "istanbul οδοσ"),  # Arrow's per-code-point lowercase
        ("日本の風景", "日本の風景"),
        ("a\u0301b", "a b"),  # a combining mark is neither letter nor digit
        ("___", ""),
    ],
)
def test_normalize(text, expected):
    assert normalize(text) == expected
    assert normalize_array(pa.array([text])).to_pylist() == [expected]


def test_normalize_array_agrees_with_normalize_on_every_assigned_code_point():
    chars = [
        chr(c)
        for c in range(sys.maxunicode + 1)
        if unicodedata.category(chr(c)) not in ("Cn", "Cs")  # Cn: unassigned in Python's DB
    ]
    texts = [f"A{c}B{c}" for c in chars]
    assert normalize_array(pa.array(texts)).to_pylist() == [normalize(t) for t in texts]


def test_joined_text_is_padded_normalized_captions():
    rng = random.Random(0)
    alphabet = [
        *"abXY _-'.,!\n\t09",
        "é",
        "É",
        "İ",
        "Σ",
        "日",
        "\u0301",
        "ß",
        "\xa0",
        "😀",
        "\ufffd",
    ]
    captions = ["".join(rng.choices(alphabet, k=rng.randint(0, 12))) for _ in range(3000)]
    captions += [None, "", "  ", "Hello, World!"]
    joined, ends = joined_text(pa.array(captions))
    pieces = [(f" {n} " if n else " ") + "\n" for n in (normalize(c or "") for c in captions)]
    assert joined == "".join(pieces)
    np.testing.assert_array_equal(ends, np.cumsum([len(p) for p in pieces]))
    ascii_only = ["Hello, World!", None, "x"]  # the numpy-only path
    assert joined_text(pa.array(ascii_only))[0] == " hello world \n \n x \n"


# Matching --------------------------------------------------------------------------------------


def test_find_lemmas_whole_words_overlapping_and_multi_word():
    lexicon = text.build_lexicon(["n1", "n2", "n3"], [["hot dog", "hotdog"], ["dog"], ["a b"]])
    captions = pa.array(["Hot-Dog!", "hotdogs dog", "A B A B", None, "dogdog"])
    caption, lemma = text.find_lemmas(lexicon, captions)
    found = sorted(zip(caption.tolist(), lexicon.lemmas.take(lemma).to_pylist(), strict=True))
    assert found == [(0, "dog"), (0, "hot dog"), (1, "dog"), (2, "a b"), (2, "a b")]


def test_resolve_keeps_longest_lemma_and_drops_multi_synset():
    lexicon = text.build_lexicon(
        ["n1", "n2", "n3"], [["car", "cab", "motor car"], ["bank"], ["bank", "depository"]]
    )
    caption = np.array([0, 0, 0, 1, 2, 2])
    lemma = np.array([lexicon.lemmas.to_pylist().index(m) for m in
                      ["cab", "car", "motor car", "bank", "cab", "car"]])  # fmt: skip
    kept = text.resolve(lexicon, caption, lemma, "drop")
    assert (kept.matched, kept.multi) == (3, 1)
    rows = list(
        zip(
            kept.caption,
            lexicon.wnids.take(kept.wnid).to_pylist(),
            lexicon.lemmas.take(kept.lemma).to_pylist(),
            strict=True,
        )
    )
    # Caption 2: "car" and "cab" tie in length: the one listed first for the synset wins.
    assert rows == [(0, "n1", "motor car"), (2, "n1", "car")]
    everything = text.resolve(lexicon, caption, lemma, "best")
    wnids = lexicon.wnids.take(everything.wnid).to_pylist()
    assert list(zip(everything.caption, wnids, strict=True)) == [
        (0, "n1"), (1, "n2"), (1, "n3"), (2, "n1")
    ]  # fmt: skip


def test_resolve_fast_single_synset_path_equals_full_expansion():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]
    lemma_lists = [list(rng.choice(words, rng.integers(1, 5), replace=False)) for _ in range(30)]
    lexicon = text.build_lexicon([f"n{i}" for i in range(30)], lemma_lists)
    caption = np.sort(rng.integers(0, 300, 600))
    lemma = rng.integers(0, len(lexicon.lemmas), 600)
    single = text.resolve(lexicon, caption, lemma, "drop")
    full = text.resolve(lexicon, caption, lemma, "best")
    captions, rows = np.unique(full.caption, return_counts=True)
    one = np.isin(full.caption, captions[rows == 1])
    assert 0 < single.multi < single.matched == full.matched and single.multi == full.multi
    for name in ("caption", "wnid", "lemma"):
        np.testing.assert_array_equal(getattr(single, name), getattr(full, name)[one])


def test_match_fixture_exact_output(fixture):
    summary = match.run(_config(fixture.paths, workers=2), _workdir(fixture))
    assert _output(_workdir(fixture)).equals(fixture.expected())
    assert {k: summary[k] for k in fixture.counts} == fixture.counts
    assert summary["samples"] == 10 and summary["classes_matched"] == 7
    assert summary["per_class"]["n03417042"] == 2 and summary["per_class"]["n09213565"] == 0
    on_disk = json.loads((_workdir(fixture) / "match" / "summary.json").read_text())
    assert on_disk == summary
    assert not list((_workdir(fixture) / "match" / match.PARTS_DIR).glob("*"))


def test_match_fixture_keeping_multi_synset_captions(fixture):
    config = _config(fixture.paths)
    config.match.multi_synset = "best"
    summary = match.run(config, _workdir(fixture))
    assert _output(_workdir(fixture)).equals(fixture.expected("best"))
    assert summary["dropped_multi_synset"] == 0 and summary["rows"] == 12
    assert summary["kept_multi_synset"] == 1


def test_id_column_keys_and_duplicates(tmp_path):
    fx = testing.write_laion_fixture(tmp_path)
    shard = tmp_path / "ids" / "with/ids.parquet"
    table = pq.read_table(fx.shards[0])
    ids = pa.array(["a/1", "b 2", "c", "d:4", "e", "f", "g", "h"])
    files.write_parquet_atomic(table.append_column("uid", ids), shard)
    config = _config(str(shard))
    config.laion.columns.id = "uid"
    match.run(config, _workdir(fx))
    keys = _output(_workdir(fx)).column("key").to_pylist()
    assert keys == ["a_1", "b_2", "d_4", "f", "g", "h"]

    duplicated = table.append_column("uid", pa.array(["x", "y", "z", "x", "w", "v", "u", "x"]))
    files.write_parquet_atomic(duplicated, tmp_path / "dup" / "dup.parquet")
    config.laion.paths = str(tmp_path / "dup" / "dup.parquet")
    with pytest.raises(CurationError, match=r"'x'.*not unique: dup row 0 and dup row 3"):
        match.run(config, _copy_candidates(fx, tmp_path / "work2"))


# Engines and resume ----------------------------------------------------------------------------


def test_run_tasks_in_task_order_and_engine_errors():
    config = engine.defaults()
    config.workers = 2
    assert engine.run_tasks(list(range(7)), abs, config, "t") == list(range(7))
    config.name = "spark"
    with pytest.raises(CurationError, match=r"config\.engine\.name='spark'"):
        engine.run_tasks([1], abs, config, "t")


def _write_cli_config(tmp_path: pathlib.Path, paths: str, workers: int = 1) -> pathlib.Path:
    path = tmp_path / "match_config.py"
    path.write_text(
        "from curation import engine, laion, match\n"
        "import ml_collections\n\n\n"
        "def get_config():\n"
        "    c = ml_collections.ConfigDict()\n"
        "    c.seed = 0\n"
        "    c.laion = laion.defaults()\n"
        f"    c.laion.paths = {paths!r}\n"
        "    c.engine = engine.defaults()\n"
        f"    c.engine.workers = {workers}\n"
        "    c.match = match.defaults()\n"
        "    return c\n"
    )
    return path


def _cli(config: pathlib.Path, workdir: pathlib.Path, **kwargs) -> subprocess.Popen:
    command = [sys.executable, "-m", "curation.match", f"--config={config}", f"--workdir={workdir}"]
    return subprocess.Popen(command, cwd=REPO, text=True, **kwargs)


def test_resume_after_kill_equals_one_run(fixture, tmp_path, monkeypatch):
    workdir = _workdir(fixture)
    config = _write_cli_config(tmp_path, fixture.paths)
    env = {**os.environ, match.DELAY_ENV: "1"}
    process = _cli(config, workdir, env=env, start_new_session=True, stderr=subprocess.DEVNULL)
    parts = workdir / "match" / match.PARTS_DIR
    deadline = time.monotonic() + 60
    while not list(parts.glob("*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert list(parts.glob("*.parquet")), "no part written before the kill"
    assert not (workdir / "match" / "summary.json").exists()

    ran = []  # row-group tasks per run (shards are finished by a second call)
    run_tasks = engine.run_tasks

    def counting(tasks, fn, *args, **kwargs):
        if fn is match.match_row_group:
            ran.append(len(tasks))
        return run_tasks(tasks, fn, *args, **kwargs)

    monkeypatch.setattr(engine, "run_tasks", counting)
    summary = match.run(_config(fixture.paths, workers=2), workdir)
    assert 0 < ran[0] < 4  # only the row groups not done before the kill
    output = _output(workdir)
    assert output.equals(fixture.expected())
    assert len(set(output.column("key").to_pylist())) == len(output)
    assert {k: summary[k] for k in fixture.counts} == fixture.counts
    mtimes = [p.stat().st_mtime_ns for p in sorted((workdir / "match").glob("*.parquet"))]
    match.run(_config(fixture.paths, workers=2), workdir)  # all done: nothing to redo
    assert ran[1:] == [0]
    assert [p.stat().st_mtime_ns for p in sorted((workdir / "match").glob("*.parquet"))] == mtimes


def test_parts_of_an_older_input_file_are_redone_and_empty_files_pass(fixture):
    workdir = _workdir(fixture)
    config = _config(fixture.paths)
    info = {"counts": {k: 0 for k in match.COUNTS}, "settings": match._settings(
        workdir / files.CANDIDATES, config), "input": "0:0"}  # fmt: skip
    stale = match.SCHEMA.empty_table().replace_schema_metadata(match._metadata(info))
    files.write_parquet_atomic(stale, workdir / "match" / "_parts" / "part-00000.rg00000.parquet")
    testing.write_laion_shard(fixture.shards[0].parent / "part-00002.parquet", [])
    summary = match.run(config, workdir)
    assert _output(workdir).equals(fixture.expected())
    assert {k: summary[k] for k in fixture.counts} == fixture.counts
    assert pq.read_table(workdir / "match" / "part-00002.parquet").num_rows == 0


def test_rerun_with_other_settings_is_refused_and_stale_parts_removed(fixture):
    workdir = _workdir(fixture)
    match.run(_config(fixture.paths), workdir)
    stale = workdir / "match" / match.PARTS_DIR / "part-00000.rg00000.parquet"
    stale.write_bytes(b"killed after the output was written, before parts were deleted")
    match.run(_config(fixture.paths), workdir)
    assert not stale.exists()
    config = _config(fixture.paths)
    config.match.multi_synset = "best"
    with pytest.raises(CurationError, match=r"part-00000\.parquet: made with other"):
        match.run(config, workdir)


# Bad input -------------------------------------------------------------------------------------


def _bad_missing_column(table: pa.Table) -> pa.Table:
    return table.drop_columns(["TEXT"])


def _bad_width_type(table: pa.Table) -> pa.Table:
    index = table.schema.get_field_index("WIDTH")
    return table.set_column(index, "WIDTH", table.column("WIDTH").cast(pa.string()))


BAD_INPUTS = {
    "missing column": (_bad_missing_column, r"bad\.parquet: missing column 'TEXT' or 'caption'"),
    "wrong type": (_bad_width_type, r"bad\.parquet: column 'WIDTH' has type string, expected"),
    "unreadable file": (None, r"bad\.parquet: not a readable parquet file"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_naming_file_and_column_exit_2(fixture, tmp_path, case):
    change, message = BAD_INPUTS[case]
    bad = tmp_path / "bad" / "bad.parquet"
    if change:
        files.write_parquet_atomic(change(pq.read_table(fixture.shards[0])), bad)
    else:
        bad.parent.mkdir()
        bad.write_bytes(b"PAR1 this is not parquet")
    config = _write_cli_config(tmp_path, f"{fixture.shards[0]},{bad}")
    process = _cli(config, _workdir(fixture), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(message, last), last
    assert "Traceback" not in stderr


def test_missing_candidates_names_the_file(tmp_path, fixture):
    with pytest.raises(CurationError, match=r"candidates\.parquet: not found; run the wordnet"):
        match.run(_config(fixture.paths), tmp_path / "empty")


# Synthetic data --------------------------------------------------------------------------------


def test_synthetic_captions_are_deterministic_and_hold_lemmas():
    lexicon = ["garbage_truck", "jack-o'-lantern", "dog"]
    captions = testing.synthetic_captions(500, lexicon, seed=3)
    assert captions == testing.synthetic_captions(500, lexicon, seed=3)
    assert captions != testing.synthetic_captions(500, lexicon, seed=4)
    lengths = [len(c.split()) for c in captions]
    assert min(lengths) >= 5 and max(lengths) <= 20 + 2 * 3
    normalized = [f" {normalize(c)} " for c in captions]
    with_lemma = sum(any(f" {normalize(m)} " in n for m in lexicon) for n in normalized)
    assert 0.6 * 500 < with_lemma < 0.8 * 500  # 70% get one or two lemmas
    assert 0 < sum(not c.isascii() for c in captions) < 0.4 * 500


# Ray last (ray_local, tests/conftest.py): its threads stay up until the module ends.


def test_local_and_ray_give_identical_output(tmp_path, ray_local):
    fx = testing.write_laion_fixture(tmp_path)
    local = match.run(_config(fx.paths, workers=1), _workdir(fx))  # no fork beside Ray
    ray_workdir = _copy_candidates(fx, tmp_path / "ray")
    remote = match.run(_config(fx.paths, name="ray"), ray_workdir)
    assert _output(ray_workdir).equals(_output(_workdir(fx)))
    assert _output(ray_workdir).equals(fx.expected())
    assert {**remote, "engine": "local"} == local
