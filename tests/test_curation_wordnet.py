"""WordNet classes stage (curation/wordnet*.py): loading WordNet 3.0, the candidate rules, and
the report, on the real WordNet and the real released ImageNot class list."""

from __future__ import annotations

import json
import shutil

import ml_collections
import nltk
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation import wordnet
from curation import wordnet_rules as rules
from curation.errors import CurationError
from curation.text import normalize


def _wordnet_installed() -> bool:
    if (wordnet.DEBIAN_DIR / "data.noun").is_file():
        return True
    for name in ("corpora/wordnet", "corpora/wordnet.zip/wordnet/"):
        try:
            nltk.data.find(name)
            return True
        except LookupError:
            pass
    return False


needs_wordnet = pytest.mark.skipif(
    not _wordnet_installed(),
    reason="WordNet 3.0 not installed (sudo apt-get install wordnet-base, or "
    "python -m nltk.downloader wordnet)",
)
needs_debian = pytest.mark.skipif(
    not (wordnet.DEBIAN_DIR / "data.noun").is_file(),
    reason="Debian's wordnet-base is not installed (sudo apt-get install wordnet-base)",
)


def _config(**fields) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.wordnet = wordnet.defaults()
    config.wordnet.update(fields)
    return config


@pytest.fixture(scope="module")
def wn():
    if not _wordnet_installed():
        pytest.skip(needs_wordnet.kwargs["reason"])
    return wordnet.load(wordnet.defaults())


def wnid(wn, name: str) -> str:
    return rules.wnid_of(wn.synset(name))


@pytest.fixture(scope="module")
def imagenot_run(wn, shared_data, tmp_path_factory):
    """The ImageNot defaults on all of WordNet, reporting on the released class list."""
    workdir = tmp_path_factory.mktemp("wordnet_imagenot")
    reference = str(shared_data / "imagenot_classes.txt")
    summary = wordnet.run(_config(reference_classes=reference), workdir)
    return summary, pq.read_table(workdir / "classes" / "candidates.parquet"), workdir


@pytest.fixture(scope="module")
def laionet_run(wn, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("wordnet_laionet")
    summary = wordnet.run(_config(classes="imagenet", exclude_imagenet=False), workdir)
    return summary, pq.read_table(workdir / "classes" / "candidates.parquet"), workdir


# --- loading -------------------------------------------------------------------------------


def test_lexnames_file_is_wordnet_3_0s():
    lines = wordnet.lexnames_text().splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3"
    assert lines[3] == "03\tnoun.Tops\t1"
    assert lines[28] == "28\tnoun.time\t1"
    assert lines[29] == "29\tverb.body\t2"
    assert lines[43] == "43\tverb.weather\t2"
    assert lines[44] == "44\tadj.ppl\t3"


@needs_debian
def test_loads_debian_dir_without_lexnames(tmp_path):
    assert not (wordnet.DEBIAN_DIR / "lexnames").exists()
    reader = wordnet.load(_config(dir=str(wordnet.DEBIAN_DIR), cache_dir=str(tmp_path)).wordnet)
    copy = tmp_path / "wordnet" / "usr_share_wordnet"
    assert (copy / "lexnames").read_text() == wordnet.lexnames_text()
    assert str(copy) in nltk.data.path  # nltk reads only under its data roots
    assert reader.get_version() == "3.0"
    assert wnid(reader, "dog.n.01") == "n02084071"
    assert reader.synset("dog.n.01").lexname() == "noun.animal"  # read through lexnames


def test_cached_copy_is_reused_and_rebuilt_when_the_source_changes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "data.noun").write_text("one")
    cache = tmp_path / "cache"
    copy = wordnet._cached_copy(src, cache)
    assert (copy / "data.noun").read_text() == "one" and (copy / "lexnames").is_file()
    before = (copy / "data.noun").stat().st_mtime_ns
    assert wordnet._cached_copy(src, cache) == copy
    assert (copy / "data.noun").stat().st_mtime_ns == before  # not copied again
    (src / "data.noun").write_text("two, longer")
    assert (wordnet._cached_copy(src, cache) / "data.noun").read_text() == "two, longer"
    assert sorted(p.name for p in copy.parent.iterdir()) == [copy.name]  # no leftovers


def test_publish_keeps_a_copy_another_process_published_first(tmp_path):
    dest, tmp = tmp_path / "dest", tmp_path / "tmp"
    for d in (dest, tmp):
        d.mkdir()
        (d / wordnet._STAMP).write_text("same")
    (dest / "marker").write_text("first")
    wordnet._publish(tmp, dest, "same")
    assert (dest / "marker").read_text() == "first" and not tmp.exists()


@needs_debian
def test_rejects_a_wordnet_that_is_not_3_0(tmp_path):
    fake = tmp_path / "wn31"
    shutil.copytree(
        wordnet.DEBIAN_DIR, fake, ignore=shutil.ignore_patterns("bin", "pixmaps", "wnres")
    )
    data = (fake / "data.adj").read_bytes()
    assert b"WordNet 3.0 Copyright" in data[:2000]
    (fake / "data.adj").write_bytes(
        data.replace(b"WordNet 3.0 Copyright", b"WordNet 3.1 Copyright")
    )
    with pytest.raises(CurationError, match=r"WordNet 3\.1 .*expected WordNet 3\.0"):
        wordnet.load(_config(dir=str(fake), cache_dir=str(tmp_path / "cache")).wordnet)


def test_missing_wordnet_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(wordnet, "DEBIAN_DIR", tmp_path / "absent")
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.delenv("NLTK_DATA", raising=False)
    with pytest.raises(CurationError, match=r"sudo apt-get install wordnet-base.*nltk"):
        wordnet._database("", str(tmp_path))
    with pytest.raises(CurationError, match=r"wordnet\.dir=.*no data\.noun"):
        wordnet._database(str(tmp_path), str(tmp_path))


# --- ImageNet and WNID lists ---------------------------------------------------------------


def test_imagenet_wnids_are_1000_wordnet_nouns(wn):
    path = wordnet.imagenet_labels_path(wordnet.defaults())
    assert path.parts[-4:] == ("tensorflow_datasets", "datasets", "imagenet2012", "labels.txt")
    wnids = wordnet.imagenet_wnids(wordnet.defaults())
    assert len(wnids) == len(set(wnids)) == 1000
    assert wnids[0] == "n01440764" == wnid(wn, "tench.n.01")  # label 0 of ImageNet-1k
    assert set(wnids) <= set(rules.noun_synsets(wn))
    assert len(rules.noun_synsets(wn)) == 82115


def test_wnid_list_files(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("# comment\nn01440764\tTench\n\n n02084071 # dog\n")
    assert wordnet.read_wnids(good, "f") == ["n01440764", "n02084071"]
    bad = tmp_path / "bad.txt"
    bad.write_text("n01440764\ndog\n")
    with pytest.raises(CurationError, match=r"bad\.txt:2: 'dog' is not a WNID"):
        wordnet.read_wnids(bad, "f")
    with pytest.raises(CurationError, match=r"wordnet\.classes: cannot read"):
        wordnet.read_wnids(tmp_path / "none.txt", "wordnet.classes")


# --- graph: hops and spread ----------------------------------------------------------------


def test_hops_follow_hypernyms_hyponyms_and_instances(wn):
    dog, canine, wolf = (wnid(wn, n) for n in ("dog.n.01", "canine.n.02", "wolf.n.01"))
    paris, capital = wnid(wn, "paris.n.01"), wnid(wn, "national_capital.n.01")
    dist = rules.graph(wn).distances([dog], 2)
    got = {w: dist.get(w) for w in (dog, canine, wolf, paris)}
    assert got == {dog: 0, canine: 1, wolf: 2, paris: None}  # wolf: dog -> canine -> wolf
    assert rules.graph(wn).distances([capital], 1).get(paris) == 1  # an instance hypernym link
    with pytest.raises(CurationError, match="n99999999"):
        rules.graph(wn).distances(["n99999999"], 0)


def test_spread_is_greedy_in_rank_order(wn):
    names = ["dog.n.01", "canine.n.02", "wolf.n.01", "domestic_animal.n.01", "sonata.n.01"]
    dog, canine, wolf, domestic, sonata = (wnid(wn, n) for n in names)
    ranked = [dog, canine, wolf, domestic, dog, sonata]
    # canine and domestic_animal are dog's hypernyms (1 link); wolf is 2 links from dog.
    assert rules.spread(wn, ranked, 1) == [dog, wolf, sonata]
    assert rules.spread(wn, ranked, 2) == [dog, sonata]
    assert rules.spread(wn, ranked, 0) == [dog, canine, wolf, domestic, sonata]
    assert rules.spread(wn, [canine, dog, wolf, sonata], 1) == [canine, sonata]
    paris, capital = wnid(wn, "paris.n.01"), wnid(wn, "national_capital.n.01")
    assert rules.spread(wn, [paris, capital], 1) == [paris]
    with pytest.raises(CurationError, match="'dog'"):
        rules.spread(wn, [dog, "dog"], 1)


# --- rules on a hand-made lexicon ----------------------------------------------------------


def _ctx(**cfg) -> rules.Context:
    lemmas = {
        "n00000001": ("Crane", "derrick_crane"),
        "n00000002": ("crane", "grus"),
        "n00000003": ("ox",),
        "n00000004": ("Jack-o'-lantern", "jack_o'_lantern", "ignis_fatuus"),
        "n00000005": ("grus_bird",),
        "n00000006": ("Grus",),  # not in the universe below: ambiguous only among 'nouns'
    }
    hops = {"n00000001": 0, "n00000002": 1, "n00000003": 2}
    return rules.Context(lemmas=lemmas, imagenet_hops=hops, cfg=_config(**cfg).wordnet)


def _final(ctx: rules.Context):
    universe = ["n00000001", "n00000002", "n00000003", "n00000004", "n00000009"]
    steps = rules.apply_rules(universe, ctx, reference=["n00000002", "n00000009"])
    return steps[-1].pool, {s.row["rule"]: s.row for s in steps}


def test_normalization_of_lemmas():
    assert rules.normalized_lemmas(["St._John's_wort", "jack-o'-lantern", "Jack_O'_Lantern"]) == (
        "st john s wort",
        "jack o lantern",
    )
    assert rules.normalized_lemmas(["Canis_familiaris", "'", "Ångström"]) == (
        "canis familiaris",
        "ångström",
    )


def test_rules_exclusion_and_counts():
    pool, rows = _final(_ctx())
    # n1 is ImageNet, n2 one link away, n3 ('ox') too short; n4 keeps both its lemmas.
    assert pool == {"n00000004": ("jack o lantern", "ignis fatuus")}
    assert rows["exclude_imagenet"]["synsets_out"] == 3
    assert rows["imagenet_neighbours"]["synsets_out"] == 2
    assert rows["normalize"]["lemmas_in"] == 4 and rows["normalize"]["lemmas_out"] == 3
    assert rows["min_lemma_chars"]["synsets_out"] == 1
    assert rows["in_wordnet"]["synsets_in"] == 5 and rows["in_wordnet"]["synsets_out"] == 4
    assert rows["in_wordnet"]["reference_in"] == 2 and rows["in_wordnet"]["reference_out"] == 1
    assert rows["imagenet_neighbours"]["reference_out"] == 0
    pool, _ = _final(_ctx(max_hops=0, min_lemma_chars=2))
    assert sorted(pool) == ["n00000002", "n00000003", "n00000004"]


def test_ambiguous_lemma_is_dropped_from_every_synset_that_has_it():
    pool, rows = _final(_ctx(exclude_imagenet=False))
    # 'crane' belongs to n1 and n2: dropped from both; their other lemmas stay.
    assert pool["n00000001"] == ("derrick crane",)
    assert pool["n00000002"] == ("grus",)
    assert rows["drop_ambiguous"]["lemmas_in"] - rows["drop_ambiguous"]["lemmas_out"] == 2
    pool, _ = _final(_ctx(exclude_imagenet=False, ambiguous_among="nouns"))
    assert "n00000002" not in pool  # 'grus' is also n6's, and 'crane' n1's: nothing left
    pool, _ = _final(_ctx(exclude_imagenet=False, drop_ambiguous=False))
    assert pool["n00000001"] == ("crane", "derrick crane")


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"classes": "imagenet"}, "exclude_imagenet=False"),
        ({"ambiguous_among": "all"}, "candidates, nouns"),
        ({"min_lemma_chars": 0}, "min_lemma_chars"),
        ({"max_hops": -1}, "max_hops"),
    ],
)
def test_config_errors(fields, match):
    with pytest.raises(CurationError, match=match):
        wordnet.check_config(_config(**fields).wordnet)


# --- the stage on all of WordNet -----------------------------------------------------------

SCHEMA = pa.schema(
    [
        ("wnid", pa.string()),
        ("name", pa.string()),
        ("lemmas", pa.list_(pa.string())),
        ("gloss", pa.string()),
        ("lexname", pa.string()),
        ("depth", pa.int32()),
        ("imagenet_hops", pa.int32()),
        ("in_imagenet", pa.bool_()),
    ]
)


def test_imagenot_rule_counts_on_wordnet(imagenot_run):
    summary, table, _ = imagenot_run
    counts = {r["rule"]: (r["synsets_in"], r["synsets_out"]) for r in summary["rules"]}
    # Measured on WordNet 3.0 and tensorflow-datasets' ImageNet-1k list (a regression check).
    assert counts == {
        "in_wordnet": (82115, 82115),
        "exclude_imagenet": (82115, 81115),
        "imagenet_neighbours": (81115, 79373),  # 1,742 parents/children of ImageNet classes
        "normalize": (79373, 79373),
        "min_lemma_chars": (79373, 79316),  # 57 synsets have only 1-2 character lemmas
        "drop_ambiguous": (79316, 60270),  # 19,046 synsets have only ambiguous lemmas
    }
    assert summary["candidates"] == table.num_rows == 60270


def test_imagenot_candidates_exclude_imagenet_and_neighbours(wn, imagenot_run):
    _, table, _ = imagenot_run
    got = set(table["wnid"].to_pylist())
    jay = wnid(wn, "jay.n.02")  # an ImageNet-1k class
    assert jay in wordnet.imagenet_wnids(wordnet.defaults())
    assert jay not in got
    assert wnid(wn, "corvine_bird.n.01") not in got  # its hypernym
    assert wnid(wn, "new_world_jay.n.01") not in got  # its hyponym
    assert wnid(wn, "domestic_animal.n.01") in got  # 2 links from ImageNet (dog breeds)
    assert wnid(wn, "sonata.n.01") in got  # far from every ImageNet class
    assert not any(table["in_imagenet"].to_pylist())
    assert min(h for h in table["imagenet_hops"].to_pylist() if h is not None) == 2


def test_candidates_schema_and_lemmas(wn, imagenot_run):
    _, table, workdir = imagenot_run
    assert table.schema.remove_metadata() == SCHEMA
    lemmas = [lemma for row in table["lemmas"].to_pylist() for lemma in row]
    assert all(len(lemma) >= 3 and normalize(lemma) == lemma for lemma in lemmas)
    assert len(lemmas) == len(set(lemmas))  # no lemma left in two candidates
    rows = {r["wnid"]: r for r in table.to_pylist()}
    wort = rows[wnid(wn, "st_john's_wort.n.01")]
    assert wort["name"] == "St John's wort" and wort["lemmas"] == ["st john s wort"]
    assert wort["lexname"] == "noun.plant" and wort["depth"] == 11
    assert table["wnid"].to_pylist() == sorted(rows)
    assert sorted(p.name for p in (workdir / "classes").iterdir()) == [
        "candidates.parquet",
        "report.json",
        "report.md",
    ]


def test_report_on_the_released_imagenot_classes(imagenot_run):
    summary, _, workdir = imagenot_run
    ref = summary["reference"]
    assert json.loads((workdir / "classes" / "report.json").read_text())["reference"] == ref
    assert ref["listed"] == ref["distinct"] == ref["in_wordnet"] == 1000
    # The release is disjoint from ImageNet-1k and avoids its direct parents and children (our
    # max_hops=1), but not 2 links: 292 released classes are siblings/grandparents of one.
    assert ref["in_imagenet"] == 0
    assert ref["imagenet_hops"] == {"0": 0, "1": 0, "2": 292, "3": 214, ">3": 494}
    # No two released classes are parent and child (our spread_hops=1 holds for it).
    assert ref["within_spread_hops"]["pairs"] == 0
    # What the release did not do: drop ambiguous lemmas. 197 released classes have only
    # lemmas shared with another candidate synset (e.g. 'adult', 'pen', 'dory'), so our
    # drop_ambiguous rule keeps 803 of them.
    assert ref["dropped_by"] == {"drop_ambiguous": ref["dropped_by"]["drop_ambiguous"]}
    assert ref["dropped_by"]["drop_ambiguous"]["count"] == 197
    assert ref["candidates"] == 803
    assert ref["lemmas"]["ambiguous_among_candidates"]["classes_with_all"] == 197
    assert ref["lemmas"]["classes_without_long_lemma"] == 0
    report_md = (workdir / "classes" / "report.md").read_text()
    assert "End up as candidates: **803**" in report_md
    assert "| drop_ambiguous | yes | 79316 | 60270 |" in report_md


def test_laionet_mode_keeps_imagenet_classes_with_a_lemma(wn, laionet_run):
    summary, table, _ = laionet_run
    counts = {r["rule"]: r["synsets_out"] for r in summary["rules"]}
    # 1000 -> 999: 'ox' (n02403003) has no lemma of 3+ characters; -> 992: 7 classes whose
    # every lemma is another ImageNet class's too (both 'crane's, 'cardigan', 'harp', ...).
    assert counts["min_lemma_chars"] == 999 and counts["drop_ambiguous"] == 992
    assert table.num_rows == 992 and all(table["in_imagenet"].to_pylist())
    assert set(table["imagenet_hops"].to_pylist()) == {0}
    got = set(table["wnid"].to_pylist())
    assert {"n02403003", wnid(wn, "crane.n.04"), wnid(wn, "crane.n.05")}.isdisjoint(got)
    assert table.schema.remove_metadata() == SCHEMA


def test_rerun_rewrites_the_same_output(laionet_run):
    _, table, workdir = laionet_run
    wordnet.run(_config(classes="imagenet", exclude_imagenet=False), workdir)
    assert pq.read_table(workdir / "classes" / "candidates.parquet").equals(table)
    assert not [p for p in (workdir / "classes").iterdir() if p.name.startswith(".")]
