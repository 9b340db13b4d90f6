r"""Chapter 0, APEM by hand: the tables, notes and figure of the page, from the numbers the page computes.

The page builds the models (:mod:`apem.by_hand`), works the closed form out in exact fractions, runs apem's
search (:func:`apem.metric.search`, ...) and declares its claims; this module only lays those numbers out:

* :func:`search_spec`: the configuration's search settings with the chapter's ``mode``, ``clip`` and ``bound``;
* :func:`model_table`, :func:`hand_table`, :func:`side_by_side`, :func:`gallery`, :func:`agreement`, :func:`net_table`;
* :func:`gallery_note`, :func:`net_note`, :func:`censoring_note`: prose generated from the numbers;
* :func:`margin_figure`: the margin along the step for both models, with the steps the thesis's search tested;
* :func:`regions_toy`, :data:`REGION_MAPS`, :func:`region_eps`, :func:`less`, :func:`region_claim`, :func:`region_table`,
  :func:`region_note`: section 5.1 (a map missing a relevant region, or marking an irrelevant one) on its own model;
* :func:`hand_values`, :func:`exercise_values`, :func:`reference_values`: the numbers the text and solutions quote.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pandas as pd

from apem import metric
from apem.by_hand import (
    BATCH, BLOCK, IMAGE, PIXELS, SIDES, SIGNS, Toy, clip_drop, closed_forms, dip_for_window, dip_net,
    direction_by_hand, disagreements, first_flip, linear_margin, maps_tensor, net_margin, toy,
)
from apem import claims
from apem.claims import fmt
from apem.metric.clean import loss_gradient

#: the discussion's note on what the models are (the verdicts' ``model=``)
MODEL_NOTE = ("The models are built by hand, not trained: they show what the search does, not what a trained "
              "network's margins look like (chapter 1 measures that on EfficientNet-Lite0).")


# ----------------------------------------------------------------------------- the setting


def check_parameters(relevance, n_maps: int) -> list[float]:
    """The map ``relevance`` as 4 floats in [0, 1] (one per pixel); a one-line ``ValueError`` otherwise."""
    R = [float(v) for v in relevance]
    if len(R) != PIXELS or not all(0 <= v <= 1 for v in R):
        raise ValueError(f"relevance must be {PIXELS} values in [0, 1] (one per pixel of the 2 x 2 image), got {R}")
    if int(n_maps) < 0:
        raise ValueError(f"n_maps must be >= 0, got {n_maps}")
    return R


def search_spec(cfg, mode: str | None = None, clip: bool | None = None, bound: int | None = None) -> metric.SearchSpec:
    """The configuration's search (:meth:`apem.config.Config.search`) with the chapter's mode, clip and bound.

    None keeps the configuration's value; no shuffled baseline; batches sized for a 12-input model
    (:data:`apem.by_hand.BATCH`, :data:`apem.by_hand.BLOCK`).
    """
    base = cfg.search()
    return base.replace(mode=mode or base.mode, clip=base.clip if clip is None else bool(clip),
                        bound=base.bound if bound is None else int(bound), shuffles=0, batch_size=BATCH, block=BLOCK)


def setting(toy_: Toy, spec, R, name: str) -> str:
    """The setting line: the model, the search and the map."""
    return (f"**Setting.** A linear classifier on a 2 × 2 RGB image (12 inputs, 2 classes, float64) with clean logit "
            f"margin $m_0$ = {fmt(toy_.m0, 2)}; apem's `{spec.mode}` search with bound {int(spec.bound):,}, "
            f"clipping {'on' if spec.clip else 'off'} (the `{name}` configuration's search settings and the "
            f"chapter's parameters). The map $R$ = ({', '.join(fmt(v, 2) for v in R)}), one value per pixel. "
            f"No image data and no pretrained model.")


def exact(v, digits: int = 6) -> str:
    """A rational as a student writes it: ``"1/64"``, ``"-103/9728 ≈ -0.010588"``, ``"57/10 = 5.7"``.

    The fraction alone when ``digits`` is 0; a float whose fraction needs a denominator above 10^6
    prints as a decimal.
    """
    q = Fraction(v)
    if q.denominator > 10**6:
        return f"{float(q):.{digits}f}" if digits else repr(float(q))
    if q.denominator == 1 or not digits:
        return str(q)
    dec = f"{float(q):.{digits}f}"
    return f"{q} {'=' if Fraction(dec) == q else '≈'} {dec}"


def model_table(toy_: Toy, R) -> pd.DataFrame:
    """Each of the 12 inputs: its pixel and channel, its value, its weight difference (an exact fraction) and R."""
    rows = []
    for c, ch in enumerate("RGB"):
        for i in range(PIXELS):
            k = c * PIXELS + i
            w = Fraction(toy_.dw[k])
            rows.append({"pixel": f"({i // 2}, {i % 2})", "channel": ch, "x": f"{toy_.x[k]:.2f}",
                         "w_t − w_o": ("+" if w > 0 else "") + exact(w, 0), "R": f"{R[i]:g}"})
    return pd.DataFrame(rows).set_index(["pixel", "channel"]).sort_index(level=0, sort_remaining=False)


def fmt_eps(e: int, censored: bool, undefined: bool, bound: int, tie: bool = False) -> str:
    """A searched or closed-form epsilon: ``"945"``, ``"≥ 10,001 (censored)"``, ``"undefined"``, ``"641 (tie at 640)"``."""
    if undefined:
        return "undefined"
    if censored:
        return f"≥ {bound:,} (censored)"
    return f"{int(e):,}" + (f" (tie at {int(e) - 1:,})" if tie else "")


# ----------------------------------------------------------------------------- the closed form beside apem's search


def hand_table(hand: dict, spec) -> pd.DataFrame:
    """The page's closed form for R and 1 − R (``hand[side]``: the dict its ``on_paper`` returns, None: undefined)."""
    rows = []
    for label, side in SIDES:
        h = hand[side]
        if h is None:
            rows.append({"": label, "‖R‖₁": "0 (no direction)"})
            continue
        rows.append({"": label, "‖R‖₁": exact(h["norm"], 2), "Σᵢ Rᵢ |Δwᵢ|": exact(h["weighted"], 5),
                     "slope (w_t − w_o)·d": exact(h["slope"], 6), "ε* = m₀ / −slope": exact(h["root"], 2),
                     "⌊ε*⌋ + 1": f"{math.floor(h['root']) + 1:,}",
                     "floor with clipping": exact(h["floor"], 3),
                     f"ε (clipping {'on' if spec.clip else 'off'})":
                         fmt_eps(h["step"], h["step"] >= spec.bound, False, int(spec.bound), h["tie"])})
    return pd.DataFrame(rows).set_index("").fillna("–")


def side_by_side(hand: dict, found: dict, spec) -> pd.DataFrame:
    """The page's closed form beside apem's search on the one map R (``found``: :func:`apem.metric.evaluate_maps`)."""
    bound, rows = int(spec.bound), []
    for label, side in SIDES:
        h = hand[side]
        und = h is None
        rows.append({"": label,
                     "slope (w_t − w_o)·d": "–" if und or spec.clip else f"{float(h['slope']):.6f}",
                     "ε* = −m₀ / slope": "–" if und or spec.clip else f"{float(h['root']):.2f}",
                     "closed form": fmt_eps(0 if und else h["step"], not und and h["step"] >= bound, und, bound,
                                            not und and h["tie"]),
                     f"apem ({spec.mode})": fmt_eps(int(found[f"eps_{side}"][0]), bool(found[f"censored_{side}"][0]),
                                                   bool(found[f"undefined_{side}"][0]), bound),
                     "forward passes": "–" if und else f"{int(found[f'n_forward_{side}'][0])}"})
    return pd.DataFrame(rows).set_index("")


def gallery(names, maps, closed: pd.DataFrame, found: pd.DataFrame, bound: int, mode: str) -> pd.DataFrame:
    """The named maps: closed-form ε⁻, ε⁺ and APEM beside apem's search (``closed``, ``found``: one row per map)."""
    rows = []
    for i, name in enumerate(names):
        c, f = closed.iloc[i], found.iloc[i]
        row = {"map": name, "R": "(" + ", ".join(f"{v:.3g}" for v in maps[i]) + ")"}
        for who, t in (("closed form", c), (f"apem ({mode})", f)):
            for label, side in (("ε⁻", "minus"), ("ε⁺", "plus")):
                row[f"{label} {who}"] = fmt_eps(t[f"eps_{side}"], bool(t[f"censored_{side}"]),
                                                bool(t[f"undefined_{side}"]), bound,
                                                who == "closed form" and bool(t[f"tie_{side}"]))
        defined = not (c.undefined_minus or c.undefined_plus)
        gap = int(c.eps_plus) - int(c.eps_minus)
        row["APEM (closed form)"] = "–" if not defined else (
            f"{gap:+,}" + (" (a bound)" if c.censored_minus or c.censored_plus else ""))
        rows.append(row)
    return pd.DataFrame(rows).set_index("map")


def gallery_note(names, closed: pd.DataFrame, toy_: Toy) -> str:
    """What the gallery shows: the best ε⁻, the bound no map can beat, undefined maps and exact ties."""
    c = closed.iloc[: len(names)]
    i_best = int(np.argmin(np.where(c.undefined_minus, np.inf, c.eps_minus)))
    lo = Fraction(toy_.m0) / max(Fraction(abs(w)) for w in toy_.dw)
    und = [n for n, u in zip(names, c.undefined_plus) if u]
    ties = [n for n, a, b in zip(names, c.tie_minus, c.tie_plus) if a or b]
    return (
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


def agreement(closed: pd.DataFrame, found: dict) -> pd.DataFrame:
    """Per search mode (``found[mode]``: one row per map): the searches equal to the closed form, and their cost."""
    rows = []
    for m, f in found.items():
        bad = disagreements(closed, f)
        defined = ~np.concatenate([f.undefined_minus.to_numpy(bool), f.undefined_plus.to_numpy(bool)])
        nfw = np.concatenate([f.n_forward_minus.to_numpy(), f.n_forward_plus.to_numpy()])[defined]
        cens = int(f.censored_minus.sum() + f.censored_plus.sum())
        rows.append({"mode": m, "searches": f"{len(bad):,}", "equal to the closed form": f"{int((~bad).sum()):,}",
                     "censored": f"{cens:,}", "forward passes per search (mean)": fmt(float(nfw.mean()), 1)
                     if len(nfw) else "–"})
    return pd.DataFrame(rows).set_index("mode")


def censoring_note(found: pd.DataFrame, spec) -> str:
    """How many of the setting's searches on the linear classifier reached the bound."""
    cens = int(found.censored_minus.sum() + found.censored_plus.sum())
    return (f"Censoring: {cens} of {2 * len(found)} `{spec.mode}` searches on the linear classifier reached "
            f"the bound ({int(spec.bound):,}); the closed form is censored on exactly the same ones when the first "
            "claim holds.")


# ----------------------------------------------------------------------------- the two-layer net


def net_table(exact_flip: int, loop: tuple, found: dict, bound: int) -> pd.DataFrame:
    """The net's first flip: the closed form, the thesis's loop by hand (``loop``: ``(eps, tests, tested)``), apem."""
    eps_t, n_t, _ = loop
    rows = [{"": "closed form: first step with a negative margin",
             "ε⁻": fmt_eps(exact_flip, exact_flip >= bound, False, bound), "forward passes": "–"},
            {"": "the thesis's loop on the closed-form margin (by hand)",
             "ε⁻": fmt_eps(eps_t, eps_t >= bound, False, bound), "forward passes": f"{n_t}"}]
    for mo, r in found.items():
        rows.append({"": f"apem `{mo}`", "ε⁻": fmt_eps(int(r.eps[0]), bool(r.censored[0]), False, bound),
                     "forward passes": f"{int(r.n_forward[0])}"})
    return pd.DataFrame(rows).set_index("")


def net_note(window, tested, trace: list, thesis_eps: int, exact_flip: int, linear_flip: int, bound: int) -> str:
    """Whether the thesis's search (``tested``: the steps its loop tests) found the window, and what it reported."""
    a, b = (int(v) for v in window)
    grid = [s for s in tested if a <= s < b]
    return (
        f"The window holds the steps {a:,} to {b - 1:,}. The thesis's search tested {len(trace)} steps and "
        + ("none of them was inside it, so it " if not grid else
           f"{', '.join(map(str, grid))} {'was' if len(grid) == 1 else 'were'} inside it, so it ")
        + ("found it." if thesis_eps == exact_flip else
           f"stepped over it and reported {fmt_eps(thesis_eps, thesis_eps >= bound, False, bound)}"
           + (", where the linear part flips." if thesis_eps == linear_flip else
              f" (the linear part flips at {linear_flip:,}).")
           + f" `linear` scans every step and finds {exact_flip:,}.")
        + " Every search still returns a step that changes the prediction; only `linear` promises the first.")


def margin_figure(toy_: Toy, R, spec, net_margin_, net_trace: list, net_exact: int, window):
    """The margin along the step for the linear classifier and the net, with the steps the thesis's search tested.

    The linear panel's margin and trace are computed here (clipping as ``spec``); the net's are given.
    """
    import matplotlib.pyplot as plt

    model, x = toy_.model(), toy_.image()
    d, _ = direction_by_hand(toy_, R)
    lin = linear_margin(toy_, d, bool(spec.clip))
    grad, _, y = loss_gradient(model, x)
    dt = metric.directions(maps_tensor([R]), grad)[0]
    lin_trace = metric.trace(model, x, dt, y, spec=spec.replace(mode="thesis"))
    bound = int(spec.bound)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    panels = ((axes[0], "linear classifier" + (" (clipped)" if spec.clip else ""), lin, lin_trace,
               first_flip(lin, bound), False),
              (axes[1], "two-layer ReLU net (no clipping)", net_margin_, net_trace, net_exact, True))
    for ax, title, m, tested, first, is_net in panels:
        top = max([r["eps"] for r in tested] + [min(first, bound)]) * 1.08 + 2
        xs = sorted(set([Fraction(0), Fraction(top)] + [k for k in m.knots if k < top]))
        ax.plot([float(v) for v in xs], [float(m(v)) for v in xs], color="0.5", lw=1.5, label="margin (closed form)")
        ax.scatter([r["eps"] for r in tested], [r["margin"] for r in tested], color="C0", s=26, zorder=3,
                   label=f"steps the thesis's search tested ({len(tested)})")
        ax.axhline(0, color="k", lw=1)
        if first < bound:
            ax.axvline(first, color="C2", ls="--", lw=1.2, label=f"first change: step {first:,}")
        if is_net:
            ax.axvspan(window[0] - 0.5, window[1] - 0.5, color="C3", alpha=0.25,
                       label=f"window: steps {window[0]:,}–{window[1] - 1:,} change the prediction")
        res = tested[-1]["result"]
        ax.set_title(f"{title}: thesis's search reports {fmt_eps(res['eps'], res['censored'], False, bound)}",
                     fontsize=10)
        lo = float(min(m(v) for v in xs))
        ax.set_ylim(max(lo, -1.5 * toy_.m0) - 0.5, 1.15 * toy_.m0)
        ax.set_xlabel("step ε")
        ax.set_ylabel("logit margin $z_t - z_o$")
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- missing and extra regions (section 5.1)

#: the three maps of section 5.1 on the regions model, one value per pixel: pixels 1 and 2 are the two relevant
#: regions, pixels 3 and 4 the background
REGION_MAPS = {
    "correct: both relevant regions": (1.0, 1.0, 0.0, 0.0),
    "misses a region (pixel 2)": (1.0, 0.0, 0.0, 0.0),
    "marks an extra region (pixel 3)": (1.0, 1.0, 1.0, 0.0),
}
#: the step the page's closed form uses as "no bound": far beyond any search's
NO_BOUND = 10**12


def regions_toy(regions, weight_scale: float = 1.0, margin: float = 10.0) -> Toy:
    """The linear classifier of :func:`apem.by_hand.toy` with the per-pixel sensitivities ``regions`` (in 1/256).

    Same image, signs and clean margin; :math:`|w_t - w_o|` of pixel ``p`` (each of its three channels) is
    ``weight_scale * regions[p] / 256``. A ``ValueError`` (one line) unless ``regions`` is 4 values >= 0, not all 0.
    """
    r = [float(v) for v in regions]
    if len(r) != PIXELS or any(not (v >= 0) for v in r) or not any(r):
        raise ValueError(f"regions must be {PIXELS} sensitivities >= 0 (in 1/256, one per pixel), not all 0; got {r}")
    if not weight_scale > 0:
        raise ValueError(f"weight_scale must be > 0, got {weight_scale}")
    dw = tuple(float(weight_scale) * SIGNS[c][i] * r[i] / 256 for c in range(3) for i in range(PIXELS))
    return Toy(dw, tuple(float(v) for row in IMAGE for v in row), float(margin))


def less(a, b, or_equal: bool = False) -> bool | None:
    """``a < b`` (``a <= b`` with ``or_equal``) for exact values that may be infinite (a map whose search never
    changes the prediction) or None (an undefined one). None when no comparison orders them: either is
    undefined, or both are infinite and the comparison is strict."""
    if a is None or b is None:
        return None
    if a == math.inf and b == math.inf:
        return True if or_equal else None
    return a <= b if or_equal else a < b


def region_claim(text: str, checks: dict, searches: pd.Series, ref, source: str = claims.THESIS) -> claims.Invariant:
    """Section 5.1's claim on two of the maps: exact comparisons of their closed forms, and apem's search on them.

    ``checks``: ``{what: True / False / None}`` (:func:`less` of two exact values); ``searches``: per search
    of the two maps, whether apem's search differs from the closed form (:func:`apem.by_hand.disagreements`).
    Held when every comparison holds and every search agrees; not applicable when a comparison is None (no
    comparison orders the values), whatever the others.
    """
    undecided = [k for k, v in checks.items() if v is None]
    return claims.Invariant(
        text, violations=sum(v is False for v in checks.values()) + int(searches.sum()),
        n=len(checks) + len(searches), what="checks", source=source, ref=ref, applicable=not undecided,
        reason=f"{'; '.join(undecided)}: no comparison orders an undefined value, or two infinite ones",
        basis=f"exact values, no statistics: {'; '.join(checks)} (the closed forms), and apem's {len(searches)} "
              "searches of the two maps equal to the closed form")


def region_eps(h: dict, what: str):
    """A map's exact ``"minus"`` or ``"plus"`` step, or its ``"apem"`` (ε⁺ − ε⁻), from the page's closed form
    ``h`` (``{"minus": {"root", "step"} or None, "plus": ...}``): None when undefined, inf when it never changes
    (an infinite ε⁺ makes APEM infinite; an infinite ε⁻ leaves it undefined)."""
    if what != "apem":
        return None if h[what] is None else h[what]["step"]
    lo, hi = region_eps(h, "minus"), region_eps(h, "plus")
    if lo is None or hi is None or lo == math.inf:
        return None
    return math.inf if hi == math.inf else hi - lo


def _eps_exact(h: dict | None) -> str:
    if h is None:
        return "undefined"
    if h["step"] == math.inf:
        return "∞ (never changes)"
    return f"{h['step']:,}"


def _root(h: dict | None) -> str:
    if h is None or h["root"] is None:
        return "–"
    return exact(h["root"], 2)


def region_table(names, maps, hand: dict, found: pd.DataFrame, spec) -> pd.DataFrame:
    """Section 5.1's three maps: the closed form (ε* as an exact fraction, the step past it, APEM) beside apem's search.

    ``hand[name]``: ``{"minus": {"root", "step"}, "plus": ...}``, the page's exact steps without a bound
    (``root`` None with clipping); ``found``: :func:`apem.by_hand.searched` on ``maps`` (one row per map).
    """
    bound, rows = int(spec.bound), []
    for i, name in enumerate(names):
        h, f = hand[name], found.iloc[i]
        row = {"map": name, "R": "(" + ", ".join(f"{v:g}" for v in maps[i]) + ")"}
        for label, side in (("ε⁻", "minus"), ("ε⁺", "plus")):
            row[f"{label}: ε*"] = _root(h[side])
            row[f"{label} closed form"] = _eps_exact(h[side])
            row[f"{label} apem ({spec.mode})"] = fmt_eps(int(f[f"eps_{side}"]), bool(f[f"censored_{side}"]),
                                                        bool(f[f"undefined_{side}"]), bound)
        row["APEM closed form"] = _apem_text(region_eps(h, "apem"))
        cens = bool(f.censored_minus or f.censored_plus)
        row[f"APEM apem ({spec.mode})"] = f"{int(f.eps_plus) - int(f.eps_minus):+,}" + (" (a bound)" if cens else "")
        rows.append(row)
    return pd.DataFrame(rows).set_index("map")


def region_note(names, hand: dict) -> str:
    """What the three maps' closed forms show, from their numbers (``names`` in :data:`REGION_MAPS`' order:
    the correct map, the one that misses a region, the one that marks an extra one)."""
    c, m, x = (hand[n] for n in names)
    a_c, a_m, a_x = (region_eps(h, "apem") for h in (c, m, x))

    def cmp(a, b):  # how a compares with b, in words
        if a is None or b is None:
            return "not comparable with"
        return "equal to" if a == b else "below" if a < b else "above"

    return (
        f"**Missing a region**: ε⁻ is {_eps_exact(m['minus'])}, {cmp(region_eps(m, 'minus'), region_eps(c, 'minus'))} the "
        f"correct map's {_eps_exact(c['minus'])} (the whole budget goes to the one region it marks), but ε⁺ is "
        f"{_eps_exact(m['plus'])}, {cmp(region_eps(m, 'plus'), region_eps(c, 'plus'))} the correct map's "
        f"{_eps_exact(c['plus'])}: its irrelevance map covers the missed region. APEM {_apem_text(a_m)} against "
        f"{_apem_text(a_c)}. **Marking an extra region**: ε⁻ is {_eps_exact(x['minus'])}, "
        f"{cmp(region_eps(x, 'minus'), region_eps(c, 'minus'))} the correct map's (part of the budget goes to a pixel the "
        f"model barely reads), ε⁺ {_eps_exact(x['plus'])}, {cmp(region_eps(x, 'plus'), region_eps(c, 'plus'))} the correct "
        f"map's (its irrelevance map still holds no relevant region), and APEM {_apem_text(a_x)}.")


def _apem_text(a) -> str:
    return "undefined" if a is None else "∞" if a == math.inf else f"{a:+,}"


# ----------------------------------------------------------------------------- exercises' numbers


def exercise_values(toy_: Toy, R, window, spec) -> dict:
    """The numbers the exercises' solutions quote, for one model, map, window and search (``{glue:text}`` names).

    The page glues them twice: on the reference build (the configuration without overrides, the
    chapter's default parameters) under these names, and on its own parameters as ``<name>_here``.
    """
    c = closed_forms(toy_, [R], int(spec.bound), bool(spec.clip)).iloc[0]
    d, _ = direction_by_hand(toy_, R)
    line = linear_margin(toy_, d)
    dip = dip_for_window(line, window)
    net, x = dip_net(toy_, dip), toy_.image()
    grad, _, y = loss_gradient(net, x)
    dt = metric.directions(maps_tensor([R]), grad)[0]
    thesis_eps = int(metric.search(net, x, dt, y, spec=spec.replace(clip=False, mode="thesis")).eps[0])
    return {"ch00-eps-minus": int(c.eps_minus), "ch00-eps-plus": int(c.eps_plus),
            "ch00-root-minus": float(c.root_minus) if not math.isnan(c.root_minus) else 0.0,
            "ch00-net-exact": int(first_flip(net_margin(line, dip), int(spec.bound))),
            "ch00-m0": float(toy_.m0), "ch00-clip-drop": float(clip_drop(toy_, R)), "ch00-net-thesis": thesis_eps}



def reference_values(params: str) -> dict:
    """:func:`exercise_values` on the reference build: ``params`` without overrides, the chapter's defaults."""
    from apem.book import find_chapter
    from apem.book.params import chapter_parameters
    from apem.config import load_config

    d = {k: p.default for k, p in chapter_parameters(find_chapter(0)).items()}
    spec = search_spec(load_config(params), mode=d["mode"], clip=d["clip"], bound=d["bound"])
    return exercise_values(toy(d["weight_scale"], d["margin"]), d["relevance"], d["window"], spec)


def hand_values(h: dict) -> dict:
    """The closed form's quantities the text quotes (``ch00-hand-*`` glue names), from ``on_paper(R)``."""
    below = math.floor(h["root"])
    return {"ch00-hand-norm": exact(h["norm"], 2), "ch00-hand-weighted": exact(h["weighted"], 5),
            "ch00-hand-slope": exact(h["slope"], 6), "ch00-hand-root": exact(h["root"], 2),
            "ch00-hand-below": f"{below:,}", "ch00-hand-past": f"{below + 1:,}"}
