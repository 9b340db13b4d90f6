"""The results store: a folder per configuration, written in atomic chunks.

Layout of ``results/<name>-<digest>/``::

    config.yaml            the configuration that owns this folder (checked on open)
    images.parquet         the selected images and the model's answers on them
    chunks/00000/          one finished chunk: rows.parquet, maps.npz, manifest.json
    results.parquet        all chunks' rows, one per (image, method, stage)
    extra/<name>.parquet   further tables computed once from the same configuration

Safety rules:

* A chunk is written into a temporary folder, each file is fsynced, a
  manifest with every file's SHA-256 is written last, and the folder is
  renamed into place: a chunk folder either is complete or does not exist.
  Temporary folders (``.tmp-*``) are never read and are swept on open.
* A chunk whose manifest is missing or whose files do not match their
  checksums is reported with a warning, deleted and recomputed.
* A folder whose ``config.yaml`` differs from the configuration asking for
  it is never mixed in: opening it raises :class:`StoreError`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from apem.config import REPO, Config

RESULTS_DIR = Path(os.environ.get("APEM_RESULTS", REPO / "results"))


class StoreError(RuntimeError):
    """The store on disk belongs to another configuration or cannot be used."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write-then-rename so a reader never sees half a file."""
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    _fsync_write(tmp, data)
    os.replace(tmp, path)


def parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


class Store:
    """The on-disk results of one configuration."""

    def __init__(self, cfg: Config, root: str | Path | None = None):
        self.cfg = cfg
        self.root = Path(root) if root is not None else RESULTS_DIR
        self.dir = self.root / f"{cfg.name}-{cfg.digest()}"
        self.chunks_dir = self.dir / "chunks"

    # ------------------------------------------------------------------ opening
    def open(self) -> "Store":
        """Create the folder or check that it belongs to this configuration."""
        self.chunks_dir.mkdir(parents=True, exist_ok=True)
        cfg_file = self.dir / "config.yaml"
        mine = self.cfg.to_yaml()
        if cfg_file.exists():
            theirs = cfg_file.read_text()
            if theirs != mine:
                raise StoreError(
                    f"{self.dir} holds results of a different configuration; refusing to mix them. "
                    "Remove the folder or change the configuration's name."
                )
        else:
            atomic_write_bytes(cfg_file, mine.encode())
        for tmp in list(self.dir.glob(".tmp-*")) + list(self.chunks_dir.glob(".tmp-*")):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        return self

    # ------------------------------------------------------------------ chunks
    def chunk_path(self, i: int) -> Path:
        return self.chunks_dir / f"{i:05d}"

    def write_chunk(self, i: int, rows: pd.DataFrame, maps: dict[str, np.ndarray]) -> None:
        tmp = self.chunks_dir / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        files = {"rows.parquet": parquet_bytes(rows), "maps.npz": _npz_bytes(maps)}
        for name, blob in files.items():
            _fsync_write(tmp / name, blob)
        manifest = {name: hashlib.sha256(blob).hexdigest() for name, blob in files.items()}
        _fsync_write(tmp / "manifest.json", json.dumps(manifest).encode())
        final = self.chunk_path(i)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        dfd = os.open(self.chunks_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def chunk_ok(self, i: int) -> bool:
        """True when chunk ``i`` is complete and intact; a damaged chunk is removed with a warning."""
        d = self.chunk_path(i)
        if not d.exists():
            return False
        try:
            manifest = json.loads((d / "manifest.json").read_text())
            good = all(_sha256(d / name) == digest for name, digest in manifest.items())
            good = good and set(manifest) == {"rows.parquet", "maps.npz"}
        except (OSError, ValueError):
            good = False
        if not good:
            warnings.warn(f"results chunk {d} is corrupt (checksum mismatch or missing files): recomputing it")
            shutil.rmtree(d, ignore_errors=True)
        return good

    def read_rows(self, i: int) -> pd.DataFrame:
        return pd.read_parquet(self.chunk_path(i) / "rows.parquet")

    def read_maps(self, i: int) -> dict[str, np.ndarray]:
        with np.load(self.chunk_path(i) / "maps.npz") as z:
            return {k: z[k] for k in z.files}

    # ------------------------------------------------------------------ tables
    def write_frame(self, name: str, df: pd.DataFrame) -> Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, parquet_bytes(df))
        return path

    def read_frame(self, name: str) -> pd.DataFrame | None:
        path = self.dir / name
        if not path.exists():
            return None
        try:
            return pd.read_parquet(path)
        except Exception as e:  # a damaged table is recomputed, not trusted
            warnings.warn(f"cannot read {path} ({e}): recomputing it")
            path.unlink(missing_ok=True)
            return None

    def cached_frame(self, name: str, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        """``extra/<name>.parquet``, computed once."""
        rel = f"extra/{name}.parquet"
        df = self.read_frame(rel)
        if df is None:
            df = compute()
            self.write_frame(rel, df)
        return df

    def write_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, _npz_bytes(arrays))

    def read_arrays(self, name: str) -> dict[str, np.ndarray] | None:
        path = self.dir / name
        if not path.exists():
            return None
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
