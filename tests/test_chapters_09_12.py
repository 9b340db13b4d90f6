"""Chapters 9 to 12: the claims' verdicts on constructed data, and the censoring columns of their tables."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from apem import claims as cl
from apem import studies
from apem.chapters import ch09, ch10, ch11, ch12

METHODS = ("gradient", "smoothgrad", "lrp_epsilon")


def _family(claims, alpha=0.05):
    return cl.Claims(claims, alpha=alpha)


# ----------------------------------------------------------------------------- chapter 9


def _loss_table(n_correct=12, n_mis=12, mis_slope=0.0, censored=()):
    """APEM falls with the loss on the correct images; on the misclassified ones APEM = mis_slope * loss + noise."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_correct + n_mis):
        correct = i < n_correct
        loss = 0.1 * (i + 1)
        conf = float(np.exp(-loss)) if correct else 0.3 + 0.01 * i
        for k, m in enumerate(METHODS):
            if correct:
                apem = 1000.0 - 50 * i * (k + 1)
            else:
                apem = mis_slope * 100 * loss + rng.permutation(n_mis)[i - n_correct] * (1 - abs(mis_slope))
            rows.append({"image_id": f"im{i}", "method": m, "stage": 3, "apem": apem, "loss": loss,
                         "confidence": conf, "correct": correct, "group": "correct" if correct else "misclassified",
                         "censored_minus": False, "censored_plus": (i, m) in censored})
    return pd.DataFrame(rows)


def _summary(D):
    from apem import stats

    return stats.summary_table(D[D.correct], by="method", ci=False)


def _ch09_claims(D):
    """The claims chapter 9's page declares (its cell tagged ``claims``) on the groups of ``D``."""
    from tests.pages import run_cells

    ns = run_cells(9, "claims", C=D[D.group == "correct"], M=D[D.group == "misclassified"], D=D)
    return ns["chapter_claims"]


def test_negative_correlation_on_correct_images_holds():
    D = _loss_table()
    fam = _family(_ch09_claims(D))
    first = fam.claims[:3]
    assert all(c.verdict == cl.HELD for c in first)
    assert all(c.evidence.n == 12 for c in first)  # one pair per image
    assert {c.source for c in fam.claims} == {cl.THESIS}


def test_vanishing_correlation_is_never_held_and_not_held_when_nonzero():
    D = _loss_table(mis_slope=0.0)
    fam = _family(_ch09_claims(D))
    vanish = fam.claims[6]
    assert vanish.text.startswith("On misclassified images")
    assert vanish.verdict in (cl.INCONCLUSIVE, cl.NOT_HELD) and vanish.verdict != cl.HELD
    D = _loss_table(mis_slope=1.0)  # APEM rises exactly with the loss on misclassified images: rho = +1
    fam = _family(_ch09_claims(D))
    assert fam.claims[6].verdict == cl.NOT_HELD
    assert all(p.verdict == cl.NOT_HELD for p in fam.claims[6].parts())


def test_vanishing_is_inconclusive_not_held_on_a_null_correlation():
    x = pd.Series(np.arange(12.0), index=[f"i{k}" for k in range(12)])
    y = pd.Series([5, 1, 9, 3, 7, 11, 0, 8, 2, 10, 4, 6], index=x.index, dtype=float)
    fam = _family([cl.Vanishes("rho is 0", x=x, y=y)])
    assert fam.claims[0].verdict == cl.INCONCLUSIVE
    assert not np.isfinite(fam.claims[0].p_for_adj)  # nothing can make it held


def test_too_few_misclassified_images_are_not_applicable():
    D = _loss_table(n_mis=2)
    fam = _family(_ch09_claims(D))
    assert fam.claims[6].verdict == cl.NOT_APPLICABLE
    D = _loss_table(n_mis=0)
    fam = _family(_ch09_claims(D))
    assert fam.claims[6].verdict == cl.NOT_APPLICABLE


def test_best_method_claim_is_descriptive_and_uses_the_mean():
    from apem import correlation

    D = _loss_table()
    S = _summary(D)
    fam = _family(_ch09_claims(D))
    last = fam.claims[-1]
    assert last.verdict == cl.NOT_APPLICABLE
    assert "dependent Spearman" in last.rule(0.05)
    R = correlation.spearman_table(D)
    best, strongest, sentence = ch09.strongest_statement(S, R[("correct", "rho")])
    assert best == "gradient"  # the highest mean APEM (it falls least with i)
    assert "Gradient" in sentence and "nan" not in sentence
    assert last.reason == f"descriptive only: {sentence}"
    t = ch09.ranking_table(S, R[("correct", "rho")])
    assert t.index[0] == "Gradient" and t["rank by ρ (most negative first)"].tolist() == ["1", "1", "1"]


def test_table_5_3_counts_censored_images_and_has_no_nan():
    from apem import correlation

    D = _loss_table(censored={(0, "gradient"), (1, "gradient"), (13, "gradient")})
    t = ch09.table_5_3(correlation.spearman_table(D), D)
    assert t.loc["Gradient", ("correct", "censored")] == "2"
    assert t.loc["Gradient", ("misclassified", "censored")] == "1"
    assert t.loc["Gradient", ("all", "censored")] == "3"
    assert t.loc["Gradient", ("correct", "thesis")] == "-0.827†"
    assert t.loc["Gradient", ("correct", "images")] == 12
    assert "nan" not in t.to_string()


def test_claims_print_the_interval_of_apem_correlation():
    """The claim's interval and the table's are one function: apem.correlation.spearman_interval."""
    from apem import correlation

    D = _loss_table(n_correct=10, n_mis=6, mis_slope=0.5)
    R = correlation.spearman_table(D, alpha=0.05)
    fam = _family(_ch09_claims(D))
    lo, hi = R.loc["smoothgrad", ("all", "lo")], R.loc["smoothgrad", ("all", "hi")]
    claim = fam.claims[4]
    assert claim.text == "APEM of SmoothGrad correlates negatively with the loss on all images"
    assert f"[{cl.fmt(lo, 2, sign=True)}, {cl.fmt(hi, 2, sign=True)}]" in claim.evidence.estimate
    ch09.interval_figure(R, D)


def test_balanced_mix_keeps_the_smaller_group_and_draws_the_larger_by_seed():
    D = _loss_table(n_correct=12, n_mis=4)
    B = ch09.balanced_mix(D, seed=7)
    per_group = B.drop_duplicates("image_id").group.value_counts()
    assert per_group["correct"] == per_group["misclassified"] == 4
    assert set(B[B.group == "misclassified"].image_id) == set(D[D.group == "misclassified"].image_id)
    assert len(B) == 8 * 3  # every method's row of a kept image
    again = ch09.balanced_mix(D.sample(frac=1.0, random_state=1), seed=7)  # the row order does not matter
    assert set(again.image_id) == set(B.image_id)
    others = {frozenset(ch09.balanced_mix(D, seed=s).image_id) for s in range(8)}
    assert len(others) > 1  # the seed decides the draw
    assert ch09.balanced_mix(_loss_table(n_mis=0), seed=7).empty


def test_mix_table_sets_the_one_to_one_mix_beside_the_configurations():
    from apem import correlation

    D = _loss_table(n_correct=12, n_mis=4, mis_slope=0.5)
    R = correlation.spearman_table(D, alpha=0.05)
    R_mix = correlation.spearman_table(ch09.balanced_mix(D, seed=0), groups=("all",), alpha=0.05)
    t = ch09.mix_table(R, R_mix)
    assert t.loc["Gradient", ("configuration's mix", "images")] == 16
    assert t.loc["Gradient", ("1:1 (thesis)", "images")] == 8
    assert t.loc["Gradient", ("thesis", "ρ")] == "-0.543†"
    rho = R_mix.loc["gradient", ("all", "rho")]
    assert t.loc["Gradient", ("1:1 (thesis)", "ρ [interval]")].startswith(f"{rho:+.3f} [")
    empty = correlation.spearman_table(ch09.balanced_mix(_loss_table(n_mis=0), seed=0), groups=("all",), alpha=0.05)
    assert ch09.mix_table(R, empty).loc["Gradient", ("1:1 (thesis)", "ρ [interval]")] == "–"


def test_chapter_9_exercise_values_decide_the_given_claims_at_three_levels():
    from apem.config import Config

    D = _loss_table()
    v = ch09.exercise_values(D, Config(stages=(3,)), 3, 0.05, _ch09_claims(D))
    assert v["ex09_alpha"] == "0.05" and v["ex09_stage"] == "3"
    assert v["ex09_verdicts"].startswith("5 held")  # LRP-ε on all images (ρ = -0.41, n = 24) falls to Holm over both directions
    assert v["ex09_rho"].startswith("Gradient -1.00")
    assert v["ex09_rho_s1"].startswith("(stage 1 is not in")


# ----------------------------------------------------------------------------- chapter 10


def _scores(n=12, apem_cost=10.0, road_cost=30.0, agree=True):
    """APEM scores the methods like Pixel-Flipping (agree) or reversed; APEM's cost per map is ``apem_cost``."""
    rows = []
    for i in range(n):
        base = {"gradient": 3.0, "smoothgrad": 1.0, "lrp_epsilon": 2.0}
        for m in METHODS:
            pf = base[m] + 0.01 * i
            ap = (pf if agree else -pf) * 100
            for metric, score, fwd, back in ((studies.APEM, ap, apem_cost + 0.1 * i, 2),
                                             ("PixelFlipping", pf, 48.0, 0), ("ROAD", pf, road_cost, 0)):
                rows.append({"image_id": f"im{i}", "method": m, "metric": metric, "score": score,
                             "seconds_image": 1.0, "n_maps": 3, "forwards_map": fwd, "backwards_image": back})
    return pd.DataFrame(rows)


def _ch10_claims(scores):
    """The claims chapter 10's page declares (its cell tagged ``claims``) on the study's table ``scores``."""
    from tests.pages import run_cells

    return run_cells(10, "claims", scores=scores)["chapter_claims"]


@pytest.mark.slow  # over 3 s: left out of `make test-fast`
def test_agreement_is_a_location_claim_on_per_image_tau():
    fam = _family(_ch10_claims(_scores(agree=True)))
    c = fam.claims[0]
    assert isinstance(c, cl.Location) and c.evidence.n == 12 and c.verdict == cl.HELD
    fam = _family(_ch10_claims(_scores(agree=False)))
    assert fam.claims[0].verdict == cl.NOT_HELD
    assert all(x.source == cl.OURS for x in fam.claims)


@pytest.mark.slow  # over 3 s: left out of `make test-fast`
def test_cost_is_decided_on_forward_passes_not_seconds():
    # APEM: ~10 forwards + 2 backwards (= 4 forward equivalents over 3 maps) per map, ROAD 30: cheaper
    fam = _family(_ch10_claims(_scores(apem_cost=10.0, road_cost=30.0)))
    road = [c for c in fam.claims if "than ROAD" in c.text][0]
    assert road.verdict == cl.HELD
    # ROAD needs 3 forwards per map: APEM is not cheaper, whatever the seconds say
    fam = _family(_ch10_claims(_scores(apem_cost=10.0, road_cost=3.0)))
    road = [c for c in fam.claims if "than ROAD" in c.text][0]
    assert road.verdict == cl.NOT_HELD
    assert "forwards/map" in road.evidence.estimate


def test_cost_view_shows_seconds_as_a_description():
    s = _scores()
    v = ch10.cost_view(studies.cost_table(s), s)
    assert "seconds per map [95% CI] (descriptive)" in v.columns
    assert v.loc["APEM", "backwards per image"] == "2"
    assert "nan" not in v.to_string()


@pytest.mark.slow  # over 3 s: left out of `make test-fast`
def test_chapter_10_tables_and_exercise_values():
    s = _scores(agree=True)
    MS = studies.mean_scores(s)
    censored = pd.Series({"gradient": 1})
    tab = ch10.score_table(MS, censored)
    assert list(tab.index) == ["APEM", "Pixel-Flipping", "ROAD", "APEM: censored images"]
    assert tab.loc["APEM: censored images", "Gradient"] == "1" and "(#1)" in tab.loc["APEM", "Gradient"]
    view = ch10.agreement_view(studies.agreement_table(s, n_boot=50), s)
    assert view.loc["APEM vs Pixel-Flipping", "mean τ"] == "+1.00"
    values = ch10.exercise_values(s, 3, _family(_ch10_claims(s)))
    assert values["ex10_n"] == "12" and values["ex10_stage"] == "3"
    assert values["ex10_taus"].startswith("+1.00 with Pixel-Flipping")


# ----------------------------------------------------------------------------- chapter 11


def _sanity(n=12, rho=0.1, constant=(), shuffles=True, randomised_apem=10.0):
    sim, ap = [], []
    for i in range(n):
        for m in METHODS:
            const = m in constant
            for step in (3, 6):
                sim.append({"image_id": f"im{i}", "method": m, "vis_stage": 3, "step": step, "layer": f"L{step}",
                            "spearman": np.nan if const else rho + 0.01 * i, "ssim": 0.2, "constant": const})
            for step, layer in ((0, "trained"), (6, "L6")):
                apem = 500.0 + i if step == 0 else (np.nan if const else randomised_apem + i)
                ap.append({"image_id": f"im{i}", "method": m, "step": step, "layer": layer, "stage": 3,
                           "eps_minus": 10, "eps_plus": 510, "apem": apem, "censored_minus": False,
                           "censored_plus": i == 0, "undefined": const and step > 0, "n_forward": 10,
                           "apem_table": 500.0 + i, "apem_shuffle": (5.0 + i) if shuffles else np.nan})
    return pd.DataFrame(sim), pd.DataFrame(ap)


def _ch11_claims(sim, ap, stage=3, threshold=ch11.THRESHOLD, has_shuffles=True):
    """The claims chapter 11's page declares (its cell tagged ``claims``) on the study's two tables."""
    from tests.pages import run_cells

    return run_cells(11, "claims", sim=sim, ap=ap, stage=stage, threshold=threshold, has_shuffles=has_shuffles,
                     methods=list(dict.fromkeys(ap.method)))["chapter_claims"]


@pytest.mark.slow  # over 3 s: left out of `make test-fast`
def test_randomisation_test_with_every_map_constant_is_not_applicable_never_held():
    sim, ap = _sanity(constant=("lrp_epsilon",))
    fam = _family(_ch11_claims(sim, ap, 3))
    by = {c.text: c for c in fam.claims}
    lrp = [c for t, c in by.items() if t.startswith("LRP-ε passes")][0]
    assert lrp.verdict == cl.NOT_APPLICABLE and lrp.evidence.reason == ch11.EVERY_CONSTANT
    grad = [c for t, c in by.items() if t.startswith("Gradient passes")][0]
    assert grad.verdict == cl.HELD
    scored = [c for t, c in by.items() if "LRP-ε's trained maps above" in t][0]
    assert scored.verdict == cl.NOT_APPLICABLE
    assert "nan" not in cl.Claims(fam.claims).markdown()


@pytest.mark.slow  # over 3 s: left out of `make test-fast`
def test_randomisation_test_not_held_when_maps_survive():
    sim, ap = _sanity(rho=0.9)
    fam = _family(_ch11_claims(sim, ap, 3))
    assert fam.claims[0].verdict == cl.NOT_HELD


@pytest.mark.slow  # over 3 s: left out of `make test-fast`
def test_without_shuffles_the_shuffled_comparison_is_not_applicable():
    sim, ap = _sanity(shuffles=False)
    fam = _family(_ch11_claims(sim, ap, 3, has_shuffles=False))
    shuf = [c for c in fam.claims if "above shuffled maps" in c.text]
    assert len(shuf) == 3 and all(c.verdict == cl.NOT_APPLICABLE for c in shuf)
    assert all(c.evidence.reason == ch11.NO_SHUFFLES for c in shuf)
    trained = [c for c in fam.claims if "trained maps above" in c.text]
    assert all(c.verdict == cl.HELD for c in trained)


def test_sanity_apem_table_counts_censored_and_undefined():
    sim, ap = _sanity(constant=("lrp_epsilon",))
    T = ap[ap.step == 0].assign(censored_shuffle_minus=False, censored_shuffle_plus=True)
    view = ch11.apem_summary(ap, ch11.shuffled_rows(T, set(ap.image_id), 3))
    assert view.loc[("Gradient", "trained"), "censored"] == 1
    assert view.loc[("LRP-ε", "L6"), "undefined"] == 12
    assert view.loc[("Gradient", "shuffled"), "censored"] == 12
    assert "nan" not in view.to_string()
    empty = ch11.shuffled_rows(T.assign(apem_shuffle=np.nan), set(ap.image_id), 3)
    assert len(empty) == 0


def test_chapter_11_cascade_setting_and_exercise_values():
    sim, ap = _sanity(constant=("lrp_epsilon",))
    cascade = ch11.cascade_table([f"L{k}" for k in range(1, 7)], sim)
    assert list(cascade.evaluated) == ["", "", "yes", "", "", "yes"]
    # image 0's maps are censored (5 scored: its randomised LRP map is constant), 12 constant maps undefined
    assert ch11.undefined_censored(ap) == (5, 60, 12)
    values = ch11.exercise_values(sim, 0.5, 16)
    assert values["ex11_pass"] == "Gradient, SmoothGrad" and values["ex11_smoothgrad_n"] == "16"
    assert "LRP-ε –" in values["ex11_rho"]  # every randomised LRP map constant: no rho


# ----------------------------------------------------------------------------- chapter 12


def _more(n=12):
    rows = []
    for i in range(n):
        for m, apem, ep in (("gradient", 100, 500), ("smoothgrad", 50, 400), ("lrp_epsilon", 80, 450),
                            ("gradcam", 200 + i, 100), ("input_x_gradient", 10, 300)):
            rows.append({"image_id": f"im{i}", "method": m, "stage": 3, "apem": float(apem + i * (m == "gradient")),
                         "eps_plus": float(ep), "eps_minus": float(ep - apem), "censored_minus": False,
                         "censored_plus": m == "gradcam" and i < 2, "apem_norm_term": 0.5 if m == "gradcam" else -0.2})
    return pd.DataFrame(rows)


def _ch12_claims(C, old, new, NORM):
    """The claims chapter 12's page declares (its cell tagged ``claims``) on the correct images ``C``."""
    from tests.pages import run_cells

    return run_cells(12, "claims", C=C, old=old, new=new, NORM=NORM)["chapter_claims"]


@pytest.mark.slow  # over 3 s: left out of `make test-fast`
def test_more_methods_claims_against_the_thesis_best():
    C = _more()
    old, new = list(METHODS), ["gradcam", "input_x_gradient"]
    fam = _family(_ch12_claims(C, old, new, C))
    texts = [c.text for c in fam.claims]
    assert "than the Gradient, the thesis's best method" in texts[0]
    assert fam.claims[0].verdict == cl.HELD  # Grad-CAM above Gradient on every image
    assert fam.claims[1].verdict == cl.NOT_HELD  # Input x Gradient below
    allof = fam.claims[2]
    assert isinstance(allof, cl.AllOf) and allof.verdict == cl.HELD
    norm = fam.claims[3:]
    assert [c.verdict for c in norm] == [cl.HELD, cl.NOT_HELD]


@pytest.mark.slow  # over 3 s: left out of `make test-fast`
def test_more_methods_without_shuffles_norm_is_not_applicable():
    C = _more()
    fam = _family(_ch12_claims(C, list(METHODS), ["gradcam"], None))
    assert fam.claims[-1].verdict == cl.NOT_APPLICABLE and fam.claims[-1].evidence.reason == ch12.NO_SHUFFLES


def test_more_methods_summary_counts_censored():
    C = _more()
    from apem import stats

    view = ch12.summary_view(stats.summary_table(C, by="method"), list(METHODS) + ["gradcam", "input_x_gradient"],
                             list(METHODS))
    assert view.loc["Grad-CAM", "censored"] == 2
    assert view.loc["Gradient", "in the thesis"] == "yes"
    assert "nan" not in view.to_string()


@pytest.mark.slow  # over 3 s: left out of `make test-fast`
def test_chapter_12_exercise_values_quote_both_levels():
    C = _more().assign(group="correct")
    old, new = list(METHODS), ["gradcam", "input_x_gradient"]
    values = ch12.exercise_values(C, 3, [3], 0, _family(_ch12_claims(C, old, new, C)),
                                  _family(_ch12_claims(C, old, new, C), alpha=0.10))
    assert values["ex12_order"].startswith("Grad-CAM > Gradient") and values["ex12_alpha"] == "0.05"
    assert "not in this configuration's stages [3]" in values["ex12_order_s1"]
    assert values["ex12_verdicts"].startswith("3 held")
