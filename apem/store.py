"""The results store: the cells every configuration shares, and a folder per configuration.

Layout of ``results/``::

    cells/<kind>/<key>/<batch>/  every image's maps, epsilons and shuffled epsilons, stored once
                                 under what they depend on (:mod:`apem.runner.cells`)
    _predictions/                the image pool's classification, per model, preset and data
    _digests.json                the image files' SHA-256 (a cache, by path, size and time)
    <name>-<digest>/             one configuration, a view of the cells:
        config.yaml              the configuration and its resolved data (checked on open)
        environment.json         the numeric environment its numbers are computed under
        lock                     held (flock) by the one run writing here; holds its pid
        images.parquet           the selected images (with their cell identity) and the model's answers
        results.parquet          its table, assembled from the cells: one row per (image, method, stage)
        filter.parquet, filter_maps.npz   the explanation filter's results (when asked for)
        extra/<name>.parquet     further tables computed once from the same configuration

Every table and array of a configuration's folder has a ``<file>.sha256`` beside it;
every batch of cells a manifest with its files' SHA-256.

Safety rules:

* Nothing is trusted unread: a batch of cells is checked against its manifest (and
  the manifest against the key it sits under), every other file against its
  ``.sha256``, before use. A damaged file is reported by name (a warning), removed
  and recomputed; a map that cannot be read raises :class:`StoreError` naming the file.
* A batch of cells is written into a temporary folder of its own process
  (``.tmp-<pid>-<random>``), each file fsynced, the manifest last, then renamed into
  place: it is complete or does not exist, and never changes after. Temporary files
  of live processes are never swept.
* One run writes a configuration's folder at a time: :meth:`Store.lock` takes an
  exclusive ``flock`` on ``lock``, which the kernel releases when its process dies,
  so a lock left by a killed run is taken over at once; a second run waits, then
  finds the work done. Two configurations computing the same cells at once write
  two batches with the same numbers; readers take the first.
* A folder whose ``config.yaml`` differs from the configuration asking for it is
  never mixed in: opening it raises :class:`StoreError`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import socket
import sys
import uuid
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from apem.config import REPO, Config
from apem.numerics import NumericEnv

RESULTS_DIR = Path(os.environ.get("APEM_RESULTS", REPO / "results"))


class StoreError(RuntimeError):
    """The store on disk belongs to another configuration or cannot be used."""


# ----------------------------------------------------------------------------- files

_verified: dict[tuple, str] = {}  # (path, size, mtime_ns) -> sha256, so a process hashes a file once


def sha256_file(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _verified:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _verified[key] = h.hexdigest()
    return _verified[key]


def tmp_name(name: str = "") -> str:
    return f".tmp-{os.getpid()}-{uuid.uuid4().hex}{'-' + name if name else ''}"


def fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write-then-rename so a reader never sees half a file."""
    tmp = path.with_name(tmp_name(path.name))
    try:
        fsync_write(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or an interruption leaves nothing behind
        raise


def parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def write_checked(path: Path, data: bytes) -> None:
    """``path`` and its ``.sha256`` beside it, each written atomically (data first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    atomic_write_bytes(path.with_name(path.name + ".sha256"), hashlib.sha256(data).hexdigest().encode())


def verified(path: Path) -> bool:
    """True when ``path`` exists and matches the checksum beside it."""
    side = path.with_name(path.name + ".sha256")
    try:
        return side.read_text().strip() == sha256_file(path)
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tmp_owner(name: str) -> int | None:
    parts = name.split("-")
    return int(parts[1]) if len(parts) > 2 and parts[0] == ".tmp" and parts[1].isdigit() else None


# ----------------------------------------------------------------------------- the store


class Store:
    """The folder of one configuration (its cells live in :class:`apem.runner.cells.Cells` beside it)."""

    def __init__(self, cfg: Config, root: str | Path | None = None):
        self.cfg = cfg
        self.root = Path(root) if root is not None else RESULTS_DIR
        self.dir = self.root / f"{cfg.name}-{cfg.digest()}"

    def __repr__(self) -> str:
        return f"Store({self.dir})"

    # ------------------------------------------------------------------ opening
    def exists(self) -> bool:
        return (self.dir / "config.yaml").is_file()

    def open(self) -> "Store":
        """Create the folder or check that it belongs to this configuration."""
        self.dir.mkdir(parents=True, exist_ok=True)
        cfg_file = self.dir / "config.yaml"
        mine = self.cfg.identity_yaml()
        if cfg_file.exists():
            theirs = cfg_file.read_text()
            if theirs != mine:
                raise StoreError(
                    f"{self.dir} holds results of a different configuration; refusing to mix them. "
                    "Remove the folder or change the configuration's name."
                )
        else:
            note = self.data_changed()
            if note:
                print(f"apem: {note}", file=sys.stderr, flush=True)
            atomic_write_bytes(cfg_file, mine.encode())
        self.sweep()
        return self

    def data_changed(self) -> str | None:
        """What changed in the images since a folder of this configuration was computed on others, or None.

        A configuration whose every field is the same but whose images differ (a file rewritten,
        added or removed) gets a new folder; this says so, naming the older folder, instead of
        starting over in silence. Only the cells of images whose bytes changed are computed again.
        """
        import yaml

        mine = self.cfg.identity()
        data = mine.pop("resolved_data")
        for other in sorted(self.root.glob(f"{self.cfg.name}-*/config.yaml")):
            try:
                theirs = yaml.safe_load(other.read_text())
                old = theirs.pop("resolved_data")
            except Exception:  # noqa: BLE001 - an unreadable folder says nothing
                continue
            if theirs == mine and old != data:
                what = [f"{k} {old.get(k)!r} -> {data.get(k)!r}" for k in ("folder", "images", "ground_truth")
                        if old.get(k) != data.get(k)] or ["the same file names, other bytes"]
                return (f"the images of {self.cfg.name} changed since {other.parent.name} was computed "
                        f"({'; '.join(what)}; fingerprint {old.get('fingerprint')} -> {data.get('fingerprint')}): "
                        f"a new folder {self.dir.name}; the cells of unchanged images are reused")
        return None

    def sweep(self) -> None:
        """Remove temporary files left by processes that no longer run (never a live one's)."""
        for d in (self.dir, self.dir / "extra"):
            if not d.is_dir():
                continue
            for tmp in d.glob(".tmp-*"):
                owner = tmp_owner(tmp.name)
                if owner is not None and (owner == os.getpid() or pid_alive(owner)):
                    continue
                shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)

    def is_empty(self) -> bool:
        """True when the folder holds no result yet (only its configuration, lock, environment)."""
        if not self.dir.exists():
            return True
        keep = {"config.yaml", "lock", "environment.json", "environment.json.sha256"}
        return not any(p.name not in keep and not p.name.startswith(".tmp-") for p in self.dir.iterdir())

    def remove_if_empty(self) -> None:
        """Undo :meth:`open` for a run that failed before computing anything."""
        if self.dir.exists() and self.is_empty():
            shutil.rmtree(self.dir, ignore_errors=True)

    @contextlib.contextmanager
    def lock(self, wait: bool = True):
        """Hold the store's write lock for the block; wait (saying for whom) while another run holds it."""
        fd = self._acquire(wait)
        try:
            yield self
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing releases the flock

    def _acquire(self, wait: bool) -> int:
        told = False
        while True:
            self.dir.mkdir(parents=True, exist_ok=True)
            path = self.dir / "lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                if not wait:
                    os.close(fd)
                    raise StoreError(f"{self.dir} is being written by {holder}; try again when it has finished") from None
                if not told:
                    print(f"apem: {self.dir.name} is being computed by {holder}; waiting for it to finish",
                          file=sys.stderr, flush=True)
                    told = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            # the holder may have removed the folder (a failed run leaves none): then lock the new one
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
                return fd
            os.close(fd)

    # ------------------------------------------------------------------ environment
    def environment(self) -> NumericEnv | None:
        path = self.dir / "environment.json"
        if not verified(path):
            return None
        return NumericEnv.from_record(json.loads(path.read_text()))

    def set_environment(self, env: NumericEnv) -> None:
        write_checked(self.dir / "environment.json", json.dumps(env.record(), indent=1).encode())

    # ------------------------------------------------------------------ tables
    def write_frame(self, name: str, df: pd.DataFrame) -> Path:
        path = self.dir / name
        write_checked(path, parquet_bytes(df))
        return path

    def trusted(self, name: str) -> Path | None:
        """``name`` when it exists and matches its checksum; a damaged file is reported and removed.

        Only a run holding the lock, or a reader after it, calls this: :meth:`has` checks
        without removing (a file may be between its data and its checksum being replaced).
        """
        path = self.dir / name
        if not path.exists():
            return None
        if verified(path):
            return path
        warnings.warn(f"{path} does not match its checksum (damaged, truncated or unfinished): recomputing it",
                      stacklevel=3)
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".sha256").unlink(missing_ok=True)
        return None

    def has(self, name: str) -> bool:
        """True when ``name`` exists and matches its checksum (no side effect)."""
        return verified(self.dir / name)

    def read_frame(self, name: str) -> pd.DataFrame | None:
        path = self.trusted(name)
        return None if path is None else pd.read_parquet(path)

    def cached_frame(self, name: str, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        """``extra/<name>.parquet``, computed once, in the numeric environment the store records.

        A study that recomputes maps or epsilons (a chapter's extra table) must get the
        numbers the runner would: it runs with the store's thread count and TF32 off.
        """
        rel = f"extra/{name}.parquet"
        df = self.read_frame(rel)
        if df is None:
            with self.pinned():
                df = compute()
            self.write_frame(rel, df)
        return df

    def threads(self) -> int:
        """The CPU thread count the store's numbers were computed with (this process's when none is recorded)."""
        import torch

        env = self.environment()
        return env.threads if env is not None and env.device_type == "cpu" else torch.get_num_threads()

    def pinned(self):
        """A context that puts this process in the store's numeric environment (threads, TF32 off)."""
        from apem.numerics import pinned

        return pinned(self.threads())

    def write_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        write_checked(self.dir / name, npz_bytes(arrays))

    def read_arrays(self, name: str) -> dict[str, np.ndarray] | None:
        path = self.trusted(name)
        if path is None:
            return None
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
