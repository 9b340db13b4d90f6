"""Chapter 3, APEM results: Table 4.2, the distributions, image by image, the upsets (Table 4.3), the claims.

Only correctly classified images at one visualisation stage (``stage``, the
thesis's stage 3 by default) enter the chapter. The best method is chosen one
way, the thesis's: the highest mean APEM (:func:`apem.stats.best_method`), with
the median's ranking shown beside it (:func:`apem.stats.ranking`).

:func:`censored_boxes` is the boxplot of this chapter and the next: the
censored count of each method (and stage) is in its tick label.
"""

from __future__ import annotations



import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from apem import claims as cl, stats, thesis
from apem.figures import charts
from apem.figures import plots
from apem.book import display
from apem.run import results
from apem.studies.common import pick_stage

EPS = {"eps_minus": "ε⁻", "eps_plus": "ε⁺", "apem": "APEM"}


# ----------------------------------------------------------------------------- the upsets (Table 4.3)


def upsets(C: pd.DataFrame, winner: str, n: int = 3) -> pd.DataFrame:
    """Images where ``winner`` has a lower APEM than another method, the ``n`` largest margins per method.

    One row per (other method, image, method of the pair), like the thesis's
    Table 4.3: ``eps_minus, eps_plus, apem`` and the censoring flags, the
    winner's row first. Empty when the winner never loses.
    """
    wide = C.pivot(index="image_id", columns="method", values="apem")
    key = C.set_index(["image_id", "method"])
    names = C.drop_duplicates("image_id").set_index("image_id").label_name
    rows = []
    others = [m for m in dict.fromkeys(C.method) if m != winner]
    for other in others:
        margin = (wide[other] - wide[winner]).dropna()
        for iid in margin[margin > 0].sort_values(ascending=False, kind="stable").index[: max(0, int(n))]:
            for m in (winner, other):
                r = key.loc[(iid, m)]
                rows.append({"comparison": f"{thesis.label(other)} beats {thesis.label(winner)}",
                             "image": names[iid], "image_id": iid, "method": m,
                             "eps_minus": r.eps_minus, "eps_plus": r.eps_plus, "apem": r.apem,
                             "censored_minus": bool(r.censored_minus), "censored_plus": bool(r.censored_plus)})
    cols = ["comparison", "image", "image_id", "method", "eps_minus", "eps_plus", "apem", "censored_minus",
            "censored_plus"]
    return pd.DataFrame(rows, columns=cols)


def upsets_beside_thesis(ours: pd.DataFrame) -> pd.DataFrame:
    """The thesis's Table 4.3 above our upsets, the same columns: ε⁻, ε⁺, APEM, censored ε⁻ / ε⁺.

    The thesis's rows are quoted (VGG-16, images not identified; it reports no
    censoring, and its epsilons are far below its bound of 10001, so "no").
    """
    parts = {"a": "LRP-ε beats Gradient", "b": "SmoothGrad beats LRP-ε"}
    th = thesis.TABLE_4_3.assign(comparison=lambda d: d.part.map(parts), censored_minus=False, censored_plus=False)
    frames = [th.assign(table="thesis (VGG-16)")]
    if len(ours):
        frames.append(ours.drop(columns="image_id").assign(table="ours"))
    t = pd.concat(frames, ignore_index=True)
    out = pd.DataFrame({
        "table": t.table, "comparison": t.comparison, "image": t.image, "method": t.method.map(thesis.label),
        "ε⁻": [_eps(v, c) for v, c in zip(t.eps_minus, t.censored_minus)],
        "ε⁺": [_eps(v, c) for v, c in zip(t.eps_plus, t.censored_plus)],
        "APEM": [_apem(a, cm, cp) for a, cm, cp in zip(t.apem, t.censored_minus, t.censored_plus)],
        "censored ε⁻": np.where(t.censored_minus.astype(bool), "yes", "no"),
        "censored ε⁺": np.where(t.censored_plus.astype(bool), "yes", "no"),
    })
    return out.set_index(["table", "comparison", "image", "method"])


def _eps(v, censored) -> str:
    return display.fmt_bounded(float(v), int(bool(censored)), digits=0)


def _apem(v, cm, cp) -> str:
    side = 2 if (cm and cp) else 1 if cp else -1 if cm else 0
    return display.fmt_bounded(float(v), side, digits=0, undetermined="undetermined")


# ----------------------------------------------------------------------------- claims


def chapter_claims(C: pd.DataFrame, S: pd.DataFrame) -> list:
    """The chapter's claims on the correct images ``C`` (one stage) and their summary ``S``.

    * the thesis's order by APEM, pair by pair (Gradient > LRP-ε > SmoothGrad): Paired,
      Wilcoxon signed-rank per image;
    * the best method (:func:`apem.stats.best_method`) has a lower ε⁻ and a higher ε⁺ than
      the worst (lowest mean): Paired;
    * the best also wins image by image against every other: AllOf of sign tests.
    """
    methods = list(dict.fromkeys(C.method))
    per = {v: {m: cl.per_image(C[C.method == m], v) for m in methods} for v in ("apem", "eps_minus", "eps_plus")}
    out = []
    have = set(thesis.RANKING) <= set(methods)
    why = f"the configuration lacks {', '.join(sorted(set(thesis.RANKING) - set(methods)))}" if not have else ""
    for i, a in enumerate(thesis.RANKING):
        for b in thesis.RANKING[i + 1:]:
            out.append(cl.Paired(f"{thesis.label(a)} has a higher APEM than {thesis.label(b)}",
                                 a=per["apem"].get(a), b=per["apem"].get(b), names=(thesis.label(a), thesis.label(b)),
                                 applicable=have, reason=why))
    several = len(methods) > 1 and S["mean"].notna().sum() > 1
    best = stats.best_method(S) if S["mean"].notna().any() else methods[0]
    worst = S["mean"].astype(float).idxmin() if S["mean"].notna().any() else methods[-1]
    nb, nw = thesis.label(best), thesis.label(worst)
    one = "a single method with a defined APEM: nothing to compare"
    out.append(cl.Paired(f"The best method ({nb}, highest mean APEM) has a lower ε⁻ than the worst ({nw})",
                         a=per["eps_minus"][best], b=per["eps_minus"][worst], greater=False, names=(nb, nw),
                         applicable=several, reason=one))
    out.append(cl.Paired(f"The best method ({nb}) has a higher ε⁺ than the worst ({nw})",
                         a=per["eps_plus"][best], b=per["eps_plus"][worst], names=(nb, nw),
                         applicable=several, reason=one))
    out.append(cl.AllOf(
        f"The best method ({nb}) also wins image by image against every other method",
        of=[cl.Paired(f"{nb} beats {thesis.label(o)} on more images than it loses", a=per["apem"][best],
                      b=per["apem"][o], test="sign", names=(nb, thesis.label(o)))
            for o in methods if o != best],
        applicable=several, reason=one))
    return out


# ----------------------------------------------------------------------------- the page


class Page:
    """Chapter 3 on the correct images at ``stage``; ``n_upsets`` images per method in the upsets table."""

    def __init__(self, params="default", overrides=None, *, stage: int | None = None, alpha: float = 0.05,
                 n_upsets: int = 3):
        self.res = results(params, progress=False, **dict(overrides or {}))
        self.cfg, T = self.res.cfg, self.res.table
        self.stage, self.alpha, self.n_upsets = pick_stage(self.res, stage), alpha, int(n_upsets)
        self.C = T[(T.group == "correct") & (T.stage == self.stage)]
        self.methods = display.method_order(self.C) if len(self.C) else []
        self.S = stats.summary_table(self.C, by="method", seed=self.cfg.seed) if len(self.C) else None

    def setting(self) -> None:
        cfg, C = self.cfg, self.C
        display.require(len(C) > 0, "The configuration has no correctly classified image", "-p n_correct 24")
        display.show_markdown(
            f"**Setting.** {cfg.model} (`{cfg.preset}` preprocessing), {C.image_id.nunique()} correctly classified "
            f"images, methods {', '.join(map(thesis.label, self.methods))}, stage {self.stage}, `{cfg.search_mode}` "
            f"search with bound {cfg.search_bound}. {display.censoring_note(C)}")

    # ------------------------------------------------------------------ Table 4.2
    def table_4_2(self) -> pd.DataFrame:
        return display.summary_view(self.S, thesis=thesis.TABLE_4_2.set_index("method"))

    def mean_figure(self) -> None:
        fig = charts.bar_with_ci(self.S, "mean", thesis=thesis.TABLE_4_2.set_index("method")["mean"],
                                 title=f"Mean APEM per method (stage {self.stage}; {charts.censored_total(self.C)})")
        display.show_figure(fig)

    @property
    def best(self) -> str:
        return stats.best_method(self.S)

    def best_method(self) -> None:
        """The best method by the thesis's statistic, and whether the median agrees."""
        R = stats.ranking(self.S)
        by_median = R.sort_values("rank_median").index[0]
        b = self.S.loc[self.best]
        agree = ("The median ranks the methods the same way." if list(R.index) == list(R.sort_values("rank_median").index)
                 else f"The median ranks them differently; its first is {thesis.label(by_median)}.")
        display.show_markdown(
            f"By the mean, the best method is **{thesis.label(self.best)}**: mean APEM "
            f"{display.fmt_mean(b['mean'], b.get('mean_bound', 'exact'))}. {agree}")

    def ranking(self) -> pd.DataFrame:
        return display.ranking_view(self.S)

    # ------------------------------------------------------------------ figures
    def boxplots(self) -> None:
        display.show_figure(charts.censored_boxes(self.C, title=f"Correctly classified images, stage {self.stage}"))

    def pairwise(self) -> None:
        P = stats.pairwise_outcomes(self.C, "apem")
        display.show_figure(charts.pairwise_bars(
            P, title=f"Per-image comparison of APEM (stage {self.stage}; {charts.censored_total(self.C)})"))

    # ------------------------------------------------------------------ Table 4.3
    @property
    def upsets(self) -> pd.DataFrame:
        return upsets(self.C, self.best, self.n_upsets)

    def upsets_summary(self) -> None:
        wide = self.C.pivot(index="image_id", columns="method", values="apem")
        w = self.best
        parts = [f"{int(((wide[o] - wide[w]) > 0).sum())} of {int((wide[o] - wide[w]).notna().sum())} images to "
                 f"{thesis.label(o)}" for o in self.methods if o != w]
        display.show_markdown(f"Our best method (by the mean) is **{thesis.label(w)}**. It lost on "
                             + (", ".join(parts) if parts else "no image (it is the only method)") + ".")

    def table_4_3(self) -> pd.DataFrame:
        return upsets_beside_thesis(self.upsets)

    def upset_maps(self) -> None:
        import torch

        U = self.upsets
        show = list(dict.fromkeys(U.image_id))[:4] if len(U) else list(self.C.image_id.unique()[:2])
        x = self.res.image_tensors(show)
        names = self.C.drop_duplicates("image_id").set_index("image_id").label_name
        fig = plots.plot_method_grid(
            x, {m: torch.stack([self.res.map(i, m, self.stage) for i in show]) for m in self.methods},
            class_names=[names[i] for i in show])
        display.show_figure(fig)

    # ------------------------------------------------------------------ verdicts
    def claims(self) -> cl.Claims:
        R = stats.ranking(self.S)
        order_mean = " > ".join(map(thesis.label, R.index))
        order_median = " > ".join(map(thesis.label, R.sort_values("rank_median", kind="stable").index))
        context = (f"By the mean our order is {order_mean}; by the median {order_median}; the thesis's (both) is "
                   f"{' > '.join(map(thesis.label, thesis.RANKING))}.")
        return cl.Claims(chapter_claims(self.C, self.S), alpha=self.alpha, context=context)

    def verdicts(self) -> None:
        n = self.C.image_id.nunique()
        model = (f"Our model is {self.cfg.model} on {n} images; the thesis measured VGG-16 on 5,000, and a more or "
                 "less robust model moves every epsilon.")
        self.claims().show(censored=display.censoring_note(self.C), model=model)
