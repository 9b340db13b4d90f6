"""Chapter 5, the explanation filter (thesis section 3.2, Algorithm 2; section 4.5, Figures 4.8 and 4.9).

The filter ran on the first ``filter_images`` correctly classified images, every
method and stage (:func:`apem.run.run_filter`). Its table has one row per map:
``apem_before, apem_after, steps, removed_fraction, seconds``; the input map's
censoring flags come from the main results table (the filter's own table does
not record whether the searches of the *filtered* map were censored).

A map whose APEM is undefined (a constant map: all zero has no relevance
direction, all one no irrelevance direction) has no explanation to lose: the
filter returns it unchanged, and it is left out of every claim. The unit of the
statistical claims is the image: an image's maps (methods x stages) are averaged
into one value by :func:`apem.claims.per_image`.
"""

from __future__ import annotations



import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from apem import claims as cl, thesis
from apem.figures import plots
from apem.book import display
from apem.run import results

#: "substantial": the share of a map's non-zero pixels the filter must remove, by default
REMOVED_THRESHOLD = 0.10
NO_EXPLANATION = "every map is constant (its APEM is undefined): there is no explanation to lose"


# ----------------------------------------------------------------------------- the table


def with_input_censoring(F: pd.DataFrame, T: pd.DataFrame) -> pd.DataFrame:
    """The filter table with the input map's ``censored_minus/plus`` and class name from the results table."""
    keys = ["image_id", "method", "stage"]
    extra = T[keys + ["censored_minus", "censored_plus", "label_name"]].drop_duplicates(keys)
    out = F.merge(extra, on=keys, how="left", validate="one_to_one")
    for c in ("censored_minus", "censored_plus"):
        out[c] = out[c].fillna(False).astype(bool)
    out["defined"] = out.apem_before.notna()
    return out


def apem_text(v: float, censored_minus: bool = False, censored_plus: bool = False) -> str:
    """An APEM for a title: ``"280"``, ``"≥ 280"`` (censored ε⁺), ``"≤ 280"`` (censored ε⁻), ``"–"`` (undefined)."""
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
            "steps (median)": cl.fmt(float(d.steps.median()) if len(d) else np.nan, 0),
            "removed (mean)": cl.fmt(float(d.removed_fraction.mean()) if len(d) else np.nan, 0, pct=True),
            "removed (range)": (f"{cl.fmt(float(d.removed_fraction.min()), 0, pct=True)} to "
                                f"{cl.fmt(float(d.removed_fraction.max()), 0, pct=True)}") if len(d) else "–",
            "APEM before (median)": cl.fmt(float(d.apem_before.median()) if len(d) else np.nan, 0),
            "APEM after (median)": cl.fmt(float(d.apem_after.median()) if len(d) else np.nan, 0),
            "APEM rose": f"{int((d.apem_after > d.apem_before).sum())} of {len(d)}",
            "seconds per map": cl.fmt(float(g.seconds.mean()), 1),
        })
    return pd.DataFrame(rows).set_index(["method", "stage"])


# ----------------------------------------------------------------------------- claims


def chapter_claims(F: pd.DataFrame, removed_threshold: float = REMOVED_THRESHOLD) -> list:
    """The chapter's claims on the filter table ``F`` (:func:`with_input_censoring`).

    * the filter never lowers a map's APEM: an Invariant over the maps with a defined APEM
      (Algorithm 2 returns the map from before the first drop);
    * it removes more than ``removed_threshold`` of a map's non-zero pixels: a Location claim
      on the per-image mean share removed (one value per image);
    * it does so for every method: AllOf of Location claims, one per method.

    Maps with an undefined APEM are left out; when none is defined, the claims are not applicable.
    """
    D = F[F.defined]
    thr = cl.fmt(removed_threshold, 0, pct=True)
    some = len(D) > 0
    out = [
        cl.Invariant("The filter never lowers a map's APEM",
                     violations=int((D.apem_after < D.apem_before).sum()), n=len(D), what="maps with a defined APEM",
                     applicable=some, reason=NO_EXPLANATION),
        cl.Location(f"The filter removes a substantial part of the map (more than {thr} of its non-zero pixels) "
                    "without losing explanation",
                    values=cl.per_image(D, "removed_fraction") if some else [], threshold=removed_threshold,
                    what="share removed (per-image mean over its maps)", applicable=some, reason=NO_EXPLANATION),
    ]
    parts = []
    for m in dict.fromkeys(F.method):
        Dm = D[D.method == m]
        parts.append(cl.Location(f"{thesis.label(m)}: more than {thr} removed",
                                 values=cl.per_image(Dm, "removed_fraction") if len(Dm) else [],
                                 threshold=removed_threshold, what=f"share of {thesis.label(m)}'s maps removed",
                                 applicable=len(Dm) > 0,
                                 reason=f"every {thesis.label(m)} map is constant: there is no explanation to lose"))
    out.append(cl.AllOf("The filter removes a substantial part of the map for every method", of=parts,
                        applicable=some, reason=NO_EXPLANATION))
    return out


# ----------------------------------------------------------------------------- the page


class Page:
    """Chapter 5: the filter's example maps (``method`` at ``stage``), its summary, its claims."""

    def __init__(self, params="default", overrides=None, *, alpha: float = 0.05,
                 removed_threshold: float = REMOVED_THRESHOLD, method: str | None = None, stage: int | None = None):
        self.res = results(params, progress=False, **dict(overrides or {}))
        self.cfg = self.res.cfg
        self.alpha, self.removed_threshold = alpha, float(removed_threshold)
        F = self.res.filter_table
        self.F = None if F is None or F.empty else with_input_censoring(F, self.res.table)
        self._method, self._stage = method, stage

    def setting(self) -> None:
        display.require(self.F is not None, "The explanation filter (Algorithm 2) ran on no image: filter_images is 0",
                       "apem book --chapter 5 -p filter_images 2")
        F, cfg = self.F, self.cfg
        self.methods = display.method_order(F)
        self.stages = sorted(int(s) for s in F.stage.unique())
        self.ids = list(dict.fromkeys(F.image_id))
        self.method = self._method or ("gradient" if "gradient" in self.methods else self.methods[0])
        self.stage = int(self._stage) if self._stage is not None else (2 if 2 in self.stages else self.stages[0])
        if self.method not in self.methods or self.stage not in self.stages:
            raise ValueError(f"method {self.method!r} / stage {self.stage} are not in the filter's table "
                             f"(methods {self.methods}, stages {self.stages})")
        und = int((~F.defined).sum())
        display.show_markdown(
            f"**Setting.** {cfg.model}, the explanation filter on {len(self.ids)} correctly classified "
            f"image{'s' if len(self.ids) != 1 else ''}, methods {', '.join(map(thesis.label, self.methods))}, stages "
            f"{', '.join(map(str, self.stages))}: {len(F)} maps, `{cfg.search_mode}` search with bound "
            f"{cfg.search_bound}. {und} of {len(F)} maps have an undefined APEM (constant maps) and are left out of "
            f"the claims. Input maps: {display.censoring_note(F)}")

    # ------------------------------------------------------------------ figures
    def _row(self, iid, m, s):
        F = self.F
        return F[(F.image_id == iid) & (F.method == m) & (F.stage == s)].iloc[0]

    def before_after(self) -> None:
        """Figure 4.8: the images, the maps of ``method`` at ``stage`` before and after the filter."""
        ids, m, s = self.ids, self.method, self.stage
        x = self.res.image_tensors(ids)
        fig, axes = plt.subplots(3, len(ids), figsize=(2.8 * len(ids) + 0.6, 8.4), squeeze=False)
        for j, iid in enumerate(ids):
            r = self._row(iid, m, s)
            plots.show_image(axes[0, j], x[j], r.label_name)
            plots.show_image(axes[1, j], self.res.map(iid, m, s),
                             f"before: APEM {apem_text(r.apem_before, r.censored_minus, r.censored_plus)}")
            plots.show_image(axes[2, j], self.res.filtered_map(iid, m, s),
                             f"after: APEM {apem_text(r.apem_after)}\n{cl.fmt(r.removed_fraction, 0, pct=True)} removed")
        axes[1, 0].set_ylabel(f"{thesis.label(m)}, stage {s}")
        sub = self.F[(self.F.method == m) & (self.F.stage == s)]
        fig.suptitle(f"{thesis.label(m)} maps, stage {s}, before and after the filter "
                     f"({int((sub.censored_minus | sub.censored_plus).sum())} of {len(sub)} input maps censored)")
        fig.tight_layout()
        display.show_figure(fig)

    def every_method(self) -> None:
        """Figure 4.9: every method and stage on the first filter image, each map beside its filtered version."""
        iid, F = self.ids[0], self.F
        ms, ss = self.methods, self.stages
        fig, axes = plt.subplots(len(ms), 2 * len(ss), figsize=(2.3 * 2 * len(ss), 2.6 * len(ms)), squeeze=False)
        for i, m in enumerate(ms):
            for k, s in enumerate(ss):
                r = self._row(iid, m, s)
                plots.show_image(axes[i, 2 * k], self.res.map(iid, m, s),
                                 f"stage {s}\nAPEM {apem_text(r.apem_before, r.censored_minus, r.censored_plus)}")
                plots.show_image(axes[i, 2 * k + 1], self.res.filtered_map(iid, m, s),
                                 f"stage {s}, filtered\nAPEM {apem_text(r.apem_after)}")
            axes[i, 0].set_ylabel(thesis.label(m))
        one = F[F.image_id == iid]
        fig.suptitle(f"{one.label_name.iloc[0]}: maps and their filtered versions "
                     f"({int((one.censored_minus | one.censored_plus).sum())} of {len(one)} input maps censored)")
        fig.tight_layout()
        display.show_figure(fig)

    # ------------------------------------------------------------------ tables
    def summary(self) -> pd.DataFrame:
        return filter_summary(self.F)

    # ------------------------------------------------------------------ verdicts
    def claims(self) -> cl.Claims:
        D = self.F[self.F.defined]
        rose = int((D.apem_after > D.apem_before).sum())
        context = (f"On {rose} of {len(D)} maps the filtered map's APEM is higher than the input's: removing the weakest "
                   "levels can help, as the thesis noted for simplified maps. The thesis showed the filter on examples "
                   "(Figures 4.8, 4.9) and reported no share removed, so the threshold of "
                   f"{cl.fmt(self.removed_threshold, 0, pct=True)} is ours.")
        return cl.Claims(chapter_claims(self.F, self.removed_threshold), alpha=self.alpha, context=context)

    def verdicts(self) -> None:
        n = len(self.ids)
        model = (f"Our model is {self.cfg.model} and the filter ran on {n} image{'s' if n != 1 else ''}; the thesis "
                 "filtered VGG-16 maps and showed examples. A censored input map's APEM is a bound, so the filter "
                 "compares bounds on it.")
        self.claims().show(censored=display.censoring_note(self.F), model=model)
