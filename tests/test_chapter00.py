"""Chapter 0: the closed forms of the hand-built models against apem's own search, and their ability to fail."""

from __future__ import annotations

import math
from fractions import Fraction as F

import numpy as np
import pandas as pd
import pytest
import torch

from apem import book, metric
from apem import by_hand
from apem.chapters import ch00
from apem.metric.clean import loss_gradient

BOUND = metric.THESIS_BOUND
MODES = ch00.MODES


def spec(**kw):
    return metric.SearchSpec(batch_size=ch00.BATCH, block=ch00.BLOCK).replace(**kw)


def random_maps(n=24, seed=1):
    return [tuple(v) for v in np.random.default_rng(seed).random((n, ch00.PIXELS))]


# ----------------------------------------------------------------------------- the piecewise-linear first flip


def line(m0, s, knots=()):
    return ch00.Margin(lambda e: F(m0) + F(s) * e, list(knots))


def test_first_flip_of_a_line_is_floor_of_the_root_plus_one_and_a_tie_keeps_the_target():
    assert ch00.first_flip(line(10, F(-3, 7)), BOUND) == math.floor(F(70, 3)) + 1 == 24
    m = line(12, -3)  # root exactly 4: a tie at 4, so 5
    assert ch00.first_flip(m, BOUND) == 5 and ch00.tie_before(m, 5)
    assert not ch00.tie_before(line(10, F(-3, 7)), 24)
    assert ch00.first_flip(line(10, F(1, 3)), BOUND) == BOUND  # rising margin: censored
    assert ch00.first_flip(line(10, -1), 8) == 8  # root 10 beyond bound 8: censored at the bound
    assert ch00.first_flip(line(-1, 0), BOUND) == 1  # already changed: the first tested step


def test_first_flip_skips_a_negative_stretch_between_two_integers_and_finds_a_later_one():
    # V-shaped dip below zero only on (3.2, 3.8): no integer inside, then a real flip past 20
    def f(e):
        dip = max(F(0), F(3, 10) - abs(e - F(7, 2)))  # a tent of height 0.3 centred at 3.5, width 0.6
        return F(1, 10) - 2 * dip + (F(0) if e < 20 else -(e - 20))
    m = ch00.Margin(f, [F(32, 10), F(7, 2), F(38, 10), F(20)])
    assert ch00.first_flip(m, BOUND) == 21
    # widen the dip so that it holds step 4: found
    def g(e):
        dip = max(F(0), F(1) - abs(e - F(7, 2)))
        return F(1, 10) - dip
    assert ch00.first_flip(ch00.Margin(g, [F(5, 2), F(7, 2), F(9, 2)]), BOUND) == 3


def test_thesis_by_hand_is_the_literal_loop():
    # monotone: the loop reports floor(root) + 1 after 2 + 10 + 5 + 5 tests (0, 1000 | 0..900, 1000 | ...)
    eps, n, tested = ch00.thesis_by_hand(line(10, F(-20, 1889)), BOUND)
    assert eps == 945 and tested[:2] == [0, 1000] and tested[-1] == 945 and n == len(tested)
    # censored: the last pace runs to the bound
    eps, _, _ = ch00.thesis_by_hand(line(10, F(-1, 10**6)), BOUND)
    assert eps == BOUND


# ----------------------------------------------------------------------------- linear classifier: closed form vs apem


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("weight_scale, margin", [(1.0, 10.0), (3.0, 2.5), (0.25, 40.0)])
def test_every_mode_returns_the_closed_form_on_every_map(clip, weight_scale, margin):
    toy = ch00.toy(weight_scale, margin)
    maps = random_maps() + list(ch00.NAMED_MAPS.values())
    closed = ch00.closed_forms(toy, maps, BOUND, clip)
    for mode in MODES:
        found = ch00.searched(toy.model(), toy.image(), maps, spec(mode=mode, clip=clip))
        bad = ch00.disagreements(closed, found)
        assert not bad.any(), (mode, bad[bad].index.tolist())
    assert closed.undefined_plus.sum() == 1  # the all-ones map's irrelevance has no direction


def test_clipping_flips_only_when_the_inputs_can_take_the_margin_below_zero():
    R = (0.9, 0.6, 0.3, 0.1)
    drop = float(ch00.clip_drop(ch00.toy(1.0, 10.0), R))
    for margin, censored in ((0.9 * drop, False), (1.1 * drop, True)):
        toy = ch00.toy(1.0, margin)
        closed = ch00.closed_forms(toy, [R], BOUND, True)
        assert bool(closed.censored_minus[0]) == censored
        found = ch00.searched(toy.model(), toy.image(), [R], spec(mode="linear", clip=True))
        assert not ch00.disagreements(closed, found).any()


def test_a_wrong_closed_form_is_caught(monkeypatch):
    toy = ch00.toy(1.0, 10.0)
    maps = random_maps(30, seed=2)
    closed = ch00.closed_forms(toy, maps, BOUND, False)
    found = ch00.searched(toy.model(), toy.image(), maps, spec(mode="bisect"))
    assert not ch00.disagreements(closed, found).any()
    # 1. rounding the root instead of the next whole step past it
    rounded = closed.copy()
    for side in ("minus", "plus"):
        rounded[f"eps_{side}"] = closed[f"root_{side}"].round().astype(int)
    assert ch00.disagreements(rounded, found).sum() > 10
    # 2. forgetting that the one-channel map is broadcast to three channels (||R||_1 three times too small)
    orig = ch00.direction_by_hand

    def narrow(toy_, R):
        d, ok = orig(toy_, R)
        return [3 * v for v in d], ok

    monkeypatch.setattr(by_hand, "direction_by_hand", narrow)  # where closed_forms looks it up
    wrong = ch00.closed_forms(toy, maps, BOUND, False)
    monkeypatch.undo()
    assert ch00.disagreements(wrong, found).all()
    # 3. the sign of the gradient taken the wrong way round: the margin rises, every search "censored"
    flipped = closed.copy()
    for side in ("minus", "plus"):
        flipped[f"eps_{side}"], flipped[f"censored_{side}"] = BOUND, True
    assert ch00.disagreements(flipped, found).all()


def test_the_direction_by_hand_is_apems_direction():
    toy = ch00.toy(1.0, 10.0)
    model, x = toy.model(), toy.image()
    grad, _, _ = loss_gradient(model, x)
    maps = random_maps(5)
    d_apem, ok = metric.directions(ch00.maps_tensor(maps), grad, image_index=torch.zeros(len(maps), dtype=torch.long))
    for R, d in zip(maps, d_apem):
        mine, defined = ch00.direction_by_hand(toy, R)
        assert defined
        assert np.allclose([float(v) for v in mine], d.flatten().numpy(), rtol=1e-12, atol=0)


def test_an_exact_tie_is_flagged_and_either_neighbour_agrees():
    toy = ch00.toy(1.0, 10.0)
    closed = ch00.closed_forms(toy, [(1.0, 0.0, 0.0, 0.0)], BOUND, False)  # root = 10 / (4/256) = 640 exactly
    assert closed.root_minus[0] == 640 and closed.eps_minus[0] == 641 and closed.tie_minus[0]
    found = closed.copy()
    found["eps_minus"] = 640
    assert not ch00.disagreements(closed, found).any()
    found["eps_minus"] = 639
    assert ch00.disagreements(closed, found).any()


# ----------------------------------------------------------------------------- the two-layer net


@pytest.mark.parametrize("window", [(250, 256), (37, 39), (300, 306), (905, 907)])
def test_the_net_changes_exactly_on_the_window_and_each_mode_does_what_its_docs_say(window):
    toy = ch00.toy(1.0, 10.0)
    R = (0.9, 0.6, 0.3, 0.1)
    d, _ = ch00.direction_by_hand(toy, R)
    lin = ch00.linear_margin(toy, d)
    dip = ch00.dip_for_window(lin, window)
    net = ch00.dip_net(toy, dip)
    m = ch00.net_margin(lin, dip)
    x = toy.image()
    grad, _, y = loss_gradient(net, x)
    dt = metric.directions(ch00.maps_tensor([R]), grad)[0]
    with torch.no_grad():
        steps = torch.arange(0, 1001, dtype=torch.float64)
        pred = net(x + steps[:, None, None, None] * dt).argmax(1)
    changed = [int(e) for e in steps[pred != 0]]
    a, b = window
    assert changed[: b - a] == list(range(a, b)) and changed[b - a] == ch00.first_flip(lin, BOUND)
    assert ch00.first_flip(m, BOUND) == a
    # the closed-form margin is the net's margin
    with torch.no_grad():
        z = net(x + steps[::50, None, None, None] * dt)
    assert np.allclose((z[:, 0] - z[:, 1]).numpy(), [float(m(int(e))) for e in steps[::50]], atol=1e-9)
    lin_eps = int(metric.search(net, x, dt, y, spec=spec(mode="linear")).eps[0])
    r = metric.search(net, x, dt, y, spec=spec(mode="thesis"))
    eps_t, n_t, tested = ch00.thesis_by_hand(m, BOUND)
    assert lin_eps == a
    assert (int(r.eps[0]), int(r.n_forward[0])) == (eps_t, n_t)
    on_grid = any(a <= s < b for s in tested)
    assert (eps_t == a) == on_grid


def test_a_window_after_the_linear_flip_is_refused():
    toy = ch00.toy(1.0, 10.0)
    d, _ = ch00.direction_by_hand(toy, (0.9, 0.6, 0.3, 0.1))
    with pytest.raises(ValueError, match="before its own flip"):
        ch00.dip_for_window(ch00.linear_margin(toy, d), (940, 950))
    with pytest.raises(ValueError, match="2 <= first"):
        ch00.dip_for_window(ch00.linear_margin(toy, d), (5, 5))


# ----------------------------------------------------------------------------- the page's verdicts


def verdicts(page):
    return page.claims().frame().verdict.tolist()


def test_the_page_verdicts_follow_the_window():
    page = ch00.Page("smoke", n_maps=10)
    assert verdicts(page) == ["held"] * 4
    on_grid = ch00.Page("smoke", n_maps=0, window=(300, 306))
    assert verdicts(on_grid) == ["held", "held", "held", "not held"]
    # a closed form that disagrees with the search makes the first claim fail
    on_grid._closed.loc[0, "eps_minus"] += 1
    assert verdicts(on_grid)[0] == "not held"


def test_the_page_with_clipping_is_censored_everywhere_and_still_agrees():
    page = ch00.Page("smoke", n_maps=5, clip=True, mode="thesis")
    assert page.mode == "thesis" and page.clip
    f = page._found["thesis"]
    assert (f.censored_minus | f.undefined_minus).all() and (f.censored_plus | f.undefined_plus).all()
    assert verdicts(page)[0] == "held"
    assert "censored" in page.side_by_side().to_string()


def test_bad_parameters_are_one_line_errors():
    with pytest.raises(ValueError, match="relevance must be 4 values"):
        ch00.Page("smoke", relevance=[0.5, 2.0, 0.1, 0.1])
    with pytest.raises(ValueError, match="margin must be in"):
        ch00.toy(1.0, -1.0)
    with pytest.raises(ValueError, match="weight_scale"):
        ch00.toy(0.0, 10.0)


# ----------------------------------------------------------------------------- the chapter in the book


def test_chapter_zero_is_found_by_number_and_declares_its_parameters():
    nb = book.find_chapter(0)
    assert nb.stem == "00_apem_by_hand" and book.find_chapter("00") == nb
    ps = book.chapter_parameters(nb)
    for name in ("alpha", "weight_scale", "margin", "relevance", "mode", "clip", "bound", "window", "n_maps"):
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
