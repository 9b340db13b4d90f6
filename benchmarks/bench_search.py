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

The reference: ``linear`` scans every step up to the first flip, so a censored
pair alone costs ``bound`` forwards. It runs on ``--linear-maps`` maps spread over
the set (default 12; 0: all) up to ``--linear-bound`` (default 1001): a pair it
resolves must be matched exactly, a pair whose first flip lies beyond its bound
only checked to be at or beyond it. It is cached (``--linear-cache``, default
``benchmarks/.cache/``), so a second run skips it. Each phase prints when it
starts and how long it took, with a progress bar on stderr for the long ones.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from apem import metric  # noqa: E402
from apem.data import load_image_set, load_tensors  # noqa: E402
from apem.maps import stage_map  # noqa: E402
from apem.metric.clean import loss_gradient  # noqa: E402
from apem.models import load_model  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache"


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


_START = time.perf_counter()


@contextmanager
def phase(what: str):
    """Say what starts and, when it ends, how long it took (stdout, flushed: a long phase is never silent)."""
    print(f"[{time.perf_counter() - _START:6.0f} s] {what} ...", flush=True)
    t0 = time.perf_counter()
    yield
    print(f"[{time.perf_counter() - _START:6.0f} s] {what}: {time.perf_counter() - t0:.1f} s", flush=True)


def linear_reference(run, maps, img, grad, sel, args):
    """``linear``'s exact first flips of the maps ``sel`` below ``--linear-bound``, from the cache when it has them."""
    key = hashlib.sha256(b"".join(t.contiguous().numpy().tobytes() for t in (maps[sel], img[sel], grad))
                         + f"{args.block}/{args.linear_bound}/{args.linear_batch}".encode()).hexdigest()[:16]
    cache = (None if args.linear_cache == "none" else
             Path(args.linear_cache) if args.linear_cache else CACHE / f"linear-{key}.pt")
    if cache is not None and cache.is_file():
        saved = torch.load(cache)
        if saved.get("key") == key:
            print(f"(linear reference read from {cache}; its timing is from the run that wrote it)", flush=True)
            return saved["lin"], saved["t"]
    with phase(f"linear reference on {len(sel)} maps, steps below {args.linear_bound}"):
        lin, t = timed(lambda: run("linear", args.linear_batch, sel, block=args.block, bound=args.linear_bound,
                                   progress=True))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(dict(key=key, lin=lin, t=t), cache)
    return lin, t


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
    ap.add_argument("--linear-cache", default=None,
                    help="file keeping the slow linear reference between runs (default: benchmarks/.cache/, keyed "
                         "by the maps and settings; 'none': no cache)")
    ap.add_argument("--linear-maps", type=int, default=12, help="maps the linear reference checks (0: all)")
    ap.add_argument("--linear-bound", type=int, default=1001,
                    help="the linear reference scans steps below this bound (pairs beyond it: only checked to be "
                         f"at or beyond it; {metric.THESIS_BOUND} is the thesis's)")
    ap.add_argument("--slope", default="loss", choices=metric.SLOPES, help="bisect's slope source")
    ap.add_argument("--clean-pass", action="store_true",
                    help="bisect runs its own clean forward per image instead of reusing the loss-gradient logits")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with phase(f"loading EfficientNet-Lite0 and {args.images} correctly classified sample images"):
        lm = load_model("efficientnet_lite0", device="cpu")
        model = lm.model
        x, y = load_images(args.images, model, lm.transform)
        grad, logits, target = loss_gradient(model, x)
    # what every mode gets for free from that one loss-gradient pass: sign(grad), the target, and
    # (bisect) the clean logits; --clean-pass makes bisect run its own clean forward instead
    shared = None if args.clean_pass else metric.MarginInfo.from_logits(logits, target, loss_grad=grad)
    stages = [int(v) for v in args.stages.split(",")]
    # one map per (image, stage), ordered image by image; maps of a stage are 1 or 3 channels: store 3
    per = [stage_map(grad, x, st).expand(-1, 3, -1, -1) for st in stages]  # the runner's maps (apem.maps)
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
    with phase(f"warm-up, {args.warmup:g} s of forward passes"), torch.inference_mode():
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
    for r in range(max(1, args.rounds)):
        for b, mdl in baselines.items():
            with phase(f"round {r + 1}/{max(1, args.rounds)}: the thesis's procedure, batch 1, {b} layout"):
                outs, t = timed(lambda: [baseline_run(mdl, i) for i in range(n_timed)])
            base_out = base_out or outs
            rates[(b, 1)].append(n_timed / t)
        for mode, bs in contenders:
            with phase(f"round {r + 1}/{max(1, args.rounds)}: {mode}, batch {bs}"):
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
    n_ref = M if args.linear_maps <= 0 else min(M, args.linear_maps)
    ref = torch.linspace(0, M - 1, n_ref).round().long().unique()  # maps spread over the set
    lin, t_lin = linear_reference(run, maps, img, grad, ref, args)
    cap = args.linear_bound

    # non-monotone rate: does the prediction flip back within the horizon after linear's first flip?
    from apem.metric import directions, monotonicity_check

    with phase(f"non-monotone check on the reference's {len(ref)} maps, {args.horizon} steps past each flip"):
        d_m, _ = directions(maps[ref], grad, image_index=img[ref])
        d_p, _ = directions(1 - maps[ref], grad, image_index=img[ref])
        mono_m = monotonicity_check(model, x, d_m, lin["eps_minus"], target, image_index=img[ref],
                                    horizon=args.horizon, batch_size=args.linear_batch)
        mono_p = monotonicity_check(model, x, d_p, lin["eps_plus"], target, image_index=img[ref],
                                    horizon=args.horizon, batch_size=args.linear_batch)
    resolved = {k: ~lin[f"censored_{k[4:]}"] for k in ("eps_minus", "eps_plus")}  # a flip below the cap
    nm_m = mono_m["non_monotone"][resolved["eps_minus"]].float().mean().item()
    nm_p = mono_p["non_monotone"][resolved["eps_plus"]].float().mean().item()

    def agree(r, k, idx=None):
        """Share of the reference's pairs the mode gets right (``r[k]`` answers maps ``idx``, default all): the
        exact first flip where the reference found one below its bound, a step at or beyond the bound elsewhere."""
        pos = {m: i for i, m in enumerate((torch.arange(len(r[k])) if idx is None else idx).tolist())}
        j = [i for i, m in enumerate(ref.tolist()) if m in pos]
        if not j:
            return float("nan")
        got = r[k][torch.tensor([pos[ref[i].item()] for i in j])]
        j = torch.tensor(j)
        return torch.where(resolved[k][j], got == lin[k][j], got >= cap).float().mean().item()

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
    row(f"linear (reference on {len(ref)} maps, steps below {cap}, timed once), block {args.block}, "
        f"batch {args.linear_batch}", lin["n_forward"].double().mean().item(), len(ref) / t_lin, 1.0, 1.0)
    print()
    n_beyond = int((~resolved["eps_minus"]).sum() + (~resolved["eps_plus"]).sum())
    print(f"the '= linear' columns: over the reference's {len(ref)} maps ({2 * len(ref)} pairs of a map and a side); "
          f"{n_beyond} of its pairs flip at or beyond {cap}, where a mode is only checked to answer at or beyond {cap}")
    print(f"non-monotone (flips back within {args.horizon} steps after the first flip): "
          f"eps-minus {nm_m:.3f}, eps-plus {nm_p:.3f} of the reference's pairs that flip below {cap}")
    for (mode, bs), r in results.items():
        if mode == "bisect":
            print(f"bisect batch {bs} (slope '{args.slope}'): + {int(r['n_image_passes'])} clean forward and "
                  f"{int(r['n_image_backward'])} backward passes for the {M} maps (per image, shared by its maps; "
                  f"included in the timings; the loss gradient every mode needs is computed outside them)")
    for (mode, bs), r in results.items():
        for k in ("eps_minus", "eps_plus"):
            got = r[k][ref]
            bad = torch.where(resolved[k], got != lin[k], got < cap).nonzero().squeeze(1).tolist()
            if bad:
                print(f"{mode} batch {bs} {k} differs from linear at maps {ref[bad].tolist()}: "
                      f"{got[bad].tolist()} vs {lin[k][bad].tolist()} (linear below {cap})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
