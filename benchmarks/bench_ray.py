"""The runner on Ray: throughput of 1 and 2 local workers here, and the `paper` preset projected to N GPUs.

Measured (on this machine, now): a small configuration (the smoke parameters on a few
images, chunks of one image, ``--threads`` per worker) is run serially in this process,
then on a local Ray with each worker count of ``--workers`` (fresh stores, the pool's
predictions cached first so that only the chunks are timed). For each: images/s over
the chunk phase including the workers' start-up (model load), images/s from the first
stored chunk on (the steady state), and the workers' own images/s while computing. Each
Ray table is checked against the serial one, bit for bit.

Projected (arithmetic, nothing run on a GPU): the `paper` preset (params/paper.yaml:
VGG-16, 5,000 + 5,000 images in chunks of 32) on N GPU workers, from a per-image cost
that is either ``--seconds-per-image`` (what one GPU took per image, e.g. measured with
``apem run params/paper.yaml -p n_correct 16 -p n_misclassified 16`` on one GPU) or, by
default, apem.cost's forward-equivalent model (FE per image, apem/cost.py) times
``--fe-seconds``, the seconds of one VGG-16 forward pass of one image on the GPU
(default: 1/1,275 s, fp32 with TF32 off on one H100, benchmarks/gpu-h100.md). The pool's
classification, the decoding of every chunk and the filter run on the driver; the chunks
are spread over the workers a chunk at a time (the last round may be partly idle).

    python benchmarks/bench_ray.py                      # measure here, project with the cost model
    python benchmarks/bench_ray.py --seconds-per-image 10.26 --gpus 1,2,4,8,16

Time it on a quiet machine: on 2 cores anything else running changes the figures.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from apem.config import load_config  # noqa: E402

H100_VGG16_FORWARD = 1 / 1275  # s per image, fp32, TF32 off, batch 256 (benchmarks/gpu-h100.md, section 4)
PAPER_POOL = 50_000  # the ImageNet validation set: the `paper` preset's pool (pool: null, every image)


def measure(args) -> dict:
    """Serial, then each worker count on a local Ray: images/s of the chunk phase (see the module doc)."""
    import numpy as np
    import pandas as pd
    import ray

    from apem.runner import distributed
    from apem.run import Results, run

    cfg = load_config(args.params, pool=args.pool, n_correct=args.correct, n_misclassified=args.misclassified,
                      chunk_size=args.chunk_size, filter_images=0)
    root = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    out = {}

    def timed(name, **kw):
        # each run on a root of its own (the pool's predictions copied): a shared root would reuse the cells
        where = root / name
        if (root / "bench-serial" / "_predictions").exists():
            shutil.copytree(root / "bench-serial" / "_predictions", where / "_predictions")
        t0 = time.perf_counter()
        store = run(cfg.replace(name=name), progress=False, root=where, threads=args.threads, **kw)
        wall = time.perf_counter() - t0
        arrivals = store.chunk_arrivals  # (seconds since the chunk phase began, images), in arrival order
        n = sum(k for _, k in arrivals)
        phase = arrivals[-1][0]
        steady = (n - arrivals[0][1]) / (phase - arrivals[0][0]) if len(arrivals) > 1 else float("nan")
        own = [k / s for _, k, s in store.throughput.per_worker.values() if s > 0]  # chunks, images, busy seconds
        return store, dict(images=n, wall=wall, phase=phase, first=arrivals[0][0], rate=n / phase, steady=steady,
                           own=sum(own) / len(own), workers=len(own))

    print(f"configuration: {args.params} on {args.correct} + {args.misclassified} images, chunks of "
          f"{args.chunk_size}, {args.threads} thread(s) per worker; {os.cpu_count()} CPU(s) here", flush=True)
    serial, out["serial"] = timed("bench-serial")  # also classifies (and caches) the pool: not in the Ray figures
    ref = Results(serial.cfg, serial).table
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, object_store_memory=distributed.LOCAL_OBJECT_STORE,
             logging_level=logging.WARNING)
    try:
        for w in args.workers:
            store, out[f"{w} worker(s)"] = timed(f"bench-w{w}", ray="local", workers=w)
            same = Results(store.cfg, store).table
            pd.testing.assert_frame_equal(same, ref, check_exact=True)
            got, want = Results(store.cfg, store), Results(serial.cfg, serial)
            for m in cfg.methods:
                for st in cfg.stages:
                    assert np.array_equal(got.maps(got.images.image_id, m, st), want.maps(want.images.image_id, m, st))
    finally:
        ray.shutdown()
    print("\n| run | workers that computed | images | chunk phase, s | first chunk after, s | images/s (with "
          "start-up) | images/s (from the first chunk) | images/s per worker, computing |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in out.items():
        print(f"| {name} | {r['workers']} | {r['images']} | {r['phase']:.1f} | {r['first']:.1f} | {r['rate']:.3f} | "
              f"{r['steady']:.3f} | {r['own']:.3f} |")
    print("(every Ray table and map equals the serial run's, bit for bit)")
    return out


def project(args, measured: dict | None) -> None:
    from apem import cost
    from apem.cost import Calibration, fmt_duration

    paper = load_config("paper")
    n = paper.n_correct + paper.n_misclassified
    cal = Calibration(fe_seconds=args.fe_seconds, decode_seconds=args.decode_seconds, batch=256, model="vgg16",
                      device="cuda (assumed)")
    fe = sum(cost.fe_per_image(paper).values())
    if args.seconds_per_image:
        per_image, source = args.seconds_per_image, "given: --seconds-per-image"
    else:
        per_image = fe * args.fe_seconds
        source = f"assumed: apem.cost's {fe:,.0f} FE per image x {args.fe_seconds * 1000:.3f} ms per FE (--fe-seconds)"
    est = cost.estimate(paper, 0, calibration=cal, classify=PAPER_POOL, filter_images=paper.filter_images)
    driver = est.seconds  # the pool's classification, its decoding and the filter: on the driver, once
    chunk_s = paper.chunk_size * per_image
    n_chunks = math.ceil(n / paper.chunk_size)
    print(f"\n`paper` preset: {n:,} images in {n_chunks} chunks of {paper.chunk_size}; per image {per_image:.2f} s on "
          f"one GPU ({source}); on the driver, once: {fmt_duration(driver)} (pool of {PAPER_POOL:,}, filter on "
          f"{paper.filter_images}: apem.cost at the same FE seconds); decoding {args.decode_seconds * 1000:.1f} ms per"
          " image on the driver (--decode-seconds)")
    print("\n| GPUs | chunk rounds | chunks | driver decoding, share of one core | projected time |")
    print("|---:|---:|---:|---:|---:|")
    for g in args.gpus:
        rounds = math.ceil(n_chunks / g)
        decode_share = g * args.decode_seconds / per_image  # images/s the workers take x seconds to decode one
        total = driver + rounds * chunk_s
        print(f"| {g} | {rounds} | {fmt_duration(rounds * chunk_s)} | {100 * decode_share:.1f}% | {fmt_duration(total)} |")
    if measured and "1 worker(s)" in measured and "2 worker(s)" in measured:
        eff = measured["2 worker(s)"]["steady"] / (2 * measured["1 worker(s)"]["steady"])
        print(f"\nmeasured here (CPU workers sharing {os.cpu_count()} cores with the driver): 2 workers ran at {eff:.0%} "
              "of twice 1 worker's steady rate; the projection assumes GPU workers scale by whole chunks (each "
              "worker has its own GPU, and the driver only decodes and stores)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--params", default="smoke")
    p.add_argument("--pool", type=int, default=48)
    p.add_argument("--correct", type=int, default=4)
    p.add_argument("--misclassified", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (and the serial run)")
    p.add_argument("--workers", default="1,2", help="local Ray worker counts to time")
    p.add_argument("--no-measure", action="store_true", help="only the projection")
    p.add_argument("--seconds-per-image", type=float, default=None,
                   help="the `paper` preset's seconds per image on one GPU (measured there); default: the cost model")
    p.add_argument("--fe-seconds", type=float, default=H100_VGG16_FORWARD,
                   help="seconds of one VGG-16 forward of one image on the GPU (default: one H100's, fp32, TF32 off)")
    p.add_argument("--decode-seconds", type=float, default=0.0021,
                   help="seconds to decode one ImageNet JPEG on the driver (default: 471 images/s, gpu-h100.md)")
    p.add_argument("--gpus", default="1,2,4,8")
    args = p.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",")]
    args.gpus = [int(g) for g in args.gpus.split(",")]
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    measured = None if args.no_measure else measure(args)
    project(args, measured)
    return 0


if __name__ == "__main__":
    sys.exit(main())
