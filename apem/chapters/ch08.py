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
* :func:`exercise_values`: the numbers the exercises' solutions quote.

The figures are :func:`apem.figures.charts.censored_boxes`.
"""

from __future__ import annotations

import pandas as pd

from apem import claims, stats, thesis
from apem.book import display
from apem.book.exercises import counts_sentence, decided_at, smallest_mann_whitney_p

GROUPS = ("correct", "misclassified")


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
