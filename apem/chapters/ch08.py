"""Chapter 8, misclassified images (thesis section 5.3, Table 5.2, Figure 5.3): the plumbing of its page.

The page (``notebooks/08_misclassified.md``) selects the rows (the correct images
``C`` and the misclassified ones ``M`` at one stage), declares the claims and calls
:func:`apem.stats.summary_table` itself; this module formats what it shows and
computes its exercises' numbers:

* :func:`show_setting`: the setting line (and the notes when a group is empty);
* :func:`table_5_2`: the summary of both groups beside the thesis's Table 5.2;
* :func:`confidence_table`: the model's top probability per group;
* :func:`mean_orders`: the methods' order by the mean APEM in each group (the
  verdicts' context);
* :func:`fall`, :func:`fall_table`, :func:`fall_sentence`: how much APEM falls on the
  misclassified images, by the median and the restricted mean, with bootstrap intervals, beside
  the thesis's falls (Table 5.2);
* :func:`separation_table`, :func:`separation_figure`, :func:`best_signal_sentence` and
  :func:`reliability_statement`: how well APEM, ε⁻ and ε⁺ tell the correct images from the
  misclassified ones (AUROC, :func:`apem.stats.separation`), beside the model's confidence and loss;
* :func:`exercise_values`: the numbers the exercises' solutions quote.

The figures are :func:`apem.figures.charts.censored_boxes`.
"""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats as sps

from apem import claims, stats, thesis
from apem.book import display
from apem.book.exercises import counts_sentence, decided_at, smallest_mann_whitney_p

GROUPS = ("correct", "misclassified")

#: the signals whose separation of correct from misclassified images the chapter measures: display name ->
#: (column, sign); sign +1: a high value should mark a correct image. ε⁻ and ε⁺ are +1 because the thesis finds
#: both lower on misclassified images (section 5.3), declared before the data
SIGNALS = {"APEM": ("apem", +1), "ε⁻": ("eps_minus", +1), "ε⁺": ("eps_plus", +1)}
#: the baselines: the model's own confidence (its top probability) and its loss, which knows the label
BASELINES = {"confidence": ("confidence", +1), "loss (knows the label)": ("loss", -1)}


def show_setting(cfg, stage: int, C: pd.DataFrame, M: pd.DataFrame) -> None:
    """The setting line: model, stage, images per group, methods, search, censoring per group.

    Stops the page (:func:`apem.book.display.require`) when the stage is not in the
    configuration or a group has no image.
    """
    display.require(stage in cfg.stages, f"Stage {stage} is not among the configuration's stages {list(cfg.stages)}",
                    f"-p stage {max(cfg.stages)}")
    n_correct, n_mis = int(C.image_id.nunique()), int(M.image_id.nunique())
    display.require(n_mis > 0, "The configuration has no misclassified image", "apem book --chapter 8 "
                    "-p n_misclassified 12")
    display.require(n_correct > 0, "The configuration has no correctly classified image", "-p n_correct 24")
    methods = display.method_order(pd.concat([C, M]))
    display.show_markdown(
        f"**Setting.** {cfg.model}, stage {stage}: {n_correct} correctly classified and {n_mis} misclassified "
        f"images, methods {', '.join(map(thesis.label, methods))}, `{cfg.search_mode}` search with bound "
        f"{cfg.search_bound}. Correct images: {display.censoring_note(C)} Misclassified images: "
        f"{display.censoring_note(M)}")


def table_5_2(S: pd.DataFrame) -> pd.DataFrame:
    """Thesis Table 5.2 beside ours: per method, for each group, images, censored, mean, median, thesis's values.

    ``S``: :func:`apem.stats.summary_table` of both groups, ``by=["method", "group"]``;
    each group's part is :func:`apem.book.display.summary_view` with the thesis's mean
    and median of that group beside ours.
    """
    th = thesis.TABLE_5_2.set_index("method")
    parts = {}
    for g in GROUPS:
        if g not in S.index.get_level_values("group"):
            continue
        Sg = S.xs(g, level="group")
        t = th[[f"mean_{g}", f"median_{g}"]].rename(columns={f"mean_{g}": "mean", f"median_{g}": "median"})
        parts[g] = display.summary_view(Sg, thesis=t)
    return pd.concat(parts, axis=1)


def confidence_table(images: pd.DataFrame) -> pd.DataFrame:
    """The model's confidence (top probability) per group: images, median, mean, min, max, formatted."""
    rows = []
    for g, c in images.groupby("group", sort=False).confidence:
        rows.append({"group": g, "images": int(c.notna().sum()), "median": claims.fmt(float(c.median()), 3),
                     "mean": claims.fmt(float(c.mean()), 3), "min": claims.fmt(float(c.min()), 3),
                     "max": claims.fmt(float(c.max()), 3)})
    return pd.DataFrame(rows).set_index("group")


def mean_orders(C: pd.DataFrame, M: pd.DataFrame) -> str:
    """The verdicts' context: the methods by mean APEM (:func:`apem.stats.ranking`) on each group, and the thesis's."""
    order = {g: " > ".join(map(thesis.label, stats.ranking(stats.summary_table(rows, by="method", ci=False)).index))
             for g, rows in (("correct", C), ("misclassified", M))}
    return (f"By the mean APEM our order is {order['correct']} on correct images and {order['misclassified']} on "
            f"misclassified ones; the thesis's is {' > '.join(map(thesis.label, thesis.RANKING))} on both.")


# ----------------------------------------------------------------------------- the size of the fall


def _fall_stat(stat: str):
    fn = {"median": np.median, "mean": np.mean}[stat]

    def fall(mis, correct, axis=-1):
        den = fn(correct, axis=axis)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, 1.0 - fn(mis, axis=axis) / np.where(den > 0, den, 1.0), np.nan)
    return fall


def fall(correct, misclassified, stat: str = "median", level: float = 0.95, n_boot: int = 2000, seed: int = 0
         ) -> tuple[float, float, float]:
    """How much ``stat`` (``"median"`` or ``"mean"``) of the values falls from the correct images to the misclassified
    ones, as a share of the correct images': ``1 - stat(misclassified) / stat(correct)``, with a percentile bootstrap
    interval at ``level`` that resamples each group's images on its own (:func:`scipy.stats.bootstrap`, seeded).

    Returns ``(fall, low, high)``: NaN where a group is empty or ``stat(correct)`` is not positive (a fall as a share
    of a value at or below 0 means nothing); no interval (NaN) with fewer than two images in a group, or when some
    resample's ``stat(correct)`` is not positive; the exact ``(fall, fall, fall)`` when both groups are constant. With censored
    searches, the mean of the stored values is the restricted mean (every search capped at the bound,
    :func:`apem.stats.restricted_mean`), the only mean censoring leaves defined.
    """
    c, m = stats._clean(correct), stats._clean(misclassified)
    fn = _fall_stat(stat)
    if c.size == 0 or m.size == 0:
        return (np.nan, np.nan, np.nan)
    est = float(fn(m, c))
    if not np.isfinite(est) or c.size < 2 or m.size < 2:
        return (est if np.isfinite(est) else np.nan, np.nan, np.nan)
    if np.all(c == c[0]) and np.all(m == m[0]):
        return (est, est, est)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy warns when a resample's fall is NaN: no interval then
        ci = sps.bootstrap((m, c), fn, n_resamples=int(n_boot), confidence_level=level, method="percentile",
                           vectorized=True, axis=-1, rng=np.random.default_rng(seed)).confidence_interval
    return (est, float(ci.low), float(ci.high))


def thesis_falls() -> pd.DataFrame:
    """The thesis's falls (Table 5.2): per method, ``1 - misclassified / correct`` of the mean and of the median."""
    th = thesis.TABLE_5_2.set_index("method")
    return pd.DataFrame({"mean": 1 - th.mean_misclassified / th.mean_correct,
                         "median": 1 - th.median_misclassified / th.median_correct})


def fall_table(C: pd.DataFrame, M: pd.DataFrame, alpha: float = 0.05, seed: int = 0, n_boot: int = 2000
               ) -> pd.DataFrame:
    """Per method: the fall of APEM's median and restricted mean (:func:`fall`, one APEM per image, a
    ``1 - alpha`` bootstrap interval seeded with ``seed``) beside the thesis's (:func:`thesis_falls`).

    Numeric columns ``median``, ``median_lo``, ``median_hi``, ``mean``, ``mean_lo``, ``mean_hi``,
    ``thesis_median``, ``thesis_mean``, and the images of each group.
    """
    th = thesis_falls()
    rows = []
    for m in display.method_order(pd.concat([C, M])):
        c = claims.per_image(C[C.method == m], "apem")
        w = claims.per_image(M[M.method == m], "apem")
        row = {"method": m, "correct images": int(c.notna().sum()), "misclassified images": int(w.notna().sum())}
        for stat in ("median", "mean"):
            est, lo, hi = fall(c, w, stat, level=1 - alpha, n_boot=n_boot, seed=seed)
            row.update({stat: est, f"{stat}_lo": lo, f"{stat}_hi": hi,
                        f"thesis_{stat}": float(th[stat].get(m, np.nan))})
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def fall_view(F: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """:func:`fall_table` formatted: each fall with its interval as a percentage, the thesis's beside it."""
    pct = lambda x: claims.fmt(x, 0, pct=True)  # noqa: E731
    out = pd.DataFrame(index=pd.Index([thesis.label(m) for m in F.index], name="method"))
    level = claims.fmt(1 - alpha, 0, pct=True)
    for stat, name in (("median", "median"), ("mean", "restricted mean")):
        out[f"fall of the {name} [{level} bootstrap]"] = [
            f"{pct(r[stat])} [{pct(r[stat + '_lo'])}, {pct(r[stat + '_hi'])}]" if np.isfinite(r[f"{stat}_lo"])
            else pct(r[stat]) if np.isfinite(r[stat]) else f"– (correct {name} ≤ 0)" if r["correct images"] else "–"
            for _, r in F.iterrows()]
        out[f"thesis ({stat})"] = [pct(v) for v in F[f"thesis_{stat}"]]
    out["images (correct, misclassified)"] = [f"{a}, {b}" for a, b in
                                              zip(F["correct images"], F["misclassified images"])]
    return out


def fall_sentence(F: pd.DataFrame) -> str:
    """Whether our falls lie in the thesis's range (its lowest to highest fall over the methods, by the mean and by
    the median) and whether the thesis's fall of each method lies inside our interval; every number from ``F``."""
    parts = []
    for stat, name in (("mean", "restricted mean"), ("median", "median")):
        th = F[f"thesis_{stat}"].dropna()
        ours = F[stat].dropna()
        if th.empty or ours.empty:
            continue
        lo, hi = th.min(), th.max()
        inside = [m for m in ours.index if lo <= ours[m] <= hi]
        covered = [m for m in F.index if np.isfinite(F.loc[m, f"{stat}_lo"]) and np.isfinite(F.loc[m, f"thesis_{stat}"])
                   and F.loc[m, f"{stat}_lo"] <= F.loc[m, f"thesis_{stat}"] <= F.loc[m, f"{stat}_hi"]]
        with_ci = int(np.isfinite(F[f"{stat}_lo"]).sum())
        falls = ", ".join(f"{thesis.label(m)} {claims.fmt(v, 0, pct=True)}" for m, v in ours.items() if v >= 0)
        rises = ", ".join(f"{thesis.label(m)}'s by {claims.fmt(-v, 0, pct=True)}" for m, v in ours.items() if v < 0)
        undefined = len(F) - len(ours)
        text = (f"By the {name} APEM falls by {falls or 'nothing for any method'}"
                + (f" (and rises: {rises})" if rises else "")
                + (f" ({undefined} method{'s' if undefined != 1 else ''} with no fall: the correct images' {name} "
                   "is not positive)" if undefined else "")
                + f"; {len(inside)} of {len(ours)} lie in the thesis's range ({claims.fmt(lo, 0, pct=True)} to "
                  f"{claims.fmt(hi, 0, pct=True)})")
        text += (f", and the thesis's fall lies inside our interval for {len(covered)} of the {with_ci} methods with "
                 "an interval." if with_ci else "; no interval is defined here.")
        parts.append(text)
    return " ".join(parts) if parts else "No fall is defined on these images: the correct images' APEM is not positive."


# ----------------------------------------------------------------------------- telling correct from misclassified


def separation_table(S: pd.DataFrame, B: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """AUROC with its interval per method and stage (rows) and signal (columns), from :func:`apem.stats.separation`
    ``S`` (by method and stage) and ``B`` (the baselines, over the images), the baselines as extra rows."""
    def cell(r):
        if not np.isfinite(r.auroc):
            return "–"
        ci = f" [{r.low:.2f}, {r.high:.2f}]" if np.isfinite(r.low) else " (complete separation)"
        return f"{r.auroc:.2f}{ci}"

    rows = {}
    for _, r in S.iterrows():
        rows.setdefault((thesis.label(r.method), f"stage {r.stage}"), {})[r.signal] = cell(r)
    for _, r in B.iterrows():
        rows[(f"the model's {r.signal}", "–")] = {"baseline": cell(r)}
    out = pd.DataFrame.from_dict(rows, orient="index").fillna("")
    out.index = pd.MultiIndex.from_tuples(out.index, names=["signal of", "stage"])
    out.columns.name = f"AUROC [{claims.fmt(1 - alpha, 0, pct=True)} bootstrap]"
    return out


def separation_figure(S: pd.DataFrame, B: pd.DataFrame, stage: int):
    """The AUROC of each method's signals at ``stage`` with their intervals, the baselines as vertical lines."""
    s = S[S.stage == stage].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7.2, 0.8 + 0.35 * max(1, len(s))))
    y = np.arange(len(s))
    ok = np.isfinite(s.low.to_numpy(float))
    err = np.vstack([(s.auroc - s.low).to_numpy(float), (s.high - s.auroc).to_numpy(float)])
    ax.errorbar(s.auroc[ok], y[ok], xerr=np.clip(err[:, ok], 0, None), fmt="o", capsize=3, color="#3a78b5")
    ax.plot(s.auroc[~ok], y[~ok], "o", color="#3a78b5")
    ax.set_yticks(y, [f"{thesis.label(m)}: {sig}" for m, sig in zip(s.method, s.signal)])
    for (_, r), style in zip(B.iterrows(), ("--", ":")):
        if np.isfinite(r.auroc):
            ax.axvline(r.auroc, color="#d9822b", ls=style, label=f"{r.signal} {r.auroc:.2f}")
    ax.axvline(0.5, color="k", lw=1)
    ax.set_xlim(-0.02, 1.02)
    ax.invert_yaxis()
    ax.set_xlabel(f"AUROC, correct against misclassified images (stage {stage}; 0.5 = chance)")
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    plt.close(fig)
    return fig


def best_signal_sentence(S: pd.DataFrame, B: pd.DataFrame, stage: int) -> str:
    """Which signal separates the groups best on this model at ``stage`` (by the AUROC), and how the best APEM compares
    with the model's confidence; every number from ``S`` and ``B`` (:func:`apem.stats.separation`)."""
    s = S[(S.stage == stage) & np.isfinite(S.auroc)]
    if s.empty:
        return "No signal's AUROC is defined on these images."
    top = s.loc[s.auroc.idxmax()]
    tied = int((s.auroc == top.auroc).sum()) - 1
    conf = B[B.signal == "confidence"].auroc
    conf = float(conf.iloc[0]) if len(conf) else np.nan
    a = s[s.signal == "APEM"]
    text = (f"At stage {stage} the best map-based signal is {thesis.label(top.method)}'s {top.signal} (AUROC "
            f"{top.auroc:.2f}" + (f", tied with {tied} other{'s' if tied != 1 else ''}" if tied else "") + ").")
    if len(a) and np.isfinite(conf):
        best = a.loc[a.auroc.idxmax()]
        rel = "above" if best.auroc > conf else "below" if best.auroc < conf else "equal to"
        text += (f" The best APEM, {thesis.label(best.method)}'s ({best.auroc:.2f}), is {rel} the model's own "
                 f"confidence ({conf:.2f}).")
    loss = B[B.signal != "confidence"].auroc
    if len(loss) and np.isfinite(loss.iloc[0]):
        text += (f" The loss ({float(loss.iloc[0]):.2f}) knows the label, so it is a ceiling, not a competitor: "
                 "no deployed model has it.")
    return text


def reliability_statement(C: pd.DataFrame, M: pd.DataFrame, images: pd.DataFrame) -> str:
    """The numbers of the chapter's descriptive claim: each method's AUROC of APEM (correct against misclassified,
    :func:`apem.stats.auroc`) beside the confidence's, at the rows' stage."""
    conf = images.set_index("image_id").confidence
    is_mis = images.set_index("image_id").group == "misclassified"
    c = stats.auroc(conf[~is_mis], conf[is_mis])["auroc"]
    parts = [f"{thesis.label(m)} {claims.fmt(stats.auroc(claims.per_image(C[C.method == m], 'apem'), claims.per_image(M[M.method == m], 'apem'))['auroc'], 2)}"
             for m in display.method_order(pd.concat([C, M]))]
    return f"AUROC of APEM: {', '.join(parts)}; of the model's confidence: {claims.fmt(c, 2)}"


# ----------------------------------------------------------------------------- exercises


def exercise_values(T: pd.DataFrame, cfg, stage: int, alpha: float, chapter_claims: list) -> dict[str, str]:
    """The numbers the exercises' solutions quote (name -> text), on the results table ``T`` (every stage).

    ``stage`` and ``alpha``: the chapter's parameters; ``chapter_claims``: the page's
    claims on the rows of ``T`` at ``stage`` (decided here on copies, at ``alpha`` and
    at 0.1). The page glues them from the reference build (the configuration without
    overrides, the chapter's default parameters).
    """

    def means(s: int) -> str:
        D = T[T.stage == s]
        if D.empty:
            return f"(stage {s} is not in this configuration's stages {list(cfg.stages)})"
        parts = []
        for m in display.method_order(D):
            rows = D[D.method == m]
            c = claims.per_image(rows[rows.group == "correct"], "apem").mean()
            w = claims.per_image(rows[rows.group == "misclassified"], "apem").mean()
            parts.append(f"{thesis.label(m)} {claims.fmt(float(c), 0)} (correct) against {claims.fmt(float(w), 0)} "
                         "(misclassified)")
        return "; ".join(parts)

    D = T[T.stage == stage]
    n_mis = int(D[D.group == "misclassified"].image_id.nunique())
    n_correct = int(D[D.group == "correct"].image_id.nunique())
    p_min = smallest_mann_whitney_p(n_mis, n_correct)
    family = decided_at(chapter_claims, alpha)
    return {"ex08_stage": str(stage), "ex08_means": means(stage), "ex08_means_s1": means(1),
            "ex08_n_mis": str(n_mis), "ex08_n_correct": str(n_correct), "ex08_p_min": f"{p_min:.3g}",
            "ex08_tests": str(family.m), "ex08_p_min_holm": f"{min(1.0, p_min * (family.m + 1)):.3g}",
            "ex08_alpha": f"{alpha:g}", "ex08_verdicts": counts_sentence(family.counts()),
            "ex08_verdicts_10": counts_sentence(decided_at(chapter_claims, 0.10).counts())}
