"""What a number depends on, as a key: the identities of the results store's cells.

Three kinds of cell, each a function of an image and of the key of its kind:

* ``maps``: an image's stage maps for one explanation method. Key: the model, its
  weights, the preprocessing preset, the numeric environment, the method with its
  parameters (defaults filled in, and the configuration's ``batch_size`` for a method
  that batches copies of an image, as SmoothGrad), the configuration's seed, the
  quantisation and the map encoding.
* ``search``: eps-minus and eps-plus of those maps. Key: the maps key and every
  setting of :class:`apem.metric.SearchSpec` but the shuffles (the batch size too: a
  model's output moves in its last bits with the batch size).
* ``shuffle``: the shuffled baseline of those maps. Key: the search key, the number
  of shuffles and the shuffle mode.

and, beside them, ``filter``: the explanation filter's result (thesis Algorithm 2) on an
image's maps, its rows and filtered maps. Key: the search key and ``filter_fast_k``
(:func:`filter_parts`; computed by :func:`apem.run.run_filter` for the images a
configuration filters); ``attributions``: a method's raw attributions of an image, for
the chapters that redo the visualisation stages (:func:`attribution_parts`).

The image's part of a cell's identity is :func:`image_key`: its name and the SHA-256
of its file's bytes, so a cell is never taken for another image's, and a folder copied
afresh (same bytes) keeps its cells. The stage is a column inside the cell.

What a key leaves out is what moves no number: the chunk size, the configuration's name,
which images are drawn, the pool and the data folder (the image's own bytes are in its
key). Three rules make that true: every random draw is seeded by what it belongs to
(image, method, stage); the per-image steps run image by image
(:func:`apem.runner.compute.image_by_image`); and every model call of a search has the
same batch size (:class:`apem.metric.forward.Forward`), because a model's output for an
image moves with the batch *size* but not with the other images of the batch.
``tests/test_cells.py`` checks it by computing the same cells in different chunks,
orders and configurations.
"""

from __future__ import annotations

import hashlib
import json

#: Raised when what the cells compute changes in a way the keys cannot see (a new
#: algorithm version): every cell key changes with it.
CELL_VERSION = 1

def digest(parts: dict) -> str:
    """16 hex digits of SHA-256 over the canonical JSON of ``parts``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def image_key(image_id: str, content_digest: str) -> str:
    """An image's identity in the cells: its name and the first 16 hex digits of its bytes' SHA-256."""
    return f"{image_id}@{content_digest[:16]}"


def weights_identity(weights: str) -> str:
    """``default`` and ``none`` as they are; a weights file by its content digest."""
    if weights in ("default", "none"):
        return weights
    from apem.data import file_digests

    return "sha256:" + file_digests([weights])[0]


def model_parts(cfg, env) -> dict:
    """What decides a model's output on an image: architecture, weights, preset, numeric environment."""
    return {"model": cfg.model, "weights": weights_identity(cfg.weights), "preset": cfg.preset, "environment": env.key()}


def method_parts(cfg, name: str) -> dict:
    """A method with every parameter that moves its numbers (defaults filled in).

    A method named by where it lives (:mod:`apem.explain.external`) adds what else moves them: the
    library's version (``captum:``, ``zennit:``) or a digest of the user's module (``module:function``).
    """
    from apem import explain
    from apem.explain.base import method_class

    p = explain.method_params(name)
    p.update(cfg.methods[name])
    if "batch_size" in p and "batch_size" not in cfg.methods[name]:
        p["batch_size"] = "auto" if cfg.batch_size is None else cfg.batch_size  # resolved per device (in the key)
    parts = {"method": name, "params": p}
    cls = method_class(name)
    for extra in ("library", "code"):
        if getattr(cls, extra, None):
            parts[extra] = getattr(cls, extra)
    return parts


def maps_parts(cfg, name: str, env) -> dict:
    return {"kind": "maps", "version": CELL_VERSION, **model_parts(cfg, env), **method_parts(cfg, name),
            "seed": cfg.seed, "quantize": cfg.quantize, "map_encoding": cfg.map_encoding}


def search_parts(cfg, name: str, env) -> dict:
    spec = cfg.search()
    return {"kind": "search", "version": CELL_VERSION, "maps": digest(maps_parts(cfg, name, env)), "mode": spec.mode,
            "bound": spec.bound, "clip": spec.clip, "block": spec.block, "slope": spec.slope,
            "batch_size": "auto" if spec.batch_size is None else spec.batch_size}


def shuffle_parts(cfg, name: str, env) -> dict:
    spec = cfg.search()
    return {"kind": "shuffle", "version": CELL_VERSION, "search": digest(search_parts(cfg, name, env)),
            "shuffles": spec.shuffles, "shuffle_mode": spec.shuffle_mode}


def attribution_parts(cfg, name: str, env) -> dict:
    """The key of a method's raw attributions of an image (before the visualisation stages): the maps key
    without quantisation and encoding. Kept for the chapters that redo a map's later steps
    (:meth:`apem.run.Results.attributions`), never read by a results table."""
    return {"kind": "attributions", "version": CELL_VERSION, **model_parts(cfg, env), **method_parts(cfg, name),
            "seed": cfg.seed}


def filter_parts(cfg, name: str, env) -> dict:
    """The key of the explanation filter's cells (thesis Algorithm 2 on an image's maps of method ``name``):
    the search key (its maps, mode, bound, batch size; the filter draws no shuffle) and ``filter_fast_k``."""
    return {"kind": "filter", "version": CELL_VERSION, "search": digest(search_parts(cfg, name, env)),
            "fast_k": cfg.filter_fast_k}


KINDS = ("maps", "search", "shuffle")
_PARTS = {"maps": maps_parts, "search": search_parts, "shuffle": shuffle_parts}


def cell_parts(kind: str, cfg, name: str, env) -> dict:
    """The parts of the ``kind`` key of method ``name`` under configuration ``cfg`` and environment ``env``."""
    return _PARTS[kind](cfg, name, env)


def cell_keys(cfg, env) -> dict[tuple[str, str], dict]:
    """``(kind, method) -> key parts`` for every cell kind a configuration reads (no shuffle kind without shuffles)."""
    out = {}
    for name in cfg.methods:
        for kind in KINDS:
            if kind == "shuffle" and not cfg.shuffles:
                continue
            out[(kind, name)] = cell_parts(kind, cfg, name, env)
    return out
