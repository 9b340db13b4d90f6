"""Where a run's time goes: named steps timed inside the runner, off unless asked for.

The runner wraps each step of its pipeline (image decoding, classification, the
loss gradient, each method, the stage maps, the searches on the maps and on the
shuffles, the filter) in :func:`step`. Nothing is recorded until a caller opens
a :class:`Recorder`; the benchmark ``benchmarks/bench_pipeline.py`` does, so it
measures the runner's own code, not a copy of it. Steps nest: a step's time is
its own, without the steps opened inside it, unless it absorbs them (the filter's
searches count as "filter", not as "search: maps").

Why not ``torch.profiler`` or ``cProfile``: they attribute time to operators or
Python functions; the breakdown wanted here is by the pipeline's stages, which a
dozen named timers give at no cost when off.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

_ACTIVE: "Recorder | None" = None


class Recorder:
    """Seconds and calls per step name while open (``with Recorder() as rec:``)."""

    def __init__(self, sync=None):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.items: dict[str, int] = defaultdict(int)
        self.forwards: dict[str, int] = defaultdict(int)  # images through the model, per step (count_forwards)
        self._stack: list[list] = []  # [name, start, child seconds, absorbs]
        self._sync = sync  # e.g. torch.cuda.synchronize: step times include the device's queued work

    def __enter__(self):
        global _ACTIVE
        self._prev, _ACTIVE = _ACTIVE, self
        return self

    def __exit__(self, *exc):
        global _ACTIVE
        _ACTIVE = self._prev
        return False

    def _absorbing(self) -> bool:
        return bool(self._stack) and self._stack[-1][3]

    def _open(self, name: str, absorb: bool):
        if self._sync is not None:
            self._sync()
        self._stack.append([name, time.perf_counter(), 0.0, absorb])

    def _close(self, items: int):
        if self._sync is not None:
            self._sync()
        name, start, child, _ = self._stack.pop()
        total = time.perf_counter() - start
        self.seconds[name] += total - child
        self.calls[name] += 1
        self.items[name] += items
        if self._stack:
            self._stack[-1][2] += total

    def add_forwards(self, n: int) -> None:
        self.forwards[self._stack[-1][0] if self._stack else "(outside any step)"] += int(n)

    def total(self) -> float:
        return sum(self.seconds.values())


@contextmanager
def step(name: str, items: int = 0, absorb: bool = False):
    """Time the enclosed code as ``name`` (``items``: images it handled) when a Recorder is open.

    ``absorb``: the steps opened inside count as this one (the filter's own searches
    are the filter's cost, not the runner's "search: maps").
    """
    handle = _Handle(items)
    rec = _ACTIVE
    if rec is None or rec._absorbing():
        yield handle
        return
    rec._open(name, absorb)
    try:
        yield handle
    finally:
        rec._close(handle.items)


class _Handle:
    """What ``with step(...) as h`` gives: set ``h.items`` when the count is known only inside."""

    __slots__ = ("items",)

    def __init__(self, items: int):
        self.items = items


def count_forwards(model) -> None:
    """Count the images ``model`` forwards, per open step, into the open Recorder (a forward hook; for benchmarks)."""

    def hook(module, args, output):
        rec = _ACTIVE
        if rec is not None and args and hasattr(args[0], "shape"):
            rec.add_forwards(args[0].shape[0])

    model.register_forward_hook(hook)
