"""Statistics for the chapters: bootstrap intervals, paired tests, correlations, verdicts."""

import numpy as np
import pandas as pd
import pytest

from apem import correlation, stats


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_interval_covers_the_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(12345)
    reps, hits = 300, 0
    for i in range(reps):
        v = rng.normal(loc=3.0, scale=2.0, size=50)
        est, lo, hi = stats.bootstrap_ci(v, "mean", n_boot=1000, level=0.95, seed=i)
        assert lo <= est <= hi
        hits += lo <= 3.0 <= hi
    assert 0.90 <= hits / reps <= 0.99, hits / reps


def test_bootstrap_interval_width_follows_the_level_and_is_seeded():
    v = np.random.default_rng(0).exponential(size=80)
    e90, lo90, hi90 = stats.bootstrap_ci(v, np.median, level=0.90, seed=3)
    e99, lo99, hi99 = stats.bootstrap_ci(v, "median", level=0.99, seed=3)
    assert e90 == e99 == np.median(v)
    assert lo99 <= lo90 < hi90 <= hi99
    assert stats.bootstrap_ci(v, "mean", seed=7) == stats.bootstrap_ci(v, "mean", seed=7)


def test_bootstrap_edge_cases():
    assert stats.bootstrap_ci([2.0, np.nan, 2.0, 2.0], "mean") == (2.0, 2.0, 2.0)  # NaN dropped, constant
    est, lo, hi = stats.bootstrap_ci([5.0], "mean")
    assert est == 5.0 and np.isnan(lo) and np.isnan(hi)
    assert all(np.isnan(stats.bootstrap_ci([], "median")))
    with pytest.raises(ValueError):
        stats.bootstrap_ci([1, 2, 3], "mode")


# ----------------------------------------------------------------------------- summaries


def _table():
    # 4 images x 3 methods; image 3 has no LRP value (undefined epsilon)
    return pd.DataFrame({
        "image_id": np.repeat(["i0", "i1", "i2", "i3"], 3),
        "method": ["grad", "sg", "lrp"] * 4,
        "stage": 1,
        "apem": [5, 1, 3, 4, 4, 2, 9, 0, 3, 2, 1, np.nan],
        "censored_minus": False,
        "censored_plus": [True, False, False, False, False, False, True, False, False, False, False, False],
    })


def test_summary_table_counts_means_medians_and_censoring():
    t = stats.summary_table(_table(), by=("method", "stage"), n_boot=500)
    g = t.loc[("grad", 1)]
    assert g.n == 4 and g.missing == 0 and g.censored_plus == 2 and g.censored == 2 and g.censored_minus == 0
    assert g["mean"] == pytest.approx(5.0) and g["median"] == pytest.approx(4.5)
    assert g.mean_lo <= g["mean"] <= g.mean_hi and g.median_lo <= g["median"] <= g.median_hi
    lrp = t.loc[("lrp", 1)]
    assert lrp.n == 3 and lrp.missing == 1 and lrp["mean"] == pytest.approx(8 / 3)
    assert list(t.index.get_level_values("method")) == ["grad", "sg", "lrp"]  # order of appearance
    plain = stats.summary_table(_table(), by="method", ci=False)
    assert "mean_lo" not in plain and plain.loc["sg", "median"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- pairwise


def test_pairwise_outcomes_fractions_on_a_hand_made_table():
    out = stats.pairwise_outcomes(_table()).set_index(["a", "b"])
    # grad vs sg: 5>1, 4=4, 9>0, 2>1 -> better 3/4, equal 1/4
    assert out.loc[("grad", "sg")].tolist() == [4, 0.75, 0.25, 0.0]
    assert out.loc[("sg", "grad")].tolist() == [4, 0.0, 0.25, 0.75]
    # grad vs lrp on the 3 images with both: 5>3, 4>2, 9>3
    assert out.loc[("grad", "lrp")].tolist() == [3, 1.0, 0.0, 0.0]
    # sg vs lrp: 1<3, 4>2, 0<3
    assert out.loc[("sg", "lrp"), "better"] == pytest.approx(1 / 3)
    assert out.loc[("sg", "lrp"), "worse"] == pytest.approx(2 / 3)
    assert len(out) == 6
    # lower is better (eps_minus): the fractions swap
    low = stats.pairwise_outcomes(_table(), higher_is_better=False).set_index(["a", "b"])
    assert low.loc[("grad", "sg"), "worse"] == 0.75


def test_paired_functions_refuse_several_rows_per_image_and_method():
    two_stages = pd.concat([_table(), _table().assign(stage=2)])
    with pytest.raises(ValueError, match="duplicate"):
        stats.pairwise_outcomes(two_stages)
    per_stage = stats.pairwise_outcomes(two_stages, within="stage")
    assert set(per_stage.stage) == {1, 2} and len(per_stage) == 12


# ----------------------------------------------------------------------------- correlations


def test_spearman_table_on_monotone_cases():
    loss = np.array([0.1, 0.3, 0.2, 0.9, 1.5, 2.0, 0.05, 1.1])
    correct = np.array([True, True, True, False, False, False, True, False])
    conf = np.exp(-loss)  # for correct images loss = -log(confidence) exactly
    df = pd.concat([
        pd.DataFrame({"image_id": range(8), "method": "grad", "apem": -3 * loss + 7}),  # decreasing
        pd.DataFrame({"image_id": range(8), "method": "lrp", "apem": loss ** 3}),       # increasing
    ]).merge(pd.DataFrame({"image_id": range(8), "loss": loss, "correct": correct, "confidence": conf}))
    t = correlation.spearman_table(df)
    rho = t.xs("rho", axis=1, level="stat")
    assert list(rho.index) == ["grad", "lrp", "confidence"]
    assert list(rho.columns) == ["correct", "misclassified", "all"]
    np.testing.assert_allclose(rho.loc["grad"], -1.0)
    np.testing.assert_allclose(rho.loc["lrp"], 1.0)
    np.testing.assert_allclose(rho.loc["confidence"], -1.0)
    n = t.xs("n", axis=1, level="stat")
    assert n.loc["grad"].tolist() == [4, 4, 8] and n.loc["confidence"].tolist() == [4, 4, 8]
    assert (t.xs("p", axis=1, level="stat") < 0.05).all().all()


def test_spearman_table_nan_when_undefined():
    df = pd.DataFrame({"image_id": range(4), "method": "m", "apem": [1.0, 1.0, 1.0, 1.0],
                       "loss": [1, 2, 3, 4.0], "correct": True, "confidence": [0.9, 0.8, 0.7, 0.6]})
    t = correlation.spearman_table(df, groups=("all",), alpha=0.05)
    assert np.isnan(t.loc["m", ("all", "rho")])  # constant APEM
    assert np.isnan(t.loc["m", ("all", "lo")]) and np.isnan(t.loc["m", ("all", "hi")])
    assert t.loc["confidence", ("all", "rho")] == -1.0 and t.loc["confidence", ("all", "hi")] < 0


# ----------------------------------------------------------------------------- verdicts


def test_spearman_interval():
    lo, hi = correlation.spearman_interval(0.5, 40)
    assert lo < 0.5 < hi and 0.2 < lo and hi < 0.75
    assert all(np.isnan(correlation.spearman_interval(0.5, 3)))  # needs n > 3
    assert all(np.isnan(correlation.spearman_interval(np.nan, 40)))
    lo99, hi99 = correlation.spearman_interval(0.5, 40, alpha=0.01)
    assert lo99 < lo and hi < hi99
    assert correlation.spearman_interval(-1.0, 10)[1] < -0.99  # clipped, still finite
    # coverage of a known correlation: bivariate normal with Pearson 0.6 has
    # Spearman rho = (6 / pi) asin(0.3) ~= 0.5756
    rng = np.random.default_rng(0)
    true = 6 / np.pi * np.arcsin(0.3)
    cov = np.array([[1, 0.6], [0.6, 1]])
    hits = 0
    for i in range(200):
        xy = rng.multivariate_normal([0, 0], cov, size=80)
        rho = float(pd.Series(xy[:, 0]).corr(pd.Series(xy[:, 1]), method="spearman"))
        lo, hi = correlation.spearman_interval(rho, 80)
        hits += lo <= true <= hi
    assert 0.9 <= hits / 200 <= 0.99, hits


def test_censored_bounds_of_the_mean_and_the_median():
    d = pd.DataFrame({"eps_plus": [1.0, 2.0, 3.0, 10.0, 10.0], "censored_plus": [0, 0, 0, 1, 1],
                      "eps_minus": [1.0] * 5, "censored_minus": [0] * 5})
    d["apem"] = d.eps_plus - d.eps_minus
    b = stats.censored_bounds(d, "eps_plus")
    # two of five at the bound: the median (3) is fixed, the mean only bounded below
    assert b == {"mean_bound": "lower bound", "median_min": 3.0, "median_max": 3.0}
    d.loc[2, "censored_plus"] = 1  # three of five: the median is at least 3, unbounded above
    b = stats.censored_bounds(d, "eps_plus")
    assert b["median_min"] == 3.0 and b["median_max"] == np.inf
    d.loc[0, "censored_minus"] = 1  # APEM of a row censored on both sides is unbounded
    assert stats.censoring_sides(d, "apem").tolist() == [-1, 0, 1, 1, 1]
    assert stats.censored_bounds(d, "apem")["mean_bound"] == "undetermined"
    assert stats.censored_bounds(d.assign(loss=1.0), "loss")["mean_bound"] == "exact"


def test_the_best_method_is_the_thesis_mean_and_the_median_is_shown_beside_it():
    s = pd.DataFrame({"mean": [5.0, 9.0, 7.0], "median": [8.0, 1.0, 2.0]}, index=["a", "b", "c"])
    assert stats.BEST_BY == "mean" and stats.best_method(s) == "b"
    r = stats.ranking(s)
    assert list(r.index) == ["b", "c", "a"] and r.loc["a", "rank_median"] == 1


# ----------------------------------------------------------------------------- AUROC (issue: APEM as a signal of reliability)


def test_auroc_golden_values():
    # every pos above every neg: 1; every below: 0; pos [1, 2, 3] against neg [2]: pairs 0 + 1/2 + 1 = 1.5 of 3
    assert stats.auroc([3, 4, 5], [1, 2])["auroc"] == 1.0
    assert np.isnan(stats.auroc([3, 4, 5], [1, 2])["low"])  # complete separation: no degenerate bootstrap interval
    assert stats.auroc([1, 2], [3, 4, 5])["auroc"] == 0.0
    assert stats.auroc([1, 2, 3], [2])["auroc"] == pytest.approx(0.5)
    # a twin: the definition counted pair by pair
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 20, 17).astype(float), rng.integers(0, 20, 11).astype(float)
    pairs = [(a > b) + 0.5 * (a == b) for a in pos for b in neg]
    r = stats.auroc(pos, neg, seed=1)
    assert r["auroc"] == pytest.approx(np.mean(pairs))
    assert r["low"] <= r["auroc"] <= r["high"] and (r["n_pos"], r["n_neg"]) == (17, 11)
    # the test of separation is Mann-Whitney's, one-sided
    from scipy import stats as sps
    assert r["p_greater"] == pytest.approx(sps.mannwhitneyu(pos, neg, alternative="greater").pvalue)
    assert np.isnan(stats.auroc([], [1.0])["auroc"])


def test_separation_signs_and_groups():
    df = pd.DataFrame({"image_id": list("abcdef"), "method": "gradient", "stage": 3,
                       "group": ["correct"] * 3 + ["misclassified"] * 3,
                       "apem": [10.0, 20, 30, 1, 2, 3], "loss": [0.1, 0.2, 0.3, 2, 3, 4],
                       "eps_minus": [1.0] * 6, "eps_plus": [11.0, 21, 31, 2, 3, 4],
                       "censored_minus": False, "censored_plus": [True] + [False] * 5})
    S = stats.separation(df, {"APEM": ("apem", +1), "loss": ("loss", -1), "loss, wrong sign": ("loss", +1)},
                         n_boot=200).set_index("signal")
    assert S.loc["APEM", "auroc"] == 1.0 and S.loc["loss", "auroc"] == 1.0 and S.loc["loss, wrong sign", "auroc"] == 0.0
    assert S.loc["APEM", "censored"] == 1 and S.loc["loss", "censored"] == 0
