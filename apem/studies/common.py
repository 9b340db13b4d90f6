"""What every study shares: the images it works on, the stage, the runner's clean pass, and the study cells."""

from __future__ import annotations

import hashlib
import json
from typing import Callable

import numpy as np
import pandas as pd
import torch

APEM = "APEM"

#: Bumped when a cached table's columns or meaning change, so an old table is not read back.
SCHEMA = 2


def study_key(**parts) -> str:
    """A short digest of the parameters (and :data:`SCHEMA`), for the cached table's name."""
    blob = json.dumps({**parts, "schema": SCHEMA}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def correct_ids(res, n: int | None = None) -> list[str]:
    """The first ``n`` correctly classified images of the main table (``images.parquet`` order)."""
    ids = res.images.loc[res.images.group == "correct", "image_id"].tolist()
    tab = set(res.table.image_id)
    ids = [i for i in ids if i in tab]
    return ids if n is None else ids[: max(0, int(n))]


def pick_stage(res, stage: int | None = None) -> int:
    """``stage``, checked against the configuration; None: 3 when the configuration has it, else its last."""
    stages = res.cfg.stages
    if stage is None:
        return 3 if 3 in stages else max(stages)
    if stage not in stages:
        raise ValueError(f"stage {stage} is not among the configuration's stages {list(stages)}")
    return int(stage)


def table_methods(res, methods) -> list[str]:
    have = list(dict.fromkeys(res.table.method))
    if methods is None:
        return have
    missing = [m for m in methods if m not in have]
    if missing:
        raise ValueError(f"method(s) {missing} are not in the results table (it has {have})")
    return list(methods)


def predictions(res, ids) -> torch.Tensor:
    p = res.images.set_index("image_id").loc[list(ids), "pred"].to_numpy().copy()
    return torch.tensor(p, dtype=torch.long)


def study_name(study: str, **params) -> str:
    """``<study>-<digest>``: the store name of a study's table, the digest covering every parameter."""
    return f"{study}-{study_key(**params)}"


def cached_rows(res, study: str, compute: Callable[[list], pd.DataFrame], ids, **params) -> pd.DataFrame:
    """The study's rows of the images ``ids``, each image's rows computed once, as cells of the store.

    For a study whose rows of an image depend on that image alone (not on which other images are
    studied with it): ``compute(ids)`` returns rows with an ``image_id`` column. The rows are kept
    in the results store's cells (kind ``study``, :mod:`apem.runner.cells`) under a key of the study,
    its ``params`` and the configuration's cell keys (model, numeric environment, methods, search;
    not its name, its image counts or its chunk size), so a smaller or overlapping study -- or the
    same study of another configuration over the same maps -- reads what a larger one computed and
    computes only the images it lacks. Rows come back in the order of ``ids`` (an image's rows in the
    order ``compute`` gave them; :func:`ordered_rows` restores another nesting).

    ``params``: every study parameter that changes an image's rows (not the number of images:
    that only decides which ids are asked for). For an image's rows to depend on it alone, its
    per-image steps run image by image (:func:`apem.runner.compute.image_by_image`,
    :func:`clean_inputs`), searches get the runner's clean pass, and every random draw is seeded
    by what it belongs to (:func:`apem.seeds.seed_of`), never by its position in the batch. Timings
    measured in ``compute`` are those of the call that computed the image. Per-image arrays:
    :func:`cached_arrays`.
    """
    from apem.runner.cells import Cells
    from apem.runner.keys import cell_keys, digest

    ids = [str(i) for i in ids]
    env = res.store.environment()
    if env is None:
        raise ValueError(f"{res.store.dir} records no numeric environment: run `apem run` on it again")
    parts = {"kind": "study", "study": study, "schema": SCHEMA, "params": json.loads(json.dumps(params, default=str)),
             "stages": list(res.cfg.stages),
             "config": digest({f"{k}/{m}": v for (k, m), v in cell_keys(res.cfg, env).items()}),
             "environment": env.key()}
    keys = res.images.set_index("image_id").image_key
    cells = Cells(res.store.root)
    have = cells.index("study", parts)
    lack = [i for i in ids if (keys[i], 0) not in have]
    if lack:
        with res.store.pinned():
            new = compute(lack)
        if "image_id" not in new:
            raise ValueError(f"study {study}: its rows need an image_id column")
        new = new[new.image_id.isin(lack)].reset_index(drop=True).rename(columns=_AWAY)
        new.insert(0, "image_key", [keys[i] for i in new.image_id])
        new.insert(1, "stage", 0)  # the cells' (image, stage) index: a study's rows are the image's
        done = set(new.image_id)
        empty = [i for i in lack if i not in done]  # an image with no row is stored as having none
        if empty:
            new = pd.concat([new, pd.DataFrame({"image_key": [keys[i] for i in empty], "stage": 0,
                                                "image_id": empty, "_none": True})], ignore_index=True)
        cells.write("study", parts, new, env.record())
        have = cells.index("study", parts)
    batches = {}
    for i in ids:
        e = have[(keys[i], 0)]
        batches.setdefault(e.batch, []).append(keys[i])
    frames = []
    for batch, ks in batches.items():
        t = cells.rows(batch)
        frames.append(t[t.image_key.isin(ks)])
    out = pd.concat(frames, ignore_index=True)
    if "_none" in out:
        out = out[out["_none"].isna()].drop(columns="_none")
    order = {i: n for n, i in enumerate(ids)}
    out = out.assign(_o=out.image_id.map(order)).sort_values("_o", kind="stable").drop(columns=["_o", "image_key",
                                                                                                   "stage"])
    return out.rename(columns={v: k for k, v in _AWAY.items()}).reset_index(drop=True)


#: a study's own columns named as the cells' index columns are stored under other names
_AWAY = {"image_key": "study_image_key", "stage": "study_stage"}


def ordered_rows(df: pd.DataFrame, **orders) -> pd.DataFrame:
    """``df``'s rows sorted by the given columns, the first given first, each column's values in the order of
    its list (stable, index reset).

    :func:`cached_rows` gives an image's rows together; a study whose table nests the images
    innermost (per variant, then per image, say) puts them back in its own order with this.
    """
    if df.empty:
        return df.reset_index(drop=True)
    keys = [df[c].map({v: i for i, v in enumerate(values)}).to_numpy() for c, values in orders.items()]
    return df.iloc[np.lexsort(keys[::-1])].reset_index(drop=True)


def clean_inputs(res, ids):
    """``(x, target, grad, info)`` of images ``ids``: the clean pass of :func:`apem.runner.compute.compute_chunk`.

    The images on the model's device (channels-last on the CPU, as the runner feeds them), the
    stored predictions as targets (checked against this pass), the loss gradients computed image by
    image (:func:`apem.runner.compute.image_by_image`), and the :class:`apem.metric.MarginInfo` of
    their clean logits: a search given ``grad`` and ``info`` depends on its map and image alone,
    not on which other images are studied with it.
    """
    from apem.metric import MarginInfo
    from apem.metric.clean import loss_gradient
    from apem.runner.compute import check_targets, image_by_image

    lm = res.model
    dev = lm.device
    x = res.image_tensors(ids).to(dev)
    if dev.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    target = predictions(res, ids).to(dev)
    grad, logits = image_by_image(lambda xj, tj: loss_gradient(lm.model, xj, tj)[:2], x, target)
    check_targets(logits, target, list(ids))
    return x, target, grad, MarginInfo.from_logits(logits, target, loss_grad=grad)


def cached_arrays(res, study: str, compute: Callable[[list], dict], ids, **params) -> dict[str, dict[str, np.ndarray]]:
    """Per-image arrays of the images ``ids`` (e.g. maps a figure shows), each image's computed once, as cells.

    ``compute(ids)`` returns ``{image_id: {name: ndarray}}`` (an image may have none). The arrays
    are kept as :func:`cached_rows` keeps rows -- one row per array (``name``, dtype, shape and its
    bytes) in the image's cell, under the same kind of key -- so they share its checksums, reuse
    and garbage collection. Returns ``{image_id: {name: ndarray}}`` for every id, in the order of ``ids``.
    """
    def rows(lack):
        got = compute(lack)
        recs = [{"image_id": str(i), "name": str(k), "dtype": np.asarray(a).dtype.str,
                 "shape": json.dumps(list(np.shape(a))), "data": np.ascontiguousarray(a).tobytes()}
                for i, arrays in got.items() for k, a in arrays.items()]
        return pd.DataFrame(recs, columns=["image_id", "name", "dtype", "shape", "data"])

    table = cached_rows(res, study, rows, ids, **params)
    out = {str(i): {} for i in ids}
    for r in table.itertuples(index=False):
        out[r.image_id][r.name] = np.frombuffer(r.data, dtype=np.dtype(r.dtype)).reshape(json.loads(r.shape)).copy()
    return out
