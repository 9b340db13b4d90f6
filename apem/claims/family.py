"""A chapter's family of claims: Holm across it, the verdicts, the table, the rules, the discussion."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd

from apem.claims.base import (
    ALPHA, BADGE, HELD, INCONCLUSIVE, NOT_APPLICABLE, NOT_HELD, POWER, THESIS, VERDICTS, Claim, Evidence, fmt_n,
    fmt_p,
)
from apem.claims.kinds import AllOf, Invariant, items as _items


# ----------------------------------------------------------------------------- the family


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979); NaNs stay NaN and do not count.

    With the ``m`` finite p-values sorted ascending, ``p~_(i) = max_{j <= i}
    min(1, (m - j + 1) p_(j))``. (statsmodels' ``multipletests(method="holm")`` computes
    the same, but does not let NaNs through and would add a dependency for six lines.)
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adj)
    return out


class Claims:
    """A chapter's family of claims, decided together (Holm) and shown by the object that decides.

    ``Claims(title, [claim, ...], alpha=0.05, power=0.8)``; ``display(claims)`` or
    leaving it as a cell's last expression shows the table, the rules and the
    discussion; :meth:`frame` gives the verdicts as a table (for tests).
    """

    def __init__(self, claims: list[Claim], title: str = "Did the claims hold on our model?",
                 alpha: float = ALPHA, power: float = POWER, context: str = "", sensitivity: bool = True):
        if not 0 < alpha < 1 or not 0 < power < 1:
            raise ValueError(f"alpha and power must be in (0, 1), got {alpha}, {power}")
        self.claims, self.title, self.alpha, self.power, self.context = list(claims), title, alpha, power, context
        unknown = [r for c in self.claims for r in c.refs() if r not in _statement_keys()]
        if unknown:
            raise ValueError(f"unknown thesis statement(s) {unknown}: a claim's ref is a key of apem.thesis.STATEMENTS")
        self._decide()
        self.censoring = sensitivity and any(p.censored_images() for c in self.claims for p in c.parts())
        for c in self.claims:
            c.verdict_without_censored = None
        if self.censoring:
            self._without_censored()

    def _without_censored(self) -> None:
        """The sensitivity check: the same family decided with every claim's censored images left out."""
        def strip(c):
            if isinstance(c, AllOf):
                d = copy.copy(c)
                d.of = [strip(p) for p in c.of]
                return d
            return c.without(c.censored_images())

        other = Claims([strip(c) for c in self.claims], alpha=self.alpha, power=self.power, sensitivity=False)
        for c, d in zip(self.claims, other.claims):
            c.verdict_without_censored = d.verdict
            c.evidence_without_censored = d.evidence

    # ------------------------------------------------------------------ deciding
    def _decide(self) -> None:
        tests = []
        for c in self.claims:
            for part in c.parts():
                # a claim object may be decided again (another alpha, another family): nothing carries over
                part.p_for_adj = part.p_against_adj = part.p_best = np.nan
                part.cannot_hold = False
                if isinstance(c, AllOf) and not c.applicable:
                    part.applicable, part.reason = False, c.reason
                part.evidence = part._evaluate(self.alpha, self.power)
                ev = part.evidence
                if ev.applicable and ev.decided is None:
                    tests.append(part)
        tests = self._decidable(tests)
        self.m = len(tests)
        # Holm over both directions together: 2m one-sided p-values (each claim for and against), so the
        # chance of any wrong verdict, held or not held, stays below alpha (separate families would allow 2 alpha)
        ps = [t.evidence.p_for for t in tests] + [t.evidence.p_against for t in tests]
        self.n_p = int(np.isfinite(np.asarray(ps, dtype=float)).sum())  # a never-held claim has no p for it
        adj = holm(ps)
        for t, a, b in zip(tests, adj[:self.m], adj[self.m:]):
            t.p_for_adj, t.p_against_adj = float(a), float(b)
            t.p_best = min(1.0, (self.m + 1) * t.evidence.p_min) if np.isfinite(t.evidence.p_min) else np.nan
            t.cannot_hold = bool(np.isfinite(t.p_best) and t.p_best >= self.alpha)
        for c in self.claims:
            for part in c.parts():
                part.verdict = self._verdict(part)
            if isinstance(c, AllOf):
                vs = [p.verdict for p in c.parts()]
                c.evidence = Evidence(min((p.evidence.n for p in c.parts()), default=0),
                                      "; ".join(f"{p.text}: {p.evidence.estimate}" for p in c.parts()),
                                      needed=_max_needed([p for p in c.parts()]),
                                      applicable=c.applicable and bool(vs), reason=c.reason)
                undecidable = [p for p in c.parts() if p.evidence.undecidable]
                if not c.applicable or not vs or all(v == NOT_APPLICABLE for v in vs):
                    c.verdict = NOT_APPLICABLE
                    if undecidable:
                        c.evidence.applicable, c.evidence.undecidable = False, True
                        c.evidence.reason = "undecidable at this n: " + "; ".join(
                            f"{p.text}: {p.evidence.reason.removeprefix('undecidable at this n: ')}" for p in undecidable)
                elif NOT_HELD in vs:
                    c.verdict = NOT_HELD
                elif undecidable:  # it can never hold: a part no data could decide
                    c.verdict = NOT_APPLICABLE
                    c.evidence.applicable, c.evidence.undecidable = False, True
                    c.evidence.reason = ("undecidable at this n: it holds only when every part does, and "
                                         + "; ".join(f"{p.text} cannot be decided" for p in undecidable))
                elif all(v == HELD for v in vs):
                    c.verdict = HELD
                else:
                    c.verdict = INCONCLUSIVE

    def _decidable(self, tests: list) -> list:
        """The tests some data could decide at their n; the others become *not applicable: undecidable*.

        Decided from the sample sizes alone, before any p-value is read. With ``m`` tests in the family
        (``2m`` one-sided p-values), a test whose smallest reachable p is ``p_min`` can at best get a
        Holm-adjusted ``(m + 1) p_min`` (at most one of each claim's two p-values is below 1/2, so it
        ranks at most ``m``-th). A test counts with the smaller of its two sides' ``p_min`` (held, or
        refuted); the largest ``k`` such that the ``k`` tests with the smallest all have ``(k + 1) p_min <
        alpha`` are kept (ties in the order the claims are declared). The rest could not be decided either
        way by any data of their size: they are kept out of the family and of the counts of inconclusive
        verdicts. A kept test that could be refuted but never held is *undecidable* too unless it is
        refuted (:meth:`_verdict`).
        """
        def reach(t):
            ps = [p for p in (t.evidence.p_min, t.evidence.p_min_against) if np.isfinite(p)]
            return min(ps) if ps else 0.0

        pmin = [reach(t) for t in tests]
        order = sorted(range(len(tests)), key=lambda i: pmin[i])
        k = 0
        for j, i in enumerate(order, 1):
            if (j + 1) * pmin[i] < self.alpha:
                k = j
        keep = set(order[:k])
        for i, t in enumerate(tests):
            if i not in keep:
                best = min(1.0, (k + 2) * pmin[i])  # were it added: k + 1 tests, ranked (k + 1)-th at best
                t.evidence.applicable = False
                t.evidence.undecidable = True
                t.p_best = best
                t.evidence.reason = (f"undecidable at this n: on {t.evidence.n} images its test's smallest p is "
                                     f"{_fmt_small(pmin[i])}, at best {_fmt_small(best)} after Holm's correction, "
                                     f"not below α = {self.alpha}")
        return [t for i, t in enumerate(tests) if i in keep]

    def _verdict(self, c: Claim) -> str:
        ev = c.evidence
        if not ev.applicable:
            return NOT_APPLICABLE
        if ev.decided is not None:
            return ev.decided
        if c.p_for_adj < self.alpha:
            return HELD
        if c.p_against_adj < self.alpha:
            return NOT_HELD
        if getattr(c, "cannot_hold", False):  # it could only have been refuted, and was not
            ev.undecidable = True
            ev.reason = (f"undecidable at this n: on {ev.n} images its test's smallest p for the claim is "
                         f"{_fmt_small(ev.p_min)}, at best {_fmt_small(c.p_best)} after Holm's correction, not below "
                         f"α = {self.alpha}; it could only have been refuted, and was not")
            return NOT_APPLICABLE
        return INCONCLUSIVE

    # ------------------------------------------------------------------ reading
    def __iter__(self):
        return iter(self.claims)

    def __len__(self):
        return len(self.claims)

    def verdict(self, text_start: str) -> str:
        """The verdict of the first claim whose text starts with ``text_start``."""
        for c in self.claims:
            if c.text.startswith(text_start):
                return c.verdict
        raise KeyError(text_start)

    def frame(self) -> pd.DataFrame:
        """One row per claim: text, source, n, estimate, Holm-adjusted p for and against, images needed, verdict."""
        rows = []
        for c in self.claims:
            ev = c.evidence
            p = c.p_for_adj if np.isfinite(c.p_for_adj) else np.nan
            rows.append({"claim": c.text, "source": c.source, "n": ev.n, "estimate": ev.estimate,
                         "p_holm": p, "p_against_holm": c.p_against_adj, "needed": ev.needed,
                         "verdict": c.verdict, "rule": c.rule(self.alpha), "reason": ev.reason})
        return pd.DataFrame(rows)

    def counts(self) -> dict:
        """How many claims got each verdict (``{"held": 3, "not held": 0, ...}``)."""
        return {v: sum(c.verdict == v for c in self.claims) for v in VERDICTS}

    # ------------------------------------------------------------------ showing
    def markdown(self) -> str:
        """The verdict table in Markdown (the family's title, one row per claim)."""
        extra = self.censoring
        lines = [f"**{self.title}**", "",
                 "| # | claim | source | n | evidence | p (Holm) | smallest p possible | images needed | "
                 "power at this n | verdict |" + (" censored images left out |" if extra else ""),
                 "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | --- | --- |" + (" --- |" if extra else "")]
        for i, c in enumerate(self.claims, 1):
            ev = c.evidence
            ptxt = _p_cell(c)
            evidence = (f"{ev.estimate}; {ev.reason}" if ev.undecidable else ev.estimate if ev.applicable
                        else f"not testable: {ev.reason}")
            lines.append(f"| {i} | {c.text} | {'thesis' if c.source == THESIS else 'ours'} | {_count(c)} | {evidence} | "
                         f"{ptxt} | {_best_cell(c)} | {fmt_n(ev.needed) if ev.applicable else '–'} | "
                         f"{_power_at_n(c)} | {BADGE[c.verdict]} |" + (f" {_sensitivity_cell(c)} |" if extra else ""))
        checked = all(isinstance(p, Invariant) for c in self.claims for p in c.parts())
        undecidable = any(p.evidence.undecidable for c in self.claims for p in c.parts())
        tests = ("no claim can be decided at these sizes, so no test is run and no Holm's correction"
                 if self.m == 0 and undecidable else
                 "no test, so no Holm's correction: every claim here is checked, not tested" if self.m == 0 else
                 f"Holm's correction over the {self.m} test{'s' if self.m != 1 else ''} of this chapter, each "
                 f"tested for and against the claim: {self.n_p} one-sided p-values in one family, so the chance "
                 f"of any wrong verdict, held or not held, stays below α")
        lines += ["", f"*Rules, declared before the data (α = {self.alpha}; {tests}"
                  f"{'' if checked else '; the unit is the image'}):*", ""]
        for i, c in enumerate(self.claims, 1):
            lines.append(f"{i}. {c.rule(self.alpha)}.")
            if isinstance(c, AllOf):
                for p in c.parts():
                    lines.append(f"   - {p.text}: {p.rule(self.alpha)} ({BADGE[p.verdict]}).")
        if extra:
            lines += ["", "*Censored searches* enter every claim at the bound, as the restricted value "
                      "min(ε, bound): a censored ε is at least the bound, so it ranks above every uncensored one and "
                      "two censored values tie. *Censored images left out* decides the same claims with the images "
                      "whose value is censored left out (Holm over that family): where the two verdicts differ, the "
                      "verdict depends on how censoring is treated."]
        lines += ["", "*Smallest p possible*: the smallest Holm-adjusted p the claim's test could reach at its n "
                  "whatever the data (every image on one side; the claim's p the family's smallest but for the "
                  "others); a claim whose smallest possible p is not below α could not be decided by any data of "
                  "this size, and is marked *not applicable* (undecidable) from its size alone, before its "
                  "p-values are read, and left out of Holm's family.",
                  "", f"*Images needed*: the number of images at which the test would reach {self.power:.0%} power "
                  f"at α = {self.alpha} (one-sided, before Holm) if the true effect were the one observed, in the "
                  "direction observed; ∞ when no effect was observed. *Power at this n*: whether the images at hand "
                  "reach that number, so that a real effect of the size observed would usually be detected; it says "
                  "how far to trust an inconclusive verdict, and every verdict is decided either way by the rule "
                  "above (an invariant is checked on every item and needs no power)."]
        return "\n".join(lines)

    def power_summary(self, source: str | None = THESIS) -> dict:
        """How many testable claims (of ``source``; None: all) this n has the power to decide."""
        cs = [c for c in self.claims if (source is None or c.source == source) and c.evidence.applicable
              and not c.evidence.undecidable]
        enough = [c for c in cs if _has_power(c)]
        short = [c.evidence.needed for c in cs if not _has_power(c)]
        finite = [n for n in short if n is not None and n != math.inf]
        return {"claims": len(cs), "enough": len(enough), "short": len(short),
                "max_needed": max(finite) if finite else None}

    def discussion(self, n_images: int | None = None, censored: str = "", model: str = "") -> str:
        """A short discussion generated from the verdicts: what held, what did not, and why that may be."""
        k = self.counts()
        n_undecidable = sum(bool(c.evidence.undecidable) for c in self.claims)
        out = [f"**Discussion.** Of {len(self.claims)} claims, {k[HELD]} held, {k[NOT_HELD]} did not, "
               f"{k[INCONCLUSIVE]} {'was' if k[INCONCLUSIVE] == 1 else 'were'} inconclusive"
               + (f" and {k[NOT_APPLICABLE]} could not be tested" if k[NOT_APPLICABLE] else "")
               + (f" ({n_undecidable} of them because no data of {'its' if k[NOT_APPLICABLE] == 1 else 'their'} "
                  "size could decide them)" if n_undecidable else "") + "."]
        for c in self.claims:
            ev = c.evidence
            if c.verdict == HELD:
                out.append(f"*{c.text}* held on {_count(c)} ({ev.estimate}).")
            elif c.verdict == NOT_HELD:
                out.append(f"*{c.text}* did not hold: the data point the other way ({ev.estimate}).")
            elif c.verdict == INCONCLUSIVE:
                need = ev.needed
                if (need is None or need == math.inf) and isinstance(c, AllOf):
                    why = "at least one of its parts showed no effect in either direction"
                elif need is None or need == math.inf:
                    why = "no effect in either direction was observed"
                elif need > ev.n:
                    why = (f"at the observed effect about {fmt_n(need)} images would be needed for "
                           f"{self.power:.0%} power, and there were {ev.n}")
                else:
                    why = (f"the observed effect would usually be detectable with {ev.n} images, so this is chance "
                           f"or Holm's correction over {self.m} test{'s' if self.m != 1 else ''}")
                out.append(f"*{c.text}* was inconclusive ({_lean(c)}): {why}.")
            else:
                out.append(f"*{c.text}* could not be tested: {ev.reason}.")
        ps = self.power_summary(THESIS)
        if ps["claims"]:
            out.append(f"Power: at these sizes the observed effects of {ps['enough']} of the {ps['claims']} testable "
                       f"thesis claims can be decided" + (
                           f"; {ps['short']} would need more images"
                           + (f" (up to {fmt_n(ps['max_needed'])} where an effect was seen)"
                              if ps["max_needed"] is not None else "")
                           if ps["short"] else "") + ".")
        if self.censoring:
            moved = [c for c in self.claims if c.verdict_without_censored not in (None, c.verdict)
                     and c.verdict != NOT_APPLICABLE]
            out.append("With the censored images left out, " + (
                "every verdict stays the same." if not moved else
                "; ".join(f"*{c.text}* would be {c.verdict_without_censored} instead of {c.verdict}" for c in moved)
                + ": these verdicts depend on how censoring is treated."))
        if censored:
            out.append(censored)
        if model:
            out.append(model)
        if self.context:
            out.append(self.context)
        return " ".join(out)

    def metadata(self) -> dict:
        """What the output records beside the table: the family's title and each claim's thesis statements
        (:attr:`Claim.ref`), text, source and verdict, under the key ``"apem_claims"``. The coverage page
        (:mod:`apem.book.coverage`) reads it from the executed chapters."""
        return {"apem_claims": {"title": self.title, "claims": [
            {"refs": list(c.refs()), "text": c.text, "source": c.source, "verdict": c.verdict,
             "reason": c.evidence.reason if c.verdict == NOT_APPLICABLE else ""}
            for c in self.claims]}}

    def _repr_markdown_(self):
        # (data, metadata): IPython's formatters store the metadata beside the Markdown in the notebook
        return self.markdown() + "\n\n" + self.discussion(), self.metadata()

    def show(self, **discussion) -> None:
        """Display the verdict table, the rules and the discussion (keyword arguments go to :meth:`discussion`)."""
        from IPython.display import Markdown, display

        display(Markdown(self.markdown() + "\n\n" + self.discussion(**discussion)), metadata=self.metadata())


def _statement_keys() -> set:
    from apem.thesis import STATEMENTS

    return {s.key for s in STATEMENTS}


def _sensitivity_cell(c: Claim) -> str:
    """The "censored images left out" cell: the verdict of the sensitivity check, or why there is none."""
    if not any(p.censored_images() for p in c.parts()):
        return "no censored image" if c.verdict != NOT_APPLICABLE else "–"
    ev = getattr(c, "evidence_without_censored", None)
    n = f" ({ev.n} images)" if ev is not None and not isinstance(c, AllOf) else ""
    same = "" if c.verdict_without_censored != c.verdict else ", the same"
    return f"{BADGE[c.verdict_without_censored]}{n}{same}"


def _lean(c: Claim) -> str:
    """Which way the data of an inconclusive claim lean: towards it, against it, or neither (from the evidence)."""
    if isinstance(c, AllOf):
        ds = [p.evidence.direction for p in c.parts() if p.evidence.applicable and p.evidence.decided is None]
        k_for, k_against = sum(d > 0 for d in ds), sum(d < 0 for d in ds)
        return (f"of its {len(ds)} parts, the data lean towards {k_for} and against {k_against}"
                + (f", neither way on {len(ds) - k_for - k_against}" if len(ds) > k_for + k_against else ""))
    d = c.evidence.direction
    return ("the data lean towards it" if d > 0 else "the data lean against it" if d < 0 else
            "the data lean neither way")


def _fmt_small(p: float) -> str:
    """A p-value that may be tiny, for the undecidable reason: three significant digits."""
    return "0" if p == 0 else f"{p:.3g}"


def _best_cell(c: Claim) -> str:
    """The "smallest p possible" cell: the smallest Holm-adjusted p the claim's test could reach at its n."""
    if isinstance(c, AllOf):
        ps = [p.p_best for p in c.parts() if np.isfinite(p.p_best)]
        return f"max {fmt_p(max(ps))}" if ps else "–"
    return fmt_p(c.p_best) if np.isfinite(c.p_best) else "–"


def _has_power(c: Claim) -> bool:
    """The images at hand reach the images needed (an invariant needs no power: it is checked, not tested)."""
    ev = c.evidence
    if isinstance(c, Invariant):
        return True
    return ev.needed is not None and ev.needed != math.inf and ev.needed <= ev.n


def _power_at_n(c: Claim) -> str:
    """The "power at this n" cell: yes, or how many images the observed effect would need."""
    if not c.evidence.applicable:
        return "–"
    if _has_power(c):
        return "yes"
    need = c.evidence.needed
    return "no effect seen" if need is None or need == math.inf else f"no: needs {fmt_n(need)}"


def _count(c: Claim) -> str:
    """``n`` with its unit: images, or the items an :class:`Invariant` is checked on."""
    n = c.evidence.n
    return f"{n} {_items(c.what, n)}" if isinstance(c, Invariant) else f"{n} image{'s' if n != 1 else ''}"


def _max_needed(parts) -> float | None:
    vals = [p.evidence.needed for p in parts if p.evidence.applicable and p.evidence.needed is not None]
    return max(vals) if vals else None


def _p_cell(c: Claim) -> str:
    if isinstance(c, AllOf):
        ps = [p.p_for_adj for p in c.parts() if np.isfinite(p.p_for_adj)]
        return f"max {fmt_p(max(ps))}" if ps else "–"
    if c.verdict == NOT_HELD:
        return f"{fmt_p(c.p_for_adj)} (against: {fmt_p(c.p_against_adj)})"
    return fmt_p(c.p_for_adj)
