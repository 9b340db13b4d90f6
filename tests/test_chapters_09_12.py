"""Chapters 9 to 12: the claims' verdicts on constructed data, and the censoring columns of their tables."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd

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


def test_negative_correlation_on_correct_images_holds():
    D = _loss_table()
    fam = _family(ch09.chapter_claims(D, _summary(D)))
    first = fam.claims[:3]
    assert all(c.verdict == cl.HELD for c in first)
    assert all(c.evidence.n == 12 for c in first)  # one pair per image


def test_vanishing_correlation_is_never_held_and_not_held_when_nonzero():
    D = _loss_table(mis_slope=0.0)
    fam = _family(ch09.chapter_claims(D, _summary(D)))
    vanish = fam.claims[6]
    assert vanish.text.startswith("On misclassified images")
    assert vanish.verdict in (cl.INCONCLUSIVE, cl.NOT_HELD) and vanish.verdict != cl.HELD
    D = _loss_table(mis_slope=1.0)  # APEM rises exactly with the loss on misclassified images: rho = +1
    fam = _family(ch09.chapter_claims(D, _summary(D)))
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
    fam = _family(ch09.chapter_claims(D, _summary(D)))
    assert fam.claims[6].verdict == cl.NOT_APPLICABLE
    D = _loss_table(n_mis=0)
    fam = _family(ch09.chapter_claims(D, _summary(D)))
    assert fam.claims[6].verdict == cl.NOT_APPLICABLE


def test_best_method_claim_is_descriptive_and_uses_the_mean():
    D = _loss_table()
    S = _summary(D)
    fam = _family(ch09.chapter_claims(D, S))
    last = fam.claims[-1]
    assert last.verdict == cl.NOT_APPLICABLE
    assert "dependent Spearman" in last.rule(0.05)
    best, strongest, sentence = ch09.strongest_statement(S, ch09.correlations(D))
    assert best == "gradient"  # the highest mean APEM (it falls least with i)
    assert "Gradient" in sentence and "nan" not in sentence


def test_table_5_3_counts_censored_images_and_has_no_nan():
    D = _loss_table(censored={(0, "gradient"), (1, "gradient"), (13, "gradient")})
    t = ch09.table_5_3(D)
    assert t.loc["Gradient", ("correct", "censored")] == "2"
    assert t.loc["Gradient", ("misclassified", "censored")] == "1"
    assert t.loc["Gradient", ("all", "censored")] == "3"
    assert t.loc["Gradient", ("correct", "thesis")] == "-0.827†"
    assert t.loc["Gradient", ("correct", "images")] == 12
    assert "nan" not in t.to_string()


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


def test_agreement_is_a_location_claim_on_per_image_tau():
    fam = _family(ch10.chapter_claims(_scores(agree=True)))
    c = fam.claims[0]
    assert isinstance(c, cl.Location) and c.evidence.n == 12 and c.verdict == cl.HELD
    fam = _family(ch10.chapter_claims(_scores(agree=False)))
    assert fam.claims[0].verdict == cl.NOT_HELD
    assert all(x.source == cl.OURS for x in fam.claims)


def test_cost_is_decided_on_forward_passes_not_seconds():
    # APEM: ~10 forwards + 2 backwards (= 4 forward equivalents over 3 maps) per map, ROAD 30: cheaper
    fam = _family(ch10.chapter_claims(_scores(apem_cost=10.0, road_cost=30.0)))
    road = [c for c in fam.claims if "than ROAD" in c.text][0]
    assert road.verdict == cl.HELD
    # ROAD needs 3 forwards per map: APEM is not cheaper, whatever the seconds say
    fam = _family(ch10.chapter_claims(_scores(apem_cost=10.0, road_cost=3.0)))
    road = [c for c in fam.claims if "than ROAD" in c.text][0]
    assert road.verdict == cl.NOT_HELD
    assert "forwards/map" in road.evidence.estimate


def test_cost_view_shows_seconds_as_a_description():
    v = ch10.cost_view(_scores())
    assert "seconds per map [95% CI] (descriptive)" in v.columns
    assert v.loc["APEM", "backwards per image"] == "2"
    assert "nan" not in v.to_string()


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


def test_randomisation_test_with_every_map_constant_is_not_applicable_never_held():
    sim, ap = _sanity(constant=("lrp_epsilon",))
    fam = _family(ch11.chapter_claims(sim, ap, 3))
    by = {c.text: c for c in fam.claims}
    lrp = [c for t, c in by.items() if t.startswith("LRP-ε passes")][0]
    assert lrp.verdict == cl.NOT_APPLICABLE and lrp.evidence.reason == ch11.EVERY_CONSTANT
    grad = [c for t, c in by.items() if t.startswith("Gradient passes")][0]
    assert grad.verdict == cl.HELD
    scored = [c for t, c in by.items() if "LRP-ε's trained maps above" in t][0]
    assert scored.verdict == cl.NOT_APPLICABLE
    assert "nan" not in cl.Claims(fam.claims).markdown()


def test_randomisation_test_not_held_when_maps_survive():
    sim, ap = _sanity(rho=0.9)
    fam = _family(ch11.chapter_claims(sim, ap, 3))
    assert fam.claims[0].verdict == cl.NOT_HELD


def test_without_shuffles_the_shuffled_comparison_is_not_applicable():
    sim, ap = _sanity(shuffles=False)
    fam = _family(ch11.chapter_claims(sim, ap, 3, has_shuffles=False))
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


def test_more_methods_claims_against_the_best_by_the_mean():
    C = _more()
    old, new = list(METHODS), ["gradcam", "input_x_gradient"]
    fam = _family(ch12.chapter_claims(C, old, new, C))
    texts = [c.text for c in fam.claims]
    assert "than Gradient, the best" in texts[0]
    assert fam.claims[0].verdict == cl.HELD  # Grad-CAM above Gradient on every image
    assert fam.claims[1].verdict == cl.NOT_HELD  # Input x Gradient below
    allof = fam.claims[2]
    assert isinstance(allof, cl.AllOf) and allof.verdict == cl.HELD
    norm = fam.claims[3:]
    assert [c.verdict for c in norm] == [cl.HELD, cl.NOT_HELD]


def test_more_methods_without_shuffles_norm_is_not_applicable():
    C = _more()
    fam = _family(ch12.chapter_claims(C, list(METHODS), ["gradcam"], None))
    assert fam.claims[-1].verdict == cl.NOT_APPLICABLE and fam.claims[-1].evidence.reason == ch12.NO_SHUFFLES


def test_more_methods_summary_counts_censored():
    C = _more()
    view = ch12.summary(C, list(METHODS) + ["gradcam", "input_x_gradient"], list(METHODS))
    assert view.loc["Grad-CAM", "censored"] == 2
    assert view.loc["Gradient", "in the thesis"] == "yes"
    assert "nan" not in view.to_string()
