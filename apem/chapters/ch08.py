"""Chapter 8, misclassified images (thesis section 5.3, Table 5.2, Figure 5.3).

The maps and the searches of a misclassified image use the model's prediction
as the label. At one stage (the thesis's stage 3 by default), the chapter
compares the correctly classified images with the misclassified ones: different
images, so group comparisons are Mann-Whitney tests (TwoGroups); the ranking of
the methods on the misclassified images is a paired comparison on those images.
"""

from __future__ import annotations



import numpy as np
import pandas as pd

from apem import claims as cl, stats, thesis
from apem.figures import charts
from apem.book import display
from apem.run import results
from apem.studies.common import pick_stage

GROUPS = ("correct", "misclassified")
FLAGS = {"apem": ("censored_minus", "censored_plus"), "eps_minus": ("censored_minus",), "eps_plus": ("censored_plus",)}


# ----------------------------------------------------------------------------- Table 5.2


def table_5_2(D: pd.DataFrame) -> pd.DataFrame:
    """Thesis Table 5.2 beside ours: per method, for each group, images, censored, mean, median, thesis's values."""
    S = stats.summary_table(D, by=["method", "group"])
    th = thesis.TABLE_5_2.set_index("method")
    parts = {}
    for g in GROUPS:
        if g not in S.index.get_level_values("group"):
            continue
        Sg = S.xs(g, level="group")
        t = th[[f"mean_{g}", f"median_{g}"]].rename(columns={f"mean_{g}": "mean", f"median_{g}": "median"})
        parts[g] = display.summary_view(Sg, thesis=t)
    return pd.concat(parts, axis=1)


# ----------------------------------------------------------------------------- figures


def censored_ticks(ax, table: pd.DataFrame, value: str, hue: str | None = None) -> None:
    """Tick labels ``Method\\ncensored a/b``: the censored count of ``value`` per method (and per ``hue`` level)."""
    flags = [f for f in FLAGS.get(value, ()) if f in table]
    cens = table[flags].astype(bool).any(axis=1) & table[value].notna() if flags else pd.Series(False, index=table.index)
    methods = display.method_order(table)
    if hue:
        k = cens.groupby([table.method, table[hue]], sort=False).sum()
        levels = list(dict.fromkeys(table[hue]))
        labels = [f"{thesis.label(m)}\ncensored {'/'.join(str(int(k.get((m, h), 0))) for h in levels)}" for m in methods]
    else:
        k = cens.groupby(table.method, sort=False).sum()
        labels = [f"{thesis.label(m)}\n{int(k.get(m, 0))} censored" for m in methods]
    ax.set_xticks(range(len(methods)), labels)


def group_boxes(D: pd.DataFrame, values=("apem", "eps_minus", "eps_plus"), title: str = ""):
    """Boxplots per method, correct and misclassified side by side; censored counts (correct/misclassified) per tick."""
    t = D.assign(Group=np.where(D.correct, "correct", "misclassified"))
    t = t.sort_values("Group", kind="stable")
    fig = charts.boxes(t, values, hue="Group", title=title)
    for ax, v in zip(fig.axes, values):
        censored_ticks(ax, t, v, hue="Group")
    fig.tight_layout()
    return fig


def misclassified_boxes(D: pd.DataFrame, values=("apem", "eps_minus", "eps_plus"), title: str = ""):
    """Figure 5.3: boxplots per method on the misclassified images, censored counts per tick."""
    M = D[~D.correct]
    fig = charts.boxes(M, values, title=title)
    for ax, v in zip(fig.axes, values):
        censored_ticks(ax, M, v)
    fig.tight_layout()
    return fig


def confidence_table(images: pd.DataFrame) -> pd.DataFrame:
    """The model's confidence (top probability) per group: images, median, mean, min, max, formatted."""
    rows = []
    for g, c in images.groupby("group", sort=False).confidence:
        rows.append({"group": g, "images": int(c.notna().sum()), "median": cl.fmt(float(c.median()), 3),
                     "mean": cl.fmt(float(c.mean()), 3), "min": cl.fmt(float(c.min()), 3),
                     "max": cl.fmt(float(c.max()), 3)})
    return pd.DataFrame(rows).set_index("group")


# ----------------------------------------------------------------------------- claims


def chapter_claims(D: pd.DataFrame, images: pd.DataFrame) -> list:
    """The chapter's claims on the results ``D`` at one stage and the images table (confidence).

    * thesis, per method: APEM is lower on misclassified images (TwoGroups, Mann-Whitney);
    * thesis: the methods keep the thesis's ranking on misclassified images (AllOf of Paired
      claims on the misclassified images, adjacent pairs of Gradient > LRP-ε > SmoothGrad);
    * thesis: the model is less confident on misclassified images (TwoGroups).
    """
    methods = display.method_order(D)
    C, M = D[D.correct], D[~D.correct]
    out = []
    for m in methods:
        out.append(cl.TwoGroups(f"APEM of {thesis.label(m)} is lower on misclassified images",
                                a=cl.per_image(M[M.method == m], "apem"), b=cl.per_image(C[C.method == m], "apem"),
                                greater=False, names=("misclassified", "correct"), digits=0))
    have = set(thesis.RANKING) <= set(methods)
    why = f"the configuration lacks {', '.join(sorted(set(thesis.RANKING) - set(methods)))}" if not have else ""
    parts = [cl.Paired(f"{thesis.label(a)} > {thesis.label(b)} on misclassified images",
                       a=cl.per_image(M[M.method == a], "apem") if have else [],
                       b=cl.per_image(M[M.method == b], "apem") if have else [],
                       names=(thesis.label(a), thesis.label(b)), digits=0, applicable=have, reason=why)
             for a, b in zip(thesis.RANKING[:-1], thesis.RANKING[1:])]
    out.append(cl.AllOf(f"The methods keep the thesis's ranking ({' > '.join(map(thesis.label, thesis.RANKING))}) "
                        "on misclassified images", of=parts, applicable=have, reason=why))
    conf = images.set_index("image_id").confidence
    out.append(cl.TwoGroups("The model is less confident on misclassified images",
                            a=conf[images.group.to_numpy() == "misclassified"],
                            b=conf[images.group.to_numpy() == "correct"], greater=False,
                            names=("misclassified", "correct"), digits=3))
    return out


# ----------------------------------------------------------------------------- the page


class Page:
    """Chapter 8 at ``stage``: correct against misclassified images."""

    def __init__(self, params="default", overrides=None, *, alpha: float = 0.05, stage: int | None = None):
        self.res = results(params, progress=False, **dict(overrides or {}))
        self.cfg, T = self.res.cfg, self.res.table
        self.stage, self.alpha = pick_stage(self.res, stage), alpha
        self.D = T[T.stage == self.stage]
        self.methods = display.method_order(self.D) if len(self.D) else []
        self.images = self.res.images[self.res.images.image_id.isin(set(self.D.image_id))]
        self.n_correct = int(self.D[self.D.correct].image_id.nunique())
        self.n_mis = int(self.D[~self.D.correct].image_id.nunique())

    def setting(self) -> None:
        display.require(self.n_mis > 0, "The configuration has no misclassified image", "apem book --chapter 8 "
                       "-p n_misclassified 12")
        display.require(self.n_correct > 0, "The configuration has no correctly classified image", "-p n_correct 24")
        D = self.D
        display.show_markdown(
            f"**Setting.** {self.cfg.model}, stage {self.stage}: {self.n_correct} correctly classified and "
            f"{self.n_mis} misclassified images, methods {', '.join(map(thesis.label, self.methods))}, "
            f"`{self.cfg.search_mode}` search with bound {self.cfg.search_bound}. Correct images: "
            f"{display.censoring_note(D[D.correct])} Misclassified images: {display.censoring_note(D[~D.correct])}")

    def table_5_2(self) -> pd.DataFrame:
        return table_5_2(self.D)

    def figure_5_3(self) -> None:
        display.show_figure(misclassified_boxes(self.D, title=f"Misclassified images, stage {self.stage}"))

    def both_groups(self) -> None:
        display.show_figure(group_boxes(self.D, title=f"Correct and misclassified images side by side, stage "
                                                      f"{self.stage} (tick labels: censored, correct/misclassified)"))

    def confidence(self) -> pd.DataFrame:
        return confidence_table(self.images)

    def claims(self) -> cl.Claims:
        rank = {}
        for g, sub in (("correct", self.D[self.D.correct]), ("misclassified", self.D[~self.D.correct])):
            S = stats.summary_table(sub, by="method", ci=False)
            rank[g] = " > ".join(map(thesis.label, stats.ranking(S).index))
        context = (f"By the mean APEM our order is {rank['correct']} on correct images and {rank['misclassified']} on "
                   f"misclassified ones; the thesis's is {' > '.join(map(thesis.label, thesis.RANKING))} on both.")
        return cl.Claims(chapter_claims(self.D, self.images), alpha=self.alpha, context=context)

    def verdicts(self) -> None:
        D = self.D
        model = (f"Our model is {self.cfg.model} on {self.n_correct} correct and {self.n_mis} misclassified images; "
                 "the thesis measured VGG-16 on 5,000 of each.")
        cens = (f"Correct images: {display.censoring_note(D[D.correct])} Misclassified images: "
                f"{display.censoring_note(D[~D.correct])}")
        self.claims().show(censored=cens, model=model)
