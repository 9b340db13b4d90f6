"""Chapter 11, sanity checks: the cascading model randomisation of Adebayo et al. (2018) (beyond the thesis).

The page (``notebooks/11_sanity_checks.md``) runs the study
(:func:`apem.studies.sanity_check`): the model's stages are re-initialised from
the top, cumulatively; at every ``every``-th step and at the last (every layer
random) each method's maps are recomputed for the trained model's predicted
class, compared with the trained maps (Spearman's rho, SSIM), and the maps of
one visualisation stage are scored with APEM **on the trained model**. The page
declares its claims (all ours): a method passes the randomisation test when its
fully randomised maps keep little of the trained ones (per-image Spearman rho
below ``threshold``, :class:`apem.claims.Location`; not applicable, never passed,
when every randomised map is constant), and APEM scores the trained maps above
the randomised ones and the randomised ones above shuffled maps
(:class:`apem.claims.Paired`).

This module is the plumbing: the shuffled baseline as rows like the study's
(:func:`shuffled_rows`), the tables formatted for reading (:func:`cascade_table`,
:func:`last_step_similarity`, :func:`apem_summary`, every mean with its bootstrap
interval over images, :func:`apem.stats.bootstrap_ci`, censoring counted beside
every APEM), the figures (:func:`example_figure`, :func:`curve_figure`,
:func:`apem_figure`), the generated sentences (:func:`setting`,
:func:`constant_note`, :func:`agreement_with_table`) and the numbers the
exercises quote (:func:`exercise_values`).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from apem import claims, stats, thesis
from apem.book import display
from apem.figures import plots

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
            "results table's on " + ", ".join(f"{claims.fmt(by_m[m], 0, pct=True)} of the images for {thesis.label(m)}"
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


# ----------------------------------------------------------------------------- the claims' reasons

EVERY_CONSTANT = "every randomised map is constant: the test has nothing to compare"
ALL_UNDEFINED = "APEM is undefined for every randomised map (all constant): nothing to score"
NO_SHUFFLES = "the shuffled baseline was not computed (shuffles is 0)"


# ----------------------------------------------------------------------------- prose and the cascade


def cascade_table(layers, sim: pd.DataFrame) -> pd.DataFrame:
    """The cascade: one row per step (the stage randomised last, on top of the rows above), and whether the study
    evaluated it. ``layers``: the stage names in the order they are randomised."""
    steps = set(sim.step.unique())
    out = pd.DataFrame({"step": range(1, len(layers) + 1), "stage randomised": list(layers)})
    out["evaluated"] = ["yes" if s in steps else "" for s in out.step]
    return out.set_index("step")


def undefined_censored(ap: pd.DataFrame) -> tuple[int, int, int]:
    """``(censored, scored, undefined)``: the APEM scores of the study with a censored search, those defined, and
    those undefined (constant maps)."""
    scored = ap.apem.notna()
    cens = int((ap.censored_minus.astype(bool) | ap.censored_plus.astype(bool))[scored].sum())
    return cens, int(scored.sum()), int((~scored).sum())


def setting(cfg, n: int, methods, n_layers: int, sim: pd.DataFrame, ap: pd.DataFrame, stage: int,
            smoothgrad: dict | None, has_shuffles: bool) -> str:
    """The page's setting: model, images, methods, the cascade's evaluated steps, APEM's censoring."""
    steps = sorted(sim.step.unique())
    cens, scored, _ = undefined_censored(ap)
    return (f"**Setting.** {cfg.model}, the first {n} correctly classified images, methods "
            f"{', '.join(map(thesis.label, methods))}; {n_layers} randomisation stages, of which steps "
            f"{', '.join(map(str, steps))} are evaluated (step {max(steps)}: every layer random). APEM at "
            f"visualisation stage {stage}: {cens} of {scored} scored maps censored."
            + (f" SmoothGrad here uses n = {smoothgrad['n']} noisy copies with the trained model's prediction as the "
               "target of every copy, for the trained and the randomised maps alike." if smoothgrad else "")
            + ("" if has_shuffles else " The configuration has no shuffles: the comparison with shuffled maps "
               "is not computed."))


# ----------------------------------------------------------------------------- exercises


def exercise_values(sim: pd.DataFrame, threshold: float, smoothgrad_n: int) -> dict[str, str]:
    """The numbers the exercises' solutions quote (names ``ex11_...``): the median Spearman rho of the fully
    randomised maps at the last visualisation stage, and which methods pass at ``threshold`` and at 0.2."""
    full = sim[(sim.step == sim.step.max()) & (sim.vis_stage == sim.vis_stage.max())]
    med = full.groupby("method", sort=False).spearman.median()
    rho = ", ".join(f"{thesis.label(m)} {claims.fmt(float(v), 2, sign=True)}" for m, v in med.items())
    return {"ex11_threshold": claims.fmt(threshold, 2), "ex11_rho": rho,
            "ex11_pass_02": ", ".join(thesis.label(m) for m, v in med.items() if v < 0.2) or "none",
            "ex11_pass": ", ".join(thesis.label(m) for m, v in med.items() if v < threshold) or "none",
            "ex11_smoothgrad_n": str(smoothgrad_n), "ex11_vis_stage": str(int(sim.vis_stage.max()))}
