"""imagenot_jax.rank N-way comparisons: the pairwise matrix against scipy, two sets against the
two-set compare, the combined figure, the HTML in headless Chromium and the --set command line."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from scipy import stats

from imagenot_jax.rank import nway, ranking
from tests.test_rank import MODELS, _run_cli, chromium_dom, make_workdirs, write_eval
from tests.test_rank_tables import write_csv


@pytest.fixture
def three_sets(tmp_path) -> dict:
    """Runs on fake/a and on fake/b (both with .examples.npz) and a published CSV table."""
    workdirs = make_workdirs(tmp_path)
    extra = write_eval(tmp_path / "x", "resnet18", 0.5, dataset="fake/b")
    return {
        "ImageNet": ranking.load_result_set(workdirs, dataset="fake/a"),
        "ImageNot": ranking.load_result_set([*workdirs, f"resnet18={extra}"], dataset="fake/b"),
        "published": ranking.load_result_set(f"published={write_csv(tmp_path / 'p.csv')}"),
    }


def test_three_way_matrix_pairs_and_figures(three_sets, tmp_path):
    out = tmp_path / "out"
    got = nway.compare_sets(three_sets, str(out), bootstrap=200, seed=2)
    assert json.loads((out / "ranking.json").read_text()) == got
    for name in ("ranking.json", "report.md", "report.html", "relative_improvement.png",
                 "correlation_matrix.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    labels = ["ImageNet", "ImageNot", "published"]
    assert got["labels"] == labels and got["kind"] == "nway"
    names = [m["name"] for m in got["models"]]
    assert sorted(names) == sorted(MODELS)  # in all three sets
    assert got["dropped"] == {"ImageNet": [], "ImageNot": ["resnet18"], "published": ["lenet"]}
    acc = {s: np.array([three_sets[s].models[n].metrics["top1"] for n in names]) for s in labels}
    assert acc["ImageNet"].tolist() == sorted(acc["ImageNet"], reverse=True)
    tau, rho = got["matrix"]["kendall_tau_b"], got["matrix"]["spearman_rho"]
    assert [tau["value"][i][i] for i in range(3)] == [1.0] * 3
    for i, j in ((0, 1), (0, 2), (1, 2)):
        x, y = acc[labels[i]], acc[labels[j]]
        assert tau["value"][i][j] == tau["value"][j][i] == pytest.approx(stats.kendalltau(x, y)[0])
        assert rho["value"][i][j] == pytest.approx(stats.spearmanr(x, y)[0])
        assert tau["ci95"][i][j] == tau["ci95"][j][i]
        low, high = tau["ci95"][i][j]  # every pair has a resampled set
        assert low <= tau["value"][i][j] <= high
    pair = next(p for p in got["pairs"] if (p["a"], p["b"]) == ("ImageNet", "published"))
    fit = np.polyfit(acc["ImageNet"], acc["published"], 1)
    assert pair["accuracy_on_the_line"]["linear"]["slope"] == pytest.approx(fit[0])
    ri = acc["published"] / acc["published"][names.index("alexnet")]
    ri_a = acc["ImageNet"] / acc["ImageNet"][names.index("alexnet")]
    assert pair["relative_improvement"]["with_base"]["pearson"]["r"] == pytest.approx(
        stats.pearsonr(ri_a, ri).statistic
    )
    assert got["bootstrap"]["resampled"] == {"ImageNet": True, "ImageNot": True, "published": False}
    by_name = {m["name"]: m for m in got["models"]}
    vgg = by_name["vgg19"]["sets"]
    assert vgg["published"]["relative_improvement"] == pytest.approx(ri[names.index("vgg19")])
    assert vgg["ImageNet"]["relative_improvement_ci95_method"] == "bootstrap"
    assert vgg["published"]["relative_improvement_ci95_method"] == "clopper-pearson"
    assert by_name["vit_b_16"]["sets"]["published"]["relative_improvement_ci95"] is None  # no n
    assert by_name["alexnet"]["sets"]["ImageNet"]["relative_improvement_ci95"] == [1.0, 1.0]
    low, high = vgg["ImageNet"]["relative_improvement_ci95"]
    assert low < vgg["ImageNet"]["relative_improvement"] < high
    assert [s["dropped"] for s in got["sets"]] == [[], ["resnet18"], ["lenet"]]
    markdown = (out / "report.md").read_text()
    assert "only in some sets, not compared (published): lenet" in markdown
    assert "no n for vit_b_16: no Clopper-Pearson interval" in markdown
    summary = nway.nway_report.format_summary(got)
    assert summary.splitlines()[:3] == ["S1 = ImageNet", "S2 = ImageNot", "S3 = published"]


def test_two_sets_give_the_numbers_of_compare(three_sets, tmp_path):
    a, b = three_sets["ImageNet"], three_sets["ImageNot"]
    two = ranking.compare(a, b, str(tmp_path / "two"), bootstrap=100, seed=5, base="vgg19")
    many = nway.compare_sets({"A": a, "B": b}, str(tmp_path / "n"), bootstrap=100, seed=5,
                             base="vgg19")  # fmt: skip
    (pair,) = many["pairs"]
    for key in ("kendall_tau_b", "spearman_rho"):
        assert pair[key] == two[key]  # value, p-value and the bootstrap interval
    assert many["matrix"]["kendall_tau_b"]["value"][0][1] == two["kendall_tau_b"]["value"]
    for key in ("pairs", "pair_flip_probability", "relative_improvement", "accuracy_on_the_line"):
        assert pair[key] == two[key], key
    assert [m["name"] for m in many["models"]] == [m["name"] for m in two["models"]]
    for mine, theirs in zip(many["models"], two["models"], strict=True):
        for label, side in (("A", "a"), ("B", "b")):
            for field in ("accuracy", "ci95", "bootstrap_ci95", "rank", "relative_improvement"):
                assert mine["sets"][label][field] == theirs[side][field], field


def test_nway_html_renders_in_headless_chromium(three_sets, tmp_path):
    out = tmp_path / "out"
    nway.compare_sets(three_sets, str(out), bootstrap=30)
    dom = chromium_dom(out / "report.html")
    assert dom.count('<img alt="') == 2
    assert dom.count('src="data:image/png;base64,') == 2
    assert "Kendall tau-b (95% bootstrap interval)" in dom


def test_nway_errors(three_sets, tmp_path):
    with pytest.raises(ValueError, match="1 result set"):
        nway.compare_sets({"A": three_sets["ImageNet"]}, str(tmp_path))
    with pytest.raises(ValueError, match="base model 'lenet' is not in set ImageNet"):
        nway.compare_sets(three_sets, str(tmp_path), base="lenet")
    few = ranking.load_result_set("torchvision-imagenet1k")
    few.models = {k: few.models[k] for k in ("alexnet", "vgg19")}
    with pytest.raises(ValueError, match=r"2 model\(s\) in all 4 sets"):
        nway.compare_sets({**three_sets, "tv": few}, str(tmp_path))
    with pytest.raises(ValueError, match="expected LABEL=SPEC"):
        nway.parse_set_flags(["a=x", "nolabel"])
    with pytest.raises(ValueError, match="label 'a' given twice"):
        nway.parse_set_flags(["a=x", "a=y"])


def test_cli_sets(tmp_path):
    workdirs = ",".join(make_workdirs(tmp_path))
    table = write_csv(tmp_path / "paper.csv")
    out = tmp_path / "cli"
    result = _run_cli(f"--set=ImageNet={workdirs}", "--set", f"ImageNot={workdirs}",
                      f"--set=V2={table}", "--set=torchvision=torchvision-imagenet1k",
                      "--dataset=fake/a", f"--out={out}", "--bootstrap=50")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[:4] == ["S1 = ImageNet", "S2 = ImageNot", "S3 = V2", "S4 = torchvision"]
    assert lines[-1].startswith("wrote relative_improvement.png, correlation_matrix.png")
    saved = json.loads((out / "ranking.json").read_text())
    assert saved["labels"] == ["ImageNet", "ImageNot", "V2", "torchvision"]
    assert any(n.startswith("V2: no n for vit_b_16") for n in saved["notes"])
    # Two --set give the numbers of --a/--b.
    two = _run_cli(f"--set=A={table}", f"--set=B={workdirs}", "--b_dataset=fake/a",
                   f"--out={out}", "--bootstrap=50")  # fmt: skip
    assert two.returncode == 2
    assert two.stderr.strip().splitlines()[-1] == (
        "error: --set cannot be mixed with --b_dataset; use one form"
    )
    for args in ((f"--set=A={table}", f"--set=B={workdirs}"), ("--a", str(table), "--b", workdirs)):
        done = _run_cli(*args, "--dataset=fake/a", f"--out={tmp_path / args[0][:5]}", "--seed=3")
        assert done.returncode == 0, done.stderr[-3000:]
    pairwise = json.loads((tmp_path / "--set" / "ranking.json").read_text())["pairs"][0]
    direct = json.loads((tmp_path / "--a" / "ranking.json").read_text())
    assert pairwise["kendall_tau_b"] == direct["kendall_tau_b"]
    assert pairwise["spearman_rho"] == direct["spearman_rho"]
    for args, message in (
        ((f"--set=A={table}",), "error: 1 --set given; a comparison needs at least 2"),
        ((f"--set=A={table}", "--set=B", "--a=x"), "error: --set cannot be mixed with --a;"),
        ((f"--set=A={table}", "--set=nolabel"), "error: --set 'nolabel': expected LABEL=SPEC"),
        (("--a", str(table)), "error: give two result sets with --a and --b, or two or more"),
    ):
        bad = _run_cli(*args, f"--out={out}")
        assert bad.returncode == 2, bad.stderr
        assert bad.stderr.strip().splitlines()[-1].startswith(message), bad.stderr


def test_real_set_ranked_by_real_top1_beside_top1_sets(tmp_path):
    """ImageNet val, V2 and ReaL from the same workdirs: ReaL's eval JSONs carry real_top1 over
    real_n, ranked as the others' top1 (--set_metric), held fixed in the bootstrap."""
    workdirs = make_workdirs(tmp_path)
    real = {
        "alexnet": 0.45,
        "vgg19": 0.62,
        "resnet152": 0.7,
        "vit_b_16": 0.69,
        "convnext_large": 0.85,
    }
    for k, workdir in enumerate(workdirs):
        model = pathlib.Path(workdir).name
        path = write_eval(pathlib.Path(workdir), model, 0.5, dataset="imagenet2012_real", seed=k)
        record = json.loads(path.read_text())
        record.update(real_top1=real[model], real_n=280)
        path.write_text(json.dumps(record))
    real_glob = str(tmp_path / "runs" / "*" / "eval" / "imagenet2012_real-*.json")
    a_glob = str(tmp_path / "runs" / "*" / "eval" / "fake_a-*.json")
    out = tmp_path / "out"
    result = _run_cli(f"--set=ImageNet={a_glob}", f"--set=ReaL={real_glob}",
                      "--set_metric=ReaL=real_top1", f"--out={out}", "--bootstrap=50")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((out / "ranking.json").read_text())
    accuracy = {m["name"]: m["sets"]["ReaL"]["accuracy"] for m in saved["models"]}
    assert accuracy == real
    assert {m["sets"]["ReaL"]["n"] for m in saved["models"]} == {280}
    assert any(n.startswith("ReaL: ranked by real_top1 (as top1)") for n in saved["notes"])
    acc = np.array(
        [[m["sets"][s]["accuracy"] for s in ("ImageNet", "ReaL")] for m in saved["models"]]
    )
    tau = stats.kendalltau(acc[:, 0], acc[:, 1]).statistic
    assert saved["matrix"]["kendall_tau_b"]["value"][0][1] == pytest.approx(tau)
    bad = _run_cli(f"--set=A={a_glob}", f"--set=B={real_glob}", "--set_metric=C=real_top1",
                   f"--out={out}")  # fmt: skip
    assert bad.returncode == 2
    assert "error: --set_metric 'C=real_top1': no --set labelled 'C'" in bad.stderr
    # Without real_n the JSON is no ReaL evaluation: one line naming the file and field.
    plain = _run_cli(f"--set=A={a_glob}", f"--set=B={a_glob}", "--set_metric=B=real_top1",
                     f"--out={out}")  # fmt: skip
    assert plain.returncode == 2 and "no 'real_n' field" in plain.stderr
