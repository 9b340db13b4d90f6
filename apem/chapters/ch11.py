"""Chapter 11, sanity checks: the cascading model randomisation of Adebayo et al. (2018) (beyond the thesis).

The study (:func:`apem.studies.sanity_check`) re-initialises the model's stages
from the top, cumulatively; at every ``every``-th step and at the last (every
layer random) it recomputes each method's maps for the trained model's
predicted class, compares them with the trained maps (Spearman's rho, SSIM)
and scores the maps of one visualisation stage with APEM **on the trained
model**. This module turns the two tables into tables, figures and claims:

* "M passes the randomisation test": with every layer random, the per-image
  Spearman rho of its maps with the trained maps is below ``threshold``
  (:class:`apem.claims.Location`). A constant randomised map has no rank
  order: it is left out, and when **every** randomised map is constant the test
  has nothing to compare and the claim is ``not applicable`` -- a method whose
  maps vanish does not pass by default;
* "APEM scores the trained maps above the fully randomised model's maps"
  (:class:`apem.claims.Paired`, per image); not applicable when APEM is
  undefined for every randomised map (all constant);
* "APEM scores the randomised maps above shuffled maps" (Paired), against the
  configuration's shuffled baseline; not applicable when ``shuffles`` is 0.

Every mean is from the study's per-image values; intervals are bootstrap
intervals over images (:func:`apem.stats.bootstrap_ci`), censoring is counted
beside every APEM (:func:`apem.stats.summary_table`, :func:`apem.book.display.summary_view`).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from apem import claims as cl, stats, thesis
from apem.figures import plots
from apem.book import display
from apem import randomisation
from apem import studies
from apem.run import results
from apem.studies.common import pick_stage

THRESHOLD = 0.5  # "keeps little of the trained map": median Spearman rho below this


# ----------------------------------------------------------------------------- the study's tables


def shuffled_rows(T: pd.DataFrame, ids, stage: int) -> pd.DataFrame:
    """The configuration's shuffled baseline as rows like the sanity APEM table (``step = "shuffled"``):
    ``apem`` is ``apem_shuffle``, the censoring flags the shuffled searches'. Empty without shuffles."""
    if "apem_shuffle" not in T or not T.apem_shuffle.notna().any():
        return pd.DataFrame(columns=["image_id", "method", "step", "apem", "censored_minus", "censored_plus"])
    d = T[(T.stage == stage) & T.image_id.isin(list(ids))]
    return pd.DataFrame({"image_id": d.image_id, "method": d.method, "step": "shuffled", "apem": d.apem_shuffle,
                         "censored_minus": d.get("censored_shuffle_minus", False),
                         "censored_plus": d.get("censored_shuffle_plus", False)})


def step_names(sim: pd.DataFrame) -> dict:
    """``{step: label}``: 0 is the trained model, every other step names the stage randomised last."""
    return {0: "trained", **dict(zip(sim.step, sim.layer))}


def curves(sim: pd.DataFrame, value: str, seed: int = 0) -> pd.DataFrame:
    """Mean ``value`` (``spearman`` or ``ssim``) per method, visualisation stage and step, bootstrap 95% interval,
    and how many maps entered (constant maps have no Spearman's rho and are left out)."""
    rows = []
    for (m, vs, st), g in sim.groupby(["method", "vis_stage", "step"], sort=False):
        est, lo, hi = stats.bootstrap_ci(g[value], "mean", seed=seed)
        rows.append({"method": m, "vis_stage": vs, "step": st, "mean": est, "lo": lo, "hi": hi,
                     "n": int(g[value].notna().sum())})
    return pd.DataFrame(rows)


def last_step_similarity(sim: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """With every layer random: per method and visualisation stage, mean Spearman's rho and SSIM with the trained
    maps (bootstrap intervals) and the constant maps."""
    full = sim[sim.step == sim.step.max()]
    rows = []
    for (m, vs), g in full.groupby(["method", "vis_stage"], sort=False):
        rows.append({"method": thesis.label(m), "stage": vs, "maps": len(g), "constant": int(g.constant.sum()),
                     "Spearman ρ [95% CI]": display.fmt_ci(*stats.bootstrap_ci(g.spearman, "mean", seed=seed), 2)
                     .replace("nan", "–"),
                     "SSIM [95% CI]": display.fmt_ci(*stats.bootstrap_ci(g.ssim, "mean", seed=seed), 2)
                     .replace("nan", "–")})
    return pd.DataFrame(rows).set_index(["method", "stage"])


def apem_summary(ap: pd.DataFrame, shuffled: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """APEM per method and step (trained, each randomised step, the shuffled baseline) with censoring in view."""
    names = step_names_from_apem(ap)
    d = ap[["image_id", "method", "step", "apem", "censored_minus", "censored_plus"]].copy()
    d["step"] = d.step.map(names)
    both = pd.concat([d, shuffled], ignore_index=True) if len(shuffled) else d
    order = {k: i for i, k in enumerate([names[s] for s in sorted(names)] + ["shuffled"])}
    methods = {m: i for i, m in enumerate(dict.fromkeys(ap.method))}
    both = both.assign(_m=both.method.map(methods), _s=both.step.map(order)).sort_values(["_m", "_s"], kind="stable")
    both = both.drop(columns=["_m", "_s"])
    both["censored_minus"] = both.censored_minus.astype(bool)
    both["censored_plus"] = both.censored_plus.astype(bool)
    S = stats.summary_table(both, by=["method", "step"], seed=seed)
    view = display.summary_view(S)
    undefined = both.groupby(["method", "step"], sort=False).apem.apply(lambda v: int(v.isna().sum()))
    view.insert(1, "undefined", [int(undefined.get(k, 0)) for k in S.index])
    return view


def step_names_from_apem(ap: pd.DataFrame) -> dict:
    return dict(zip(ap.step, ap.layer.where(ap.step != 0, "trained")))


def constant_note(sim: pd.DataFrame, n: int) -> str:
    """A sentence on the randomised maps that are constant (empty when none is)."""
    names = step_names(sim)
    const = sim[sim.constant].groupby(["method", "step"]).image_id.nunique()
    if not len(const):
        return "No randomised map is constant."
    return ("**Constant maps.** Some randomised models give a map that is constant (all zero after the min-max "
            "scaling): it marks no pixel as more relevant than another. Spearman's ρ is undefined for such a map and "
            "it is left out of the curves (its SSIM is still computed, and is not small when the trained map is "
            "mostly dark); APEM is undefined for it. Constant maps: "
            + "; ".join(f"{thesis.label(m)} after {names[st]}: {k} of {n} images" for (m, st), k in const.items())
            + ".")


def agreement_with_table(ap: pd.DataFrame, shuffles: bool = True) -> str:
    """How often the recomputed trained maps' APEM equals the results table's, per method."""
    tr = ap[ap.step == 0]
    same = (tr.apem == tr.apem_table) | (tr.apem.isna() & tr.apem_table.isna())
    by_m = same.groupby(tr.method, sort=False).mean()
    return ("The trained maps above were recomputed with this chapter's method parameters; their APEM equals the "
            "results table's on " + ", ".join(f"{cl.fmt(by_m[m], 0, pct=True)} of the images for {thesis.label(m)}"
                                              for m in by_m.index)
            + ". (SmoothGrad's maps differ by design: here every noisy copy explains the trained prediction, and "
            "there are at most `smoothgrad_n` copies."
            + (" The shuffled baseline is always the configuration's own maps, from the results table.)" if shuffles
               else ")"))


# ----------------------------------------------------------------------------- figures


def example_figure(res, ex: dict, methods, steps, names, image_id, stage: int):
    """The first image's maps, trained and after each evaluated step, one row per method."""
    show = [0] + list(steps)
    fig, axes = plt.subplots(len(methods), 1 + len(show), figsize=(1.9 * (1 + len(show)), 2.0 * len(methods) + 0.6),
                             squeeze=False)
    x0 = res.image_tensors([image_id])[0]
    for i, m in enumerate(methods):
        plots.show_image(axes[i, 0], x0, "image" if i == 0 else None)
        axes[i, 0].set_ylabel(thesis.label(m))
        for j, st in enumerate(show, start=1):
            title = ("trained" if st == 0 else f"+ {names[st]}") if i == 0 else None
            plots.show_image(axes[i, j], ex[(m, st)][0], title)
    for ax in axes[0]:
        ax.title.set_fontsize(8)
    fig.suptitle(f"Stage-{stage} maps as the layers are randomised from the top (left to right)", y=1.0)
    fig.tight_layout()
    return fig


def curve_figure(sim: pd.DataFrame, seed: int = 0):
    """The cascading-randomisation curves: mean Spearman's rho and SSIM with the trained maps, per visualisation
    stage (columns), with bootstrap intervals."""
    methods = list(dict.fromkeys(sim.method))
    steps = sorted(sim.step.unique())
    names = step_names(sim)
    vis = sorted(sim.vis_stage.unique())
    fig, axes = plt.subplots(2, len(vis), figsize=(4.3 * len(vis), 6.4), squeeze=False, sharey="row")
    for r, value in enumerate(("spearman", "ssim")):
        cv = curves(sim, value, seed)
        for c, vs in enumerate(vis):
            ax = axes[r, c]
            for m in methods:
                d = cv[(cv.method == m) & (cv.vis_stage == vs)].sort_values("step")
                ax.plot([0] + list(d.step), [1.0] + list(d["mean"]), marker="o", label=thesis.label(m))
                ax.fill_between(d.step, d.lo, d.hi, alpha=0.2)
            ax.set_xticks([0] + steps, ["trained"] + [names[s] for s in steps], rotation=60, ha="right", fontsize=8)
            ax.axhline(0, color="k", lw=0.8)
            ax.set_title(f"stage {vs}" if r == 0 else "")
            if c == 0:
                ax.set_ylabel(("Spearman ρ" if value == "spearman" else "SSIM") + " with the trained map")
    axes[0, 0].legend(frameon=False)
    fig.tight_layout()
    return fig


def apem_figure(ap: pd.DataFrame, shuffled: pd.DataFrame, stage: int):
    """APEM per step (trained, randomised, shuffled) per method; each box's label gives its censored and undefined
    counts."""
    methods = list(dict.fromkeys(ap.method))
    names = step_names_from_apem(ap)
    steps = sorted(ap.step.unique())
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 4.2), squeeze=False, sharey=True)
    for ax, m in zip(axes[0], methods):
        d = ap[ap.method == m]
        groups = [d[d.step == s] for s in steps]
        labels = [names[s] for s in steps]
        if len(shuffled):
            groups.append(shuffled[shuffled.method == m])
            labels.append("shuffled")
        vals = [g.apem.dropna().to_numpy(float) for g in groups]
        ax.boxplot([v if len(v) else [np.nan] for v in vals], showfliers=True)
        ticks = []
        for k, (g, v, lab) in enumerate(zip(groups, vals, labels), start=1):
            cens = int((g.censored_minus.astype(bool) | g.censored_plus.astype(bool))[g.apem.notna()].sum())
            und = int(g.apem.isna().sum())
            ticks.append(f"{lab}\n{cens} cens." + (f", {und} undef." if und else ""))
            if not len(v):
                ax.text(k, 0, "undefined", rotation=90, ha="center", va="center", fontsize=8, color="#c03d3e")
        ax.set_xticks(range(1, len(labels) + 1), ticks, rotation=60, ha="right", fontsize=7)
        ax.set_yscale("symlog", linthresh=10)
        ax.axhline(0, color="k", lw=0.8, ls="--")
        ax.set_title(thesis.label(m))
    axes[0, 0].set_ylabel(f"APEM on the trained model (stage {stage})")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- claims


EVERY_CONSTANT = "every randomised map is constant: the test has nothing to compare"
ALL_UNDEFINED = "APEM is undefined for every randomised map (all constant): nothing to score"
NO_SHUFFLES = "the shuffled baseline was not computed (shuffles is 0)"


def chapter_claims(sim: pd.DataFrame, ap: pd.DataFrame, stage: int, threshold: float = THRESHOLD,
                   has_shuffles: bool = True) -> list:
    """The chapter's claims (ours) on the study's tables at visualisation stage ``stage``."""
    methods = list(dict.fromkeys(ap.method))
    last = int(sim.step.max())
    full = sim[(sim.step == last) & (sim.vis_stage == stage)]
    out = []
    for m in methods:
        g = full[full.method == m].set_index("image_id")
        all_constant = len(g) > 0 and bool(g.constant.all())
        out.append(cl.Location(
            f"{thesis.label(m)} passes the randomisation test: with every layer random, its stage-{stage} maps keep "
            f"little of the trained ones (Spearman ρ < {cl.fmt(threshold, 2)})", source=cl.OURS,
            values=g.spearman[~g.constant], threshold=threshold, greater=False, what="Spearman ρ",
            applicable=not all_constant, reason=EVERY_CONSTANT))
    wide = {m: ap[ap.method == m].pivot(index="image_id", columns="step", values="apem") for m in methods}
    last_ap = int(ap.step.max())
    for m in methods:
        w = wide[m]
        rnd = w[last_ap] if last_ap in w else pd.Series(dtype=float)
        out.append(cl.Paired(f"APEM scores {thesis.label(m)}'s trained maps above the fully randomised model's maps",
                             source=cl.OURS, a=w[0], b=rnd, names=("trained", "randomised"), digits=0,
                             applicable=bool(rnd.notna().any()), reason=ALL_UNDEFINED))
    for m in methods:
        w = wide[m]
        rnd = w[last_ap] if last_ap in w else pd.Series(dtype=float)
        shuf = ap[(ap.method == m) & (ap.step == 0)].set_index("image_id").apem_shuffle
        ok = has_shuffles and bool(shuf.notna().any())
        out.append(cl.Paired(f"APEM scores the fully randomised model's {thesis.label(m)} maps above shuffled maps",
                             source=cl.OURS, a=rnd, b=shuf.reindex(rnd.index), names=("randomised", "shuffled"),
                             digits=0, applicable=ok and bool(rnd.notna().any()),
                             reason=NO_SHUFFLES if not ok else ALL_UNDEFINED))
    return out


# ----------------------------------------------------------------------------- the page


class Page:
    """Chapter 11 on the first ``n_images`` correct images; every ``every``-th cascade step and the last;
    SmoothGrad with at most ``smoothgrad_n`` copies; APEM at ``stage``; ``threshold`` for the randomisation test."""

    def __init__(self, params="default", overrides=None, *, n_images: int = 8, every: int = 3,
                 smoothgrad_n: int = 16, stage: int | None = None, quick: bool | None = None,
                 threshold: float = THRESHOLD, alpha: float = 0.05):
        self.res = results(params, progress=False, **dict(overrides or {}))
        self.cfg = self.res.cfg
        self.stage, self.alpha, self.threshold = pick_stage(self.res, stage), alpha, float(threshold)
        self.n = min(int(n_images), len(studies.correct_ids(self.res)))
        quick = (len(studies.correct_ids(self.res)) < 10) if quick is None else bool(quick)
        self.every = max(int(every), 5) if quick else int(every)  # a smoke budget: fewer cascade steps
        self.kw = dict(n_images=self.n, stage=self.stage, every=self.every, smoothgrad_n=int(smoothgrad_n),
                       seed=self.cfg.seed)
        self.smoothgrad_n = int(smoothgrad_n)
        self.has_shuffles = self.cfg.shuffles > 0
        self._tables = None

    @property
    def tables(self):
        if self._tables is None:
            self._tables = studies.sanity_check(self.res, **self.kw)
        return self._tables

    @property
    def sim(self) -> pd.DataFrame:
        return self.tables[0]

    @property
    def ap(self) -> pd.DataFrame:
        return self.tables[1]

    @property
    def methods(self) -> list:
        return display.method_order(self.ap)

    @property
    def shuffled(self) -> pd.DataFrame:
        return shuffled_rows(self.res.table, set(self.ap.image_id), self.stage)

    def setting(self) -> None:
        display.require(self.n > 0, "The configuration has no correctly classified image", "-p n_correct 24")
        sim = self.sim
        layers = randomisation.randomization_stages(self.res.model)
        steps = sorted(sim.step.unique())
        sg = studies.sanity_params(self.res, "smoothgrad", self.smoothgrad_n) if "smoothgrad" in self.methods else None
        ap = self.ap
        cens = int((ap.censored_minus.astype(bool) | ap.censored_plus.astype(bool))[ap.apem.notna()].sum())
        display.show_markdown(
            f"**Setting.** {self.cfg.model}, the first {self.n} correctly classified images, methods "
            f"{', '.join(map(thesis.label, self.methods))}; {len(layers)} randomisation stages, of which steps "
            f"{', '.join(map(str, steps))} are evaluated (step {max(steps)}: every layer random). APEM at "
            f"visualisation stage {self.stage}: {cens} of {int(ap.apem.notna().sum())} scored maps censored."
            + (f" SmoothGrad here uses n = {sg['n']} noisy copies with the trained model's prediction as the target "
               "of every copy, for the trained and the randomised maps alike." if sg else "")
            + ("" if self.has_shuffles else " The configuration has no shuffles: the comparison with shuffled maps "
               "is not computed."))

    def cascade(self) -> pd.DataFrame:
        layers = [s.name for s in randomisation.randomization_stages(self.res.model)]
        steps = set(self.sim.step.unique())
        out = pd.DataFrame({"step": range(1, len(layers) + 1), "stage randomised": layers})
        out["evaluated"] = ["yes" if s in steps else "" for s in out.step]
        return out.set_index("step")

    def example_maps(self) -> None:
        ex = studies.sanity_example_maps(self.res, **self.kw)
        steps = sorted(self.sim.step.unique())
        display.show_figure(example_figure(self.res, ex, self.methods, steps, step_names(self.sim),
                                          studies.correct_ids(self.res, 1)[0], self.stage))

    def curves(self) -> None:
        display.show_figure(curve_figure(self.sim, seed=self.cfg.seed))

    def constant_maps(self) -> None:
        display.show_markdown(constant_note(self.sim, self.n))

    def similarity(self) -> pd.DataFrame:
        return last_step_similarity(self.sim, seed=self.cfg.seed)

    def apem_table(self) -> pd.DataFrame:
        return apem_summary(self.ap, self.shuffled, seed=self.cfg.seed)

    def apem_figure(self) -> None:
        display.show_figure(apem_figure(self.ap, self.shuffled, self.stage))

    def table_agreement(self) -> None:
        display.show_markdown(agreement_with_table(self.ap, self.has_shuffles))

    def claims(self) -> cl.Claims:
        return cl.Claims(chapter_claims(self.sim, self.ap, self.stage, self.threshold, self.has_shuffles),
                         alpha=self.alpha)

    def verdicts(self) -> None:
        ap = self.ap
        cens = int((ap.censored_minus.astype(bool) | ap.censored_plus.astype(bool))[ap.apem.notna()].sum())
        und = int(ap.apem.isna().sum())
        model = (f"Our model is {self.cfg.model} on {self.n} images; a method's randomised maps depend on how the "
                 "model's layers are re-initialised, and the thesis ran no such test.")
        self.claims().show(censored=f"{cens} of the {int(ap.apem.notna().sum())} APEM scores here are censored and "
                                    f"{und} undefined (constant maps).", model=model)
