"""Chapter 12, more explanation methods (beyond the thesis).

Four further methods (:data:`apem.studies.MORE_METHODS`) run through the whole
pipeline in a configuration of their own (:func:`apem.studies.more_methods`:
same model, pool and seed, correct images only) and are joined with the main
table on the common images (:func:`apem.studies.combined_table`). This module
shows the seven methods' APEM with censoring in view and decides the claims:

* each new method has a higher APEM than the best of the thesis's three here
  -- the best by :func:`apem.stats.best_method` (the thesis's mean, as in
  chapter 3) -- a :class:`apem.claims.Paired` claim per image;
* Grad-CAM's coarse maps get a lower eps-plus than each of the thesis's
  methods: an :class:`apem.claims.AllOf` of Paired claims;
* each new method's per-image APEM_norm term is above 0 (better than its own
  shuffled maps): :class:`apem.claims.Location`; not applicable without shuffles.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import torch

from apem import claims as cl, stats, thesis
from apem.figures import charts
from apem.figures import plots
from apem.book import display
from apem import studies
from apem.figures.charts import censored_boxes, censored_total
from apem.run import results
from apem.studies.common import pick_stage

NO_SHUFFLES = "the configuration has no shuffles: APEM_norm needs the shuffled baseline"


# ----------------------------------------------------------------------------- tables


def summary(C: pd.DataFrame, methods, old, seed: int = 0) -> pd.DataFrame:
    """Mean and median APEM of every method on the images ``C`` (one stage), censored counts, the ranking by the
    thesis's mean and by the median, and whether the thesis had the method."""
    S = stats.summary_table(C, by="method", seed=seed)
    S = S.loc[[m for m in methods if m in S.index]]
    view = display.summary_view(S, digits=0)
    R = stats.ranking(S)
    view["rank by mean (thesis)"] = R.rank_mean.reindex(S.index).to_numpy()
    view["rank by median"] = R.rank_median.reindex(S.index).to_numpy()
    view["in the thesis"] = ["yes" if m in old else "" for m in S.index]
    return view


def stage_summary(ALL: pd.DataFrame, methods, seed: int = 0) -> pd.DataFrame:
    """Table 4.4 for every method: mean and median APEM per stage, censored counts."""
    ST = stats.summary_table(ALL, by=["method", "stage"], seed=seed)
    ST = ST.loc[[k for m in methods for k in ST.index if k[0] == m]]
    return display.summary_view(ST, digits=0)


def norm_table(NORM: pd.DataFrame, methods, seed: int = 0) -> pd.DataFrame:
    """Mean and median of the per-image APEM_norm term per method, with the censored searches of its maps."""
    N = stats.summary_table(NORM, by="method", value="apem_norm_term", seed=seed)
    N = N.loc[[m for m in methods if m in N.index]]
    return display.summary_view(N, digits=2)


def gradcam_note(ALL: pd.DataFrame, stages) -> str:
    """Grad-CAM's APEM at stages 1 and 2 (equal when its map is the same in the three channels); empty when not run."""
    if "gradcam" not in set(ALL.method) or not {1, 2} <= set(stages):
        return ""
    g = ALL[ALL.method == "gradcam"].pivot(index="image_id", columns="stage", values="apem")
    same = int((g[1] == g[2]).sum())
    return (f"Grad-CAM's APEM is the same at stages 1 and 2 on {same} of {len(g)} images: its attribution is equal in "
            "the three colour channels, so the channel sum of stage 2 only rescales the map of stage 1, which the "
            "min-max scaling undoes.")


# ----------------------------------------------------------------------------- claims


def chapter_claims(C: pd.DataFrame, old, new, NORM: pd.DataFrame | None) -> list:
    """The chapter's claims (ours) on the correct images ``C`` at one stage; ``NORM`` holds the APEM_norm terms
    (None: no shuffles)."""
    per = {v: {m: cl.per_image(C[C.method == m], v) for m in dict.fromkeys(C.method)}
           for v in ("apem", "eps_plus")}
    S_old = stats.summary_table(C[C.method.isin(old)], by="method", ci=False)
    best = stats.best_method(S_old)
    nb = thesis.label(best)
    out = []
    for m in new:
        out.append(cl.Paired(f"{thesis.label(m)} has a higher APEM than {nb}, the best of the thesis's three here "
                             "(highest mean APEM)", source=cl.OURS, a=per["apem"][m], b=per["apem"][best],
                             names=(thesis.label(m), nb), digits=0))
    if "gradcam" in new:
        out.append(cl.AllOf("Grad-CAM's coarse maps get a lower ε⁺ than each of the thesis's methods",
                            source=cl.OURS,
                            of=[cl.Paired(f"Grad-CAM's ε⁺ is lower than {thesis.label(o)}'s", source=cl.OURS,
                                          a=per["eps_plus"]["gradcam"], b=per["eps_plus"][o], greater=False,
                                          names=("Grad-CAM", thesis.label(o)), digits=0) for o in old]))
    for m in new:
        vals = cl.per_image(NORM[NORM.method == m], "apem_norm_term") if NORM is not None else []
        out.append(cl.Location(f"{thesis.label(m)}: the APEM$_{{norm}}$ term is above 0 (better than its shuffled "
                               "maps)", source=cl.OURS, values=vals, threshold=0.0, what="APEM_norm term",
                               applicable=NORM is not None, reason=NO_SHUFFLES))
    return out


# ----------------------------------------------------------------------------- the page


class Page:
    """Chapter 12: ``n_images`` correct images for the new methods (every stage, no shuffles), ``n_images_norm`` of
    them with the shuffled baseline at the chosen stage; Integrated Gradients with ``ig_steps`` steps."""

    def __init__(self, params="default", overrides=None, *, n_images: int = 16, n_images_norm: int = 8,
                 ig_steps: int = 16, stage: int | None = None, alpha: float = 0.05):
        overrides = dict(overrides or {})
        self.res = results(params, progress=False, **overrides)
        cfg = self.cfg = self.res.cfg
        self.alpha, self.stage, self.ig_steps = alpha, pick_stage(self.res, stage), int(ig_steps)
        self.new_methods = {**studies.MORE_METHODS, "integrated_gradients": {"n_steps": int(ig_steps)}}
        self.n_correct = len(studies.correct_ids(self.res))  # the table's count (the configuration may say "all")
        self.extra = self.extra_norm = None
        if self.n_correct:
            self.extra = studies.more_methods(params, overrides, methods=self.new_methods,
                                        n_correct=min(int(n_images), self.n_correct), shuffles=0)
            if cfg.shuffles:
                k = max(1, min(int(n_images_norm), int(n_images), self.n_correct // 2))
                self.extra_norm = studies.more_methods(params, overrides, methods=self.new_methods, n_correct=k,
                                                 stages=(self.stage,))
        self.old = display.method_order(self.res.table)
        self.new = list(self.new_methods)
        self.methods = self.old + self.new
        self.ALL = studies.combined_table(self.res, self.extra) if self.extra is not None else self.res.table.iloc[:0]
        self.C = self.ALL[self.ALL.stage == self.stage]

    @property
    def NORM(self) -> pd.DataFrame | None:
        if self.extra_norm is None:
            return None
        T = self.res.table
        ids = set(self.extra_norm.table.image_id)
        main = T[(T.group == "correct") & (T.stage == self.stage) & T.image_id.isin(ids)]
        return pd.concat([main, self.extra_norm.table[self.extra_norm.table.stage == self.stage]], ignore_index=True)

    def setting(self) -> None:
        display.require(self.n_correct > 0, "The configuration has no correctly classified image", "-p n_correct 24")
        cfg = self.cfg
        n = self.C.image_id.nunique()
        display.show_markdown(
            f"**Setting.** {cfg.model}; {n} correctly classified images (a subset of the results table's), "
            f"{len(self.methods)} methods, `{cfg.search_mode}` search with bound {cfg.search_bound}. The new methods "
            "ran in a configuration of their own with the same model, pool and seed (so the same image draw), without "
            f"misclassified images and without shuffles; Integrated Gradients used {self.ig_steps} steps. "
            + (f"$\\mathrm{{APEM}}_{{\\mathrm{{norm}}}}$ needs the shuffled baseline ({cfg.shuffles} shuffles per "
               "map); "
               f"it ran at stage {self.stage} on {self.extra_norm.table.image_id.nunique()} of the images. "
               if self.extra_norm is not None else "The configuration has no shuffles: "
               "$\\mathrm{APEM}_{\\mathrm{norm}}$ is not computed. ")
            + display.censoring_note(self.C))

    def maps(self) -> None:
        show = list(self.C.image_id.unique()[:3])
        x = self.res.image_tensors(show)
        src = {m: (self.res if m in self.old else self.extra) for m in self.methods}
        grid = {m: torch.stack([src[m].map(i, m, self.stage) for i in show]) for m in self.methods}
        names = self.C.drop_duplicates("image_id").set_index("image_id").label_name
        display.show_figure(plots.plot_method_grid(x, grid, class_names=[names[i] for i in show], cell=1.9))

    def summary(self) -> pd.DataFrame:
        return summary(self.C, self.methods, self.old, seed=self.cfg.seed)

    def median_figure(self) -> None:
        S = stats.summary_table(self.C, by="method", seed=self.cfg.seed)
        S = S.loc[[m for m in self.methods if m in S.index]]
        fig = charts.bar_with_ci(S, "median", title=f"Median APEM per method (stage {self.stage}; "
                                                     f"{censored_total(self.C)})")
        plt.setp(fig.axes[0].get_xticklabels(), rotation=40, ha="right")
        fig.set_size_inches(8, 3.8)
        fig.tight_layout()
        display.show_figure(fig)

    def boxplots(self) -> None:
        fig = censored_boxes(self.C, title=f"{self.C.image_id.nunique()} correctly classified images, stage "
                                           f"{self.stage}")
        fig.set_size_inches(17, 4.8)
        for ax in fig.axes:
            plt.setp(ax.get_xticklabels(), rotation=40, ha="right", fontsize=8)
        fig.tight_layout()
        display.show_figure(fig)

    def pairwise(self) -> None:
        P = stats.pairwise_outcomes(self.C, "apem")
        display.show_figure(charts.pairwise_bars(
            P[P.a.isin(self.new) & P.b.isin(self.old)],
            title=f"New methods against the thesis's three ({censored_total(self.C)})"))

    def stages(self) -> pd.DataFrame:
        return stage_summary(self.ALL, self.methods, seed=self.cfg.seed)

    def gradcam_stages(self) -> None:
        text = gradcam_note(self.ALL, self.cfg.stages)
        if text:
            display.show_markdown(text)

    def stage_figure(self) -> None:
        fig = censored_boxes(self.ALL, hue="stage", title=f"Every stage ({censored_total(self.ALL)})")
        fig.set_size_inches(18, 5.2)
        for ax in fig.axes:
            plt.setp(ax.get_xticklabels(), rotation=40, ha="right", fontsize=7)
        fig.tight_layout()
        display.show_figure(fig)

    def norm(self) -> pd.DataFrame | None:
        """The APEM_norm table; without shuffles a note instead (the rest of the chapter does not need them)."""
        if self.extra_norm is None:
            display.show_markdown("**Not computed with these parameters.** The configuration has no shuffles, so "
                                 "$\\mathrm{APEM}_{\\mathrm{norm}}$ is not computed. Re-run the chapter with "
                                 "`-p shuffles 2` to compute it.")
            return None
        return norm_table(self.NORM, self.methods, seed=self.cfg.seed)

    def norm_figure(self) -> None:
        if self.extra_norm is None:
            return
        NORM = self.NORM
        fig = charts.boxes(NORM, ("apem_norm_term",), log=False,
                           title=f"APEM$_{{norm}}$ term per image, stage {self.stage} ({censored_total(NORM)})")
        fig.set_size_inches(8, 4.2)
        ax = fig.axes[0]
        ax.set_ylabel("ε⁺/ε-shuffle⁺ − ε⁻/ε-shuffle⁻ per image")
        ax.axhline(0, color="k", lw=1, ls="--")
        plt.setp(ax.get_xticklabels(), rotation=40, ha="right")
        fig.tight_layout()
        display.show_figure(fig)

    def claims(self) -> cl.Claims:
        S = stats.summary_table(self.C, by="method", ci=False)
        R = stats.ranking(S.loc[[m for m in self.old if m in S.index]])
        context = (f"Among the thesis's three, by the mean: {' > '.join(map(thesis.label, R.index))}; by the median: "
                   f"{' > '.join(map(thesis.label, R.sort_values('rank_median', kind='stable').index))}.")
        return cl.Claims(chapter_claims(self.C, self.old, self.new, self.NORM), alpha=self.alpha, context=context)

    def verdicts(self) -> None:
        model = (f"Our model is {self.cfg.model} on {self.C.image_id.nunique()} images; the new methods explain the "
                 "logit of the predicted class, the thesis's three the loss.")
        self.claims().show(censored=display.censoring_note(self.C), model=model)
