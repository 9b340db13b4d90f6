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


def test_zero_of_37_is_inconclusive_with_the_exact_interval():
    fam, c = _one(claims.Proportion("searches are monotone", outcomes=np.zeros(37, bool), threshold=0.05, above=False,
                               what="non-monotone searches"))
    assert c.verdict == claims.INCONCLUSIVE
    # Clopper-Pearson 95% for 0/37: [0, 1 - 0.025 ** (1/37)] = [0, 9.5%]
    assert "[0.0%, 9.5%]" in c.evidence.estimate
    assert c.evidence.p_for == pytest.approx(0.95 ** 37)
    # 0.95 ** 58 = 0.051 > 0.05 >= 0.95 ** 59: 59 images would decide it at the observed 0%
    assert c.evidence.needed == 59
    fam59, c59 = _one(claims.Proportion("x", outcomes=np.zeros(59, bool), threshold=0.05, above=False))
    assert c59.verdict == claims.HELD


def test_all_successes_above_a_threshold_and_the_opposite():
    _, c = _one(claims.Proportion("x", outcomes=np.ones(37, bool), threshold=0.95))
    assert c.verdict == claims.INCONCLUSIVE and c.evidence.needed == 59
    _, c = _one(claims.Proportion("x", outcomes=np.r_[np.zeros(30, bool), np.ones(2, bool)], threshold=0.5))
    assert c.verdict == claims.NOT_HELD


def test_holm_across_the_family_can_turn_held_into_inconclusive():
    # p = 0.95**59 = 0.0485 alone is held; beside a second test, Holm multiplies the smaller p by 2
    a = claims.Proportion("a", outcomes=np.zeros(59, bool), threshold=0.05, above=False)
    b = claims.Proportion("b", outcomes=np.zeros(200, bool), threshold=0.05, above=False)
    claims.Claims([a, b])
    assert b.p_for_adj == pytest.approx(2 * 0.95 ** 200)
    assert a.p_for_adj == pytest.approx(0.95 ** 59)  # max(2 * p_b, p_a)
    assert a.verdict == claims.HELD and b.verdict == claims.HELD
    c = claims.Proportion("c", outcomes=np.zeros(59, bool), threshold=0.05, above=False)
    d = claims.Proportion("d", outcomes=np.zeros(59, bool), threshold=0.05, above=False)
    claims.Claims([c, d])
    assert c.verdict == d.verdict == claims.INCONCLUSIVE  # 2 * 0.0485 > 0.05


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
    ])
    md = fam.markdown() + fam.discussion()
    assert "nan" not in md.lower().replace("mann", "")
    assert "exact one-sided binomial test" in md and "Holm" in md
    assert "➖ inconclusive" in md and "✅ held" in md and "⚪ not applicable" in md
    assert "59 images would be needed" in md or "about 59 images" in md
    assert "| ours |" in md and "| thesis |" in md
    f = fam.frame()
    assert list(f.verdict) == [claims.INCONCLUSIVE, claims.NOT_APPLICABLE, claims.HELD]


def test_fmt_never_prints_nan():
    assert claims.fmt(float("nan")) == "–" and claims.fmt(None) == "–" and claims.fmt(float("inf")) == "∞"
    assert claims.fmt_p(float("nan")) == "–" and claims.fmt_p(0.0001) == "< 0.001"


def test_the_table_says_whether_n_has_the_power_to_decide_each_claim():
    # 0/37 needs 59 images (the golden value above): n = 37 cannot decide it, 0/59 can
    short = claims.Proportion("short", outcomes=np.zeros(37, bool), threshold=0.05, above=False)
    enough = claims.Proportion("enough", outcomes=np.zeros(59, bool), threshold=0.05, above=False)
    null = claims.Paired("no effect", a=pd.Series(np.arange(10.0)), b=pd.Series(np.arange(10.0)))
    inv = claims.Invariant("checked", violations=0, n=3)
    fam = claims.Claims([short, enough, null, inv])
    md = fam.markdown()
    assert "| no: needs 59 |" in md and "| no effect seen |" in md
    assert md.count("| yes |") == 2  # the 59-image proportion and the invariant
    assert fam.power_summary() == {"claims": 4, "enough": 2, "short": 2, "max_needed": 59}
    assert "2 of the 4 testable thesis claims can be decided; 2 would need more images (up to 59" in fam.discussion()


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
    assert "Holm's correction over the 1 test of this chapter; the unit is the image" in tested.markdown()
