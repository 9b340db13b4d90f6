"""Chapter 4, interpretable visualisation versus explanation: APEM per visualisation stage (Table 4.4).

Claims, on the correctly classified images (one value per image):

* per method, "each visualisation step lowers APEM": AllOf of Paired claims,
  stage k against stage k + 1;
* "the method losing the most APEM (first stage to last) is the Gradient":
  AllOf of Paired claims, the Gradient's per-image drop against each other
  method's (decided by tests, whichever method's drop looks largest).

The section on the map encoding reads :mod:`apem.studies.encoding`
(``encoding_shift``, ``encoding_summary``).
"""

from __future__ import annotations

import pandas as pd

from apem import claims as cl, stats, thesis
from apem.figures import charts
from apem.figures import plots
from apem.book import display
from apem.figures.charts import censored_boxes, censored_total
from apem.run import results

CLAIMED_LARGEST = "gradient"  # the thesis: the Gradient loses the most APEM to the visualisation


def drops(C: pd.DataFrame, first: int, last: int) -> dict[str, pd.Series]:
    """Per method, per image: APEM at stage ``first`` minus APEM at stage ``last``."""
    out = {}
    for m in dict.fromkeys(C.method):
        w = C[C.method == m].pivot(index="image_id", columns="stage", values="apem")
        out[m] = (w[first] - w[last]).dropna()
    return out


def chapter_claims(C: pd.DataFrame) -> list:
    """The chapter's claims on the correct images ``C`` (every stage)."""
    methods = list(dict.fromkeys(C.method))
    stages = sorted(int(s) for s in C.stage.unique())
    steps = list(zip(stages[:-1], stages[1:]))
    one = "a single visualisation stage: nothing to compare"
    out = []
    for m in methods:
        per = {s: cl.per_image(C[(C.method == m) & (C.stage == s)], "apem") for s in stages}
        out.append(cl.AllOf(
            f"{thesis.label(m)}: each visualisation step lowers APEM",
            of=[cl.Paired(f"{thesis.label(m)}: APEM at stage {a} above stage {b}", a=per[a], b=per[b],
                          names=(f"stage {a}", f"stage {b}")) for a, b in steps],
            applicable=len(steps) > 0, reason=one))
    first, last = (stages[0], stages[-1]) if stages else (None, None)
    g = thesis.label(CLAIMED_LARGEST)
    have = CLAIMED_LARGEST in methods and len(methods) > 1 and len(steps) > 0
    why = one if not steps else (f"the configuration has no {g} maps" if CLAIMED_LARGEST not in methods
                                 else "a single method: nothing to compare")
    d = drops(C, first, last) if steps else {}
    out.append(cl.AllOf(
        f"The method losing the most APEM from stage {first} to {last} is the {g}",
        of=[cl.Paired(f"{g}'s drop is larger than {thesis.label(o)}'s", a=d.get(CLAIMED_LARGEST), b=d.get(o),
                      names=(f"{g}'s drop", f"{thesis.label(o)}'s drop"))
            for o in methods if o != CLAIMED_LARGEST] if have else [],
        applicable=have, reason=why))
    return out


class Page:
    """Chapter 4 on the correctly classified images, every stage of the configuration."""

    def __init__(self, params="default", overrides=None, *, alpha: float = 0.05, encoding_images: int | None = 8):
        self.res = results(params, progress=False, **dict(overrides or {}))
        self.cfg, T = self.res.cfg, self.res.table
        self.alpha, self.encoding_images = alpha, encoding_images
        self.C = T[T.group == "correct"]
        self.methods = display.method_order(self.C) if len(self.C) else []
        self.stages = sorted(int(s) for s in self.C.stage.unique())

    def setting(self) -> None:
        display.require(len(self.C) > 0, "The configuration has no correctly classified image", "-p n_correct 24")
        display.require(len(self.stages) > 1, f"The configuration has one visualisation stage ({self.stages}), so "
                       "there is nothing to compare across stages", "-p stages [1,2,3]")
        display.show_markdown(
            f"**Setting.** {self.cfg.model}, {self.C.image_id.nunique()} correctly classified images, methods "
            f"{', '.join(map(thesis.label, self.methods))}, stages {', '.join(map(str, self.stages))}, map encoding "
            f"`{self.cfg.map_encoding}`. {display.censoring_note(self.C)}")

    def stage_maps(self) -> None:
        iid = self.C.image_id.iloc[0]
        x = self.res.image_tensors([iid])[0]
        name = self.C[self.C.image_id == iid].label_name.iloc[0]
        fig = plots.plot_stage_grid(x, {m: {s: self.res.map(iid, m, s) for s in self.stages} for m in self.methods},
                                    class_name=name)
        display.show_figure(fig)

    @property
    def S(self) -> pd.DataFrame:
        return stats.summary_table(self.C, by=["method", "stage"], seed=self.cfg.seed)

    def table_4_4(self) -> pd.DataFrame:
        return display.summary_view(self.S, thesis=thesis.TABLE_4_4.set_index(["method", "stage"]))

    def stage_boxes(self) -> None:
        display.show_figure(censored_boxes(
            self.C, hue="stage", title=f"Correctly classified images, stages {', '.join(map(str, self.stages))} "
                                       f"(censored counts per stage under each method)"))

    def stage_pairs(self) -> None:
        """Per method: per-image APEM, stage against stage (better / equal / worse)."""
        P = stats.pairwise_outcomes(self.C, "apem", by="stage", within="method")
        P["a"] = P.a.map(lambda s: f"stage {s}")
        P["b"] = P.b.map(lambda s: f"stage {s}")
        for m in self.methods:
            sub = self.C[self.C.method == m]
            display.show_figure(charts.pairwise_bars(
                P[P.method == m], title=f"{thesis.label(m)}: per-image APEM, stage against stage "
                                        f"({censored_total(sub)})"))

    def drop_table(self) -> pd.DataFrame:
        """Per method: the median and mean per-image APEM drop from the first stage to the last.

        ``images censored``: images whose APEM at either end is censored (their drop is not exact)."""
        first, last = self.stages[0], self.stages[-1]
        d = drops(self.C, first, last)
        ends = self.C[self.C.stage.isin([first, last])]
        cens = stats.censored(ends, "apem").groupby([ends.method, ends.image_id]).any().groupby(level=0).sum()
        rows = [{"method": thesis.label(m), "images": len(v),
                 f"images censored at stage {first} or {last}": int(cens.get(m, 0)),
                 f"median drop {first} → {last}": cl.fmt(float(v.median()), 1),
                 f"mean drop {first} → {last}": cl.fmt(float(v.mean()), 1),
                 "images where it drops": f"{int((v > 0).sum())} of {len(v)}"}
                for m, v in d.items()]
        return pd.DataFrame(rows).set_index("method")

    # ------------------------------------------------------------------ the map encoding
    def encoding(self) -> pd.DataFrame:
        """Per method and stage: how far the epsilons move when the maps are encoded as the thesis's files were."""
        from apem.studies.encoding import encoding_shift, encoding_summary

        E = encoding_shift(self.res, n_images=self.encoding_images)
        out = encoding_summary(E)
        if "method" in out.index.names:
            out = out.rename(index=thesis.label, level="method")
        elif "method" in out.columns:
            out = out.assign(method=out.method.map(thesis.label))
        return out

    # ------------------------------------------------------------------ verdicts
    def claims(self) -> cl.Claims:
        return cl.Claims(chapter_claims(self.C), alpha=self.alpha)

    def verdicts(self) -> None:
        n = self.C.image_id.nunique()
        model = (f"Our model is {self.cfg.model} on {n} images; the thesis measured VGG-16 on 5,000. How much a "
                 "visualisation step costs depends on how the model spreads its gradient over pixels and channels.")
        self.claims().show(censored=display.censoring_note(self.C), model=model)
