"""The numbers the end-of-chapter exercises' solutions quote, computed from the chapter's page.

Every chapter ends with exercises (sphinx-exercise directives, format in the chapters'
"Exercises" sections); a solution that quotes a number takes it from this build through
MyST-NB's glue: a hidden cell calls :func:`glue` with the chapter's page object, which
computes :func:`values` (name -> text, names ``exNN_...``) from the same results the page
shows and glues each one (``{glue:text}`exNN_name``` in the solution).

A value that the configuration cannot give (e.g. stage 1 when ``stages`` lacks it) is a
sentence that says so, never a number typed in.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
from scipy.special import comb

from apem import claims as cl
from apem import stats, thesis
from apem.book import display

# ----------------------------------------------------------------------------- helpers (tested)


def order_by_mean(table: pd.DataFrame, seed: int = 0) -> str:
    """The methods of ``table`` (one stage) from the highest mean APEM to the lowest: ``"Gradient > LRP-ε > ..."``."""
    S = stats.summary_table(table, by="method", seed=seed)
    R = stats.ranking(S)
    return " > ".join(thesis.label(m) for m in R.index)


def means_sentence(table: pd.DataFrame, seed: int = 0) -> str:
    """``"Gradient 128.8, SmoothGrad ≥ 1515.8, ..."``: mean APEM per method as censoring leaves it (a bound marked)."""
    S = stats.summary_table(table, by="method", seed=seed)
    return ", ".join(f"{thesis.label(m)} {display.fmt_mean(float(r['mean']), r.get('mean_bound', 'exact'), 0)}"
                     for m, r in S.iterrows())


def counts_sentence(counts: dict) -> str:
    """``{"held": 1, ...}`` -> ``"1 held, 0 not held, 4 inconclusive, 2 not applicable"``."""
    return ", ".join(f"{int(counts.get(v, 0))} {v}" for v in cl.VERDICTS)


def verdicts_at(page, alpha: float) -> dict:
    """The chapter's verdict counts if its claims were decided at level ``alpha`` (the page itself is not changed)."""
    other = copy.copy(page)
    other.alpha = alpha
    return other.claims().counts()


def all_success_n(threshold: float, alpha: float) -> int:
    """The fewest images at which k = n of n can show a share above ``threshold`` (one-sided exact binomial).

    With every image a success the exact p-value is ``threshold ** n``; it falls below ``alpha``
    from ``n = ceil(log(alpha) / log(threshold))`` on (before any multiplicity correction).
    """
    n = math.ceil(math.log(alpha) / math.log(threshold))
    return n + 1 if threshold ** n >= alpha else n


def smallest_mann_whitney_p(n1: int, n2: int) -> float:
    """The smallest one-sided p-value an exact Mann-Whitney test can give with groups of n1 and n2 (no ties)."""
    return 1.0 / comb(n1 + n2, n1, exact=True) if n1 and n2 else float("nan")


def _stage_rows(T: pd.DataFrame, stage: int, group: str = "correct") -> pd.DataFrame:
    return T[(T.group == group) & (T.stage == stage)]


def _no_stage(stage: int, cfg) -> str:
    return f"(stage {stage} is not in this configuration's stages {list(cfg.stages)})"


# ----------------------------------------------------------------------------- per chapter


def _ch01(page) -> dict:
    from apem.chapters.ch01 import EXACT_MIN

    T = page.res.table
    rows = T[(T.image_id == page.iid) & (T.stage == page.stage)]
    walk = "; ".join(
        f"{thesis.label(r.method)}: ε⁻ = {'≥ ' if r.censored_minus else ''}{cl.fmt(r.eps_minus, 0)}, "
        f"ε⁺ = {'≥ ' if r.censored_plus else ''}{cl.fmt(r.eps_plus, 0)}, APEM = {cl.fmt(r.apem, 0)}"
        for r in rows.itertuples())
    O = page.outcomes
    have = O.non_monotone.notna()
    c = page.claims()
    return {"ex01_image": str(page.iid), "ex01_stage": str(page.stage), "ex01_walk": walk,
            "ex01_compared": str(int(have.sum())), "ex01_alpha": f"{page.alpha:g}",
            "ex01_exact_min": cl.fmt(EXACT_MIN, 0, pct=True),
            "ex01_n_min": str(all_success_n(EXACT_MIN, page.alpha)),
            "ex01_tests": str(c.m)}


def _ch02(page) -> dict:
    t = page._table41()
    stab = t[t.property == "numerically stable"]
    lrp = page.lrp()
    stable = ", ".join(f"{v} {cl.fmt(float(x), 4)}" for v, x in zip(stab.variant, stab.value))
    other = 0.01 if page.alpha != 0.01 else 0.05
    return {"ex02_lrp_n": str(int(lrp.image_id.nunique())), "ex02_stability": stable,
            "ex02_stability_max": cl.fmt(float(stab.threshold.iloc[0]), 0, pct=True) if len(stab) else "–",
            "ex02_alpha": f"{page.alpha:g}", "ex02_verdicts": counts_sentence(page.claims().counts()),
            "ex02_other_alpha": f"{other:g}", "ex02_verdicts_other": counts_sentence(verdicts_at(page, other))}


def _ch03(page) -> dict:
    T, seed = page.res.table, page.cfg.seed
    out = {"ex03_stage": str(page.stage), "ex03_order": order_by_mean(page.C, seed),
           "ex03_means": means_sentence(page.C, seed=seed)}
    s1 = _stage_rows(T, 1)
    out["ex03_order_s1"] = order_by_mean(s1, seed) if len(s1) else _no_stage(1, page.cfg)
    return out


def _ch04(page) -> dict:
    from apem.chapters.ch04 import drops

    C = page.C
    first, last = page.stages[0], page.stages[-1]
    d = drops(C, first, last)
    drop = ", ".join(f"{thesis.label(m)} {cl.fmt(float(v.mean()), 0)}" for m, v in d.items())
    from apem.studies.encoding import encoding_shift

    E = encoding_shift(page.res, n_images=page.encoding_images)
    d = E[["d_eps_minus", "d_eps_plus"]].to_numpy(dtype=float).ravel()
    d = d[~np.isnan(d)]
    changed = float((d != 0).mean()) if d.size else float("nan")
    n_img = int(E.image_id.nunique())
    largest = cl.fmt(float(np.abs(d).max()), 0) if d.size else "–"
    return {"ex04_first": str(first), "ex04_last": str(last), "ex04_drop": drop,
            "ex04_enc_images": str(n_img), "ex04_enc_changed": cl.fmt(changed, 0, pct=True),
            "ex04_enc_largest": largest, "ex04_encoding": page.cfg.map_encoding}


def _ch05(page) -> dict:
    F = page.F
    d = F[F.defined]
    per_image = d.groupby("image_id").removed_fraction.mean()
    by_method = d.groupby("method", sort=False).removed_fraction.mean()
    return {"ex05_threshold": cl.fmt(page.removed_threshold, 0, pct=True),
            "ex05_images": str(int(per_image.size)),
            "ex05_removed": ", ".join(cl.fmt(float(v), 0, pct=True) for v in per_image),
            "ex05_by_method": ", ".join(f"{thesis.label(m)} {cl.fmt(float(v), 0, pct=True)}"
                                        for m, v in by_method.items()),
            "ex05_steps": cl.fmt(float(d.steps.median()), 0),
            "ex05_seconds": cl.fmt(float(F.seconds.mean()), 1),
            "ex05_fast_k": str(page.cfg.filter_fast_k)}


def _ch06(page) -> dict:
    from apem.chapters.ch06 import flips

    rows = []
    for a, b in (("gradient", "smoothgrad"), (page.a, page.b)):
        if a in page.methods and b in page.methods:
            f = flips(page.C, a, b)
            n, k = int(f.notna().sum()), int(f.sum())
            rows.append(f"{k} of {n}")
        else:
            rows.append("– (a method is not in this configuration)")
    return {"ex06_flips_grad_sg": rows[0], "ex06_flips_ab": rows[1], "ex06_a": thesis.label(page.a),
            "ex06_b": thesis.label(page.b), "ex06_common": cl.fmt(page.common, 0, pct=True)}


def _ch07(page) -> dict:
    C = page.C
    s = page.claim_stages[0] if len(page.claim_stages) == 1 else max(page.stages)
    Cs = C[C.stage == s]
    out = {"ex07_shuffles": str(page.cfg.shuffles), "ex07_stage": str(s)}
    if not page.has_shuffles or Cs.empty:
        out.update(ex07_eps_shuffle="(no shuffled baseline in this configuration)", ex07_shuffled_apem="–",
                   ex07_norm="–")
        return out
    out["ex07_eps_shuffle"] = (f"mean ε-shuffle⁻ {cl.fmt(float(Cs.eps_shuffle_minus.mean()), 0)} and mean "
                               f"ε-shuffle⁺ {cl.fmt(float(Cs.eps_shuffle_plus.mean()), 0)}")
    out["ex07_shuffled_apem"] = ", ".join(f"{thesis.label(m)} {cl.fmt(float(g.apem_shuffle.mean()), 0)}"
                                          for m, g in Cs.groupby("method", sort=False))
    out["ex07_norm"] = ", ".join(f"{thesis.label(m)} {cl.fmt(float(g.apem_norm_term.mean()), 2)}"
                                 for m, g in Cs.groupby("method", sort=False))
    return out


def _ch08(page) -> dict:
    T = page.res.table

    def groups(stage):
        D = T[T.stage == stage]
        if D.empty:
            return _no_stage(stage, page.cfg)
        parts = []
        for m in dict.fromkeys(D.method):
            g = D[D.method == m]
            c = cl.per_image(g[g.correct.astype(bool)], "apem").mean()
            w = cl.per_image(g[~g.correct.astype(bool)], "apem").mean()
            parts.append(f"{thesis.label(m)} {cl.fmt(float(c), 0)} (correct) against {cl.fmt(float(w), 0)} "
                         "(misclassified)")
        return "; ".join(parts)

    n1, n2 = page.n_mis, page.n_correct
    c = page.claims()
    p_min = smallest_mann_whitney_p(n1, n2)
    return {"ex08_stage": str(page.stage), "ex08_means": groups(page.stage), "ex08_means_s1": groups(1),
            "ex08_n_mis": str(n1), "ex08_n_correct": str(n2), "ex08_p_min": cl.fmt(p_min, 3),
            "ex08_tests": str(c.m), "ex08_p_min_holm": cl.fmt(min(1.0, p_min * c.m), 3),
            "ex08_alpha": f"{page.alpha:g}", "ex08_verdicts": counts_sentence(c.counts()),
            "ex08_verdicts_10": counts_sentence(verdicts_at(page, 0.10))}


def _ch09(page) -> dict:
    from apem.chapters.ch09 import correlations

    T = page.res.table

    def rhos(D):
        R = correlations(D, page.alpha)
        R = R[(R.group == "correct") & R.row.isin(page.methods)]
        return ", ".join(f"{thesis.label(r.row)} {cl.fmt(float(r.rho), 2, sign=True)}" for r in R.itertuples())

    D1 = T[T.stage == 1]
    return {"ex09_alpha": f"{page.alpha:g}", "ex09_verdicts": counts_sentence(page.claims().counts()),
            "ex09_verdicts_01": counts_sentence(verdicts_at(page, 0.01)),
            "ex09_verdicts_10": counts_sentence(verdicts_at(page, 0.10)),
            "ex09_stage": str(page.stage), "ex09_rho": rhos(page.D),
            "ex09_rho_s1": rhos(D1) if len(D1) else _no_stage(1, page.cfg)}


def _ch10(page) -> dict:
    from apem import studies

    scores = page.scores
    AG = studies.agreement_table(scores, n_boot=200)
    apem_rows = AG[(AG.metric_a == "APEM") | (AG.metric_b == "APEM")]
    from apem.chapters.ch10 import name

    taus = ", ".join(f"{cl.fmt(float(r.tau_mean), 2, sign=True)} with "
                     f"{name(r.metric_b if r.metric_a == 'APEM' else r.metric_a)}" for r in apem_rows.itertuples())
    c = page.claims()
    needed = [x.evidence.needed for x in c if x.evidence is not None and x.evidence.applicable
              and x.evidence.needed is not None]
    finite = [n for n in needed if np.isfinite(n)]
    return {"ex10_n": str(int(scores.image_id.nunique())), "ex10_stage": str(page.stage), "ex10_taus": taus,
            "ex10_needed": cl.fmt_n(min(finite)) if finite else "∞ (no effect observed)",
            "ex10_verdicts": counts_sentence(c.counts())}


def _ch11(page) -> dict:
    sim = page.sim
    full = sim[(sim.step == sim.step.max()) & (sim.vis_stage == sim.vis_stage.max())]
    med = full.groupby("method", sort=False).spearman.median()
    rho = ", ".join(f"{thesis.label(m)} {cl.fmt(float(v), 2, sign=True)}" for m, v in med.items())
    return {"ex11_threshold": cl.fmt(page.threshold, 2), "ex11_rho": rho,
            "ex11_pass_02": ", ".join(thesis.label(m) for m, v in med.items() if v < 0.2) or "none",
            "ex11_pass": ", ".join(thesis.label(m) for m, v in med.items() if v < page.threshold) or "none",
            "ex11_smoothgrad_n": str(page.smoothgrad_n), "ex11_vis_stage": str(int(sim.vis_stage.max()))}


def _ch12(page) -> dict:
    A = page.ALL
    A = A[A.group == "correct"] if "group" in A else A
    seed = page.cfg.seed
    c = page.claims()
    out = {"ex12_stage": str(page.stage), "ex12_alpha": f"{page.alpha:g}", "ex12_tests": str(c.m),
           "ex12_verdicts": counts_sentence(c.counts()), "ex12_verdicts_10": counts_sentence(verdicts_at(page, 0.10))}
    for key, s in (("ex12_order", page.stage), ("ex12_order_s1", 1)):
        rows = A[A.stage == s]
        out[key] = order_by_mean(rows, seed) if len(rows) else _no_stage(s, page.cfg)
    return out


CHAPTERS = {f"ch{n:02d}": f for n, f in enumerate(
    (None, _ch01, _ch02, _ch03, _ch04, _ch05, _ch06, _ch07, _ch08, _ch09, _ch10, _ch11, _ch12)) if f}


def values(page) -> dict[str, str]:
    """The exercise values of the chapter whose page this is (its module ``apem.chapters.chNN``)."""
    key = type(page).__module__.rsplit(".", 1)[-1]
    if key not in CHAPTERS:
        raise KeyError(f"no exercises for {type(page).__module__}")
    return CHAPTERS[key](page)


def glue(page) -> None:
    """Glue every value of :func:`values` for the solutions (nothing is displayed)."""
    from myst_nb import glue as nb_glue

    for name, value in values(page).items():
        nb_glue(name, value, display=False)
