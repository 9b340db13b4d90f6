"""Chapter 0: the closed forms of the hand-built models against apem's own search, and their ability to fail."""

from __future__ import annotations

import math
from fractions import Fraction as F

import numpy as np
import pandas as pd
import pytest
import torch

from apem import book, by_hand, claims, metric
from apem.chapters import ch00
from apem.config import load_config
from apem.metric.clean import loss_gradient
from pages import run_cells  # tests/pages.py (rootdir-relative import, as the other chapter tests)

BOUND = metric.THESIS_BOUND
MODES = by_hand.MODES


def spec(**kw):
    return metric.SearchSpec(batch_size=by_hand.BATCH, block=by_hand.BLOCK).replace(**kw)


def random_maps(n=24, seed=1):
    return [tuple(v) for v in np.random.default_rng(seed).random((n, by_hand.PIXELS))]


# ----------------------------------------------------------------------------- the piecewise-linear first flip


def line(m0, s, knots=()):
    return by_hand.Margin(lambda e: F(m0) + F(s) * e, list(knots))


def test_first_flip_of_a_line_is_floor_of_the_root_plus_one_and_a_tie_keeps_the_target():
    assert by_hand.first_flip(line(10, F(-3, 7)), BOUND) == math.floor(F(70, 3)) + 1 == 24
    m = line(12, -3)  # root exactly 4: a tie at 4, so 5
    assert by_hand.first_flip(m, BOUND) == 5 and by_hand.tie_before(m, 5)
    assert not by_hand.tie_before(line(10, F(-3, 7)), 24)
    assert by_hand.first_flip(line(10, F(1, 3)), BOUND) == BOUND  # rising margin: censored
    assert by_hand.first_flip(line(10, -1), 8) == 8  # root 10 beyond bound 8: censored at the bound
    assert by_hand.first_flip(line(-1, 0), BOUND) == 1  # already changed: the first tested step


def test_first_flip_skips_a_negative_stretch_between_two_integers_and_finds_a_later_one():
    # V-shaped dip below zero only on (3.2, 3.8): no integer inside, then a real flip past 20
    def f(e):
        dip = max(F(0), F(3, 10) - abs(e - F(7, 2)))  # a tent of height 0.3 centred at 3.5, width 0.6
        return F(1, 10) - 2 * dip + (F(0) if e < 20 else -(e - 20))
    m = by_hand.Margin(f, [F(32, 10), F(7, 2), F(38, 10), F(20)])
    assert by_hand.first_flip(m, BOUND) == 21
    # widen the dip so that it holds step 4: found
    def g(e):
        dip = max(F(0), F(1) - abs(e - F(7, 2)))
        return F(1, 10) - dip
    assert by_hand.first_flip(by_hand.Margin(g, [F(5, 2), F(7, 2), F(9, 2)]), BOUND) == 3


def test_thesis_by_hand_is_the_literal_loop():
    # monotone: the loop reports floor(root) + 1 after 2 + 10 + 5 + 5 tests (0, 1000 | 0..900, 1000 | ...)
    eps, n, tested = by_hand.thesis_by_hand(line(10, F(-20, 1889)), BOUND)
    assert eps == 945 and tested[:2] == [0, 1000] and tested[-1] == 945 and n == len(tested)
    # censored: the last pace runs to the bound
    eps, _, _ = by_hand.thesis_by_hand(line(10, F(-1, 10**6)), BOUND)
    assert eps == BOUND


# ----------------------------------------------------------------------------- linear classifier: closed form vs apem


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("weight_scale, margin", [(1.0, 10.0), (3.0, 2.5), (0.25, 40.0)])
def test_every_mode_returns_the_closed_form_on_every_map(clip, weight_scale, margin):
    toy = by_hand.toy(weight_scale, margin)
    maps = random_maps() + list(by_hand.NAMED_MAPS.values())
    closed = by_hand.closed_forms(toy, maps, BOUND, clip)
    for mode in MODES:
        found = by_hand.searched(toy.model(), toy.image(), maps, spec(mode=mode, clip=clip))
        bad = by_hand.disagreements(closed, found)
        assert not bad.any(), (mode, bad[bad].index.tolist())
    assert closed.undefined_plus.sum() == 1  # the all-ones map's irrelevance has no direction


def test_clipping_flips_only_when_the_inputs_can_take_the_margin_below_zero():
    R = (0.9, 0.6, 0.3, 0.1)
    drop = float(by_hand.clip_drop(by_hand.toy(1.0, 10.0), R))
    for margin, censored in ((0.9 * drop, False), (1.1 * drop, True)):
        toy = by_hand.toy(1.0, margin)
        closed = by_hand.closed_forms(toy, [R], BOUND, True)
        assert bool(closed.censored_minus[0]) == censored
        found = by_hand.searched(toy.model(), toy.image(), [R], spec(mode="linear", clip=True))
        assert not by_hand.disagreements(closed, found).any()


def test_a_wrong_closed_form_is_caught(monkeypatch):
    toy = by_hand.toy(1.0, 10.0)
    maps = random_maps(30, seed=2)
    closed = by_hand.closed_forms(toy, maps, BOUND, False)
    found = by_hand.searched(toy.model(), toy.image(), maps, spec(mode="bisect"))
    assert not by_hand.disagreements(closed, found).any()
    # 1. rounding the root instead of the next whole step past it
    rounded = closed.copy()
    for side in ("minus", "plus"):
        rounded[f"eps_{side}"] = closed[f"root_{side}"].round().astype(int)
    assert by_hand.disagreements(rounded, found).sum() > 10
    # 2. forgetting that the one-channel map is broadcast to three channels (||R||_1 three times too small)
    orig = by_hand.direction_by_hand

    def narrow(toy_, R):
        d, ok = orig(toy_, R)
        return [3 * v for v in d], ok

    monkeypatch.setattr(by_hand, "direction_by_hand", narrow)  # where closed_forms looks it up
    wrong = by_hand.closed_forms(toy, maps, BOUND, False)
    monkeypatch.undo()
    assert by_hand.disagreements(wrong, found).all()
    # 3. the sign of the gradient taken the wrong way round: the margin rises, every search "censored"
    flipped = closed.copy()
    for side in ("minus", "plus"):
        flipped[f"eps_{side}"], flipped[f"censored_{side}"] = BOUND, True
    assert by_hand.disagreements(flipped, found).all()


def test_the_direction_by_hand_is_apems_direction():
    toy = by_hand.toy(1.0, 10.0)
    model, x = toy.model(), toy.image()
    grad, _, _ = loss_gradient(model, x)
    maps = random_maps(5)
    d_apem, ok = metric.directions(by_hand.maps_tensor(maps), grad, image_index=torch.zeros(len(maps), dtype=torch.long))
    for R, d in zip(maps, d_apem):
        mine, defined = by_hand.direction_by_hand(toy, R)
        assert defined
        assert np.allclose([float(v) for v in mine], d.flatten().numpy(), rtol=1e-12, atol=0)


def test_an_exact_tie_is_flagged_and_either_neighbour_agrees():
    toy = by_hand.toy(1.0, 10.0)
    closed = by_hand.closed_forms(toy, [(1.0, 0.0, 0.0, 0.0)], BOUND, False)  # root = 10 / (4/256) = 640 exactly
    assert closed.root_minus[0] == 640 and closed.eps_minus[0] == 641 and closed.tie_minus[0]
    found = closed.copy()
    found["eps_minus"] = 640
    assert not by_hand.disagreements(closed, found).any()
    found["eps_minus"] = 639
    assert by_hand.disagreements(closed, found).any()


# ----------------------------------------------------------------------------- the two-layer net


@pytest.mark.parametrize("window", [(250, 256), (37, 39), (300, 306), (905, 907)])
def test_the_net_changes_exactly_on_the_window_and_each_mode_does_what_its_docs_say(window):
    toy = by_hand.toy(1.0, 10.0)
    R = (0.9, 0.6, 0.3, 0.1)
    d, _ = by_hand.direction_by_hand(toy, R)
    lin = by_hand.linear_margin(toy, d)
    dip = by_hand.dip_for_window(lin, window)
    net = by_hand.dip_net(toy, dip)
    m = by_hand.net_margin(lin, dip)
    x = toy.image()
    grad, _, y = loss_gradient(net, x)
    dt = metric.directions(by_hand.maps_tensor([R]), grad)[0]
    with torch.no_grad():
        steps = torch.arange(0, 1001, dtype=torch.float64)
        pred = net(x + steps[:, None, None, None] * dt).argmax(1)
    changed = [int(e) for e in steps[pred != 0]]
    a, b = window
    assert changed[: b - a] == list(range(a, b)) and changed[b - a] == by_hand.first_flip(lin, BOUND)
    assert by_hand.first_flip(m, BOUND) == a
    # the closed-form margin is the net's margin
    with torch.no_grad():
        z = net(x + steps[::50, None, None, None] * dt)
    assert np.allclose((z[:, 0] - z[:, 1]).numpy(), [float(m(int(e))) for e in steps[::50]], atol=1e-9)
    lin_eps = int(metric.search(net, x, dt, y, spec=spec(mode="linear")).eps[0])
    r = metric.search(net, x, dt, y, spec=spec(mode="thesis"))
    eps_t, n_t, tested = by_hand.thesis_by_hand(m, BOUND)
    assert lin_eps == a
    assert (int(r.eps[0]), int(r.n_forward[0])) == (eps_t, n_t)
    on_grid = any(a <= s < b for s in tested)
    assert (eps_t == a) == on_grid


def test_a_window_after_the_linear_flip_is_refused():
    toy = by_hand.toy(1.0, 10.0)
    d, _ = by_hand.direction_by_hand(toy, (0.9, 0.6, 0.3, 0.1))
    with pytest.raises(ValueError, match="before its own flip"):
        by_hand.dip_for_window(by_hand.linear_margin(toy, d), (940, 950))
    with pytest.raises(ValueError, match="2 <= first"):
        by_hand.dip_for_window(by_hand.linear_margin(toy, d), (5, 5))


# ----------------------------------------------------------------------------- the page's own cells


def page(tags=("setting", "by-hand", "searches", "claims"), **params):
    """Run the page's cells tagged ``tags`` on its parameters cell's defaults, with ``params`` (params: smoke)."""
    ns = run_cells(0, "parameters")
    ns.update(params="smoke", **params)
    return run_cells(0, *tags, **ns)


def verdicts(ns, alpha=0.05):
    return claims.Claims(ns["chapter_claims"], alpha=alpha).frame().verdict.tolist()


def test_the_pages_claims_follow_the_window_and_can_fail():
    assert verdicts(page(n_maps=10)) == ["held"] * 6
    on_grid = page(n_maps=0, window=[300, 306])
    assert verdicts(on_grid)[:4] == ["held", "held", "held", "not held"]
    # a closed form that disagrees with the search makes the first claim fail: the page's own claims cell, re-run
    on_grid["closed"].loc[0, "eps_minus"] += 1
    assert verdicts(run_cells(0, "claims", **on_grid))[0] == "not held"
    # a thesis search that returned another step (or cost) than the loop by hand fails the third
    on_grid["closed"].loc[0, "eps_minus"] -= 1
    on_grid["loop"] = (on_grid["loop"][0], on_grid["loop"][1] + 1, on_grid["loop"][2])
    assert verdicts(run_cells(0, "claims", **on_grid))[:4] == ["held", "held", "not held", "not held"]


# ----------------------------------------------------------------------------- section 5.1: missing and extra regions


def test_the_regions_model_gives_the_hand_computed_fractions_and_the_search_finds_them():
    """Sensitivities (6, 3.5, 1.5, 1.5)/256, m0 = 10: eps* = m0 / (R-weighted mean sensitivity), worked by hand.

    correct (1, 1, 0, 0): mean 4.75/256 -> 2560/4.75 = 10240/19 = 538.9 -> 539; 1 - R: mean 1.5/256 -> 5120/3 -> 1707
    misses (1, 0, 0, 0): 6/256 -> 1280/3 -> 427; 1 - R = (0, 1, 1, 1): 6.5/768 -> 15360/13 = 1181.5 -> 1182
    extra (1, 1, 1, 0): 11/768 -> 7680/11 = 698.2 -> 699; 1 - R = (0, 0, 0, 1): 1.5/256 -> 5120/3 -> 1707
    """
    ns = page(n_maps=0)
    h = ns["region_hand"]
    correct, misses, extra = (h[n] for n in ch00.REGION_MAPS)
    roots = [(v["minus"]["root"], v["plus"]["root"]) for v in (correct, misses, extra)]
    assert roots == [(F(10240, 19), F(5120, 3)), (F(1280, 3), F(15360, 13)), (F(7680, 11), F(5120, 3))]
    steps = [(v["minus"]["step"], v["plus"]["step"]) for v in (correct, misses, extra)]
    assert steps == [(539, 1707), (427, 1182), (699, 1707)]
    assert [ch00.region_eps(v, "apem") for v in (correct, misses, extra)] == [1168, 755, 1008]
    f = ns["region_found"]  # apem's search, the configuration's mode
    assert f.eps_minus.tolist() == [539, 427, 699] and f.eps_plus.tolist() == [1707, 1182, 1707]
    fam = claims.Claims(ns["chapter_claims"])
    missing, marked = fam.claims[-2:]
    assert (missing.refs(), marked.refs()) == (("5.1-missing-region",), ("5.1-extra-region",))
    assert missing.verdict == marked.verdict == claims.HELD
    table = ch00.region_table(ns["region_names"], ns["region_maps"], h, f, ns["spec"])
    assert table.loc[list(ch00.REGION_MAPS)[0], "ε⁻: ε*"] == "10240/19 ≈ 538.95"
    assert table["APEM closed form"].tolist() == ["+1,168", "+755", "+1,008"]
    assert "APEM +755 against +1,168" in ch00.region_note(ns["region_names"], h)


def test_the_region_claims_fail_when_the_model_contradicts_them():
    # the missed region is read as weakly as the background: 1 - R gains nothing sensitive, eps-plus does not fall
    ns = page(n_maps=0, regions=[6, 1.5, 1.5, 1.5])
    fam = claims.Claims(ns["chapter_claims"])
    misses = ns["region_hand"][list(ch00.REGION_MAPS)[1]]
    assert misses["plus"]["step"] == ns["region_hand"][list(ch00.REGION_MAPS)[0]]["plus"]["step"] == 1707  # equal
    assert fam.claims[-2].verdict == claims.NOT_HELD
    assert fam.claims[-2].evidence.estimate == "2 of 6 checks violate it"  # eps-plus and APEM not lower
    # a background read unequally: marking its weak pixel leaves the strong one in 1 - R, so eps-plus falls
    ns = page(n_maps=0, regions=[6, 3.5, 0.5, 3])
    assert ns["region_hand"][list(ch00.REGION_MAPS)[2]]["plus"]["root"] == F(2560, 3)  # m0 / (3/256)
    fam = claims.Claims(ns["chapter_claims"])
    assert fam.claims[-1].verdict == claims.NOT_HELD
    assert fam.claims[-1].evidence.estimate == "1 of 7 checks violate it"  # eps-plus lower; APEM still lower
    # a search that disagrees with the closed form fails the claim, whatever the comparisons
    ns = page(n_maps=0)
    ns["region_closed"].loc[1, "eps_plus"] += 5
    fam = claims.Claims(run_cells(0, "claims", **ns)["chapter_claims"])
    assert (fam.claims[-2].verdict, fam.claims[-1].verdict) == (claims.NOT_HELD, claims.HELD)


def test_a_background_of_zero_sensitivity_leaves_the_correct_maps_irrelevance_map_undefined():
    ns = page(n_maps=0, regions=[4, 2, 0, 0])
    correct, misses, extra = (ns["region_hand"][n] for n in ch00.REGION_MAPS)
    assert correct["plus"] is None and extra["plus"] is None  # 1 - R is zero wherever the gradient is not
    assert misses["plus"]["root"] == F(3840) and misses["minus"]["root"] == F(640)  # exact ties: the next step
    assert ns["region_found"].undefined_plus.tolist() == [True, False, True]  # apem agrees: no direction
    assert ch00.region_eps(correct, "apem") is None and ch00.region_eps(misses, "apem") == 3841 - 641
    fam = claims.Claims(ns["chapter_claims"])
    # a comparison with an undefined value orders nothing: both claims are not applicable, and say why
    assert (fam.claims[-2].verdict, fam.claims[-1].verdict) == (claims.NOT_APPLICABLE, claims.NOT_APPLICABLE)
    assert fam.claims[-2].evidence.reason.startswith("its ε⁺ is lower; its APEM is lower: no comparison orders")
    assert "its APEM is lower" in fam.claims[-1].evidence.reason and "ε⁻" not in fam.claims[-1].evidence.reason
    assert "undefined" in ch00.region_note(ns["region_names"], ns["region_hand"])


def test_less_orders_infinite_and_undefined_values():
    assert ch00.less(3, math.inf) is True and ch00.less(math.inf, 3) is False
    assert ch00.less(math.inf, math.inf) is None and ch00.less(math.inf, math.inf, or_equal=True) is True
    assert ch00.less(None, 3) is None and ch00.less(4, 4, or_equal=True) is True and ch00.less(4, 4) is False
    assert ch00.region_eps({"minus": {"root": None, "step": 5}, "plus": {"root": None, "step": math.inf}},
                           "apem") == math.inf


def test_the_regions_model_refuses_bad_sensitivities():
    with pytest.raises(ValueError, match="regions must be 4 sensitivities"):
        ch00.regions_toy([1, 2, 3])
    with pytest.raises(ValueError, match="regions must be 4 sensitivities"):
        ch00.regions_toy([0, 0, 0, 0])
    t = ch00.regions_toy([6, 3.5, 1.5, 1.5], 2.0, 5.0)
    assert [abs(w) * 256 for w in t.dw[:4]] == [12, 7, 3, 3] and t.m0 == 5.0 and t.x == by_hand.toy().x


def test_the_page_with_clipping_is_censored_everywhere_and_still_agrees():
    ns = page(n_maps=5, clip=True, mode="thesis")
    assert ns["spec"].mode == "thesis" and ns["spec"].clip
    f = ns["found"]["thesis"]
    assert (f.censored_minus | f.undefined_minus).all() and (f.censored_plus | f.undefined_plus).all()
    assert verdicts(ns)[0] == "held"
    assert ns["hand"]["minus"]["step"] == ns["spec"].bound and ns["hand"]["minus"]["floor"] > 0
    assert "censored" in ch00.hand_table(ns["hand"], ns["spec"]).to_string()


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("weight_scale, margin", [(1.0, 10.0), (3.0, 2.5), (40.0, 5.0)])
def test_the_pages_fractions_give_the_closed_form(clip, weight_scale, margin):
    """The few lines of exact arithmetic on the page agree with :func:`apem.by_hand.closed_forms` on every map."""
    ns = page(("setting", "by-hand"), clip=clip, weight_scale=weight_scale, margin=margin)
    maps = [tuple(round(v, 2) for v in R) for R in random_maps(20, seed=3)] + list(by_hand.NAMED_MAPS.values())
    closed = by_hand.closed_forms(ns["toy"], maps, BOUND, clip)
    for i, R in enumerate(maps):
        for side, M in (("minus", R), ("plus", [1 - F(str(r)) for r in R])):
            h = ns["on_paper"](M)
            if closed[f"undefined_{side}"][i]:
                assert h is None
                continue
            # the page reads 0.08 as 8/100, the model holds the nearest float: at an exact tie either neighbour agrees
            c, tie = closed[f"eps_{side}"][i], closed[f"tie_{side}"][i]
            assert h["step"] == c or (h["tie"] and c == h["step"] - 1) or (tie and h["step"] == c - 1), (R, side)
            if not clip:
                assert float(h["root"]) == pytest.approx(closed[f"root_{side}"][i], rel=1e-12)


def test_the_pages_exact_weights_matter():
    """The issue's hand computation: the weights rounded to 5 decimals give eps-plus 2289, the exact ones 2288."""
    ns = page(("setting", "by-hand"))
    assert (ns["hand"]["minus"]["step"], ns["hand"]["plus"]["step"]) == (945, 2288)
    assert ns["hand"]["minus"]["root"] == F(97280, 103)
    assert "+1/64" in ch00.model_table(ns["toy"], ns["R"]).to_string()
    ns["dw"] = [F(str(round(w, 5))) for w in ns["toy"].dw]  # what a student read from a table printed to 5 decimals
    assert ns["on_paper"]([1 - F(str(r)) for r in ns["R"]])["step"] == 2289


def test_exact_prints_fractions_as_a_student_writes_them():
    assert ch00.exact(1 / 64, 0) == "1/64" and ch00.exact(F(57, 10), 2) == "57/10 = 5.70"
    assert ch00.exact(F(-103, 9728), 6) == "-103/9728 ≈ -0.010588" and ch00.exact(F(3), 2) == "3"


def test_exercise_values_quote_the_reference_numbers():
    cfg = load_config("smoke")
    spec = ch00.search_spec(cfg)
    R = (0.9, 0.6, 0.3, 0.1)
    v = ch00.exercise_values(by_hand.toy(1.0, 10.0), R, (250, 256), spec)
    assert (v["ch00-eps-minus"], v["ch00-eps-plus"], v["ch00-net-exact"], v["ch00-net-thesis"]) == (945, 2288, 250, 945)
    assert v["ch00-root-minus"] == pytest.approx(97280 / 103) and v["ch00-clip-drop"] == pytest.approx(0.04541015625)
    half = ch00.exercise_values(by_hand.toy(1.0, 5.0), R, (250, 256), spec)
    assert half["ch00-root-minus"] == pytest.approx(v["ch00-root-minus"] / 2) and half["ch00-m0"] == 5.0
    on_grid = ch00.exercise_values(by_hand.toy(1.0, 10.0), R, (300, 306), spec)
    assert on_grid["ch00-net-thesis"] == on_grid["ch00-net-exact"] == 300


def test_bad_parameters_are_one_line_errors():
    with pytest.raises(ValueError, match="relevance must be 4 values"):
        ch00.check_parameters([0.5, 2.0, 0.1, 0.1], 100)
    with pytest.raises(ValueError, match="n_maps must be"):
        ch00.check_parameters([0.5, 0.5, 0.1, 0.1], -1)
    with pytest.raises(ValueError, match="margin must be in"):
        by_hand.toy(1.0, -1.0)
    with pytest.raises(ValueError, match="weight_scale"):
        by_hand.toy(0.0, 10.0)


# ----------------------------------------------------------------------------- the chapter in the book


def test_chapter_zero_is_found_by_number_and_declares_its_parameters():
    nb = book.find_chapter(0)
    assert nb.stem == "00_apem_by_hand" and book.find_chapter("00") == nb
    ps = book.chapter_parameters(nb)
    for name in ("alpha", "weight_scale", "margin", "relevance", "mode", "clip", "bound", "window", "n_maps",
                 "regions"):
        assert name in ps, name
    assert ps["mode"].types == (str, type(None)) and ps["clip"].types == (bool, type(None))
    _, per = book.split_params([("clip", "True"), ("window", "[300, 306]"), ("mode", "thesis")], [nb])
    assert per[nb.stem] == {"clip": True, "window": [300, 306], "mode": "thesis"}


def test_chapter_zero_alone_starts_no_image_run(monkeypatch, tmp_path):
    """`apem book --chapter 0` must run in seconds: no chapter asked for reads results, so `run` is not called;
    with a chapter that reads them it is."""
    import apem.run

    calls, executed = [], []
    monkeypatch.setattr(apem.run, "run", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(book, "execute_chapter", lambda nb, *a, **k: executed.append(nb.stem)
                        or book.ChapterOutcome(nb.stem, "executed"))
    assert not book.needs_results(book.find_chapter(0)) and book.needs_results(book.find_chapter(3))
    book.build("smoke", ["0"], html=False, root=tmp_path)
    assert calls == [] and executed == ["00_apem_by_hand"]
    book.build("smoke", ["0", "3"], html=False, root=tmp_path)
    assert len(calls) == 1 and executed[1:] == ["00_apem_by_hand", "03_apem_results"]
