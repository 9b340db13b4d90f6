"""The image pool's classification (cached) and the seeded draw of a configuration's images.

Steps 1 and 2 of the runner (:mod:`apem.run`), always on the driver: a distributed run
(:mod:`apem.runner.distributed`) selects its images here too, before any worker starts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from apem.config import Config
from apem.profile import step


def load_inputs(cfg: Config):
    """The configuration's model (:class:`apem.models.LoadedModel`) and its image pool (:class:`apem.data.ImageSet`)."""
    from apem.data import load_image_set
    from apem.models import load_model

    lm = load_model(cfg.model, cfg.preset, None if cfg.weights == "none" else cfg.weights, cfg.device)
    images = load_image_set(cfg.data, cfg.ground_truth)
    if cfg.pool:
        images = images.subset(range(min(cfg.pool, len(images))))
    return lm, images


@torch.no_grad()
def classify_pool(cfg: Config, lm, images, store_root: Path, progress: bool = True) -> pd.DataFrame:
    """The model's answer on every pool image, cached under ``_predictions/``.

    The cache key holds what decides the answers: model, weights, preset, pool, the
    resolved image folder with its file-list fingerprint, and the numeric environment.
    """
    from tqdm import tqdm

    from apem.data import iter_batches
    from apem.store import parquet_bytes, verified, write_checked

    path = prediction_cache(cfg, lm, store_root)
    if verified(path):
        return pd.read_parquet(path)
    ids = images.ids()
    rows = []
    with tqdm(total=len(images), desc="classify pool", unit="img", disable=not progress) as bar:
        for idx, x, y in _timed_batches(iter_batches(images, lm.transform, cfg.method_batch(lm.device, lm.model))):
            with step("classify pool", len(idx)):
                logits = lm.model(x.to(lm.device)).float()
                p = logits.softmax(1)
                conf, pred = p.max(1)
                loss = F.cross_entropy(logits, y.to(lm.device), reduction="none")
            for j, i in enumerate(idx):
                rows.append((i, ids[i], int(y[j]), int(pred[j]), float(conf[j]), float(loss[j])))
            bar.update(len(idx))
    df = pd.DataFrame(rows, columns=["set_position", "image_id", "label", "pred", "confidence", "loss"])
    df["correct"] = df.label == df.pred
    write_checked(path, parquet_bytes(df))
    return df


def prediction_cache(cfg: Config, lm, store_root: Path) -> Path:
    """The file :func:`classify_pool` keeps the pool's predictions in (present or not)."""
    from apem.numerics import NumericEnv

    key_parts = dict(cfg.classification_key(), environment=NumericEnv.current(lm.device).key())
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(store_root) / "_predictions" / f"{cfg.model}-{cfg.preset}-{key}.parquet"


def _timed_batches(batches):
    """Time the decoding of each batch (the iterator's own work) as the step "decode images"."""
    it = iter(batches)
    while True:
        with step("decode images") as h:
            b = next(it, None)
            h.items = 0 if b is None else len(b[0])
        if b is None:
            return
        yield b


def select_images(cfg: Config, preds: pd.DataFrame, images=None) -> pd.DataFrame:
    """``n_correct`` correct and ``n_misclassified`` misclassified images, drawn at random (seeded).

    Each group is a prefix of one seeded permutation of its pool images, in the permutation's
    order: a larger count keeps a smaller count's images, first and in the same order (so a
    chapter's "first k images" do not change when n grows), and ``all`` takes every image of
    the group. ``image_key`` (:func:`apem.runner.keys.image_key`) names each image's cells.
    """
    from apem.data import class_name

    rng = np.random.default_rng(cfg.seed)
    parts = []
    for group, mask in (("correct", preds.correct), ("misclassified", ~preds.correct)):
        pool = preds[mask]
        want = cfg.wanted(group, len(pool))
        if want > len(pool):
            raise ValueError(f"asked for {want} {group} images but the pool has only {len(pool)}")
        pick = pool.iloc[rng.permutation(len(pool))[:want]].copy()  # seeded order: a larger n keeps these first
        pick["group"] = group
        parts.append(pick)
    sel = pd.concat(parts, ignore_index=True)
    if sel.empty:
        raise ValueError(f"no image selected: the pool's groups asked for ({cfg.n_correct} correct, "
                         f"{cfg.n_misclassified} misclassified) are empty")
    n_right = int((sel.group == "correct").sum())
    if cfg.filter_images > n_right:
        raise ValueError(f"filter_images ({cfg.filter_images}) exceeds the {n_right} correctly classified images "
                         "selected: the filter runs on the first correctly classified images")
    sel["label_name"] = [class_name(i) for i in sel.label]
    if images is not None:
        from apem.data import file_digests
        from apem.runner.keys import image_key

        paths = [images.paths[int(i)] for i in sel.set_position]
        sel["image_key"] = [image_key(iid, d) for iid, d in zip(sel.image_id, file_digests(paths))]
    sel["pred_name"] = [class_name(i) for i in sel.pred]
    return sel


def filter_pick(cfg, sel: pd.DataFrame) -> pd.DataFrame:
    """The images the explanation filter runs on: the first ``filter_images`` correct ones of the selection."""
    return sel[sel.group == "correct"].head(cfg.filter_images).reset_index(drop=True)
