"""The three search modes side by side on stored maps (the book's chapter 1).

For the first ``n_images`` correctly classified images of a configuration and
every stored map (method x stage), eps-minus and eps-plus are searched with
``linear`` (the exact first change), ``bisect`` and ``thesis``; a linear scan
past the first change (``horizon`` steps) says whether the prediction flipped
back, i.e. whether the flip was non-monotone. The table is cached in the
configuration's store (``extra/search_modes-...parquet``).
"""

from __future__ import annotations

import time

import pandas as pd
import torch

from apem import metric
from apem.numerics import no_tf32
from apem.studies.common import cached_study
from apem.metric.clean import loss_gradient


def _directions(res, ids, methods, stages, x, grad):
    maps, img, keys = [], [], []
    for j, iid in enumerate(ids):
        for m in methods:
            for s in stages:
                r = res.map(iid, m, s)
                for side, mm in (("minus", r), ("plus", 1 - r)):
                    maps.append(mm.expand(3, -1, -1))
                    img.append(j)
                    keys.append((iid, m, s, side))
    maps = torch.stack(maps).to(x.device)
    image_index = torch.tensor(img, device=x.device)
    d, defined = metric.directions(maps, grad, image_index=image_index)
    return d, defined, image_index, keys


@no_tf32()
def compare_modes(res, *, n_images: int = 8, stage: int | None = None, seed: int = 0, horizon: int = 64,
                  linear_cap: int = 300) -> pd.DataFrame:
    """One row per (image, method, stage, side) with each mode's epsilon and forward passes.

    ``linear`` costs one forward pass per step up to its answer, so it is run
    only where that is at most ``linear_cap`` (known from ``bisect``'s answer,
    which is never below the first change): elsewhere its columns are NaN and
    the comparison is made on the searches that have it. ``stage``: one
    visualisation stage (None: every stage of the table); ``seed`` is unused
    (the searches draw nothing) and kept for the studies' common call shape.
    """
    return cached_study(res, f"search_modes-n{n_images}-h{horizon}-cap{linear_cap}",
                        lambda: _compare(res, n_images, stage, horizon, linear_cap), stage=stage)


def _compare(res, n_images: int, stage, horizon: int, linear_cap: int) -> pd.DataFrame:
    cfg, T = res.cfg, res.table
    lm = res.model
    ids = list(T[T.group == "correct"].image_id.unique()[:n_images])
    methods, stages = list(dict.fromkeys(T.method)), sorted(T.stage.unique()) if stage is None else [int(stage)]
    x = res.image_tensors(ids).to(lm.device)
    target = torch.tensor(res.images.set_index("image_id").loc[ids, "pred"].to_numpy().copy(), device=lm.device)
    grad, _, _ = loss_gradient(lm.model, x, target)
    d, defined, ii, keys = _directions(res, ids, methods, stages, x, grad)
    out = pd.DataFrame(keys, columns=["image_id", "method", "stage", "side"])
    sub = torch.ones(len(d), dtype=torch.bool, device=x.device)
    for mode in ("bisect", "thesis", "linear"):
        if mode == "linear":
            sub = torch.as_tensor((out.eps_bisect <= linear_cap).to_numpy().copy(), device=x.device) & defined
        idx = torch.nonzero(sub).flatten()
        t0 = time.perf_counter()
        r = metric.search(lm.model, x, d[idx], target, spec=cfg.search().replace(mode=mode, shuffles=0),
                          image_index=ii[idx], defined=defined[idx])
        dt = (time.perf_counter() - t0) / max(1, len(idx))
        for col, v in (("eps", r.eps), ("censored", r.censored), ("forward", r.n_forward)):
            full = pd.Series(float("nan"), index=out.index)
            full.iloc[idx.cpu().numpy()] = v.cpu().numpy().astype(float)
            out[f"{col}_{mode}"] = full
        out[f"seconds_{mode}"] = dt
    have = torch.as_tensor(out.eps_linear.notna().to_numpy().copy(), device=x.device)
    idx = torch.nonzero(have).flatten()
    mono = metric.monotonicity_check(lm.model, x, d[idx], torch.as_tensor(out.eps_linear.to_numpy()[idx.cpu().numpy()].astype("int64"),
                                     device=x.device), target, spec=cfg.search(), image_index=ii[idx], horizon=horizon)
    out["non_monotone"] = pd.Series(float("nan"), index=out.index)
    out.loc[out.index[idx.cpu().numpy()], "non_monotone"] = mono["non_monotone"].cpu().numpy().astype(float)
    out["undefined"] = (~defined).cpu().numpy()
    return out
