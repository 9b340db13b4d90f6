"""Throughput of every explanation method on EfficientNet-Lite0, and of the stage maps.

    python benchmarks/bench_methods.py [--batch 16] [--sg-images 4] [--sg-n 100] [--device cpu]

Real sample images (apem.data, $APEM_DATA or the shared sample set), the
offline default model. Prints a markdown table of images/second. SmoothGrad
(n forward+backward passes per image) is timed on ``--sg-images`` images.
Each method runs once untimed first (warm-up). On a shared CPU the numbers
are indicative only.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from apem.data import load_image_set, load_tensors
from apem.explain import METHODS, get_method
from apem.maps import stage_maps
from apem.models import load_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int = 1) -> float:
    """Best wall time of ``repeats`` runs, after one warm-up run."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def _once(method, model, x, device) -> float:
    _sync(device)
    t = time.perf_counter()
    method(model, x)
    _sync(device)
    return time.perf_counter() - t


def main(argv=None) -> None:
    from apem.alloc import tune_malloc

    tune_malloc()  # what the runner does: keep PyTorch's CPU buffers on the heap (apem.alloc)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--sg-images", type=int, default=4, help="images SmoothGrad is timed on")
    ap.add_argument("--sg-n", type=int, default=100)
    ap.add_argument("--sg-batch-size", type=int, default=32, help="SmoothGrad's chunk of noisy copies")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    args = ap.parse_args(argv)

    lm = load_model("efficientnet_lite0", device=args.device)
    dev = lm.device
    images = load_image_set().subset(range(args.batch))
    _, x, _ = load_tensors(images, lm.transform)
    x = x.to(dev)
    print(f"EfficientNet-Lite0 ({lm.weights.split('/')[-1]}), batch {len(x)} x {tuple(x.shape[1:])}, "
          f"device {dev}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")

    rows = []
    for name in args.methods:
        if name == "smoothgrad":
            xb = x[: args.sg_images]
            method = get_method(name, n=args.sg_n, batch_size=args.sg_batch_size)
            note = f"n={args.sg_n}, {len(xb)} images, chunks of {args.sg_batch_size}"
        else:
            xb = x
            method = get_method(name)
            note = ", ".join(f"{k}={v}" for k, v in method.params.items()) or "-"
        if name == "smoothgrad":  # a full warm-up would double its long run: warm up with n = 2
            get_method(name, n=2, batch_size=args.sg_batch_size)(lm, xb[:1])
            t = _once(method, lm, xb, dev)
        else:
            t = timed(lambda: method(lm, xb), dev, args.repeats)
        rows.append((name, note, len(xb), t, len(xb) / t))

    a = get_method("gradient")(lm, x)
    t_maps = timed(lambda: stage_maps(a, x), dev, max(3, args.repeats))
    rows.append(("stage maps 1+2+3", "p99 clamp, min-max, 8-bit quantise", len(x), t_maps, len(x) / t_maps))

    print()
    print("| method | parameters | images | seconds | images/s |")
    print("|---|---|---:|---:|---:|")
    for name, note, n, t, ips in rows:
        print(f"| {name} | {note} | {n} | {t:.2f} | {ips:.2f} |")


if __name__ == "__main__":
    main()
