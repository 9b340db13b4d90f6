"""How far the map encoding moves the epsilons: ``round`` against the thesis's ``save_image`` files.

The thesis's code wrote every map with ``torchvision.utils.save_image(normalize=True)``
of its time: min-max dividing by ``max - min + 1e-5`` and 8-bit truncation
(:mod:`apem.maps`, ``encoding="save_image"``); this package's default rounds an
exact min-max (``encoding="round"``). For raw gradients, whose value range is
about 1e-3, the ``+ 1e-5`` keeps the top level below 1 and the truncation lowers
every level by up to one step.

:func:`encoding_shift` recomputes the configuration's maps of its correctly
classified images under both encodings -- the same attributions (the run's, kept
once per image by :meth:`apem.run.Results.attributions`), seeds, targets, gradients
and search as :func:`apem.runner.compute.compute_chunk` -- and searches both, so the configuration's own encoding reproduces the
results table exactly and the difference is the encoding's alone.
:func:`encoding_summary` condenses it per method and stage.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from apem.maps import ENCODINGS
from apem.numerics import no_tf32
from apem.studies.common import cached_rows, correct_ids

#: The columns :func:`encoding_shift` gives per encoding (suffixed ``_round`` / ``_save_image``).
PER_ENCODING = ("eps_minus", "eps_plus", "apem", "censored_minus", "censored_plus", "undefined", "top_level")


@no_tf32()
def encoding_shift(res, n_images: int | None = None) -> pd.DataFrame:
    """Per (image, method, stage): eps-minus, eps-plus and APEM under both map encodings, and their differences.

    ``res``: a :class:`apem.run.Results`; its first ``n_images`` correctly
    classified images (None: all of them, ``images.parquet`` order), every
    method and stage of the configuration. Columns: ``image_id, method, stage``;
    for each encoding ``e`` in ``round, save_image``: ``eps_minus_e, eps_plus_e,
    apem_e`` (NaN when undefined), ``censored_minus_e, censored_plus_e,
    undefined_e`` and ``top_level_e`` (the map's largest value in 8-bit levels,
    255 for an exact min-max); then ``d_eps_minus, d_eps_plus, d_apem``
    (save_image minus round; NaN where either encoding's map is undefined). The columns of the configuration's own
    ``map_encoding`` equal the results table's. No shuffled baseline is
    searched (it does not change eps-minus or eps-plus). Each image's rows are kept in the
    store's cells (:func:`apem.studies.common.cached_rows`): a study of more images computes
    only the images a smaller one did not.
    """
    cfg = res.cfg
    if not cfg.quantize:
        raise ValueError("the encoding study compares 8-bit encodings: the configuration has quantize = false")
    ids = correct_ids(res, n_images)
    if not ids:
        raise ValueError("no correctly classified images in the results table")
    return cached_rows(res, "encoding", lambda lack: _shift(res, lack), ids, encodings=ENCODINGS)


def _rows(res, ids: list) -> pd.DataFrame:
    """The rows of images ``ids``, recomputed under every encoding (as :func:`apem.runner.compute.compute_chunk` does)."""
    from apem import maps
    from apem import metric
    from apem.metric.clean import loss_gradient
    from apem.runner.compute import check_targets, image_by_image
    from apem.seeds import seed_of

    cfg, lm = res.cfg, res.model
    part = res.images.set_index("image_id").loc[list(ids)].reset_index()
    dev = lm.device
    x = res.image_tensors(part.image_id).to(dev)
    if dev.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.tensor(part.pred.to_numpy().copy(), device=dev).long()
    grad, logits = image_by_image(lambda xj, tj: loss_gradient(lm.model, xj, tj)[:2], x, target)
    check_targets(logits, target, part.image_id)
    info = metric.MarginInfo.from_logits(logits, target, loss_grad=grad)
    attr = {name: res.attributions(part.image_id, name).to(dev) for name in cfg.methods}  # stored once per image
    if dev.type == "cpu":  # the layout the runner's attributions have (its input's): the same stage maps
        attr = {name: a.contiguous(memory_format=torch.channels_last) for name, a in attr.items()}
    n = len(part)
    keys = [(name, s) for name in cfg.methods for s in cfg.stages]
    out = pd.DataFrame({"image_id": [iid for _ in keys for iid in part.image_id],
                        "method": [name for name, _ in keys for _ in range(n)],
                        "stage": [s for _, s in keys for _ in range(n)]})
    seeds = torch.tensor([seed_of(cfg.seed, iid, name, s) for name, s in keys for iid in part.image_id],
                         dtype=torch.long)
    for enc in ENCODINGS:
        blocks = []
        for name, A in attr.items():
            st = image_by_image(lambda aj, xj: tuple(maps.stage_maps(aj, xj, cfg.stages, quantize=cfg.quantize,
                                                                     encoding=enc)[s] for s in cfg.stages), A, x)
            for m in st:
                blocks.append(m.expand(-1, 3, -1, -1) if m.shape[1] == 1 else m)
        maps_all = torch.cat(blocks)  # block-major, as the runner's
        r = metric.evaluate_maps(lm.model, x, maps_all, target, spec=cfg.search().replace(shuffles=0),
                                 image_index=torch.arange(n, device=dev).repeat(len(blocks)), grad=grad, seeds=seeds,
                                 margin_info=info)
        und = (r["undefined_minus"] | r["undefined_plus"]).numpy()
        out[f"eps_minus_{enc}"] = r["eps_minus"].numpy()
        out[f"eps_plus_{enc}"] = r["eps_plus"].numpy()
        out[f"apem_{enc}"] = metric.apem_terms(r["eps_plus"], r["eps_minus"], und)
        out[f"censored_minus_{enc}"] = r["censored_minus"].numpy()
        out[f"censored_plus_{enc}"] = r["censored_plus"].numpy()
        out[f"undefined_{enc}"] = und
        out[f"top_level_{enc}"] = torch.round(maps_all.flatten(1).amax(1) * 255).long().cpu().numpy()
    return out


def _shift(res, ids) -> pd.DataFrame:
    size = res.cfg.chunk_size
    df = pd.concat([_rows(res, ids[i : i + size]) for i in range(0, len(ids), size)], ignore_index=True)
    either = df.undefined_round.to_numpy(dtype=bool) | df.undefined_save_image.to_numpy(dtype=bool)
    for col in ("eps_minus", "eps_plus", "apem"):
        d = df[f"{col}_save_image"].to_numpy(dtype=float) - df[f"{col}_round"].to_numpy(dtype=float)
        df[f"d_{col}"] = np.where(either, np.nan, d)  # an undefined map has no epsilon to move
    return df


def encoding_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per method and stage of an :func:`encoding_shift` table: how many epsilons the encoding moved, and how far.

    Columns: ``n`` (images), ``changed_minus`` / ``changed_plus`` (share of
    images whose eps-minus / eps-plus differ between the encodings, among those
    both encodings define),
    ``median_abs_d_minus``, ``max_abs_d_minus``, ``median_abs_d_plus``,
    ``max_abs_d_plus``, ``median_abs_d_apem``, ``max_abs_d_apem`` (absolute
    changes in steps; APEM's over the images where both encodings define it).
    """
    rows = []
    for (method, stage), g in df.groupby(["method", "stage"], sort=False):
        row = {"method": method, "stage": stage, "n": int(g.image_id.nunique())}
        for side, col in (("minus", "d_eps_minus"), ("plus", "d_eps_plus")):
            d = g[col].to_numpy(dtype=float)
            d = d[~np.isnan(d)]
            row[f"changed_{side}"] = float((d != 0).mean()) if d.size else np.nan
        for side, col in (("minus", "d_eps_minus"), ("plus", "d_eps_plus"), ("apem", "d_apem")):
            d = np.abs(g[col].to_numpy(dtype=float))
            d = d[~np.isnan(d)]
            row[f"median_abs_d_{side}"] = float(np.median(d)) if d.size else np.nan
            row[f"max_abs_d_{side}"] = float(d.max()) if d.size else np.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index(["method", "stage"])
