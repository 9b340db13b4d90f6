r"""Chapter 0, APEM by hand: a model small enough to find every epsilon on paper.

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

from apem import claims as cl
from apem import metric, report
from apem.config import load_config
from apem.metric.clean import loss_gradient

SHAPE = (3, 2, 2)  # channels, height, width: a 2 x 2 RGB image, 12 inputs
PIXELS = 4
#: |w_t - w_o| of each pixel (the same on its three channels), before ``weight_scale``
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


# ----------------------------------------------------------------------------- the page


def _fmt_eps(e: int, censored: bool, undefined: bool, bound: int, tie: bool = False) -> str:
    if undefined:
        return "undefined"
    if censored:
        return f"≥ {bound:,} (censored)"
    return f"{int(e):,}" + (f" (tie at {int(e) - 1:,})" if tie else "")


class Page:
    """Chapter 0: the linear classifier and the two-layer net, their closed forms, and apem's search on them."""

    def __init__(self, params="default", overrides=None, *, weight_scale: float = 1.0, margin: float = 10.0,
                 relevance=(0.9, 0.6, 0.3, 0.1), mode: str | None = None, clip: bool | None = None,
                 bound: int | None = None, window=(250, 256), n_maps: int = 100, seed: int = 0,
                 alpha: float = 0.05):
        self.cfg = load_config(params, **dict(overrides or {}))
        base = self.cfg.search()
        self.spec = base.replace(mode=mode or base.mode, clip=base.clip if clip is None else bool(clip),
                                 bound=base.bound if bound is None else int(bound), shuffles=0, batch_size=BATCH,
                                 block=BLOCK)
        self.mode, self.bound, self.clip = self.spec.mode, int(self.spec.bound), bool(self.spec.clip)
        R = [float(v) for v in relevance]
        if len(R) != PIXELS or not all(0 <= v <= 1 for v in R):
            raise ValueError(f"relevance must be {PIXELS} values in [0, 1] (one per pixel of the 2 x 2 image), got {R}")
        if int(n_maps) < 0:
            raise ValueError(f"n_maps must be >= 0, got {n_maps}")
        self.R, self.alpha, self.window = R, alpha, [int(v) for v in window]
        self.toy = toy(weight_scale, margin)
        self.model, self.x = self.toy.model(), self.toy.image()
        rng = np.random.default_rng(int(seed))
        self.names = ["your map R"] + list(NAMED_MAPS) + [f"random {i + 1}" for i in range(int(n_maps))]
        self.maps = [tuple(R)] + [tuple(v) for v in NAMED_MAPS.values()] + [tuple(v) for v in rng.random((int(n_maps),
                                                                                                            PIXELS))]
        self.n_named = 1 + len(NAMED_MAPS)
        self._closed = closed_forms(self.toy, self.maps, self.bound, self.clip)
        self._found = {m: searched(self.model, self.x, self.maps, self.spec.replace(mode=m)) for m in MODES}
        self._net = None

    # ------------------------------------------------------------------ the setting and the model
    def setting(self) -> None:
        report.show_markdown(
            f"**Setting.** A linear classifier on a 2 × 2 RGB image (12 inputs, 2 classes, float64) with clean logit "
            f"margin $m_0$ = {cl.fmt(self.toy.m0, 2)}; apem's `{self.mode}` search with bound {self.bound:,}, "
            f"clipping {'on' if self.clip else 'off'} (the `{self.cfg.name}` configuration's search settings and the "
            f"chapter's parameters). The map $R$ = ({', '.join(cl.fmt(v, 2) for v in self.R)}), one value per pixel. "
            f"No image data and no pretrained model.")

    def model_table(self) -> pd.DataFrame:
        """Each of the 12 inputs: its pixel and channel, its value, its weight difference and the map's value."""
        rows = []
        for c, ch in enumerate("RGB"):
            for i in range(PIXELS):
                k = c * PIXELS + i
                rows.append({"pixel": f"({i // 2}, {i % 2})", "channel": ch, "x": f"{self.toy.x[k]:.2f}",
                             "w_t − w_o": f"{self.toy.dw[k]:+.5f}", "R": f"{self.R[i]:.2f}"})
        return pd.DataFrame(rows).set_index(["pixel", "channel"]).sort_index(level=0, sort_remaining=False)

    # ------------------------------------------------------------------ the closed form and apem's search
    def _side_rows(self, i: int, mode: str | None = None) -> list[dict]:
        mode = mode or self.mode
        c, f = self._closed.iloc[i], self._found[mode].iloc[i]
        rows = []
        for label, side in SIDES:
            und, cen = bool(c[f"undefined_{side}"]), bool(c[f"censored_{side}"])
            rows.append({"": label,
                         "slope (w_t − w_o)·d": "–" if und or self.clip else f"{c[f'slope_{side}']:.6f}",
                         "ε* = −m₀ / slope": "–" if und or self.clip or math.isnan(c[f"root_{side}"])
                         else f"{c[f'root_{side}']:.2f}",
                         "closed form": _fmt_eps(c[f"eps_{side}"], cen, und, self.bound, bool(c[f"tie_{side}"])),
                         f"apem ({mode})": _fmt_eps(f[f"eps_{side}"], bool(f[f"censored_{side}"]),
                                                   bool(f[f"undefined_{side}"]), self.bound),
                         "forward passes": "–" if und else f"{int(f[f'n_forward_{side}'])}"})
        return rows

    def by_hand(self) -> None:
        """The derivation with this model's numbers plugged in."""
        c = self._closed.iloc[0]
        d, ok = direction_by_hand(self.toy, self.R)
        report.require(ok, "The map R is all zero, so it has no direction", "-p relevance '[0.9, 0.6, 0.3, 0.1]'")
        num = sum(F(r) * F(abs(w)) for r, w in zip([self.R[i] for _ in range(3) for i in range(PIXELS)], self.toy.dw))
        norm = 3 * sum(F(r) for r in self.R)
        parts = [f"For $R$: $\\lVert R \\rVert_1 = 3 \\times {cl.fmt(sum(self.R), 2)} = {cl.fmt(float(norm), 2)}$ "
                 f"(the map is broadcast to the three channels) and $\\sum_i R_i |\\Delta w_i|$ = {float(num):.5f}"]
        if self.clip:
            parts.append(f"With clipping each input stops at 0 or 1, so the margin falls only until every input "
                         f"along $d$ is at its bound; the first step with a negative margin is "
                         f"{_fmt_eps(c.eps_minus, bool(c.censored_minus), False, self.bound)}.")
        else:
            parts.append(f"so the slope is $(w_t - w_o) \\cdot d = -{float(num):.5f} / {cl.fmt(float(norm), 2)} = "
                         f"{c.slope_minus:.6f}$ and $\\varepsilon^* = {cl.fmt(self.toy.m0, 2)} / {-c.slope_minus:.6f} "
                         f"= {c.root_minus:.2f}$: the margin is still positive at step "
                         f"{math.floor(c.root_minus):,} and negative at {math.floor(c.root_minus) + 1:,}, so "
                         f"$\\varepsilon^-$ = **{_fmt_eps(c.eps_minus, bool(c.censored_minus), False, self.bound)}**.")
        report.show_markdown(" ".join(parts))

    def side_by_side(self) -> pd.DataFrame:
        """The closed form and apem's search for R and 1 − R."""
        return pd.DataFrame(self._side_rows(0)).set_index("")

    def gallery(self) -> pd.DataFrame:
        """The named maps: closed-form ε⁻, ε⁺ and APEM beside apem's search."""
        rows = []
        for i in range(self.n_named):
            c, f = self._closed.iloc[i], self._found[self.mode].iloc[i]
            row = {"map": self.names[i], "R": "(" + ", ".join(f"{v:.3g}" for v in self.maps[i]) + ")"}
            for who, t in (("closed form", c), (f"apem ({self.mode})", f)):
                for label, side in (("ε⁻", "minus"), ("ε⁺", "plus")):
                    row[f"{label} {who}"] = _fmt_eps(t[f"eps_{side}"], bool(t[f"censored_{side}"]),
                                                    bool(t[f"undefined_{side}"]), self.bound,
                                                    who == "closed form" and bool(t[f"tie_{side}"]))
            defined = not (c.undefined_minus or c.undefined_plus)
            gap = int(c.eps_plus) - int(c.eps_minus)
            row["APEM (closed form)"] = "–" if not defined else (
                f"{gap:+,}" + (" (a bound)" if c.censored_minus or c.censored_plus else ""))
            rows.append(row)
        return pd.DataFrame(rows).set_index("map")

    def gallery_note(self) -> None:
        c = self._closed.iloc[: self.n_named]
        names = self.names[: self.n_named]
        i_best = int(np.argmin(np.where(c.undefined_minus, np.inf, c.eps_minus)))
        lo = F(self.toy.m0) / max(F(abs(w)) for w in self.toy.dw)
        und = [n for n, u in zip(names, c.undefined_plus) if u]
        ties = [n for n, a, b in zip(names, c.tie_minus, c.tie_plus) if a or b]
        report.show_markdown(
            f"The smallest $\\varepsilon^-$ among these maps is the **{names[i_best]}**'s "
            f"({int(c.eps_minus.iloc[i_best]):,}). No map can do better than "
            f"$m_0 / \\max_i |\\Delta w_i|$ = {float(lo):.2f} steps, since the slope is an average of the "
            f"$|\\Delta w_i|$ weighted by $R$: $\\varepsilon^-$ rewards putting all relevance on the most "
            f"sensitive input. A constant map gives $R$ and $1 - R$ the same direction, hence the same step "
            f"and an APEM of 0."
            + (f" The irrelevance map of *{', '.join(und)}* is all zero: it has no direction, and both the closed "
               f"form and apem call it undefined rather than divide by zero." if und else "")
            + (f" For *{', '.join(ties)}* the root $\\varepsilon^*$ is a whole number: at that step the two logits "
               f"tie exactly. `argmax` gives a tie to the lowest class index, the target, so the closed form reports "
               f"the next step; a search computing in float64 may see the margin a hair below zero one step "
               f"earlier, and either answer counts as agreeing with the closed form." if ties else ""))

    def agreement(self) -> pd.DataFrame:
        """Per search mode: the searches (maps × sides) that match the closed form, and their cost."""
        rows = []
        for m in MODES:
            bad = disagreements(self._closed, self._found[m])
            f = self._found[m]
            defined = ~np.concatenate([f.undefined_minus.to_numpy(bool), f.undefined_plus.to_numpy(bool)])
            nfw = np.concatenate([f.n_forward_minus.to_numpy(), f.n_forward_plus.to_numpy()])[defined]
            cens = int(f.censored_minus.sum() + f.censored_plus.sum())
            rows.append({"mode": m, "searches": f"{len(bad):,}", "equal to the closed form": f"{int((~bad).sum()):,}",
                         "censored": f"{cens:,}", "forward passes per search (mean)": cl.fmt(float(nfw.mean()), 1)
                         if len(nfw) else "–"})
        return pd.DataFrame(rows).set_index("mode")

    # ------------------------------------------------------------------ the two-layer net
    def net(self) -> dict:
        """The non-monotone net along R's direction (clipping off): its closed form, the thesis loop by hand, apem."""
        if self._net is None:
            d, ok = direction_by_hand(self.toy, self.R)
            report.require(ok, "The map R is all zero, so it has no direction", "-p relevance '[0.9, 0.6, 0.3, 0.1]'")
            line = linear_margin(self.toy, d, clip=False)
            dip = dip_for_window(line, self.window)
            net = dip_net(self.toy, dip)
            m = net_margin(line, dip)
            spec = self.spec.replace(clip=False)
            x, Rt = self.x, maps_tensor([self.R])
            grad, _, y = loss_gradient(net, x)
            dt = metric.directions(Rt, grad)[0]
            found = {mo: metric.search(net, x, dt, y, spec=spec.replace(mode=mo)) for mo in MODES}
            trace = metric.trace(net, x, dt, y, spec=spec.replace(mode="thesis"))
            eps_t, n_t, tested = thesis_by_hand(m, self.bound)
            self._net = {"line": line, "dip": dip, "margin": m, "exact": first_flip(m, self.bound),
                         "linear_flip": first_flip(line, self.bound), "found": found, "trace": trace,
                         "thesis_by_hand": (eps_t, n_t, tested)}
        return self._net

    def net_table(self) -> pd.DataFrame:
        N = self.net()
        eps_t, n_t, _ = N["thesis_by_hand"]
        rows = [{"": "closed form: first step with a negative margin", "ε⁻": _fmt_eps(N["exact"], N["exact"] >= self.bound,
                                                                                    False, self.bound),
                 "forward passes": "–"},
                {"": "the thesis's loop on the closed-form margin (by hand)",
                 "ε⁻": _fmt_eps(eps_t, eps_t >= self.bound, False, self.bound), "forward passes": f"{n_t}"}]
        for mo in MODES:
            r = N["found"][mo]
            rows.append({"": f"apem `{mo}`", "ε⁻": _fmt_eps(int(r.eps[0]), bool(r.censored[0]), False, self.bound),
                         "forward passes": f"{int(r.n_forward[0])}"})
        return pd.DataFrame(rows).set_index("")

    def net_note(self) -> None:
        N = self.net()
        a, b = self.window
        grid = [s for s in N["thesis_by_hand"][2] if a <= s < b]
        t = int(N["found"]["thesis"].eps[0])
        report.show_markdown(
            f"The window holds the steps {a:,} to {b - 1:,}. The thesis's search tested "
            f"{len(N['trace'])} steps and "
            + (f"none of them was inside it, so it " if not grid else
               f"{', '.join(map(str, grid))} {'was' if len(grid) == 1 else 'were'} inside it, so it ")
            + ("found it." if t == N["exact"] else
               f"stepped over it and reported {_fmt_eps(t, t >= self.bound, False, self.bound)}"
               + (", where the linear part flips." if t == N["linear_flip"] else
                  f" (the linear part flips at {N['linear_flip']:,}).")
               + f" `linear` scans every step and finds {N['exact']:,}.")
            + " Every search still returns a step that changes the prediction; only `linear` promises the first.")

    def figure(self) -> None:
        """The margin along the step for the linear classifier and the net, with the steps the thesis's search tested."""
        import matplotlib.pyplot as plt

        N = self.net()
        d, _ = direction_by_hand(self.toy, self.R)
        lin = linear_margin(self.toy, d, self.clip)
        grad, _, y = loss_gradient(self.model, self.x)
        dt = metric.directions(maps_tensor([self.R]), grad)[0]
        lin_trace = metric.trace(self.model, self.x, dt, y, spec=self.spec.replace(mode="thesis"))
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        panels = ((axes[0], "linear classifier" + (" (clipped)" if self.clip else ""), lin, lin_trace,
                   first_flip(lin, self.bound)),
                  (axes[1], "two-layer ReLU net (no clipping)", N["margin"], N["trace"], N["exact"]))
        for ax, title, m, tr, exact in panels:
            tested = [r for r in tr]
            top = max([r["eps"] for r in tested] + [min(exact, self.bound)]) * 1.08 + 2
            xs = sorted(set([F(0), F(top)] + [k for k in m.knots if k < top]))
            ax.plot([float(v) for v in xs], [float(m(v)) for v in xs], color="0.5", lw=1.5,
                    label="margin (closed form)")
            ax.scatter([r["eps"] for r in tested], [r["margin"] for r in tested], color="C0", s=26, zorder=3,
                       label=f"steps the thesis's search tested ({len(tested)})")
            ax.axhline(0, color="k", lw=1)
            if exact < self.bound:
                ax.axvline(exact, color="C2", ls="--", lw=1.2, label=f"first change: step {exact:,}")
            if m is N["margin"]:
                ax.axvspan(self.window[0] - 0.5, self.window[1] - 0.5, color="C3", alpha=0.25,
                           label=f"window: steps {self.window[0]:,}–{self.window[1] - 1:,} change the prediction")
            res = tr[-1]["result"]
            ax.set_title(f"{title}: thesis's search reports {_fmt_eps(res['eps'], res['censored'], False, self.bound)}",
                         fontsize=10)
            lo = float(min(m(v) for v in xs))
            ax.set_ylim(max(lo, -1.5 * self.toy.m0) - 0.5, 1.15 * self.toy.m0)
            ax.set_xlabel("step ε")
            ax.set_ylabel("logit margin $z_t - z_o$")
            ax.legend(fontsize=8, loc="upper right")
        fig.tight_layout()
        report.show_figure(fig)

    # ------------------------------------------------------------------ exercises' numbers
    def glue(self) -> None:
        """Numbers the exercises' solutions quote (``{glue:text}`` on the page)."""
        from myst_nb import glue

        c = self._closed.iloc[0]
        N = self.net()
        glue("ch00-eps-minus", int(c.eps_minus), display=False)
        glue("ch00-eps-plus", int(c.eps_plus), display=False)
        glue("ch00-root-minus", float(c.root_minus) if not math.isnan(c.root_minus) else 0.0, display=False)
        glue("ch00-net-exact", int(N["exact"]), display=False)
        glue("ch00-m0", float(self.toy.m0), display=False)
        glue("ch00-clip-drop", float(clip_drop(self.toy, self.R)), display=False)
        glue("ch00-net-thesis", int(N["found"]["thesis"].eps[0]), display=False)

    # ------------------------------------------------------------------ verdicts
    def claims(self) -> cl.Claims:
        bad = {m: disagreements(self._closed, self._found[m]) for m in MODES}
        n = sum(len(b) for b in bad.values())
        N = self.net()
        lin, thesis_ = int(N["found"]["linear"].eps[0]), int(N["found"]["thesis"].eps[0])
        eps_t, n_t, _ = N["thesis_by_hand"]
        r_t = N["found"]["thesis"]
        return cl.Claims([
            cl.Invariant(f"apem's search returns the closed-form ε⁻ and ε⁺ of the linear classifier on every map, in "
                         f"every mode ({len(self.maps)} maps × 2 sides × {len(MODES)} modes)",
                         violations=int(sum(b.sum() for b in bad.values())), n=n, what="searches", source=cl.OURS,
                         basis="the margin is linear along each direction, so the closed form is exact"),
            cl.Invariant("On the two-layer net the exact scan (`linear`) finds the first flip the closed form gives",
                         violations=int(lin != N["exact"]), n=1, what="searches", source=cl.OURS),
            cl.Invariant("apem's `thesis` mode is the thesis's loop: on the two-layer net it returns the step and "
                         "the number of forward passes of the loop run by hand on the closed-form margin",
                         violations=int((int(r_t.eps[0]), int(r_t.n_forward[0])) != (eps_t, n_t)), n=1,
                         what="searches", source=cl.OURS),
            cl.Invariant(f"The coarse-to-fine search (paces {', '.join(map(str, metric.THESIS_PACES))}) misses the "
                         f"flip window [{self.window[0]}, {self.window[1]}) and reports a later step",
                         violations=int(not thesis_ > N["exact"]), n=1, what="searches", source=cl.OURS,
                         basis="a property of this net and window, checked"),
        ], title="What held on the models built by hand?", alpha=self.alpha,
            context="Every claim here is checked on a model built by hand, so it is decided, not tested.")

    def verdicts(self) -> None:
        f = self._found[self.mode]
        cens = int(f.censored_minus.sum() + f.censored_plus.sum())
        note = (f"Censoring: {cens} of {2 * len(self.maps)} `{self.mode}` searches on the linear classifier reached "
                f"the bound ({self.bound:,}); the closed form is censored on exactly the same ones when the first "
                "claim holds.")
        model = ("The models are built by hand, not trained: they show what the search does, not what a trained "
                 "network's margins look like (chapter 1 measures that on EfficientNet-Lite0).")
        self.claims().show(censored=note, model=model)
