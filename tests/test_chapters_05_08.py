"""Chapters 5 to 8: the claims' verdicts on constructed data, orders under censoring, censored counts in tables."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from apem import claims as cl
from apem.chapters import ch05, ch06, ch07, ch08

METHODS = ("gradient", "smoothgrad", "lrp_epsilon")


# ----------------------------------------------------------------------------- chapter 5


def _filter(n_images: int, removed=0.5, undefined=(), lowered=(), stages=(1, 2)) -> pd.DataFrame:
    rows = []
    for i in range(n_images):
        for m in METHODS:
            for s in stages:
                und = (i, m) in undefined or i in undefined
                before = np.nan if und else 100.0 + i
                after = before - 5 if (i, m, s) in lowered else before + (i % 2)
                rows.append({"image_id": f"im{i}", "method": m, "stage": s, "map_row": i, "apem_before": before,
                             "apem_after": after, "steps": 0 if und else 10,
                             "removed_fraction": 0.0 if und else (removed(i, m) if callable(removed) else removed),
                             "seconds": 1.0, "censored_minus": False, "censored_plus": i == 0,
                             "label_name": "x", "defined": not und})
    return pd.DataFrame(rows)


def _family(claims, alpha=0.05):
    return cl.Claims(claims, alpha=alpha)


def test_filter_claims_use_one_value_per_image():
    F = _filter(12, removed=0.5)
    fam = _family(ch05.chapter_claims(F, 0.10))
    inv, loc, per_method = fam.claims
    assert inv.verdict == cl.HELD and inv.evidence.n == len(F)  # the invariant counts maps
    assert loc.evidence.n == 12  # the Location claim counts images, not the 72 maps
    assert loc.verdict == cl.HELD  # every image removes 50% > 10%: 2^-12 before Holm
    assert per_method.verdict == cl.HELD and [p.evidence.n for p in per_method.parts()] == [12, 12, 12]


def test_filter_that_removes_little_is_not_held_and_a_lowered_map_breaks_the_invariant():
    F = _filter(12, removed=0.01, lowered={(3, "smoothgrad", 2)})
    fam = _family(ch05.chapter_claims(F, 0.10))
    inv, loc, _ = fam.claims
    assert inv.verdict == cl.NOT_HELD and "1 of" in inv.evidence.estimate
    assert loc.verdict == cl.NOT_HELD


def test_constant_maps_leave_the_filter_claims_not_applicable():
    F = _filter(3, undefined=(0, 1, 2))
    fam = _family(ch05.chapter_claims(F, 0.10))
    assert [c.verdict for c in fam.claims] == [cl.NOT_APPLICABLE] * 3
    assert "no explanation to lose" in fam.claims[0].evidence.reason
    # one method constant everywhere: only its part is not applicable, and the constant maps are left out
    F = _filter(12, undefined={(i, "lrp_epsilon") for i in range(12)})
    fam = _family(ch05.chapter_claims(F, 0.10))
    parts = fam.claims[2].parts()
    assert [p.verdict for p in parts] == [cl.HELD, cl.HELD, cl.NOT_APPLICABLE]
    assert fam.claims[0].evidence.n == 12 * 2 * 2


def test_filter_summary_counts_undefined_and_censored_inputs():
    F = _filter(4, undefined={(1, "gradient")})
    S = ch05.filter_summary(F)
    row = S.loc[("Gradient", 1)]
    assert row["maps"] == 4 and row["undefined"] == 1 and row["censored input"] == 1
    assert row["APEM rose"] == "1 of 3"  # images 0, 2, 3 defined; 3 is odd
    assert "nan" not in S.to_string()


def test_apem_text_marks_bounds():
    assert ch05.apem_text(280.0) == "280"
    assert ch05.apem_text(280.0, censored_plus=True) == "≥ 280"
    assert ch05.apem_text(280.0, censored_minus=True) == "≤ 280"
    assert ch05.apem_text(np.nan) == "undefined"


# ----------------------------------------------------------------------------- chapter 6


def test_known_order_respects_censoring():
    x = [5, 5, 5, 10, 10, 10]
    y = [3, 3, 10, 10, 3, 10]
    sx = [0, -1, 0, 1, 1, 0]
    sy = [0, 0, 1, 1, 0, 0]
    got = ch06.known_order(x, sx, y, sy)
    # exact > exact; upper bound above: unknown; exact < lower bound: certain; both censored: unknown;
    # lower bound above exact: certain; exact tie
    np.testing.assert_array_equal(got, [1, np.nan, -1, np.nan, 1, 0])


def _correct(n: int, em_a, em_b, ep_a, ep_b, cens_plus_b=()) -> pd.DataFrame:
    rows = []
    for i in range(n):
        for m, em, ep in (("lrp_epsilon", em_a[i], ep_a[i]), ("smoothgrad", em_b[i], ep_b[i])):
            rows.append({"image_id": f"im{i}", "method": m, "stage": 3, "group": "correct",
                         "eps_minus": float(em), "eps_plus": float(ep), "apem": float(ep - em),
                         "censored_minus": False, "censored_plus": m == "smoothgrad" and i in cens_plus_b})
    return pd.DataFrame(rows)


def test_both_eps_plus_outcomes_common_is_held_on_a_balanced_sample():
    n = 40
    C = _correct(n, em_a=[1] * n, em_b=[5] * n, ep_a=[10 if i % 2 else 2 for i in range(n)], ep_b=[6] * n)
    fam = _family(ch06.chapter_claims(C, "lrp_epsilon", "smoothgrad", 0.10))
    both, ours = fam.claims
    assert both.verdict == cl.HELD and ours.source == cl.OURS
    # where LRP's eps-plus is worse (2 < 6), APEM says LRP has 1 vs SmoothGrad 1: a tie, so those images decide nothing
    assert ours.evidence.n == n // 2 and "0/20" in ours.evidence.estimate


def test_one_sided_eps_plus_outcome_is_not_held_and_censored_pairs_are_left_out():
    n = 80  # 0 of 77 worse: 0.9 ** 77 stays below alpha after Holm over three tests
    C = _correct(n, em_a=[1] * n, em_b=[5] * n, ep_a=[10] * n, ep_b=[6] * n, cens_plus_b={0, 1, 2})
    split = ch06.irrelevance_split(C, "lrp_epsilon", "smoothgrad")
    assert len(split) == n and int(split.better.isna().sum()) == 3  # 10 vs a lower bound 6: unknown
    fam = _family(ch06.chapter_claims(C, "lrp_epsilon", "smoothgrad", 0.10))
    both = fam.claims[0]
    assert both.parts()[0].verdict == cl.HELD and both.parts()[1].verdict == cl.NOT_HELD
    assert both.verdict == cl.NOT_HELD


def test_no_selected_image_is_not_applicable_and_flip_table_uses_exact_intervals():
    n = 6
    C = _correct(n, em_a=[9] * n, em_b=[5] * n, ep_a=[10] * n, ep_b=[6] * n)
    fam = _family(ch06.chapter_claims(C, "lrp_epsilon", "smoothgrad", 0.10))
    assert fam.claims[0].verdict == cl.NOT_APPLICABLE
    T = ch06.flip_table(C)
    # eps-minus picks SmoothGrad (5 < 9), APEM picks it too (1 vs -3... 10-9=1 < 6-5=1: tie) -> decided 0
    assert T.iloc[0]["images decided"] + T.iloc[0]["left out (tie or censored)"] == n
    lo, hi = ch06.exact_interval(0, 37)
    assert lo == 0 and hi == pytest.approx(1 - 0.025 ** (1 / 37))


# ----------------------------------------------------------------------------- chapter 7


def _shuffled(n: int, norm_gap=0.5, shuffle_apem=0.0, stages=(1, 2, 3), censor_all=()) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        for k, m in enumerate(("gradient", "lrp_epsilon", "smoothgrad")):
            for s in stages:
                sm, sp = 100.0, 100.0 + (shuffle_apem if i % 2 == 0 else 0.0)
                em = 50.0
                ep = sm * (em / sm + norm_gap * (3 - k) + rng.uniform(0, 0.01))
                c = i in censor_all
                rows.append({"image_id": f"im{i}", "method": m, "stage": s, "group": "correct",
                             "eps_minus": em, "eps_plus": ep, "eps_shuffle_minus": sm, "eps_shuffle_plus": sp,
                             "censored_minus": c, "censored_plus": c, "censored_shuffle_minus": c,
                             "censored_shuffle_plus": c, "apem": ep - em, "apem_shuffle": sp - sm,
                             "apem_norm_term": ep / sp - em / sm})
    return pd.DataFrame(rows)


def test_norm_claims_held_on_a_clear_order_and_ties():
    C = _shuffled(20)
    fam = _family(ch07.chapter_claims(C, [1, 2, 3], "gradient"))
    v = {c.text[:30]: c.verdict for c in fam.claims}
    assert all(x == cl.HELD for x in v.values()), fam.frame()[["claim", "verdict", "estimate"]]
    assert fam.claims[-1].source == cl.OURS and fam.claims[-2].source == cl.OURS


def test_shuffled_maps_that_never_tie_make_the_median_claim_not_held():
    C = _shuffled(20, shuffle_apem=30.0)
    C.loc[C.apem_shuffle == 0, ["eps_shuffle_plus", "apem_shuffle"]] = [90.0, -10.0]
    fam = _family(ch07.chapter_claims(C, [3], "gradient"))
    assert fam.claims[-1].verdict == cl.NOT_HELD


def test_rows_censored_both_ways_are_left_out_and_counted():
    C = _shuffled(6, censor_all={0, 1})
    fam = _family(ch07.chapter_claims(C, [3], "gradient"))
    assert fam.claims[0].parts()[0].evidence.n == 4
    t = ch07.table_5_1(C)
    assert (t["censored"] == 2).all() and t["mean"].str.endswith("(censored both ways: not a bound)").all()
    assert "thesis mean" in t and t.loc[("Gradient", 3), "thesis mean"] == "0.66"
    v = ch07.shuffled_view(C)
    assert v.loc[("Gradient", 3), "exactly 0"] == "4 of 4"


def test_with_sides_maps_flags_to_bounds():
    C = _shuffled(2)
    C.loc[0, "censored_shuffle_minus"] = True  # norm term: lower bound; shuffled APEM: upper bound
    n = ch07.with_sides(C, "apem_norm_term")
    s = ch07.with_sides(C, "apem_shuffle")
    assert n.loc[0, "censored_plus"] and not n.loc[0, "censored_minus"]
    assert s.loc[0, "censored_minus"] and not s.loc[0, "censored_plus"]


# ----------------------------------------------------------------------------- chapter 8


def _groups(n_c: int, n_m: int, ratio=0.3, order=("gradient", "lrp_epsilon", "smoothgrad")):
    rows, imgs = [], []
    for g, n, scale, conf in (("correct", n_c, 1.0, 0.9), ("misclassified", n_m, ratio, 0.5)):
        for i in range(n):
            iid = f"{g}{i}"
            imgs.append({"image_id": iid, "group": g, "confidence": conf + 0.001 * i})
            for k, m in enumerate(order):
                a = scale * (100.0 * (3 - k) + i)
                rows.append({"image_id": iid, "method": m, "stage": 3, "group": g, "correct": g == "correct",
                             "apem": a, "eps_minus": 10.0, "eps_plus": 10.0 + a,
                             "censored_minus": False, "censored_plus": g == "correct" and i == 0})
    return pd.DataFrame(rows), pd.DataFrame(imgs)


def test_misclassified_claims_held_when_lower_and_ordered():
    D, images = _groups(15, 10)
    fam = _family(ch08.chapter_claims(D, images))
    assert [c.verdict for c in fam.claims] == [cl.HELD] * 5
    assert fam.claims[0].evidence.n == 25  # different images, one value each


def test_a_swapped_order_on_misclassified_images_is_not_held():
    D, images = _groups(15, 10)
    M = ~D.correct
    D.loc[M & (D.method == "smoothgrad"), "apem"] += 1000.0
    fam = _family(ch08.chapter_claims(D, images))
    assert fam.claims[3].verdict == cl.NOT_HELD


def test_table_5_2_has_censored_counts_for_both_groups():
    D, _ = _groups(5, 4)
    t = ch08.table_5_2(D)
    assert t[("correct", "censored")].tolist() == [1, 1, 1]
    assert t[("misclassified", "censored")].tolist() == [0, 0, 0]
    assert t.loc["Gradient", ("correct", "mean")].startswith("≥")
    assert t.loc["Gradient", ("misclassified", "thesis mean")] == "43.58"


def test_chapter_7_says_whether_the_shuffled_baseline_is_the_thesis_estimator():
    from apem.config import Config

    thesis_like = Config(shuffles=10, shuffle_mode="per_step", search_mode="thesis")
    assert ch07.comparability(thesis_like).startswith("**Comparable with Table 5.1.**")
    default = Config(shuffles=3, shuffle_mode="fixed", search_mode="bisect")
    text = ch07.comparability(default)
    assert text.startswith("**Not the thesis's estimator")
    assert "3 permutations per map where the thesis used 10" in text and "larger in distribution" in text
    assert "drawn once per map and kept" in text and "`bisect` search" in text
    # each difference alone is named, and only it
    only_s = ch07.comparability(Config(shuffles=5, shuffle_mode="per_step", search_mode="thesis"))
    assert "5 permutations" in only_s and "drawn once" not in only_s and "search tests" not in only_s
