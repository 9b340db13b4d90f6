"""Chapter 10, APEM among faithfulness metrics (beyond the thesis): the page's tables, figures and prose.

The page (``notebooks/10_faithfulness_metrics.md``) runs the study
(:func:`apem.studies.faithfulness_scores`: the same cached maps of the first
``n_images`` correctly classified images scored by four Quantus metrics and
APEM, with what each cost), computes its statistics with
:func:`apem.studies.mean_scores`, :func:`apem.studies.agreement_table` and
:func:`apem.studies.cost_table`, and declares its claims (all ours): per-image
Kendall's tau above 0 (:class:`apem.claims.Location`), and APEM cheaper per map
than each metric in **forward passes per map**, a backward pass counted as two
(:class:`apem.claims.Paired` on :func:`apem.studies.per_image_cost` ``"fwd_equiv_map"``).
Counts do not depend on the machine; seconds on a shared CPU do, so they are a
description, never a verdict.

This module is the plumbing: metric names and the smoke budget
(:data:`QUICK`), the tables formatted for reading (:func:`parameter_table`,
:func:`score_table`, :func:`agreement_view`, :func:`cost_view`), the figures
(:func:`mean_score_figure`, :func:`agreement_figure`, :func:`cost_figure`), the
generated sentences (:func:`setting`, :func:`rerun_note`, :func:`seconds_sentence`)
and the numbers the exercises quote (:func:`exercise_values`).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from apem import claims, quantus_adapter, studies, thesis
from apem.book import display

NAMES = {"PixelFlipping": "Pixel-Flipping", "Selectivity": "Selectivity", "ROAD": "ROAD",
         "FaithfulnessCorrelation": "Faithfulness Corr.", studies.APEM: "APEM"}
#: a smoke-test budget: a quarter of the steps, patches and runs
QUICK = {"PixelFlipping": {"features_in_step": 224 * 224 // 4}, "Selectivity": {"patch_size": 56},
         "ROAD": {"percentages": [10, 30, 50]}, "FaithfulnessCorrelation": {"nr_runs": 16}}
COST = "fwd_equiv_map"  # the cost the claims decide on: forward passes per map, a backward pass counted as two


def name(metric: str) -> str:
    """A metric's display name (``"PixelFlipping"`` -> ``"Pixel-Flipping"``)."""
    return NAMES.get(metric, metric)


def _apem_first(metrics) -> list[str]:
    metrics = list(dict.fromkeys(metrics))
    return [studies.APEM] + [m for m in metrics if m != studies.APEM]


# ----------------------------------------------------------------------------- tables


def parameter_table(metrics, metric_params: dict, cfg) -> pd.DataFrame:
    """The parameters each metric ran with (Quantus's, after this book's defaults and overrides)."""
    rows = []
    for m in metrics:
        p = {**quantus_adapter.default_params(m), **metric_params.get(m, {})}
        p.pop("return_aggregate", None)
        rows.append({"metric": name(m), "parameters": ", ".join(f"{k} = {v}" for k, v in p.items())})
    rows.append({"metric": "APEM", "parameters": f"{cfg.search_mode} search, bound {cfg.search_bound}, no shuffles; "
                 "score = ε⁺ − ε⁻ from the results table"})
    return pd.DataFrame(rows).set_index("metric")


def score_table(MS: pd.DataFrame, censored: pd.Series) -> pd.DataFrame:
    """Mean score per metric (rows) and method (columns) with its bootstrap interval and rank; a row of
    censored APEMs per method.

    ``MS``: :func:`apem.studies.mean_scores`; ``censored``: censored APEMs per method
    (:func:`apem.stats.censored_counts`).
    """
    methods = list(dict.fromkeys(MS.method))
    order = _apem_first(MS.metric)
    cells = {}
    for r in MS.itertuples():
        digits = 0 if r.metric == studies.APEM else 3
        rank = "" if not np.isfinite(r.rank) else f"  (#{int(r.rank)})"
        cells[(r.metric, r.method)] = display.fmt_ci(r.mean, r.mean_lo, r.mean_hi, digits).replace("nan", "–") + rank
    tab = pd.DataFrame([[cells.get((mt, m), "–") for m in methods] for mt in order],
                       index=[name(mt) for mt in order], columns=[thesis.label(m) for m in methods])
    tab.loc["APEM: censored images"] = [str(int(censored.get(m, 0))) for m in methods]
    return tab


def agreement_view(AG: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Per pair of metrics: images with a defined tau, mean and median per-image tau, share of images with the
    same order, and tau between the rankings of the mean scores.

    ``AG``: :func:`apem.studies.agreement_table` of ``scores`` (the study's long table, for the medians).
    """
    rows = []
    for r in AG.itertuples():
        tau = studies.kendall_per_image(scores, r.metric_a, r.metric_b).dropna()
        rows.append({"pair": f"{name(r.metric_a)} vs {name(r.metric_b)}", "images": int(r.n_images),
                     "mean τ": claims.fmt(r.tau_mean, 2, sign=True),
                     "median τ": claims.fmt(float(tau.median()) if len(tau) else np.nan, 2, sign=True),
                     "same order": claims.fmt(r.same_order, 0, pct=True),
                     "τ of the mean scores": claims.fmt(r.tau_of_means, 2, sign=True)})
    return pd.DataFrame(rows).set_index("pair")


def cost_view(CT: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Per metric: forward passes per map (the claims' cost), backward passes per image, forward equivalents per
    map, and, as a description, seconds per map (mean with bootstrap interval, and median).

    ``CT``: :func:`apem.studies.cost_table` of ``scores`` (the study's long table, for the medians).
    """
    order = _apem_first(scores.metric)
    CT = CT.loc[order]
    fwd = studies.per_image_cost(scores, COST)
    return pd.DataFrame({
        "images": CT.images.astype(int).to_numpy(),
        "forwards per map (mean)": [claims.fmt(v, 1) for v in CT.forwards_map],
        "backwards per image": [claims.fmt(v, 0) for v in CT.backwards_image],
        "forward equivalents per map (mean)": [claims.fmt(v, 1) for v in CT.fwd_equiv_map],
        "forward equivalents per map (median)": [claims.fmt(float(fwd[m].median()), 1) for m in order],
        "seconds per map [95% CI] (descriptive)": [display.fmt_ci(r.seconds_map, r.seconds_map_lo, r.seconds_map_hi, 3)
                                                   .replace("nan", "–") for r in CT.itertuples()],
        "median seconds per map": [claims.fmt(v, 3) for v in CT.median_seconds_map],
    }, index=[name(m) for m in order])


# ----------------------------------------------------------------------------- figures


def mean_score_figure(MS: pd.DataFrame, censored: pd.Series):
    """One panel per metric: mean score per method with its bootstrap interval (``MS``:
    :func:`apem.studies.mean_scores`); APEM's censored count in its title."""
    methods = list(dict.fromkeys(MS.method))
    order = _apem_first(MS.metric)
    fig, axes = plt.subplots(1, len(order), figsize=(3.1 * len(order), 3.4), squeeze=False)
    for ax, m in zip(axes[0], order):
        d = MS[MS.metric == m].set_index("method").reindex(methods)
        x = np.arange(len(methods))
        err = np.vstack([(d["mean"] - d.mean_lo).to_numpy(float), (d.mean_hi - d["mean"]).to_numpy(float)])
        ax.bar(x, d["mean"].to_numpy(float), yerr=np.where(np.isfinite(err), err, 0.0), capsize=3, color="#8fb3d9")
        ax.set_xticks(x, [thesis.label(k) for k in methods], rotation=30, ha="right")
        title = name(m)
        if m == studies.APEM:
            title += f"\n({int(censored.sum())} censored)"
        ax.set_title(title)
        ax.axhline(0, color="k", lw=0.8)
    axes[0, 0].set_ylabel("mean score (higher = more faithful)")
    fig.tight_layout()
    return fig


def agreement_figure(scores: pd.DataFrame):
    """Mean per-image Kendall tau of every pair of metrics, as a matrix."""
    order = _apem_first(scores.metric)
    mat = pd.DataFrame(np.eye(len(order)), index=order, columns=order)
    for a in order:
        for b in order:
            if a != b:
                mat.loc[a, b] = studies.kendall_per_image(scores, a, b).mean()
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    sns.heatmap(mat.rename(index=NAMES, columns=NAMES), annot=True, fmt=".2f", vmin=-1, vmax=1, cmap="RdBu_r",
                square=True, cbar_kws={"label": "mean per-image Kendall τ"}, ax=ax)
    ax.set_title("Agreement of the method rankings, image by image")
    fig.tight_layout()
    return fig


def cost_figure(scores: pd.DataFrame):
    """Per image and metric: forward equivalents per map (the claims' cost) and seconds per map (descriptive)."""
    order = _apem_first(scores.metric)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, col, lab in ((axes[0], COST, "forward passes per map (a backward = 2)"),
                         (axes[1], "seconds_map", "seconds per map (descriptive)")):
        w = studies.per_image_cost(scores, col)[order].rename(columns=NAMES)
        sns.stripplot(data=w.melt(var_name="metric", value_name="v").dropna(), x="metric", y="v", ax=ax, size=4)
        ax.set_yscale("log")
        ax.set_ylabel(lab)
        ax.set_xlabel("")
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle("One point per image")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- prose


def setting(cfg, scores: pd.DataFrame, stage: int, censored: pd.Series, quick: bool) -> str:
    """The page's setting: model, images, maps, where the counts and timings were taken."""
    methods = list(dict.fromkeys(scores.method))
    n = scores.image_id.nunique()
    return (f"**Setting.** {cfg.model}, the first {n} correctly classified images of the results table, "
            f"the cached stage-{stage} maps of {', '.join(map(thesis.label, methods))}; the target is the "
            f"model's prediction. Counts and timings on `{scores.device.iloc[0]}` with {int(scores.threads.iloc[0])} "
            f"torch thread(s)" + (" (quick Quantus settings)." if quick else ".") + " APEM of these maps: "
            f"{int(censored.sum())} of {len(scores[scores.metric == studies.APEM])} censored.")


def rerun_note(scores: pd.DataFrame) -> str:
    """Did the timing re-run of APEM find the table's epsilons; how many images the main run forwarded per map."""
    ap = scores[scores.metric == studies.APEM]
    same = int(((ap.eps_minus_rerun == ap.eps_minus_table) & (ap.eps_plus_rerun == ap.eps_plus_table)).sum())
    return (f"The timing run of APEM found the same $\\varepsilon^-$ and $\\varepsilon^+$ as the results table for "
            f"{same} of {len(ap)} maps. In the main run (every method and stage batched together) APEM forwarded "
            f"{claims.fmt(float(ap.n_forward_table.mean()), 1)} perturbed images per map on these maps (median "
            f"{claims.fmt(float(ap.n_forward_table.median()), 0)}).")


def seconds_sentence(scores: pd.DataFrame) -> str:
    """Median seconds per map of every metric, for the discussion (a description: the claims use counts)."""
    sec = studies.per_image_cost(scores, "seconds_map")
    parts = ", ".join(f"{name(m)} {claims.fmt(float(sec[m].median()), 3)} s" for m in _apem_first(scores.metric))
    return (f"Measured seconds per map (median over images, a shared CPU; a description, not a verdict): {parts}. "
            "ROAD's imputation solves are work besides its forward passes, which the counts do not include.")


# ----------------------------------------------------------------------------- exercises


def exercise_values(scores: pd.DataFrame, stage: int, verdicts: claims.Claims) -> dict[str, str]:
    """The numbers the exercises' solutions quote (names ``ex10_...``), from the study's ``scores`` at ``stage``
    and the page's decided claims ``verdicts``."""
    from apem.book.exercises import counts_sentence

    AG = studies.agreement_table(scores, n_boot=200)
    apem_rows = AG[(AG.metric_a == studies.APEM) | (AG.metric_b == studies.APEM)]
    taus = ", ".join(f"{claims.fmt(float(r.tau_mean), 2, sign=True)} with "
                     f"{name(r.metric_b if r.metric_a == studies.APEM else r.metric_a)}" for r in apem_rows.itertuples())
    needed = [x.evidence.needed for x in verdicts if x.evidence is not None and x.evidence.applicable
              and x.evidence.needed is not None]
    finite = [n for n in needed if np.isfinite(n)]
    return {"ex10_n": str(int(scores.image_id.nunique())), "ex10_stage": str(stage), "ex10_taus": taus,
            "ex10_needed": claims.fmt_n(min(finite)) if finite else "∞ (no effect observed)",
            "ex10_verdicts": counts_sentence(verdicts.counts())}
