r"""APEM by hand (chapter 0): models small enough to find every epsilon on paper, and their closed forms.

The model is a linear classifier on a 2 x 2 RGB image (12 inputs, 2 classes,
float64), shaped like any image ``(N, 3, H, W)`` so that apem's own search
(:func:`apem.metric.evaluate_maps`, :func:`apem.metric.trace`) runs on it
unchanged. Its logit margin along a direction is linear in the step, so the
first step that changes the prediction has a closed form; this module computes
it exactly (rational arithmetic on the float64 values, :class:`fractions.Fraction`)
without calling any of apem's search code, and the page puts it beside what
apem's search returns.

For a two-class linear model ``z = W x + b`` with target ``t`` (class 0) and
other class ``o``, with :math:`\Delta w = w_t - w_o`:

* the loss gradient is :math:`g = -(1 - p_t)\,\Delta w`, so
  :math:`\operatorname{sign}(g) = -\operatorname{sign}(\Delta w)`;
* the direction of a map ``R`` (one value per pixel, broadcast to the three
  channels) is :math:`d = R / \lVert R\rVert_1 \odot \operatorname{sign}(g)`;
* the margin is :math:`m(\epsilon) = m_0 + \epsilon\, \Delta w \cdot d =
  m_0 - \epsilon \sum_i R_i |\Delta w_i| / \lVert R \rVert_1`;
* it reaches zero at :math:`\epsilon^* = -m_0 / (\Delta w \cdot d)`; at
  :math:`\epsilon^*` itself the logits tie and ``argmax`` keeps the target
  (the lowest index), so the reported step is :math:`\lfloor \epsilon^* \rfloor + 1`,
  or ``bound`` (censored) when that is not below the search bound;
* with clipping each input stops at 0 or 1, the margin is piecewise linear and
  non-increasing, and it may never reach zero (censored).

The second model, :func:`dip_net`, is a two-layer ReLU network whose hidden
units all read the linear margin :math:`\ell(x) = \Delta w \cdot x + \Delta b`;
its margin is :math:`\varphi(\ell) = \ell - K\,\mathrm{tent}(\ell)`, a tent of
ReLUs placed so that along the map's direction the prediction changes on the
steps ``window[0] .. window[1] - 1`` and changes back. The coarse-to-fine
search of the thesis (paces 1000, 100, 10, 1) tests no step inside a window
that holds no point of its grid, and reports the later, monotone flip.

Both margins are exact piecewise-linear functions of the step
(:class:`Margin`); :func:`first_flip` finds the first integer step at which
one is negative, and :func:`thesis_by_hand` runs the thesis's loop literally
on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction as F

import numpy as np
import pandas as pd
import torch
from torch import nn

from apem import metric

SHAPE = (3, 2, 2)  # channels, height, width: a 2 x 2 RGB image, 12 inputs
PIXELS = 4
#: ``|w_t - w_o|`` of each pixel (the same on its three channels), before ``weight_scale``
SENSITIVITY = (4 / 256, 2 / 256, 1 / 256, 0.5 / 256)
#: the sign of w_t - w_o of each input (rows: the channels; columns: the pixels, row by row)
SIGNS = ((1, -1, 1, -1), (-1, 1, 1, -1), (1, 1, -1, 1))
#: the image, in [0, 1] (rows: the channels; columns: the pixels, row by row)
IMAGE = ((0.25, 0.75, 0.5, 1.0), (0.5, 0.25, 0.75, 0.5), (1.0, 0.5, 0.25, 0.75))
#: the slope of the two-layer net's tent: the larger, the sharper the window's edges
K_DIP = 1000
#: the named maps of the gallery (one value per pixel); "your map" is the chapter's ``relevance``
NAMED_MAPS = {
    "sensitivity |w_t − w_o| (what a gradient map shows)": tuple(s / SENSITIVITY[0] for s in SENSITIVITY),
    "reversed sensitivity": tuple(s / SENSITIVITY[0] for s in reversed(SENSITIVITY)),
    "one-hot on the most sensitive pixel": (1.0, 0.0, 0.0, 0.0),
    "uniform 1/2": (0.5, 0.5, 0.5, 0.5),
    "all ones": (1.0, 1.0, 1.0, 1.0),
}
MODES = ("thesis", "linear", "bisect")
#: perturbed images per model call and steps per pass of ``linear``: a 12-input model forwards thousands at once
BATCH, BLOCK = 1024, 256
SIDES = (("ε⁻ (relevance R)", "minus"), ("ε⁺ (irrelevance 1 − R)", "plus"))




# ----------------------------------------------------------------------------- the models


@dataclass(frozen=True)
class Toy:
    """The linear classifier: ``dw`` = w_t − w_o (12,), the image ``x`` (12,) and the clean margin ``m0``.

    The weights are ``w_t = dw / 2``, ``w_o = -dw / 2`` and the biases ``±(m0 - dw·x) / 2``, so
    the margin at the image is ``m0`` and the target (the prediction) is class 0.
    """

    dw: tuple
    x: tuple
    m0: float

    @property
    def db(self) -> float:
        return self.m0 - float(np.dot(self.dw, self.x))

    def image(self) -> torch.Tensor:
        return torch.tensor(self.x, dtype=torch.float64).view(1, *SHAPE)

    def model(self) -> nn.Module:
        dw = torch.tensor(self.dw, dtype=torch.float64)
        W = torch.stack([dw / 2, -dw / 2])
        b = torch.tensor([self.db / 2, -self.db / 2], dtype=torch.float64)
        return _frozen(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).double(), [(1, W, b)])


def toy(weight_scale: float = 1.0, margin: float = 10.0) -> Toy:
    """The chapter's classifier: :data:`SENSITIVITY` times ``weight_scale`` with :data:`SIGNS`, margin ``margin``."""
    if not weight_scale > 0:
        raise ValueError(f"weight_scale must be > 0, got {weight_scale}")
    if not 0 < margin <= 700:
        raise ValueError(f"margin must be in (0, 700] (the target is class 0; beyond 700 the softmax of float64 "
                         f"loses the loss gradient), got {margin}")
    dw = tuple(float(weight_scale) * SIGNS[c][i] * SENSITIVITY[i] for c in range(3) for i in range(PIXELS))
    x = tuple(float(v) for row in IMAGE for v in row)
    return Toy(dw, x, float(margin))


def _frozen(model: nn.Module, layers) -> nn.Module:
    with torch.no_grad():
        for k, W, b in layers:
            model[k].weight.copy_(W)
            model[k].bias.copy_(b)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


@dataclass(frozen=True)
class Dip:
    """The tent of the two-layer net: it starts at margin ``L2``, peaks at ``(L1 + L2) / 2``, ends at ``L1``."""

    L1: F
    L2: F
    K: int = K_DIP

    @property
    def Lc(self) -> F:
        return (self.L1 + self.L2) / 2

    def phi(self, l: F) -> F:
        r"""The net's margin as a function of the linear margin: :math:`\ell - K\,\mathrm{tent}(\ell)`."""
        relu = lambda v: v if v > 0 else F(0)  # noqa: E731
        return l - self.K * (relu(l - self.L1) - 2 * relu(l - self.Lc) + relu(l - self.L2))


def dip_for_window(line: "Margin", window) -> Dip:
    """The tent that makes the net's prediction change exactly on the integer steps ``window[0] .. window[1] - 1``.

    ``line`` is the *linear* margin along the direction. With :math:`\\ell_a = \\ell(a - 1/2)`
    and :math:`\\ell_b = \\ell(b - 1/2)`: :math:`\\varphi(\\ell) < 0` exactly for
    :math:`K L_1/(K-1) < \\ell < K L_2/(K+1)`, so :math:`L_2 = \\ell_a (K+1)/K` and
    :math:`L_1 = \\ell_b (K-1)/K`.
    """
    a, b = (int(v) for v in window)
    K = K_DIP
    if not 2 <= a < b:
        raise ValueError(f"window must be [first changed step, first unchanged step again] with 2 <= first < second, "
                         f"got {list(window)}")
    la, lb = line(F(2 * a - 1, 2)), line(F(2 * b - 1, 2))
    if not 0 < lb < la:
        raise ValueError(f"window {list(window)} must lie where the linear margin still falls and is positive, "
                         f"before its own flip at step {first_flip(line, 10**9)}; choose a smaller window")
    dip = Dip(lb * (K - 1) / K, la * (K + 1) / K, K)
    if not dip.L2 < line(F(0)):
        raise ValueError(f"window {list(window)} starts too early for the tent to clear the clean margin; start later")
    return dip


def dip_net(toy_: Toy, dip: Dip) -> nn.Module:
    r"""Two-layer ReLU net: 5 hidden units read :math:`\ell(x)`; logits :math:`(\varphi(\ell(x)), 0)`."""
    dw = torch.tensor(toy_.dw, dtype=torch.float64)
    db = toy_.db
    V = torch.stack([dw, -dw, dw, dw, dw])
    c = torch.tensor([db, -db, db - float(dip.L1), db - float(dip.Lc), db - float(dip.L2)], dtype=torch.float64)
    U = torch.tensor([[1.0, -1.0, -dip.K, 2.0 * dip.K, -dip.K], [0.0] * 5], dtype=torch.float64)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    return _frozen(net, [(1, V, c), (3, U, torch.zeros(2, dtype=torch.float64))])


# ----------------------------------------------------------------------------- the closed form


def direction_by_hand(toy_: Toy, R) -> tuple[list[F], bool]:
    r"""``(d, defined)``: :math:`d_i = -R_i \operatorname{sign}(\Delta w_i) / \lVert R \rVert_1`, exact.

    ``R``: one value per pixel, broadcast to the three channels, so
    :math:`\lVert R\rVert_1 = 3 \sum_{\text{pixels}} R`. Undefined when that is 0.
    """
    R3 = [F(float(R[i])) for _ in range(3) for i in range(PIXELS)]
    norm = sum(R3)
    if norm == 0:
        return [F(0)] * 12, False
    d = [-r * (1 if w > 0 else -1 if w < 0 else 0) / norm for r, w in zip(R3, toy_.dw)]
    return d, any(v != 0 for v in d)


@dataclass
class Margin:
    """An exact piecewise-linear function of the step: ``self(eps)`` in Fractions, with its kinks ``knots``."""

    f: object
    knots: list = field(default_factory=list)

    def __call__(self, eps) -> F:
        return self.f(F(eps))


def linear_margin(toy_: Toy, d, clip: bool = False) -> Margin:
    r""":math:`\ell(\epsilon) = \Delta b + \sum_i \Delta w_i\, x_i(\epsilon)`, :math:`x_i(\epsilon) = x_i + \epsilon d_i` (clamped to [0, 1] with ``clip``).

    With ``clip`` input ``i`` stops at the step :math:`\tau_i` where it reaches 0 or 1: a knot.
    """
    dw, x, db = [F(v) for v in toy_.dw], [F(v) for v in toy_.x], F(toy_.db)
    knots = []
    if clip:
        for xi, di in zip(x, d):
            if di != 0:
                knots.append(((0 if di < 0 else 1) - xi) / di)

    def f(e):
        xs = [xi + e * di for xi, di in zip(x, d)]
        if clip:
            xs = [min(F(1), max(F(0), v)) for v in xs]
        return db + sum(w * v for w, v in zip(dw, xs))

    return Margin(f, sorted(k for k in knots if k > 0))


def net_margin(line: Margin, dip: Dip) -> Margin:
    r""":math:`\varphi(\ell(\epsilon))`: the linear margin's knots plus the steps where :math:`\ell` crosses :math:`L_1, L_c, L_2`."""
    ts = sorted(set([F(0)] + line.knots))
    knots = list(line.knots)
    for L in (dip.L1, dip.Lc, dip.L2):
        for a, b in list(zip(ts, ts[1:])) + [(ts[-1], None)]:
            la = line(a)
            slope = (line(b) - la) / (b - a) if b is not None else line(a + 1) - la
            if slope != 0:
                e = a + (L - la) / slope
                if e >= a and (b is None or e <= b):
                    knots.append(e)
    return Margin(lambda e: dip.phi(line.f(e)), sorted(set(k for k in knots if k > 0)))


def first_flip(m: Margin, bound: int) -> int:
    """The first integer step ``e`` in ``[1, bound)`` with ``m(e) < 0`` (the prediction changed); ``bound`` if none.

    ``m(e) = 0`` is a tie, which ``argmax`` gives to the target (class 0): no change. On each
    piece between knots ``m`` is linear, so its negative part is an interval whose end is a root
    of the piece; the first integer inside the first such interval is the answer.
    """
    ts = sorted(set([F(0)] + list(m.knots)))
    for a, b in list(zip(ts, ts[1:])) + [(ts[-1], None)]:
        if a >= bound:
            break
        ma = m(a)
        slope = (m(b) - ma) / (b - a) if b is not None else m(a + 1) - ma
        if slope < 0:
            root = a + ma / -slope
            lo, lo_open, hi, hi_open = max(a, root), root >= a, b, False
        elif ma < 0:
            root = a + (-ma / slope) if slope > 0 else None
            lo, lo_open = a, False
            hi, hi_open = (b, False) if root is None or (b is not None and root > b) else (root, True)
        else:
            continue
        e = max(1, math.floor(lo) + 1 if lo_open else math.ceil(lo))
        if hi is None or e < hi or (e == hi and not hi_open):
            return min(e, bound)
    return bound


#: how close to zero, relative to the clean margin, the exact margin at a step counts as a tie that float64
#: rounding may break either way (the model's own arithmetic errs by about 1e-15 of its terms)
TIE = F(1, 10**9)


def tie_before(m: Margin, e: int) -> bool:
    """Whether the margin at step ``e - 1`` is (within :data:`TIE`) exactly zero: an exact tie of the two logits.

    ``argmax`` keeps the target on a tie, so the closed form reports ``e``; a search computing in
    float64 may see the margin a hair below zero and report ``e - 1``. Both are right.
    """
    return e >= 2 and abs(m(e - 1)) <= TIE * max(F(1), abs(m(0)))


def clip_drop(toy_: Toy, R) -> F:
    r"""How far clipping lets the margin fall along R's direction: :math:`\sum_i |\Delta w_i|\,\mathrm{room}_i`.

    Input ``i`` moves against its weight (towards 0 when :math:`\Delta w_i > 0`, towards 1 when
    :math:`\Delta w_i < 0`) and only where the map is non-zero.
    """
    d, _ = direction_by_hand(toy_, R)
    return sum((F(abs(w)) * (F(x) if w > 0 else 1 - F(x)) for w, x, di in zip(toy_.dw, toy_.x, d) if di != 0), F(0))


def root(m: Margin) -> F | None:
    """The real step where a linear margin ``m0 + s eps`` reaches zero (None when it does not fall)."""
    m0, s = m(0), m(1) - m(0)
    return None if s >= 0 else m0 / -s


def thesis_by_hand(m: Margin, bound: int, paces=metric.THESIS_PACES) -> tuple[int, int, list[int]]:
    """The thesis's coarse-to-fine loop, literally, on the exact margin: ``(eps, tested steps count, tested steps)``.

    ::

        start = 0
        for pace in (1000, 100, 10, 1):
            for sigma in range(start, bound, pace):
                if changed(sigma): break
                start = sigma
        eps = start + 1

    ``eps`` is ``bound`` when the last pace ran to the bound without a change (censored).
    """
    start, tested, exhausted = 0, [], False
    for pace in paces:
        exhausted = True
        for sigma in range(start, bound, pace):
            tested.append(sigma)
            if m(sigma) < 0:
                exhausted = False
                break
            start = sigma
    return (bound if exhausted else start + 1), len(tested), tested


# ----------------------------------------------------------------------------- apem's own search on the maps


def maps_tensor(maps) -> torch.Tensor:
    """Maps of one value per pixel -> the ``(M, 1, 2, 2)`` tensor :func:`apem.metric.evaluate_maps` takes."""
    return torch.tensor(np.asarray(maps, dtype=np.float64)).view(-1, 1, *SHAPE[1:])


def closed_forms(toy_: Toy, maps, bound: int, clip: bool) -> pd.DataFrame:
    """One row per map: the closed-form ε⁻ and ε⁺ (``bound`` when censored; 0 and undefined without a direction).

    ``tie_<side>``: the logits tie exactly at the step before (:func:`tie_before`).
    """
    rows = []
    for R in maps:
        row = {}
        for side, M in (("minus", R), ("plus", [1 - float(r) for r in R])):
            d, ok = direction_by_hand(toy_, M)
            line = linear_margin(toy_, d, clip)
            e = first_flip(line, bound) if ok else 0
            r = root(line) if ok and not clip else None
            row.update({f"eps_{side}": e, f"censored_{side}": ok and e >= bound, f"undefined_{side}": not ok,
                        f"tie_{side}": bool(ok and e < bound and tie_before(line, e)),
                        f"slope_{side}": float(line(1) - line(0)) if ok and not clip else math.nan,
                        f"root_{side}": float(r) if r is not None else math.nan})
        rows.append(row)
    return pd.DataFrame(rows)


def searched(model, x, maps, spec) -> pd.DataFrame:
    """apem's search (:func:`apem.metric.evaluate_maps`) on the maps: ε⁻, ε⁺, censored, undefined, forward passes."""
    r = metric.evaluate_maps(model, x, maps_tensor(maps), image_index=torch.zeros(len(maps), dtype=torch.long),
                             spec=spec.replace(shuffles=0))
    return pd.DataFrame({k: r[k].numpy() for k in ("eps_minus", "eps_plus", "censored_minus", "censored_plus",
                                                   "undefined_minus", "undefined_plus", "n_forward_minus",
                                                   "n_forward_plus")})


def disagreements(closed: pd.DataFrame, found: pd.DataFrame) -> pd.Series:
    """Per map and side (index ``(map, side)``): True where apem's search differs from the closed form.

    A search agrees when both say undefined, or both give the same step and the same censoring;
    at an exact tie (``tie_<side>``) the step before also agrees.
    """
    out = {}
    for side in ("minus", "plus"):
        und_c, und_f = closed[f"undefined_{side}"].astype(bool), found[f"undefined_{side}"].astype(bool)
        ec, ef = closed[f"eps_{side}"].astype(int), found[f"eps_{side}"].astype(int)
        tie = closed[f"tie_{side}"].astype(bool) if f"tie_{side}" in closed else False
        step = (ec == ef) | (tie & (ef == ec - 1))
        same = (und_c == und_f) & (und_c | (step & (closed[f"censored_{side}"].astype(bool)
                                                     == found[f"censored_{side}"].astype(bool))))
        for i, v in enumerate(~same):
            out[(i, side)] = bool(v)
    return pd.Series(out)
