"""What every study shares: the images it works on, the stage, and one cached-table helper."""

from __future__ import annotations

import hashlib
import json
from typing import Callable

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
    computes only the images it lacks. Rows come back in the order of ``ids``.
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


def cached_study(res, study: str, compute: Callable[[], pd.DataFrame], **params) -> pd.DataFrame:
    """The study's table from the configuration's store (``extra/<study>-<digest>.parquet``), computed once.

    ``params``: everything besides the configuration that decides the table
    (the configuration itself names the store).
    """
    return res.store.cached_frame(study_name(study, **params), compute)
