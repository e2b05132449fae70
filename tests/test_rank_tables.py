"""imagenot_jax.rank: tables of published results (CSV, JSON) as result sets, ranked against eval
JSONs and the built-in table, and their one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from imagenot_jax.evaluate.metrics import clopper_pearson
from imagenot_jax.rank import ranking, reference, tables
from tests.test_rank import MODELS, _run_cli, make_workdirs

# Published-style rows: percent accuracies, n for all but vit_b_16, a year given only for vgg19.
ROWS = [
    {"model": "alexnet", "top1": 41.2, "top5": 65.0, "n": 300},
    {"model": "vgg19", "top1": 52.9, "top5": 77.1, "n": 300, "year": 2014},
    {"model": "resnet152", "top1": 66.0, "top5": 86.5, "n": 300},
    {"model": "vit_b_16", "top1": 61.3, "top5": 84.0, "n": None},
    {"model": "convnext_large", "top1": 78.4, "top5": 94.2, "n": 300},
    {"model": "lenet", "top1": 20.0, "top5": 45.0, "n": 300},
]


def write_csv(path, rows=ROWS, columns=("model", "top1", "top5", "n", "year")):
    lines = [",".join(columns)]
    lines += [",".join("" if r.get(c) is None else str(r[c]) for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def workdirs(tmp_path):
    return make_workdirs(tmp_path)


def test_csv_and_json_tables_load_alike(tmp_path):
    csv_set = ranking.load_result_set(str(write_csv(tmp_path / "published.csv")))
    listed = tmp_path / "listed.json"
    listed.write_text(json.dumps(ROWS))
    wrapped = tmp_path / "wrapped.json"  # the {"rows": [...]} form, accuracies as fractions
    fractions = [{**r, "top1": r["top1"] / 100, "top5": r["top5"] / 100} for r in ROWS]
    wrapped.write_text(json.dumps({"rows": fractions, "source": "a paper"}))
    json_set = ranking.load_result_set(f"Named={listed}")
    wrapped_set = ranking.load_result_set(str(wrapped))
    assert (csv_set.label, json_set.label, wrapped_set.label) == ("published", "Named", "wrapped")
    for result_set in (csv_set, json_set, wrapped_set):
        assert list(result_set.models) == [r["model"] for r in ROWS]
        vgg = result_set.models["vgg19"]
        assert vgg.metrics["top1"] == pytest.approx(0.529)
        assert vgg.metrics["top5"] == pytest.approx(0.771)
        assert (vgg.n, vgg.year, vgg.examples) == (300, 2014, None)
        assert result_set.models["resnet152"].year == 2015  # no year: the family's
        assert result_set.models["lenet"].year is None
        assert result_set.models["vit_b_16"].n is None
        assert any("no n for vit_b_16" in note for note in result_set.notes)
        assert result_set.table and result_set.reference is None
    assert any("read as percent" in note for note in csv_set.notes)
    assert any("(fractions)" in note for note in wrapped_set.notes)
    assert tables.is_table(str(listed)) and not tables.is_table(str(tmp_path / "eval.json"))


def test_table_against_eval_jsons(workdirs, tmp_path):
    table = ranking.load_result_set(str(write_csv(tmp_path / "published.csv")))
    runs = ranking.load_result_set(workdirs, dataset="fake/a")
    got = ranking.compare(table, runs, str(tmp_path / "out"), bootstrap=100, seed=3)
    names = [m["name"] for m in got["models"]]
    assert sorted(names) == sorted(MODELS) and got["unmatched"]["a_only"] == ["lenet"]
    acc_a = np.array([table.models[n].metrics["top1"] for n in names])
    acc_b = np.array([runs.models[n].metrics["top1"] for n in names])
    assert got["kendall_tau_b"]["value"] == pytest.approx(stats.kendalltau(acc_a, acc_b)[0])
    assert got["spearman_rho"]["value"] == pytest.approx(stats.spearmanr(acc_a, acc_b)[0])
    assert got["bootstrap"]["resampled"] == {"a": False, "b": True}
    assert got["kendall_tau_b"]["ci95"] is not None
    by_name = {m["name"]: m for m in got["models"]}
    assert by_name["vit_b_16"]["a"]["ci95"] is None and by_name["vit_b_16"]["a"]["n"] is None
    assert by_name["vgg19"]["a"]["ci95"] == pytest.approx(clopper_pearson(round(0.529 * 300), 300))
    assert got["sets"]["a"]["table"].endswith("published.csv")
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "no n for vit_b_16: no Clopper-Pearson interval" in markdown
    assert "| vit_b_16 | 2020 | 61.30 |" in markdown  # no interval in the cell


def test_table_against_the_builtin_table(tmp_path):
    rows = [
        {"model": m, "top1": round(reference.TORCHVISION_IMAGENET1K[m].acc1 - 10 + k, 2)}
        for k, m in enumerate(reference.PAPER_MODELS)
    ]
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(rows))  # no n anywhere
    table = ranking.load_result_set(f"ImageNetV2={path}")
    builtin = ranking.load_result_set("torchvision-imagenet1k")
    got = ranking.compare(builtin, table, str(tmp_path / "out"), bootstrap=20)
    assert got["labels"]["b"] == "ImageNetV2" and len(got["models"]) == 9
    assert all(m["b"]["ci95"] is None for m in got["models"])
    assert all(m["a"]["ci95"] is not None for m in got["models"])
    assert any("no n for every model" in note for note in got["notes"])
    assert got["kendall_tau_b"]["ci95"] is None  # neither side has per-example outcomes
    acc_a = [builtin.models[m["name"]].metrics["top1"] for m in got["models"]]
    acc_b = [table.models[m["name"]].metrics["top1"] for m in got["models"]]
    assert got["kendall_tau_b"]["value"] == pytest.approx(stats.kendalltau(acc_a, acc_b)[0])
    with pytest.raises(ValueError, match="no top5 values"):
        ranking.load_result_set(str(path), metric="top5")
    with pytest.raises(ValueError, match="top1/top5 only"):
        ranking.load_result_set(str(path), metric="mean_per_class_recall")


BAD_TABLES = {
    "no model column": ("x.csv", "name,top1\na,50\n", r"x\.csv: no model column"),
    "no top1 column": ("x.csv", "model,acc\na,50\n", r"x\.csv: no top1 column"),
    "not a number": (
        "x.csv", "model,top1\na,50\nb,fifty\n", r"x\.csv: line 3, column top1: 'fifty' is not",
    ),
    "duplicate": (
        "x.csv", "model,top1\na,50\nb,60\na,70\n", r"line 4: duplicate model 'a' \(also line 2\)",
    ),
    "empty csv": ("x.csv", "model,top1\n", r"x\.csv: empty table"),
    "blank csv": ("x.csv", "", r"x\.csv: empty table"),
    "empty json": ("x.json", "[]", r"x\.json: empty table"),
    "above 100": ("x.csv", "model,top1\na,50\nb,150\n", r"column top1: 150.0 is above 100"),
    "n not integer": (
        "x.json", '[{"model": "a", "top1": 0.5, "n": 2.5}]',
        r"x\.json: rows\[0\], column n: 2\.5 is not a positive integer",
    ),
    "json not rows": ("x.json", '{"rows": {"a": 1}}', r"expected a list of row objects"),
    "empty top1": ("x.csv", "model,top1\na,50\nb,\n", r"line 3, column top1: empty"),
    "extra cell": ("x.csv", "model,top1\na,50,3\n", r"line 2: more cells than header"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_TABLES)
def test_bad_tables_are_one_line_errors(case, tmp_path):
    name, text, message = BAD_TABLES[case]
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message) as raised:
        ranking.load_result_set(str(tmp_path / name))
    assert "\n" not in str(raised.value)


def test_tables_are_not_mixed_and_missing_ones_named(tmp_path, workdirs):
    path = write_csv(tmp_path / "t.csv")
    with pytest.raises(ValueError, match="results table cannot be mixed"):
        ranking.load_result_set([str(path), workdirs[0]])
    with pytest.raises(FileNotFoundError, match=r"missing\.csv: not found"):
        ranking.load_result_set("missing.csv")


def test_cli_ranks_a_table_and_exits_2_on_a_bad_one(workdirs, tmp_path):
    path = write_csv(tmp_path / "published.csv")
    out = tmp_path / "cli"
    result = _run_cli(f"--a=paper={path}", "--b", ",".join(workdirs), "--b_dataset=fake/a",
                      f"--out={out}", "--bootstrap=20")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[0] == "A = paper"
    assert json.loads((out / "ranking.json").read_text())["unmatched"]["a_only"] == ["lenet"]
    (tmp_path / "bad.csv").write_text("model,top1\na,x\n")
    bad = _run_cli(f"--a={tmp_path / 'bad.csv'}", "--b", ",".join(workdirs), f"--out={out}")
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert lines[-1] == f"error: {tmp_path / 'bad.csv'}: line 2, column top1: 'x' is not a " + (
        "non-negative number"
    )


def test_spreadsheet_csv_headers(tmp_path):
    """A byte-order mark, capitalised headers, spaces and extra columns are accepted."""
    path = tmp_path / "sheet.csv"
    path.write_text("\ufeffModel, Top1 ,Params\nalexnet, 0.565 ,61M\nvgg19,0.724,143M\n")
    table = ranking.load_result_set(str(path))
    assert {m: r.metrics for m, r in table.models.items()} == {
        "alexnet": {"top1": 0.565},
        "vgg19": {"top1": 0.724},
    }
