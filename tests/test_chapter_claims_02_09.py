"""Golden tests of the claims and measures chapters 2, 6, 8 and 9 declare for the thesis's statements (issue 24).

Each claim is the page's own declaration (its cells tagged ``claims`` and ``statement-claims``, run by
:func:`pages.run_cells`), decided on small tables whose answer is known; each new measure is checked on arrays
with closed-form values.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from apem import claims as cl
from apem.chapters import ch06, ch08, ch09
from pages import run_cells

METHODS = ("gradient", "smoothgrad", "lrp_epsilon")


def _refs(claims) -> dict:
    return {r: c for c in claims for r in c.refs()}


# ----------------------------------------------------------------------------- SameShape (apem.claims.zero)


def test_ks_smallest_p_is_that_of_completely_separated_samples():
    assert cl.zero.ks_smallest_p(2, 3) == pytest.approx(2 / 10)
    assert cl.zero.ks_smallest_p(4, 6) == pytest.approx(2 / 210)
    assert sps.ks_2samp([1, 2, 3, 4], [5, 6, 7, 8, 9, 10]).pvalue == pytest.approx(cl.zero.ks_smallest_p(4, 6))
    assert cl.zero.ks_smallest_p(0, 5) == 1.0
    assert cl.zero.ks_needed(0.0, 10, 10, 0.05, 0.8) == math.inf
    # a larger distance needs fewer images; the ratio of the groups is kept
    assert cl.zero.ks_needed(0.8, 10, 10, 0.05, 0.8) < cl.zero.ks_needed(0.4, 10, 10, 0.05, 0.8)
    k = ((sps.kstwobign.ppf(0.95) + 0.5 * sps.norm.ppf(0.8)) / 0.5) ** 2
    assert cl.zero.ks_needed(0.5, 10, 10, 0.05, 0.8) == math.ceil(4 * k)  # N = k (n + m)^2 / (n m) = 4k


def test_same_shape_is_inconclusive_for_a_scaled_copy_and_never_held():
    rng = np.random.default_rng(0)
    x = rng.exponential(10.0, 40)
    a = pd.Series(x, index=[f"c{i}" for i in range(40)])
    b = pd.Series(x[:30] / 3, index=[f"m{i}" for i in range(30)])  # the same shape, a third of the scale
    fam = cl.Claims([cl.SameShape("same shape", a=b, b=a, names=("m", "c"), what="APEM")])
    c = fam.claims[0]
    assert c.verdict == cl.INCONCLUSIVE and not np.isfinite(c.evidence.p_for)
    assert "divided by its median" in c.evidence.estimate and "never held" in c.rule(0.05)


def test_same_shape_is_not_held_for_different_shapes_and_needs_a_positive_median():
    n = 40
    a = pd.Series(np.linspace(1, 2, n), index=[f"c{i}" for i in range(n)])  # narrow around its median
    b = pd.Series(np.r_[np.full(n // 2, 0.01), np.full(n // 2, 100.0)], index=[f"m{i}" for i in range(n)])
    fam = cl.Claims([cl.SameShape("same shape", a=b, b=a)])
    assert fam.claims[0].verdict == cl.NOT_HELD
    # without the scaling a shift alone is a difference
    shifted = cl.Claims([cl.SameShape("same", a=a + 10, b=a, scale=False)])
    assert shifted.claims[0].verdict == cl.NOT_HELD
    assert cl.Claims([cl.SameShape("same", a=a + 10, b=a)]).claims[0].evidence.estimate.startswith("KS distance")
    zero = cl.Claims([cl.SameShape("same", a=a - 10, b=a)]).claims[0]
    assert zero.verdict == cl.NOT_APPLICABLE and "not positive" in zero.evidence.reason


def test_same_shape_on_two_images_is_undecidable():
    a = pd.Series([1.0, 2.0], index=["m0", "m1"])
    b = pd.Series([1.0, 2.0, 3.0, 4.0], index=[f"c{i}" for i in range(4)])
    c = cl.Claims([cl.SameShape("same", a=a, b=b)]).claims[0]
    assert c.verdict == cl.NOT_APPLICABLE and c.evidence.undecidable  # 2 / C(6, 2) = 0.13 cannot reach 0.05


# ----------------------------------------------------------------------------- chapter 2: refs only


def test_chapter_2_claims_name_their_statements():
    sim = pd.DataFrame({"image_id": ["a", "b", "c"] * 3, "a": ["gradient"] * 3 + ["gradient"] * 3 + ["smoothgrad"] * 3,
                        "b": ["smoothgrad"] * 3 + ["lrp_epsilon"] * 6, "spearman": [0.5] * 9})
    tv = pd.DataFrame({"gradient": [0.3, 0.2, 0.4], "smoothgrad": [0.1, 0.1, 0.1]}, index=["a", "b", "c"])
    t41 = pd.DataFrame({"property": ["numerically stable"], "variant": ["epsilon"], "thesis": ["yes"],
                        "agrees": [True]})
    refs = _refs(run_cells(2, "claims", similarity=sim, tv=tv, t41=t41)["chapter_claims"])
    assert set(refs) == {"4.3-maps-similar", "4.2-smoothgrad-less-noisy", "4.2-table-4.1"}
    assert refs["4.2-smoothgrad-less-noisy"].text.startswith("SmoothGrad's maps are less noisy")


# ----------------------------------------------------------------------------- chapter 6


def test_top_share_closed_forms():
    maps = np.stack([np.arange(1, 101, dtype=float).reshape(10, 10),  # top 10 of 1..100: 955 / 5050
                     np.ones((10, 10)),  # constant: exactly the share
                     np.r_[[7.0] * 5, [0.0] * 95].reshape(10, 10),  # five nonzero values, all in the top ten
                     -np.r_[[2.0] * 10, [1.0] * 90].reshape(10, 10),  # signs do not matter: 20 / 110
                     np.zeros((10, 10))])
    got = ch06.top_share(maps, 0.10)
    assert got[:4] == pytest.approx([955 / 5050, 0.1, 1.0, 20 / 110])
    assert np.isnan(got[4])
    assert ch06.top_share(3 * maps[:1], 0.10) == pytest.approx(got[:1])  # scale-free
    assert ch06.top_share(np.ones((1, 3, 3)), 0.10) == pytest.approx([1 / 9])  # k = ceil(0.9) = 1 of 9
    with pytest.raises(ValueError):
        ch06.top_share(maps, 0.0)


def _ch06(n=12, simpler=True, same_eps=True):
    rows = []
    for i in range(n):
        for m, em in (("lrp_epsilon", 5.0 + (i % 3 if same_eps else 10.0)), ("smoothgrad", 5.0 + (i + 1) % 3)):
            ep = 20.0 + i
            rows.append({"image_id": f"im{i}", "method": m, "stage": 3, "group": "correct", "eps_minus": em,
                         "eps_plus": ep, "apem": ep - em, "censored_minus": False, "censored_plus": False})
    C = pd.DataFrame(rows)
    ids = [f"im{i}" for i in range(n)]
    simplified = pd.DataFrame({"lrp_epsilon": [0.6 + 0.01 * i if simpler else 0.2 for i in range(n)],
                               "smoothgrad": [0.3 + 0.01 * i for i in range(n)]}, index=pd.Index(ids, name="image_id"))
    ns = run_cells(6, "claims", "statement-claims", ch06=ch06, C=C, method_a="lrp_epsilon", method_b="smoothgrad",
                   common_share=0.10, simplified=simplified)
    return C, ns


def test_chapter_6_simplified_and_resembling_eps_minus():
    C, ns = _ch06()
    assert len(ns["chapter_claims"]) == 2  # the page's first two claims are unchanged
    fam = cl.Claims(ns["chapter_claims"] + ns["statement_claims"])
    refs = _refs(fam.claims)
    assert set(refs) == {"5.1-eps-plus-both-ways", "5.1-lrp-simplified", "5.1-eps-minus-resemble"}
    assert refs["5.1-lrp-simplified"].verdict == cl.HELD  # LRP holds more mass in its top values on all 12 images
    resemble = refs["5.1-eps-minus-resemble"]
    # differences 5+i%3 - (5+(i+1)%3): -1, -1, +2 repeating: 4 above 0, 8 below, median -1, two-sided sign test p = 0.39
    assert resemble.verdict == cl.INCONCLUSIVE and "above 0 on 4" in resemble.evidence.estimate
    assert ch06.eps_minus_difference(C, "lrp_epsilon", "smoothgrad").tolist()[:3] == [-1.0, -1.0, 2.0]


def test_chapter_6_statements_fail_where_the_data_say_so():
    _, ns = _ch06(n=20, simpler=False, same_eps=False)
    refs = _refs(cl.Claims(ns["chapter_claims"] + ns["statement_claims"]).claims)
    assert refs["5.1-lrp-simplified"].verdict == cl.NOT_HELD  # SmoothGrad's maps are the concentrated ones
    assert refs["5.1-eps-minus-resemble"].verdict == cl.NOT_HELD  # LRP's eps-minus is higher on every image
    t = ch06.concentration_table(ns["simplified"])
    assert t.loc["LRP-ε"].iloc[1] == "20.0%" and t.loc["SmoothGrad", "images"] == 20
    e = ch06.eps_minus_table(ns["C"], "lrp_epsilon", "smoothgrad")
    assert e["images"].tolist() == [20, 20, 20] and e.iloc[2]["censored"] == 0


# ----------------------------------------------------------------------------- chapter 8


def _groups(n_c=15, n_m=10, ratio=0.3, eps_lower=True):
    """APEM (and both epsilons) on misclassified images ``ratio`` times the correct images', the same shape."""
    rows, imgs = [], []
    for g, n, scale, conf in (("correct", n_c, 1.0, 0.9), ("misclassified", n_m, ratio, 0.5)):
        for i in range(n):
            iid = f"{g}{i}"
            imgs.append({"image_id": iid, "group": g, "confidence": conf + 0.001 * i, "loss": 1 - conf})
            for k, m in enumerate(("gradient", "lrp_epsilon", "smoothgrad")):
                a = scale * (100.0 * (3 - k) + 10 * i)
                em = scale * 10.0 if eps_lower else 10.0
                rows.append({"image_id": iid, "method": m, "stage": 3, "group": g, "correct": g == "correct",
                             "apem": a, "eps_minus": em, "eps_plus": em + a,
                             "censored_minus": False, "censored_plus": False})
    return pd.DataFrame(rows), pd.DataFrame(imgs)


def _ch08_claims(D, images):
    ns = run_cells(8, "claims", "statement-claims", C=D[D.group == "correct"], M=D[D.group == "misclassified"],
                   images=images)
    return ns["chapter_claims"], ns["statement_claims"]


def test_chapter_8_statements_on_a_fall_by_seven_tenths():
    D, images = _groups()
    old, new = _ch08_claims(D, images)
    fam = cl.Claims(old + new)
    refs = {}
    for c in fam.claims:
        for r in c.refs():
            refs.setdefault(r, []).append(c)
    assert set(refs) == {"5.3-apem-lower", "6-reliable-output", "5.3-ranking-kept", "5.3-less-confident",
                         "5.3-eps-lower", "5.3-fall-size", "6-drastic-fall", "5.3-similar-distributions"}
    assert len(refs["5.3-apem-lower"]) == 3 and all(c.verdict == cl.HELD for c in refs["5.3-apem-lower"])
    assert refs["5.3-eps-lower"][0].verdict == cl.HELD and len(refs["5.3-eps-lower"][0].parts()) == 6
    fall = refs["5.3-fall-size"][0]
    assert fall is refs["6-drastic-fall"][0] and fall.verdict == cl.HELD  # 0.3 x correct is below 0.5 x correct
    # the same shape, a tenth of the images' scale: the test cannot refute it
    assert [c.verdict for c in refs["5.3-similar-distributions"]] == [cl.INCONCLUSIVE] * 3
    reliable = [c for c in refs["6-reliable-output"] if isinstance(c, cl.Descriptive)][0]
    assert reliable.verdict == cl.NOT_APPLICABLE and "confidence: 1.00" in reliable.reason


def test_chapter_8_a_fall_by_a_fifth_is_not_below_half_and_equal_eps_are_not_lower():
    D, images = _groups(n_c=20, n_m=20, ratio=0.8, eps_lower=False)
    _, new = _ch08_claims(D, images)
    fam = cl.Claims(new)
    eps, fall = fam.claims[0], fam.claims[1]
    assert fall.verdict == cl.NOT_HELD  # 0.8 x correct is above half of it on most pairs
    minus = [p for p in eps.parts() if p.text.startswith("ε⁻")]
    assert all(p.verdict != cl.HELD for p in minus)  # eps-minus is 10 in both groups: no difference
    assert eps.verdict != cl.HELD


def test_fall_closed_forms_and_intervals():
    assert ch08.fall([2, 4, 6], [1, 1, 1], "mean")[0] == pytest.approx(0.75)
    assert ch08.fall([10, 10, 10], [3, 3, 3], "median") == (pytest.approx(0.7),) * 3  # both constant: exact
    est, lo, hi = ch08.fall(np.arange(1, 31, dtype=float), np.arange(1, 31, dtype=float) / 4, "median", seed=1)
    assert est == pytest.approx(0.75) and lo < 0.75 < hi  # each group resampled on its own: the ratio varies
    est, lo, hi = ch08.fall(np.arange(1, 31, dtype=float), np.arange(1, 21, dtype=float), "mean", seed=1)
    assert est == pytest.approx(1 - 10.5 / 15.5) and lo < est < hi
    assert ch08.fall(np.arange(1, 31, dtype=float), np.arange(1, 21, dtype=float), "mean", seed=1) == (est, lo, hi)
    assert np.isnan(ch08.fall([0, 0], [1, 2], "median")[0])  # the correct images' median is 0
    assert np.isnan(ch08.fall([-3, -1, 2], [1, 2], "median")[0])  # ... or negative: no fall as a share of it
    assert np.isnan(ch08.fall([1, 2], [1], "mean")[1])  # one misclassified image: no interval
    th = ch08.thesis_falls()
    assert th.loc["gradient", "mean"] == pytest.approx(1 - 43.58 / 127.79)
    assert th.loc["smoothgrad", "median"] == pytest.approx(0.75)


def test_fall_table_and_sentence_say_whether_the_thesis_range_is_met():
    D, _ = _groups(n_c=10, n_m=10, ratio=0.3)  # the same images' values, 0.3 times: every fall exactly 70%
    F = ch08.fall_table(D[D.correct], D[~D.correct], seed=0, n_boot=500)
    assert list(F.index) == ["gradient", "lrp_epsilon", "smoothgrad"]
    assert F["median"].to_numpy() == pytest.approx([0.7] * 3) and F["mean"].to_numpy() == pytest.approx([0.7] * 3)
    text = ch08.fall_sentence(F)
    assert "By the restricted mean APEM falls by Gradient 70%" in text
    assert "3 of 3 lie in the thesis's range (66% to 71%)" in text  # 70% is inside 65.9% .. 71.5%
    v = ch08.fall_view(F)
    assert v.loc["Gradient", "thesis (median)"] == "69%"
    F2 = ch08.fall_table(*(lambda d: (d[d.correct], d[~d.correct]))(_groups(n_c=10, n_m=10, ratio=0.9)[0]), seed=0, n_boot=500)
    assert "0 of 3 lie in the thesis's range" in ch08.fall_sentence(F2)
    F3 = ch08.fall_table(*(lambda d: (d[d.correct], d[~d.correct]))(_groups(n_c=10, n_m=10, ratio=1.5)[0]), seed=0, n_boot=500)
    text = ch08.fall_sentence(F3)  # misclassified 1.5 times the correct: a rise by 50%, never "a fall by -50%"
    assert "APEM falls by nothing for any method (and rises: Gradient's by 50%, LRP-ε's by 50%, SmoothGrad's by 50%)" in text
    assert "-50%" not in text


def test_separation_table_and_best_signal_on_known_groups():
    from apem import stats

    D, images = _groups(n_c=6, n_m=4)
    D = D.assign(eps_minus=10.0)  # eps-minus the same everywhere: AUROC 0.5
    S = stats.separation(D, ch08.SIGNALS, by=("method", "stage"), n_boot=200)
    B = stats.separation(images, ch08.BASELINES, by=(), n_boot=200)
    s = S.set_index(["method", "signal"]).auroc
    assert s[("gradient", "APEM")] == 1.0 and s[("gradient", "ε⁻")] == 0.5
    assert B.set_index("signal").auroc.tolist() == [1.0, 1.0]  # confidence 0.9.. vs 0.5..; loss 0.1 vs 0.5
    t = ch08.separation_table(S, B)
    assert t.loc[("Gradient", "stage 3"), "APEM"] == "1.00 (complete separation)"
    assert t.loc[("the model's confidence", "–"), "baseline"] == "1.00 (complete separation)"
    text = ch08.best_signal_sentence(S, B, 3)
    assert "AUROC 1.00" in text and "equal to the model's own confidence (1.00)" in text
    fig = ch08.separation_figure(S, B, 3)
    assert len(fig.axes[0].get_yticklabels()) == 9
    assert ch08.best_signal_sentence(S, B, 1) == "No signal's AUROC is defined on these images."


# ----------------------------------------------------------------------------- chapter 9


def test_same_order_pairs_counts_pairs_not_ordered_oppositely():
    x = pd.Series([0.9, 0.8, 0.7, 0.6], index=list("abcd"))
    assert ch09.same_order_pairs(x, -np.log(x)) == (0, 6)
    y = pd.Series([0.1, 0.2, 0.2, 0.05], index=list("abcd"))  # b, c tie; d breaks the order with all three
    assert ch09.same_order_pairs(x, y) == (4, 6)
    assert ch09.same_order_pairs(x, pd.Series([1.0], index=["a"])) == (0, 0)


def _loss_table(n_correct=12, n_mis=12, tie=False):
    rows = []
    for i in range(n_correct + n_mis):
        correct = i < n_correct
        loss = 0.1 * (i + 1)
        conf = float(np.exp(-loss)) if correct else 0.5 - 0.01 * (i - n_correct)
        if tie and i == 1:
            conf = float(np.exp(-0.1))  # the same confidence as image 0, another loss
        for m in METHODS:
            rows.append({"image_id": f"im{i}", "method": m, "stage": 3, "apem": 100.0 - i, "loss": loss,
                         "confidence": conf, "correct": correct, "group": "correct" if correct else "misclassified",
                         "censored_minus": False, "censored_plus": False})
    return pd.DataFrame(rows)


def _ch09(D):
    ns = run_cells(9, "claims", "statement-claims", C=D[D.group == "correct"], M=D[D.group == "misclassified"], D=D)
    return cl.Claims(ns["chapter_claims"] + ns["statement_claims"])


def test_chapter_9_confidence_claim_and_the_refs():
    fam = _ch09(_loss_table())
    refs = {}
    for c in fam.claims:
        for r in c.refs():
            refs.setdefault(r, []).append(c)
    assert set(refs) == {"5.4-correct-negative", "5.4-all-negative", "5.4-misclassified-vanishes",
                         "5.4-best-strongest", "5.4-confidence"}
    assert len(refs["5.4-correct-negative"]) == 3 and len(refs["5.4-all-negative"]) == 3
    conf = refs["5.4-confidence"][0]
    invariant, rho = conf.parts()
    assert invariant.verdict == cl.HELD and invariant.evidence.n == 66  # 12 correct images: 66 pairs
    assert rho.verdict == cl.HELD and conf.verdict == cl.HELD  # confidence falls as the loss rises on all 24


def test_chapter_9_a_tie_in_the_confidence_breaks_the_invariant():
    fam = _ch09(_loss_table(tie=True))
    conf = [c for c in fam.claims if "5.4-confidence" in c.refs()][0]
    assert conf.parts()[0].verdict == cl.NOT_HELD and conf.verdict == cl.NOT_HELD
    assert conf.parts()[0].evidence.estimate.startswith("1 of 66")
