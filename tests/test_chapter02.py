"""Chapter 2: the claims its page declares, decided on known data, and the functions its page calls."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from apem import claims as cl
from apem.chapters import ch02


def _similarity(n: int = 12, rho=(0.6, 0.4, 0.5), seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pairs = (("gradient", "smoothgrad"), ("gradient", "lrp_epsilon"), ("smoothgrad", "lrp_epsilon"))
    return pd.concat([pd.DataFrame({"a": a, "b": b, "image_id": [f"im{i}" for i in range(n)],
                                    "spearman": r + rng.normal(0, 0.05, n), "ssim": 0.5})
                      for (a, b), r in zip(pairs, rho)], ignore_index=True)


def _tv(n: int = 12, smoother: bool = True, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = rng.uniform(0.05, 0.1, n)
    return pd.DataFrame({"gradient": g, "smoothgrad": g * (0.5 if smoother else 1.5), "lrp_epsilon": g * 0.7},
                        index=[f"im{i}" for i in range(n)])


def _t41(disagree: int = 0) -> pd.DataFrame:
    rows = []
    for k, (prop, variant) in enumerate([("numerically stable", "naive"), ("numerically stable", "epsilon"),
                                         ("consistent with linear mapping", "epsilon"),
                                         ("conserves relevance (model, biases kept)", "epsilon")]):
        ours = "yes"
        rows.append({"property": prop, "variant": variant, "value": 0.01 * (k + 1), "threshold": 0.1,
                     "ours": "no" if prop.endswith("kept)") else ours, "thesis": "yes", "measured": "m",
                     "agrees": k >= disagree})
    return pd.DataFrame(rows)


def _claims(similarity, tv, t41, alpha=0.05) -> cl.Claims:
    from pages import run_cells

    ns = run_cells(2, "claims", similarity=similarity, tv=tv, t41=t41)
    return cl.Claims(ns["chapter_claims"], alpha=alpha)


def test_chapter_2_claims_on_agreeing_maps_and_a_smoother_smoothgrad_hold():
    fam = _claims(_similarity(), _tv(), _t41())
    assert fam.verdict("The methods' maps point") == cl.HELD
    assert fam.verdict("SmoothGrad's maps are less noisy") == cl.HELD
    assert fam.verdict("Table 4.1") == cl.HELD
    assert fam.m == 4  # three pairs and the paired test; Table 4.1 is checked, not tested
    # the row of our model with its biases is not the thesis's property: left out of the invariant
    assert fam.claims[2].evidence.n == 3
    assert {c.source for c in fam.claims} == {cl.THESIS}


def test_chapter_2_claims_fail_where_the_data_say_so():
    fam = _claims(_similarity(rho=(0.6, -0.5, 0.5)), _tv(smoother=False), _t41(disagree=1))
    assert fam.verdict("The methods' maps point") == cl.NOT_HELD
    assert fam.verdict("SmoothGrad's maps are less noisy") == cl.NOT_HELD
    assert fam.verdict("Table 4.1") == cl.NOT_HELD


def test_chapter_2_without_smoothgrad_the_noise_claim_is_not_applicable():
    sim = _similarity()
    sim = sim[(sim.a != "smoothgrad") & (sim.b != "smoothgrad")]
    fam = _claims(sim, _tv().drop(columns="smoothgrad"), _t41())
    noisy = fam.claims[1]
    assert noisy.verdict == cl.NOT_APPLICABLE and "lacks SmoothGrad" in noisy.evidence.reason
    assert fam.verdict("The methods' maps point") == cl.HELD  # the one remaining pair


def test_total_variation_and_the_tables():
    m = torch.zeros(2, 1, 4, 4)
    m[1, :, :, 2:] = 1.0  # one vertical edge: 4 of the 12 horizontal neighbour pairs differ
    assert ch02.total_variation(m) == pytest.approx([0.0, 4 / 12])
    tv = ch02.noise_table(pd.DataFrame({"gradient": [0.1, 0.3], "smoothgrad": [0.05, 0.05]}))
    assert list(tv.index) == ["Gradient", "SmoothGrad"] and tv.loc["Gradient", "median"] == "0.2000"
    ag = ch02.agreement_table(_similarity(n=20), alpha=0.05)
    assert list(ag.columns) == ["images", "Spearman ρ, median", "SSIM, median"]
    assert ag.loc["Gradient – SmoothGrad", "images"] == 20
    assert ag.loc["Gradient – SmoothGrad", "Spearman ρ, median"] == "0.59 [0.57, 0.62]"  # median [95% interval]


def test_similarity_pairs_every_two_methods_in_order():
    g = torch.Generator().manual_seed(0)
    maps = {m: torch.rand(3, 1, 8, 8, generator=g) for m in ("gradient", "smoothgrad", "lrp_epsilon")}
    maps["smoothgrad"] = maps["gradient"].clone()
    sim = ch02.similarity(maps, ["a", "b", "c"])
    assert list(dict.fromkeys(zip(sim.a, sim.b))) == [("gradient", "smoothgrad"), ("gradient", "lrp_epsilon"),
                                                      ("smoothgrad", "lrp_epsilon")]
    assert sim[sim.b == "smoothgrad"].spearman.tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_chapter_2_exercise_values_and_the_model_note():
    from pages import run_cells

    t41 = _t41()
    fam_claims = run_cells(2, "claims", similarity=_similarity(), tv=_tv(), t41=t41)["chapter_claims"]
    lrp = pd.DataFrame({"image_id": ["a", "a", "b", "b"], "variant": ["naive", "epsilon"] * 2})
    sim, tv = _similarity(), _tv()
    v = ch02.exercise_values(lrp, t41, sim, tv, fam_claims, alpha=0.05, objective="loss")
    assert v["ex02_lrp_n"] == "2" and v["ex02_stability"] == "naive 0.0100, epsilon 0.0200"
    assert v["ex02_stability_max"] == "10%" and v["ex02_alpha"] == "0.05" and v["ex02_other_alpha"] == "0.01"
    assert v["ex02_verdicts"] == "3 held, 0 not held, 0 inconclusive, 0 not applicable"
    assert v["ex02_objective"] == "loss" and v["ex02_tv"].startswith("Gradient 0.0")
    assert v["ex02_rho"].startswith("Gradient – SmoothGrad +0.6")
    assert fam_claims[0].verdict is None  # decided on copies: the page's own claims are left as they are
    assert "no variant conserves relevance" in ch02.model_note(t41)
    assert ch02.model_note(t41.assign(ours="yes")) == ""


def test_recomputed_loss_maps_are_the_stored_ones_and_the_class_score_maps_differ(smoke_results):
    """The page's ``objective`` parameter: "loss" recomputes the stored maps (same noise, targets, encoding)."""
    from apem.run import results

    res = results("smoke", progress=False, root=smoke_results)
    C = res.table[(res.table.group == "correct") & (res.table.stage == 3)]
    ids = list(C.image_id.unique())[:2]
    methods = ["gradient", "smoothgrad"]
    stored = {m: torch.stack([res.map(i, m, 3) for i in ids]) for m in methods}
    loss = ch02.recomputed_maps(res, ids, methods, 3, "loss")
    for m in methods:  # SmoothGrad's sums may differ in the last bits (batch shape): at most one grey level
        assert (loss[m] - stored[m]).abs().max() <= 1 / 255 + 1e-6, m
    logit = ch02.recomputed_maps(res, ids, methods, 3, "logit")
    assert all(not torch.equal(logit[m], stored[m]) for m in methods)
    again = ch02.recomputed_maps(res, ids, methods, 3, "logit")  # read back from the store
    assert all(torch.equal(again[m], logit[m]) for m in methods)
