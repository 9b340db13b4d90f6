"""The explanation filter (thesis Algorithm 2): a hand-checked case, a literal twin, the fast variant."""

import pytest
import torch
from torch import nn

from apem.filtering import explanation_filter, next_levels, zero_up_to
from apem.metric import SEARCH_MODES, evaluate_maps


def linear_model(W, b):
    model = nn.Sequential(nn.Flatten(), nn.Linear(W.shape[1], W.shape[0])).double().eval()
    with torch.no_grad():
        model[1].weight.copy_(W)
        model[1].bias.copy_(b)
    return model.requires_grad_(False)


def three_pixel_case():
    r"""Images (3, 1, 3); class 0 is predicted with margin A = 6.2; it reads channel 0 with weights u = (3, 1, 6).

    sign(grad) = -sign(w), so along the direction of a map R (broadcast to
    3 channels) the margin is ``A - e * sum_i u_i R_i / (3 sum_i R_i)`` and
    ``eps = floor(A / slope) + 1``.
    """
    W = torch.zeros(2, 9, dtype=torch.float64)
    W[0, :3] = torch.tensor([3.0, 1.0, 6.0])
    model = linear_model(W, torch.tensor([6.2, 0.0], dtype=torch.float64))
    x = torch.zeros(1, 3, 1, 3, dtype=torch.float64)
    R = torch.tensor([204, 51, 102], dtype=torch.float64).view(1, 1, 1, 3) / 255  # (0.8, 0.2, 0.4)
    return model, x, R


@pytest.mark.parametrize("mode", SEARCH_MODES)
@pytest.mark.parametrize("fast_k", [0, 1, 2, 5])
def test_hand_checked_three_pixel_map(mode, fast_k):
    # R = (0.8, 0.2, 0.4): minus slope 5/4.2 -> 6.2/1.190 = 5.21 -> 6; plus (0.2, 0.8, 0.6): 5/4.8 -> 5.95 -> 6;
    #   APEM 0
    # zero 0.2 -> (0.8, 0, 0.4): minus 4.8/3.6 -> 4.65 -> 5; plus (0.2, 1, 0.6): 5.2/5.4 -> 6.44 -> 7; APEM 2 >= 0
    # zero 0.4 -> (0.8, 0, 0): minus 1 -> 6.2 -> 7; plus (0.2, 1, 1): 7.6/6.6 -> 5.38 -> 6; APEM -1 < 2: drop
    model, x, R = three_pixel_case()
    r = evaluate_maps(model, x, R, mode=mode)
    assert (int(r["eps_minus"][0]), int(r["eps_plus"][0])) == (6, 6)
    f = explanation_filter(model, x, R, mode=mode, fast_k=fast_k)
    want = torch.tensor([204, 0, 102], dtype=torch.float64).view(1, 1, 1, 3) / 255
    assert torch.equal(f.maps, want)
    assert f.apem_before.tolist() == [0.0] and f.apem_after.tolist() == [2.0]
    assert f.steps.tolist() == [1] and f.removed_fraction.tolist() == pytest.approx([1 / 3])
    assert (int(f.eps_minus[0]), int(f.eps_plus[0])) == (5, 7)
    assert f.status == ["dropped"]


def algorithm2(model, x, R, image_index, mode="linear"):
    """Algorithm 2 literally, one map, APEM from evaluate_maps; an undefined APEM counts as a drop."""

    def score(m):
        r = evaluate_maps(model, x, m, image_index=image_index, mode=mode, bound=3000, block=8)
        if r["undefined_minus"][0] or r["undefined_plus"][0]:
            return float("nan")
        return float(r["eps_plus"][0] - r["eps_minus"][0])

    cur, a = R.clone(), score(R)
    if a != a:
        return cur, 0
    steps = 0
    while True:
        best, best_a = cur, a
        pos = best[best > 0]
        if len(pos) == 0:
            return best, steps
        cur = torch.where(best == pos.min(), torch.zeros_like(best), best)
        a = score(cur)
        if not (a >= best_a):
            return best, steps
        steps += 1


@pytest.fixture(scope="module")
def small_case():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 25, 4))
    net = net.double().eval().requires_grad_(False)
    net[3].weight.mul_(0.03)  # epsilons in the tens, APEM moving with the levels
    x = torch.rand(2, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    maps = torch.randint(0, 12, (4, 1, 5, 5), generator=g).double() * 20 / 255  # 12 levels
    return net, x, maps, torch.tensor([0, 1, 1, 0])


def test_filter_matches_the_literal_algorithm(small_case):
    net, x, maps, ii = small_case
    f = explanation_filter(net, x, maps, image_index=ii, mode="linear", bound=3000, block=8)
    for i in range(len(maps)):
        want, steps = algorithm2(net, x, maps[i : i + 1], ii[i : i + 1])
        assert torch.equal(f.maps[i : i + 1], want), i
        assert int(f.steps[i]) == steps


@pytest.mark.parametrize("mode", ["bisect", "linear"])
def test_fast_variant_equals_the_exact_one(small_case, mode):
    net, x, maps, ii = small_case
    exact = explanation_filter(net, x, maps, image_index=ii, mode=mode, fast_k=0, bound=3000, block=8)
    for K in (2, 3, 7, 40):
        fast = explanation_filter(net, x, maps, image_index=ii, mode=mode, fast_k=K, bound=3000, block=8)
        assert torch.equal(fast.maps, exact.maps), K
        for k in ("apem_before", "apem_after", "steps", "eps_minus", "eps_plus", "removed_fraction"):
            assert torch.equal(getattr(fast, k), getattr(exact, k)), (K, k)
        assert fast.rounds <= exact.rounds
    assert exact.rounds == int(exact.steps.max()) + 1


def test_edge_cases_all_zero_all_one_single_level():
    model, x, _ = three_pixel_case()
    maps = torch.zeros(3, 1, 1, 3, dtype=torch.float64)
    maps[1] = 1.0
    maps[2] = 0.5  # one level: its only candidate is the all-zero map, which has no direction
    f = explanation_filter(model, x, maps, image_index=torch.zeros(3, dtype=torch.long))
    assert f.status == ["undefined", "undefined", "dropped"]
    assert torch.equal(f.maps, maps) and f.steps.tolist() == [0, 0, 0]
    assert torch.isnan(f.apem_before[:2]).all() and f.apem_after[2] == f.apem_before[2]


def test_level_helpers():
    m = torch.tensor([[0.0, 0.2, 0.2, 0.5, 1.0]]).view(1, 1, 1, 5)
    lv = next_levels(m, 4)
    assert lv.tolist() == [[pytest.approx(0.2), 0.5, 1.0, float("inf")]]
    assert zero_up_to(m, lv[:, 1]).flatten().tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]
