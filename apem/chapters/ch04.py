"""Chapter 4, visualisation versus explanation: what its page does not compute itself.

The page (``notebooks/04_visualisation_vs_explanation.md``) selects the rows (correctly classified images, every stage), declares the
claims and computes the statistics with :mod:`apem.stats` and the two side studies
(:mod:`apem.studies.encoding`, :mod:`apem.studies.stage_order`). This module keeps the
plumbing it calls, each a function of data frames:

* :func:`drops`: each method's per-image APEM drop from the first stage to the last
  (the values of the claim "the Gradient loses the most");
* :func:`drop_table`: that drop summarised, with the images censored at either end;
* :func:`stage_pairs`: the stage-against-stage outcomes labelled for the figure;
* :func:`encoding_view` and :func:`order_view`: the two studies' summaries for reading;
* :func:`setting`, :func:`order_sentence`: sentences generated from the numbers;
* :func:`exercise_values`: the numbers the exercises' solutions quote.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from apem import claims, stats, thesis
from apem.book import display


def drops(C: pd.DataFrame, first: int, last: int) -> claims.PerGroup:
    """Per method, per image: APEM at stage ``first`` minus APEM at stage ``last``.

    A :class:`apem.claims.PerGroup`: a method ``C`` lacks gives :class:`apem.claims.Missing`.
    """
    out = claims.PerGroup()
    for m in dict.fromkeys(C.method):
        w = C[C.method == m].pivot(index="image_id", columns="stage", values="apem")
        out[m] = (w[first] - w[last]).dropna()
    return out


def drop_table(C: pd.DataFrame, first: int, last: int) -> pd.DataFrame:
    """Per method: the median and mean per-image APEM drop from stage ``first`` to ``last`` (:func:`drops`).

    ``images censored at stage first or last``: images whose APEM at either end is
    censored (their drop is not exact).
    """
    d = drops(C, first, last)
    ends = C[C.stage.isin([first, last])]
    cens = stats.censored(ends, "apem").groupby([ends.method, ends.image_id]).any().groupby(level=0).sum()
    rows = [{"method": thesis.label(m), "images": len(v),
             f"images censored at stage {first} or {last}": int(cens.get(m, 0)),
             f"median drop {first} → {last}": claims.fmt(float(v.median()), 1),
             f"mean drop {first} → {last}": claims.fmt(float(v.mean()), 1),
             "images where it drops": f"{int((v > 0).sum())} of {len(v)}"}
            for m, v in d.items()]
    return pd.DataFrame(rows).set_index("method")


def stage_pairs(C: pd.DataFrame) -> pd.DataFrame:
    """:func:`apem.stats.pairwise_outcomes` of APEM stage against stage within each method, stages as ``"stage k"``."""
    P = stats.pairwise_outcomes(C, "apem", by="stage", within="method")
    return P.assign(a=P.a.map(lambda s: f"stage {s}"), b=P.b.map(lambda s: f"stage {s}"))


def setting(cfg, C: pd.DataFrame) -> str:
    """**Setting.**: the model, the images of ``C``, the methods, the stages, the map encoding, the censored searches."""
    stages = sorted(int(s) for s in C.stage.unique())
    return (f"**Setting.** {cfg.model}, {C.image_id.nunique()} correctly classified images, methods "
            f"{', '.join(map(thesis.label, display.method_order(C)))}, stages {', '.join(map(str, stages))}, map "
            f"encoding `{cfg.map_encoding}`. {display.censoring_note(C)}")


def encoding_view(summary: pd.DataFrame) -> pd.DataFrame:
    """:func:`apem.studies.encoding.encoding_summary` with the methods' display names."""
    return summary.rename(index=thesis.label, level="method")


def encoding_caveat(C: pd.DataFrame, summary: pd.DataFrame, stage: int) -> str:
    """Which comparisons of two methods at ``stage`` lie inside the encoding noise, as a sentence.

    ``C``: the correct images' results; ``summary``: :func:`apem.studies.encoding.encoding_summary`. For each
    pair of the thesis's order, the median per-image difference of APEM (first method minus second) is
    set against the larger of the two methods' median absolute change of APEM under the other encoding
    (``median_abs_d_apem``): where the difference is not larger, one grey level of re-encoding could
    reverse the comparison, and the sentence says so.
    """
    rows = C[C.stage == stage]
    wide = rows.pivot(index="image_id", columns="method", values="apem")
    inside, outside = [], []
    for a, b in zip(thesis.RANKING[:-1], thesis.RANKING[1:]):
        if a not in wide or b not in wide or (a, stage) not in summary.index or (b, stage) not in summary.index:
            continue
        d = float((wide[a] - wide[b]).dropna().median())
        noise = float(max(summary.loc[(a, stage), "median_abs_d_apem"], summary.loc[(b, stage), "median_abs_d_apem"]))
        if not (np.isfinite(d) and np.isfinite(noise)):
            continue
        text = (f"{thesis.label(a)} against {thesis.label(b)} (median difference {claims.fmt(d, 1)}, encoding "
                f"noise {claims.fmt(noise, 1)})")
        (inside if abs(d) <= noise else outside).append(text)
    if not inside and not outside:
        return f"No pair of the thesis's methods has both an APEM and an encoding change at stage {stage}."
    out = []
    if inside:
        out.append(f"**Caveat.** At stage {stage}, " + "; ".join(inside)
                   + (" lies" if len(inside) == 1 else " lie") + " inside the encoding noise: the "
                   "median change one grey level of re-encoding makes to a method's APEM is at least the median "
                   "difference between the two methods, so the verdicts comparing them at this stage may reflect "
                   "how the map was written to 8 bits rather than the method.")
    if outside:
        out.append(f"Outside the encoding noise at stage {stage}: " + "; ".join(outside) + ".")
    return " ".join(out)


def order_view(summary: pd.DataFrame) -> pd.DataFrame:
    """:func:`apem.studies.stage_order.stage_order_summary`, the orders described, the methods' display names."""
    from apem.studies.stage_order import ORDER_LABELS

    return summary.rename(index=ORDER_LABELS, level="order").rename(index=thesis.label, level="method")


def order_sentence(D: pd.DataFrame, order: str) -> str:
    """What ``order`` of a :func:`apem.studies.stage_order.stage_order_shift` table changed, over every method.

    ``"9 of 24 maps differ from the book's; ε⁻ changed on 3 of 24 images and ε⁺ on 1 of 24, by at most 2 steps"``.
    """
    g = D[D.order == order]
    d = g[["d_eps_minus", "d_eps_plus"]].to_numpy(dtype=float)
    defined = ~np.isnan(d)
    moved = defined & (d != 0)
    largest = np.abs(d[moved]).max() if moved.any() else 0.0
    return (f"{int(g.map_differs.sum())} of {len(g)} maps differ from the book's; ε⁻ changed on "
            f"{int(moved[:, 0].sum())} of {int(defined[:, 0].sum())} and ε⁺ on {int(moved[:, 1].sum())} of "
            f"{int(defined[:, 1].sum())}" + (f", by at most {claims.fmt(float(largest), 0)} steps" if moved.any()
                                             else ""))


def exercise_values(C: pd.DataFrame, E: pd.DataFrame, cfg) -> dict[str, str]:
    """The numbers chapter 4's solutions quote (names ``ex04_...``).

    ``C``: the correct images' rows at every stage; ``E``: an
    :func:`apem.studies.encoding.encoding_shift` table; ``cfg``: the configuration.
    ``ex04_first`` / ``ex04_last`` (the stages the drop compares), ``ex04_drop``
    (each method's mean drop), ``ex04_enc_images`` (images re-encoded),
    ``ex04_enc_changed`` (the share of defined epsilons the encoding moved),
    ``ex04_enc_largest`` (the largest move, in steps), ``ex04_encoding`` (the
    configuration's map encoding).
    """
    stages = sorted(int(s) for s in C.stage.unique())
    first, last = stages[0], stages[-1]
    drop = ", ".join(f"{thesis.label(m)} {claims.fmt(float(v.mean()), 0)}" for m, v in drops(C, first, last).items())
    d = E[["d_eps_minus", "d_eps_plus"]].to_numpy(dtype=float).ravel()
    d = d[~np.isnan(d)]
    changed = float((d != 0).mean()) if d.size else float("nan")
    return {"ex04_first": str(first), "ex04_last": str(last), "ex04_drop": drop,
            "ex04_enc_images": str(int(E.image_id.nunique())), "ex04_enc_changed": claims.fmt(changed, 0, pct=True),
            "ex04_enc_largest": claims.fmt(float(np.abs(d).max()), 0) if d.size else "–",
            "ex04_encoding": cfg.map_encoding}
