"""A chapter's family of claims: Holm across it, the verdicts, the table, the rules, the discussion."""

from __future__ import annotations

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
                 alpha: float = ALPHA, power: float = POWER, context: str = ""):
        if not 0 < alpha < 1 or not 0 < power < 1:
            raise ValueError(f"alpha and power must be in (0, 1), got {alpha}, {power}")
        self.claims, self.title, self.alpha, self.power, self.context = list(claims), title, alpha, power, context
        self._decide()

    # ------------------------------------------------------------------ deciding
    def _decide(self) -> None:
        tests = []
        for c in self.claims:
            for part in c.parts():
                if isinstance(c, AllOf) and not c.applicable:
                    part.applicable, part.reason = False, c.reason
                part.evidence = part._evaluate(self.alpha, self.power)
                ev = part.evidence
                if ev.applicable and ev.decided is None:
                    tests.append(part)
        self.m = len(tests)
        pf = holm([t.evidence.p_for for t in tests])
        pa = holm([t.evidence.p_against for t in tests])
        for t, a, b in zip(tests, pf, pa):
            t.p_for_adj, t.p_against_adj = float(a), float(b)
        for c in self.claims:
            for part in c.parts():
                part.verdict = self._verdict(part)
            if isinstance(c, AllOf):
                vs = [p.verdict for p in c.parts()]
                c.evidence = Evidence(min((p.evidence.n for p in c.parts()), default=0),
                                      "; ".join(f"{p.text}: {p.evidence.estimate}" for p in c.parts()),
                                      needed=_max_needed([p for p in c.parts()]),
                                      applicable=c.applicable and bool(vs), reason=c.reason)
                if not c.applicable or not vs or all(v == NOT_APPLICABLE for v in vs):
                    c.verdict = NOT_APPLICABLE
                elif NOT_HELD in vs:
                    c.verdict = NOT_HELD
                elif all(v == HELD for v in vs):
                    c.verdict = HELD
                else:
                    c.verdict = INCONCLUSIVE

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
        lines = [f"**{self.title}**", "",
                 "| # | claim | source | n | evidence | p (Holm) | images needed | power at this n | verdict |",
                 "| --- | --- | --- | ---: | --- | ---: | ---: | --- | --- |"]
        for i, c in enumerate(self.claims, 1):
            ev = c.evidence
            ptxt = _p_cell(c)
            evidence = ev.estimate if ev.applicable else f"not testable: {ev.reason}"
            lines.append(f"| {i} | {c.text} | {'thesis' if c.source == THESIS else 'ours'} | {_count(c)} | {evidence} | "
                         f"{ptxt} | {fmt_n(ev.needed) if ev.applicable else '–'} | {_power_at_n(c)} | "
                         f"{BADGE[c.verdict]} |")
        checked = all(isinstance(p, Invariant) for c in self.claims for p in c.parts())
        tests = ("no test, so no Holm's correction: every claim here is checked, not tested" if self.m == 0 else
                 f"Holm's correction over the {self.m} test{'s' if self.m != 1 else ''} of this chapter")
        lines += ["", f"*Rules, declared before the data (α = {self.alpha}; {tests}"
                  f"{'' if checked else '; the unit is the image'}):*", ""]
        for i, c in enumerate(self.claims, 1):
            lines.append(f"{i}. {c.rule(self.alpha)}.")
            if isinstance(c, AllOf):
                for p in c.parts():
                    lines.append(f"   - {p.text}: {p.rule(self.alpha)} ({BADGE[p.verdict]}).")
        lines += ["", f"*Images needed*: the number of images at which the test would reach {self.power:.0%} power "
                  f"at α = {self.alpha} (one-sided, before Holm) if the true effect were the one observed, in the "
                  "direction observed; ∞ when no effect was observed. *Power at this n*: whether the images at hand "
                  "reach that number, so that a real effect of the size observed would usually be detected; it says "
                  "how far to trust an inconclusive verdict, and every verdict is decided either way by the rule "
                  "above (an invariant is checked on every item and needs no power)."]
        return "\n".join(lines)

    def power_summary(self, source: str | None = THESIS) -> dict:
        """How many testable claims (of ``source``; None: all) this n has the power to decide."""
        cs = [c for c in self.claims if (source is None or c.source == source) and c.evidence.applicable]
        enough = [c for c in cs if _has_power(c)]
        short = [c.evidence.needed for c in cs if not _has_power(c)]
        finite = [n for n in short if n is not None and n != math.inf]
        return {"claims": len(cs), "enough": len(enough), "short": len(short),
                "max_needed": max(finite) if finite else None}

    def discussion(self, n_images: int | None = None, censored: str = "", model: str = "") -> str:
        """A short discussion generated from the verdicts: what held, what did not, and why that may be."""
        k = self.counts()
        out = [f"**Discussion.** Of {len(self.claims)} claims, {k[HELD]} held, {k[NOT_HELD]} did not, "
               f"{k[INCONCLUSIVE]} {'was' if k[INCONCLUSIVE] == 1 else 'were'} inconclusive"
               + (f" and {k[NOT_APPLICABLE]} could not be tested" if k[NOT_APPLICABLE] else "") + "."]
        for c in self.claims:
            ev = c.evidence
            if c.verdict == HELD:
                out.append(f"*{c.text}* held on {_count(c)} ({ev.estimate}).")
            elif c.verdict == NOT_HELD:
                why = " The thesis measured VGG-16 on 5,000 images; a different model can order things differently." \
                    if c.source == THESIS else ""
                out.append(f"*{c.text}* did not hold: the data point the other way ({ev.estimate}).{why}")
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
                out.append(f"*{c.text}* was inconclusive: {why}.")
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
        if censored:
            out.append(censored)
        if model:
            out.append(model)
        if self.context:
            out.append(self.context)
        return " ".join(out)

    def _repr_markdown_(self) -> str:
        return self.markdown() + "\n\n" + self.discussion()

    def show(self, **discussion) -> None:
        """Display the verdict table, the rules and the discussion (keyword arguments go to :meth:`discussion`)."""
        from IPython.display import Markdown, display

        display(Markdown(self.markdown() + "\n\n" + self.discussion(**discussion)))


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
