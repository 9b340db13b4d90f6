r"""The other order of stage 3: summing the channels *before* multiplying by the image, and its epsilons.

The thesis describes its last visualisation stage twice, in two orders. Section 4.2:
"we multiply the new values [the clamped absolute relevances] by their respective
original pixel values [...] we reduce the final number of channels to just one by
summing the three values"; section 4.4 (and Figure 4.6, Table 4.4): "the relevance
values are summed in the channels dimension so it becomes a relevance map and, then,
multiplied by the image". With ``C`` the clamped ``|A|`` (:func:`apem.maps.clamp_abs`)
and ``x`` the image, channels ``c``:

``multiply_then_sum`` (section 4.2; the book's stage 3, :func:`apem.maps.stage_maps`)
    :math:`\sum_c C_c\, x_c`, one channel.
``sum_then_multiply`` (section 4.4 as written)
    :math:`(\sum_c C_c)\, x_k` for each colour channel ``k``: the one-channel map
    times the colour image is a three-channel map, and section 4.4 does not reduce
    it again.
``sum_then_multiply_then_sum`` (section 4.4, kept one-channel as section 4.2 says the final map is)
    :math:`\sum_k (\sum_c C_c)\, x_k = (\sum_c C_c)(\sum_k x_k)`.

Every order min-max scales at the end and is encoded like the configuration's
maps (``map_encoding``, 8-bit when ``quantize``). On a grey image (``x_c`` equal
across channels) the three give the same map; they differ only where the image's
channels differ.

:func:`stage_order_shift` recomputes the attributions of the configuration's
first correctly classified images exactly as the runner did (same chunks, seeds,
targets; the recomputed stage-3 maps are checked against the stored ones),
builds the two section-4.4 maps and searches them with the configuration's
search and the stage-3 rows' seeds; the section-4.2 epsilons are the results
table's. :func:`stage_order_summary` condenses it per order and method.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from apem.numerics import no_tf32
from apem.studies.common import cached_rows, correct_ids

#: The book's order (section 4.2) and the two readings of section 4.4's, as computed here.
ORDERS = ("multiply_then_sum", "sum_then_multiply", "sum_then_multiply_then_sum")
#: The orders :func:`stage_order_shift` searches (the book's epsilons are the results table's).
OTHER_ORDERS = ORDERS[1:]
#: Short descriptions, for tables.
ORDER_LABELS = {"multiply_then_sum": "Σ_c C·x (sec. 4.2, the book's)",
                "sum_then_multiply": "(Σ_c C)·x, 3 channels (sec. 4.4)",
                "sum_then_multiply_then_sum": "(Σ_c C)·(Σ_c x), 1 channel (sec. 4.4)"}


def stage3_map(a: torch.Tensor, x: torch.Tensor, order: str = "multiply_then_sum", quantize: bool = True,
               encoding: str = "round") -> torch.Tensor:
    """The stage-3 map of attributions ``a`` on images ``x`` (both (N, 3, H, W)) in one of :data:`ORDERS`.

    ``multiply_then_sum`` equals :func:`apem.maps.stage_map` ``(a, x, 3)``; the other
    two are section 4.4's order (see the module docstring): (N, 3, H, W) for
    ``sum_then_multiply``, (N, 1, H, W) otherwise. Min-max scaled and encoded as
    :func:`apem.maps.stage_maps` does (``encoding``, 256 levels when ``quantize``).
    """
    from apem import maps

    if order not in ORDERS:
        raise ValueError(f"unknown stage-3 order {order!r}; orders are {ORDERS}")
    if order == "multiply_then_sum":
        return maps.stage_map(a, x, 3, quantize=quantize, encoding=encoding)
    if encoding not in maps.ENCODINGS:
        raise ValueError(f"unknown map encoding {encoding!r}; encodings are {maps.ENCODINGS}")
    if encoding == "save_image" and not quantize:
        raise ValueError("the save_image encoding writes 8-bit maps: it needs quantize=True")
    maps._check(a, x)
    c = maps.clamp_abs(a)
    x = x.to(c.dtype)
    summed = c.sum(1, keepdim=True)
    v = summed * x if order == "sum_then_multiply" else summed * x.sum(1, keepdim=True)
    eps, mode = (maps.SAVE_IMAGE_EPS, "floor") if encoding == "save_image" else (0.0, "round")
    m = maps.minmax(v, eps)
    return maps.quantize(m, 256, mode) if quantize else m


@no_tf32()
def stage_order_shift(res, n_images: int | None = None) -> pd.DataFrame:
    """Per (image, method, other order): the stage-3 map in section 4.4's order, its epsilons, and the change.

    ``res``: a :class:`apem.run.Results` with stage 3; its first ``n_images``
    correctly classified images (None: all, ``images.parquet`` order), every method.
    Columns: ``image_id, method, order`` (one of :data:`OTHER_ORDERS`);
    ``map_differs`` (the searched map differs from the stored stage-3 map, the
    one-channel maps compared as their three-channel copies) and
    ``values_changed`` (the share of its values that differ); ``eps_minus,
    eps_plus, apem, censored_minus, censored_plus, undefined`` in this order, the
    same with suffix ``_book`` from the results table (the book's order), and
    ``d_eps_minus, d_eps_plus, d_apem`` (this order minus the book's; NaN where
    either is undefined). Raises when a recomputed book-order map differs from the
    stored one (the attributions would not be the run's). Each image's rows are kept in the
    store's cells (:func:`apem.studies.common.cached_rows`): a study of more images computes
    only the images a smaller one did not.
    """
    cfg = res.cfg
    if 3 not in cfg.stages:
        raise ValueError(f"the stage-order study needs stage 3; the configuration's stages are {list(cfg.stages)}")
    ids = correct_ids(res, n_images)
    if not ids:
        raise ValueError("no correctly classified images in the results table")
    return cached_rows(res, "stage-order", lambda lack: _shift(res, lack), ids, orders=OTHER_ORDERS)


def _rows(res, ids: list) -> pd.DataFrame:
    """The other orders' stage-3 maps of images ``ids``, searched (attributions as the runner's:
    :func:`apem.runner.compute.attributions`)."""
    from apem import metric
    from apem.metric.clean import loss_gradient
    from apem.runner.compute import check_targets, image_by_image
    from apem.seeds import seed_of

    cfg, lm = res.cfg, res.model
    part = res.images.set_index("image_id").loc[list(ids)].reset_index()
    keep = list(range(len(part)))
    dev = lm.device
    x = res.image_tensors(part.image_id).to(dev)
    if dev.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.tensor(part.pred.to_numpy().copy(), device=dev).long()
    grad, logits = image_by_image(lambda xj, tj: loss_gradient(lm.model, xj, tj)[:2], x, target)
    check_targets(logits, target, part.image_id)
    info = metric.MarginInfo.from_logits(logits, target, loss_grad=grad)
    blocks, rows = [], []
    for name in cfg.methods:
        A = res.attributions(part.image_id, name).to(dev)  # the run's, kept once per image (chapter 4 reads them twice)
        if dev.type == "cpu":  # the layout the runner's attributions have (its input's)
            A = A.contiguous(memory_format=torch.channels_last)
        book = image_by_image(lambda aj, xj: stage3_map(aj, xj, "multiply_then_sum", cfg.quantize, cfg.map_encoding),
                              A, x).cpu()
        for j in keep:
            iid = part.image_id[j]
            if not torch.equal(book[j], res.map(iid, name, 3)):
                raise RuntimeError(f"the recomputed stage-3 map of {iid} ({name}) is not the stored one: the "
                                   "attributions differ from the run's, so the orders cannot be compared")
        for order in OTHER_ORDERS:
            m = image_by_image(lambda aj, xj: stage3_map(aj, xj, order, cfg.quantize, cfg.map_encoding), A, x)
            m3 = m.expand(-1, 3, -1, -1) if m.shape[1] == 1 else m
            b3 = book.to(m.device).expand(-1, 3, -1, -1)
            differ = (m3[keep] != b3[keep]).flatten(1)
            blocks.append(m3[keep])
            for k, j in enumerate(keep):
                rows.append({"image_id": part.image_id[j], "method": name, "order": order,
                             "map_differs": bool(differ[k].any()), "values_changed": float(differ[k].float().mean()),
                             "_j": j})
    out = pd.DataFrame(rows)
    r = metric.evaluate_maps(lm.model, x, torch.cat(blocks), target, spec=cfg.search().replace(shuffles=0),
                             image_index=torch.tensor(out._j.to_numpy(), device=dev), grad=grad,
                             seeds=torch.tensor([seed_of(cfg.seed, i, m, 3) for i, m in zip(out.image_id, out.method)],
                                                dtype=torch.long),
                             margin_info=info)
    und = (r["undefined_minus"] | r["undefined_plus"]).numpy()
    out["eps_minus"] = r["eps_minus"].numpy()
    out["eps_plus"] = r["eps_plus"].numpy()
    out["apem"] = metric.apem_terms(r["eps_plus"], r["eps_minus"], und)
    out["censored_minus"] = r["censored_minus"].numpy()
    out["censored_plus"] = r["censored_plus"].numpy()
    out["undefined"] = und
    return out.drop(columns="_j")


def _shift(res, ids) -> pd.DataFrame:
    T = res.table
    size = res.cfg.chunk_size
    df = pd.concat([_rows(res, ids[i : i + size]) for i in range(0, len(ids), size)], ignore_index=True)
    book = T[(T.stage == 3) & T.image_id.isin(ids)].assign(undefined=lambda d: d.undefined_minus | d.undefined_plus)
    cols = ["eps_minus", "eps_plus", "apem", "censored_minus", "censored_plus", "undefined"]
    df = df.merge(book[["image_id", "method", *cols]].rename(columns={c: f"{c}_book" for c in cols}),
                  on=["image_id", "method"], how="left", validate="many_to_one")
    either = df.undefined.to_numpy(dtype=bool) | df.undefined_book.to_numpy(dtype=bool)
    for col in ("eps_minus", "eps_plus", "apem"):
        d = df[col].to_numpy(dtype=float) - df[f"{col}_book"].to_numpy(dtype=float)
        df[f"d_{col}"] = np.where(either, np.nan, d)  # an undefined map has no epsilon to move
    return df


def stage_order_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per order and method of a :func:`stage_order_shift` table: how many maps and epsilons the order changes.

    Rows: the orders of :data:`OTHER_ORDERS`, each with the methods in the table's order.

    Columns: ``images``; ``maps differ`` (images whose map differs from the
    book's); ``ε⁻ changed`` / ``ε⁺ changed`` (``k of n``: among the images both
    orders define); ``median |Δε⁻|`` / ``largest |Δε⁻|`` and the same for ε⁺ (in
    steps, over the images whose epsilon changed; ``–`` when none did);
    ``median ΔAPEM`` (signed, this order minus the book's, over the defined
    images); ``censored`` (images with a censored search in either order: their
    change is bounded, not exact).
    """
    from apem.claims import fmt

    rows = []
    orders = [o for o in OTHER_ORDERS if o in set(df.order)] + [o for o in dict.fromkeys(df.order) if o not in ORDERS]
    for order, method in ((o, m) for o in orders for m in dict.fromkeys(df.method)):
        g = df[(df.order == order) & (df.method == method)]
        if g.empty:
            continue
        row = {"order": order, "method": method, "images": int(g.image_id.nunique()),
               "maps differ": int(g.map_differs.sum())}
        for side, col in (("ε⁻", "d_eps_minus"), ("ε⁺", "d_eps_plus")):
            d = g[col].to_numpy(dtype=float)
            d = d[~np.isnan(d)]
            moved = np.abs(d[d != 0])
            row[f"{side} changed"] = f"{int(moved.size)} of {int(d.size)}"
            row[f"median |Δ{side}|"] = fmt(float(np.median(moved)), 1) if moved.size else "–"
            row[f"largest |Δ{side}|"] = fmt(float(moved.max()), 0) if moved.size else "–"
        da = g.d_apem.to_numpy(dtype=float)
        da = da[~np.isnan(da)]
        row["median ΔAPEM"] = fmt(float(np.median(da)), 1, sign=True) if da.size else "–"
        cens = g[["censored_minus", "censored_plus", "censored_minus_book", "censored_plus_book"]].astype(bool)
        row["censored"] = int(cens.any(axis=1).sum())
        rows.append(row)
    return pd.DataFrame(rows).set_index(["order", "method"])
