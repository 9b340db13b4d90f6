"""Benchmark the epsilon searches on EfficientNet-Lite0 and the sample images.

Usage::

    python benchmarks/bench_search.py [--images 16] [--batch-sizes 2,4] [--rounds 3] [--horizon 64]

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
thesis's own procedure run as the thesis ran it (batch 1, one item at a time,
PyTorch's default memory layout) and over the same procedure on our
channels_last model (faster at batch 1 too: the stricter comparison),
agreement of eps-minus / eps-plus with ``linear`` (the exact first flip), and
the non-monotone rate (the prediction flips back within ``--horizon`` steps
after ``linear``'s first flip).

Timing: after ``--warmup`` seconds of forward passes (the first seconds run up
to 2x slower on a 2-core CPU), ``--rounds`` rounds each time the baseline and
every batched mode on the same maps; medians over the rounds are printed, so a
change of the machine's speed hits every contender alike. Batched modes get
all maps in one call (``--maps-per-call``), as the runner gives them all maps
of a chunk of images. On a CPU shared with other jobs use ``--threads 1``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from apem import metric  # noqa: E402
from apem.data import load_image_set, load_tensors  # noqa: E402
from apem.metric.clean import loss_gradient  # noqa: E402
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


def merge(outs: list[dict]) -> dict:
    """Per-map results of several calls, concatenated (per-call counters summed)."""
    return {k: torch.cat([o[k] for o in outs]) if outs[0][k].dim() else sum(o[k] for o in outs) for k in outs[0]}


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> int:
    from apem.alloc import tune_malloc

    tune_malloc()  # what the runner does: keep PyTorch's CPU buffers on the heap (apem.alloc)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=16, help="correctly classified sample images")
    ap.add_argument("--stages", default="2", help="gradient visualisation stages giving the maps (1,2,3)")
    ap.add_argument("--batch-sizes", default="2,4", help="bisect/thesis batch sizes to time")
    ap.add_argument("--timed-maps", type=int, default=0, help="maps in the timings (0: all)")
    ap.add_argument("--maps-per-call", type=int, default=0,
                    help="maps per call of the batched modes (0: all timed maps at once, as the runner does)")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds (medians are reported)")
    ap.add_argument("--warmup", type=float, default=15.0, help="seconds of forward passes before timing")
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

    sizes = [int(b) for b in args.batch_sizes.split(",")]
    n_timed = min(M, args.timed_maps) if args.timed_maps > 0 else M
    per_call = args.maps_per_call if args.maps_per_call > 0 else n_timed
    # the baseline twice: as the thesis ran it (PyTorch's default memory layout) and on our model
    # (channels_last, faster at batch 1 too: the stricter comparison)
    thesis_model = load_model("efficientnet_lite0", device="cpu", channels_last=False).model
    baselines = {"contiguous": thesis_model, "channels_last": model}
    # Steady state first: on this CPU the first seconds of forward passes run up to 2x slower
    # (allocator, oneDNN primitives, page faults) than what follows; every batch size in play is warmed.
    warm_until = time.perf_counter() + args.warmup
    with torch.inference_mode():
        while time.perf_counter() < warm_until:
            for b in sorted({1, *sizes}):
                model(x[:1].expand(b, -1, -1, -1).contiguous(memory_format=torch.channels_last))
            thesis_model(x[:1].contiguous())

    def baseline_run(mdl, i):
        return metric.evaluate_maps(mdl, x, maps[i : i + 1], target, image_index=img[i : i + 1], grad=grad,
                                    mode="thesis", batch_size=1)

    # Timings in rounds, each round timing every contender on the same maps, so that a change of the
    # CPU's speed hits all alike; the figures are medians over the rounds. The baseline is the thesis's
    # own procedure: batch 1, one (image, map) item after the other. The batched modes get
    # `per_call` maps per call, the way the runner calls them (all maps of a chunk of images at once).
    contenders = [(mode, bs) for bs in sizes for mode in ("bisect", "thesis")]
    rates = {(b, 1): [] for b in baselines} | {c: [] for c in contenders}
    base_out, first = None, {}
    for _ in range(max(1, args.rounds)):
        for b, mdl in baselines.items():
            outs, t = timed(lambda: [baseline_run(mdl, i) for i in range(n_timed)])
            base_out = base_out or outs
            rates[(b, 1)].append(n_timed / t)
        for mode, bs in contenders:
            outs, t = timed(lambda: [run(mode, bs, ii[s0 : min(s0 + per_call, n_timed)])
                                     for s0 in range(0, n_timed, per_call)])
            first.setdefault((mode, bs), outs)
            rates[(mode, bs)].append(n_timed / t)
    med = {k: statistics.median(v) for k, v in rates.items()}
    base_rate, strict_rate = med[("contiguous", 1)], med[("channels_last", 1)]
    base = {k: torch.cat([o[k] for o in base_out]) for k in ("eps_minus", "eps_plus", "n_forward")}
    base_idx = torch.arange(0, n_timed)
    # counts and agreement on all M maps: the first timed round's answers when it covered them all
    results = {}
    for c in contenders:
        results[c] = merge(first[c]) if n_timed == M else run(*c)
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
    print(f"timing: median of {max(1, args.rounds)} rounds over {n_timed} maps, {per_call} maps per call of a "
          f"batched mode, after {args.warmup:g} s of warm-up")
    print("| mode | fwd per pair | pairs/s | images/s forwarded | speed-up vs the thesis's procedure "
          "| vs it on our channels_last model | eps- = linear | eps+ = linear |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    fpp = base["n_forward"].double().mean().item()

    def row(name, fpp, rate, a_m, a_p):
        print(f"| {name} | {fpp:.2f} | {rate:.2f} | {fpp * rate:.0f} | {rate / base_rate:.1f}x "
              f"| {rate / strict_rate:.1f}x | {a_m:.3f} | {a_p:.3f} |")

    for b, label in (("contiguous", "thesis procedure as it ran: batch 1, one item at a time, default layout "
                                    "(baseline)"),
                     ("channels_last", "the same on our channels_last model")):
        row(label, fpp, med[(b, 1)], agree(base, "eps_minus", base_idx), agree(base, "eps_plus", base_idx))
    for (mode, bs), r in results.items():
        row(f"{mode}, batch {bs}", r["n_forward"].double().mean().item(), med[(mode, bs)],
            agree(r, "eps_minus"), agree(r, "eps_plus"))
    row(f"linear (reference, timed once), block {args.block}, batch {args.linear_batch}",
        lin["n_forward"].double().mean().item(), M / t_lin, 1.0, 1.0)
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
