"""Chapter 1, APEM step by step: the plumbing of its page (figures, tables, generated prose).

The page (``notebooks/01_apem_step_by_step.md``) selects the walked image and map,
computes the direction with :func:`apem.metric.directions`, traces the searches with
:func:`apem.metric.trace`, compares the search modes with
:func:`apem.studies.compare_modes` and declares its claims itself. This module
holds what the page calls to show those results:

* :func:`image_outcomes`: one row per image from the comparison of the search
  modes (the unit of the chapter's claims: an image has many searches -- every
  method, stage and side -- which are not independent);
* :func:`map_figure`, :func:`walk_figure`, :func:`trace_figure`: Figures 3.2 and
  3.3 and the tested steps over the margin curve, from tensors;
* :func:`trace_table`, :func:`modes_table`: what each search found and cost;
* :func:`setting`, :func:`walk_text`, :func:`monotonicity_text`, :func:`notes`:
  prose generated from the numbers;
* :func:`exercise_values`: the numbers the exercises' solutions quote.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from apem import claims
from apem import thesis
from apem.data import class_name
from apem.figures import plots

MODES = ("thesis", "linear", "bisect")
SIDES = (("ε⁻ (relevance)", "minus"), ("ε⁺ (irrelevance)", "plus"))


# ----------------------------------------------------------------------------- per-image outcomes (tested)


def image_outcomes(M: pd.DataFrame, modes=("thesis", "bisect")) -> pd.DataFrame:
    """One row per image from :func:`apem.studies.compare_modes`'s table (one row per search).

    Columns: ``searches`` (defined searches), ``exact_searches`` (those with a
    ``linear`` answer), ``non_monotone`` (True when *any* of the image's exact
    searches flipped back; NaN without exact searches), ``equal_<mode>`` (True
    when *every* exact search of the image found linear's step; NaN without
    exact searches) and ``forward_<mode>`` (mean forward passes per defined
    search of the image, for every mode that searched them all).
    """
    ok = M[~M.undefined.astype(bool)]
    exact = ok[ok.eps_linear.notna()]
    ids = list(dict.fromkeys(ok.image_id))
    out = pd.DataFrame(index=pd.Index(ids, name="image_id"))
    out["searches"] = ok.groupby("image_id").size().reindex(ids).fillna(0).astype(int)
    out["exact_searches"] = exact.groupby("image_id").size().reindex(ids).fillna(0).astype(int)
    out["non_monotone"] = exact.groupby("image_id").non_monotone.max().reindex(ids).map(
        lambda v: np.nan if pd.isna(v) else bool(v)).astype(object)
    for m in modes:
        same = (exact[f"eps_{m}"] == exact.eps_linear)
        out[f"equal_{m}"] = same.groupby(exact.image_id).all().reindex(ids).astype(object)
        out[f"later_{m}"] = (exact[f"eps_{m}"] > exact.eps_linear).groupby(exact.image_id).sum().reindex(ids)
    for m in MODES:
        if m != "linear":
            out[f"forward_{m}"] = claims.per_image(ok, f"forward_{m}")
    return out


def check_choice(T: pd.DataFrame, ids: list, image: int, method: str, stages) -> None:
    """ValueError when the walked image, method or stage is not in the results (names what is)."""
    if method not in set(T.method):
        raise ValueError(f"method {method!r} is not in the results table (it has {sorted(set(T.method))})")
    if not 0 <= int(image) < len(ids):
        raise ValueError(f"image must be in 0..{len(ids) - 1} (there are {len(ids)} correct images), got {image}")
    if stages is not None and not set(stages) <= set(T.stage):
        raise ValueError(f"stage {sorted(stages)} is not among the configuration's stages {sorted(set(T.stage))}")


# ----------------------------------------------------------------------------- the walked image


def setting(cfg, row, method: str, stage: int) -> str:
    """The setting line: model, search, the image and the map."""
    return (f"**Setting.** {cfg.model} (`{cfg.preset}` preprocessing), `{cfg.search_mode}` search with bound "
            f"{cfg.search_bound}. **The image**: `{row.image_id}`, {_article(row.label_name)} *{row.label_name}*, "
            f"predicted as *{row.pred_name}* with confidence {row.confidence:.2f}. **The map**: "
            f"{thesis.label(method)}, stage {stage}.")


def defined(row) -> bool:
    """Whether both epsilons of the row are defined (a constant map gives no direction)."""
    return bool(np.isfinite(row.eps_minus) and np.isfinite(row.eps_plus))


def map_figure(x: torch.Tensor, R: torch.Tensor, label: str, method: str):
    """Figure 3.2: the image ``x`` (1, 3, H, W), its relevance map ``R`` and the irrelevance map ``1 - R``."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4))
    plots.show_image(axes[0], x[0].cpu(), label)
    plots.show_image(axes[1], R.cpu(), f"relevance R ({thesis.label(method)})")
    plots.show_image(axes[2], (1 - R).cpu(), "irrelevance 1 − R")
    fig.tight_layout()
    return fig


def walk_figure(model, x: torch.Tensor, d: dict, pred: int, eps: dict):
    """Figure 3.3: the perturbation and the perturbed image just before and at the change, for both maps.

    ``d``: ``{"minus": direction of R, "plus": direction of 1 - R}``; ``eps``: the stored epsilons, same keys.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(12, 6.4))
    for r_, (name, side) in enumerate((("relevance", "minus"), ("irrelevance", "plus"))):
        for k, e in enumerate((eps[side] - 1, eps[side])):
            with torch.no_grad():
                p = int(model(x + e * d[side]).argmax(1))
            pv = (e * d[side])[0].cpu()
            pv = (pv - pv.min()) / (pv.max() - pv.min() + 1e-12)
            plots.show_image(axes[r_, 2 * k], pv, f"{name}: perturbation, ε = {e}")
            plots.show_image(axes[r_, 2 * k + 1], (x + e * d[side])[0].clamp(0, 1).cpu(),
                             f"prediction: {class_name(p)}" + (" ✓" if p == pred else " ✗"))
    fig.tight_layout()
    return fig


def walk_text(row, d: dict, bound: int) -> str:
    """The walked image's epsilons, its APEM, the largest pixel change and its censoring, in words."""
    eps = {"minus": int(row.eps_minus), "plus": int(row.eps_plus)}
    cens = [s for s, c in (("ε⁻", row.censored_minus), ("ε⁺", row.censored_plus)) if c]
    big = float((eps["minus"] * d["minus"]).abs().max())
    return (f"Here $\\varepsilon^-$ = **{eps['minus']}** and $\\varepsilon^+$ = **{eps['plus']}**, so this image's "
            f"APEM is **{eps['plus'] - eps['minus']}**. The largest single-pixel change at $\\varepsilon^-$ is "
            f"{big:.3f} in [0, 1] units."
            + (f" {' and '.join(cens)} reached the search bound ({bound}) without a change: it is "
               "censored, a lower bound on the true value." if cens else " Neither search reached the bound."))


# ----------------------------------------------------------------------------- the three searches on this image


def trace_figure(model, x: torch.Tensor, d: dict, pred: int, traces: dict):
    """Every step each search tested on this image, over the margin along the line.

    ``traces``: ``{mode: {side label: apem.metric.trace(...)}}`` with the labels of :data:`SIDES`.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, (label, side) in zip(axes, SIDES):
        last = max(t["eps"] for m in traces for t in traces[m][label])
        grid = torch.unique(torch.logspace(0, np.log10(max(2, last * 1.3)), 60).round().long())
        with torch.no_grad():
            z = torch.cat([model(x + e * d[side]) for e in grid.tolist()])
        top2 = z.topk(2, 1).values
        other = torch.where(z.argmax(1) == pred, top2[:, 1], top2[:, 0])
        ax.plot(grid.cpu(), (z[:, pred] - other).cpu(), color="0.6", lw=1.5, label="margin along the line")
        for mk, (m, c) in zip("o^s", (("thesis", "C0"), ("linear", "C2"), ("bisect", "C3"))):
            if m in traces:
                t = [r for r in traces[m][label] if r["eps"] > 0]
                ax.scatter([r["eps"] for r in t], [r["margin"] for r in t], marker=mk, color=c, s=28, alpha=0.8,
                           label=f"{m}: {len(traces[m][label])} tested steps")
        ax.axhline(0, color="k", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("step ε")
        ax.set_ylabel("logit margin (predicted − best other)")
        ax.set_title(label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def trace_table(traces: dict) -> pd.DataFrame:
    """Each search's answer and forward passes on this image (from the traces of :func:`trace_figure`)."""
    rows = [{"mode": m, "side": label, "ε found": t[-1]["result"]["eps"],
             "censored": "yes" if t[-1]["result"]["censored"] else "no",
             "forward passes": t[-1]["result"]["n_forward"]}
            for m in traces for label, t in traces[m].items()]
    return pd.DataFrame(rows).pivot(index="mode", columns="side",
                                    values=["ε found", "censored", "forward passes"]).reindex(list(traces))


# ----------------------------------------------------------------------------- the modes compared on many images


def monotonicity_text(M: pd.DataFrame, O: pd.DataFrame, linear_cap: int) -> str:
    """One paragraph: how many searches and images the comparison has, and how many flipped back."""
    ok = M[~M.undefined.astype(bool)]
    ex = ok[ok.eps_linear.notna()]
    have = O.non_monotone.notna()
    nm_img = int(O.non_monotone[have].astype(bool).sum())
    return (f"The comparison has {_count(O.shape[0], 'image')} and {_count(len(ok), 'search')} with a defined "
            f"direction ({_count(int(M.undefined.sum()), 'constant map')} gave none); {len(ex)} of them had an answer "
            f"of at most {linear_cap} steps, so `linear` ran on them. The prediction flipped back within 64 steps "
            f"after its first change in **{int(ex.non_monotone.astype(bool).sum())} of "
            f"{_count(len(ex), 'search')}**, on **{nm_img} of {_count(int(have.sum()), 'image')}**. The claims below "
            "count images, not searches: the searches of one image share its model input and are not independent.")


def modes_table(M: pd.DataFrame, O: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Per mode: images whose every exact search equals linear (exact interval), later answers, cost."""
    ok = M[~M.undefined.astype(bool)]
    ex = ok[ok.eps_linear.notna()]
    have = O.non_monotone.notna()
    rows = []
    for m in MODES:
        row = {"mode": m}
        if m == "linear":
            row.update({"images with every search equal to linear": "(the reference)",
                        "searches later than linear": "–"})
        else:
            k, n = int(O[f"equal_{m}"][have].astype(bool).sum()), int(have.sum())
            row["images with every search equal to linear"] = _share_ci(k, n, alpha)
            row["searches later than linear"] = f"{int((ex[f'eps_{m}'] > ex.eps_linear).sum())} of {len(ex)}"
        src = ex if m == "linear" else ok
        row["forward passes per search"] = claims.fmt(float(src[f"forward_{m}"].mean()), 1) if len(src) else "–"
        row["ms per search"] = claims.fmt(1000 * float(src[f"seconds_{m}"].mean()), 1) if len(src) else "–"
        row["searches"] = f"{len(src):,}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("mode")


def notes(M: pd.DataFrame, O: pd.DataFrame, cfg, linear_cap: int) -> dict:
    """The verdicts' ``context``, ``censored`` and ``model`` notes for :class:`apem.claims.Claims`."""
    ok = M[~M.undefined.astype(bool)]
    cens = {m: int(ok[f"censored_{m}"].fillna(0).astype(bool).sum()) for m in ("thesis", "bisect")}
    return {
        "context": (f"The comparison used the first {_count(O.shape[0], 'correctly classified image')} "
                    "(`n_compare`); `linear`, "
                    f"one forward pass per step, ran only where the answer is at most {linear_cap} steps "
                    f"({int(ok.eps_linear.notna().sum())} of {_count(len(ok), 'search')}), so the monotonicity and "
                    "exactness claims speak for those searches."),
        "censored": (f"Censoring: {cens['bisect']} of {len(ok)} `bisect` and {cens['thesis']} `thesis` searches "
                     f"reached the bound ({cfg.search_bound}); they have no `linear` answer and do not enter the first "
                     "three claims."),
        "model": (f"Whether the prediction flips back is a property of the model: ours is {cfg.model}, the thesis's "
                  "VGG-16."),
    }


# ----------------------------------------------------------------------------- exercises


def exercise_values(T: pd.DataFrame, image_id: str, stage: int, O: pd.DataFrame, verdicts: claims.Claims,
                    exact_min: float) -> dict[str, str]:
    """The numbers the exercises' solutions quote (glue name -> text).

    ``T``: the results table; ``image_id``, ``stage``: the walked image and stage;
    ``O``: :func:`image_outcomes`; ``verdicts``: the chapter's decided claims
    (their level and number of tests); ``exact_min``: the share above which the
    "finds the exact first change" claims hold.
    """
    from apem.book.exercises import all_success_n

    rows = T[(T.image_id == image_id) & (T.stage == stage)]
    walk = "; ".join(
        f"{thesis.label(r.method)}: ε⁻ = {'≥ ' if r.censored_minus else ''}{claims.fmt(r.eps_minus, 0)}, "
        f"ε⁺ = {'≥ ' if r.censored_plus else ''}{claims.fmt(r.eps_plus, 0)}, APEM = {claims.fmt(r.apem, 0)}"
        for r in rows.itertuples())
    have = O.non_monotone.notna()
    return {"ex01_image": str(image_id), "ex01_stage": str(stage), "ex01_walk": walk,
            "ex01_compared": str(int(have.sum())), "ex01_alpha": f"{verdicts.alpha:g}",
            "ex01_exact_min": claims.fmt(exact_min, 0, pct=True),
            "ex01_n_min": str(all_success_n(exact_min, verdicts.alpha))}


def _share_ci(k: int, n: int, alpha: float) -> str:
    """``"k/n = x% [lo, hi]"`` with the Clopper-Pearson interval (``"–"`` for n = 0)."""
    if n == 0:
        return "–"
    from scipy import stats as sps

    ci = sps.binomtest(k, n).proportion_ci(confidence_level=1 - alpha, method="exact")
    return (f"{k}/{n} = {claims.fmt(k / n, 1, pct=True)} [{claims.fmt(ci.low, 1, pct=True)}, "
            f"{claims.fmt(ci.high, 1, pct=True)}]")


def _count(n: int, noun: str) -> str:
    """``n`` and ``noun`` in the number it needs: "1 search", "2 searches"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith(('s', 'sh', 'ch', 'x')) else 's'}"


def _article(word: str) -> str:
    return "an" if str(word)[:1].lower() in "aeiou" else "a"
