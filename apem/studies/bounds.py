"""Censored searches searched again at higher bounds: how many stay censored, and whether a verdict moves.

A search that reaches the bound (the thesis's 10,001 steps) without changing the prediction
is censored: the book counts it, enters it at the bound and checks each verdict without it
(:mod:`apem.claims`). :func:`bound_study` asks the data instead: it searches every censored
search of the results table again on the **stored map** (the same map, image, target and
loss gradient the runner used, :func:`apem.metric.evaluate_maps` with the configuration's
:class:`~apem.metric.spec.SearchSpec`, shuffles off) at the configuration's own bound, which
must reproduce the table (column ``reproduces``), and at each higher bound. ``bisect``
brackets the first change in a few dozen forward passes whatever the bound, so the study
costs seconds per map. At each higher bound only the searches still censored at the bound
before are searched again: a side that changed the prediction keeps its step (measured on
the default configuration in December 2026, full searches at 10^5 and at 10^6 gave the
same step on each of its 129 censored maps; searching only what is still censored saves
the second pass). :func:`bound_summary` counts, per method and stage, the censored
searches and how many stay censored at each bound; :func:`with_bound` gives the table with
the re-searched epsilons in place of the censored ones, for deciding a chapter's claims
again.

Each image's rows are kept in the store's cells (:func:`apem.studies.common.cached_rows`),
its searches given that image's own clean pass (:func:`apem.studies.common.clean_inputs`, as
the runner's), so they depend on the image alone: the groups' studies share one key, and a
configuration with more images searches only the images no study searched before.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from apem.numerics import no_tf32
from apem.studies.common import cached_rows, clean_inputs

#: the bounds the book searches censored searches again at (the thesis's is 10,001)
BOUNDS = (10**5, 10**6)


@no_tf32()
def bound_study(res, bounds=BOUNDS, group: str | None = "correct", stages=None) -> pd.DataFrame:
    """Every censored search of ``group``'s images (None: every image), searched again at the configuration's bound
    and at ``bounds``.

    One row per (image, method, stage) with a censored ε⁻ or ε⁺ (undefined maps left out): ``image_id,
    method, stage``, for each bound ``B`` (the configuration's first) ``eps_minus_B, eps_plus_B,
    censored_minus_B, censored_plus_B``, and ``reproduces`` (the search at the configuration's bound gives
    the table's epsilons and flags). At a higher bound only the searches censored at the bound before are
    searched again. ``stages``: only these stages (None: every stage). Rows in the results table's order.
    Each image's rows are kept in the store's cells under the bounds (and ``stages``), so every image's
    searches are searched again once: ``group=None`` joins the groups' own studies.
    """
    if group is None:
        groups = list(dict.fromkeys(res.table.group))
        return pd.concat([bound_study(res, bounds, g, stages) for g in groups], ignore_index=True)
    cfg = res.cfg
    bounds = sorted({int(cfg.search_bound), *(int(b) for b in bounds)})
    if any(b < 2 for b in bounds):
        raise ValueError(f"a search bound must be at least 2, got {bounds}")
    T = res.table
    mine = (T.group == group) & (T.stage.isin([int(s) for s in stages]) if stages is not None else True)
    rows = T[mine & (T.censored_minus | T.censored_plus) & T.apem.notna()]
    ids = sorted(rows.image_id.unique().tolist())
    if not ids:
        return _empty(bounds)
    only = {} if stages is None else {"stages": sorted(int(s) for s in stages)}
    out = cached_rows(res, "bounds", lambda lack: _search(res, rows[rows.image_id.isin(lack)], bounds), ids,
                      bounds=bounds, **only)
    pos = {k: n for n, k in enumerate(zip(rows.image_id, rows.method, rows.stage.astype(int)))}  # the table's order
    order = np.argsort([pos[k] for k in zip(out.image_id, out.method, out.stage.astype(int))], kind="stable")
    return out.iloc[order].reset_index(drop=True)


def _search(res, rows: pd.DataFrame, bounds: list[int]) -> pd.DataFrame:
    from apem import metric
    from apem.seeds import seed_of

    cfg, lm = res.cfg, res.model
    out = rows[["image_id", "method", "stage", "eps_minus", "eps_plus", "censored_minus", "censored_plus"]]
    out = out.reset_index(drop=True)
    if out.empty:
        return _empty(bounds)
    ids = list(dict.fromkeys(out.image_id))
    dev = lm.device
    x, target, grad, info = clean_inputs(res, ids)  # each image's own, as the runner's
    maps = torch.stack([_three(res.map(r.image_id, r.method, int(r.stage))) for r in out.itertuples()])
    index = torch.tensor([ids.index(i) for i in out.image_id], device=dev)
    seeds = torch.tensor([seed_of(cfg.seed, r.image_id, r.method, int(r.stage)) for r in out.itertuples()],
                         dtype=torch.long)
    prev = None
    for b in bounds:
        # every search at the configuration's bound (the reproduction); at each higher bound only the searches
        # still censored at the one before: a side that changed the prediction keeps its step
        sel = (np.ones(len(out), dtype=bool) if prev is None
               else out[f"censored_minus_{prev}"].to_numpy() | out[f"censored_plus_{prev}"].to_numpy())
        got = {k: np.zeros(len(out), dtype=float if k.startswith("eps") else bool) for k in
               ("eps_minus", "eps_plus", "censored_minus", "censored_plus")}
        if sel.any():
            pick = torch.as_tensor(np.flatnonzero(sel), device=dev)
            r = metric.evaluate_maps(lm.model, x, maps[pick], target, spec=cfg.search().replace(bound=b, shuffles=0),
                                     image_index=index[pick], seeds=seeds[pick.cpu()], grad=grad, margin_info=info)
            for k in got:
                got[k][sel] = r[k].numpy()
        for side in ("minus", "plus"):
            again = sel if prev is None else sel & out[f"censored_{side}_{prev}"].to_numpy()
            if prev is None:
                out[f"eps_{side}_{b}"], out[f"censored_{side}_{b}"] = got[f"eps_{side}"], got[f"censored_{side}"]
            else:
                out[f"eps_{side}_{b}"] = np.where(again, got[f"eps_{side}"], out[f"eps_{side}_{prev}"])
                out[f"censored_{side}_{b}"] = np.where(again, got[f"censored_{side}"], False)
        prev = b
    b0 = bounds[0]
    out["reproduces"] = ((out[f"eps_minus_{b0}"] == out.eps_minus) & (out[f"eps_plus_{b0}"] == out.eps_plus)
                         & (out[f"censored_minus_{b0}"] == out.censored_minus)
                         & (out[f"censored_plus_{b0}"] == out.censored_plus))
    return out.drop(columns=["eps_minus", "eps_plus", "censored_minus", "censored_plus"])


def _three(m: torch.Tensor) -> torch.Tensor:
    """A stage map with three channels, as the runner searches it (a one-channel map repeated)."""
    return m.expand(3, -1, -1) if m.shape[0] == 1 else m


def _empty(bounds) -> pd.DataFrame:
    cols = {"image_id": pd.Series(dtype=str), "method": pd.Series(dtype=str), "stage": pd.Series(dtype=int)}
    for b in bounds:
        cols.update({f"eps_minus_{b}": pd.Series(dtype=float), f"eps_plus_{b}": pd.Series(dtype=float),
                     f"censored_minus_{b}": pd.Series(dtype=bool), f"censored_plus_{b}": pd.Series(dtype=bool)})
    cols["reproduces"] = pd.Series(dtype=bool)
    return pd.DataFrame(cols)


def study_bounds(B: pd.DataFrame) -> list[int]:
    """The bounds a :func:`bound_study` table holds, smallest (the configuration's) first."""
    return sorted(int(c.rsplit("_", 1)[1]) for c in B.columns if c.startswith("eps_minus_"))


def bound_summary(B: pd.DataFrame) -> pd.DataFrame:
    """Per method and stage: censored searches at each bound of a :func:`bound_study` table (either side).

    Columns ``censored at <B>`` for every bound (the first is the table's own count), and ``reproduced``
    (how many re-searches at the configuration's bound gave the table's values, of how many).
    """
    bounds = study_bounds(B)
    rows = []
    for (m, s), g in B.groupby(["method", "stage"], sort=False):
        row = {"method": m, "stage": int(s)}
        for b in bounds:
            row[f"censored at {b:,}"] = int((g[f"censored_minus_{b}"] | g[f"censored_plus_{b}"]).sum())
        row["reproduced"] = f"{int(g.reproduces.sum())} of {len(g)}"
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=["method", "stage", *(f"censored at {b:,}" for b in bounds), "reproduced"])
    return pd.DataFrame(rows).set_index(["method", "stage"])


def with_bound(table: pd.DataFrame, B: pd.DataFrame, bound: int) -> pd.DataFrame:
    """``table`` with the censored rows of :func:`bound_study` replaced by their search at ``bound``.

    Epsilons, censoring flags and APEM change on those rows only; every other row is the table's.
    """
    if f"eps_minus_{bound}" not in B:
        raise ValueError(f"the study has no search at bound {bound}; it has {study_bounds(B)}")
    keys = ["image_id", "method", "stage"]
    new = B[keys + [f"eps_minus_{bound}", f"eps_plus_{bound}", f"censored_minus_{bound}",
                    f"censored_plus_{bound}"]].set_index(keys)
    out = table.copy()
    idx = pd.MultiIndex.from_frame(out[keys])
    hit = idx.isin(new.index)
    if hit.any():
        got = new.reindex(idx[hit])
        out.loc[hit, "eps_minus"] = got[f"eps_minus_{bound}"].to_numpy()
        out.loc[hit, "eps_plus"] = got[f"eps_plus_{bound}"].to_numpy()
        out.loc[hit, "censored_minus"] = got[f"censored_minus_{bound}"].to_numpy()
        out.loc[hit, "censored_plus"] = got[f"censored_plus_{bound}"].to_numpy()
        out.loc[hit, "apem"] = out.loc[hit, "eps_plus"] - out.loc[hit, "eps_minus"]
    return out
