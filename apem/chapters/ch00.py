"""Chapter 0, APEM by hand: the page (the models and their closed forms are :mod:`apem.by_hand`)."""

from __future__ import annotations

import math
from fractions import Fraction as F

import numpy as np
import pandas as pd

from apem import claims as cl
from apem import metric
from apem.book import display
from apem.config import load_config
from apem.by_hand import (  # noqa: F401  (Margin, tie_before: re-exported, the chapter's tests read them here)
    BATCH, BLOCK, MODES, NAMED_MAPS, PIXELS, SIDES, Margin, clip_drop, closed_forms, dip_for_window, dip_net,
    direction_by_hand, disagreements, first_flip, linear_margin, maps_tensor, net_margin, searched, thesis_by_hand,
    tie_before, toy,
)
from apem.metric.clean import loss_gradient



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
        display.show_markdown(
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
        display.require(ok, "The map R is all zero, so it has no direction", "-p relevance '[0.9, 0.6, 0.3, 0.1]'")
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
        display.show_markdown(" ".join(parts))

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
        display.show_markdown(
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
            display.require(ok, "The map R is all zero, so it has no direction", "-p relevance '[0.9, 0.6, 0.3, 0.1]'")
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
        display.show_markdown(
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
        display.show_figure(fig)

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
