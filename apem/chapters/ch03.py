"""Chapter 3, APEM results: what its page (``notebooks/03_apem_results.md``) does not compute itself.

The page selects the rows (correctly classified images, one visualisation stage),
declares the claims and computes every statistic with :mod:`apem.stats`. This module
keeps the plumbing the page calls, each a function of data frames:

* :func:`upsets` and :func:`upsets_beside_thesis`: the thesis's Table 4.3 (images
  where a method beats the winner) with the thesis's rows above ours, censored
  epsilons marked;
* :func:`setting`, :func:`median_agreement`, :func:`losses` and
  :func:`orders_context`: sentences generated from the numbers;
* :func:`exercise_values`: the numbers the exercises' solutions quote.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from apem import stats, thesis
from apem.book import display
from apem.book.exercises import means_sentence, order_by_mean

# ----------------------------------------------------------------------------- the upsets (Table 4.3)


def upsets(C: pd.DataFrame, winner: str, n: int = 3) -> pd.DataFrame:
    """Images where ``winner`` has a lower APEM than another method, the ``n`` largest margins per method.

    One row per (other method, image, method of the pair), like the thesis's
    Table 4.3: ``eps_minus, eps_plus, apem`` and the censoring flags, the
    winner's row first. Empty when the winner never loses.
    """
    wide = C.pivot(index="image_id", columns="method", values="apem")
    key = C.set_index(["image_id", "method"])
    names = C.drop_duplicates("image_id").set_index("image_id").label_name
    rows = []
    others = [m for m in dict.fromkeys(C.method) if m != winner]
    for other in others:
        margin = (wide[other] - wide[winner]).dropna()
        for iid in margin[margin > 0].sort_values(ascending=False, kind="stable").index[: max(0, int(n))]:
            for m in (winner, other):
                r = key.loc[(iid, m)]
                rows.append({"comparison": f"{thesis.label(other)} beats {thesis.label(winner)}",
                             "image": names[iid], "image_id": iid, "method": m,
                             "eps_minus": r.eps_minus, "eps_plus": r.eps_plus, "apem": r.apem,
                             "censored_minus": bool(r.censored_minus), "censored_plus": bool(r.censored_plus)})
    cols = ["comparison", "image", "image_id", "method", "eps_minus", "eps_plus", "apem", "censored_minus",
            "censored_plus"]
    return pd.DataFrame(rows, columns=cols)


def upsets_beside_thesis(ours: pd.DataFrame) -> pd.DataFrame:
    """The thesis's Table 4.3 above our upsets, the same columns: ε⁻, ε⁺, APEM, censored ε⁻ / ε⁺.

    The thesis's rows are quoted (VGG-16, images not identified; it reports no
    censoring, and its epsilons are far below its bound of 10001, so "no").
    """
    parts = {"a": "LRP-ε beats Gradient", "b": "SmoothGrad beats LRP-ε"}
    th = thesis.TABLE_4_3.assign(comparison=lambda d: d.part.map(parts), censored_minus=False, censored_plus=False)
    frames = [th.assign(table="thesis (VGG-16)")]
    if len(ours):
        frames.append(ours.drop(columns="image_id").assign(table="ours"))
    t = pd.concat(frames, ignore_index=True)
    out = pd.DataFrame({
        "table": t.table, "comparison": t.comparison, "image": t.image, "method": t.method.map(thesis.label),
        "ε⁻": [_eps(v, c) for v, c in zip(t.eps_minus, t.censored_minus)],
        "ε⁺": [_eps(v, c) for v, c in zip(t.eps_plus, t.censored_plus)],
        "APEM": [_apem(a, cm, cp) for a, cm, cp in zip(t.apem, t.censored_minus, t.censored_plus)],
        "censored ε⁻": np.where(t.censored_minus.astype(bool), "yes", "no"),
        "censored ε⁺": np.where(t.censored_plus.astype(bool), "yes", "no"),
    })
    return out.set_index(["table", "comparison", "image", "method"])


def _eps(v, censored) -> str:
    return display.fmt_bounded(float(v), int(bool(censored)), digits=0)


def _apem(v, cm, cp) -> str:
    side = 2 if (cm and cp) else 1 if cp else -1 if cm else 0
    return display.fmt_bounded(float(v), side, digits=0, undetermined="undetermined")


# ----------------------------------------------------------------------------- sentences from the numbers


def setting(cfg, C: pd.DataFrame, stage: int) -> str:
    """**Setting.**: the model, the images of ``C`` (one stage), the methods, the search, the censored searches."""
    return (f"**Setting.** {cfg.model} (`{cfg.preset}` preprocessing), {C.image_id.nunique()} correctly classified "
            f"images, methods {', '.join(map(thesis.label, display.method_order(C)))}, stage {stage}, "
            f"`{cfg.search_mode}` search with bound {cfg.search_bound}. {display.censoring_note(C)}")


def median_agreement(S: pd.DataFrame) -> str:
    """Whether the median (of a :func:`apem.stats.summary_table` per method) ranks the methods as the mean does."""
    R = stats.ranking(S)
    by_median = R.sort_values("rank_median").index
    if list(R.index) == list(by_median):
        return "The median ranks the methods the same way."
    return f"The median ranks them differently; its first is {thesis.label(by_median[0])}."


def losses(C: pd.DataFrame, winner: str) -> str:
    """The images on which each other method beats ``winner``: ``"12 of 96 images to LRP-ε, 9 of 96 images to ..."``."""
    wide = C.pivot(index="image_id", columns="method", values="apem")
    parts = [f"{int(((wide[o] - wide[winner]) > 0).sum())} of {int((wide[o] - wide[winner]).notna().sum())} images "
             f"to {thesis.label(o)}" for o in display.method_order(C) if o != winner]
    return ", ".join(parts) if parts else "no image (it is the only method)"


def best_by_tests(pairs: dict, methods: list[str]) -> str:
    """The best method by the paired verdicts: the one shown to beat every other, once ``pairs`` are decided.

    ``pairs``: ``{(a, b): claim "a has a higher APEM than b"}`` decided by a :class:`apem.claims.Claims`. A
    method beats another when the claim that it is higher held, or the claim that the other is higher was
    not held (the data point its way). Returns a sentence: the method, or why there is none.
    """
    from apem import claims

    beats = {m: set() for m in methods}
    for (a, b), c in pairs.items():
        if c.verdict == claims.HELD and a in beats:
            beats[a].add(b)
        elif c.verdict == claims.NOT_HELD and b in beats:
            beats[b].add(a)
    tested = [m for m in methods if any(m in k for k in pairs)]
    top = [m for m in tested if beats[m] >= set(tested) - {m}]
    if len(tested) < 2:
        return "fewer than two of the thesis's methods are in this configuration, so no pair decides it."
    if top:
        return (f"**{thesis.label(top[0])}**, whose paired claims against every other method went its way at the "
                "chapter's level.")
    return ("no method: no method's paired claims against every other went its way at the chapter's level "
            "(see the verdicts above).")


def orders_context(S: pd.DataFrame) -> str:
    """The methods' order by the mean and by the median beside the thesis's, for the verdicts' discussion."""
    R = stats.ranking(S)
    order_mean = " > ".join(map(thesis.label, R.index))
    order_median = " > ".join(map(thesis.label, R.sort_values("rank_median", kind="stable").index))
    return (f"By the restricted mean our order is {order_mean}; by the median {order_median}; the thesis's (both) is "
            f"{' > '.join(map(thesis.label, thesis.RANKING))}.")


# ----------------------------------------------------------------------------- exercises


def exercise_values(T: pd.DataFrame, stage: int, cfg) -> dict[str, str]:
    """The numbers chapter 3's solutions quote, from a results table ``T`` at ``stage`` (names ``ex03_...``).

    ``ex03_stage``, ``ex03_order`` (the methods by mean APEM, correct images at
    ``stage``), ``ex03_means`` (each method's mean, a bound marked), and
    ``ex03_order_s1`` (the order at stage 1, or a sentence saying the
    configuration ``cfg`` has no stage 1).
    """
    correct = T[T.group == "correct"]
    C = correct[correct.stage == stage]
    s1 = correct[correct.stage == 1]
    return {"ex03_stage": str(stage), "ex03_order": order_by_mean(C, cfg.seed),
            "ex03_means": means_sentence(C, seed=cfg.seed),
            "ex03_order_s1": order_by_mean(s1, cfg.seed) if len(s1) else
            f"(stage 1 is not in this configuration's stages {list(cfg.stages)})"}
