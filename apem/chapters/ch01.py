"""Chapter 1, APEM step by step: one image through the metric, and the three search modes compared.

The page walks one correctly classified image (``image``), one method's map
(``method``) at one visualisation stage (``stage``) through the metric, then
compares the searches ``thesis``, ``linear`` and ``bisect`` on the stored maps
of the first ``n_compare`` images (:func:`apem.studies.compare_modes`).

The unit of the claims is the image: an image has many searches (every method,
stage and side), which are not independent, so each claim reads one outcome per
image (:func:`image_outcomes`): "all searches of this image were monotone",
"all searches of this image found the same step as ``linear``", and the mean
number of forward passes per search of this image.
"""

from __future__ import annotations



import numpy as np
import pandas as pd
import torch

from apem import claims as cl
from apem import metric, thesis
from apem.figures import plots
from apem.book import display
from apem.data import class_name
from apem.metric.clean import loss_gradient
from apem.run import results
from apem.studies import compare_modes
from apem.studies.common import correct_ids, pick_stage

MODES = ("thesis", "linear", "bisect")
NON_MONOTONE_MAX = 0.05  # the share of images with a search that flips back, below which the claim holds
EXACT_MIN = 0.95  # the share of images whose every search equals linear, above which the claim holds
SIDES = (("ε⁻ (relevance)", "minus"), ("ε⁺ (irrelevance)", "plus"))


# ----------------------------------------------------------------------------- per-image outcomes (tested)


def image_outcomes(M: pd.DataFrame, modes=("thesis", "bisect")) -> pd.DataFrame:
    """One row per image from :func:`apem.studies.compare_modes`'s table (one row per search).

    Columns: ``searches`` (defined searches), ``exact_searches`` (those with a
    ``linear`` answer), ``non_monotone`` (True when *any* of the image's exact
    searches flipped back; NaN without exact searches), ``equal_<mode>`` (True
    when *every* exact search of the image found linear's step; NaN without
    exact searches) and ``forward_<mode>`` (mean forward passes per defined
    search of the image, for every mode that searched them all).
    """
    ok = M[~M.undefined.astype(bool)]
    exact = ok[ok.eps_linear.notna()]
    ids = list(dict.fromkeys(ok.image_id))
    out = pd.DataFrame(index=pd.Index(ids, name="image_id"))
    out["searches"] = ok.groupby("image_id").size().reindex(ids).fillna(0).astype(int)
    out["exact_searches"] = exact.groupby("image_id").size().reindex(ids).fillna(0).astype(int)
    out["non_monotone"] = exact.groupby("image_id").non_monotone.max().reindex(ids).map(
        lambda v: np.nan if pd.isna(v) else bool(v)).astype(object)
    for m in modes:
        same = (exact[f"eps_{m}"] == exact.eps_linear)
        out[f"equal_{m}"] = same.groupby(exact.image_id).all().reindex(ids).astype(object)
        out[f"later_{m}"] = (exact[f"eps_{m}"] > exact.eps_linear).groupby(exact.image_id).sum().reindex(ids)
    for m in MODES:
        if m != "linear":
            out[f"forward_{m}"] = cl.per_image(ok, f"forward_{m}")
    return out


def mode_claims(O: pd.DataFrame, searches: int, cap: int) -> list:
    """The chapter's claims on the per-image outcomes ``O`` of :func:`image_outcomes`."""
    have = O.non_monotone.notna()
    no_exact = "no search had an exact (linear) answer within the cap; raise linear_cap or n_compare"
    per = f"{int(O.exact_searches[have].median())}" if have.any() else "0"
    out = [cl.Proportion(
        f"The prediction changes once and stays changed along the line: fewer than "
        f"{cl.fmt(NON_MONOTONE_MAX, 0, pct=True)} of images have a search that flips back (an image counts as "
        f"monotone only when all its searches with an exact answer were monotone, a median of {per} per image: "
        "every method, stage and side)",
        outcomes=O.non_monotone[have].astype(bool), threshold=NON_MONOTONE_MAX, above=False,
        what="images with a non-monotone search", applicable=bool(have.any()), reason=no_exact)]
    for m, src in (("thesis", cl.THESIS), ("bisect", cl.OURS)):
        col = O[f"equal_{m}"][have]
        out.append(cl.Proportion(
            f"The `{m}` search finds the exact first change (the `linear` answer): more than "
            f"{cl.fmt(EXACT_MIN, 0, pct=True)} of images have all their searches equal to `linear`",
            outcomes=col.astype(bool), threshold=EXACT_MIN, above=True, source=src,
            what="images with every search equal to linear", applicable=bool(have.any()), reason=no_exact))
    out.append(cl.Paired(
        "`bisect` needs fewer forward passes per search than the thesis's search (mean per image)",
        a=O.forward_bisect, b=O.forward_thesis, greater=False, names=("bisect", "thesis"), source=cl.OURS,
        applicable=searches > 0, reason="no defined search"))
    return out


# ----------------------------------------------------------------------------- the page


class Page:
    """Chapter 1: ``image`` (position among the correct images), ``method`` and ``stage`` pick the walked map."""

    def __init__(self, params="default", overrides=None, *, image: int = 0, method: str = "gradient",
                 stage: int | None = None, alpha: float = 0.05, n_compare: int = 4, linear_cap: int = 150):
        self.res = results(params, progress=False, **dict(overrides or {}))
        self.cfg, T = self.res.cfg, self.res.table
        self.alpha, self.n_compare, self.linear_cap = alpha, int(n_compare), int(linear_cap)
        ids = correct_ids(self.res)
        display.require(len(ids) > 0, "The configuration has no correctly classified image to walk through",
                       "-p n_correct 4")
        if method not in set(T.method):
            raise ValueError(f"method {method!r} is not in the results table (it has {sorted(set(T.method))})")
        if not 0 <= int(image) < len(ids):
            raise ValueError(f"image must be in 0..{len(ids) - 1} (there are {len(ids)} correct images), got {image}")
        self.iid, self.method, self.stage = ids[int(image)], method, pick_stage(self.res, stage)
        self.row = T[(T.image_id == self.iid) & (T.method == method) & (T.stage == self.stage)].iloc[0]
        self._traces = None
        self._M = None

    # ------------------------------------------------------------------ the walked image
    @property
    def defined(self) -> bool:
        return bool(np.isfinite(self.row.eps_minus) and np.isfinite(self.row.eps_plus))

    def _setup(self):
        if hasattr(self, "_x"):
            return
        lm = self.res.model
        self._x = self.res.image_tensors([self.iid]).to(lm.device)
        self._y = torch.tensor([int(self.row.pred)], device=lm.device)
        grad, _, _ = loss_gradient(lm.model, self._x, self._y)
        self._R = self.res.map(self.iid, self.method, self.stage).to(lm.device)
        self._d = {"minus": metric.directions(self._R[None], grad)[0],
                   "plus": metric.directions((1 - self._R)[None], grad)[0]}

    def setting(self) -> None:
        r, cfg = self.row, self.cfg
        display.show_markdown(
            f"**Setting.** {cfg.model} (`{cfg.preset}` preprocessing), `{cfg.search_mode}` search with bound "
            f"{cfg.search_bound}. **The image**: `{self.iid}`, {_article(r.label_name)} *{r.label_name}*, predicted as *{r.pred_name}* with "
            f"confidence {r.confidence:.2f}. **The map**: {thesis.label(self.method)}, stage {self.stage}.")
        display.require(self.defined, f"The {thesis.label(self.method)} map of this image at stage {self.stage} is "
                       "constant, so it gives no direction and no epsilon", "-p image 1 (another image)")

    def map_figure(self) -> None:
        """Figure 3.2: the image, its relevance map and the irrelevance map."""
        import matplotlib.pyplot as plt

        self._setup()
        fig, axes = plt.subplots(1, 3, figsize=(9, 3.4))
        plots.show_image(axes[0], self._x[0].cpu(), self.row.label_name)
        plots.show_image(axes[1], self._R.cpu(), f"relevance R ({thesis.label(self.method)})")
        plots.show_image(axes[2], (1 - self._R).cpu(), "irrelevance 1 − R")
        fig.tight_layout()
        display.show_figure(fig)

    def walk_figure(self) -> None:
        """Figure 3.3: the perturbation and the perturbed image just before and at the change, for both maps."""
        import matplotlib.pyplot as plt

        self._setup()
        model, x, pred = self.res.model.model, self._x, int(self.row.pred)
        eps = {"minus": int(self.row.eps_minus), "plus": int(self.row.eps_plus)}
        fig, axes = plt.subplots(2, 4, figsize=(12, 6.4))
        for r_, (name, side) in enumerate((("relevance", "minus"), ("irrelevance", "plus"))):
            d = self._d[side]
            for k, e in enumerate((eps[side] - 1, eps[side])):
                with torch.no_grad():
                    p = int(model(x + e * d).argmax(1))
                pv = (e * d)[0].cpu()
                pv = (pv - pv.min()) / (pv.max() - pv.min() + 1e-12)
                plots.show_image(axes[r_, 2 * k], pv, f"{name}: perturbation, ε = {e}")
                plots.show_image(axes[r_, 2 * k + 1], (x + e * d)[0].clamp(0, 1).cpu(),
                                 f"prediction: {class_name(p)}" + (" ✓" if p == pred else " ✗"))
        fig.tight_layout()
        display.show_figure(fig)
        cens = [s for s, c in (("ε⁻", self.row.censored_minus), ("ε⁺", self.row.censored_plus)) if c]
        big = float((eps["minus"] * self._d["minus"]).abs().max())
        display.show_markdown(
            f"Here $\\varepsilon^-$ = **{eps['minus']}** and $\\varepsilon^+$ = **{eps['plus']}**, so this image's "
            f"APEM is **{eps['plus'] - eps['minus']}**. The largest single-pixel change at $\\varepsilon^-$ is "
            f"{big:.3f} in [0, 1] units."
            + (f" {' and '.join(cens)} reached the search bound ({self.cfg.search_bound}) without a change: it is "
               "censored, a lower bound on the true value." if cens else " Neither search reached the bound."))

    # ------------------------------------------------------------------ the three searches on this image
    def _trace(self):
        if self._traces is None:
            self._setup()
            top = max(int(self.row.eps_minus), int(self.row.eps_plus))
            shown = [m for m in MODES if m != "linear" or top <= self.linear_cap]
            spec = self.cfg.search()
            self._traces = {m: {label: metric.trace(self.res.model.model, self._x, self._d[side], self._y,
                                                    spec=spec.replace(mode=m, shuffles=0))
                                for label, side in SIDES} for m in shown}
        return self._traces

    def trace_figure(self) -> None:
        """Every step each search tested on this image, over the margin along the line."""
        import matplotlib.pyplot as plt

        traces = self._trace()
        model, x, pred = self.res.model.model, self._x, int(self.row.pred)
        if "linear" not in traces:
            display.show_markdown(f"(`linear` is left out of this figure: it would forward every one of the "
                                 f"{max(int(self.row.eps_minus), int(self.row.eps_plus))} steps; "
                                 f"`linear_cap` is {self.linear_cap}.)")
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        for ax, (label, side) in zip(axes, SIDES):
            d = self._d[side]
            last = max(t["eps"] for m in traces for t in traces[m][label])
            grid = torch.unique(torch.logspace(0, np.log10(max(2, last * 1.3)), 60).round().long())
            with torch.no_grad():
                z = torch.cat([model(x + e * d) for e in grid.tolist()])
            top2 = z.topk(2, 1).values
            other = torch.where(z.argmax(1) == pred, top2[:, 1], top2[:, 0])
            ax.plot(grid.cpu(), (z[:, pred] - other).cpu(), color="0.6", lw=1.5, label="margin along the line")
            for mk, (m, c) in zip("o^s", (("thesis", "C0"), ("linear", "C2"), ("bisect", "C3"))):
                if m in traces:
                    t = [r for r in traces[m][label] if r["eps"] > 0]
                    ax.scatter([r["eps"] for r in t], [r["margin"] for r in t], marker=mk, color=c, s=28, alpha=0.8,
                               label=f"{m}: {len(traces[m][label])} tested steps")
            ax.axhline(0, color="k", lw=1)
            ax.set_xscale("log")
            ax.set_xlabel("step ε")
            ax.set_ylabel("logit margin (predicted − best other)")
            ax.set_title(label)
            ax.legend(fontsize=8)
        fig.tight_layout()
        display.show_figure(fig)

    def trace_table(self) -> pd.DataFrame:
        """Each search's answer and forward passes on this image."""
        traces = self._trace()
        rows = [{"mode": m, "side": label, "ε found": t[-1]["result"]["eps"],
                 "censored": "yes" if t[-1]["result"]["censored"] else "no",
                 "forward passes": t[-1]["result"]["n_forward"]}
                for m in traces for label, t in traces[m].items()]
        return pd.DataFrame(rows).pivot(index="mode", columns="side",
                                        values=["ε found", "censored", "forward passes"]).reindex(list(traces))

    # ------------------------------------------------------------------ the modes compared on many images
    @property
    def compared(self) -> pd.DataFrame:
        if self._M is None:
            n = min(self.n_compare, len(correct_ids(self.res)))
            self._M = compare_modes(self.res, n_images=n, linear_cap=self.linear_cap)
        return self._M

    @property
    def outcomes(self) -> pd.DataFrame:
        return image_outcomes(self.compared)

    def monotonicity(self) -> None:
        """One paragraph: how many searches and images the comparison has, and how many flipped back."""
        M, O = self.compared, self.outcomes
        ok = M[~M.undefined.astype(bool)]
        ex = ok[ok.eps_linear.notna()]
        have = O.non_monotone.notna()
        nm_img = int(O.non_monotone[have].astype(bool).sum())
        display.show_markdown(
            f"The comparison has {O.shape[0]} images and {len(ok)} searches with a defined direction "
            f"({int(M.undefined.sum())} constant maps gave none); {len(ex)} of them had an answer of at most "
            f"{self.linear_cap} steps, so `linear` ran on them. The prediction flipped back within 64 steps after its "
            f"first change in **{int(ex.non_monotone.astype(bool).sum())} of {len(ex)} searches**, on "
            f"**{nm_img} of {int(have.sum())} images**. The claims below count images, not searches: the searches of "
            "one image share its model input and are not independent.")

    def modes_table(self) -> pd.DataFrame:
        """Per mode: images whose every exact search equals linear (exact interval), later answers, cost."""
        M, O = self.compared, self.outcomes
        ok = M[~M.undefined.astype(bool)]
        ex = ok[ok.eps_linear.notna()]
        have = O.non_monotone.notna()
        rows = []
        for m in MODES:
            row = {"mode": m}
            if m == "linear":
                row.update({"images with every search equal to linear": "(the reference)",
                            "searches later than linear": "–"})
            else:
                k, n = int(O[f"equal_{m}"][have].astype(bool).sum()), int(have.sum())
                row["images with every search equal to linear"] = _share_ci(k, n, self.alpha)
                row["searches later than linear"] = f"{int((ex[f'eps_{m}'] > ex.eps_linear).sum())} of {len(ex)}"
            src = ex if m == "linear" else ok
            row["forward passes per search"] = cl.fmt(float(src[f"forward_{m}"].mean()), 1) if len(src) else "–"
            row["ms per search"] = cl.fmt(1000 * float(src[f"seconds_{m}"].mean()), 1) if len(src) else "–"
            row["searches"] = f"{len(src):,}"
            rows.append(row)
        return pd.DataFrame(rows).set_index("mode")

    # ------------------------------------------------------------------ verdicts
    def claims(self) -> cl.Claims:
        M, O = self.compared, self.outcomes
        ok = M[~M.undefined.astype(bool)]
        context = (f"The comparison used the first {O.shape[0]} correctly classified images (`n_compare`); `linear`, "
                   f"one forward pass per step, ran only where the answer is at most {self.linear_cap} steps "
                   f"({int(ok.eps_linear.notna().sum())} of {len(ok)} searches), so the monotonicity and exactness "
                   "claims speak for those searches.")
        return cl.Claims(mode_claims(O, len(ok), self.linear_cap), title="Did the claims hold on our model?",
                         alpha=self.alpha, context=context)

    def verdicts(self) -> None:
        M = self.compared
        ok = M[~M.undefined.astype(bool)]
        cens = {m: int(ok[f"censored_{m}"].fillna(0).astype(bool).sum()) for m in ("thesis", "bisect")}
        note = (f"Censoring: {cens['bisect']} of {len(ok)} `bisect` and {cens['thesis']} `thesis` searches reached the "
                f"bound ({self.cfg.search_bound}); they have no `linear` answer and do not enter the first three claims.")
        model = (f"Whether the prediction flips back is a property of the model: ours is {self.cfg.model}, the thesis's "
                 "VGG-16.")
        self.claims().show(censored=note, model=model)


def _share_ci(k: int, n: int, alpha: float) -> str:
    """``"k/n = x% [lo, hi]"`` with the Clopper-Pearson interval (``"–"`` for n = 0)."""
    if n == 0:
        return "–"
    from scipy import stats as sps

    ci = sps.binomtest(k, n).proportion_ci(confidence_level=1 - alpha, method="exact")
    return f"{k}/{n} = {cl.fmt(k / n, 1, pct=True)} [{cl.fmt(ci.low, 1, pct=True)}, {cl.fmt(ci.high, 1, pct=True)}]"


def _article(word: str) -> str:
    return "an" if str(word)[:1].lower() in "aeiou" else "a"
