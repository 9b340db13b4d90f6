"""Chapter 9, APEM and the loss (thesis section 5.4, Table 5.3).

At one visualisation stage (the thesis's stage 3 by default), Spearman's rho of
each method's per-image APEM with the cross-entropy loss against the ground
truth, on the correctly classified images, the misclassified ones and all of
them, beside the thesis's Table 5.3 (:func:`table_5_3`). The claims:

* the correlation is negative, per method, on the correct images and on all
  images (:class:`apem.claims.Correlation`, one-sided);
* "on misclassified images the correlation virtually vanishes": no test can
  show a correlation to be zero without a declared equivalence margin, so the
  claim is never called held; it is not held when a two-sided test finds the
  correlation nonzero, inconclusive otherwise (:class:`apem.claims.Vanishes`);
* "the method with the highest APEM has the strongest correlation": the highest
  APEM is :func:`apem.stats.best_method` (the thesis's mean, as in chapter 3),
  and the comparison is shown, not tested: a difference of two Spearman
  correlations on the same images needs a test for dependent correlations that
  this book does not declare, so the claim is ``not applicable`` with that
  reason, whatever the data.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats as sps

from apem import claims as cl, stats, thesis
from apem.book import display
from apem.run import results
from apem.studies.common import pick_stage

GROUPS = ("correct", "misclassified", "all")
MARK = 0.01  # the thesis's dagger: p < 0.01, two-sided


# ----------------------------------------------------------------------------- the groups


def group_rows(D: pd.DataFrame, group: str) -> pd.DataFrame:
    """The rows of one image group: ``correct``, ``misclassified`` or ``all``."""
    if group == "all":
        return D
    return D[D.correct.astype(bool)] if group == "correct" else D[~D.correct.astype(bool)]


def pairs(D: pd.DataFrame, method: str, group: str, value: str = "apem") -> tuple[pd.Series, pd.Series]:
    """One (value, loss) pair per image of ``group`` for ``method`` (``method="confidence"``: confidence, loss)."""
    G = group_rows(D, group)
    if method == "confidence":
        first = G.drop_duplicates("image_id")
        return first.set_index("image_id").confidence.astype(float), first.set_index("image_id").loss.astype(float)
    G = G[G.method == method]
    return cl.per_image(G, value), cl.per_image(G, "loss")


def fisher_interval(rho: float, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Fisher-z interval of Spearman's rho with Bonett & Wright's (2000) variance (the one apem.claims prints)."""
    if not np.isfinite(rho) or n <= 3:
        return (np.nan, np.nan)
    r = min(max(rho, -0.9999), 0.9999)
    se = math.sqrt((1 + r * r / 2) / (n - 3))
    z, q = math.atanh(r), float(sps.norm.ppf(1 - alpha / 2))
    return (math.tanh(z - q * se), math.tanh(z + q * se))


def correlations(D: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Spearman's rho of APEM with the loss per method (and of the confidence) per group, with censoring.

    One row per (row, group): ``rho``, two-sided ``p``, ``n`` (images), ``lo, hi``
    (:func:`fisher_interval`), ``censored`` (images whose APEM is censored; they
    enter the ranks at their stored bound).
    """
    rows = []
    for m in display.method_order(D) + ["confidence"]:
        for g in GROUPS:
            x, y = pairs(D, m, g)
            both = pd.concat([x.rename("x"), y.rename("y")], axis=1).dropna()
            n = len(both)
            ok = n >= 3 and both.x.nunique() > 1 and both.y.nunique() > 1
            rho, p = (sps.spearmanr(both.x, both.y) if ok else (np.nan, np.nan))
            lo, hi = fisher_interval(float(rho), n, alpha)
            G = group_rows(D, g)
            cens = 0 if m == "confidence" else int(
                (G[G.method == m][["censored_minus", "censored_plus"]].astype(bool).any(axis=1)
                 & G[G.method == m].apem.notna()).sum())
            rows.append({"row": m, "group": g, "rho": float(rho), "p": float(p), "n": n, "lo": lo, "hi": hi,
                         "censored": cens})
    return pd.DataFrame(rows)


def _cell(rho: float, p: float, digits: int = 3) -> str:
    if not np.isfinite(rho):
        return "–"
    return f"{rho:+.{digits}f}" + ("†" if np.isfinite(p) and p < MARK else "")


def table_5_3(D: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Thesis Table 5.3 beside ours: per method (and the confidence), for each group, our rho
    (``†``: p < 0.01 as in the thesis), the thesis's, our images and censored APEMs."""
    R = correlations(D, alpha)
    ours = pd.DataFrame({"method": list(dict.fromkeys(R.row))})
    th = thesis.TABLE_5_3.rename(columns={"row": "method"})
    th_cells = pd.DataFrame({"method": th.method})
    for g in GROUPS:
        r = R[R.group == g].set_index("row")
        ours[g] = [_cell(r.loc[m, "rho"], r.loc[m, "p"]) for m in ours.method]
        th_cells[g] = [_cell(v, 0.0 if s else 1.0) for v, s in zip(th[g], th[f"significant_{g}"])]
    out = display.beside_thesis(ours, th_cells, on=["method"], columns=list(GROUPS)).fillna("–")
    for g in GROUPS:
        r = R[R.group == g].set_index("row")
        out[(g, "images")] = [int(r.loc[m, "n"]) for m in ours.method]
        out[(g, "censored")] = [str(int(r.loc[m, "censored"])) if m != "confidence" else "–" for m in ours.method]
    return out[[(g, k) for g in GROUPS for k in ("ours", "thesis", "images", "censored")]]


# ----------------------------------------------------------------------------- figures


def interval_figure(R: pd.DataFrame, alpha: float = 0.05):
    """Our rho per method and group with its Fisher-z interval; censored APEMs per method in the labels."""
    methods = [m for m in dict.fromkeys(R.row) if m != "confidence"]
    fig, ax = plt.subplots(figsize=(7.2, 0.9 + 0.9 * len(methods)))
    for k, g in enumerate(GROUPS):
        c = R[(R.group == g) & R.row.isin(methods)].set_index("row").loc[methods]
        y = np.arange(len(methods)) + (k - 1) * 0.25
        ok = np.isfinite(c.rho.to_numpy(float))
        err = np.vstack([(c.rho - c.lo).to_numpy(float), (c.hi - c.rho).to_numpy(float)])
        err = np.where(np.isfinite(err), err, 0.0)
        if ok.any():
            ax.errorbar(c.rho[ok], y[ok], xerr=err[:, ok], fmt="o", capsize=3, label=g)
    cens = R[R.group == "all"].set_index("row").censored
    ticks = [f"{thesis.label(m)}\n{int(cens[m])} censored\n(all images)" for m in methods]
    ax.set_yticks(np.arange(len(methods)), ticks)
    ax.axvline(0, color="k", lw=1, ls="--")
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel(f"Spearman ρ(APEM, loss), {1 - alpha:.0%} Fisher-z interval")
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def scatter_figure(D: pd.DataFrame):
    """APEM against the loss, one panel per method; correct and misclassified images coloured, censored hollow."""
    methods = display.method_order(D)
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.4), squeeze=False, sharey=True)
    colours = {"correct": "#3a78b5", "misclassified": "#d9822b"}
    for ax, m in zip(axes[0], methods):
        d = D[D.method == m]
        cens = d[["censored_minus", "censored_plus"]].astype(bool).any(axis=1)
        for g in ("correct", "misclassified"):
            sel = d.correct.astype(bool) if g == "correct" else ~d.correct.astype(bool)
            for c, face in ((False, colours[g]), (True, "none")):
                s = d[sel & (cens == c)]
                if len(s):
                    ax.scatter(s.loss, s.apem, s=25, facecolors=face, edgecolors=colours[g],
                               label=f"{g}{' (censored)' if c else ''}")
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_yscale("symlog", linthresh=1)
        ax.set_title(f"{thesis.label(m)} ({int((cens & d.apem.notna()).sum())} censored)")
        ax.set_xlabel("cross-entropy loss (ground truth)")
    axes[0, 0].set_ylabel("APEM")
    axes[0, -1].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- claims


NO_DEPENDENT_TEST = ("no exact test of a difference between two dependent Spearman correlations (same images) is "
                     "declared in this book")


def strongest_statement(S: pd.DataFrame, R: pd.DataFrame) -> tuple[str, str, str]:
    """``(best, strongest, sentence)``: the best method by :func:`apem.stats.best_method`, the method with the most
    negative rho on the correct images, and a sentence comparing them (every number formatted)."""
    best = stats.best_method(S)
    rc = R[(R.group == "correct") & (R.row != "confidence")].set_index("row")
    rho = rc.rho.astype(float)
    if rho.notna().any():
        strongest = rho.idxmin()
        same = "the same method" if strongest == best else "a different method"
        rb, rs = cl.fmt(rho[best], 2, sign=True), cl.fmt(rho[strongest], 2, sign=True)
        sentence = (f"the highest mean APEM is {thesis.label(best)}'s (ρ = {rb}); the most negative ρ on correct "
                    f"images is {thesis.label(strongest)}'s ({rs}), {same}")
    else:
        strongest, sentence = "", f"the highest mean APEM is {thesis.label(best)}'s; no correlation is defined"
    return best, strongest, sentence


def chapter_claims(D: pd.DataFrame, S: pd.DataFrame, alpha: float = 0.05) -> list:
    """The chapter's claims on the results ``D`` (one stage) and the summary ``S`` of its correct images."""
    methods = display.method_order(D)
    out = []
    for g, where in (("correct", "correctly classified images"), ("all", "all images")):
        for m in methods:
            x, y = pairs(D, m, g)
            out.append(cl.Correlation(f"APEM of {thesis.label(m)} correlates negatively with the loss on {where}",
                                      x=x, y=y, negative=True, names=("APEM", "loss")))
    n_mis = int(D[~D.correct.astype(bool)].image_id.nunique())
    why = ("the configuration has no misclassified image" if n_mis == 0 else
           f"{n_mis} misclassified image{'s' if n_mis != 1 else ''}: Spearman's ρ needs at least 3")
    parts = []
    for m in methods:
        x, y = pairs(D, m, "misclassified")
        parts.append(cl.Vanishes(f"{thesis.label(m)}: ρ(APEM, loss) is about 0 on misclassified images", x=x, y=y,
                              names=("APEM", "loss"), applicable=n_mis >= 3, reason=why))
    out.append(cl.NoneNonzero("On misclassified images the correlation virtually vanishes", of=parts,
                           applicable=n_mis >= 3, reason=why))
    R = correlations(D, alpha)
    _, _, sentence = strongest_statement(S, R)
    out.append(cl.Descriptive("The method with the highest APEM has the strongest (most negative) correlation",
                           reason=f"descriptive only: {sentence}", why=NO_DEPENDENT_TEST))
    return out


# ----------------------------------------------------------------------------- the page


class Page:
    """Chapter 9 at ``stage``: APEM against the loss on correct, misclassified and all images."""

    def __init__(self, params="default", overrides=None, *, alpha: float = 0.05, stage: int | None = None):
        self.res = results(params, progress=False, **dict(overrides or {}))
        self.cfg, T = self.res.cfg, self.res.table
        self.stage, self.alpha = pick_stage(self.res, stage), alpha
        self.D = T[T.stage == self.stage]
        self.C = self.D[self.D.correct.astype(bool)]
        self.methods = display.method_order(self.D) if len(self.D) else []
        self.n_correct = int(self.C.image_id.nunique())
        self.n_mis = int(self.D[~self.D.correct.astype(bool)].image_id.nunique())
        self.S = stats.summary_table(self.C, by="method", seed=self.cfg.seed) if len(self.C) else None

    def setting(self) -> None:
        display.require(self.n_correct > 0, "The configuration has no correctly classified image", "-p n_correct 24")
        display.show_markdown(
            f"**Setting.** {self.cfg.model}, stage {self.stage}: {self.n_correct} correctly classified and "
            f"{self.n_mis} misclassified images, methods {', '.join(map(thesis.label, self.methods))}; the maps "
            f"explain the model's *prediction*, the loss is against the *ground truth*. "
            f"{display.censoring_note(self.D)}")

    @property
    def R(self) -> pd.DataFrame:
        return correlations(self.D, self.alpha)

    def table_5_3(self) -> pd.DataFrame:
        return table_5_3(self.D, self.alpha)

    def intervals(self) -> None:
        display.show_figure(interval_figure(self.R, self.alpha))

    def scatter(self) -> None:
        display.show_figure(scatter_figure(self.D))

    def ranking(self) -> pd.DataFrame:
        """The methods by the thesis's statistic (mean APEM, :func:`apem.stats.ranking`), rho on correct images."""
        Rk = stats.ranking(self.S)
        rc = self.R[(self.R.group == "correct")].set_index("row")
        out = display.ranking_view(self.S).rename(columns={"mean": "mean APEM", "median": "median APEM"})
        rho = rc.loc[Rk.index, "rho"].astype(float)
        out["ρ(APEM, loss), correct"] = [cl.fmt(v, 3, sign=True) for v in rho]
        out["rank by ρ (most negative first)"] = rho.rank(method="min").map(
            lambda v: "–" if not np.isfinite(v) else str(int(v))).to_numpy()
        return out

    def best_statement(self) -> None:
        _, _, sentence = strongest_statement(self.S, self.R)
        display.show_markdown(f"By the thesis's statistic (the mean), {sentence}.")

    def claims(self) -> cl.Claims:
        R = self.R
        conf = R[(R.row == "confidence") & (R.group == "correct")].iloc[0]
        context = (f"For comparison, ρ(confidence, loss) on the correct images is {cl.fmt(conf.rho, 3, sign=True)}: "
                   "there the loss is −log(confidence), so the two rank the images in exactly opposite order.")
        return cl.Claims(chapter_claims(self.D, self.S, self.alpha), alpha=self.alpha, context=context)

    def verdicts(self) -> None:
        model = (f"Our model is {self.cfg.model} on {self.n_correct} correct and {self.n_mis} misclassified images; "
                 "the thesis measured VGG-16 on 5,000 of each, where a small correlation is already significant.")
        self.claims().show(censored=display.censoring_note(self.D), model=model)
