"""The three search modes side by side on stored maps (the book's chapter 1).

For the first ``n_images`` correctly classified images of a configuration and
every stored map (method x stage), eps-minus and eps-plus are searched with
``linear`` (the exact first change), ``bisect`` and ``thesis``; a linear scan
past the first change (``horizon`` steps) says whether the prediction flipped
back, i.e. whether the flip was non-monotone. Each image's rows are kept in the
store's cells (:func:`apem.studies.common.cached_rows`): a study of fewer images,
or of more, reads what another computed and searches only the images it lacks.
"""

from __future__ import annotations

import time

import pandas as pd
import torch

from apem import metric
from apem.numerics import no_tf32
from apem.studies.common import cached_rows, clean_inputs, correct_ids

#: the modes, in the order their columns come
MODES = ("bisect", "thesis", "linear")


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

    Columns: ``image_id, method, stage, side``; for each mode ``m`` of :data:`MODES`
    ``eps_m, censored_m, forward_m`` and ``seconds_m`` (wall seconds per search, measured
    on the image's own searches: the same in all its rows); ``non_monotone`` (NaN without a
    ``linear`` answer) and ``undefined``. The searches are the runner's: the stored maps,
    the loss gradient and clean logits of each image computed alone
    (:func:`apem.studies.common.clean_inputs`), the configuration's search spec. Each image's
    rows are kept in the store's cells, under the stages, ``horizon`` and ``linear_cap``. The images:
    the first ``n_images`` correctly classified ones (:func:`apem.studies.common.correct_ids`).
    """
    T = res.table
    ids = correct_ids(res, n_images)
    if not ids:
        raise ValueError("no correctly classified images in the results table")
    methods = list(dict.fromkeys(T.method))
    stages = sorted(int(s) for s in T.stage.unique()) if stage is None else [int(stage)]
    return cached_rows(res, "search_modes", lambda lack: _compare(res, lack, methods, stages, horizon, linear_cap),
                       ids, stages=stages, methods=methods, horizon=int(horizon), linear_cap=int(linear_cap))


def _compare(res, ids, methods, stages, horizon: int, linear_cap: int) -> pd.DataFrame:
    """The rows of images ``ids``, each image searched on its own (so its timings are its own)."""
    x, target, grad, info = clean_inputs(res, ids)
    return pd.concat([_image(res, iid, methods, stages, x[j : j + 1], target[j : j + 1], grad[j : j + 1],
                             _info_of(info, j), horizon, linear_cap)
                      for j, iid in enumerate(ids)], ignore_index=True)


def _info_of(info, j: int):
    """Image ``j``'s :class:`apem.metric.MarginInfo` (every per-image field sliced to that image)."""
    import dataclasses

    return dataclasses.replace(info, **{f.name: getattr(info, f.name)[j : j + 1] for f in dataclasses.fields(info)
                                        if getattr(info, f.name) is not None})


def _image(res, iid, methods, stages, x, target, grad, info, horizon: int, linear_cap: int) -> pd.DataFrame:
    cfg = res.cfg
    d, defined, ii, keys = _directions(res, [iid], methods, stages, x, grad)
    out = pd.DataFrame(keys, columns=["image_id", "method", "stage", "side"])
    sub = torch.ones(len(d), dtype=torch.bool, device=x.device)
    for mode in MODES:
        if mode == "linear":
            sub = torch.as_tensor((out.eps_bisect <= linear_cap).to_numpy().copy(), device=x.device) & defined
        idx = torch.nonzero(sub).flatten()
        t0 = time.perf_counter()
        r = metric.search(res.model.model, x, d[idx], target, spec=cfg.search().replace(mode=mode, shuffles=0),
                          image_index=ii[idx], defined=defined[idx], margin_info=info)
        dt = (time.perf_counter() - t0) / max(1, len(idx))
        for col, v in (("eps", r.eps), ("censored", r.censored), ("forward", r.n_forward)):
            full = pd.Series(float("nan"), index=out.index)
            full.iloc[idx.cpu().numpy()] = v.cpu().numpy().astype(float)
            out[f"{col}_{mode}"] = full
        out[f"seconds_{mode}"] = dt
    have = torch.as_tensor(out.eps_linear.notna().to_numpy().copy(), device=x.device)
    idx = torch.nonzero(have).flatten()
    mono = metric.monotonicity_check(res.model.model, x, d[idx], torch.as_tensor(
        out.eps_linear.to_numpy()[idx.cpu().numpy()].astype("int64"), device=x.device), target, spec=cfg.search(),
        image_index=ii[idx], horizon=horizon)
    out["non_monotone"] = pd.Series(float("nan"), index=out.index)
    out.loc[out.index[idx.cpu().numpy()], "non_monotone"] = mono["non_monotone"].cpu().numpy().astype(float)
    out["undefined"] = (~defined).cpu().numpy()
    return out
