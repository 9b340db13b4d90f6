"""The cells: every image's maps and epsilons, stored once under what they depend on.

Layout of ``<results>/cells/``::

    <kind>/<key>/              kind: maps, search or shuffle (apem.runner.keys), filter (the
                               explanation filter: apem.run.run_filter), attributions (raw, for
                               the chapters: apem.run.Results.attributions), or study (a chapter's
                               study, per image: apem.studies.common.cached_rows)
        key.json               the key's parts, readable (what the digest hashes)
        <batch>/               the cells of one computed chunk, written at once
            rows.parquet       one row per (image, stage): image_key, image_id, stage, and
                               the numbers (search, shuffle) or the row of the map (maps)
            maps.npz           (maps, filter) arrays s1, s2, s3: (images, C, H, W), storage form;
                               (attributions) array a: (images, 3, H, W), float32
            manifest.json      SHA-256 of each file, the key, the numeric environment

A batch is written like a chunk of the old per-configuration store: into a temporary
folder of its own process (``.tmp-<pid>-<random>``), each file fsynced, the manifest
last, then renamed into place, so it is complete or absent. Batches are never modified;
two runs that compute the same cell (two configurations at once) write two batches
with equal numbers, and a reader takes the first by name (names start with the time).

Nothing is trusted unread: a batch's files are checked against its manifest, and the
manifest against the folder it sits in (its key, and for maps the numeric environment
its key names) before any of its cells is used. A damaged or foreign batch is reported
by name (a warning), removed, and its cells computed again.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from apem.runner.keys import KINDS, digest

#: the kinds of cell on disk: the runner's, and the chapters' studies (:func:`apem.studies.common.cached_rows`)
CELL_KINDS = (*KINDS, "filter", "attributions", "study")
#: the kinds whose batches hold arrays (``maps.npz``) beside their rows
ARRAY_KINDS = ("maps", "filter", "attributions")
from apem.store import (StoreError, fsync_dir, fsync_write, pid_alive, tmp_name, tmp_owner, atomic_write_bytes,
                        npz_bytes, parquet_bytes, sha256_file)

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Entry:
    """Where one cell lives: the batch folder (relative to ``cells/``) and its row in the batch's table."""

    batch: str
    row: int


@dataclass
class _Batch:
    stamp: tuple
    entries: dict  # (image_key, stage) -> row of rows.parquet
    checked: bool  # its files were checked against the manifest


class Cells:
    """The cell store under ``<root>/cells``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.dir = self.root / "cells"
        self._batches: dict[str, _Batch] = {}  # batch path -> its verified entries (a batch never changes)
        self._rows: dict[str, pd.DataFrame] = {}
        self._maps: dict[str, dict] = {}

    def key_dir(self, kind: str, key: str) -> Path:
        return self.dir / kind / key

    # ------------------------------------------------------------------ reading
    def index(self, kind: str, parts: dict, verify: bool = True) -> dict[tuple[str, int], Entry]:
        """``(image_key, stage) -> Entry`` for every intact cell of this key (the first batch by name wins).

        ``verify``: check every batch's files against its manifest, and remove (with a warning) a
        damaged one, as the runner does before it reuses a cell. ``False`` (a reader such as
        :class:`apem.run.Results`) checks only the manifest's key and changes nothing: a damaged
        file is then named when it is read (:meth:`maps`).
        """
        key = digest(parts)
        d = self.key_dir(kind, key)
        out: dict[tuple[str, int], Entry] = {}
        if not d.is_dir():
            return out
        for b in sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
            rel = f"{kind}/{key}/{b}"
            entries = self._batch_entries(rel, kind, key, parts, verify)
            for k, row in entries.items():
                out.setdefault(k, Entry(rel, row))
        return out

    def _batch_entries(self, rel: str, kind: str, key: str, parts: dict, verify: bool = True) -> dict:
        d = self.dir / rel
        try:
            st = (d / MANIFEST).stat()
            stamp = (st.st_ino, st.st_mtime_ns)
        except OSError:
            stamp = None
        cached = self._batches.get(rel)
        if cached is not None and cached.stamp == stamp and (cached.checked or not verify):
            return cached.entries
        problem = self.problem(rel, kind, key, parts, check_files=verify)
        if problem is not None:
            if problem != "missing" and not verify:
                return {}  # a reader leaves it to the runner
            if problem != "missing":
                warnings.warn(f"results cell batch {d} cannot be used: {problem}; its cells are computed again",
                              stacklevel=3)
                self.discard(d)
            self._batches.pop(rel, None)
            return {}
        rows = pd.read_parquet(d / "rows.parquet", columns=["image_key", "stage"])
        entries = {(k, int(s)): i for i, (k, s) in enumerate(zip(rows.image_key, rows.stage))}
        self._batches[rel] = _Batch(stamp, entries, verify)
        return entries

    def problem(self, rel: str, kind: str, key: str, parts: dict, check_files: bool = True) -> str | None:
        """Why batch ``rel`` cannot be trusted as cells of ``key``, or None (``check_files=False``: its manifest only)."""
        d = self.dir / rel
        if not d.exists():
            return "missing"
        try:
            manifest = json.loads((d / MANIFEST).read_text())
            files = manifest["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return "its manifest.json is missing or unreadable"
        expected = {"rows.parquet", "maps.npz"} if kind in ARRAY_KINDS else {"rows.parquet"}
        if not isinstance(files, dict) or set(files) != expected:
            return f"its manifest lists {sorted(files) if isinstance(files, dict) else files}, not {sorted(expected)}"
        if manifest.get("key") != key or manifest.get("kind") != kind:
            return (f"it holds cells of {manifest.get('kind')}/{manifest.get('key')}, not of {kind}/{key} "
                    "(copied in from elsewhere?)")
        want_env = parts.get("environment")
        if want_env is not None and manifest.get("environment_key") != want_env:
            return f"it was computed under {manifest.get('environment_key')}, not {want_env}"
        for name, sha in files.items() if check_files else ():
            try:
                if sha256_file(d / name) != sha:
                    return f"{name} does not match its checksum (damaged or truncated)"
            except OSError as e:
                return f"{name} cannot be read ({e.strerror or e})"
        return None

    def rows(self, rel: str) -> pd.DataFrame:
        """The table of batch ``rel``, checked against its manifest (:class:`StoreError` naming a damaged file)."""
        if rel not in self._rows:
            self._rows[rel] = pd.read_parquet(self._checked(rel, "rows.parquet"))
        return self._rows[rel]

    def maps(self, rel: str) -> dict[str, np.ndarray]:
        """The map arrays of maps batch ``rel``, checked against its manifest."""
        if rel not in self._maps:
            path = self._checked(rel, "maps.npz")
            try:
                with np.load(path) as z:
                    self._maps[rel] = {k: z[k] for k in z.files}
            except (OSError, ValueError) as e:  # checksummed, so only a disk fault gets here
                raise StoreError(f"cannot read {path}: {type(e).__name__}: {e}. "
                                 "Run `apem run` on this configuration to compute it again.") from None
        return self._maps[rel]

    def _checked(self, rel: str, name: str) -> Path:
        path = self.dir / rel / name
        try:
            sha = json.loads((self.dir / rel / MANIFEST).read_text())["files"][name]
            ok = sha256_file(path) == sha
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StoreError(f"cannot read {path}: {e}. Run `apem run` on this configuration to compute it again.") from None
        if not ok:
            raise StoreError(f"cannot read {path}: it does not match its checksum (damaged or truncated). "
                             "Run `apem run` on this configuration to compute it again.")
        return path

    # ------------------------------------------------------------------ writing
    def write(self, kind: str, parts: dict, rows: pd.DataFrame, env_record: dict,
              arrays: dict[str, np.ndarray] | None = None) -> str:
        """One batch of cells, atomically; returns its path relative to ``cells/``."""
        key = digest(parts)
        d = self.key_dir(kind, key)
        d.mkdir(parents=True, exist_ok=True)
        key_file = d / "key.json"
        if not key_file.exists():
            atomic_write_bytes(key_file, json.dumps(parts, indent=1, sort_keys=True, default=str).encode())
        files = {"rows.parquet": parquet_bytes(rows)}
        if kind in ARRAY_KINDS:
            files["maps.npz"] = npz_bytes(arrays or {})
        tmp = d / tmp_name()
        tmp.mkdir()
        try:
            return self._put(d, tmp, kind, key, files, rows, env_record, parts)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a full disk or an interruption leaves nothing behind
            raise

    def _put(self, d: Path, tmp: Path, kind: str, key: str, files: dict, rows, env_record: dict, parts: dict) -> str:
        for name, blob in files.items():
            fsync_write(tmp / name, blob)
        manifest = {"kind": kind, "key": key, "files": {n: hashlib.sha256(b).hexdigest() for n, b in files.items()},
                    "environment": env_record, "environment_key": parts.get("environment"),
                    "images": sorted(set(rows.image_key)), "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
        fsync_write(tmp / MANIFEST, json.dumps(manifest, indent=1, default=str).encode())
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(tmp, d / name)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise StoreError(f"could not put cells {d / name} in place: the name is taken") from None
            raise
        fsync_dir(d)
        return f"{kind}/{key}/{name}"

    def discard(self, d: Path) -> None:
        """Move ``d`` aside, then delete it: nobody ever reads a half-deleted batch."""
        trash = d.with_name(tmp_name("discard"))
        try:
            os.rename(d, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)
        self._batches.pop(str(d.relative_to(self.dir)), None)

    def sweep(self) -> None:
        """Remove temporary folders of processes that no longer run (never a live one's)."""
        if not self.dir.is_dir():
            return
        for kind in CELL_KINDS:
            for d in (self.dir / kind).glob("*"):
                for tmp in d.glob(".tmp-*"):
                    owner = tmp_owner(tmp.name)
                    if owner is not None and (owner == os.getpid() or pid_alive(owner)):
                        continue
                    shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------ housekeeping
    def batches(self) -> list[str]:
        """Every batch folder, relative to ``cells/``."""
        out = []
        for kind in CELL_KINDS:
            for d in sorted((self.dir / kind).glob("*")) if (self.dir / kind).is_dir() else []:
                out += [f"{kind}/{d.name}/{b.name}" for b in sorted(d.iterdir())
                        if b.is_dir() and not b.name.startswith(".")]
        return out

    def size(self, rels=None) -> int:
        """Bytes on disk of the given batches (default: all)."""
        total = 0
        for rel in self.batches() if rels is None else rels:
            for f in (self.dir / rel).iterdir():
                total += f.stat().st_size
        return total


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
