"""Chapter 12, more explanation methods (beyond the thesis): the page's tables, figures and prose.

The page (``notebooks/12_more_methods.md``) runs four further methods
(:data:`apem.studies.MORE_METHODS`) through the whole pipeline in a configuration
of their own (:func:`apem.studies.more_methods`: same model, pool and seed,
correct images only), joins them with the main table on the common images
(:func:`apem.studies.combined_table`), and declares its claims (all ours): each
new method has a higher APEM than the Gradient, the thesis's best method
(:class:`apem.claims.Paired`, per image); Grad-CAM's coarse maps get a lower
eps-plus than each of the thesis's methods (an :class:`apem.claims.AllOf`); each
new method's per-image APEM_norm term is above 0 (:class:`apem.claims.Location`;
not applicable without shuffles).

This module is the plumbing: the tables formatted for reading
(:func:`summary_view`, :func:`stage_view`, :func:`norm_view`), the figures
(:func:`maps_figure`, :func:`median_figure`, :func:`widen`, :func:`norm_figure`),
the generated sentences (:func:`setting`, :func:`gradcam_note`,
:func:`ranking_sentence`) and the numbers the exercises quote
(:func:`exercise_values`).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import torch

from apem import claims, stats, thesis
from apem.book import display
from apem.figures import charts, plots

NO_SHUFFLES = "the configuration has no shuffles: APEM_norm needs the shuffled baseline"
NORM_NOT_COMPUTED = ("**Not computed with these parameters.** The configuration has no shuffles, so "
                     "$\\mathrm{APEM}_{\\mathrm{norm}}$ is not computed. Re-run the chapter with `-p shuffles 2` to "
                     "compute it.")


def _ordered(S: pd.DataFrame, methods) -> pd.DataFrame:
    if isinstance(S.index, pd.MultiIndex):
        return S.loc[[k for m in methods for k in S.index if k[0] == m]]
    return S.loc[[m for m in methods if m in S.index]]


# ----------------------------------------------------------------------------- tables


def summary_view(S: pd.DataFrame, methods, old) -> pd.DataFrame:
    """Mean and median APEM of every method (``S``: :func:`apem.stats.summary_table` by method, one stage),
    censored counts, the ranking by the thesis's mean and by the median, and whether the thesis had the method
    (``old``), methods in the order ``methods``."""
    S = _ordered(S, methods)
    view = display.summary_view(S, digits=0)
    R = stats.ranking(S)
    view["rank by mean (thesis)"] = R.rank_mean.reindex(S.index).to_numpy()
    view["rank by median"] = R.rank_median.reindex(S.index).to_numpy()
    view["in the thesis"] = ["yes" if m in old else "" for m in S.index]
    return view


def stage_view(ST: pd.DataFrame, methods) -> pd.DataFrame:
    """Table 4.4 for every method: mean and median APEM per stage, censored counts (``ST``:
    :func:`apem.stats.summary_table` by method and stage)."""
    return display.summary_view(_ordered(ST, methods), digits=0)


def norm_view(N: pd.DataFrame, methods) -> pd.DataFrame:
    """Mean and median of the per-image APEM_norm term per method (``N``: :func:`apem.stats.summary_table` of
    ``apem_norm_term`` by method), with the censored searches of its maps."""
    return display.summary_view(_ordered(N, methods), digits=2)


# ----------------------------------------------------------------------------- figures


def maps_figure(res, extra, C: pd.DataFrame, methods, old, stage: int, k: int = 3):
    """The maps of the first ``k`` images of ``C`` at ``stage``, one row per method: the thesis's methods
    (``old``) from the main results ``res``, the others from the new methods' results ``extra``."""
    show = list(C.image_id.unique()[:k])
    x = res.image_tensors(show)
    src = {m: (res if m in old else extra) for m in methods}
    grid = {m: torch.stack([src[m].map(i, m, stage) for i in show]) for m in methods}
    names = C.drop_duplicates("image_id").set_index("image_id").label_name
    return plots.plot_method_grid(x, grid, class_names=[names[i] for i in show], cell=1.9)


def median_figure(S: pd.DataFrame, methods, title: str = ""):
    """Median APEM per method with its interval (``S``: :func:`apem.stats.summary_table` by method)."""
    fig = charts.bar_with_ci(_ordered(S, methods), "median", title=title)
    plt.setp(fig.axes[0].get_xticklabels(), rotation=40, ha="right")
    fig.set_size_inches(8, 3.8)
    fig.tight_layout()
    return fig


def widen(fig, size: tuple, fontsize: int):
    """A boxplot figure of seven methods made wide enough to read: ``size`` in inches, tick labels rotated."""
    fig.set_size_inches(*size)
    for ax in fig.axes:
        plt.setp(ax.get_xticklabels(), rotation=40, ha="right", fontsize=fontsize)
    fig.tight_layout()
    return fig


def norm_figure(NORM: pd.DataFrame, stage: int):
    """The per-image APEM_norm term per method, with the zero line."""
    fig = charts.boxes(NORM, ("apem_norm_term",), log=False,
                       title=f"APEM$_{{norm}}$ term per image, stage {stage} ({charts.censored_total(NORM)})")
    fig.set_size_inches(8, 4.2)
    ax = fig.axes[0]
    ax.set_ylabel("ε⁺/ε-shuffle⁺ − ε⁻/ε-shuffle⁻ per image")
    ax.axhline(0, color="k", lw=1, ls="--")
    plt.setp(ax.get_xticklabels(), rotation=40, ha="right")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- prose


def setting(cfg, C: pd.DataFrame, methods, ig_steps: int, stage: int, norm_images: int | None) -> str:
    """The page's setting: model, images, methods, how the new methods ran, where APEM_norm was computed
    (``norm_images``: its images; None without shuffles), and the censoring of ``C``."""
    return (f"**Setting.** {cfg.model}; {C.image_id.nunique()} correctly classified images (a subset of the results "
            f"table's), {len(methods)} methods, `{cfg.search_mode}` search with bound {cfg.search_bound}. The new "
            "methods ran in a configuration of their own with the same model, pool and seed (so the same image draw), "
            f"without misclassified images and without shuffles; Integrated Gradients used {ig_steps} steps. "
            + (f"$\\mathrm{{APEM}}_{{\\mathrm{{norm}}}}$ needs the shuffled baseline ({cfg.shuffles} shuffles per "
               f"map); it ran at stage {stage} on {norm_images} of the images. "
               if norm_images is not None else "The configuration has no shuffles: "
               "$\\mathrm{APEM}_{\\mathrm{norm}}$ is not computed. ")
            + display.censoring_note(C))


def gradcam_note(ALL: pd.DataFrame, stages) -> str:
    """Grad-CAM's APEM at stages 1 and 2 (equal when its map is the same in the three channels); empty when not run."""
    if "gradcam" not in set(ALL.method) or not {1, 2} <= set(stages):
        return ""
    g = ALL[ALL.method == "gradcam"].pivot(index="image_id", columns="stage", values="apem")
    same = int((g[1] == g[2]).sum())
    return (f"Grad-CAM's APEM is the same at stages 1 and 2 on {same} of {len(g)} images: its attribution is equal in "
            "the three colour channels, so the channel sum of stage 2 only rescales the map of stage 1, which the "
            "min-max scaling undoes.")


def ranking_sentence(C: pd.DataFrame, old) -> str:
    """The thesis's three methods (``old``) ranked here by the mean and by the median, for the discussion."""
    S = stats.summary_table(C, by="method", ci=False)
    R = stats.ranking(S.loc[[m for m in old if m in S.index]])
    return (f"Among the thesis's three, by the mean: {' > '.join(map(thesis.label, R.index))}; by the median: "
            f"{' > '.join(map(thesis.label, R.sort_values('rank_median', kind='stable').index))}.")


# ----------------------------------------------------------------------------- exercises


def exercise_values(ALL: pd.DataFrame, stage: int, stages, seed: int, verdicts: claims.Claims,
                    verdicts_10: claims.Claims) -> dict[str, str]:
    """The numbers the exercises' solutions quote (names ``ex12_...``): the order by mean APEM at ``stage`` and at
    stage 1 (``ALL``: every method and stage), and the page's claims decided at its level (``verdicts``) and at 0.1
    (``verdicts_10``, the same claims declared again)."""
    from apem.book.exercises import counts_sentence, order_by_mean

    A = ALL[ALL.group == "correct"] if "group" in ALL else ALL
    out = {"ex12_stage": str(stage), "ex12_alpha": f"{verdicts.alpha:g}", "ex12_tests": str(verdicts.n_p),
           "ex12_verdicts": counts_sentence(verdicts.counts()), "ex12_verdicts_10": counts_sentence(verdicts_10.counts())}
    for key, s in (("ex12_order", stage), ("ex12_order_s1", 1)):
        rows = A[A.stage == s]
        out[key] = (order_by_mean(rows, seed) if len(rows) else
                    f"(stage {s} is not in this configuration's stages {list(stages)})")
    return out
