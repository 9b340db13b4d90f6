"""The runner's chunk loop: who computes the missing cells, and how they are stored.

One path for the serial runner and the distributed one (:mod:`apem.runner.distributed`):
:func:`apem.runner.plan.plan` lists the chunks of images whose cells are missing, a
*source* computes them and yields :class:`Done` in any order (:func:`serial` here, in
chunk order; the Ray dispatcher as workers finish), and :func:`store_all` writes each
one's cells as it arrives, advances the progress bar and prints each worker's
throughput at the end. Only this process writes the store.

A cell's numbers depend on its image, its key and the numeric environment, never on
its chunk, which process computed it or when: that is what makes a distributed run
equal to the serial one, and a reused cell equal to a fresh one, bit for bit.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import pandas as pd

from apem.profile import step


class ChunkFailure(RuntimeError):
    """Chunks that failed on every attempt; the other chunks are stored, the table is not written."""


@dataclass
class Chunk:
    """One chunk of the images to compute: its index, its rows of ``images.parquet``, its work."""

    index: int
    part: pd.DataFrame  # index reset
    work: object = None  # apem.runner.compute.Work: the cells this chunk computes

    @property
    def size(self) -> int:
        return len(self.part)

    def name(self, store=None) -> str:
        ids = list(self.part.image_id)
        shown = ", ".join(ids[:6]) + (f", ... ({len(ids)} images)" if len(ids) > 6 else "")
        return f"chunk {self.index}, images {shown}"


@dataclass
class Done:
    """A computed chunk as a source yields it: its new cells (:class:`apem.runner.compute.CellBatch` list)."""

    chunk: Chunk
    batches: list
    worker: str = "this process"
    seconds: float = 0.0  # the worker's time on the chunk (decoding excluded when another process decoded)


def decode(images, transform, chunk: Chunk):
    """The chunk's images as one tensor; an unreadable image is a :class:`apem.data.DataError` naming it."""
    from apem.data import DataError, load_tensors

    sub = images.subset(chunk.part.set_position.to_numpy())
    with step("decode images", chunk.size):
        try:
            idx, x, _ = load_tensors(sub, transform)
        except DataError:
            idx, x = [], None
    if len(idx) != chunk.size:
        read = set(idx)
        bad = [iid for j, iid in enumerate(chunk.part.image_id) if j not in read]
        raise DataError(f"{chunk.name()}: cannot read image(s) {', '.join(map(str, bad))}")
    return x


def serial(cfg, lm, images, todo: Iterable[Chunk]) -> Iterator[Done]:
    """Compute the chunks here, one after the other, in chunk order (an error stops the run)."""
    from apem.runner.compute import compute_chunk

    for ch in todo:
        x = decode(images, lm.transform, ch)
        t0 = time.perf_counter()
        batches = compute_chunk(cfg, lm, x, ch.part, ch.work)
        yield Done(ch, batches, seconds=time.perf_counter() - t0)


@dataclass
class Throughput:
    """Chunks, images and busy seconds per worker."""

    per_worker: dict = field(default_factory=dict)  # name -> [chunks, images, seconds]

    def add(self, d: Done) -> None:
        w = self.per_worker.setdefault(d.worker, [0, 0, 0.0])
        w[0] += 1
        w[1] += d.chunk.size
        w[2] += d.seconds

    def lines(self) -> list[str]:
        out = []
        for name, (chunks, n, sec) in sorted(self.per_worker.items()):
            rate = f"{n / sec:.3g} images/s" if sec > 0 else "-"
            out.append(f"  {name}: {chunks} chunk(s), {n} image(s), {rate} ({sec:.1f} s computing)")
        return out


def store_all(store, write, n_selected: int, todo: list[Chunk], source: Iterator[Done], *, desc: str,
              progress: bool = True, fail_after_chunks: int | None = None, interrupt=RuntimeError) -> Throughput:
    """Write (``write(done)``) each chunk ``source`` yields as it arrives; a progress bar of chunks, images/s and ETA.

    ``store.computed`` gets each written chunk's index, ``store.chunk_workers`` who computed it,
    ``store.chunk_arrivals`` (seconds since the call, images) per chunk, ``store.throughput`` the figures.
    ``fail_after_chunks`` (tests) raises ``interrupt`` after that many chunks; closing ``source``
    then stops its workers.
    """
    from tqdm import tqdm

    done_before = n_selected - sum(ch.size for ch in todo)
    stats = Throughput()
    if not hasattr(store, "chunk_workers"):
        store.chunk_workers = {}
    store.chunk_arrivals, store.throughput = [], stats
    t0 = time.perf_counter()
    # `initial`, not an update: the resumed images would count in the rate and shorten the ETA
    with tqdm(total=n_selected, initial=done_before, desc=desc, unit="img", disable=not progress) as bar:
        bar.set_postfix_str(f"chunks 0/{len(todo)}")
        try:
            for d in source:
                write(d)
                store.computed.append(d.chunk.index)
                store.chunk_workers[d.chunk.index] = d.worker
                store.chunk_arrivals.append((time.perf_counter() - t0, d.chunk.size))
                stats.add(d)
                bar.update(d.chunk.size)
                bar.set_postfix_str(f"chunks {len(store.computed)}/{len(todo)}")
                if fail_after_chunks is not None and len(store.computed) >= fail_after_chunks:
                    raise interrupt(f"stopped after {len(store.computed)} chunk(s) on request")
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # a generator's `finally` stops its workers, also when the loop above stopped early
    if progress and stats.per_worker:
        wall = time.perf_counter() - t0
        n = sum(w[1] for w in stats.per_worker.values())
        print(f"apem: {len(store.computed)} chunk(s), {n} image(s) in {wall:.1f} s "
              f"({n / wall if wall else 0:.3g} images/s in all); per worker:", file=sys.stderr)
        print("\n".join(stats.lines()), file=sys.stderr, flush=True)
    return stats
