"""Chapters 4, 5 and 7: the claims that test section 4.4's, 4.5's and 5.2's statements, on data whose verdict is known.

Each claim is the page's own declaration (its cell tagged ``claims``, run by :func:`pages.run_cells`), decided
by :class:`apem.claims.Claims` on small synthetic tables built so that the statement holds, or fails, by
construction; the helpers that compute the claims' values are checked against closed-form answers.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from apem import claims as cl
from apem.chapters import ch04, ch07

METHODS = ("gradient", "lrp_epsilon", "smoothgrad")
LEVEL = {"gradient": 200.0, "lrp_epsilon": 120.0, "smoothgrad": 80.0}  # the thesis's order at every stage
SLOPE = {"gradient": 40.0, "lrp_epsilon": 10.0, "smoothgrad": 5.0}  # APEM lost per visualisation step


def _refs(fam: cl.Claims, key: str) -> list:
    """The family's top-level claims that test the thesis statement ``key``."""
    return [c for c in fam.claims if key in c.refs()]


# ----------------------------------------------------------------------------- chapter 4


def _stages(n: int = 24, gains=None, level=None, slope=None) -> pd.DataFrame:
    """Correct images at stages 1-3: APEM = level + 10 i - slope (stage - 1), so every step lowers it, the
    Gradient is highest at every stage and loses the most; ``gains``: ``{method: images}`` whose APEM rises by 5
    from stage 1 to 2 (and falls again at 3). ε⁻ = 10 + stage + (i mod 3) rises with the stage, ε⁺ = ε⁻ + APEM."""
    gains, level, slope = gains or {}, level or LEVEL, slope or SLOPE
    rows = []
    for i in range(n):
        for m in METHODS:
            for s in (1, 2, 3):
                apem = level[m] + 10 * i - slope[m] * (s - 1)
                if s == 2 and i in gains.get(m, ()):
                    apem = level[m] + 10 * i + 5
                em = 10.0 + s + i % 3
                rows.append({"image_id": f"im{i}", "label_name": "x", "group": "correct", "method": m, "stage": s,
                             "eps_minus": em, "eps_plus": em + apem, "apem": apem,
                             "censored_minus": False, "censored_plus": False})
    return pd.DataFrame(rows)


def _changes(n: int = 24, order=("gradient", "lrp_epsilon", "smoothgrad")) -> pd.DataFrame:
    """The maps' change per image and method: the first method of ``order`` changes most, the last least."""
    return pd.DataFrame([{"image_id": f"im{i}", "method": m, "change": 0.6 - 0.2 * k + 0.001 * i}
                         for i in range(n) for k, m in enumerate(order)])


def _ch04(C: pd.DataFrame, changes=None) -> cl.Claims:
    from pages import run_cells

    return cl.Claims(run_cells(4, "claims", C=C, changes=changes)["chapter_claims"])


def test_every_step_lowers_and_some_step_raises_read_censoring_as_intervals():
    # one method, stages 1-3: (APEM per stage, censored_plus at stage, censored_minus at stage)
    cases = {
        "exact fall": ((30, 20, 10), None, None),
        "tie": ((30, 30, 10), None, None),  # a tie does not lower it, nor raise it
        "rise": ((30, 40, 10), None, None),
        "open ≥": ((30, 25, 10), 2, None),  # stage 2 is at least 25: 1 -> 2 open
        "open ≤": ((30, 35, 10), None, 2),  # stage 2 is at most 35: 1 -> 2 open
        "sure fall ≤": ((30, 20, 5), None, 3),  # stage 3 is at most 5: it certainly falls
        "sure rise ≥": ((30, 20, 40), 3, None),  # stage 3 is at least 40: it certainly rises
    }
    rows = []
    for iid, (apem, plus, minus) in cases.items():
        for s, v in zip((1, 2, 3), apem):
            rows.append({"image_id": iid, "method": "m", "stage": s, "apem": float(v),
                         "censored_plus": plus == s, "censored_minus": minus == s})
    C = pd.DataFrame(rows)
    lo, hi = ch04.apem_intervals(C, "m")
    assert lo.loc["open ≥", 2] == 25 and hi.loc["open ≥", 2] == math.inf
    assert lo.loc["open ≤", 2] == -math.inf and hi.loc["open ≤", 2] == 35
    lowers = ch04.every_step_lowers(C, "m")
    raises = ch04.some_step_raises(C, "m")
    assert list(lowers.index) == list(cases)
    assert [lowers[k] for k in ("exact fall", "tie", "rise", "sure fall ≤", "sure rise ≥")] == [
        True, False, False, True, False]
    assert pd.isna(lowers["open ≥"]) and pd.isna(lowers["open ≤"])
    assert [raises[k] for k in ("exact fall", "tie", "rise", "sure fall ≤", "sure rise ≥")] == [
        False, False, True, False, True]
    assert pd.isna(raises["open ≥"]) and pd.isna(raises["open ≤"])
    assert ch04.every_step_lowers(C, "absent").empty  # a method the table lacks


def test_split_by_leaves_undetermined_images_out():
    v = pd.Series([1.0, 2.0, 3.0, 4.0], index=list("abcd"))
    yes, no = ch04.split_by(v, pd.Series([True, False, None, True], index=list("abcd"), dtype=object))
    assert list(yes.index) == ["a", "d"] and list(no.index) == ["b"]
    missing = cl.Missing("SmoothGrad")
    assert ch04.split_by(v, missing) == (missing, missing)


def test_chapter_4_gradient_lowers_on_every_image_is_an_invariant_with_censored_images_left_out():
    fam = _ch04(_stages())
    (inv,) = _refs(fam, "4.4-gradient-every-image")
    assert isinstance(inv, cl.Invariant) and inv.source == cl.THESIS
    assert inv.verdict == cl.HELD and inv.evidence.n == 24 and "0 of 24" in inv.evidence.estimate
    C = _stages()
    g = (C.method == "gradient") & (C.image_id == "im3")
    C.loc[g & (C.stage == 3), "apem"] = C.loc[g & (C.stage == 2), "apem"].to_numpy()  # a tie at step 2 -> 3
    C.loc[(C.method == "gradient") & (C.image_id == "im5") & (C.stage == 2), "censored_plus"] = True  # open
    inv = _refs(_ch04(C), "4.4-gradient-every-image")[0]
    assert inv.verdict == cl.NOT_HELD and inv.evidence.n == 23 and "1 of 23" in inv.evidence.estimate
    assert "1 image whose censored searches leave a step open left out" in inv.rule(0.05)


def test_chapter_4_other_methods_gain_in_uncommon_cases_on_low_apem_images():
    low = range(4)  # the four images with the lowest APEM at stage 1 (APEM grows with the image's index)
    fam = _ch04(_stages(40, gains={"smoothgrad": low, "lrp_epsilon": low}))
    (gain,) = _refs(fam, "4.4-others-sometimes-gain")
    assert gain.verdict == cl.HELD  # 4 of 40 below 50%: binomial P(X <= 4) = 9e-8 for each method
    assert [p.text.split(":")[0] for p in gain.parts()] == ["LRP-ε", "SmoothGrad"]
    assert all("4/40 images where a step raises APEM" in p.evidence.estimate for p in gain.parts())
    (low_apem,) = _refs(fam, "4.4-gains-on-low-apem")
    assert low_apem.verdict == cl.HELD  # completely separated: 1 / C(40, 4) = 1e-5 for each method
    assert [p.evidence.n for p in low_apem.parts()] == [40, 40]
    # the gains on the highest-APEM images: the second claim is not held
    high = range(36, 40)
    fam = _ch04(_stages(40, gains={"smoothgrad": high, "lrp_epsilon": high}))
    assert _refs(fam, "4.4-gains-on-low-apem")[0].verdict == cl.NOT_HELD
    # gains on most images are not "uncommon"
    most = range(22)  # 22 of 24: P(X >= 22) = 2e-5
    fam = _ch04(_stages(gains={"smoothgrad": most}))
    (gain,) = _refs(fam, "4.4-others-sometimes-gain")
    assert gain.verdict == cl.NOT_HELD and [p.verdict for p in gain.parts()][1] == cl.NOT_HELD


def test_chapter_4_without_gains_the_low_apem_claim_has_nothing_to_compare():
    fam = _ch04(_stages())
    (gain,) = _refs(fam, "4.4-others-sometimes-gain")
    assert gain.verdict == cl.HELD and "0/24" in gain.parts()[0].evidence.estimate
    assert _refs(fam, "4.4-gains-on-low-apem")[0].verdict == cl.NOT_APPLICABLE


def test_chapter_4_eps_follow_apem_across_stages():
    fam = _ch04(_stages())
    eps = _refs(fam, "4.4-eps-follow-apem")
    assert len(eps) == 3 and all(len(c.parts()) == 4 for c in eps)  # 2 steps x (ε⁻, ε⁺) per method
    assert [c.verdict for c in eps] == [cl.HELD] * 3
    C = _stages()
    sg = C.method == "smoothgrad"
    C.loc[sg, "eps_minus"] = 30.0 - C.loc[sg, "stage"]  # SmoothGrad's ε⁻ now falls with the stage
    C.loc[sg, "eps_plus"] = C.loc[sg, "eps_minus"] + C.loc[sg, "apem"]
    eps = _refs(_ch04(C), "4.4-eps-follow-apem")
    assert [c.verdict for c in eps] == [cl.HELD, cl.HELD, cl.NOT_HELD]


def test_chapter_4_best_method_wins_at_every_stage_by_the_sign_test():
    fam = _ch04(_stages())
    (best,) = _refs(fam, "4.4-best-wins-each-stage")
    assert best.verdict == cl.HELD and len(best.parts()) == 6  # 3 stages x 2 other methods
    assert all(p.test == "sign" for p in best.parts())
    level = dict(LEVEL, smoothgrad=260.0)  # SmoothGrad above the Gradient at every stage
    fam = _ch04(_stages(level=level, slope=dict(SLOPE, smoothgrad=40.0)))
    assert _refs(fam, "4.4-best-wins-each-stage")[0].verdict == cl.NOT_HELD


def test_chapter_4_stage_claims_carry_their_statement():
    fam = _ch04(_stages())
    assert len(_refs(fam, "4.4-stages-lower")) == 3
    assert all(c.verdict == cl.HELD for c in _refs(fam, "4.4-stages-lower"))


def test_change_loss_tau_per_image():
    X = pd.DataFrame({"image_id": ["a"] * 3 + ["b"] * 3 + ["c"] * 3,
                      "method": list(METHODS) * 3,
                      "change": [0.5, 0.3, 0.1, 0.5, 0.3, 0.1, 0.2, 0.2, 0.2],
                      "loss": [90, 20, 10, 10, 20, 90, 90, 20, 10], "censored": False})
    tau = ch04.change_loss_tau(X)
    assert tau["a"] == pytest.approx(1.0) and tau["b"] == pytest.approx(-1.0) and np.isnan(tau["c"])


def test_change_loss_takes_the_drop_and_censoring_at_either_end():
    C = _stages(4)
    C.loc[(C.method == "lrp_epsilon") & (C.image_id == "im1") & (C.stage == 3), "censored_minus"] = True
    C.loc[(C.method == "lrp_epsilon") & (C.image_id == "im2") & (C.stage == 2), "censored_minus"] = True  # no end
    X = ch04.change_loss(C, _changes(4), 1, 3)
    assert len(X) == 12
    assert X.set_index(["image_id", "method"]).loss[("im0", "gradient")] == 80.0  # 2 steps x 40
    assert X[X.censored][["image_id", "method"]].values.tolist() == [["im1", "lrp_epsilon"]]
    T = ch04.change_table(X, 1, 3)
    assert list(T.index) == ["Gradient", "LRP-ε", "SmoothGrad"]  # by the median change
    assert T.loc["LRP-ε", "censored at stage 1 or 3"] == 1 and T.loc["Gradient", "median APEM lost"] == "80.0"
    text = ch04.change_sentence(X, ch04.change_loss_tau(X))
    assert "the same order" in text and "τ = +1.00 on 4" in text


def test_chapter_4_most_changed_loses_most_per_image_tau():
    fam = _ch04(_stages(), _changes())
    (c,) = _refs(fam, "4.4-most-changed-loses-most")
    assert isinstance(c, cl.Location) and c.source == cl.THESIS
    assert c.verdict == cl.HELD and c.evidence.n == 24  # τ = +1 on every image
    fam = _ch04(_stages(), _changes(order=("smoothgrad", "lrp_epsilon", "gradient")))  # reversed
    assert _refs(fam, "4.4-most-changed-loses-most")[0].verdict == cl.NOT_HELD
    fam = _ch04(_stages(), None)  # not measured
    c = _refs(fam, "4.4-most-changed-loses-most")[0]
    assert c.verdict == cl.NOT_APPLICABLE and c.evidence.reason == "the maps' change was not measured"


class _Res:
    """Results with maps in memory: ``map(image, method, stage)`` as :meth:`apem.run.Results.map`."""

    def __init__(self, arrays):
        self.arrays, self.reads = arrays, []

    def map(self, iid, method, stage):
        import torch

        self.reads.append((iid, method, stage))
        return torch.from_numpy(self.arrays[(iid, stage)]).float() / 255


def test_map_changes_measures_the_moved_budget():
    h = w = 4
    ones = np.full((3, h, w), 255, np.uint8)  # stage 1: three channels, uniform
    half_a = np.zeros((1, h, w), np.uint8)
    half_a[:, :2] = 255  # image a: half of the pixels -> half of the budget moves
    half_b = np.full((1, h, w), 128, np.uint8)  # image b: uniform again, a multiple of stage 1 -> nothing moves
    res = _Res({("a", 1): ones, ("b", 1): ones, ("a", 3): half_a, ("b", 3): half_b})
    C = pd.DataFrame({"image_id": ["a", "b", "a", "b"], "method": "gradient", "stage": [1, 1, 3, 3], "chunk": 0,
                      "map_array": ["gradient__s1"] * 2 + ["gradient__s3"] * 2, "map_row": [0, 1, 0, 1]})
    X = ch04.map_changes(res, C, 1, 3)
    assert sorted(res.reads) == [("a", "gradient", 1), ("a", "gradient", 3), ("b", "gradient", 1), ("b", "gradient", 3)]
    assert X.set_index("image_id").change.to_dict() == pytest.approx({"a": 0.5, "b": 0.0})


# ----------------------------------------------------------------------------- chapter 5


def test_chapter_5_claims_carry_their_statements():
    from pages import run_cells

    rows = [{"image_id": f"im{i}", "method": m, "stage": s, "apem_before": 100.0, "apem_after": 100.0,
             "removed_fraction": 0.5, "defined": True} for i in range(3) for m in METHODS for s in (1, 2, 3)]
    F = pd.DataFrame(rows)
    ns = run_cells(5, "claims", D=F, methods=list(METHODS), removed_threshold=0.10)
    refs = [c.refs() for c in ns["chapter_claims"]]
    assert refs == [("3.2-filter-keeps", "4.5-filter-keeps"), ("4.5-filter-removes",), ("4.5-every-method",)]


# ----------------------------------------------------------------------------- chapter 7


def _shuffled(n: int = 20, norm_slope=None, between=True) -> pd.DataFrame:
    """Correct images with shuffled baselines: ε-shuffle⁻ = ε-shuffle⁺ = 100, ε⁻ = 50 and ε⁺ chosen so the
    APEM_norm term is ``gap(method) - norm_slope(method) (stage - 1)`` (plus a per-image jitter); ``between``:
    ε⁻ < ε-shuffle⁻ and ε-shuffle⁺ < ε⁺ (else SmoothGrad's ε⁻ lies above its ε-shuffle⁻ at stage 2)."""
    norm_slope = norm_slope or {"gradient": 0.2, "lrp_epsilon": 0.1, "smoothgrad": 0.05}
    gap = {"gradient": 1.5, "lrp_epsilon": 1.0, "smoothgrad": 0.6}
    rows = []
    for i in range(n):
        for m in METHODS:
            for s in (1, 2, 3):
                sm = sp = 100.0
                em = 150.0 if (not between and m == "smoothgrad" and s == 2) else 50.0
                term = gap[m] - norm_slope[m] * (s - 1) + 0.001 * i
                ep = sp * (term + em / sm)
                rows.append({"image_id": f"im{i}", "method": m, "stage": s, "group": "correct",
                             "eps_minus": em, "eps_plus": ep, "eps_shuffle_minus": sm, "eps_shuffle_plus": sp,
                             "censored_minus": False, "censored_plus": False, "censored_shuffle_minus": False,
                             "censored_shuffle_plus": False, "apem": ep - em, "apem_shuffle": sp - sm,
                             "apem_norm_term": ep / sp - em / sm})
    return pd.DataFrame(rows)


def _ch07(C: pd.DataFrame, stages=(1, 2, 3)) -> cl.Claims:
    from pages import run_cells

    ns = run_cells(7, "claims", ch07=ch07, C=C, claim_stages=list(stages), methods=list(dict.fromkeys(C.method)),
                   method="gradient")
    return cl.Claims(ns["chapter_claims"])


def test_chapter_7_norm_falls_with_each_stage_per_method():
    fam = _ch07(_shuffled())
    falls = _refs(fam, "5.2-norm-falls")
    assert len(falls) == 3 and all(len(c.parts()) == 2 for c in falls)
    assert [c.verdict for c in falls] == [cl.HELD] * 3  # 20 of 20 images lower at each step
    fam = _ch07(_shuffled(norm_slope={"gradient": 0.2, "lrp_epsilon": -0.1, "smoothgrad": 0.05}))
    assert [c.verdict for c in _refs(fam, "5.2-norm-falls")] == [cl.HELD, cl.NOT_HELD, cl.HELD]
    # one stage: nothing to compare
    one = _refs(_ch07(_shuffled(), stages=(3,)), "5.2-norm-falls")[0]
    assert one.verdict == cl.NOT_APPLICABLE and one.evidence.reason == "a single stage: nothing to compare"


def test_chapter_7_shuffled_eps_lies_between_the_maps_own():
    fam = _ch07(_shuffled())
    between = _refs(fam, "5.2-shuffle-between")
    assert len(between) == 3 and all(len(c.parts()) == 6 for c in between)  # 3 stages x 2 inequalities
    assert [c.verdict for c in between] == [cl.HELD] * 3
    fam = _ch07(_shuffled(between=False))  # SmoothGrad's ε⁻ above its ε-shuffle⁻ at stage 2 on every image
    between = _refs(fam, "5.2-shuffle-between")
    assert [c.verdict for c in between] == [cl.HELD, cl.HELD, cl.NOT_HELD]
    broken = [p for p in between[2].parts() if p.verdict == cl.NOT_HELD]
    assert [p.text for p in broken] == ["SmoothGrad, stage 2: ε⁻ below ε-shuffle⁻"]


def test_chapter_7_existing_claims_carry_their_statements():
    fam = _ch07(_shuffled())
    assert len(_refs(fam, "5.2-norm-order")) == 3  # one per stage
    zero = _refs(fam, "5.2-shuffle-zero")
    assert len(zero) == 2 and zero == _refs(fam, "6-random-zero")
    assert isinstance(zero[0], cl.NoneNonzero) and zero[1].text.startswith("Shuffled Gradient maps score closer")
    assert [c.text.split(" (")[0] for c in _refs(fam, "5.2-shuffle-equal")] == [
        "Most shuffled Gradient maps tie exactly"]


def test_epsilon_censoring_flags_each_epsilon_and_not_a_missing_one():
    C = _shuffled(3)
    C.loc[(C.image_id == "im1") & (C.method == "gradient") & (C.stage == 1), "censored_shuffle_minus"] = True
    C.loc[(C.image_id == "im2") & (C.method == "gradient"), "censored_plus"] = True
    C.loc[(C.image_id == "im2") & (C.method == "gradient"), "eps_plus"] = np.nan  # undefined: not censored
    C.loc[(C.image_id == "im0") & (C.method == "lrp_epsilon"), "censored_minus"] = True
    flags = ch07.epsilon_censoring(C)
    assert set(flags) == set(ch07.EPSILONS)
    assert flags["eps_shuffle_minus"]["gradient"].to_dict() == {"im0": False, "im1": True, "im2": False}
    assert not flags["eps_plus"]["gradient"].any()
    assert flags["eps_minus"]["lrp_epsilon"].to_dict() == {"im0": True, "im1": False, "im2": False}
    assert isinstance(flags["eps_minus"]["integrated_gradients"], cl.Missing)


def test_gains_sentence_counts_the_cases_and_their_apem():
    C = _stages(6, gains={"smoothgrad": [0, 1]})
    text = ch04.gains_sentence(C, ["lrp_epsilon", "smoothgrad"])
    # SmoothGrad's stage-1 APEM is 80 + 10 i: images 0 and 1 (median 85) against 2-5 (median 115)
    assert text == ("A simplification step raises LRP-ε's APEM on 0 of 6 images; SmoothGrad's APEM on 2 of 6 images, "
                    "whose stage-1 median APEM is 85.0 against 115.0 on the other images. Such cases exist here, as "
                    "the thesis found.")
    assert ch04.gains_sentence(_stages(6), ["lrp_epsilon"]).endswith("No such case occurs here.")
