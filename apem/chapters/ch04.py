"""Chapter 4, visualisation versus explanation: what its page does not compute itself.

The page (``notebooks/04_visualisation_vs_explanation.md``) selects the rows (correctly classified images, every stage), declares the
claims and computes the statistics with :mod:`apem.stats` and the two side studies
(:mod:`apem.studies.encoding`, :mod:`apem.studies.stage_order`). This module keeps the
plumbing it calls, each a function of data frames:

* :func:`drops`: each method's per-image APEM drop from the first stage to the last
  (the values of the claim "the Gradient loses the most");
* :func:`drop_table`: that drop summarised, with the images censored at either end and the images
  where every step lowers APEM or some step raises it;
* :func:`apem_intervals`, :func:`every_step_lowers`, :func:`some_step_raises`: what each image's
  APEM does at each visualisation step, censoring read as intervals (the values of the claims
  "each simplification lowers the Gradient's APEM on every image" and "the others sometimes gain"), and
  :func:`split_by`, :func:`gains_sentence` (the images where a step raises APEM, and their APEM);
* :func:`map_changes`, :func:`change_loss`, :func:`change_loss_tau`, :func:`change_table`: how much
  the processing changes each method's map (:func:`apem.maps.change`) against the APEM it loses
  (the values of the claim "the methods the processing changes most lose the most APEM");
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
    censored (their drop is not exact). ``images where it drops``: from ``first`` to ``last``.
    ``every step lowers it`` and ``a step raises it``: :func:`every_step_lowers` and
    :func:`some_step_raises` over every stage of ``C``, ``k of n`` over the images censoring leaves
    determined, with the undetermined ones counted apart.
    """
    d = drops(C, first, last)
    ends = C[C.stage.isin([first, last])]
    cens = stats.censored(ends, "apem").groupby([ends.method, ends.image_id]).any().groupby(level=0).sum()

    def count(v: pd.Series) -> str:
        known = v.dropna()
        und = int(v.isna().sum())
        return f"{int(known.astype(bool).sum())} of {len(known)}" + (f" ({und} undetermined)" if und else "")

    rows = [{"method": thesis.label(m), "images": len(v),
             f"images censored at stage {first} or {last}": int(cens.get(m, 0)),
             f"median drop {first} → {last}": claims.fmt(float(v.median()), 1),
             f"mean drop {first} → {last}": claims.fmt(float(v.mean()), 1),
             "images where it drops": f"{int((v > 0).sum())} of {len(v)}",
             "every step lowers it": count(every_step_lowers(C, m)),
             "a step raises it": count(some_step_raises(C, m))}
            for m, v in d.items()]
    return pd.DataFrame(rows).set_index("method")


# ----------------------------------------------------------------------------- each step, image by image


def split_by(values, outcome) -> tuple:
    """``values`` (one per image) split by a per-image boolean ``outcome``: ``(where True, where False)``.

    Images whose outcome is NaN (undetermined) are in neither; a :class:`apem.claims.Missing` in either
    argument gives two of it (the claim that uses them is not applicable).
    """
    for v in (values, outcome):
        if isinstance(v, claims.Missing):
            return v, v
    known = outcome.dropna().astype(bool)
    yes, no = known.index[known.to_numpy()], known.index[~known.to_numpy()]
    return values[values.index.isin(yes)], values[values.index.isin(no)]


def apem_intervals(C: pd.DataFrame, method: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``method``'s APEM per image (rows) and stage (columns) as the interval censoring leaves: ``(lo, hi)``.

    An exact APEM is ``[v, v]``; a censored ε⁺ makes it a lower bound ``[v, +inf]``, a censored ε⁻ an
    upper bound ``[-inf, v]``, both ``[-inf, +inf]`` (:func:`apem.stats.censoring_sides`); an undefined
    APEM is NaN on both sides.
    """
    rows = C[C.method == method]
    if rows.empty:
        return pd.DataFrame(), pd.DataFrame()
    v = rows.apem.to_numpy(float)
    side = stats.censoring_sides(rows, "apem")
    lo = np.where((side == -1) | (side == 2), -np.inf, v)
    hi = np.where((side == 1) | (side == 2), np.inf, v)
    frame = rows[["image_id", "stage"]].assign(lo=lo, hi=hi)
    wide = frame.pivot_table(index="image_id", columns="stage", values=["lo", "hi"], aggfunc="first", dropna=False)
    order = list(dict.fromkeys(rows.image_id))
    return wide["lo"].reindex(order), wide["hi"].reindex(order)


def _steps(C: pd.DataFrame, method: str):
    lo, hi = apem_intervals(C, method)
    stages = sorted(int(s) for s in lo.columns)
    return lo, hi, list(zip(stages[:-1], stages[1:]))


def _combine(sure: list[pd.Series], sure_not: list[pd.Series], every: bool) -> pd.Series:
    """Per image: True/False where censoring decides the statement over the steps, NaN where it does not.

    ``every``: the statement holds when it holds at every step (else: at some step); ``sure`` / ``sure_not``
    say per step whether it certainly holds / certainly fails.
    """
    if not sure:
        return pd.Series(dtype=object)
    yes = pd.concat(sure, axis=1)
    no = pd.concat(sure_not, axis=1)
    if every:
        true, false = yes.all(axis=1), no.any(axis=1)
    else:
        true, false = yes.any(axis=1), no.all(axis=1)
    out = pd.Series(np.nan, index=yes.index, dtype=object)
    out[false] = False
    out[true] = True
    return out


def every_step_lowers(C: pd.DataFrame, method: str) -> pd.Series:
    """Per image: does ``method``'s APEM fall at every visualisation step (stage k to k+1)?

    Read on :func:`apem_intervals`: a step certainly lowers APEM when the later stage's interval lies
    wholly below the earlier one's (``hi_b < lo_a``), and certainly does not when it lies at or above it
    (``lo_b >= hi_a``; an exact tie does not lower it). True when every step certainly lowers it, False
    when some step certainly does not, NaN when censoring leaves it open (or a stage's APEM is undefined).
    """
    lo, hi, steps = _steps(C, method)
    return _combine([hi[b] < lo[a] for a, b in steps], [lo[b] >= hi[a] for a, b in steps], every=True)


def some_step_raises(C: pd.DataFrame, method: str) -> pd.Series:
    """Per image: does some visualisation step (stage k to k+1) raise ``method``'s APEM?

    True when some step certainly raises it (``lo_b > hi_a`` on :func:`apem_intervals`), False when
    every step certainly does not (``hi_b <= lo_a``), NaN when censoring leaves it open.
    """
    lo, hi, steps = _steps(C, method)
    return _combine([lo[b] > hi[a] for a, b in steps], [hi[b] <= lo[a] for a, b in steps], every=False)


def gains_sentence(C: pd.DataFrame, methods) -> str:
    """Whether the cases the thesis describes exist here: on how many images some step raises each of
    ``methods``' APEM (:func:`some_step_raises`), with the stage-1 median APEM of those images and of the others."""
    stages = sorted(int(s) for s in C.stage.unique())
    parts = []
    for m in methods:
        if m not in set(C.method) or len(stages) < 2:
            continue
        r = some_step_raises(C, m)
        known = r.dropna().astype(bool)
        first = C[(C.method == m) & (C.stage == stages[0])].groupby("image_id").apem.mean()
        yes, no = split_by(first, r)
        text = f"{thesis.label(m)}'s APEM on {int(known.sum())} of {len(known)} images"
        if int(r.isna().sum()):
            text += f" ({int(r.isna().sum())} undetermined)"
        if len(yes) and len(no):
            text += (f", whose stage-{stages[0]} median APEM is {claims.fmt(float(yes.median()), 1)} against "
                     f"{claims.fmt(float(no.median()), 1)} on the other images")
        parts.append(text)
    if not parts:
        return ""
    found = any(" APEM on 0 of" not in p for p in parts)
    return ("A simplification step raises " + "; ".join(parts) + ". "
            + ("Such cases exist here, as the thesis found." if found else "No such case occurs here."))


# ----------------------------------------------------------------------------- change of the map against APEM lost


def map_changes(res, C: pd.DataFrame, first: int, last: int) -> pd.DataFrame:
    """Per image and method of ``C``: :func:`apem.maps.change` between its stage-``first`` and stage-``last`` maps.

    The share of the perturbation's budget the processing moves to other input values (0: the same
    perturbation, 1: none in common). ``res``: the :class:`apem.run.Results` whose cells hold the maps
    (:meth:`apem.run.Results.maps`). Columns ``image_id, method, change``.
    """
    from apem.maps import change

    rows = C[C.stage.isin([first, last])]
    out = []
    for (iid, m), pair in rows.groupby(["image_id", "method"], sort=False):
        at = {int(r.stage): res.map(iid, m, int(r.stage)) for r in pair.itertuples()}
        if first in at and last in at:
            v = float(change(at[first][None], at[last][None])[0])
            out.append({"image_id": iid, "method": m, "change": v})
    return pd.DataFrame(out, columns=["image_id", "method", "change"])


def change_loss(C: pd.DataFrame, changes: pd.DataFrame, first: int, last: int) -> pd.DataFrame:
    """Per image and method: the map's ``change`` (:func:`map_changes`), its APEM ``loss`` (stage ``first`` minus
    ``last``, :func:`drops`) and ``censored`` (its APEM censored at either end). Rows with both values."""
    d = drops(C, first, last)
    ends = C[C.stage.isin([first, last])]
    cens = stats.censored(ends, "apem").groupby([ends.image_id, ends.method]).any().rename("censored")
    loss = pd.concat({m: v for m, v in d.items()}, names=["method", "image_id"]).rename("loss")
    loss = loss.reset_index()
    X = changes.merge(loss, on=["image_id", "method"], how="inner")
    X = X.merge(cens.reset_index(), on=["image_id", "method"], how="left")
    X["censored"] = X.censored.fillna(False).astype(bool)
    return X.dropna(subset=["change", "loss"]).reset_index(drop=True)


def change_loss_tau(X: pd.DataFrame) -> pd.Series:
    """Per image: Kendall's τ-b across the methods between the change of the map and the APEM lost.

    ``X``: :func:`change_loss`. +1 when the image's methods lose APEM in the order the processing changes
    their maps; NaN where fewer than two methods or either value is the same for all
    (:func:`apem.studies.kendall_per_image`, the per-image agreement of chapter 10).
    """
    from apem.studies import kendall_per_image

    scores = pd.concat([X.assign(metric="change", score=X.change), X.assign(metric="loss", score=X.loss)])
    return kendall_per_image(scores[["image_id", "method", "metric", "score"]], "change", "loss")


def change_table(X: pd.DataFrame, first: int, last: int) -> pd.DataFrame:
    """Per method, sorted by the median change: images, censored, the median change of the map and the median
    and mean APEM lost from stage ``first`` to ``last``, for reading (``X``: :func:`change_loss`)."""
    g = X.groupby("method", sort=False)
    T = pd.DataFrame({"images": g.size(), f"censored at stage {first} or {last}": g.censored.sum().astype(int),
                      "median change": g.change.median(), "median APEM lost": g.loss.median(),
                      "mean APEM lost": g.loss.mean()})
    T = T.sort_values("median change", ascending=False)
    out = T.rename(index=thesis.label).rename_axis("method")
    out["median change"] = [claims.fmt(float(v), 2) for v in T["median change"]]
    out["median APEM lost"] = [claims.fmt(float(v), 1) for v in T["median APEM lost"]]
    out["mean APEM lost"] = [claims.fmt(float(v), 1) for v in T["mean APEM lost"]]
    return out


def change_sentence(X: pd.DataFrame, tau: pd.Series) -> str:
    """Whether the methods' order by median change is their order by median APEM lost, and how the images'
    τ fall, as a sentence (``X``: :func:`change_loss`; ``tau``: :func:`change_loss_tau`)."""
    if X.empty:
        return "No map change was measured."
    g = X.groupby("method", sort=False)
    by_change = list(g.change.median().sort_values(ascending=False).index)
    by_loss = list(g.loss.median().sort_values(ascending=False).index)
    same = by_change == by_loss
    t = tau.dropna()
    counts = ", ".join(f"τ = {claims.fmt(float(v), 2, sign=True)} on {int(k)}"
                       for v, k in t.round(6).value_counts().sort_index(ascending=False).items())
    return (f"By the median, the processing changes {' > '.join(map(thesis.label, by_change))} and they lose "
            f"{' > '.join(map(thesis.label, by_loss))}: "
            + ("the same order" if same else "not the same order") + f". Per image (τ defined on {len(t)} of "
            f"{tau.size} images): {counts or 'none'}.")


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
