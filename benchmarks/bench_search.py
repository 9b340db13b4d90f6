"""Benchmark the epsilon searches on EfficientNet-Lite0 and the sample images.

Usage::

    python benchmarks/bench_search.py [--images 16] [--batch-sizes 4,8] [--horizon 64]

Maps: the thesis's gradient visualisation stages (default stage 2: |grad|
clamped at its 99th percentile, summed over channels, min-max scaled,
quantised to 256 levels), computed here; the same maps for every mode.
``--stages 1,2,3`` gives three maps per image, the thesis's workload, over
which bisect's per-image margin pass is shared. The loss gradient (needed by
every mode for sign(grad)) is computed once outside the timings, with the
clean logits and the target that come with it (``--clean-pass``: ``bisect``
runs its own clean forward per image inside its timing; ``--slope margin``:
and a backward pass for the exact margin gradient).

Prints a markdown table per mode: perturbed images forwarded per (image, map)
pair (eps-minus and eps-plus together), pairs per second, speed-up over the
thesis's own procedure run as the thesis ran it (batch 1, one item at a time),
agreement of eps-minus / eps-plus with ``linear`` (the exact first flip), and
the non-monotone rate (the prediction flips back within ``--horizon`` steps
after ``linear``'s first flip). The CPU is shared with other workers:
timings are indicative.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from apem import metric  # noqa: E402
from apem.data import load_image_set, load_tensors  # noqa: E402
from apem.grad import loss_gradient  # noqa: E402
from apem.models import load_model  # noqa: E402


def _minmax_256(s: torch.Tensor) -> torch.Tensor:
    lo, hi = s.amin((1, 2, 3), keepdim=True), s.amax((1, 2, 3), keepdim=True)
    return torch.round((s - lo) / (hi - lo).clamp_min(1e-12) * 255) / 255


def stage_maps(grad: torch.Tensor, x: torch.Tensor, stage: int) -> torch.Tensor:
    """The thesis's visualisation stages of the gradient, quantised to 256 levels (as its 8-bit PNGs).

    |g| clamped at its 99th percentile, then 1: min-max scaled (3 channels); 2: summed over channels,
    min-max scaled; 3: times the image, summed over channels, min-max scaled.
    """
    a = grad.abs()
    p99 = torch.quantile(a.flatten(1), 0.99, dim=1).view(-1, 1, 1, 1)
    a = torch.minimum(a, p99)
    if stage == 1:
        return _minmax_256(a)
    if stage == 2:
        return _minmax_256(a.sum(1, keepdim=True))
    return _minmax_256((a * x).sum(1, keepdim=True))


def load_images(n: int, model, transform):
    images = load_image_set()
    images = images.subset(range(0, len(images), max(1, len(images) // (3 * n))))
    _, x, y = load_tensors(images, transform)
    with torch.inference_mode():
        pred = torch.cat([model(x[i : i + 16]).argmax(1) for i in range(0, len(x), 16)])
    ok = (pred == y).nonzero().squeeze(1)[:n]
    return x[ok], y[ok]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=16, help="correctly classified sample images")
    ap.add_argument("--stages", default="2", help="gradient visualisation stages giving the maps (1,2,3)")
    ap.add_argument("--batch-sizes", default="4,8", help="bisect/thesis batch sizes to time")
    ap.add_argument("--timed-maps", type=int, default=48, help="maps in the interleaved timings")
    ap.add_argument("--chunk", type=int, default=4, help="maps per timed chunk")
    ap.add_argument("--linear-batch", type=int, default=4, help="batch size of the linear reference")
    ap.add_argument("--block", type=int, default=32, help="linear: steps per item per pass")
    ap.add_argument("--horizon", type=int, default=64, help="non-monotone check: steps scanned past the first flip")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: leave the default; on a CPU shared with other jobs use 1: "
                         "oversubscribed OpenMP threads can slow the forward pass down 100x)")
    ap.add_argument("--linear-cache", default="", help="file keeping the slow linear reference between runs")
    ap.add_argument("--slope", default="loss", choices=metric.SLOPES, help="bisect's slope source")
    ap.add_argument("--clean-pass", action="store_true",
                    help="bisect runs its own clean forward per image instead of reusing the loss-gradient logits")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    lm = load_model("efficientnet_lite0", device="cpu")
    model = lm.model
    x, y = load_images(args.images, model, lm.transform)
    grad, logits, target = loss_gradient(model, x)
    # what every mode gets for free from that one loss-gradient pass: sign(grad), the target, and
    # (bisect) the clean logits; --clean-pass makes bisect run its own clean forward instead
    shared = None if args.clean_pass else metric.MarginInfo.from_logits(logits, target, loss_grad=grad)
    stages = [int(v) for v in args.stages.split(",")]
    # one map per (image, stage), ordered image by image; maps of a stage are 1 or 3 channels: store 3
    per = [stage_maps(grad, x, st).expand(-1, 3, -1, -1) for st in stages]
    maps = torch.stack(per, 1).reshape(-1, *per[0].shape[1:]).contiguous()
    img = torch.arange(len(x)).repeat_interleave(len(stages))
    M = len(maps)
    ii = torch.arange(M)
    print(f"# bench_search: EfficientNet-Lite0, {len(x)} correctly classified sample images x gradient "
          f"stage(s) {args.stages} = {M} maps, {torch.get_num_threads()} threads, bound {metric.THESIS_BOUND}")

    def run(mode, bs, idx=None, **kw):
        sel = ii if idx is None else idx
        info = shared if (mode == "bisect" and args.slope == "loss") else None
        return metric.evaluate_maps(model, x, maps[sel], target, image_index=img[sel], grad=grad, mode=mode,
                                    batch_size=bs, slope=args.slope, margin_info=info, **kw)

    run("bisect", 4, ii[:1])  # warm-up (oneDNN primitives, allocator)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    # Timings, interleaved so that the shared CPU's load hits every contender alike: per chunk of
    # `chunk` images, the thesis's own procedure (batch 1, one item after the other), then each
    # batched mode on the whole chunk.
    chunk = max(1, args.chunk)
    clock = {("baseline", 1): [0.0, 0]}
    for bs in sizes:
        for mode in ("bisect", "thesis"):
            clock[(mode, bs)] = [0.0, 0]
    base_out = []
    for s0 in range(0, min(M, args.timed_maps), chunk):
        sel = ii[s0 : s0 + chunk]
        for i in sel.tolist():
            r, t = timed(lambda: run("thesis", 1, ii[i : i + 1]))
            base_out.append(r)
            clock[("baseline", 1)][0] += t
            clock[("baseline", 1)][1] += 1
        for bs in sizes:
            for mode in ("bisect", "thesis"):
                _, t = timed(lambda: run(mode, bs, sel))
                clock[(mode, bs)][0] += t
                clock[(mode, bs)][1] += len(sel)
    base_rate = clock[("baseline", 1)][1] / clock[("baseline", 1)][0]
    base = {k: torch.cat([o[k] for o in base_out]) for k in ("eps_minus", "eps_plus", "n_forward")}
    base_idx = torch.arange(0, min(M, args.timed_maps))
    # full runs for the counts and the agreement
    results = {}
    for bs in sizes:
        for mode in ("bisect", "thesis"):
            results[(mode, bs)] = run(mode, bs)
    key = dict(maps=maps.sum().item(), M=M, block=args.block, grad=grad.abs().sum().item())
    cached = torch.load(args.linear_cache) if args.linear_cache and os.path.exists(args.linear_cache) else None
    if cached is not None and cached["key"] == key:
        lin, t_lin = cached["lin"], cached["t"]
        print(f"(linear reference read from {args.linear_cache}; its timing is from the run that wrote it)")
    else:
        lin, t_lin = timed(lambda: run("linear", args.linear_batch, block=args.block))
        if args.linear_cache:
            torch.save(dict(key=key, lin=lin, t=t_lin), args.linear_cache)

    # non-monotone rate: does the prediction flip back within the horizon after linear's first flip?
    from apem.metric import directions, monotonicity_check

    d_m, _ = directions(maps, grad, image_index=img)
    d_p, _ = directions(1 - maps, grad, image_index=img)
    mono_m = monotonicity_check(model, x, d_m, lin["eps_minus"], target, image_index=img, horizon=args.horizon,
                                batch_size=args.linear_batch)
    mono_p = monotonicity_check(model, x, d_p, lin["eps_plus"], target, image_index=img, horizon=args.horizon,
                                batch_size=args.linear_batch)
    nm_m = mono_m["non_monotone"].float().mean().item()
    nm_p = mono_p["non_monotone"].float().mean().item()

    def agree(r, k, idx=None):
        ref = lin[k] if idx is None else lin[k][idx]
        return (r[k] == ref).float().mean().item()

    print()
    print("| mode | fwd per pair | pairs/s | speed-up vs thesis batch 1 | eps- = linear | eps+ = linear |")
    print("|---|---:|---:|---:|---:|---:|")
    fpp = base["n_forward"].double().mean().item()
    print(f"| thesis procedure, batch 1, one item at a time (baseline) | {fpp:.2f} | {base_rate:.2f} | 1.0x "
          f"| {agree(base, 'eps_minus', base_idx):.3f} | {agree(base, 'eps_plus', base_idx):.3f} |")
    for (mode, bs), r in results.items():
        t, n = clock[(mode, bs)]
        rate = n / t
        fpp = r["n_forward"].double().mean().item()
        print(f"| {mode}, batch {bs} | {fpp:.2f} | {rate:.2f} | {rate / base_rate:.1f}x "
              f"| {agree(r, 'eps_minus'):.3f} | {agree(r, 'eps_plus'):.3f} |")
    fpp = lin["n_forward"].double().mean().item()
    print(f"| linear (reference), block {args.block}, batch {args.linear_batch} | {fpp:.2f} | {M / t_lin:.2f} "
          f"| {M / t_lin / base_rate:.1f}x | 1.000 | 1.000 |")
    print()
    print(f"non-monotone (flips back within {args.horizon} steps after the first flip): "
          f"eps-minus {nm_m:.3f}, eps-plus {nm_p:.3f} of {M} maps")
    cm, cp = lin["censored_minus"].float().mean().item(), lin["censored_plus"].float().mean().item()
    print(f"censored (no flip below {metric.THESIS_BOUND}): eps-minus {cm:.3f}, eps-plus {cp:.3f}")
    for (mode, bs), r in results.items():
        if mode == "bisect":
            print(f"bisect batch {bs} (slope '{args.slope}'): + {int(r['n_image_passes'])} clean forward and "
                  f"{int(r['n_image_backward'])} backward passes for the {M} maps (per image, shared by its maps; "
                  f"included in the timings; the loss gradient every mode needs is computed outside them)")
    print("median eps-minus / eps-plus (linear):", int(lin["eps_minus"].median()), int(lin["eps_plus"].median()))
    for (mode, bs), r in results.items():
        for k in ("eps_minus", "eps_plus"):
            bad = (r[k] != lin[k]).nonzero().squeeze(1).tolist()
            if bad:
                print(f"{mode} batch {bs} {k} differs from linear at maps {bad}: "
                      f"{r[k][bad].tolist()} vs {lin[k][bad].tolist()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
