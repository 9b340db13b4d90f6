"""What a store still lacks for a configuration, and the estimate the runner announces before it starts.

:func:`remaining_work` counts, cell by cell (:func:`apem.runner.plan.plan`), what
:func:`apem.run.run` would compute; :func:`announce` prints its estimate (the cost model
of :mod:`apem.cost`) before the first chunk; :func:`estimate_only` is
``apem run CONFIG --estimate-only``. Nothing here writes to the store.
"""

from __future__ import annotations

import sys

from apem.cost import Estimate, Work, calibrate, estimate, shuffled_share
from apem.runner.cells import Cells
from apem.runner.plan import chunk_images, filter_lack, plan
from apem.runner.selection import filter_pick, load_inputs, prediction_cache, select_images


def planned_images(cfg, n_pool: int, preds=None) -> tuple[int, bool]:
    """Images the configuration selects from a pool of ``n_pool``: ``(count, exact)``.

    Exact for two counts, for ``all`` on both groups (the whole pool), or with the pool's
    predictions ``preds`` (a DataFrame with a ``correct`` column); otherwise (``all`` on one
    group, the pool not classified yet) ``n_pool``, an upper bound, with ``exact`` False.
    """
    from apem.config import ALL

    if preds is not None:
        n_right = int(preds.correct.sum())
        return cfg.wanted("correct", n_right) + cfg.wanted("misclassified", len(preds) - n_right), True
    counts = (cfg.n_correct, cfg.n_misclassified)
    if ALL not in counts:
        return int(sum(counts)), True
    return int(n_pool), counts == (ALL, ALL)


def remaining_work(cfg, store, images, env, predictions=None) -> Work:
    """What :func:`apem.run.run` would compute for ``cfg`` in ``store`` (read only: nothing is removed or written).

    ``images``: the pool; ``predictions``: the pool's cached predictions (DataFrame) if there are
    any. With the selection known (stored, or drawn from the cached predictions) the count is
    exact, cell by cell (:func:`apem.runner.plan.plan`); otherwise every selected image counts.
    """
    sel = store.read_frame("images.parquet") if store.exists() and store.has("images.parquet") else None
    classify = 0
    if sel is None or "image_key" not in sel:
        sel = None
        if predictions is not None:
            sel = select_images(cfg, predictions, images)
        else:
            classify = len(images)
    if sel is None:  # the selection is not known until the pool is classified: every cell of every selected image
        n_sel, exact = planned_images(cfg, len(images), None)
        n = n_sel * len(cfg.methods) * len(cfg.stages)
        summary = {"images_selected": n_sel, "images_to_compute": n_sel, "maps_to_compute": n, "maps_reused": 0,
                   "searches_to_compute": n, "searches_reused": 0,
                   "shuffled_searches_to_compute": round(n * shuffled_share(cfg)), "shuffled_searches_reused": 0}
        return Work(images=n_sel, chunks=len(range(0, n_sel, chunk_images(cfg, env))), selected=n_sel, classify=classify,
                    filter_images=cfg.filter_images, exact=exact, plan=summary)
    pl = plan(cfg, Cells(store.root), sel, env, read_maps=False)
    cells: dict = {}
    for ch in pl.chunks:
        for kind in ("maps", "search", "shuffle"):
            for name, stages in getattr(ch.work, kind).items():
                cells[(kind, name)] = cells.get((kind, name), 0) + ch.size * len(stages)
    filt = 0
    if cfg.filter_images:  # the filtered images whose filter cells are missing
        filt = len(filter_lack(cfg, Cells(store.root), filter_pick(cfg, sel), env, verify=False)[1])
    return Work(images=pl.images_to_compute, chunks=len(pl.chunks), selected=len(sel), classify=classify,
                filter_images=filt, exact=True, cells=cells, plan=pl.summary())




def run_work(cfg, store, lm, images, env) -> Work:
    """:func:`remaining_work` with the pool's cached predictions looked up for ``lm``."""
    import pandas as pd

    from apem.store import verified

    path = prediction_cache(cfg, lm, store.root)
    preds = pd.read_parquet(path) if verified(path) else None
    return remaining_work(cfg, store, images, env, preds)


def announce(cfg, store, lm, images, env, stream=None) -> Estimate | None:
    """Print the estimate of what is left to stderr (the runner calls it before its first chunk); None if nothing is."""
    work = run_work(cfg, store, lm, images, env)
    if work.empty:
        return None
    est = estimate(cfg, work.images, calibration=calibrate(lm, images, cfg), work=work)
    print(est.report(), file=stream or sys.stderr, flush=True)
    return est


def estimate_only(cfg, root=None, threads: int | None = None) -> Estimate:
    """The estimate ``apem run CONFIG --estimate-only`` prints: as :func:`apem.run.run` would start, computing nothing.

    The same thread count as the run (the store's recorded count, else ``threads`` / ``$APEM_THREADS`` /
    the default) and the same numeric-environment check; the store is read, never created or changed.
    """
    from apem import numerics
    from apem.alloc import tune_malloc
    from apem.models import resolve_device
    from apem.store import Store

    store = Store(cfg, root)
    recorded = store.environment() if store.exists() else None
    with numerics.pinned(numerics.resolve_threads(threads, recorded)):
        env = numerics.NumericEnv.current(resolve_device(cfg.device))
        if recorded is not None:
            numerics.check_compatible(recorded, env, str(store.dir))
        lm, images = load_inputs(cfg)
        tune_malloc()  # as the runner: the forwards are timed at the speed they will run
        work = run_work(cfg, store, lm, images, env)
        est = estimate(cfg, work.images, calibration=calibrate(lm, images, cfg), work=work)
        est.store = store
        return est
