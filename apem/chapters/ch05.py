"""Chapter 5, the explanation filter (thesis section 3.2, Algorithm 2; section 4.5, Figures 4.8 and 4.9).

The page (``notebooks/05_filtering_explanations.md``) selects the filter's maps, declares its
claims and decides them; this module holds what it calls to show them.

The filter ran on the first ``filter_images`` correctly classified images, every
method and stage (:func:`apem.run.run_filter`). Its table has one row per map:
``apem_before, apem_after, steps, removed_fraction, seconds``; the input map's
censoring flags come from the main results table (:func:`with_input_censoring`: the
filter's own table does not record whether the searches of the *filtered* map were censored).

A map whose APEM is undefined (a constant map: all zero has no relevance
direction, all one no irrelevance direction) has no explanation to lose: the
filter returns it unchanged, and the page leaves it out of every claim. The unit of the
statistical claims is the image: an image's maps (methods x stages) are averaged
into one value by :func:`apem.claims.per_image`.

* tables: :func:`with_input_censoring` (the filter's table with its inputs' censoring),
  :func:`filter_summary` (per method and stage, for reading);
* figures: :func:`before_after` (Figure 4.8), :func:`every_method` (Figure 4.9);
* prose: :func:`setting`, :func:`notes` (the verdicts' discussion), :func:`apem_text`;
* the exercises' numbers: :func:`exercise_values`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from apem import claims, thesis
from apem.book import display
from apem.figures import plots

#: "substantial": the share of a map's non-zero pixels the filter must remove, by default
#: (the chapter parameter ``removed_threshold``; ours: the thesis reported no share removed)
REMOVED_THRESHOLD = 0.10


# ----------------------------------------------------------------------------- the table


def with_input_censoring(F: pd.DataFrame, T: pd.DataFrame) -> pd.DataFrame:
    """The filter table with the input map's ``censored_minus/plus`` and class name from the results table.

    Adds ``defined``: the input map has an APEM (a constant map has none, and nothing to filter).
    """
    keys = ["image_id", "method", "stage"]
    extra = T[keys + ["censored_minus", "censored_plus", "label_name"]].drop_duplicates(keys)
    out = F.merge(extra, on=keys, how="left", validate="one_to_one")
    for c in ("censored_minus", "censored_plus"):
        out[c] = out[c].fillna(False).astype(bool)
    out["defined"] = out.apem_before.notna()
    return out


def apem_text(v: float, censored_minus: bool = False, censored_plus: bool = False) -> str:
    """An APEM for a title: ``"280"``, ``"≥ 280"`` (censored ε⁺), ``"≤ 280"`` (censored ε⁻), ``"undefined"``."""
    if v is None or not np.isfinite(v):
        return "undefined"
    if censored_minus and censored_plus:
        return f"{v:.0f} (undetermined)"
    return ("≥ " if censored_plus else "≤ " if censored_minus else "") + f"{v:.0f}"


def filter_summary(F: pd.DataFrame) -> pd.DataFrame:
    """Per method and stage: maps, undefined and censored inputs, steps, share removed, APEM before and after.

    Formatted for reading; the APEM columns are over the maps with a defined APEM.
    """
    rows = []
    for (m, s), g in F.groupby(["method", "stage"], sort=False):
        d = g[g.defined]
        cens = d.censored_minus | d.censored_plus
        rows.append({
            "method": thesis.label(m), "stage": int(s), "maps": len(g), "undefined": int((~g.defined).sum()),
            "censored input": int(cens.sum()),
            "steps (median)": claims.fmt(float(d.steps.median()) if len(d) else np.nan, 0),
            "removed (mean)": claims.fmt(float(d.removed_fraction.mean()) if len(d) else np.nan, 0, pct=True),
            "removed (range)": (f"{claims.fmt(float(d.removed_fraction.min()), 0, pct=True)} to "
                                f"{claims.fmt(float(d.removed_fraction.max()), 0, pct=True)}") if len(d) else "–",
            "APEM before (median)": claims.fmt(float(d.apem_before.median()) if len(d) else np.nan, 0),
            "APEM after (median)": claims.fmt(float(d.apem_after.median()) if len(d) else np.nan, 0),
            "APEM rose": f"{int((d.apem_after > d.apem_before).sum())} of {len(d)}",
            "seconds per map": claims.fmt(float(g.seconds.mean()), 1),
        })
    return pd.DataFrame(rows).set_index(["method", "stage"])


# ----------------------------------------------------------------------------- prose


def setting(cfg, F: pd.DataFrame) -> str:
    """The setting line: model, filter images, methods, stages, maps, search, undefined maps, censored inputs."""
    ids = list(dict.fromkeys(F.image_id))
    methods = display.method_order(F)
    stages = sorted(int(s) for s in F.stage.unique())
    und = int((~F.defined).sum())
    return (f"**Setting.** {cfg.model}, the explanation filter on {len(ids)} correctly classified "
            f"image{'s' if len(ids) != 1 else ''}, methods {', '.join(map(thesis.label, methods))}, stages "
            f"{', '.join(map(str, stages))}: {len(F)} maps, `{cfg.search_mode}` search with bound "
            f"{cfg.search_bound}. {und} of {len(F)} maps have an undefined APEM (constant maps) and are left out of "
            f"the claims. Input maps: {display.censoring_note(F)}")


def notes(cfg, F: pd.DataFrame, removed_threshold: float = REMOVED_THRESHOLD) -> dict[str, str]:
    """The verdicts' discussion: ``context`` (maps whose APEM rose; the threshold is ours), ``model``, ``censored``."""
    D = F[F.defined]
    rose = int((D.apem_after > D.apem_before).sum())
    n = F.image_id.nunique()
    return {
        "context": (f"On {rose} of {len(D)} maps the filtered map's APEM is higher than the input's: removing the "
                    "weakest levels can help, as the thesis noted for simplified maps. The thesis showed the filter on "
                    "examples (Figures 4.8, 4.9) and reported no share removed, so the threshold of "
                    f"{claims.fmt(removed_threshold, 0, pct=True)} is ours."),
        "model": (f"Our model is {cfg.model} and the filter ran on {n} image{'s' if n != 1 else ''}; the thesis "
                  "filtered VGG-16 maps and showed examples. A censored input map's APEM is a bound, so the filter "
                  "compares bounds on it."),
        "censored": display.censoring_note(F),
    }


# ----------------------------------------------------------------------------- figures


def _row(F: pd.DataFrame, iid, m, s):
    return F[(F.image_id == iid) & (F.method == m) & (F.stage == s)].iloc[0]


def before_after(res, F: pd.DataFrame, method: str, stage: int):
    """Figure 4.8: the filter images (top), ``method``'s maps at ``stage`` before (middle) and after (bottom).

    ``res``: the :class:`apem.run.Results` the maps and images are read from; ``F``: :func:`with_input_censoring`.
    """
    ids = list(dict.fromkeys(F.image_id))
    x = res.image_tensors(ids)
    fig, axes = plt.subplots(3, len(ids), figsize=(2.8 * len(ids) + 0.6, 8.4), squeeze=False)
    for j, iid in enumerate(ids):
        r = _row(F, iid, method, stage)
        plots.show_image(axes[0, j], x[j], r.label_name)
        plots.show_image(axes[1, j], res.map(iid, method, stage),
                         f"before: APEM {apem_text(r.apem_before, r.censored_minus, r.censored_plus)}")
        removed = claims.fmt(r.removed_fraction, 0, pct=True)
        plots.show_image(axes[2, j], res.filtered_map(iid, method, stage),
                         f"after: APEM {apem_text(r.apem_after)}\n{removed} removed")
    axes[1, 0].set_ylabel(f"{thesis.label(method)}, stage {stage}")
    sub = F[(F.method == method) & (F.stage == stage)]
    fig.suptitle(f"{thesis.label(method)} maps, stage {stage}, before and after the filter "
                 f"({int((sub.censored_minus | sub.censored_plus).sum())} of {len(sub)} input maps censored)")
    fig.tight_layout()
    return fig


def every_method(res, F: pd.DataFrame, image_id: str | None = None):
    """Figure 4.9: every method and stage on one filter image (default: the first), each map beside its filtered one."""
    iid = image_id if image_id is not None else F.image_id.iloc[0]
    ms, ss = display.method_order(F), sorted(int(s) for s in F.stage.unique())
    fig, axes = plt.subplots(len(ms), 2 * len(ss), figsize=(2.3 * 2 * len(ss), 2.6 * len(ms)), squeeze=False)
    for i, m in enumerate(ms):
        for k, s in enumerate(ss):
            r = _row(F, iid, m, s)
            plots.show_image(axes[i, 2 * k], res.map(iid, m, s),
                             f"stage {s}\nAPEM {apem_text(r.apem_before, r.censored_minus, r.censored_plus)}")
            plots.show_image(axes[i, 2 * k + 1], res.filtered_map(iid, m, s),
                             f"stage {s}, filtered\nAPEM {apem_text(r.apem_after)}")
        axes[i, 0].set_ylabel(thesis.label(m))
    one = F[F.image_id == iid]
    fig.suptitle(f"{one.label_name.iloc[0]}: maps and their filtered versions "
                 f"({int((one.censored_minus | one.censored_plus).sum())} of {len(one)} input maps censored)")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- exercises


def exercise_values(F: pd.DataFrame | None, cfg, removed_threshold: float = REMOVED_THRESHOLD) -> dict[str, str]:
    """The numbers the exercises' solutions quote (name -> text), from the filter table ``F``
    (:func:`with_input_censoring`; None when the configuration ran no filter) of the configuration ``cfg``."""
    if F is None or F.empty:
        none = "– (this configuration ran no filter: filter_images is 0)"
        per_image, removed, by_method, steps, seconds = pd.Series(dtype=float), none, none, none, none
    else:
        d = F[F.defined]
        per_image = d.groupby("image_id").removed_fraction.mean()
        removed = ", ".join(claims.fmt(float(v), 0, pct=True) for v in per_image)
        by_method = ", ".join(f"{thesis.label(m)} {claims.fmt(float(v), 0, pct=True)}"
                              for m, v in d.groupby("method", sort=False).removed_fraction.mean().items())
        steps, seconds = claims.fmt(float(d.steps.median()), 0), claims.fmt(float(F.seconds.mean()), 1)
    return {"ex05_threshold": claims.fmt(removed_threshold, 0, pct=True), "ex05_images": str(int(per_image.size)),
            "ex05_removed": removed, "ex05_by_method": by_method, "ex05_steps": steps, "ex05_seconds": seconds,
            "ex05_fast_k": str(cfg.filter_fast_k)}
