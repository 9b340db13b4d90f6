"""Chapter 10, APEM among faithfulness metrics (beyond the thesis).

The study (:func:`apem.studies.faithfulness_scores`) scores the same cached maps of
the first ``n_images`` correctly classified images with four Quantus metrics and
APEM, and records what each cost: forward passes per map (the metric's model
wrapped in :class:`apem.quantus_adapter.CountingModel`), backward passes per image,
and wall seconds. This module turns it into tables, figures and claims:

* agreement, image by image: Kendall's tau between two metrics' orders of the
  methods on one image is one value per image; "APEM orders the methods as
  metric X does" is a :class:`apem.claims.Location` claim that the per-image tau
  is above 0 (likewise every pair of the established metrics, an AllOf);
* cost: "APEM is cheaper per map than X" is a :class:`apem.claims.Paired` claim
  on the **forward passes per map** the study counted, a backward pass counted
  as two forward passes (:func:`apem.studies.per_image_cost` ``"fwd_equiv_map"``).
  Counts do not depend on the machine; seconds on a shared CPU do, so seconds
  are shown beside as a description, never as a verdict.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from apem import claims as cl, thesis
from apem import quantus_adapter
from apem.book import display
from apem import studies
from apem.run import results
from apem.studies.common import pick_stage

NAMES = {"PixelFlipping": "Pixel-Flipping", "Selectivity": "Selectivity", "ROAD": "ROAD",
         "FaithfulnessCorrelation": "Faithfulness Corr.", studies.APEM: "APEM"}
#: a smoke-test budget: a quarter of the steps, patches and runs
QUICK = {"PixelFlipping": {"features_in_step": 224 * 224 // 4}, "Selectivity": {"patch_size": 56},
         "ROAD": {"percentages": [10, 30, 50]}, "FaithfulnessCorrelation": {"nr_runs": 16}}
COST = "fwd_equiv_map"  # the cost the claims decide on: forward passes per map, a backward pass counted as two


def name(metric: str) -> str:
    return NAMES.get(metric, metric)


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


def censored_apem(T: pd.DataFrame, ids, stage: int) -> pd.Series:
    """Per method: images (of ``ids``) whose APEM at ``stage`` is censored (either search reached the bound)."""
    d = T[(T.stage == stage) & T.image_id.isin(list(ids))]
    flag = d[["censored_minus", "censored_plus"]].astype(bool).any(axis=1) & d.apem.notna()
    return flag.groupby(d.method, sort=False).sum().astype(int)


def score_table(scores: pd.DataFrame, censored: pd.Series, seed: int = 0) -> pd.DataFrame:
    """Mean score per metric (rows) and method (columns) with its bootstrap interval and rank; a row of
    censored APEMs per method."""
    MS = studies.mean_scores(scores, seed=seed)
    methods = list(dict.fromkeys(scores.method))
    metrics = list(dict.fromkeys(scores.metric))
    order = [studies.APEM] + [m for m in metrics if m != studies.APEM]
    cells = {}
    for r in MS.itertuples():
        digits = 0 if r.metric == studies.APEM else 3
        rank = "" if not np.isfinite(r.rank) else f"  (#{int(r.rank)})"
        cells[(r.metric, r.method)] = display.fmt_ci(r.mean, r.mean_lo, r.mean_hi, digits).replace("nan", "–") + rank
    tab = pd.DataFrame([[cells.get((mt, m), "–") for m in methods] for mt in order],
                       index=[name(mt) for mt in order], columns=[thesis.label(m) for m in methods])
    tab.loc["APEM: censored images"] = [str(int(censored.get(m, 0))) for m in methods]
    return tab


def agreement_view(scores: pd.DataFrame) -> pd.DataFrame:
    """Per pair of metrics: images with a defined tau, mean and median per-image tau, share of images with the
    same order, and tau between the rankings of the mean scores."""
    AG = studies.agreement_table(scores, n_boot=200)
    rows = []
    for r in AG.itertuples():
        tau = studies.kendall_per_image(scores, r.metric_a, r.metric_b).dropna()
        rows.append({"pair": f"{name(r.metric_a)} vs {name(r.metric_b)}", "images": int(r.n_images),
                     "mean τ": cl.fmt(r.tau_mean, 2, sign=True),
                     "median τ": cl.fmt(float(tau.median()) if len(tau) else np.nan, 2, sign=True),
                     "same order": cl.fmt(r.same_order, 0, pct=True),
                     "τ of the mean scores": cl.fmt(r.tau_of_means, 2, sign=True)})
    return pd.DataFrame(rows).set_index("pair")


def cost_view(scores: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per metric: forward passes per map (the claims' cost), backward passes per image, forward equivalents per
    map, and, as a description, seconds per map (mean with bootstrap interval, and median)."""
    metrics = list(dict.fromkeys(scores.metric))
    order = [studies.APEM] + [m for m in metrics if m != studies.APEM]
    CT = studies.cost_table(scores, seed=seed).loc[order]
    fwd = studies.per_image_cost(scores, COST)
    return pd.DataFrame({
        "images": CT.images.astype(int).to_numpy(),
        "forwards per map (mean)": [cl.fmt(v, 1) for v in CT.forwards_map],
        "backwards per image": [cl.fmt(v, 0) for v in CT.backwards_image],
        "forward equivalents per map (mean)": [cl.fmt(v, 1) for v in CT.fwd_equiv_map],
        "forward equivalents per map (median)": [cl.fmt(float(fwd[m].median()), 1) for m in order],
        "seconds per map [95% CI] (descriptive)": [display.fmt_ci(r.seconds_map, r.seconds_map_lo, r.seconds_map_hi, 3)
                                                   .replace("nan", "–") for r in CT.itertuples()],
        "median seconds per map": [cl.fmt(v, 3) for v in CT.median_seconds_map],
    }, index=[name(m) for m in order])


# ----------------------------------------------------------------------------- figures


def mean_score_figure(scores: pd.DataFrame, censored: pd.Series, seed: int = 0):
    """One panel per metric: mean score per method with its bootstrap interval; APEM's censored count in its title."""
    MS = studies.mean_scores(scores, seed=seed)
    methods = list(dict.fromkeys(scores.method))
    metrics = list(dict.fromkeys(scores.metric))
    order = [studies.APEM] + [m for m in metrics if m != studies.APEM]
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
    metrics = list(dict.fromkeys(scores.metric))
    order = [studies.APEM] + [m for m in metrics if m != studies.APEM]
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
    metrics = list(dict.fromkeys(scores.metric))
    order = [studies.APEM] + [m for m in metrics if m != studies.APEM]
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


# ----------------------------------------------------------------------------- claims


def chapter_claims(scores: pd.DataFrame) -> list:
    """The chapter's claims (all ours) on the study's long table ``scores``."""
    metrics = [m for m in dict.fromkeys(scores.metric) if m != studies.APEM]
    out = []
    for m in metrics:
        out.append(cl.Location(f"APEM orders the methods on an image as {name(m)} does (per-image Kendall τ > 0)",
                               source=cl.OURS, values=studies.kendall_per_image(scores, studies.APEM, m).dropna(),
                               threshold=0.0, what="Kendall τ"))
    pairs = [(a, b) for k, a in enumerate(metrics) for b in metrics[k + 1:]]
    out.append(cl.AllOf("The established metrics agree with one another (every pair: per-image τ > 0)",
                        source=cl.OURS,
                        of=[cl.Location(f"{name(a)} and {name(b)} agree (τ > 0)", source=cl.OURS,
                                        values=studies.kendall_per_image(scores, a, b).dropna(), threshold=0.0,
                                        what="Kendall τ") for a, b in pairs],
                        applicable=len(pairs) > 0, reason="fewer than two established metrics"))
    cost = studies.per_image_cost(scores, COST)
    for m in metrics:
        out.append(cl.Paired(f"APEM is cheaper per map than {name(m)} (forward passes, a backward pass counted as two)",
                             source=cl.OURS, a=cost[m], b=cost[studies.APEM], greater=True,
                             names=(f"{name(m)} forwards/map", "APEM forwards/map"),
                             digits=1))
    return out


def seconds_sentence(scores: pd.DataFrame) -> str:
    """Median seconds per map of every metric, for the discussion (a description: the claims use counts)."""
    sec = studies.per_image_cost(scores, "seconds_map")
    metrics = [studies.APEM] + [m for m in dict.fromkeys(scores.metric) if m != studies.APEM]
    parts = ", ".join(f"{name(m)} {cl.fmt(float(sec[m].median()), 3)} s" for m in metrics)
    return (f"Measured seconds per map (median over images, a shared CPU; a description, not a verdict): {parts}. "
            "ROAD's imputation solves are work besides its forward passes, which the counts do not include.")


# ----------------------------------------------------------------------------- the page


class Page:
    """Chapter 10: ``n_images`` correct images, the maps of ``stage``; ``quick`` (None: automatic) coarser Quantus
    settings for a smoke test."""

    def __init__(self, params="default", overrides=None, *, n_images: int = 8, stage: int | None = None,
                 quick: bool | None = None, alpha: float = 0.05):
        self.res = results(params, progress=False, **dict(overrides or {}))
        self.cfg = self.res.cfg
        self.stage, self.alpha = pick_stage(self.res, stage), alpha
        self.n = min(int(n_images), len(studies.correct_ids(self.res)))
        self.quick = (len(studies.correct_ids(self.res)) < 10) if quick is None else bool(quick)
        self.metric_params = QUICK if self.quick else {}
        self.metrics = [quantus_adapter.canonical_name(m) for m in quantus_adapter.METRICS]
        self._scores = None

    @property
    def scores(self) -> pd.DataFrame:
        if self._scores is None:
            self._scores = studies.faithfulness_scores(self.res, n_images=self.n, stage=self.stage,
                                                 metric_params=self.metric_params, seed=self.cfg.seed)
        return self._scores

    @property
    def censored(self) -> pd.Series:
        return censored_apem(self.res.table, set(self.scores.image_id), self.stage)

    def setting(self) -> None:
        display.require(self.n > 0, "The configuration has no correctly classified image", "-p n_correct 24")
        s = self.scores
        methods = list(dict.fromkeys(s.method))
        display.show_markdown(
            f"**Setting.** {self.cfg.model}, the first {self.n} correctly classified images of the results table, "
            f"the cached stage-{self.stage} maps of {', '.join(map(thesis.label, methods))}; the target is the "
            f"model's prediction. Counts and timings on `{s.device.iloc[0]}` with {int(s.threads.iloc[0])} torch "
            f"thread(s)" + (" (quick Quantus settings)." if self.quick else ".") + " APEM of these maps: "
            f"{int(self.censored.sum())} of {len(s[s.metric == studies.APEM])} censored.")

    def parameters(self) -> pd.DataFrame:
        return parameter_table(self.metrics, self.metric_params, self.cfg)

    def score_table(self) -> pd.DataFrame:
        return score_table(self.scores, self.censored, seed=self.cfg.seed)

    def score_figure(self) -> None:
        display.show_figure(mean_score_figure(self.scores, self.censored, seed=self.cfg.seed))

    def agreement(self) -> pd.DataFrame:
        return agreement_view(self.scores)

    def agreement_figure(self) -> None:
        display.show_figure(agreement_figure(self.scores))

    def cost(self) -> pd.DataFrame:
        return cost_view(self.scores, seed=self.cfg.seed)

    def rerun_check(self) -> None:
        ap = self.scores[self.scores.metric == studies.APEM]
        same = int(((ap.eps_minus_rerun == ap.eps_minus_table) & (ap.eps_plus_rerun == ap.eps_plus_table)).sum())
        display.show_markdown(
            f"The timing run of APEM found the same $\\varepsilon^-$ and $\\varepsilon^+$ as the results table for "
            f"{same} of {len(ap)} maps. In the main run (every method and stage batched together) APEM forwarded "
            f"{cl.fmt(float(ap.n_forward_table.mean()), 1)} perturbed images per map on these maps (median "
            f"{cl.fmt(float(ap.n_forward_table.median()), 0)}).")

    def cost_figure(self) -> None:
        display.show_figure(cost_figure(self.scores))

    def claims(self) -> cl.Claims:
        return cl.Claims(chapter_claims(self.scores), alpha=self.alpha, context=seconds_sentence(self.scores))

    def verdicts(self) -> None:
        model = (f"Our model is {self.cfg.model} on {self.n} images; the thesis did not compare APEM with these "
                 "metrics, so every claim here is ours.")
        cens = (f"{int(self.censored.sum())} of the {len(self.scores[self.scores.metric == studies.APEM])} APEM scores are "
                "censored; they enter Kendall's τ at their stored bound.")
        self.claims().show(censored=cens, model=model)
