"""A configuration as a view of the cells: what it needs, what is missing, and its table.

:func:`plan` looks up every cell a configuration reads (per selected image, method and
stage: its maps, its search, its shuffled search) and groups the images that miss the
same cells into chunks (of ``chunk_size`` on the CPU, larger on a GPU: :func:`chunk_images`),
in selection order, each with its :class:`apem.runner.compute.Work`; :func:`assemble` builds
the configuration's table from the cells once they are all present.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from apem.runner.cells import Cells
from apem.runner.chunks import Chunk
from apem.runner.compute import SEARCH_COLUMNS, SHUFFLE_COLUMNS, Work, finish_rows
from apem.runner.keys import cell_keys


@dataclass
class Plan:
    """The chunks to compute, and what the configuration reads and reuses."""

    chunks: list[Chunk]
    images_selected: int
    needed: dict = field(default_factory=dict)  # kind -> cells the configuration reads
    missing: dict = field(default_factory=dict)  # kind -> cells to compute

    @property
    def images_to_compute(self) -> int:
        return sum(ch.size for ch in self.chunks)

    def summary(self) -> dict:
        """What :func:`apem.runner.remaining.announce` and ``--estimate-only --json`` report."""
        return {"images_selected": self.images_selected, "images_to_compute": self.images_to_compute,
                "chunks_to_compute": len(self.chunks),
                "maps_to_compute": self.missing.get("maps", 0), "maps_reused": self.needed.get("maps", 0) - self.missing.get("maps", 0),
                "searches_to_compute": self.missing.get("search", 0),
                "searches_reused": self.needed.get("search", 0) - self.missing.get("search", 0),
                "shuffled_searches_to_compute": self.missing.get("shuffle", 0),
                "shuffled_searches_reused": self.needed.get("shuffle", 0) - self.missing.get("shuffle", 0)}


#: The most images in one chunk on an accelerator (a chunk is also what a crash loses, what one Ray worker
#: takes, and what the progress bar counts).
MAX_CHUNK_IMAGES_ACCELERATOR = 256
#: Images per chunk when set (benchmarks and tests); None: :func:`chunk_images` decides.
CHUNK_IMAGES = None


def chunk_images(cfg, env) -> int:
    """Images per chunk: ``cfg.chunk_size`` on the CPU; on an accelerator as many as memory allows.

    One chunk's maps are searched together, every map's minus and plus direction in the same
    lockstep passes (:func:`apem.metric.evaluate.evaluate_maps`), and each pass forwards at most
    the search batch (256 on an accelerator) per model call, padding the last call. With
    ``chunk_size`` images (4 in ``params/default.yaml``: 72 directions) most passes of a GPU
    would forward a mostly padded batch; here a chunk takes as many multiples of ``chunk_size`` as
    the device's direction budget (:func:`apem.metric.forward.direction_budget`) holds for its
    ``2 x methods x stages`` directions per image, at most :data:`MAX_CHUNK_IMAGES_ACCELERATOR`.
    A cell's numbers do not depend on its chunk (:mod:`apem.runner.chunks`), so this changes
    speed only. ``env``: the store's :class:`apem.numerics.NumericEnv` (its device type).
    """
    if CHUNK_IMAGES is not None:
        return max(1, int(CHUNK_IMAGES))
    if env.device_type == "cpu":
        return cfg.chunk_size
    import torch

    from apem.metric.forward import direction_budget

    budget = MAX_CHUNK_IMAGES_ACCELERATOR * 2 * len(cfg.methods) * len(cfg.stages)
    if env.device_type == "cuda" and torch.cuda.is_available():  # else a Ray driver without the workers' GPU
        budget = direction_budget("cuda")
    images = min(MAX_CHUNK_IMAGES_ACCELERATOR, budget // (2 * len(cfg.methods) * len(cfg.stages)))
    return max(1, images // cfg.chunk_size) * cfg.chunk_size


def indexes(cfg, cells: Cells, env, verify: bool = True) -> dict:
    """``(kind, method) -> (key parts, {(image_key, stage): Entry})`` for every cell kind ``cfg`` reads
    (``verify``: see :meth:`apem.runner.cells.Cells.index`)."""
    return {km: (parts, cells.index(km[0], parts, verify)) for km, parts in cell_keys(cfg, env).items()}


def plan(cfg, cells: Cells, sel: pd.DataFrame, env, read_maps: bool = True) -> Plan:
    """The chunks that compute what ``cfg``'s images miss; stored maps that searches need are read here.

    Chunks of :func:`chunk_images` images (``cfg.chunk_size`` on the CPU).

    ``read_maps=False`` (an estimate): nothing is read, and nothing is checked or removed either
    (a damaged batch counts as present; the run itself finds it).
    """
    idx = indexes(cfg, cells, env, verify=read_maps)
    needed, missing = {}, {}
    works: list[Work] = []
    shuffled = set(shuffled_keys(cfg, sel))
    for key in sel.image_key:
        w = Work()
        for (kind, name), (_, have) in idx.items():
            if kind == "shuffle" and key not in shuffled:
                continue  # its group gets no shuffled baseline (cfg.shuffle_groups)
            lack = tuple(s for s in cfg.stages if (key, s) not in have)
            needed[kind] = needed.get(kind, 0) + len(cfg.stages)
            missing[kind] = missing.get(kind, 0) + len(lack)
            if lack:
                getattr(w, kind)[name] = lack
        works.append(w)
    # images that miss the same cells go together, in selection order
    groups: dict[tuple, list[int]] = {}
    for i, w in enumerate(works):
        if w.maps or w.search or w.shuffle:
            groups.setdefault(w.signature(), []).append(i)
    chunks = []
    size = chunk_images(cfg, env)
    for rows in groups.values():
        for s in range(0, len(rows), size):
            pick = rows[s : s + size]
            chunks.append((pick, works[pick[0]]))
    chunks.sort(key=lambda c: c[0][0])
    out = []
    for index, (pick, w) in enumerate(chunks):
        part = sel.iloc[pick].reset_index(drop=True)
        work = Work(maps=dict(w.maps), search=dict(w.search), shuffle=dict(w.shuffle))
        for name in cfg.methods:
            need = set(w.search.get(name, ())) | set(w.shuffle.get(name, ()))
            if w.maps.get(name) or not read_maps:
                continue  # the method runs: its maps are computed, not read
            for s in sorted(need):
                _, have = idx[("maps", name)]
                work.stored[(name, s)] = np.stack([_map_array(cells, have[(k, s)], s) for k in part.image_key])
        out.append(Chunk(index, part, work))
    return Plan(out, len(sel), needed, missing)


def filter_lack(cfg, cells: Cells, pick: pd.DataFrame, env, verify: bool = True) -> tuple[dict, list[int]]:
    """The filter's cells of ``cfg`` (``method -> {(image_key, stage): Entry}``) and the positions in ``pick``
    (the images the filter runs on) of the images that miss one of them."""
    from apem.runner.keys import filter_parts

    have = {n: cells.index("filter", filter_parts(cfg, n, env), verify) for n in cfg.methods}
    lack = [j for j, k in enumerate(pick.image_key) if any((k, s) not in have[n] for n in cfg.methods for s in cfg.stages)]
    return have, lack


def shuffled_keys(cfg, sel: pd.DataFrame) -> list:
    """The ``image_key`` of the selected images that get the shuffled baseline (their group is in
    ``cfg.shuffle_groups``); none without shuffles."""
    if not cfg.shuffles:
        return []
    return sel.image_key[sel.group.isin(cfg.shuffle_groups)].tolist()


def _map_array(cells: Cells, entry, stage: int) -> np.ndarray:
    rows = cells.rows(entry.batch)
    return cells.maps(entry.batch)[f"s{stage}"][int(rows.row.iloc[entry.row])]


def assemble(cfg, cells: Cells, sel: pd.DataFrame, env) -> pd.DataFrame:
    """The configuration's table from its cells: one row per (image, method, stage).

    Rows in the order of the chunks of the selection (``chunk`` = position // ``chunk_size``),
    then method and stage, then image, with the image's facts, the epsilons and APEM;
    ``map_array`` (``<method>__s<stage>``) and ``map_row`` (the image's place in its chunk)
    as the per-configuration store had them. Where a map lives on disk is not in the table
    (it is the same table in any store): :meth:`apem.run.Results.maps` looks it up.
    Raises ``KeyError`` naming a cell that is missing.
    """
    idx = indexes(cfg, cells, env)
    shuffled = set(shuffled_keys(cfg, sel))
    facts = sel.drop(columns=["set_position"]).reset_index(drop=True)
    facts["chunk"] = np.arange(len(facts)) // cfg.chunk_size
    facts["_pos"] = np.arange(len(facts))
    parts = []
    for name in cfg.methods:
        for s in cfg.stages:
            block = facts.copy()
            block["method"], block["stage"] = name, s
            for kind, cols in (("maps", ()), ("search", SEARCH_COLUMNS), ("shuffle", SHUFFLE_COLUMNS)):
                if (kind, name) not in idx:
                    continue
                _, have = idx[(kind, name)]
                entries = []
                for k in facts.image_key:
                    unsearched = kind == "shuffle" and k not in shuffled  # a view never reads such cells
                    e = None if unsearched else have.get((k, s))
                    if e is None and not unsearched:
                        raise KeyError(f"no {kind} cell for image {k}, method {name!r}, stage {s}")
                    entries.append(e)  # None: an image whose group gets no shuffled baseline
                values = {c: [] for c in cols}
                for e in entries:
                    r = None if e is None else cells.rows(e.batch)
                    for c in cols:
                        values[c].append(None if r is None else r[c].iat[e.row])
                if kind == "maps":
                    block["map_array"] = f"{name}__s{s}"
                    block["map_row"] = np.arange(len(facts), dtype=np.int64) % cfg.chunk_size
                else:
                    stored = next((e for e in entries if e is not None), None)
                    for c in cols:
                        if stored is not None and all(e is not None for e in entries):
                            block[c] = pd.Series(values[c], dtype=cells.rows(stored.batch)[c].dtype)
                        else:  # some images not searched: NaN epsilons and counts, NA censoring
                            block[c] = pd.Series(values[c], dtype="boolean" if c.startswith("censored") else "float64")
            parts.append(block)
    table = pd.concat(parts, ignore_index=True)
    table = table.sort_values("chunk", kind="stable").drop(columns="_pos")  # (chunk, method, stage, image)
    return finish_rows(table.reset_index(drop=True), cfg.search_bound)
