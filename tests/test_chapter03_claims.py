"""Chapter 3's claims on every thesis statement of section 4.3 (and 3.1, 3.3), on tables whose answers are known.

The page's own claims cell is run (:func:`pages.run_cells`) on small synthetic tables: the thesis's order
on every pair, the gap, the upsets of Table 4.3 for any pair, and the size of the flipping perturbation.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from apem import claims as cl
from apem import metric
from apem.chapters import ch03


def _row(i, m, em, ep, **kw):
    return {"image_id": f"im{i:03d}", "label_name": f"class {i}", "group": "correct", "method": m, "stage": 3,
            "eps_minus": float(em), "eps_plus": float(ep), "apem": float(ep - em), "censored_minus": False,
            "censored_plus": False, **kw}


def _table(n: int = 60, k: int = 12, small: bool = True) -> pd.DataFrame:
    """``n`` images in the thesis's order (Gradient 90 > LRP-ε 70 > SmoothGrad 50 by APEM) except two sets of ``k``:

    * images 0 .. k-1, Table 4.3a: LRP-ε beats the Gradient on a low APEM; with ``small``, by one step with the
      same ε⁺ (Gradient ε 10 / 12, LRP-ε 9 / 12), else by 50 steps with another ε⁺ (LRP-ε 9 / 61); SmoothGrad
      below both (30 / 11: an APEM below 0);
    * images k .. 2k-1, Table 4.3b: SmoothGrad beats LRP-ε; with ``small``, on both epsilons (15 / 95 against
      20 / 90), else only on APEM, with a worse ε⁻ (25 / 100).
    """
    rows = []
    for i in range(n):
        g, l, s = (10, 100), (20, 90), (30, 80)
        if i < k:
            g, l, s = (10, 12), ((9, 12) if small else (9, 61)), (30, 11)
        elif i < 2 * k:
            s = (15, 95) if small else (25, 100)
        rows += [_row(i, "gradient", *g), _row(i, "lrp_epsilon", *l), _row(i, "smoothgrad", *s)]
    return pd.DataFrame(rows)


def _claims(C: pd.DataFrame) -> cl.Claims:
    from pages import run_cells

    return cl.Claims(run_cells(3, "claims", C=C)["chapter_claims"])


def _by_ref(fam: cl.Claims, key: str) -> cl.Claim:
    (c,) = [c for c in fam.claims if key in c.refs()]
    return c


# ----------------------------------------------------------------------------- the upsets of any pair (Table 4.3)


def test_pair_upsets_of_any_pair_largest_margin_first():
    C = _table(20, k=3)
    C.loc[(C.image_id == "im001") & (C.method == "lrp_epsilon"), ["eps_plus", "apem"]] = [14.0, 5.0]  # by 3 steps
    U = ch03.pair_upsets(C, "gradient", "lrp_epsilon")
    assert list(U.image_id) == ["im001", "im001", "im000", "im000", "im002", "im002"]  # margin 3, then ties in order
    assert list(U.method[:2]) == ["gradient", "lrp_epsilon"] and set(U.comparison) == {"LRP-ε beats Gradient"}
    assert len(ch03.pair_upsets(C, "gradient", "lrp_epsilon", n=1)) == 2
    assert len(ch03.pair_upsets(C, "lrp_epsilon", "gradient")) == 2 * 17  # the reverse pair: every other image
    assert ch03.pair_upsets(C, "gradient", "smoothgrad").empty  # SmoothGrad never beats the Gradient here
    assert ch03.pair_upsets(C, "gradient", "integrated_gradients").empty  # a method the table lacks
    both = ch03.upsets_for(C, [("gradient", "lrp_epsilon"), ("lrp_epsilon", "smoothgrad")], n=2)
    assert list(dict.fromkeys(both.comparison)) == ["LRP-ε beats Gradient", "SmoothGrad beats LRP-ε"]
    assert set(both[both.comparison == "SmoothGrad beats LRP-ε"].image_id) == {"im003", "im004"}
    assert ch03.upset_counts(C, [("gradient", "lrp_epsilon"), ("lrp_epsilon", "smoothgrad"), ("gradient", "lrp")]) == (
        "LRP-ε beat Gradient on 3 of 20 images; SmoothGrad beat LRP-ε on 3 of 20 images; "
        "LRP against Gradient: not in this configuration")
    # the old per-winner table is the same thing, winner against each other method
    assert ch03.upsets(C, "gradient", n=3).equals(ch03.upsets_for(C, [("gradient", "lrp_epsilon"),
                                                                      ("gradient", "smoothgrad")], 3))
    B = ch03.upsets_beside_thesis(both)
    assert set(B.xs("ours", level="table").index.get_level_values("comparison")) == {
        "LRP-ε beats Gradient", "SmoothGrad beats LRP-ε"}


def test_upset_values_are_the_per_image_outcomes_of_table_4_3():
    C = _table(20, k=3)
    C.loc[(C.image_id == "im001") & (C.method == "lrp_epsilon"), ["eps_plus", "apem"]] = [14.0, 5.0]
    v = ch03.upset_values(C, "gradient", "lrp_epsilon", within=1)
    assert int(v["b_above"].sum()) == 3 and v["b_above"].size == 20
    assert v["diff"].to_dict() == {"im000": 1.0, "im001": 3.0, "im002": 1.0}
    assert v["within"].to_dict() == {"im000": True, "im001": False, "im002": True}
    assert v["plus_equal"].to_dict() == {"im000": True, "im001": False, "im002": True}  # 12 against 14
    assert list(v["a_upsets"]) == [2.0, 2.0, 2.0] and len(v["a_others"]) == 17 and set(v["a_others"]) == {90.0}
    s = ch03.upset_values(C, "lrp_epsilon", "smoothgrad")
    assert s["both_eps"].to_dict() == {"im003": True, "im004": True, "im005": True}
    assert not ch03.upset_values(C, "gradient", "lrp_epsilon")["censored"].any()
    lacking = ch03.upset_values(C[C.method != "lrp_epsilon"], "gradient", "lrp_epsilon")
    assert isinstance(lacking["within"], cl.Missing) and lacking["b_above"].what == "LRP-ε"
    assert ch03.upset_sentence(C) == ("LRP-ε beat Gradient on 3 of 20 images; there the APEMs differed by a median "
                                      "of 1 steps and at most 3 (the thesis: at most 1, in its three examples), and "
                                      "the two ε⁺ were equal on 2 of them.")
    assert ch03.upset_sentence(C[C.image_id >= "im003"]).endswith("on none of the 17 images.")


# ----------------------------------------------------------------------------- the claims


def test_the_thesis_order_on_every_pair_the_gap_and_table_4_3_hold_where_built_to():
    fam = _claims(_table(60, k=12))
    held = {k: _by_ref(fam, k).verdict for k in (
        "4.3-gradient-over-lrp", "4.3-gradient-over-smoothgrad", "4.3-lrp-over-smoothgrad", "4.3-eps-minus-order",
        "4.3-eps-plus-order", "4.3-pairwise", "3.1-gap", "4.3a-small-difference", "4.3a-eps-plus-equal",
        "4.3a-low-apem", "4.3b-both-eps")}
    assert held == {k: cl.HELD for k in held}
    for key in ("4.3-eps-minus-order", "4.3-eps-plus-order", "4.3-pairwise"):
        c = _by_ref(fam, key)
        assert isinstance(c, cl.AllOf) and len(c.parts()) == 3, key  # every pair of the thesis's order
    assert [p.test for p in _by_ref(fam, "4.3-pairwise").parts()] == ["sign"] * 3
    assert len(_by_ref(fam, "3.1-gap").parts()) == 3  # every method
    # 12 upsets of 60 is 20%, above "rare" (10%), but one-sided p = 0.007 does not survive Holm over the family
    rare = _by_ref(fam, "4.3-gradient-below-lrp-rare")
    assert rare.verdict == cl.INCONCLUSIVE and rare.evidence.estimate.startswith("12/60 images")
    # no stage maps were read: the size of the perturbation is not applicable, not a vacuous pass
    assert _by_ref(fam, "3.3-imperceptible").verdict == cl.NOT_APPLICABLE


def test_table_4_3_claims_fail_when_the_upsets_are_not_the_thesiss():
    fam = _claims(_table(60, k=12, small=False))
    for key in ("4.3a-small-difference", "4.3a-eps-plus-equal", "4.3b-both-eps"):
        assert _by_ref(fam, key).verdict == cl.NOT_HELD, key  # 0 of 12 upsets: the exact test refutes "most"
        assert _by_ref(fam, key).evidence.estimate.startswith("0/12 upsets"), key
    assert _by_ref(fam, "4.3a-low-apem").verdict == cl.HELD  # still on low-APEM images


def test_rare_upsets_hold_and_no_upsets_leave_the_upset_claims_not_applicable():
    fam = _claims(_table(120, k=0))
    assert _by_ref(fam, "4.3-gradient-below-lrp-rare").verdict == cl.HELD  # 0/120: p = 0.9^120
    assert _by_ref(fam, "4.3-gradient-below-lrp-rare").evidence.estimate.startswith("0/120 images")
    for key in ("4.3a-small-difference", "4.3a-eps-plus-equal", "4.3a-low-apem", "4.3b-both-eps"):
        assert _by_ref(fam, key).verdict == cl.NOT_APPLICABLE, key
    often = _by_ref(_claims(_table(60, k=20)), "4.3-gradient-below-lrp-rare")  # 20/60 = 33%: refuted
    assert often.verdict == cl.NOT_HELD and often.evidence.estimate.startswith("20/60 images")


def test_a_negative_gap_is_not_held_and_every_method_counts():
    C = _table(30, k=0)
    C.loc[C.method == "smoothgrad", "eps_plus"] = C.loc[C.method == "smoothgrad", "eps_minus"] - 5
    C["apem"] = C.eps_plus - C.eps_minus
    gap = _by_ref(_claims(C), "3.1-gap")
    assert gap.verdict == cl.NOT_HELD
    assert [p.verdict for p in gap.parts()] == [cl.HELD, cl.HELD, cl.NOT_HELD]


# ----------------------------------------------------------------------------- the flipping perturbation (section 3.3)


class _Res:
    """What :func:`ch03.per_step_sizes` reads: ``map(image_id, method, stage)``."""

    def __init__(self, maps: dict):
        self.maps = maps

    def map(self, image_id, method, stage):
        return self.maps[(image_id, method)]


def test_flip_size_is_perturbation_size_at_eps_minus():
    g = torch.Generator().manual_seed(0)
    C = pd.DataFrame([_row(i, m, 3 + 7 * i + j, 500) for i in range(5) for j, m in enumerate(("gradient", "smoothgrad"))])
    maps = {(r.image_id, r.method): torch.rand(1, 6, 6, generator=g) for r in C.itertuples()}
    maps[("im002", "gradient")] = torch.zeros(1, 6, 6)  # undefined: no direction
    per = ch03.per_step_sizes(_Res(maps), C, batch=3)
    assert per.index.equals(C.index)
    stacked = torch.stack([maps[(r.image_id, r.method)] for r in C.itertuples()])
    want = metric.perturbation_size(stacked, torch.tensor(C.eps_minus.to_numpy()))
    got = ch03.flip_size(C.join(per), threshold=8.0)
    ok = ~torch.isnan(want["max_change"]).numpy()
    np.testing.assert_allclose(got.max_change.to_numpy()[ok], 255 * want["max_change"].numpy()[ok], rtol=1e-12)
    np.testing.assert_allclose(got.psnr.to_numpy()[ok], want["psnr"].numpy()[ok], rtol=1e-12)
    assert got.max_change.isna().tolist() == (~ok).tolist() and got.imperceptible.isna().tolist() == (~ok).tolist()
    # a uniform map over 3 x 6 x 6 values: each changes by eps / 108; 8/255 allows eps up to 108 * 8 / 255 = 3.39
    C2 = pd.DataFrame([_row(0, "gradient", 3, 9), _row(1, "gradient", 4, 9), _row(2, "gradient", 4, 9),
                       _row(3, "gradient", 10_001, 10_001)])
    C2.loc[2, "censored_minus"] = C2.loc[3, "censored_minus"] = True
    uniform = _Res({(f"im{i:03d}", "gradient"): torch.ones(1, 6, 6) for i in range(4)})
    f = ch03.flip_size(C2.join(ch03.per_step_sizes(uniform, C2)), threshold=8.0)
    assert f.max_change.tolist() == pytest.approx([3 * 255 / 108, 4 * 255 / 108, 4 * 255 / 108, 10_001 * 255 / 108])
    assert f.psnr[0] == pytest.approx(-20 * math.log10(3 / 108))
    # within, above; a censored eps-minus: above at the bound is above, within at the bound undetermined
    assert f.imperceptible.tolist()[:2] == [1.0, 0.0] and math.isnan(f.imperceptible[2]) is False
    C2.loc[2, "eps_minus"] = 3.0  # censored at a bound still within 8/255: the flip lies beyond, by how much unknown
    f = ch03.flip_size(C2.join(ch03.per_step_sizes(uniform, C2)), threshold=8.0)
    assert math.isnan(f.imperceptible[2]) and f.imperceptible[3] == 0.0
    S = ch03.size_summary(C2.join(ch03.per_step_sizes(uniform, C2)), 8.0)
    assert S.loc["Gradient", "within 8/255"] == "1 of 3" and S.loc["Gradient", "censored ε⁻ (a lower bound)"] == "2"
    assert S.loc["Gradient", "max change, median [range] (of 255)"] == "8.3 [7.1, 23613.5]"


def test_the_imperceptible_claim_holds_on_small_perturbations_and_fails_on_large_ones():
    C = _table(30, k=0)
    C["change_per_step"] = 1 / 255 / 100  # one step changes a value by 1/100 of a level: eps-minus 10..30 -> < 1/255
    C["psnr_per_step"] = 80.0
    c = _by_ref(_claims(C), "3.3-imperceptible")
    assert c.verdict == cl.HELD and [p.evidence.estimate.split(" = ")[0] for p in c.parts()] == [
        "30/30 images within 8/255"] * 3
    C["change_per_step"] = 1 / 255  # one level per step: eps-minus 10 or more is above 8/255
    c = _by_ref(_claims(C), "3.3-imperceptible")
    assert c.verdict == cl.NOT_HELD and c.parts()[0].evidence.estimate.startswith("0/30 images within 8/255")
