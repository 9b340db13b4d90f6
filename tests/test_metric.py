"""The epsilon searches against closed forms and slow, obviously-correct twins.

Models here are tiny and float64 with integer weights and dyadic inputs and
directions, so every logit is computed exactly and the closed forms (exact
rational arithmetic) must match bit for bit, ties included.
"""

import dataclasses
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from apem import metric
from apem.metric.bisect import Brackets, candidates, root_estimate
from apem.metric.directions import side_seed
from apem.metric import (
    SEARCH_MODES, apem, apem_norm, apem_terms, directions, evaluate_maps, map_shuffle_permutations, monotonicity_check,
    search, trace,
)

BOUND = metric.THESIS_BOUND
SHAPE = (3, 2, 2)  # tiny images: 12 values
N_IN = 12


# ----------------------------------------------------------------------------- models


def linear_classifier(W, b):
    """``f(x) = W x + b`` on flattened (3, 2, 2) images, float64."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(W.shape[1], W.shape[0])).double().eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.as_tensor(W, dtype=torch.float64))
        model[1].bias.copy_(torch.as_tensor(b, dtype=torch.float64))
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class LineModel(nn.Module):
    r"""Two classes; the prediction along ``x0 + s d0`` is scripted.

    ``s = (x - x0) . d0 / |d0|^2`` (exactly the step for ``x = x0 + e d0``);
    logit of class 0 is ``h(s) = max(s - c + 1/2, K w_1(s), K w_2(s), ...)``,
    ``w_i(s) = min(s - a_i + 1/2, b_i - 1/2 - s)``, class 1 (the prediction at
    ``s = 0``) has logit 0. At integer ``s`` the prediction is class 0 -- a
    change -- exactly for ``s`` in the windows ``[a_i, b_i)`` and for ``s >= c``.
    With ``K`` large the margin near ``s = 0`` follows the ``c`` branch, so its
    first-order root points at ``c`` and hides the windows from ``bisect``.
    """

    def __init__(self, x0, d0, c, windows=(), K=1000.0):
        super().__init__()
        self.x0, self.d0, self.c, self.windows, self.K = x0, d0, float(c), windows, K

    def forward(self, x):
        s = ((x - self.x0) * self.d0).flatten(1).sum(1) / (self.d0 * self.d0).sum()
        parts = [s - self.c + 0.5]
        for a, b in self.windows:
            parts.append(self.K * torch.minimum(s - a + 0.5, b - 0.5 - s))
        h = torch.stack(parts, 1).amax(1)
        return torch.stack([h, torch.zeros_like(h)], 1)


def line_setup(c, windows):
    x0 = torch.full((1, *SHAPE), 0.5, dtype=torch.float64)
    d0 = torch.zeros((1, *SHAPE), dtype=torch.float64)
    d0.view(-1)[:4] = torch.tensor([0.25, -0.5, 0.125, 0.25], dtype=torch.float64)
    return LineModel(x0, d0, c, windows), x0, d0


# ----------------------------------------------------------------------------- closed form


def closed_form_eps(W, b, x, d, t, bound=BOUND):
    r"""First integer ``e >= 1`` with ``argmax(W(x + e d) + b) != t``, exactly.

    For each class ``j != t`` the margin ``a_j + e s_j`` is linear in ``e``
    (``a_j = (w_t - w_j).x + b_t - b_j``, ``s_j = (w_t - w_j).d``); class ``j``
    takes the argmax when the margin is negative, or zero with ``j < t``
    (``torch.argmax`` returns the lowest index among ties). ``bound`` when
    no step below it changes the prediction.
    """
    F = Fraction
    x, d = [F(float(v)) for v in x.flatten()], [F(float(v)) for v in d.flatten()]
    best = bound
    for j in range(W.shape[0]):
        if j == t:
            continue
        w = [F(float(W[t, i] - W[j, i])) for i in range(len(x))]
        a = sum(wi * xi for wi, xi in zip(w, x)) + F(float(b[t] - b[j]))
        s = sum(wi * di for wi, di in zip(w, d))
        strict = j > t  # a tie with a later class is not a change
        if s < 0:
            q = -a / s  # margin hits zero at e = q
            e = (q.numerator // q.denominator) + 1 if strict else -((-q.numerator) // q.denominator)
            e = max(1, e)
        elif (a + s < 0) or (not strict and a + s <= 0):
            e = 1  # s >= 0: the margin only grows, so only e = 1 can qualify
        else:
            continue
        best = min(best, e)
    return best


def prediction(model, x):
    with torch.no_grad():
        return int(model(x).argmax(1)[0])


def linear_case(W, b, x, d_int, denom=64):
    model = linear_classifier(torch.tensor(W, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    x = torch.tensor(x, dtype=torch.float64).view(1, *SHAPE)
    d = torch.tensor(d_int, dtype=torch.float64).view(-1, *SHAPE) / denom
    return model, x, d


ints = st.integers(-6, 6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    K=st.integers(2, 5),
    data=st.data(),
    bound=st.sampled_from([BOUND, BOUND, 300, 37]),
)
@pytest.mark.slow  # over 3 s: left out of `make test-fast`
def test_every_mode_matches_the_closed_form_of_a_linear_classifier(K, data, bound):
    W = data.draw(st.lists(st.lists(ints, min_size=N_IN, max_size=N_IN), min_size=K, max_size=K))
    b = data.draw(st.lists(st.integers(-20, 20), min_size=K, max_size=K))
    x = data.draw(st.lists(st.integers(0, 4), min_size=N_IN, max_size=N_IN))
    d_int = data.draw(st.lists(st.lists(st.integers(-16, 16), min_size=N_IN, max_size=N_IN), min_size=6, max_size=6))
    denom = data.draw(st.sampled_from([4, 64, 1024]))
    model, xt, d = linear_case(W, b, x, d_int, denom)
    Wt, bt = torch.tensor(W, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    t = prediction(model, xt)
    want = torch.tensor([closed_form_eps(Wt, bt, xt, d[i], t, bound) for i in range(len(d))])
    ii = torch.zeros(len(d), dtype=torch.long)
    for mode in SEARCH_MODES:
        r = search(model, xt, d, image_index=ii, mode=mode, bound=bound, batch_size=5, block=7)
        zero = (d == 0).flatten(1).all(1)
        assert torch.equal(r.undefined, zero)
        assert torch.equal(r.eps[~zero], want[~zero]), (mode, r.eps.tolist(), want.tolist())
        assert torch.equal(r.censored[~zero], want[~zero] == bound), mode


@pytest.mark.parametrize("tie_class_first", [True, False])
def test_exact_ties_follow_argmax_lowest_index(tie_class_first):
    """At e = 37 class j ties the target exactly: a change iff j < t."""
    t, j = (1, 0) if tie_class_first else (0, 1)
    W = torch.zeros(3, N_IN, dtype=torch.float64)
    W[t, :4] = torch.tensor([2.0, 1.0, 0.0, 3.0])
    W[j, :4] = torch.tensor([1.0, 1.0, 2.0, 1.0])
    x = torch.tensor([1.0, 2.0, 1.0, 2.0] + [0.0] * 8, dtype=torch.float64).view(1, *SHAPE)
    d = torch.zeros(1, N_IN, dtype=torch.float64)
    d[0, :4] = torch.tensor([-0.25, 0.0, 0.125, -0.125])
    a = float((W[t] - W[j]) @ x.flatten())  # margin at e = 0 before the biases
    s = float((W[t] - W[j]) @ d[0])  # its slope along d (-0.75, exact)
    d = d.view(1, *SHAPE)
    b = torch.zeros(3, dtype=torch.float64)
    b[2] = -1e6  # a bystander class that never competes
    b[j] = a + 37 * s  # margin a - b_j + e s = s (e - 37): exactly zero at e = 37
    model = linear_classifier(W, b)
    assert prediction(model, x) == t
    want = 37 if tie_class_first else 38
    assert closed_form_eps(W, b, x, d[0], t) == want
    for mode in SEARCH_MODES:
        assert int(search(model, x, d, mode=mode).eps[0]) == want, mode


def test_censoring_and_zero_directions_do_not_disturb_the_batch():
    W = torch.tensor([[1.0] * N_IN, [0.0] * N_IN], dtype=torch.float64)
    model = linear_classifier(W, torch.tensor([0.0, -5.0], dtype=torch.float64))
    x = torch.full((1, *SHAPE), 0.5, dtype=torch.float64)  # margin 6 + 5 = 11
    d = torch.zeros(4, N_IN, dtype=torch.float64)
    d[0] = -1.0 / 64  # margin 11 - 12 e / 64: changes at e = 59
    d[1] = 1.0 / 64  # margin grows: never changes -> censored
    d[3, 0] = -1.0 / 1024  # margin 11 - e / 1024: changes at 11265 > bound -> censored
    d = d.view(4, *SHAPE)  # d[2] is zero: undefined
    for mode in SEARCH_MODES:
        r = search(model, x, d, image_index=torch.zeros(4, dtype=torch.long), mode=mode)
        assert r.eps.tolist() == [59, BOUND, 0, BOUND], mode
        assert r.censored.tolist() == [False, True, False, True]
        assert r.undefined.tolist() == [False, False, True, False]
        assert r.reasons()[2] == metric.REASONS[metric.REASON_ZERO_DIRECTION]
        assert int(r.n_forward[2]) == 0


# ----------------------------------------------------------------------------- slow twins


def thesis_loop(model, x, d, t, bound=BOUND, paces=(1000, 100, 10, 1)):
    """The original procedure, literally: batch 1, one forward per tested sigma."""
    n = 0
    start = 0
    exhausted = False
    for pace in paces:
        exhausted = True
        for sigma in range(start, bound, pace):
            n += 1
            with torch.no_grad():
                if int(model(x + sigma * d).argmax(1)[0]) != t:
                    exhausted = False
                    break
            start = sigma
    return start + 1, n, exhausted


def linear_loop(model, x, d, t, bound=BOUND):
    for e in range(1, bound):
        with torch.no_grad():
            if int(model(x + e * d).argmax(1)[0]) != t:
                return e
    return bound


def changes(model, x, d, e, t):
    with torch.no_grad():
        return int(model(x + e * d).argmax(1)[0]) != t


@pytest.mark.parametrize(
    "c, windows, want",
    [
        # window [250, 260) holds no multiple of 10, 100 or 1000: thesis and bisect miss it
        (5000, [(250, 260)], dict(linear=250, thesis=5000, bisect=5000)),
        # window around 3000: the coarse grid lands in it, the finer paces walk back to 2995
        (5000, [(2995, 3005)], dict(linear=2995, thesis=2995, bisect=5000)),
        # two windows: linear finds the first, thesis the one on its grid, bisect the last boundary
        (5000, [(150, 160), (2995, 3005)], dict(linear=150, thesis=2995, bisect=5000)),
        # monotone: everyone agrees
        (777, [], dict(linear=777, thesis=777, bisect=777)),
    ],
)
def test_non_monotone_flips_each_mode_does_what_its_docs_say(c, windows, want):
    model, x, d = line_setup(c, windows)
    t = prediction(model, x)
    for mode in SEARCH_MODES:
        r = search(model, x, d, mode=mode)
        assert int(r.eps[0]) == want[mode], mode
        e = int(r.eps[0])
        # every mode returns a step that changes the prediction
        assert changes(model, x, d, e, t)
    # the twins agree, forward count included
    eps, n, _ = thesis_loop(model, x, d, t)
    r = search(model, x, d, mode="thesis")
    assert (int(r.eps[0]), int(r.n_forward[0])) == (eps, n)
    assert linear_loop(model, x, d, t) == want["linear"]
    # bisect's answer is a flip boundary: its predecessor does not change the prediction
    assert not changes(model, x, d, want["bisect"] - 1, t)


def test_thesis_mode_reproduces_the_loop_and_its_forward_count_on_random_nets():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 6, 1), nn.Tanh(), nn.Flatten(), nn.Linear(24, 4)).double().eval()
    x = torch.rand(1, *SHAPE, dtype=torch.float64)
    d = torch.randn(10, *SHAPE, dtype=torch.float64)
    d = d / d.abs().flatten(1).sum(1).view(-1, 1, 1, 1)
    d = d * torch.logspace(-3, 1, 10, dtype=torch.float64).view(-1, 1, 1, 1)
    t = prediction(net, x)
    B = 2001
    ii = torch.zeros(10, dtype=torch.long)
    r = search(net, x, d, image_index=ii, mode="thesis", batch_size=4, bound=B)
    lin = search(net, x, d, image_index=ii, mode="linear", batch_size=64, block=64, bound=B)
    bis = search(net, x, d, image_index=ii, mode="bisect", batch_size=3, bound=B)
    for i in range(10):
        eps, n, exhausted = thesis_loop(net, x, d[i : i + 1], t, B)
        assert (int(r.eps[i]), int(r.n_forward[i]), bool(r.censored[i])) == (eps, n, exhausted)
        e = int(lin.eps[i])
        assert e == linear_loop(net, x, d[i : i + 1], t, B)
        # bisect: a verified boundary (or censored with bound - 1 unchanged), never before linear's
        e = int(bis.eps[i])
        assert e >= int(lin.eps[i])
        if bis.censored[i]:
            assert e == B and not changes(net, x, d[i : i + 1], B - 1, t)
        else:
            assert changes(net, x, d[i : i + 1], e, t)
            assert e == 1 or not changes(net, x, d[i : i + 1], e - 1, t)


def test_clean_input_already_changed():
    """Target given and not predicted: thesis -> 1 (sigma = 0 breaks); linear/bisect -> first e >= 1."""
    W = torch.tensor([[1.0] * N_IN, [0.0] * N_IN], dtype=torch.float64)
    model = linear_classifier(W, torch.tensor([0.0, -5.0], dtype=torch.float64))
    x = torch.full((1, *SHAPE), 0.5, dtype=torch.float64)  # predicted class 0, margin 11
    d = torch.full((2, *SHAPE), -1.0 / 64, dtype=torch.float64)
    d[1] = 1.0 / 64
    d = torch.cat([d, torch.full((1, *SHAPE), -1.0, dtype=torch.float64)])
    target = torch.tensor([1])
    ii = torch.zeros(3, dtype=torch.long)
    # the target's margin z1 - z0 = -11 - 12 e d_value: d[0]: -11 + 0.1875 e (< 0 until e = 58): e = 1;
    # d[1]: always < 0: e = 1; d[2]: -11 + 12 e > 0 from e = 1 on: never changed -> censored
    assert search(model, x, d, target, image_index=ii, mode="thesis").eps.tolist() == [1, 1, 1]
    for mode in ("linear", "bisect"):
        r = search(model, x, d, target, image_index=ii, mode=mode)
        assert r.eps.tolist() == [1, 1, BOUND] and r.censored.tolist() == [False, False, True], mode


def test_clip_clamps_the_perturbed_image():
    class MaxPixel(nn.Module):
        def forward(self, x):  # class 0 once some value exceeds 1.5
            m = x.flatten(1).amax(1)
            return torch.stack([m - 1.5, torch.zeros_like(m)], 1)

    model = MaxPixel()
    x = torch.full((1, *SHAPE), 0.5, dtype=torch.float64)
    d = torch.full((1, *SHAPE), 1.0 / 16, dtype=torch.float64)  # 0.5 + e/16 >= 1.5 from e = 16
    for mode in SEARCH_MODES:
        assert int(search(model, x, d, mode=mode).eps[0]) == 16
        r = search(model, x, d, mode=mode, clip=True, bound=100)
        assert bool(r.censored[0]) and int(r.eps[0]) == 100


# ----------------------------------------------------------------------------- directions and maps


def small_net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 36, 5))
    return net.double().eval().requires_grad_(False)


def quantised_maps(M, channels=1, seed=0, size=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (M, channels, size, size), generator=g).double() / 255


@pytest.fixture(scope="module")
def net_and_images():
    net = small_net()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 6, 6, generator=g, dtype=torch.float64)
    return net, x


def test_direction_formula_and_broadcast():
    maps = quantised_maps(2)
    grad = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    d, ok = directions(maps, grad)
    R3 = maps.expand(-1, 3, -1, -1)
    want = R3 / R3.sum((1, 2, 3), keepdim=True) * grad.sign()
    assert ok.all() and torch.allclose(d, want, rtol=1e-15, atol=0)
    assert torch.allclose(d.abs().flatten(1).sum(1), torch.ones(2, dtype=torch.float64))


def test_scaling_a_map_leaves_directions_and_eps_unchanged(net_and_images):
    net, x = net_and_images
    maps = quantised_maps(3, seed=4) * 0.5
    ii = torch.tensor([0, 1, 2])
    grad = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    for c in (2.0, 0.25, 0.125):  # powers of two: bit for bit
        assert torch.equal(directions(maps * c, grad)[0], directions(maps, grad)[0])
    for mode in SEARCH_MODES:
        base = evaluate_maps(net, x, maps, image_index=ii, bound=3000, mode=mode)
        for c in (2.0, 0.37, 1.9, 1e-3):
            r = evaluate_maps(net, x, maps * c, image_index=ii, bound=3000, mode=mode)
            assert torch.equal(r["eps_minus"], base["eps_minus"]), (mode, c)


def test_zero_and_full_maps_are_undefined_without_crashing_the_batch(net_and_images):
    net, x = net_and_images
    maps = quantised_maps(4, seed=2)
    maps[1] = 0.0
    maps[2] = 1.0
    ii = torch.tensor([0, 1, 2, 0])
    for mode in SEARCH_MODES:
        alone = evaluate_maps(net, x, maps[[0, 3]], image_index=ii[[0, 3]], bound=3000, mode=mode)
        r = evaluate_maps(net, x, maps, image_index=ii, bound=3000, mode=mode)
        assert r["undefined_minus"].tolist() == [False, True, False, False]
        assert r["undefined_plus"].tolist() == [False, False, True, False]
        assert r["reason_minus"][1] == metric.REASON_ZERO_NORM and r["reason_plus"][2] == metric.REASON_ZERO_NORM
        assert r["eps_minus"][1] == 0 and r["eps_plus"][2] == 0 and r["n_forward_minus"][1] == 0
        assert r["eps_plus"][1] >= 1 and r["eps_minus"][2] >= 1  # the other side of those maps is fine
        assert torch.equal(r["eps_minus"][[0, 3]], alone["eps_minus"])
        assert torch.equal(r["eps_plus"][[0, 3]], alone["eps_plus"])
    with pytest.raises(ValueError):
        apem(r["eps_plus"], r["eps_minus"])
    keep = ~(r["undefined_minus"] | r["undefined_plus"])
    assert apem(r["eps_plus"], r["eps_minus"], mask=keep) == pytest.approx(
        float((r["eps_plus"] - r["eps_minus"])[keep].double().mean()))


def test_modes_agree_on_a_monotone_model_through_evaluate_maps():
    W = torch.randint(-6, 7, (4, 3 * 36), generator=torch.Generator().manual_seed(5)).double()
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 36, 4)).double().eval().requires_grad_(False)
    with torch.no_grad():
        model[1].weight.copy_(W)
        model[1].bias.zero_()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    maps = quantised_maps(6, channels=3, seed=7)
    ii = torch.tensor([0, 1, 0, 1, 0, 1])
    out = {m: evaluate_maps(model, x, maps, image_index=ii, mode=m, shuffles=3, seeds=torch.arange(6), block=16)
           for m in SEARCH_MODES}
    for m in ("thesis", "bisect"):
        for k in ("eps_minus", "eps_plus", "eps_shuffle_minus", "eps_shuffle_plus"):
            assert torch.equal(out[m][k], out["linear"][k]), (m, k)
    r = out["bisect"]
    assert (r["n_forward"] == r["n_forward_minus"] + r["n_forward_plus"]).all()
    assert int(r["n_image_passes"]) == 2


def test_batch_size_changes_the_grouping_not_the_answer(net_and_images):
    net, x = net_and_images
    maps = quantised_maps(5, seed=12)
    ii = torch.tensor([0, 1, 2, 0, 1])
    for mode in SEARCH_MODES:
        runs = [evaluate_maps(net, x, maps, image_index=ii, mode=mode, bound=400, block=8, batch_size=b)
                for b in (None, 1, 3, 1000)]
        for r in runs[1:]:
            for k in ("eps_minus", "eps_plus", "censored_minus", "censored_plus", "n_forward"):
                assert torch.equal(r[k], runs[0][k]), (mode, k)


def test_automatic_batch_size_per_device_and_bad_values():
    assert metric.resolve_batch_size(None, "cpu") == metric.AUTO_BATCH["cpu"] == 2
    assert metric.resolve_batch_size(None, "cuda") == metric.AUTO_BATCH_ACCELERATOR
    assert metric.resolve_batch_size(7, "cpu") == 7
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        metric.resolve_batch_size(0, "cpu")


# ----------------------------------------------------------------------------- shuffles


def test_shuffles_reproducible_and_independent_of_batch_composition(net_and_images):
    net, x = net_and_images
    maps = quantised_maps(4, seed=8)
    ii = torch.tensor([0, 1, 2, 0])
    seeds = torch.tensor([11, 12, 13, 14])
    for mode, smode in (("linear", "fixed"), ("bisect", "fixed"), ("thesis", "per_step"), ("linear", "per_step")):
        kw = dict(mode=mode, shuffles=4, shuffle_mode=smode, bound=400, block=8)
        a = evaluate_maps(net, x, maps, image_index=ii, seeds=seeds, **kw)
        b = evaluate_maps(net, x, maps, image_index=ii, seeds=seeds, **kw)
        for k in a:
            assert torch.equal(a[k], b[k]), (mode, smode, k)
        order = torch.tensor([3, 0])  # other company, other order, other chunking
        c = evaluate_maps(net, x, maps[order], image_index=ii[order], seeds=seeds[order], max_directions=2, **kw)
        for k in ("eps_shuffle_minus", "eps_shuffle_plus", "n_forward_shuffle_minus"):
            assert torch.equal(c[k], a[k][order]), (mode, smode, k)


def test_linear_fixed_shuffle_is_the_min_over_individual_shuffles(net_and_images):
    net, x = net_and_images
    maps = quantised_maps(3, seed=9)
    ii = torch.tensor([2, 0, 1])
    seeds = torch.tensor([5, 6, 7])
    S = 5
    r = evaluate_maps(net, x, maps, image_index=ii, shuffles=S, seeds=seeds, mode="linear", bound=600)
    from apem.metric.clean import loss_gradient

    grad, _, t = loss_gradient(net, x)
    n = 3 * 36
    for which, key, src in ((False, "eps_shuffle_minus", maps), (True, "eps_shuffle_plus", 1 - maps)):
        for i in range(3):
            perms = map_shuffle_permutations(int(seeds[i]), n, S, irrelevance=which)
            d, ok = directions(src[i : i + 1].expand(S, -1, -1, -1), grad, image_index=ii[[i] * S], shuffle_perm=perms)
            one = search(net, x, d, t, image_index=ii[[i] * S], mode="linear", bound=600)
            assert int(one.eps.min()) == int(r[key][i])


def thesis_loop_per_step(model, x, Rn, sign, seed, S, t, bound):
    """The original per-step shuffled loop: S fresh permutations at every tested sigma, one generator per item."""
    gen = torch.Generator().manual_seed(seed)
    n, start, count = Rn.numel(), 0, 0
    for pace in (1000, 100, 10, 1):
        for sigma in range(start, bound, pace):
            perms = [torch.randperm(n, generator=gen) for _ in range(S)]
            d = torch.stack([Rn.flatten()[p].view_as(Rn) for p in perms]) * sign
            count += S
            with torch.no_grad():
                if (model(x + sigma * d).argmax(1) != t).any():
                    break
            start = sigma
    return start + 1, count


def test_per_step_shuffles_match_the_original_loop():
    W = torch.zeros(2, 3 * 36, dtype=torch.float64)
    W[0, :36] = 1.0  # class 0 (the prediction) reads channel 0
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 36, 2)).double().eval().requires_grad_(False)
    with torch.no_grad():
        model[1].weight.copy_(W)
        model[1].bias.copy_(torch.tensor([0.0, 3.0], dtype=torch.float64))
    x = torch.full((1, 3, 6, 6), 0.5, dtype=torch.float64)
    maps = torch.zeros(2, 1, 6, 6, dtype=torch.float64)
    maps[0, :, :2] = 1.0
    maps[1, :, 3:, 1:] = 0.6
    seeds = torch.tensor([1, 2])
    kw = dict(image_index=torch.zeros(2, dtype=torch.long), shuffles=3, bound=3000, seeds=seeds)
    a = evaluate_maps(model, x, maps, mode="thesis", shuffle_mode="per_step", **kw)
    from apem.metric.clean import loss_gradient

    g, _, t = loss_gradient(model, x)
    for i in range(2):
        for k, key in ((0, "minus"), (1, "plus")):
            R = (maps[i] if k == 0 else 1 - maps[i]).expand(3, -1, -1)
            Rn = R / R.sum()
            eps, count = thesis_loop_per_step(model, x, Rn, g.sign(), side_seed(int(seeds[i]), k), 3,
                                              int(t[0]), 3000)
            assert int(a[f"eps_shuffle_{key}"][i]) == eps
            assert int(a[f"n_forward_shuffle_{key}"][i]) == count
    with pytest.raises(ValueError):
        evaluate_maps(model, x, maps, mode="bisect", shuffle_mode="per_step", **kw)


def test_apem_and_apem_norm_formulas():
    ep, em = torch.tensor([10, 7, 3]), torch.tensor([2, 7, 4])
    assert apem(ep, em) == pytest.approx((8 + 0 - 1) / 3)
    sp, sm = torch.tensor([5, 7, 6]), torch.tensor([4, 7, 2])
    assert apem_norm(ep, em, sp, sm) == pytest.approx(((10 / 5 - 2 / 4) + (1 - 1) + (3 / 6 - 4 / 2)) / 3)


def test_apem_norm_never_divides_by_an_undefined_shuffled_epsilon():
    """Golden values: a zero or NaN shuffled epsilon gives a NaN term with its reason, never inf."""
    from apem.metric import NORM_REASONS, apem_norm_terms

    ep = np.array([10, 6, 4, 8, 9, 12])
    em = np.array([2, 3, 1, 0, 3, 4])
    sp = np.array([5, 0, 4, 0, np.nan, 6])
    sm = np.array([4, 3, 0, 0, 3, 8])
    und = np.array([False, False, False, True, False, False])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero warning either
        terms, why = apem_norm_terms(ep, em, sp, sm, und, return_reason=True)
    np.testing.assert_array_equal(terms, [10 / 5 - 2 / 4, np.nan, np.nan, np.nan, np.nan, 12 / 6 - 4 / 8])
    assert [1.5, 1.5] == [terms[0], terms[5]]
    assert not np.isinf(terms).any()
    assert list(why) == ["", NORM_REASONS["shuffle_plus"], NORM_REASONS["shuffle_minus"], NORM_REASONS["map"],
                         NORM_REASONS["shuffle_plus"], ""]
    np.testing.assert_array_equal(apem_norm_terms(ep, em, sp, sm, und), terms)
    # torch tensors (what evaluate_maps returns) give the same
    np.testing.assert_array_equal(apem_norm_terms(*(torch.as_tensor(v) for v in (ep, em, sp, sm)), und), terms)
    # the mean over a set: the defined terms, or an error naming the shuffled epsilons
    ok = np.isfinite(terms)
    assert apem_norm(ep, em, sp, sm, mask=ok) == 1.5
    with pytest.raises(ValueError, match="shuffled"):
        apem_norm(ep, em, sp, sm, mask=~und)


def test_table_means_leave_out_undefined_rows_as_apem_does(capsys):
    """A table with an undefined row: every summary mean is apem.metric.apem over the defined rows."""
    from types import SimpleNamespace

    import pandas as pd

    from apem.cli import _print_summary
    from apem.metric import defined_rows, table_summary

    t = pd.DataFrame({
        "group": "correct", "image_id": ["a", "b", "c", "a", "b", "c"], "method": "gradient",
        "stage": [3, 3, 3, 2, 2, 2],
        "eps_minus": [2, 4, 0, 5, 1, 3], "eps_plus": [5, 10, 0, 5, 9, 0],
        "undefined_minus": [False, False, True, False, False, False],
        "undefined_plus": [False, False, True, False, False, True],
        "censored_minus": False, "censored_plus": [False, True, False, False, False, False],
        "eps_shuffle_minus": [4, 2, 0, 5, 1, 0], "eps_shuffle_plus": [5, 0, 0, 5, 3, 0],
    })
    t["apem"] = apem_terms(t.eps_plus, t.eps_minus, ~defined_rows(t))
    S = table_summary(t)
    for stage, g in t.groupby("stage"):
        ok = defined_rows(g)
        row = S.loc[("gradient", stage)]
        assert row["mean"] == apem(g.eps_plus, g.eps_minus, mask=ok)
        assert row["mean"] == g.apem.mean()  # pandas skips the NaN apem of the undefined row
        assert row["n"] == ok.sum() and row["undefined"] == (~ok).sum()
        assert row["mean_eps_minus"] == g.eps_minus[ok].mean() and row["mean_eps_plus"] == g.eps_plus[ok].mean()
    assert S.loc[("gradient", 3), "mean"] == 4.5 and S.loc[("gradient", 3), "mean_eps_minus"] == 3.0
    assert S.loc[("gradient", 3), "censored"] == 1
    # APEM_norm: row b of stage 3 has no shuffled eps-plus, so only row a counts
    assert S.loc[("gradient", 3), "n_norm"] == 1 and S.loc[("gradient", 3), "mean_norm"] == 5 / 5 - 2 / 4
    with pytest.raises(ValueError, match="undefined"):
        apem(t.eps_plus, t.eps_minus)  # without the mask the undefined row is refused, never averaged
    # the command line prints the same means, censoring-aware as the book prints them: row b's
    # eps-plus is censored, so stage 3's mean is a lower bound (>=) and its median a range
    cfg = SimpleNamespace(name="t", digest=lambda: "0", seed=0)
    _print_summary(cfg, SimpleNamespace(table=t, store=SimpleNamespace(dir="x")))
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.split()[:2] == ["Gradient", "3"])
    assert line.split()[2:6] == ["2", "1", "≥", "4.5"], line
    assert line.endswith("≥ 4.5")  # the median of 3 and (>= 6): at least their mean
    assert "leave out the undefined rows" in out and "0 of 4 ε⁻ and 1 of 4 ε⁺" in out  # the 4 defined rows


def test_determinism_same_seed_same_epsilons(net_and_images):
    net, x = net_and_images
    maps = quantised_maps(3, seed=10)
    kw = dict(image_index=torch.tensor([0, 1, 2]), shuffles=3, seeds=torch.tensor([1, 2, 3]), bound=500)
    for mode in SEARCH_MODES:
        a, b = evaluate_maps(net, x, maps, mode=mode, **kw), evaluate_maps(net, x, maps, mode=mode, **kw)
        assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- trace and monotonicity


def test_trace_lists_every_tested_step():
    model, x, d = line_setup(5000, [(2995, 3005)])
    for mode in SEARCH_MODES:
        tr = trace(model, x[0], d[0], mode=mode)
        res = tr[-1]["result"]
        assert res["n_forward"] == len(tr)
        assert all(row["changed"] == (row["margin"] < 0) for row in tr)
        if mode == "thesis":
            assert [row["eps"] for row in tr[:7]] == [0, 1000, 2000, 3000, 2000, 2100, 2200]
            assert res["eps"] == 2995
        if mode == "bisect":
            assert res["eps"] == 5000 and tr[-1]["pass_"] <= 3


def test_trace_calls_the_model_at_the_search_batch_size_and_returns_the_search_result():
    """The trace is the search recorded: same padded batch size in every model call (a CPU model's last bits change
    with the batch size), hence the same result; before, it forwarded batches of ``block`` (32 images per tested step)."""
    from apem.metric.forward import resolve_batch_size

    model, x, d = line_setup(5000, [(2995, 3005)])
    sizes = []
    model.register_forward_pre_hook(lambda m, a: sizes.append(len(a[0])))
    for mode in SEARCH_MODES:
        for batch in (None, 3):
            spec = metric.SearchSpec(mode=mode, batch_size=batch)
            sizes.clear()
            tr = trace(model, x[0], d[0], spec=spec)
            want = resolve_batch_size(batch, x.device)
            perturbed = sizes[1:] if sizes[0] == 1 else sizes  # the image's clean pass (target, margin) comes first
            assert perturbed and set(perturbed) == {want}, (mode, batch, sizes)
            res = search(model, x, d, spec=spec)
            assert tr[-1]["result"]["eps"] == int(res.eps[0]) and tr[-1]["result"]["n_forward"] == int(res.n_forward[0])


def test_monotonicity_check_finds_flip_backs():
    model, x, d = line_setup(5000, [(250, 260)])
    mono, _, _ = line_setup(777, [])
    lin = search(model, x, d, mode="linear")
    r = monotonicity_check(model, x, d, lin.eps, horizon=20, block=8)
    assert r["non_monotone"].tolist() == [True] and r["first_back"].tolist() == [260]
    r = monotonicity_check(mono, x, d, search(mono, x, d, mode="linear").eps, horizon=20, block=8)
    assert r["non_monotone"].tolist() == [False] and r["n_forward"].tolist() == [20]


def test_bisect_creep_guard_jumps_by_doubling_distances_after_two_short_pairs():
    """After `creep_pairs` confident pairs in a row fell short, the next candidate is a single step
    lo + max(r - lo, 1) * 2**(k - creep_pairs + 1), capped at the bracket's midpoint (r: the estimate)."""
    f64 = torch.float64
    st = Brackets(1, metric.THESIS_BOUND, torch.tensor([4.0], dtype=f64), torch.tensor([-0.01], dtype=f64),
                             torch.tensor([False]), torch.device("cpu"))
    st.lo[:] = 1000
    st.mlo[:] = 0.02
    st.hi[:] = 1400
    st.mhi[:] = -0.5
    st.hik[:] = True
    st.be[:] = torch.tensor([[1000, 999]])
    st.bm[:] = torch.tensor([[0.02, 0.03]], dtype=f64)
    mi, U = torch.tensor([0]), torch.tensor([1400])
    tune = metric.BisectTuning()
    r = float(root_estimate(st, mi, U, None, metric.THESIS_BOUND, tune)[0])
    assert 1000 < r < 1010  # close to lo: without the guard a confident pair around r
    c1, c2, _ = candidates(st, mi, U, None, metric.THESIS_BOUND, tune)
    assert int(c2[0]) == int(c1[0]) + 1 == int(r) + 1
    for k, factor in ((2, 2), (3, 4), (4, 8), (9, None)):
        st.low_pairs[:] = k
        c1, c2, _ = candidates(st, mi, U, None, metric.THESIS_BOUND, tune)
        want = 1200 if factor is None else round(1000 + max(r - 1000, 1) * factor)
        assert (int(c1[0]), int(c2[0])) == (want, 0), k
    st.low_pairs[:] = 2  # creep_pairs = 0 turns the guard off
    c1, c2, _ = candidates(st, mi, U, None, metric.THESIS_BOUND, dataclasses.replace(tune, creep_pairs=0))
    assert int(c2[0]) == int(c1[0]) + 1


def test_bisect_without_slope_information_still_terminates_exactly():
    """A step-shaped margin (zero gradient, constant margins) gives the estimators nothing: growth + guard bisection."""

    class Step(nn.Module):
        def __init__(self, d0, k):
            super().__init__()
            self.d0, self.k = d0, k

        def forward(self, x):
            s = (x * self.d0).flatten(1).sum(1) / (self.d0 * self.d0).sum()
            z0 = torch.where(s >= self.k, 1.0, -1.0).to(x.dtype)
            return torch.stack([z0, torch.zeros_like(z0)], 1)

    d0 = torch.zeros((1, *SHAPE), dtype=torch.float64)
    d0.view(-1)[:2] = torch.tensor([0.5, -0.25], dtype=torch.float64)
    x = torch.zeros((1, *SHAPE), dtype=torch.float64)
    for k in (1, 2, 17, 3001, 9999, 10000, 10001):
        r = search(Step(d0, k), x, d0, mode="bisect")
        assert int(r.eps[0]) == min(k, BOUND) and bool(r.censored[0]) == (k >= BOUND - 0), k
        assert int(r.n_forward[0]) <= 2 * 14 + 4, k


def test_progress_bar_does_not_change_results(net_and_images):
    net, x = net_and_images
    maps = quantised_maps(2, seed=12)
    kw = dict(image_index=torch.tensor([0, 1]), bound=500, shuffles=2)
    a = evaluate_maps(net, x, maps, progress=True, **kw)
    b = evaluate_maps(net, x, maps, **kw)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_only_referenced_images_get_the_clean_pass(net_and_images):
    net, x = net_and_images
    maps = quantised_maps(2, seed=13)
    a = evaluate_maps(net, x, maps, image_index=torch.tensor([2, 2]), bound=800)
    b = evaluate_maps(net, x[2:], maps, image_index=torch.tensor([0, 0]), bound=800)
    assert int(a["n_image_passes"]) == 1
    assert torch.equal(a["eps_minus"], b["eps_minus"]) and torch.equal(a["eps_plus"], b["eps_plus"])
    r = search(net, x, directions(maps, torch.ones(2, 3, 6, 6, dtype=torch.float64))[0],
               image_index=torch.tensor([1, 1]), bound=800)
    assert not r.undefined.any()


def test_loss_slope_is_exact_for_two_classes_and_both_slopes_give_the_same_eps():
    """Two classes: g = -(1 - p_t) grad m exactly, so the free slope equals the margin gradient's."""
    W = torch.randint(-6, 7, (2, N_IN), generator=torch.Generator().manual_seed(3)).double()
    model = linear_classifier(W, torch.tensor([0.5, 0.0], dtype=torch.float64))
    x = torch.rand(1, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    from apem.metric.clean import loss_gradient

    g, logits, t = loss_gradient(model, x)
    _, exact = metric.clean_pass(model, x)
    free = metric.MarginInfo.from_logits(logits, t, loss_grad=g)
    d = torch.randn(5, *SHAPE, dtype=torch.float64).abs() * g.sign()
    ii = torch.zeros(5, dtype=torch.long)
    assert torch.allclose(free.slope(d, ii), exact.slope(d, ii), rtol=1e-6)  # 1 - p_t ~ 1e-9: cancellation in g
    net, xs = small_net(), torch.rand(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    maps = quantised_maps(4, seed=14)
    kw = dict(image_index=torch.tensor([0, 1, 1, 0]), bound=2000)
    a, b = evaluate_maps(net, xs, maps, slope="loss", **kw), evaluate_maps(net, xs, maps, slope="margin", **kw)
    lin = evaluate_maps(net, xs, maps, mode="linear", **kw)
    for k in ("eps_minus", "eps_plus"):
        assert torch.equal(a[k], lin[k]) and torch.equal(b[k], lin[k])
    assert int(a["n_image_backward"]) == 2 and int(b["n_image_backward"]) == 4


def test_perturbation_size_closed_form_and_twin():
    # a uniform 3x2x2 map: every |d| is 1/12, so at eps 6 each value moves by 1/2: max 0.5, MSE 1/4, PSNR 10 log10 4
    r = metric.perturbation_size(torch.ones(1, 3, 2, 2), 6)
    assert r["max_change"].item() == pytest.approx(0.5) and r["psnr"].item() == pytest.approx(10 * np.log10(4))
    # one non-zero value carries the whole step; a one-channel map counts its 3 copies
    one = torch.zeros(1, 1, 2, 2)
    one[0, 0, 1, 1] = 5.0
    r = metric.perturbation_size(one, 9)
    assert r["max_change"].item() == pytest.approx(3.0)  # 9 / 3 copies
    # twin: perturb a real image along d at eps and measure x' - x where the sign of g is never 0
    g = torch.Generator().manual_seed(0)
    maps, grad = torch.rand(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    eps = torch.tensor([1.0, 10.0, 100.0, 0.0])
    d, _ = metric.directions(maps, grad.double())
    change = eps[:, None, None, None].double() * d
    r = metric.perturbation_size(maps, eps)
    assert torch.allclose(r["max_change"], change.abs().flatten(1).amax(1))
    mse = change.square().flatten(1).mean(1)
    assert torch.allclose(r["psnr"][:3], 10 * torch.log10(1 / mse[:3])) and torch.isinf(r["psnr"][3])
    assert torch.isnan(metric.perturbation_size(torch.zeros(1, 1, 2, 2), 3)["psnr"]).all()  # no direction
