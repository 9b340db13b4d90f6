"""Chapter 9, APEM and the loss (thesis section 5.4, Table 5.3): the plumbing of its page.

The page (``notebooks/09_apem_and_loss.md``) selects the rows (``D``: every image
at one stage; ``C`` the correct ones, ``M`` the misclassified), declares the
claims (Spearman correlations, :class:`apem.claims.Correlation` and
:class:`apem.claims.Vanishes`) and computes Table 5.3 with
:func:`apem.correlation.spearman_table`. This module formats what it shows:

* :func:`show_setting`: the setting line;
* :func:`table_5_3`: our rho beside the thesis's, with images and censored APEMs;
* :func:`interval_figure` and :func:`scatter_figure`;
* :func:`ranking_table` and :func:`strongest_statement`: the best method by the
  thesis's statistic (the mean) beside each method's rho, and the sentence that
  compares them (the descriptive claim's numbers);
* :func:`balanced_mix` and :func:`mix_table`: Table 5.3's "all images" depends on
  the mix of correct and misclassified images (the thesis's is 1:1, 5,000 of each);
  the correlation at a 1:1 mix, on a seeded subsample of the larger group;
* :func:`same_order_pairs`: the pairs of images two variables do not order oppositely (the
  confidence and the loss on the correct images, where ρ = −1 is a fact to check);
* :func:`exercise_values`: the numbers the exercises' solutions quote.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from apem import claims, correlation, stats, thesis
from apem.book import display
from apem.book.exercises import counts_sentence, decided_at

GROUPS = ("correct", "misclassified", "all")
MARK = 0.01  # the thesis's dagger: p < 0.01, two-sided
NO_DEPENDENT_TEST = ("no exact test of a difference between two dependent Spearman correlations (same images) is "
                     "declared in this book")


def group_rows(D: pd.DataFrame, group: str) -> pd.DataFrame:
    """The rows of one image group of ``D``: ``correct``, ``misclassified`` or ``all``."""
    return D if group == "all" else D[D.group == group]


def show_setting(cfg, stage: int, D: pd.DataFrame) -> None:
    """The setting line: model, stage, images per group, methods, what the maps and the loss are of, censoring.

    Stops the page (:func:`apem.book.display.require`) when the stage is not in the
    configuration or it has no correctly classified image.
    """
    display.require(stage in cfg.stages, f"Stage {stage} is not among the configuration's stages {list(cfg.stages)}",
                    f"-p stage {max(cfg.stages)}")
    n_correct = int(D[D.group == "correct"].image_id.nunique())
    n_mis = int(D[D.group == "misclassified"].image_id.nunique())
    display.require(n_correct > 0, "The configuration has no correctly classified image", "-p n_correct 24")
    display.show_markdown(
        f"**Setting.** {cfg.model}, stage {stage}: {n_correct} correctly classified and {n_mis} misclassified "
        f"images, methods {', '.join(map(thesis.label, display.method_order(D)))}; the maps explain the model's "
        f"*prediction*, the loss is against the *ground truth*. {display.censoring_note(D)}")


# ----------------------------------------------------------------------------- Table 5.3


def _cell(rho: float, p: float, digits: int = 3) -> str:
    if not np.isfinite(rho):
        return "–"
    return f"{rho:+.{digits}f}" + ("†" if np.isfinite(p) and p < MARK else "")


def table_5_3(R: pd.DataFrame, D: pd.DataFrame) -> pd.DataFrame:
    """Thesis Table 5.3 beside ours: per method (and the confidence), for each group, our rho
    (``†``: p < 0.01 as in the thesis), the thesis's, our images and censored APEMs.

    ``R``: :func:`apem.correlation.spearman_table` of ``D`` (one stage); ``D`` gives the
    censored counts (:func:`apem.stats.censored_counts`: such an APEM enters the ranks at
    its stored bound).
    """
    rows = list(R.index)
    ours = pd.DataFrame({"method": rows})
    th = thesis.TABLE_5_3.rename(columns={"row": "method"})
    th_cells = pd.DataFrame({"method": th.method})
    for g in GROUPS:
        ours[g] = [_cell(R.loc[m, (g, "rho")], R.loc[m, (g, "p")]) for m in rows]
        th_cells[g] = [_cell(v, 0.0 if s else 1.0) for v, s in zip(th[g], th[f"significant_{g}"])]
    out = display.beside_thesis(ours, th_cells, on=["method"], columns=list(GROUPS)).fillna("–")
    for g in GROUPS:
        cens = stats.censored_counts(group_rows(D, g), "apem")
        out[(g, "images")] = [int(R.loc[m, (g, "n")]) for m in rows]
        out[(g, "censored")] = [str(int(cens.get(m, 0))) if m != "confidence" else "–" for m in rows]
    return out[[(g, k) for g in GROUPS for k in ("ours", "thesis", "images", "censored")]]


# ----------------------------------------------------------------------------- figures


def interval_figure(R: pd.DataFrame, D: pd.DataFrame, alpha: float = 0.05):
    """Our rho per method and group with its interval (``R``: :func:`apem.correlation.spearman_table` with
    ``alpha``); each method's censored APEMs over all images of ``D`` in its label."""
    methods = [m for m in R.index if m != "confidence"]
    fig, ax = plt.subplots(figsize=(7.2, 0.9 + 0.9 * len(methods)))
    for k, g in enumerate(GROUPS):
        c = R.loc[methods, g]
        y = np.arange(len(methods)) + (k - 1) * 0.25
        ok = np.isfinite(c.rho.to_numpy(float))
        err = np.vstack([(c.rho - c.lo).to_numpy(float), (c.hi - c.rho).to_numpy(float)])
        err = np.clip(np.where(np.isfinite(err), err, 0.0), 0.0, None)  # |rho| = 1: the interval is clipped inside
        if ok.any():
            ax.errorbar(c.rho[ok], y[ok], xerr=err[:, ok], fmt="o", capsize=3, label=g)
    cens = stats.censored_counts(D, "apem")
    ticks = [f"{thesis.label(m)}\n{int(cens.get(m, 0))} censored\n(all images)" for m in methods]
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
        cens = stats.censored(d, "apem")
        for g in ("correct", "misclassified"):
            for c, face in ((False, colours[g]), (True, "none")):
                s = d[(d.group == g) & (cens == c)]
                if len(s):
                    ax.scatter(s.loss, s.apem, s=25, facecolors=face, edgecolors=colours[g],
                               label=f"{g}{' (censored)' if c else ''}")
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_yscale("symlog", linthresh=1)
        ax.set_title(f"{thesis.label(m)} ({int(cens.sum())} censored)")
        ax.set_xlabel("cross-entropy loss (ground truth)")
    axes[0, 0].set_ylabel("APEM")
    axes[0, -1].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- the best method and its rho


def strongest_statement(S: pd.DataFrame, rho: pd.Series) -> tuple[str, str, str]:
    """``(best, strongest, sentence)``: the method with the highest restricted mean APEM (:func:`apem.stats.best_method`,
    every search capped at the bound), the method with
    the most negative ``rho`` (per method, on the correct images; a ``confidence`` row is left out), and a sentence
    comparing them (every number formatted)."""
    best = stats.best_method(S)
    rho = rho.drop("confidence", errors="ignore").astype(float)
    if rho.notna().any():
        strongest = rho.idxmin()
        same = "the same method" if strongest == best else "a different method"
        rb, rs = claims.fmt(rho[best], 2, sign=True), claims.fmt(rho[strongest], 2, sign=True)
        sentence = (f"the highest restricted mean APEM is {thesis.label(best)}'s (ρ = {rb}); the most negative ρ on correct "
                    f"images is {thesis.label(strongest)}'s ({rs}), {same}")
    else:
        strongest, sentence = "", f"the highest restricted mean APEM is {thesis.label(best)}'s; no correlation is defined"
    return best, strongest, sentence


def ranking_table(S: pd.DataFrame, rho: pd.Series) -> pd.DataFrame:
    """:func:`apem.book.display.ranking_view` of ``S`` (the methods by mean APEM, the thesis's statistic) with each
    method's ``rho`` on the correct images and its rank (most negative first)."""
    order = stats.ranking(S).index
    out = display.ranking_view(S).rename(columns={"restricted mean": "restricted mean APEM", "median": "median APEM"})
    r = rho.loc[order].astype(float)
    out["ρ(APEM, loss), correct"] = [claims.fmt(v, 3, sign=True) for v in r]
    out["rank by ρ (most negative first)"] = r.rank(method="min").map(
        lambda v: "–" if not np.isfinite(v) else str(int(v))).to_numpy()
    return out


# ----------------------------------------------------------------------------- the mix of the groups


def balanced_mix(D: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The rows of ``D`` for a 1:1 mix of correct and misclassified images, the thesis's (5,000 of each).

    Every image of the smaller group, and as many images of the larger one drawn
    without replacement: ``numpy.random.default_rng(seed).choice`` of positions in
    the larger group's sorted image ids (so the draw does not depend on the table's
    row order). Every row (method, stage) of a kept image is kept. Empty when a group
    has no image.
    """
    ids = {g: sorted(D[D.group == g].image_id.unique()) for g in ("correct", "misclassified")}
    small, large = sorted(ids, key=lambda g: len(ids[g]))  # equal sizes: every image of both is kept
    k = len(ids[small])
    if k == 0:
        return D.iloc[:0]
    drawn = np.random.default_rng(seed).choice(len(ids[large]), size=k, replace=False)
    keep = set(ids[small]) | {ids[large][i] for i in drawn}
    return D[D.image_id.isin(keep)]


def mix_table(R: pd.DataFrame, R_mix: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Table 5.3's "all images" column at the configuration's mix and at 1:1: per method (and the confidence),
    rho with its interval and the images (``R``, ``R_mix``: :func:`apem.correlation.spearman_table` with ``alpha``
    of the stage's rows and of :func:`balanced_mix`'s)."""
    def cell(T, m):
        if m not in T.index or not np.isfinite(T.loc[m, ("all", "rho")]):
            return "–"
        rho, lo, hi = (float(T.loc[m, ("all", k)]) for k in ("rho", "lo", "hi"))
        ci = f" [{lo:+.{digits}f}, {hi:+.{digits}f}]" if np.isfinite(lo) else ""
        return f"{rho:+.{digits}f}{ci}"

    rows, th = list(R.index), thesis.TABLE_5_3.set_index("row")
    out = pd.DataFrame({
        ("configuration's mix", "ρ [interval]"): [cell(R, m) for m in rows],
        ("configuration's mix", "images"): [int(R.loc[m, ("all", "n")]) for m in rows],
        ("1:1 (thesis)", "ρ [interval]"): [cell(R_mix, m) for m in rows],
        ("1:1 (thesis)", "images"): [int(R_mix.loc[m, ("all", "n")]) if m in R_mix.index else 0 for m in rows],
        ("thesis", "ρ"): [_cell(th.loc[m, "all"], 0.0 if th.loc[m, "significant_all"] else 1.0)
                          if m in th.index else "–" for m in rows],
    }, index=pd.Index([thesis.label(m) for m in rows], name="method"))
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    return out


# ----------------------------------------------------------------------------- confidence and loss


def same_order_pairs(x: pd.Series, y: pd.Series) -> tuple[int, int]:
    """``(violations, pairs)``: of the pairs of items where both ``x`` and ``y`` are present, how many ``x`` and ``y``
    do *not* order strictly oppositely (the same order, or a tie in either).

    No violation means Kendall's τ = −1 and so Spearman's ρ = −1 exactly: the ranks of ``y`` are those of ``x``
    reversed. On a correctly classified image the label is the prediction, so the loss (the cross-entropy
    against the label, :func:`apem.runner.selection.classify_pool`) is −log of the top probability, the confidence: a
    strictly decreasing function of it, whose only possible violations are ties of float32 rounding.
    """
    both = pd.concat([x.rename("x"), y.rename("y")], axis=1).dropna()
    a, b = both.x.to_numpy(float), both.y.to_numpy(float)
    i, j = np.triu_indices(a.size, k=1)
    opposite = np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]) < 0
    return int((~opposite).sum()), int(i.size)


# ----------------------------------------------------------------------------- exercises


def exercise_values(T: pd.DataFrame, cfg, stage: int, alpha: float, chapter_claims: list) -> dict[str, str]:
    """The numbers the exercises' solutions quote (name -> text), on the results table ``T`` (every stage).

    ``stage`` and ``alpha``: the chapter's parameters; ``chapter_claims``: the page's
    claims on the rows of ``T`` at ``stage`` (decided here on copies, at ``alpha``, 0.01
    and 0.1). The page glues them from the reference build (the configuration without
    overrides, the chapter's default parameters).
    """

    def rhos(s: int) -> str:
        D = T[T.stage == s]
        if D.empty:
            return f"(stage {s} is not in this configuration's stages {list(cfg.stages)})"
        rho = correlation.spearman_table(D, groups=("correct",), confidence=None)[("correct", "rho")]
        return ", ".join(f"{thesis.label(m)} {claims.fmt(float(v), 2, sign=True)}" for m, v in rho.items())

    return {"ex09_alpha": f"{alpha:g}", "ex09_verdicts": counts_sentence(decided_at(chapter_claims, alpha).counts()),
            "ex09_verdicts_01": counts_sentence(decided_at(chapter_claims, 0.01).counts()),
            "ex09_verdicts_10": counts_sentence(decided_at(chapter_claims, 0.10).counts()),
            "ex09_stage": str(stage), "ex09_rho": rhos(stage), "ex09_rho_s1": rhos(1)}
