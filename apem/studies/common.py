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


def cached_study(res, study: str, compute: Callable[[], pd.DataFrame], **params) -> pd.DataFrame:
    """The study's table from the configuration's store (``extra/<study>-<digest>.parquet``), computed once.

    ``params``: everything besides the configuration that decides the table
    (the configuration itself names the store).
    """
    return res.store.cached_frame(study_name(study, **params), compute)
