"""Chapter 3, APEM results: what its page (``notebooks/03_apem_results.md``) does not compute itself.

The page selects the rows (correctly classified images, one visualisation stage),
declares the claims and computes every statistic with :mod:`apem.stats`. This module
keeps the plumbing the page calls, each a function of data frames:

* :func:`pair_upsets`, :func:`upsets_for`, :func:`upsets` and :func:`upsets_beside_thesis`: the thesis's
  Table 4.3 (images where a method beats the one the thesis ranks above it) for any pair, with the
  thesis's rows above ours, censored epsilons marked; :func:`upset_values`: the per-image outcomes its
  claims test;
* :func:`per_step_sizes`, :func:`flip_size` and :func:`size_summary`: how large the perturbation that
  flips the decision is (the thesis's section 3.3), from the stored maps (:func:`apem.metric.perturbation_size`);
* :func:`setting`, :func:`median_agreement`, :func:`losses`, :func:`upset_counts` and
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


COLUMNS = ["comparison", "image", "image_id", "method", "eps_minus", "eps_plus", "apem", "censored_minus",
           "censored_plus"]


def pair_upsets(C: pd.DataFrame, dominant: str, other: str, n: int | None = None) -> pd.DataFrame:
    """Images where ``other`` has a higher APEM than ``dominant``, the largest margins first (``n`` of them; None: all).

    One row per (image, method of the pair), like the thesis's Table 4.3: ``eps_minus, eps_plus, apem``
    and the censoring flags, the dominant method's row first; ``comparison`` reads "<other> beats
    <dominant>". Empty (with the columns) when ``other`` never beats ``dominant`` or ``C`` lacks either.
    """
    present = set(C.method)
    if dominant not in present or other not in present or dominant == other:
        return pd.DataFrame(columns=COLUMNS)
    wide = C.pivot(index="image_id", columns="method", values="apem")
    key = C.set_index(["image_id", "method"])
    names = C.drop_duplicates("image_id").set_index("image_id").label_name
    margin = (wide[other] - wide[dominant]).dropna()
    ids = margin[margin > 0].sort_values(ascending=False, kind="stable").index
    rows = []
    for iid in ids[: None if n is None else max(0, int(n))]:
        for m in (dominant, other):
            r = key.loc[(iid, m)]
            rows.append({"comparison": f"{thesis.label(other)} beats {thesis.label(dominant)}",
                         "image": names[iid], "image_id": iid, "method": m,
                         "eps_minus": r.eps_minus, "eps_plus": r.eps_plus, "apem": r.apem,
                         "censored_minus": bool(r.censored_minus), "censored_plus": bool(r.censored_plus)})
    return pd.DataFrame(rows, columns=COLUMNS)


def upsets_for(C: pd.DataFrame, pairs, n: int | None = 3) -> pd.DataFrame:
    """:func:`pair_upsets` of each ``(dominant, other)`` pair of ``pairs``, one table, the pairs in their order."""
    frames = [pair_upsets(C, a, b, n) for a, b in pairs]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def upsets(C: pd.DataFrame, winner: str, n: int = 3) -> pd.DataFrame:
    """Images where ``winner`` has a lower APEM than another method, the ``n`` largest margins per method.

    :func:`pair_upsets` of ``winner`` against each other method of ``C``, in the table's order.
    """
    return upsets_for(C, [(winner, m) for m in dict.fromkeys(C.method) if m != winner], n)


class _Lacking(dict):
    """Every key gives :class:`apem.claims.Missing` (the configuration lacks a method of the pair)."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def __missing__(self, key):
        from apem.claims import Missing

        return Missing(self.what)


def upset_values(C: pd.DataFrame, a: str, b: str, within: float = 1.0) -> dict:
    """The per-image outcomes the Table 4.3 claims test, for the pair ``a`` (the thesis's dominant method), ``b``.

    One value per image with both methods (a method's maps of an image averaged,
    :func:`apem.claims.per_image`), each a Series indexed by image:

    * ``"b_above"``: every image: ``b``'s APEM above ``a``'s (an *upset*);
    * on the upset images only: ``"diff"``, ``APEM_b - APEM_a`` (> 0); ``"within"``, ``|APEM_b - APEM_a| <= within``;
      ``"plus_equal"``, the two
      ε⁺ equal; ``"both_eps"``, ``b``'s ε⁻ lower *and* its ε⁺ higher than ``a``'s;
    * ``"a_upsets"``, ``"a_others"``: ``a``'s APEM on the upset images and on the other images;
    * ``"censored"``: every image: any of the pair's searches censored (for the claims' ``censored=``).

    Every key gives :class:`apem.claims.Missing` when ``C`` lacks ``a`` or ``b``.
    """
    from apem import claims

    present = set(C.method)
    lacking = [m for m in (a, b) if m not in present]
    if lacking:
        return _Lacking(", ".join(map(thesis.label, lacking)))
    v = {}
    for col in ("apem", "eps_minus", "eps_plus"):
        of = claims.per_group(C, col)
        v[col] = pd.concat([of[a].rename("a"), of[b].rename("b")], axis=1).dropna()
    ids = v["apem"].index
    up = v["apem"].b > v["apem"].a
    on = ids[up.to_numpy()]
    em, ep = v["eps_minus"].reindex(on), v["eps_plus"].reindex(on)
    cens = C.assign(_c=C.censored_minus.astype(bool) | C.censored_plus.astype(bool))
    cens = cens[cens.method.isin([a, b])].groupby("image_id")["_c"].any().reindex(ids).fillna(False).astype(bool)
    diff = (v["apem"].b - v["apem"].a).reindex(on)
    return {"b_above": up, "diff": diff, "within": diff.abs() <= within,
            "plus_equal": ep.a == ep.b, "both_eps": (em.b < em.a) & (ep.b > ep.a),
            "a_upsets": v["apem"].a.reindex(on), "a_others": v["apem"].a[~up], "censored": cens}


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


# ----------------------------------------------------------------------------- how large is the flip (section 3.3)


def per_step_sizes(res, C: pd.DataFrame, batch: int = 32) -> pd.DataFrame:
    """Per row of ``C``: the perturbation of *one step* along its stored stage map, by
    :func:`apem.metric.perturbation_size` (the maps read back from the store in batches of ``batch``).

    Columns ``change_per_step`` (the largest change of any input value, in the [0, 1] pixel range) and
    ``psnr_per_step`` (dB), indexed like ``C``. A step of ε changes each value ε times as much, so
    :func:`flip_size` gets the perturbation at any ε from these without reading the maps again.
    """
    import torch

    from apem import metric

    change, psnr = [], []
    rows = list(C[["image_id", "method", "stage"]].itertuples(index=False))
    for k in range(0, len(rows), batch):
        maps = torch.stack([res.map(r.image_id, r.method, int(r.stage)) for r in rows[k:k + batch]])
        size = metric.perturbation_size(maps, 1.0)
        change += size["max_change"].tolist()
        psnr += size["psnr"].tolist()
    return pd.DataFrame({"change_per_step": change, "psnr_per_step": psnr}, index=C.index, dtype=float)


def flip_size(C: pd.DataFrame, threshold: float = 8.0) -> pd.DataFrame:
    """The perturbation at each row's ε⁻, from :func:`per_step_sizes`'s columns of ``C`` (NaN where absent).

    The change of each value is :math:`\\varepsilon |R| / \\lVert R \\rVert_1`
    (:func:`apem.metric.perturbation_size`), so at ε⁻ the largest change is ε⁻ times one step's, and the
    PSNR one step's minus :math:`20 \\log_{10} \\varepsilon^-`. Columns, indexed like ``C``:

    * ``max_change``: in 8-bit levels (the [0, 1] range times 255);
    * ``psnr``: dB;
    * ``imperceptible``: 1.0 when ``max_change <= threshold`` (levels of 255), 0.0 when above, NaN when
      undetermined: an undefined map, or a censored ε⁻ whose perturbation at the bound is still within the
      threshold (the flip lies beyond the bound, so its perturbation is larger, by an unknown amount). A
      censored ε⁻ already above the threshold at the bound is above it.
    """
    eps = C.eps_minus.astype(float)
    per = C["change_per_step"] if "change_per_step" in C else pd.Series(np.nan, index=C.index)
    per_psnr = C["psnr_per_step"] if "psnr_per_step" in C else pd.Series(np.nan, index=C.index)
    change = 255 * eps * per.astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        psnr = per_psnr.astype(float) - 20 * np.log10(eps)
    within = change <= threshold
    ok = pd.Series(np.where(within, 1.0, 0.0), index=C.index)
    ok[change.isna() | (C.censored_minus.astype(bool) & within)] = np.nan
    return pd.DataFrame({"max_change": change, "psnr": psnr, "imperceptible": ok})


def size_summary(C: pd.DataFrame, threshold: float = 8.0) -> pd.DataFrame:
    """Per method (the display order): the perturbation at ε⁻ over the images of ``C`` (:func:`flip_size`):
    the median and range of the largest change (levels of 255) and of the PSNR, and how many images stay
    within ``threshold``."""
    F = flip_size(C, threshold).assign(method=C.method.to_numpy(), censored=C.censored_minus.astype(bool).to_numpy())
    rows = []
    for m in display.method_order(C):
        f = F[F.method == m]
        ok = f.max_change.notna()
        mc, ps = f.max_change[ok], f.psnr[ok]
        dec = f.imperceptible.dropna()
        rows.append({"method": thesis.label(m), "images": f"{int(ok.sum())}",
                     "max change, median [range] (of 255)": _median_range(mc, 1),
                     "PSNR, median [range] (dB)": _median_range(ps, 1),
                     f"within {threshold:g}/255": f"{int(dec.sum())} of {dec.size}",
                     "censored ε⁻ (a lower bound)": f"{int(f.censored.sum())}"})
    return pd.DataFrame(rows).set_index("method")


def _median_range(v: pd.Series, digits: int) -> str:
    if v.empty:
        return "–"
    return f"{display.num(float(v.median()), digits)} [{display.num(float(v.min()), digits)}, " \
           f"{display.num(float(v.max()), digits)}]"


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


def upset_counts(C: pd.DataFrame, pairs) -> str:
    """For each ``(dominant, other)`` pair: ``"LRP-ε beat the Gradient on 3 of 96 images"``, joined; a pair the
    configuration lacks is said so."""
    wide = C.pivot(index="image_id", columns="method", values="apem")
    parts = []
    for a, b in pairs:
        if a not in wide or b not in wide:
            parts.append(f"{thesis.label(b)} against {thesis.label(a)}: not in this configuration")
            continue
        d = (wide[b] - wide[a]).dropna()
        parts.append(f"{thesis.label(b)} beat {thesis.label(a)} on {int((d > 0).sum())} of {int(d.size)} images")
    return "; ".join(parts) if parts else "no pair"


def upset_sentence(C: pd.DataFrame, a: str = "gradient", b: str = "lrp_epsilon") -> str:
    """What the upsets of ``b`` over ``a`` look like beside the thesis's Table 4.3a (:func:`upset_values`): how
    many, how far apart the APEMs are (median and largest difference, in steps), on how many the ε⁺ are equal."""
    v = upset_values(C, a, b)
    if isinstance(v, _Lacking):
        return f"The configuration lacks {v.what}: no upsets of {thesis.label(b)} over {thesis.label(a)} to show."
    k, n = int(v["b_above"].sum()), int(v["b_above"].size)
    if k == 0:
        return f"{thesis.label(b)} beat {thesis.label(a)} on none of the {n} images."
    diff = v["diff"]
    return (f"{thesis.label(b)} beat {thesis.label(a)} on {k} of {n} images; there the APEMs differed by a median "
            f"of {display.num(float(diff.median()), 0 if float(diff.median()).is_integer() else 1)} steps and at most "
            f"{display.num(float(diff.max()), 0)} (the thesis: at most 1, in its three examples), and the two ε⁺ were "
            f"equal on {int(v['plus_equal'].sum())} of them.")


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
