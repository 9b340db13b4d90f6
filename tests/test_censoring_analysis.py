"""Censoring analysed as censoring: the restricted mean, Kaplan-Meier, and the claims' sensitivity check."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from apem import claims, stats


def test_restricted_mean_and_kaplan_meier_of_a_sample_censored_at_the_bound():
    # three searches flip at 1, 2, 3; two reach the bound 10 without a flip. Kaplan-Meier: S = 0.8 on [1, 2),
    # 0.6 on [2, 3), 0.4 on [3, 10]; the area up to 10 is 1 + 0.8 + 0.6 + 0.4 * 7 = 5.2 = mean(1, 2, 3, 10, 10)
    v, c = [1.0, 2.0, 3.0, 10.0, 10.0], [False, False, False, True, True]
    assert stats.restricted_mean(v, c, bound=10) == pytest.approx(5.2)
    assert stats.restricted_mean(v, c, bound=3) == pytest.approx(1 + 0.8 + 0.6)  # the area up to 3
    assert stats.kaplan_meier_median(v, c) == 3.0  # S falls to 0.4 <= 1/2 at 3
    # more than half censored: the median is only known to be at least the bound
    assert stats.kaplan_meier_median([1.0, 10.0, 10.0], [False, True, True]) == np.inf
    # the survival function itself
    km = stats.kaplan_meier(v, c)
    np.testing.assert_allclose(km.sf.evaluate([0.5, 1, 2.5, 9.9]), [1.0, 0.8, 0.6, 0.4])


def test_the_summary_mean_is_the_restricted_mean_and_apem_the_difference_of_two():
    # the fast path (the mean of the stored values) against its Kaplan-Meier twin, on random censored data
    rng = np.random.default_rng(3)
    bound = 100.0
    eps_minus = np.minimum(rng.exponential(20, 200).round() + 1, bound)
    eps_plus = np.minimum(rng.exponential(80, 200).round() + 1, bound)
    df = pd.DataFrame({"method": "m", "eps_minus": eps_minus, "eps_plus": eps_plus,
                       "censored_minus": eps_minus == bound, "censored_plus": eps_plus == bound})
    df["apem"] = df.eps_plus - df.eps_minus
    assert df.censored_plus.sum() > 10  # the check has censoring to see
    S = stats.summary_table(df, by="method", value="eps_plus", ci=False)
    assert S.loc["m", "mean"] == pytest.approx(stats.restricted_mean(df.eps_plus, df.censored_plus, bound))
    A = stats.summary_table(df, by="method", value="apem", ci=False)
    assert A.loc["m", "mean"] == pytest.approx(stats.restricted_mean(df.eps_plus, df.censored_plus, bound)
                                               - stats.restricted_mean(df.eps_minus, df.censored_minus, bound))


def _images(n):
    return [f"i{k}" for k in range(n)]


@pytest.mark.slow  # over 3 s: left out of `make test-fast`
def test_a_claim_declares_its_censored_images_and_the_table_shows_whether_its_verdict_survives():
    ids = _images(12)
    b = pd.Series(np.arange(12.0), index=ids)
    # a > b on 8 images by 1; on the 4 censored ones (a at the bound) by a lot
    a = b + np.r_[np.ones(8), np.full(4, 50.0)]
    cens = pd.Series([False] * 8 + [True] * 4, index=ids)
    robust = claims.Paired("robust", a=a, b=b, censored=cens)
    # on 16 images, c > b only on the 12 censored ones; the 4 others lean the other way
    ids16 = _images(16)
    b16 = pd.Series(np.arange(16.0), index=ids16)
    c = b16 + np.r_[-np.ones(4), np.full(12, 50.0)]
    fragile = claims.Paired("fragile", a=c, b=b16, censored=pd.Series([False] * 4 + [True] * 12, index=ids16))
    plain = claims.Paired("no censoring", a=a, b=b)
    fam = claims.Claims([robust, fragile, plain])
    assert robust.verdict == claims.HELD and robust.verdict_without_censored == claims.HELD
    assert fragile.verdict == claims.HELD and fragile.verdict_without_censored == claims.NOT_APPLICABLE  # 4 images
    assert plain.verdict_without_censored == plain.verdict  # nothing to leave out
    md = fam.markdown()
    assert "| censored images left out |" in md and "(8 images), the same" in md and "| no censored image |" in md
    assert "enter every claim at the bound" in md
    text = fam.discussion()
    assert "*fragile* would be not applicable instead of held" in text and "*robust* would" not in text
    # a family without censored images shows no such column
    assert "censored images left out" not in claims.Claims([claims.Paired("x", a=a, b=b)]).markdown()


def test_censored_of_reads_the_flags_per_method_and_image():
    df = pd.DataFrame({"image_id": ["a", "b", "a", "b"], "method": ["g", "g", "s", "s"],
                       "apem": [1.0, 2.0, 3.0, 4.0], "eps_minus": [1.0] * 4, "eps_plus": [2.0] * 4,
                       "censored_minus": [False, False, True, False], "censored_plus": [False, True, False, False]})
    cen = claims.censored_of(df, "apem")
    assert cen["g"].to_dict() == {"a": False, "b": True} and cen["s"].to_dict() == {"a": True, "b": False}
    assert claims.censored_of(df, "eps_plus")["s"].to_dict() == {"a": False, "b": False}
    # a method the configuration lacks makes the claim not applicable, as its values would
    c = claims.Paired("x", a=cen["g"].astype(float), b=cen["s"].astype(float), censored=[cen["g"], cen["lrp"]])
    claims.Claims([c])
    assert c.verdict == claims.NOT_APPLICABLE and "lacks" in c.evidence.reason
