"""The runner on a Ray cluster: workers compute chunks, this process stores them.

``apem run CONFIG --ray [ADDRESS]`` (``run(cfg, ray=...)``) computes the missing chunks
of a configuration on Ray (https://docs.ray.io), an existing distributed engine: its
scheduler places the workers, restarts a killed one and moves the data.

* ``ADDRESS``: ``local`` (``--ray`` alone) starts a Ray on this machine with its cores
  (and GPUs) for the run and stops it after; ``auto`` joins the cluster this machine is
  part of (``ray start``); ``HOST:PORT`` a head node's address; ``ray://HOST:PORT`` the
  Ray client (needs ``ray[client]``). A process already connected to Ray uses its
  connection as it is.
* Workers are actors (:class:`Worker`): each loads the model once and computes chunks
  (:func:`apem.runner.compute.compute_chunk`, the serial runner's own function). One GPU per worker
  when the store's numbers are CUDA numbers, else ``threads`` CPUs per worker.
* This process classifies the pool, selects the images, decodes each chunk's images and
  ships the tensors: workers need neither the data folder nor the store, only apem, torch
  and the model's weights. It alone writes the store, each chunk as it arrives
  (:func:`apem.runner.chunks.store_all`), so no shared filesystem is needed, ``kill -9`` of this
  process loses at most the chunks in flight, and stored chunks are never recomputed: a
  Ray run resumes a serial one and the other way round.
* Bit for bit: a worker pins the store's numeric environment (thread count, TF32 off)
  and reports it with a digest of its apem source; a worker whose environment key
  (:meth:`apem.numerics.NumericEnv.key`) or code differs is refused, never mixed in.
* Faults: a worker that dies (killed, out of memory, node lost) is restarted by Ray
  (``max_restarts``) and its chunks go back to the queue, to whichever worker is free
  first. A chunk that fails :data:`MAX_ATTEMPTS` times is reported by index and image
  ids; the other chunks finish, then :class:`apem.runner.chunks.ChunkFailure` names the failed
  ones (no table is written from an incomplete run).
* A local Ray dies with this process: ``kill -9`` of the driver leaves no Ray process behind
  (:func:`reap_with`; Ray's own fate-sharing misses its dashboard and runtime-env agents).

Ray is imported only here and only when asked for: apem imports and runs without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import socket
import sys
import time
from collections import Counter, deque
from pathlib import Path

from apem.runner.chunks import Chunk, ChunkFailure, Done, decode

LOCAL = "local"
MAX_ATTEMPTS = 3  # a chunk failing this many times (error or dead worker) is given up and reported
MAX_RESTARTS = 2  # Ray restarts a dead worker this often before it is dropped
IN_FLIGHT = 2  # chunks queued per worker: the next one is there when a worker finishes one
LOCAL_OBJECT_STORE = 256 << 20  # bytes; a 32-image chunk is 19 MB of tensors, and Ray spills beyond this
#: Test hooks, sent to every worker: ``fail_chunks`` (indices that raise on every attempt),
#: ``hold_first_chunk`` (a path: the first worker to take a chunk writes its pid to ``PATH.pid``
#: and waits until ``PATH`` exists), ``threads_offset`` (workers pin that many more threads).
TEST_HOOKS: dict = {}


class ClusterError(RuntimeError):
    """No Ray cluster at the given address, or no worker that can compute this store's chunks."""


def _ray():
    try:
        import ray
    except ImportError:
        raise ClusterError("--ray needs Ray: pip install 'ray==2.60.0' (requirements.txt pins it)") from None
    return ray


def check_address(address: str | None) -> str | None:
    """``address`` when it is one ``--ray`` takes (None: no Ray), else a :class:`ClusterError` saying which are."""
    if address is None:
        return None
    a = str(address).strip()
    if a in (LOCAL, "auto") or re.fullmatch(r"(ray://)?[A-Za-z0-9.\-_\[\]:]+:\d{1,5}", a):
        return a
    raise ClusterError(f"--ray {address!r}: expected nothing (a local Ray on this machine), 'auto' (the cluster "
                       "this machine joined with `ray start`), HOST:PORT of a head node, or ray://HOST:PORT")


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast (Ray itself retries for two minutes) when nothing listens at ``HOST:PORT``."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise ClusterError(f"no Ray cluster answers at {address} ({e.strerror or e}): start one with "
                           "`ray start --head` there, or check the address") from None


@contextlib.contextmanager
def connected(address: str):
    """This process connected to the Ray cluster at ``address`` for the block (see the module's doc)."""
    ray = _ray()
    if ray.is_initialized():  # a caller's own connection (a notebook's, the tests' cluster): used as it is
        yield
        return
    kw = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    if address not in (LOCAL, "auto"):
        _reachable(address)
    try:
        if address == LOCAL:
            ray.init(num_cpus=os.cpu_count(), object_store_memory=LOCAL_OBJECT_STORE, **kw)
            reap_with(os.getpid(), _session_name(ray))
        else:
            ray.init(address=address, **kw)
    except (ConnectionError, ValueError, SystemExit, RuntimeError) as e:
        why = " ".join(str(e).split())[:300] or type(e).__name__
        raise ClusterError(f"cannot join the Ray cluster at {address!r}: {why}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _session_name(ray) -> str | None:
    """The local Ray's session name (``session_<date>_<pid>``), which every one of its processes carries
    in its command line; None when this Ray does not say."""
    try:
        return Path(ray._private.worker._global_node.get_session_dir_path()).name  # no public API says it
    except Exception:  # noqa: BLE001 - another Ray version: no reaper rather than no run
        return None


#: The reaper's program: wait for the driver ``pid`` to end, then kill what is left of its session.
_REAPER = """
import os, signal, sys, time
pid, session = int(sys.argv[1]), sys.argv[2]
while True:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        break
    time.sleep(0.5)
time.sleep(1.0)  # a normal shutdown is already under way: let Ray stop its own processes
me = os.getpid()
for p in os.listdir("/proc"):
    if not p.isdigit() or int(p) == me:
        continue
    try:
        with open(f"/proc/{p}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        continue
    if session.encode() in cmd:
        try:
            os.kill(int(p), signal.SIGKILL)
        except OSError:
            pass
"""


def reap_with(pid: int, session: str | None) -> None:
    """Start a small detached process that kills the processes of Ray ``session`` once process ``pid`` ends.

    ``ray.init()`` starts a local cluster whose processes outlive a driver killed with ``kill -9``
    (its dashboard and runtime-env agents in Ray 2.60); after a normal ``ray.shutdown()`` the reaper
    finds nothing to kill. Linux only (it reads ``/proc``); elsewhere nothing is started.
    """
    import subprocess

    if not session or not os.path.isdir("/proc"):
        return
    subprocess.Popen([sys.executable, "-c", _REAPER, str(pid), session], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)


def code_digest() -> str:
    """SHA-256 (12 hex digits) of apem's Python sources: workers must run the code this process runs."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:12]


# ----------------------------------------------------------------------------- the worker


class Worker:
    """A Ray actor: the model loaded once, in the store's numeric environment; computes chunks."""

    def __init__(self, cfg, threads: int, device_type: str, hooks: dict):
        import torch

        from apem import numerics
        from apem.alloc import tune_malloc
        from apem.models import load_model

        numerics.apply(threads + int(hooks.get("threads_offset", 0)))  # threads, TF32 off, for the process's life
        tune_malloc()  # as the serial runner (speed only)
        self.cfg, self.hooks, self.error, self.lm = cfg, hooks, None, None
        self.device = "cuda" if device_type == "cuda" else "cpu"  # Ray shows an actor only its own GPU
        try:
            self.lm = load_model(cfg.model, cfg.preset, None if cfg.weights == "none" else cfg.weights, self.device)
        except Exception as e:  # reported by hello(): the driver refuses this worker with the reason
            self.error = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        torch.manual_seed(cfg.seed)  # as the serial runner before its chunks

    def hello(self) -> dict:
        """Who and where this worker is, and the numeric environment it computes in."""
        from apem.numerics import NumericEnv

        env = None
        with contextlib.suppress(Exception):
            env = NumericEnv.current(self.lm.device if self.lm is not None else self.device).record()
        return dict(pid=os.getpid(), host=socket.gethostname(), env=env, code=code_digest(), error=self.error)

    def compute(self, chunk, x):
        """One chunk: ``(cell batches, seconds)`` exactly as the serial runner computes it."""
        from apem.runner.compute import compute_chunk

        self._test_hooks(chunk.index)
        t0 = time.perf_counter()
        batches = compute_chunk(self.cfg, self.lm, x, chunk.part, chunk.work)
        return batches, time.perf_counter() - t0

    def _test_hooks(self, index: int) -> None:
        if index in self.hooks.get("fail_chunks", ()):
            raise RuntimeError(f"chunk {index} fails on purpose (test hook)")
        hold = self.hooks.get("hold_first_chunk")
        if hold:
            try:
                fd = os.open(f"{hold}.pid", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return  # another worker (or this one before a restart) was held already
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            deadline = time.time() + 300
            while not os.path.exists(hold) and time.time() < deadline:
                time.sleep(0.05)


# ----------------------------------------------------------------------------- the dispatcher


def _worker_name(info: dict) -> str:
    env = info.get("env") or {}
    where = env.get("device_name", "?") if env.get("device_type") == "cuda" else f"cpu, {env.get('threads')} thread(s)"
    return f"{info['host']} pid {info['pid']} ({where})"


def _refusal(info: dict, env, code: str) -> str | None:
    """Why a worker cannot compute chunks of a store computed under ``env``, or None when it can."""
    from apem.numerics import NumericEnv

    if info.get("error"):
        return f"it cannot load the model: {info['error']}"
    if info.get("env") is None:
        return "it cannot report its numeric environment"
    theirs = NumericEnv.from_record(info["env"])
    if theirs.key() != env.key():
        diff = ", ".join(f"{k} {theirs.key().get(k)!r} (store: {env.key().get(k)!r})"
                         for k in sorted(set(env.key()) | set(theirs.key())) if theirs.key().get(k) != env.key().get(k))
        return f"it computes under {theirs.describe()}: {diff}"
    if info.get("code") != code:
        return f"it runs other apem code (source digest {info.get('code')}, here {code}): install the same apem there"
    return None


def _cause(err) -> str:
    """``Type: message`` on one line: a worker's exception (a RayTaskError's cause) or the error itself."""
    cause = getattr(err, "cause", None)
    if cause is None and hasattr(err, "cause"):  # a RayTaskError without its exception: the traceback's last line
        lines = str(err).strip().splitlines()
        return f"{type(err).__name__}: {lines[-1][:300] if lines else ''}"
    cause = cause or err
    return f"{type(cause).__name__}: {' '.join(str(cause).split())[:300]}"


def compute(cfg, store, images, transform, todo: list[Chunk], env, workers: int | None = None,
            progress: bool = True):
    """Start the workers; a generator of :class:`apem.runner.chunks.Done` for ``todo``, as the workers finish them.

    Must run inside :func:`connected`. ``workers``: at most this many (default: as many as the
    cluster's GPUs, or its CPUs / ``env.threads``). Closing the generator stops the workers.
    """
    ray = _ray()
    res = ray.cluster_resources()
    if env.device_type == "cuda":
        capacity, opts = int(res.get("GPU", 0)), dict(num_gpus=1, num_cpus=1)
        if not capacity:
            raise ClusterError(f"this store's numbers are CUDA numbers ({env.describe()}) and the Ray cluster has "
                               "no GPU: join GPU machines, or use a store computed on the CPU")
    else:
        capacity, opts = max(1, int(res.get("CPU", 1)) // env.threads), dict(num_cpus=env.threads)
    n = max(1, min(capacity, workers or capacity, len(todo)))
    remote = ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=0, **opts)(Worker)
    actors = [remote.remote(cfg, env.threads, env.device_type, dict(TEST_HOOKS)) for _ in range(n)]
    if progress:
        each = "one GPU" if "num_gpus" in opts else f"{env.threads} CPU(s)"
        _say(f"{n} Ray worker(s), {each} each, for {len(todo)} chunk(s); each loads the model, then takes chunks")
    return _dispatch(ray, actors, store, images, transform, todo, env)


def _say(message: str) -> None:
    print(f"apem: {message}", file=sys.stderr, flush=True)


def _dispatch(ray, actors, store, images, transform, todo: list[Chunk], env):
    from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

    lost = (RayActorError, ActorUnavailableError)
    code = code_digest()
    hellos = {a.hello.remote(): a for a in actors}  # a worker takes chunks once its environment is checked
    names: dict = {}  # actor -> name, for the accepted ones (taking chunks now)
    labels: dict = {}  # actor -> its last name, also while Ray restarts it
    load: Counter = Counter()
    inflight: dict = {}  # ObjectRef -> (actor, chunk)
    queue, attempts, failed, refused = deque(todo), Counter(), {}, []

    def fail(ch: Chunk, why: str) -> None:
        failed[ch.index] = f"{ch.name(store)}: {why}"
        _say(f"{ch.name(store)} failed {attempts[ch.index]} time(s), given up: {why}; the other chunks go on")

    def retry_or_fail(ch: Chunk, why: str) -> None:
        attempts[ch.index] += 1
        if attempts[ch.index] >= MAX_ATTEMPTS:
            fail(ch, why)
        else:
            queue.appendleft(ch)  # first in line, for the next free worker

    try:
        while queue or inflight:
            for a in sorted(names, key=lambda a: load[a]):
                while queue and load[a] < IN_FLIGHT:
                    ch = queue.popleft()
                    try:
                        x = decode(images, transform, ch)
                    except Exception as e:  # an image that cannot be read: no worker can do better
                        attempts[ch.index] += 1
                        fail(ch, _cause(e))
                        continue
                    inflight[a.compute.remote(ch, x)] = (a, ch)
                    load[a] += 1
            if not inflight and not hellos:
                if queue:
                    why = "; ".join(refused) or "every worker died"
                    raise ClusterError(f"no worker left to compute {len(queue)} chunk(s): {why}")
                break
            ready, _ = ray.wait(list(inflight) + list(hellos), num_returns=1)
            ref = ready[0]
            if ref in hellos:
                a = hellos.pop(ref)
                try:
                    info = ray.get(ref)
                except lost:
                    continue  # died before it could start, after its restarts: dropped
                except RayTaskError as e:
                    refused.append(f"a worker refused: it cannot say where it runs ({_cause(e)})")
                    _say(refused[-1])
                    ray.kill(a)
                    continue
                why = _refusal(info, env, code)
                if why is None:
                    names[a] = labels[a] = _worker_name(info)
                else:
                    refused.append(f"worker {_worker_name(info)} refused: {why}")
                    _say(refused[-1])
                    ray.kill(a)
                continue
            a, ch = inflight.pop(ref)
            load[a] -= 1
            try:
                batches, seconds = ray.get(ref)
            except lost as e:
                names.pop(a, None)
                name = labels.get(a, "a worker")
                if a not in hellos.values():  # back once Ray has restarted it, its environment checked again
                    hellos[a.hello.remote()] = a
                retry_or_fail(ch, f"its worker {name} died ({type(e).__name__})")
                if attempts[ch.index] < MAX_ATTEMPTS:
                    _say(f"worker {name} died; {ch.name()} goes to another worker")
                continue
            except RayTaskError as e:
                retry_or_fail(ch, f"{_cause(e)} (on {labels.get(a, 'a worker')})")
                continue
            yield Done(ch, batches, worker=labels.get(a, "a worker"), seconds=seconds)
        if failed:
            listed = " | ".join(failed[c] for c in sorted(failed))
            raise ChunkFailure(f"{len(failed)} chunk(s) failed and were given up (a worker's error after {MAX_ATTEMPTS} "
                               f"attempts, an unreadable image at once); the other chunks are stored, and running "
                               f"again retries only these: {listed}")
    finally:
        for a in actors:
            with contextlib.suppress(Exception):
                ray.kill(a, no_restart=True)
