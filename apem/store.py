"""The results store: a folder per configuration, written in atomic, checksummed chunks.

Layout of ``results/<name>-<digest>/``::

    config.yaml            the configuration and its resolved data (checked on open)
    environment.json       the numeric environment the numbers were computed under
    lock                   held (flock) by the one run writing here; holds its pid
    images.parquet         the selected images and the model's answers on them
    chunks/00000/          one finished chunk: rows.parquet, maps.npz, manifest.json
    results.parquet        all chunks' rows, one per (image, method, stage)
    extra/<name>.parquet   further tables computed once from the same configuration

Every table and array outside the chunks has a ``<file>.sha256`` beside it.

Safety rules:

* Nothing is trusted unread: a chunk's files are checked against the SHA-256s in
  its manifest, and every other file against its ``.sha256``, before use. A
  damaged file is reported by name (a warning), removed and recomputed; a map
  that cannot be read raises :class:`StoreError` naming the chunk and file.
* A chunk is written into a temporary folder of its own process
  (``.tmp-<pid>-<random>``), each file fsynced, the manifest (checksums and
  numeric environment) last, then renamed into place: a chunk folder either is
  complete or does not exist, and a second writer of the same chunk never
  deletes a good one. Temporary files of live processes are never swept.
* One run writes a store at a time: :meth:`Store.lock` takes an exclusive
  ``flock`` on ``lock``, which the kernel releases when its process dies, so a
  lock left by a killed run is taken over at once; a second run waits, then
  finds the work done.
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
CHUNK_FILES = ("rows.parquet", "maps.npz")


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


def _tmp_name(name: str = "") -> str:
    return f".tmp-{os.getpid()}-{uuid.uuid4().hex}{'-' + name if name else ''}"


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write-then-rename so a reader never sees half a file."""
    tmp = path.with_name(_tmp_name(path.name))
    _fsync_write(tmp, data)
    os.replace(tmp, path)


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tmp_owner(name: str) -> int | None:
    parts = name.split("-")
    return int(parts[1]) if len(parts) > 2 and parts[0] == ".tmp" and parts[1].isdigit() else None


# ----------------------------------------------------------------------------- the store


class Store:
    """The on-disk results of one configuration."""

    def __init__(self, cfg: Config, root: str | Path | None = None):
        self.cfg = cfg
        self.root = Path(root) if root is not None else RESULTS_DIR
        self.dir = self.root / f"{cfg.name}-{cfg.digest()}"
        self.chunks_dir = self.dir / "chunks"

    def __repr__(self) -> str:
        return f"Store({self.dir})"

    # ------------------------------------------------------------------ opening
    def exists(self) -> bool:
        return (self.dir / "config.yaml").is_file()

    def open(self) -> "Store":
        """Create the folder or check that it belongs to this configuration."""
        self.chunks_dir.mkdir(parents=True, exist_ok=True)
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
            atomic_write_bytes(cfg_file, mine.encode())
        self.sweep()
        return self

    def sweep(self) -> None:
        """Remove temporary files left by processes that no longer run (never a live one's)."""
        for d in (self.dir, self.chunks_dir, self.dir / "extra"):
            if not d.is_dir():
                continue
            for tmp in d.glob(".tmp-*"):
                owner = _tmp_owner(tmp.name)
                if owner is not None and (owner == os.getpid() or _pid_alive(owner)):
                    continue
                shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)

    def is_empty(self) -> bool:
        """True when the folder holds no result yet (only its configuration, lock, environment)."""
        if not self.dir.exists():
            return True
        keep = {"config.yaml", "lock", "environment.json", "environment.json.sha256", "chunks"}
        if any(p.name not in keep and not p.name.startswith(".tmp-") for p in self.dir.iterdir()):
            return False
        return not self.chunks_dir.exists() or not any(p.name[0] != "." for p in self.chunks_dir.iterdir())

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

    # ------------------------------------------------------------------ chunks
    def chunk_path(self, i: int) -> Path:
        return self.chunks_dir / f"{i:05d}"

    def chunk_ids(self) -> list[int]:
        if not self.chunks_dir.exists():
            return []
        return sorted(int(p.name) for p in self.chunks_dir.iterdir() if p.name.isdigit())

    def write_chunk(self, i: int, rows: pd.DataFrame, maps: dict[str, np.ndarray], env: NumericEnv) -> None:
        tmp = self.chunks_dir / _tmp_name()
        tmp.mkdir()
        files = {"rows.parquet": parquet_bytes(rows), "maps.npz": npz_bytes(maps)}
        for name, blob in files.items():
            _fsync_write(tmp / name, blob)
        manifest = {"files": {name: hashlib.sha256(blob).hexdigest() for name, blob in files.items()},
                    "environment": env.record()}
        _fsync_write(tmp / "manifest.json", json.dumps(manifest, indent=1).encode())
        final = self.chunk_path(i)
        for _ in range(10):
            try:
                os.rename(tmp, final)  # atomic; fails when `final` exists and is not empty
                break
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            if self.chunk_ok(i, quiet=True):  # another writer's complete chunk: keep it
                shutil.rmtree(tmp, ignore_errors=True)
                break
            self._discard(final)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreError(f"could not put chunk {final} in place: another process keeps replacing it")
        _fsync_dir(self.chunks_dir)

    def _discard(self, d: Path) -> None:
        """Move ``d`` aside, then delete it: nobody ever reads a half-deleted chunk."""
        trash = d.with_name(_tmp_name("discard"))
        try:
            os.rename(d, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def chunk_manifest(self, i: int) -> dict:
        return json.loads((self.chunk_path(i) / "manifest.json").read_text())

    def chunk_problem(self, i: int) -> str | None:
        """Why chunk ``i`` cannot be trusted, or None when it is complete and intact."""
        d = self.chunk_path(i)
        if not d.exists():
            return "missing"
        try:
            manifest = self.chunk_manifest(i)
            files = manifest["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return "its manifest.json is missing or unreadable"
        if set(files) != set(CHUNK_FILES):
            return f"its manifest lists {sorted(files)}, not {list(CHUNK_FILES)}"
        for name, digest in files.items():
            try:
                if sha256_file(d / name) != digest:
                    return f"{name} does not match its checksum (damaged or truncated)"
            except OSError as e:
                return f"{name} cannot be read ({e.strerror or e})"
        return None

    def chunk_ok(self, i: int, quiet: bool = False) -> bool:
        """True when chunk ``i`` is complete and intact; a damaged chunk is reported by name and removed."""
        problem = self.chunk_problem(i)
        if problem is None:
            return True
        if problem != "missing":
            if not quiet:
                warnings.warn(f"results chunk {self.chunk_path(i)} is corrupt: {problem}; recomputing it", stacklevel=2)
            self._discard(self.chunk_path(i))
        return False

    def chunk_environment(self, i: int) -> NumericEnv:
        return NumericEnv.from_record(self.chunk_manifest(i)["environment"])

    def _checked_chunk_file(self, i: int, name: str) -> Path:
        path = self.chunk_path(i) / name
        problem = self.chunk_problem(i)
        if problem is not None:
            raise StoreError(f"cannot read {path} (chunk {i} of {self.dir.name}): {problem}. "
                             "Run `apem run` on this configuration to recompute it.")
        return path

    def read_rows(self, i: int) -> pd.DataFrame:
        return pd.read_parquet(self._checked_chunk_file(i, "rows.parquet"))

    def read_maps(self, i: int) -> dict[str, np.ndarray]:
        path = self._checked_chunk_file(i, "maps.npz")
        try:
            with np.load(path) as z:
                return {k: z[k] for k in z.files}
        except Exception as e:  # checksummed, so only a disk fault gets here
            raise StoreError(f"cannot read {path} (chunk {i}): {type(e).__name__}: {e}") from e

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
