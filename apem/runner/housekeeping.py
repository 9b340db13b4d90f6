"""What the store holds, what it weighs, and which cells no configuration uses (``apem store``).

A configuration's folder (``<name>-<digest>/``) says which cells it reads: its
``config.yaml`` gives the keys (:func:`apem.runner.keys.cell_keys`, under the numeric
environment of its ``environment.json``), its ``images.parquet`` the images. A batch of
cells none of whose cells any configuration reads is garbage: :func:`collect` lists it
and, unless asked for a dry run, removes it. A configuration folder removed by hand
frees its cells at the next ``apem store gc``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from apem.runner.cells import Cells, human_size
from apem.runner.keys import attribution_parts, cell_keys, digest, filter_parts


@dataclass
class View:
    """One configuration's folder and what it reads."""

    dir: Path
    name: str
    images: int
    wants: dict = field(default_factory=dict)  # "<kind>/<key>" -> {(image_key, stage)}
    config: str = ""  # the digest of its cell keys: the chapters' study cells of this configuration carry it
    problem: str | None = None


def views(root: str | Path) -> list[View]:
    """Every configuration folder under ``root`` with the cells it reads (a folder that cannot be read says why)."""
    from apem.config import Config
    from apem.numerics import NumericEnv
    from apem.store import verified

    out = []
    for d in sorted(Path(root).iterdir()) if Path(root).is_dir() else []:
        if not (d / "config.yaml").is_file():
            continue
        v = View(d, d.name, 0)
        try:
            ident = yaml.safe_load((d / "config.yaml").read_text())
            ident.pop("resolved_data", None)
            cfg = Config.from_dict(ident, str(d / "config.yaml"))
            env_file = d / "environment.json"
            if not verified(env_file):
                raise ValueError("no intact environment.json")
            env = NumericEnv.from_record(json.loads(env_file.read_text()))
            sel = pd.read_parquet(d / "images.parquet", columns=["image_key"]) if verified(d / "images.parquet") else None
        except Exception as e:  # noqa: BLE001 - reported per folder
            v.problem = f"{type(e).__name__}: {e}"
            out.append(v)
            continue
        if sel is None:
            v.problem = "no images.parquet yet"
        else:
            v.images = len(sel)
            want = {(k, s) for k in sel.image_key for s in cfg.stages}
            keys = cell_keys(cfg, env)
            for (kind, _), parts in keys.items():
                v.wants[f"{kind}/{digest(parts)}"] = want
            for name in cfg.methods:  # raw attributions a chapter kept (Results.attributions)
                v.wants[f"attributions/{digest(attribution_parts(cfg, name, env))}"] = {(k, 0) for k in sel.image_key}
            if cfg.filter_images:  # the filter's cells of its images (any of the view's: a superset)
                for name in cfg.methods:
                    v.wants[f"filter/{digest(filter_parts(cfg, name, env))}"] = want
            v.config = digest({f"{k}/{m}": p for (k, m), p in keys.items()})
        out.append(v)
    return out


def usage(root: str | Path) -> dict:
    """``{"views": [View], "used": [batch], "unused": [batch], "bytes": {...}}`` for the store at ``root``."""
    cells = Cells(root)
    vs = views(root)
    wants: dict[str, set] = {}
    for v in vs:
        for k, w in v.wants.items():
            wants.setdefault(k, set()).update(w)
    configs = {v.config for v in vs if v.config}
    used, unused = [], []
    for b in cells.batches():
        key = b.rsplit("/", 1)[0]
        w = wants.get(key)
        keep = False
        if b.startswith("study/"):  # a chapter's study: kept while a configuration over the same cells exists
            try:
                keep = json.loads((cells.dir / key / "key.json").read_text()).get("config") in configs
            except (OSError, ValueError):
                keep = False
        elif w:
            try:
                rows = pd.read_parquet(cells.dir / b / "rows.parquet", columns=["image_key", "stage"])
                keep = any((k, int(s)) in w for k, s in zip(rows.image_key, rows.stage))
            except Exception:  # noqa: BLE001 - an unreadable batch is garbage
                keep = False
        (used if keep else unused).append(b)
    blocked = any(v.problem and v.problem != "no images.parquet yet" for v in vs)
    return {"views": vs, "used": used, "unused": unused, "blocked": blocked,
            "bytes": {"used": cells.size(used), "unused": cells.size(unused)}}


def report(root: str | Path) -> str:
    """What ``apem store`` prints."""
    u = usage(root)
    lines = [f"results store {Path(root).resolve()}: cells {human_size(u['bytes']['used'] + u['bytes']['unused'])} in "
             f"{len(u['used']) + len(u['unused'])} batch(es), {human_size(u['bytes']['unused'])} of them in "
             f"{len(u['unused'])} batch(es) no configuration reads (`apem store gc` removes them)"]
    for v in u["views"]:
        lines.append(f"  {v.name}: {v.images} image(s)" + (f" ({v.problem})" if v.problem else ""))
    return "\n".join(lines)


def collect(root: str | Path, dry_run: bool = True) -> tuple[list[str], int]:
    """The batches no configuration reads, and their bytes; removed unless ``dry_run``.

    Refuses (``ValueError``) when a configuration folder cannot be read: its cells would look unused.
    """
    u = usage(root)
    if u["blocked"]:
        bad = "; ".join(f"{v.name}: {v.problem}" for v in u["views"] if v.problem and v.problem != "no images.parquet yet")
        raise ValueError(f"cannot tell which cells are in use, a configuration folder cannot be read ({bad}): "
                         "fix or remove it first")
    cells = Cells(root)
    if not dry_run:
        for b in u["unused"]:
            cells.discard(cells.dir / b)
    return u["unused"], u["bytes"]["unused"]
