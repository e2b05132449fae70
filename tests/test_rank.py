"""imagenot_jax.rank: the statistics against independent scipy/numpy computations, the built-in
reference table against the published CSV, and the CLI end to end on fake eval results."""

from __future__ import annotations

import base64
import csv
import dataclasses
import html.parser
import json
import os
import shutil
import subprocess
import sys
from itertools import permutations

import numpy as np
import pytest
from scipy import stats

from imagenot_jax.evaluate.metrics import clopper_pearson
from imagenot_jax.rank import ranking, reference
from imagenot_jax.rank import stats as rank_stats
from tests.conftest import REPO

# --- the reference table --------------------------------------------------------------------


def test_reference_table_equals_published_csv(shared_data):
    with open(shared_data / "torchvision_imagenet1k.csv", newline="") as f:
        rows = {row["model"]: row for row in csv.DictReader(f)}
    table = reference.TORCHVISION_IMAGENET1K
    assert list(table) == list(rows)
    for name, row in rows.items():
        ours = table[name]
        assert ours.weights == row["weights"]
        assert (ours.acc1, ours.acc5, ours.gflops) == tuple(
            float(row[k]) for k in ("acc1", "acc5", "gflops")
        )
        assert (ours.num_params, ours.eval_crop, ours.eval_resize) == tuple(
            int(row[k]) for k in ("num_params", "eval_crop", "eval_resize")
        )


def test_paper_years():
    years = {m: reference.year_of(m) for m in reference.PAPER_MODELS}
    assert years == {
        "alexnet": 2012, "vgg19": 2014, "inception_v3": 2015, "resnet152": 2015,
        "densenet161": 2016, "mobilenet_v3_large": 2019, "efficientnet_v2_l": 2021,
        "vit_b_16": 2020, "convnext_large": 2022,
    }  # fmt: skip
    assert reference.year_of("vgg11_bn") == 2014 and reference.year_of("resnet_mini") == 2015
    assert reference.year_of("lenet") is None


# --- statistics on fixed inputs -------------------------------------------------------------

# Ties on both sides: models 1 and 2 tie on A, models 3 and 4 tie on B.
TIED_A = np.array([0.9, 0.7, 0.7, 0.6, 0.5, 0.4])
TIED_B = np.array([0.8, 0.5, 0.6, 0.55, 0.55, 0.3])


def test_rank_correlations_with_ties_match_scipy():
    got = rank_stats.rank_correlations(TIED_A, TIED_B)
    tau = stats.kendalltau(TIED_A, TIED_B)  # tau-b is scipy's default
    rho = stats.spearmanr(TIED_A, TIED_B)
    assert got["kendall_tau_b"]["value"] == pytest.approx(tau.statistic)
    assert got["kendall_tau_b"]["p_value"] == pytest.approx(tau.pvalue)
    assert got["spearman_rho"]["value"] == pytest.approx(rho.statistic)
    # Spearman's p-value: exact up to 9 models, by brute force here (scipy's is asymptotic).
    perms = [stats.spearmanr(TIED_A, TIED_B[list(p)]).statistic for p in permutations(range(6))]
    exact = np.mean(np.abs(perms) >= abs(rho.statistic) - 1e-12)
    assert got["spearman_rho"]["p_value"] == pytest.approx(exact)
    many_a, many_b = np.arange(12.0), np.r_[np.arange(12.0)[::-1][:3], np.arange(9.0)]
    assert rank_stats.spearman_p_value(many_a, many_b) == pytest.approx(
        stats.spearmanr(many_a, many_b).pvalue
    )
    # The vectorised versions the bootstrap uses agree too.
    signs = rank_stats.pair_signs(TIED_A), rank_stats.pair_signs(TIED_B)
    assert rank_stats.kendall_tau_b(*signs) == pytest.approx(tau.statistic)
    assert rank_stats.spearman_rho(TIED_A, TIED_B) == pytest.approx(rho.statistic)
    np.testing.assert_array_equal(rank_stats.ranks(TIED_A), [1, 2.5, 2.5, 4, 5, 6])


def test_vectorised_tau_and_rho_match_scipy_row_by_row():
    rng = np.random.default_rng(0)
    a = np.round(rng.uniform(size=(40, 7)), 1)  # rounded: many ties
    b = np.round(a + rng.normal(scale=0.2, size=a.shape), 1)
    tau = rank_stats.kendall_tau_b(rank_stats.pair_signs(a), rank_stats.pair_signs(b))
    rho = rank_stats.spearman_rho(a, b)
    for k in range(len(a)):
        assert tau[k] == pytest.approx(stats.kendalltau(a[k], b[k]).statistic)
        assert rho[k] == pytest.approx(stats.spearmanr(a[k], b[k]).statistic)


def test_constant_side_gives_undefined_statistics():
    got = rank_stats.rank_correlations(np.array([0.5, 0.5, 0.5]), np.array([0.1, 0.2, 0.3]))
    assert got["kendall_tau_b"]["value"] is None and got["spearman_rho"]["value"] is None


def test_discordant_and_tied_pairs_are_listed():
    names = ["m0", "m1", "m2", "m3", "m4", "m5"]
    got = rank_stats.pair_orders(names, TIED_A, TIED_B)
    assert got["n_pairs"] == 15
    # By hand: A orders m1 = m2 > m3 > m4; B orders m2 > m3 = m4 > m1.
    discordant = {tuple(p["models"]) for p in got["discordant_pairs"]}
    assert discordant == {("m1", "m3"), ("m1", "m4")}
    assert {tuple(p["models"]) for p in got["tied_pairs"]} == {("m1", "m2"), ("m3", "m4")}
    assert got["n_discordant"] == 2


def test_relative_improvement_correlations_match_scipy():
    a, b = np.array([0.5, 0.6, 0.8, 0.7, 0.65]), np.array([0.3, 0.42, 0.5, 0.47, 0.38])
    got = rank_stats.relative_improvement_agreement(a, b, base=0)
    np.testing.assert_allclose(got["a"], a / 0.5)
    np.testing.assert_allclose(got["b"], b / 0.3)
    for key, keep in (("with_base", slice(None)), ("without_base", slice(1, None))):
        x, y = a[keep] / a[0], b[keep] / b[0]
        assert got[key]["n"] == len(x)
        assert got[key]["pearson"]["r"] == pytest.approx(stats.pearsonr(x, y).statistic)
        assert got[key]["pearson"]["p_value"] == pytest.approx(stats.pearsonr(x, y).pvalue)
        assert got[key]["spearman"]["rho"] == pytest.approx(stats.spearmanr(x, y).statistic)
    with pytest.raises(ValueError, match="base model's accuracy is 0"):
        rank_stats.relative_improvements(np.array([0.0, 0.5]), 0)


def test_linear_and_probit_fits_match_polyfit():
    a, b = np.array([0.56, 0.72, 0.77, 0.81, 0.858]), np.array([0.38, 0.51, 0.55, 0.6, 0.62])
    got = rank_stats.accuracy_on_the_line(a, b)
    for kind, (x, y) in {
        "linear": (a, b),
        "probit": (stats.norm.ppf(a), stats.norm.ppf(b)),
    }.items():
        slope, intercept = np.polyfit(x, y, 1)
        fit = got[kind]
        assert fit["slope"] == pytest.approx(slope) and fit["intercept"] == pytest.approx(intercept)
        np.testing.assert_allclose(fit["residuals"], y - np.polyval([slope, intercept], x))
        assert fit["r2"] == pytest.approx(stats.linregress(x, y).rvalue ** 2)
    # Accuracies of 0 and 1 are clipped before the probit transform, not infinite.
    clipped = rank_stats.accuracy_on_the_line(np.array([0.0, 0.5, 1.0]), np.array([0.1, 0.5, 0.9]))
    assert np.isfinite(clipped["probit"]["slope"])
    assert rank_stats.line_fit(np.array([0.5, 0.5, 0.5]), np.array([0.1, 0.2, 0.3])) is None


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (37_261, 50_000), (1, 7)])
def test_clopper_pearson_matches_binomtest(k, n):
    expected = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert clopper_pearson(k, n) == pytest.approx((expected.low, expected.high), abs=1e-12)


# --- bootstrap ------------------------------------------------------------------------------


def _synthetic(true_acc: list[float], n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(n, len(true_acc))) < np.array(true_acc)


def test_bootstrap_accuracies_reproduce_explicit_resamples():
    correct = _synthetic([0.3, 0.6, 0.8], n=50, seed=1)
    labels = np.random.default_rng(2).integers(0, 4, size=50)
    draws = 20
    indices = np.random.default_rng(7).integers(0, 50, size=(draws, 50))  # what a seed-7 draw is
    plain = rank_stats.bootstrap_accuracies(
        rank_stats.PerExample(correct), draws, np.random.default_rng(7)
    )
    np.testing.assert_allclose(plain, correct[indices].mean(axis=1))
    recall = rank_stats.bootstrap_accuracies(
        rank_stats.PerExample(correct, labels), draws, np.random.default_rng(7)
    )
    for d in range(draws):
        lab, hit = labels[indices[d]], correct[indices[d]]
        expected = [np.mean([hit[lab == c, k].mean() for c in np.unique(lab)]) for k in range(3)]
        np.testing.assert_allclose(recall[d], expected)


def test_models_of_one_side_are_resampled_jointly():
    column = _synthetic([0.6], n=400, seed=3)
    data = rank_stats.PerExample(np.concatenate([column, column, ~column], axis=1))
    draws = rank_stats.bootstrap_accuracies(data, 50, np.random.default_rng(0))
    np.testing.assert_array_equal(draws[:, 0], draws[:, 1])  # one resample for both models
    np.testing.assert_allclose(draws[:, 0] + draws[:, 2], 1.0)


def _bootstrap_widths(n: int) -> tuple[dict, float, float]:
    true_acc = [0.5, 0.54, 0.58, 0.62, 0.66]
    correct = _synthetic(true_acc, n=n, seed=n)
    draws = rank_stats.bootstrap_accuracies(
        rank_stats.PerExample(correct), 500, np.random.default_rng(0)
    )
    fixed = np.array(true_acc) * 0.8  # the other side: a table held fixed
    names = [f"m{k}" for k in range(len(true_acc))]
    got = rank_stats.bootstrap_rankings(draws, fixed, names)
    point = rank_stats.rank_correlations(correct.mean(axis=0), fixed)
    return got, point["kendall_tau_b"]["value"], point["spearman_rho"]["value"]


def test_bootstrap_intervals_contain_the_estimate_and_shrink_with_n():
    small, tau_small, rho_small = _bootstrap_widths(300)
    large, tau_large, rho_large = _bootstrap_widths(20_000)
    for got, tau, rho in ((small, tau_small, rho_small), (large, tau_large, rho_large)):
        low, high = got["kendall_tau_b_ci95"]
        assert low <= tau <= high
        low, high = got["spearman_rho_ci95"]
        assert low <= rho <= high
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(large["kendall_tau_b_ci95"]) < width(small["kendall_tau_b_ci95"])
    assert width(large["spearman_rho_ci95"]) < width(small["spearman_rho_ci95"])
    assert width(small["kendall_tau_b_ci95"]) > 0
    flips = {tuple(p["models"]): p["p_flip"] for p in small["pair_flip_probability"]}
    assert flips[("m0", "m1")] > flips[("m0", "m4")]  # close accuracies flip more often
    assert max(p["p_flip"] for p in large["pair_flip_probability"]) < 0.05


# --- result sets and the comparison ---------------------------------------------------------

KEYS = np.array([f"test:{i}" for i in range(300)])


def write_eval(workdir, model: str, acc: float, *, dataset="fake/a", split="test", step=10,
               seed=0, n=300, with_examples=True):  # fmt: skip
    """An eval JSON and .examples.npz as imagenot_jax.evaluate writes them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    correct = rng.uniform(size=n) < acc
    top5 = np.stack([(labels + 1 + k) % 10 for k in range(5)], axis=1)
    top5[correct, 0] = labels[correct]
    recall = [float(correct[labels == c].mean()) for c in range(10)]
    record = {
        "model": model, "dataset": dataset, "dataset_version": "1.0.0", "split": split,
        "step": step, "ema": False, "workdir": str(workdir), "n": n,
        "correct": int(correct.sum()), "top1": float(correct.mean()),
        "top5": float(np.any(top5 == labels[:, None], axis=1).mean()), "loss": 1.0,
        "top1_ci95": list(clopper_pearson(int(correct.sum()), n)),
        "mean_per_class_recall": float(np.mean(recall)), "per_class_recall": recall,
    }  # fmt: skip
    stem = workdir / "eval" / f"{dataset.replace('/', '_')}-{split}-{step}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(record))
    if with_examples:
        np.savez_compressed(
            stem.parent / f"{stem.name}.examples.npz",
            key=KEYS[:n], label=labels, top5=top5, correct=correct,
        )  # fmt: skip
    return stem.with_suffix(".json")


MODELS = {"alexnet": (0.4, 0.3), "vgg19": (0.55, 0.4), "resnet152": (0.65, 0.52),
          "vit_b_16": (0.7, 0.5), "convnext_large": (0.8, 0.62)}  # fmt: skip


def make_workdirs(root) -> list[str]:
    """Five training workdirs, each evaluated on two datasets (fake/a older, fake/b newer)."""
    dirs = []
    for k, (model, (acc_a, acc_b)) in enumerate(MODELS.items()):
        workdir = root / "runs" / model
        write_eval(workdir, model, acc_a, dataset="fake/a", seed=k)
        path = write_eval(workdir, model, acc_b, dataset="fake/b", seed=10 + k)
        os.utime(path, (2e9, 2e9))  # the newest
        dirs.append(str(workdir))
    return dirs


@pytest.fixture
def workdirs(tmp_path):
    return make_workdirs(tmp_path)


def test_workdirs_pick_the_newest_eval_or_the_filtered_one(workdirs):
    newest = ranking.load_result_set(",".join(workdirs))
    assert {r.dataset for r in newest.models.values()} == {"fake/b"}
    assert newest.label == "fake/b test"
    filtered = ranking.load_result_set(workdirs, dataset="fake/a", split="test")
    assert {r.dataset for r in filtered.models.values()} == {"fake/a"}
    assert filtered.models["vgg19"].year == 2014 and filtered.models["vgg19"].examples
    with pytest.raises(ValueError, match="no eval JSON for dataset=fake/c"):
        ranking.load_result_set(workdirs, dataset="fake/c")


def test_compare_end_to_end_through_the_api(workdirs, tmp_path):
    a = ranking.load_result_set(workdirs, dataset="fake/a")
    b = ranking.load_result_set(
        [*workdirs, f"extra={write_eval(tmp_path / 'x', 'resnet18', 0.5, dataset='fake/b')}"]
    )
    out = tmp_path / "report"
    got = ranking.compare(a, b, str(out), bootstrap=200, seed=1)
    for name in ("ranking.json", "report.md", "report.html", "relative_improvement.png",
                 "accuracy_scatter.png", "rank_vs_rank.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "ranking.json").read_text())
    assert saved == got
    for field in ("metric", "base", "labels", "models", "unmatched", "kendall_tau_b",
                  "spearman_rho", "pairs", "pair_flip_probability", "relative_improvement",
                  "accuracy_on_the_line", "bootstrap", "notes", "files"):  # fmt: skip
        assert field in saved, field
    assert saved["unmatched"] == {"a_only": [], "b_only": ["extra"]}
    acc_a = np.array([a.models[m["name"]].metrics["top1"] for m in saved["models"]])
    acc_b = np.array([b.models[m["name"]].metrics["top1"] for m in saved["models"]])
    assert saved["kendall_tau_b"]["value"] == pytest.approx(stats.kendalltau(acc_a, acc_b)[0])
    assert saved["spearman_rho"]["value"] == pytest.approx(stats.spearmanr(acc_a, acc_b)[0])
    low, high = saved["kendall_tau_b"]["ci95"]
    assert low <= saved["kendall_tau_b"]["value"] <= high
    assert saved["bootstrap"]["resampled"] == {"a": True, "b": True}
    assert saved["bootstrap"]["examples"] == {"a": 300, "b": 300}
    first = saved["models"][0]
    assert first["a"]["rank"] == 1 and first["year"] in (2020, 2022)
    assert first["a"]["ci95"][0] < first["a"]["accuracy"] < first["a"]["ci95"][1]
    assert saved["labels"] == {"a": "fake/a test", "b": "fake/b test"}
    markdown = (out / "report.md").read_text()
    assert "![" in markdown and "Kendall tau-b" in markdown and "only in B: extra" in markdown


def test_reference_table_against_itself_and_a_permuted_copy(tmp_path):
    table = ranking.load_result_set("torchvision-imagenet1k")
    same = ranking.compare(table, table, str(tmp_path / "same"), bootstrap=10)
    assert same["kendall_tau_b"]["value"] == 1.0 and same["spearman_rho"]["value"] == 1.0
    assert same["kendall_tau_b"]["ci95"] is None  # nothing to resample
    assert same["relative_improvement"]["without_base"]["pearson"]["r"] == pytest.approx(1.0)
    assert same["models"][0]["a"]["n"] == 50_000
    # The nine paper models with vgg19 and mobilenet_v3_large (adjacent in rank) swapped on B:
    # one discordant pair of 36 -> tau = (35 - 1) / 36, rho = 1 - 6 * 2 / (9 * 80).
    nine = {m: table.models[m] for m in reference.PAPER_MODELS}
    swapped = dict(nine)
    for x, y in (("vgg19", "mobilenet_v3_large"), ("mobilenet_v3_large", "vgg19")):
        swapped[x] = dataclasses.replace(nine[x], metrics=dict(nine[y].metrics))
    got = ranking.compare(
        dataclasses.replace(table, models=nine), dataclasses.replace(table, models=swapped),
        str(tmp_path / "swapped"), bootstrap=0, b_label="swapped",
    )  # fmt: skip
    assert got["kendall_tau_b"]["value"] == pytest.approx(34 / 36)
    assert got["spearman_rho"]["value"] == pytest.approx(1 - 12 / 720)
    assert [p["models"] for p in got["pairs"]["discordant_pairs"]] == [
        ["mobilenet_v3_large", "vgg19"]
    ]
    assert got["unmatched"] == {"a_only": [], "b_only": []}


def test_reference_against_runs_resamples_only_the_runs(workdirs, tmp_path):
    runs = ranking.load_result_set(workdirs, dataset="fake/b")
    got = ranking.compare(ranking.load_result_set("torchvision-imagenet1k"), runs,
                       str(tmp_path / "out"), bootstrap=100, metric="top5")  # fmt: skip
    assert got["bootstrap"]["resampled"] == {"a": False, "b": True}
    assert got["kendall_tau_b"]["ci95"] is not None and got["metric"] == "top5"
    assert len(got["unmatched"]["a_only"]) == 31 - 5
    assert [m["year"] for m in got["models"]][-1] == 2012  # alexnet, least accurate


def test_html_report_is_self_contained(workdirs, tmp_path):
    out = tmp_path / "out"
    ranking.compare(*(ranking.load_result_set(workdirs, dataset=d) for d in ("fake/a", "fake/b")),
                 str(out), bootstrap=50)  # fmt: skip
    images, external = [], []

    class Parser(html.parser.HTMLParser):
        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "img":
                images.append(attrs["src"])
            external.extend(v for k, v in attrs.items() if k in ("src", "href") and "://" in v)
            if tag in ("script", "link", "iframe"):
                external.append(tag)

    Parser().feed((out / "report.html").read_text())
    assert len(images) == 3 and not external
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def chromium_dom(page) -> str:
    """The DOM of an HTML file as headless Chromium renders it (skips without a browser)."""
    browser = next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
    )
    if browser is None:
        pytest.skip("no headless browser: apt-get install chromium")
    result = subprocess.run(
        [browser, "--headless", "--disable-gpu", "--no-sandbox", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_html_report_renders_in_headless_chromium(workdirs, tmp_path):
    out = tmp_path / "out"
    ranking.compare(*(ranking.load_result_set(workdirs, dataset=d) for d in ("fake/a", "fake/b")),
                 str(out), bootstrap=50)  # fmt: skip
    dom = chromium_dom(out / "report.html")
    assert dom.count('<img alt="') == 3
    assert dom.count('src="data:image/png;base64,') == 3


# --- bad inputs -----------------------------------------------------------------------------


def test_bad_inputs_are_one_line_errors(workdirs, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        ranking.load_result_set(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text(json.dumps({"top1": 0.5, "n": 3}))
    with pytest.raises(ValueError, match=r"bad\.json: no 'model' field"):
        ranking.load_result_set(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="unknown result set 'imagenet21k'"):
        ranking.load_result_set("imagenet21k")
    with pytest.raises(ValueError, match="has no mean_per_class_recall"):
        ranking.load_result_set("torchvision-imagenet1k", metric="mean_per_class_recall")
    with pytest.raises(ValueError, match="two runs named 'vgg19'"):
        ranking.load_result_set([workdirs[1], workdirs[1]])
    two = ranking.load_result_set(workdirs[:2])
    table = ranking.load_result_set("torchvision-imagenet1k")
    with pytest.raises(ValueError, match=r"2 model\(s\) in both sets .* needs at least 3"):
        ranking.compare(table, two, str(tmp_path / "out"))
    with pytest.raises(ValueError, match="base model 'lenet' is not in set"):
        ranking.compare(
            table, ranking.load_result_set(workdirs), str(tmp_path / "out"), base="lenet"
        )


def test_named_runs_and_mean_per_class_recall(workdirs, tmp_path):
    # Two runs of one model, told apart by name=path; one without per-example outcomes.
    path = write_eval(tmp_path / "again", "vgg19", 0.5, seed=99, with_examples=False)
    b = ranking.load_result_set([*workdirs, f"vgg19_again={path}"], metric="mean_per_class_recall")
    a = dataclasses.replace(b, models={**b.models, "vgg19_again": b.models["vgg19"]})
    got = ranking.compare(a, b, str(tmp_path / "out"), metric="mean_per_class_recall", bootstrap=20)
    assert got["bootstrap"]["resampled"] == {"a": True, "b": False}  # B: held fixed
    assert any("no .examples.npz for vgg19_again" in note for note in got["notes"])
    assert len(got["models"]) == 6
    assert ["vgg19", "vgg19_again"] in [p["models"] for p in got["pairs"]["tied_pairs"]]
    draws = got["models"][0]["a"]["bootstrap_ci95"]  # mean per-class recall, resampled on A
    assert draws[0] < got["models"][0]["a"]["accuracy"] < draws[1]


def test_models_without_paper_years_are_plotted_in_rank_order(tmp_path):
    paths = [write_eval(tmp_path / f"r{k}", f"net{k}", 0.3 + 0.1 * k, seed=k) for k in range(4)]
    runs = ranking.load_result_set([str(p) for p in paths])
    got = ranking.compare(runs, runs, str(tmp_path / "out"), base="net0", bootstrap=20)
    assert [m["year"] for m in got["models"]] == [None] * 4
    assert got["kendall_tau_b"]["ci95"][1] == 1.0  # the sides are resampled independently
    assert (tmp_path / "out" / "relative_improvement.png").stat().st_size > 0
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"eval: not found; run imagenot_jax\.evaluate"):
        ranking.load_result_set(str(tmp_path / "w"))


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imagenot_jax.rank", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_cli_prints_the_table_and_exits_2_on_user_errors(workdirs, tmp_path):
    out = tmp_path / "cli"
    result = _run_cli("--a", ",".join(workdirs[:3]), "--a", ",".join(workdirs[3:]),
                      "--b", ",".join(workdirs), "--a_dataset=fake/a", "--b_dataset=fake/b",
                      f"--out={out}", "--bootstrap=100", "--a_label=A-set")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "A = A-set" and lines[1] == "B = fake/b test"
    assert lines[2].split() == ["model", "top1", "A", "top1", "B", "rank", "A", "rank", "B"]
    assert lines[3].split()[0] == "convnext_large" and lines[3].split()[3:] == ["1", "1"]
    assert any(line.startswith("Kendall tau-b  +") and "[" in line for line in lines)
    assert (out / "report.html").exists()
    bad = _run_cli("--a=torchvision-imagenet1k", f"--b={tmp_path / 'nope'}", f"--out={out}")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'nope'}: not found")


def test_eval_files_of_sliced_splits_load_by_their_literal_path(tmp_path):
    """`test[:2500]` in a file name is a path, not a glob pattern (the suite's eval files)."""
    paths = [
        write_eval(tmp_path / name, name, acc, split="test[:300]", seed=i)
        for i, (name, (acc, _)) in enumerate(MODELS.items())
    ]
    assert all("[" in p.name for p in paths)
    result_set = ranking.load_result_set([str(p) for p in paths])
    assert sorted(result_set.models) == sorted(MODELS)
