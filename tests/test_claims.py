"""The claims framework: exact intervals, Holm, verdicts, images needed, and what is printed."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from apem import claims


def _one(claim, **kw):
    fam = claims.Claims([claim], **kw)
    return fam, claim


def test_zero_of_37_cannot_be_decided_and_says_so_with_the_exact_interval():
    fam, c = _one(claims.Proportion("searches are monotone", outcomes=np.zeros(37, bool), threshold=0.05, above=False,
                               what="non-monotone searches"))
    # alone in its family, Holm over its two one-sided p-values doubles the smallest: 2 * 0.95^37 = 0.30, so no
    # 37 images could show the share below 5%; 37 images above 5% would refute it, so it is tested, and, not
    # refuted, it is undecidable rather than inconclusive
    assert c.verdict == claims.NOT_APPLICABLE and c.evidence.undecidable and fam.m == 1
    assert c.evidence.p_min == pytest.approx(0.95 ** 37) and c.p_best == pytest.approx(2 * 0.95 ** 37)
    assert ("undecidable at this n: on 37 images its test's smallest p for the claim is 0.15, at best 0.3 after "
            "Holm's correction, not below α = 0.05; it could only have been refuted, and was not") in c.evidence.reason
    # the same size refutes it when the data point the other way
    _, bad = _one(claims.Proportion("x", outcomes=np.r_[np.ones(10, bool), np.zeros(27, bool)], threshold=0.05,
                                    above=False))
    assert bad.verdict == claims.NOT_HELD
    # the evidence is still shown: Clopper-Pearson 95% for 0/37 is [0, 1 - 0.025 ** (1/37)] = [0, 9.5%]
    assert "[0.0%, 9.5%]" in c.evidence.estimate and "[0.0%, 9.5%]" in fam.markdown()
    assert c.evidence.p_for == pytest.approx(0.95 ** 37)
    # images needed, one-sided before Holm: 0.95 ** 58 = 0.051 > 0.05 >= 0.95 ** 59
    assert c.evidence.needed == 59
    # decidable alone from 2 * 0.95^n < 0.05: 0.95^71 * 2 = 0.0524, 0.95^72 * 2 = 0.0498
    _, c71 = _one(claims.Proportion("x", outcomes=np.zeros(71, bool), threshold=0.05, above=False))
    _, c72 = _one(claims.Proportion("x", outcomes=np.zeros(72, bool), threshold=0.05, above=False))
    assert c71.verdict == claims.NOT_APPLICABLE and c72.verdict == claims.HELD
    assert c72.p_for_adj == pytest.approx(2 * 0.95 ** 72)


def test_all_successes_above_a_threshold_and_the_opposite():
    _, c = _one(claims.Proportion("x", outcomes=np.ones(37, bool), threshold=0.95))
    assert c.verdict == claims.NOT_APPLICABLE and c.evidence.undecidable and c.evidence.needed == 59
    _, c = _one(claims.Proportion("x", outcomes=np.r_[np.zeros(30, bool), np.ones(2, bool)], threshold=0.5))
    assert c.verdict == claims.NOT_HELD


def test_holm_runs_over_both_directions_together():
    # two claims, four one-sided p-values in one family: 2^-10 = 0.00098 (10 images, all one way), 0.95^90 =
    # 0.0099 (0 of 90), and their opposites, 1 each. Holm: 4 * 0.00098 = 0.0039, max(0.0039, 3 * 0.0099) = 0.030
    x = pd.Series(np.arange(10.0))
    a = claims.Paired("a", a=x + 1, b=x)
    b = claims.Proportion("b", outcomes=np.zeros(90, bool), threshold=0.05, above=False)
    fam = claims.Claims([a, b])
    assert fam.m == 2
    assert a.p_for_adj == pytest.approx(4 / 1024) and b.p_for_adj == pytest.approx(3 * 0.95 ** 90)
    assert a.p_against_adj == pytest.approx(1.0) and b.p_against_adj == pytest.approx(1.0)
    np.testing.assert_allclose(claims.holm([2 ** -10, 0.95 ** 90, 1.0, 1.0])[:2], [a.p_for_adj, b.p_for_adj])
    # separate families for and against would have given b 2 * 0.0099 = 0.020: the joint family is stricter
    assert a.verdict == b.verdict == claims.HELD
    assert "4 one-sided p-values in one family" in fam.markdown()


def test_a_claim_no_data_could_decide_is_left_out_before_its_p_values_are_read():
    ids = [f"i{k}" for k in range(6)]
    up = pd.Series(np.arange(6.0) + 1, index=ids)
    base = pd.Series(np.arange(6.0), index=ids)
    # 6 images: smallest one-sided p 2^-6; alone the best Holm p is 2 * 2^-6 = 0.031 < 0.05
    _, c = _one(claims.Paired("a > b", a=up, b=base))
    assert c.verdict == claims.HELD and c.p_best == pytest.approx(2 / 64)
    # 5 images: 2 * 2^-5 = 0.0625 whatever the data: undecidable, even though every image agrees
    _, c = _one(claims.Paired("a > b", a=up.iloc[:5], b=base.iloc[:5]))
    assert c.verdict == claims.NOT_APPLICABLE and c.evidence.undecidable
    # claims on 10, 6 and 6 images: (k + 1) p_min < 0.05 keeps 2^-10 and the first 1/64 (3/64 = 0.047); with
    # the third, 4/64 = 0.0625 would be its best: it is left out, the first two declared are kept
    ten = pd.Series(np.arange(10.0))
    fam = claims.Claims([claims.Paired("c10", a=ten + 1, b=ten)] + [claims.Paired(f"c{j}", a=up, b=base)
                                                                    for j in range(2)])
    assert [c.verdict for c in fam] == [claims.HELD, claims.HELD, claims.NOT_APPLICABLE] and fam.m == 2
    assert fam.claims[1].p_for_adj == pytest.approx(3 / 64) and fam.claims[2].p_best == pytest.approx(4 / 64)
    # the discussion counts them apart from the inconclusive ones
    assert "1 could not be tested (1 of them because no data of its size could decide them)" in fam.discussion()
    _, alone = _one(claims.Paired("five", a=up.iloc[:5], b=base.iloc[:5]))
    assert "no claim can be decided at these sizes, so no test is run" in claims.Claims([alone]).markdown()
    # a compound with an undecidable part can never hold
    both = claims.AllOf("both", of=[claims.Paired("p1", a=up, b=base), claims.Paired("p2", a=up.iloc[:5],
                                                                                      b=base.iloc[:5])])
    claims.Claims([both])
    assert both.verdict == claims.NOT_APPLICABLE and "p2 cannot be decided" in both.evidence.reason


def test_smallest_p_of_each_test_at_its_n():
    sp = claims.kinds.smallest_p
    assert sp("binomial", 4, threshold=0.05, above=False) == pytest.approx(0.95 ** 4)
    assert sp("binomial", 4, threshold=0.05, above=True) == pytest.approx(0.05 ** 4)
    assert sp("wilcoxon", 8) == sp("sign", 8) == 2 ** -8
    assert sp("mann-whitney", 2, 14) == pytest.approx(1 / 120)  # C(16, 2)
    assert sp("spearman", 5) == pytest.approx(1 / 120) and sp("spearman-two-sided", 5) == pytest.approx(1 / 60)
    # the tests reach them: all differences positive, two groups separated, a perfect ordering
    x = pd.Series(np.arange(8.0))
    _, c = _one(claims.Paired("a > b", a=x + 1, b=x))
    assert c.evidence.p_for == pytest.approx(2 ** -8)
    _, c = _one(claims.TwoGroups("a > b", a=[20.0, 21.0], b=np.arange(14.0)))
    assert c.evidence.p_for == pytest.approx(1 / 120)
    _, c = _one(claims.Correlation("rho > 0", x=np.arange(5.0), y=np.arange(5.0)))
    assert c.evidence.p_for == pytest.approx(1 / 120)  # exact permutation test, not Student's t (p = 0)
    assert c.verdict == claims.HELD  # (1 + 1) / 120 < 0.05


def test_an_inconclusive_claim_says_which_way_the_data_lean():
    ids = [f"i{k}" for k in range(8)]
    x = pd.Series(np.arange(8.0), index=ids)
    against = claims.Paired("a > b", a=x - np.r_[1, 1, 1, 1, 1, -1, 1, 1], b=x)  # 7 of 8 the other way
    towards = claims.Paired("b > a", a=x, b=x - np.r_[1, 1, 1, 1, 1, -1, 1, 1] * 0.1)
    fam = claims.Claims([against, towards])
    text = fam.discussion()
    assert against.verdict == towards.verdict == claims.INCONCLUSIVE
    assert "*a > b* was inconclusive (the data lean against it)" in text
    assert "*b > a* was inconclusive (the data lean towards it)" in text
    assert "a different model" not in text


def test_paired_exact_wilcoxon_and_its_direction():
    ids = [f"i{k}" for k in range(10)]
    b = pd.Series(np.arange(10.0), index=ids)
    a = b + np.linspace(1, 2, 10)
    _, c = _one(claims.Paired("a > b", a=a, b=b))
    assert c.evidence.p_for == pytest.approx(1 / 1024)  # every difference positive: exact null 2^-10
    assert c.verdict == claims.HELD
    _, c = _one(claims.Paired("b > a", a=b, b=a))
    assert c.verdict == claims.NOT_HELD
    _, c = _one(claims.Paired("a < b", a=a, b=b, greater=False))
    assert c.verdict == claims.NOT_HELD
    # pairs are matched by image, not by position
    _, c = _one(claims.Paired("a > b", a=a, b=b.iloc[::-1]))
    assert c.evidence.p_for == pytest.approx(1 / 1024)


def test_ties_everywhere_are_not_a_pass():
    s = pd.Series([3.0] * 8, index=range(8))
    _, c = _one(claims.Paired("a > b", a=s, b=s))
    assert c.verdict == claims.INCONCLUSIVE and c.evidence.needed == math.inf


def test_sign_test_and_images_needed():
    a = pd.Series([1.0] * 7 + [0.0] * 3)
    b = pd.Series([0.0] * 7 + [1.0] * 3)
    _, c = _one(claims.Paired("a > b", a=a, b=b, test="sign"))
    assert c.evidence.p_for == pytest.approx(sum(math.comb(10, k) for k in range(7, 11)) / 1024)
    assert c.verdict == claims.INCONCLUSIVE and c.evidence.needed > 10


def test_one_value_per_image_is_enforced():
    s = pd.Series([1.0, 2.0], index=["a", "a"])
    with pytest.raises(ValueError, match="one value per image"):
        claims.Claims([claims.Location("x", values=s)])
    df = pd.DataFrame({"image_id": ["a", "a", "b"], "v": [1.0, 3.0, 5.0]})
    assert claims.per_image(df, "v").to_dict() == {"a": 2.0, "b": 5.0}


def test_location_two_groups_correlation():
    rng = np.random.default_rng(0)
    _, c = _one(claims.Location("above 0", values=rng.normal(1, 0.5, 30)))
    assert c.verdict == claims.HELD and "median" in c.evidence.estimate
    _, c = _one(claims.TwoGroups("a > b", a=rng.normal(2, 1, 20), b=rng.normal(0, 1, 20)))
    assert c.verdict == claims.HELD
    x = np.arange(20.0)
    _, c = _one(claims.Correlation("negative", x=x, y=-x + rng.normal(0, 1, 20), negative=True))
    assert c.verdict == claims.HELD
    # Bonett-Wright at the observed rho
    r = float(c.evidence.estimate.split("= ")[1].split(" ")[0])
    want = math.ceil((1 + r * r / 2) * ((1.6448536 + 0.8416212) / math.atanh(abs(r))) ** 2 + 3)
    assert abs(c.evidence.needed - want) <= 1  # r printed to 2 digits


def test_not_applicable_is_never_held():
    _, c = _one(claims.Correlation("x", x=np.ones(10), y=np.arange(10.0)))
    assert c.verdict == claims.NOT_APPLICABLE
    _, c = _one(claims.Paired("randomised maps", a=[1.0, 2.0], b=[0.0, 0.0], applicable=False,
                         reason="every randomised map is constant"))
    assert c.verdict == claims.NOT_APPLICABLE
    _, c = _one(claims.Location("no data", values=[]))
    assert c.verdict == claims.NOT_APPLICABLE


def test_invariant_and_all_of():
    fam = claims.Claims([claims.Invariant("never lowers", violations=0, n=18),
                    claims.Invariant("never lowers 2", violations=1, n=18)])
    assert [c.verdict for c in fam] == [claims.HELD, claims.NOT_HELD]
    assert fam.m == 0
    x = pd.Series(np.arange(10.0))
    parts = [claims.Paired("p1", a=x + 1, b=x), claims.Paired("p2", a=x, b=x)]
    both = claims.AllOf("all", of=parts)
    fam = claims.Claims([both])
    assert fam.m == 2 and parts[0].verdict == claims.HELD and parts[1].verdict == claims.INCONCLUSIVE
    assert both.verdict == claims.INCONCLUSIVE
    both = claims.AllOf("all", of=[claims.Paired("p1", a=x + 1, b=x), claims.Paired("p3", a=x, b=x + 1)])
    claims.Claims([both])
    assert both.verdict == claims.NOT_HELD


def test_the_page_shows_rules_verdicts_and_no_nan():
    fam = claims.Claims([
        claims.Proportion("monotone", outcomes=np.zeros(37, bool), threshold=0.05, above=False, source=claims.OURS),
        claims.Correlation("const", x=np.ones(5), y=np.arange(5.0)),
        claims.Paired("a > b", a=pd.Series(np.arange(10.0) + 1), b=pd.Series(np.arange(10.0))),
        claims.Paired("a = b", a=pd.Series(np.arange(10.0)), b=pd.Series(np.arange(10.0))),
    ])
    md = fam.markdown() + fam.discussion()
    assert "nan" not in md.lower().replace("mann", "")
    assert "exact one-sided binomial test" in md and "Holm" in md
    assert "➖ inconclusive" in md and "✅ held" in md and "⚪ not applicable" in md
    assert "undecidable at this n" in md  # 0/37 could never be held (see above)
    assert "| ours |" in md and "| thesis |" in md
    f = fam.frame()
    assert list(f.verdict) == [claims.NOT_APPLICABLE, claims.NOT_APPLICABLE, claims.HELD, claims.INCONCLUSIVE]


def test_fmt_never_prints_nan():
    assert claims.fmt(float("nan")) == "–" and claims.fmt(None) == "–" and claims.fmt(float("inf")) == "∞"
    assert claims.fmt_p(float("nan")) == "–" and claims.fmt_p(0.0001) == "< 0.001"


def test_the_table_says_whether_n_has_the_power_to_decide_each_claim():
    # 0/100 against 5%: 59 images give 80% power at the observed 0% (the golden value above); 6 up and 4 down
    # on 10 images is a small effect that needs many more
    short = claims.Paired("short", a=pd.Series(np.arange(10.0) + np.r_[1, 1, 1, 1, 1, 1, -1, -1, -1, -1]),
                          b=pd.Series(np.arange(10.0)), test="sign")
    enough = claims.Proportion("enough", outcomes=np.zeros(100, bool), threshold=0.05, above=False)
    null = claims.Paired("no effect", a=pd.Series(np.arange(10.0)), b=pd.Series(np.arange(10.0)))
    inv = claims.Invariant("checked", violations=0, n=3)
    fam = claims.Claims([short, enough, null, inv])
    md = fam.markdown()
    need = short.evidence.needed
    assert enough.evidence.needed == 59 and need > 10
    assert f"| no: needs {need:,.0f} |" in md and "| no effect seen |" in md
    assert md.count("| yes |") == 2  # the 100-image proportion and the invariant
    assert fam.power_summary() == {"claims": 4, "enough": 2, "short": 2, "max_needed": need}
    assert (f"2 of the 4 testable thesis claims can be decided; 2 would need more images (up to {need:,.0f}"
            in fam.discussion())


def test_holm_adjustment_by_hand():
    adj = claims.holm([0.01, 0.04, 0.03, np.nan, 0.5])
    # m = 4: 0.01*4 = 0.04, 0.03*3 = 0.09, 0.04*2 = 0.08 -> monotone 0.09, 0.5*1 = 0.5
    np.testing.assert_allclose(adj[[0, 2, 1, 4]], [0.04, 0.09, 0.09, 0.5])
    assert np.isnan(adj[3])


def test_a_claim_on_a_method_the_configuration_lacks_is_not_applicable_and_says_which():
    df = pd.DataFrame({"image_id": [f"i{k}" for k in range(8)] * 2, "method": ["gradient"] * 8 + ["smoothgrad"] * 8,
                       "apem": list(range(10, 18)) + list(range(8))})
    per = claims.per_group(df, "apem")
    assert list(per) == ["gradient", "smoothgrad"] and per["gradient"].index[0] == "i0"
    fam = claims.Claims([claims.Paired("G > SG", a=per["gradient"], b=per["smoothgrad"]),
                         claims.Paired("G > LRP", a=per["gradient"], b=per["lrp_epsilon"])])
    assert [c.verdict for c in fam] == [claims.HELD, claims.NOT_APPLICABLE]
    assert fam.claims[1].evidence.reason == "the configuration lacks LRP-ε"
    assert fam.m == 1  # the inapplicable claim is not in Holm's family


def test_a_family_of_checked_claims_says_so_and_counts_one_item_in_the_singular():
    fam = claims.Claims([claims.Invariant("one", violations=0, n=1, what="searches"),
                         claims.Invariant("many", violations=0, n=3, what="maps with a defined APEM")])
    md = fam.markdown() + fam.discussion()
    assert fam.m == 0 and "over the 0 tests" not in md and "no test, so no Holm's correction" in md
    assert "| 1 search |" in md and "0 of 1 search violates it" in md and "held on 1 search (" in md
    assert "| 3 maps with a defined APEM |" in md and "0 of 3 maps with a defined APEM violate it" in md
    assert "the unit is the image" not in md  # nothing here is counted in images
    # the power column is named for what it says (not "n decides?", which read as "undecided")
    assert "| power at this n |" in md and "decides?" not in md
    tested = claims.Claims([claims.Paired("a > b", a=pd.Series(np.arange(10.0) + 1), b=pd.Series(np.arange(10.0)))])
    assert ("Holm's correction over the 1 test of this chapter, each tested for and against the claim: 2 one-sided "
            "p-values in one family" in tested.markdown() and "; the unit is the image" in tested.markdown())
