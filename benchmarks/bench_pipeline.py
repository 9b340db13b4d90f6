"""Where a configuration's time goes: the runner's pipeline timed step by step, per image.

Runs the real runner (``apem.run.run``) on a small, fresh store with
:class:`apem.profile.Recorder` open, so every number is the runner's own code:
image decoding, the pool's classification, the loss gradient, each explanation
method, the stage maps, the searches on the maps and on the shuffles, and the
filter. Then, optionally, the chapters' own studies (chapters 1, 2, 4, 10, 11,
12 compute beyond what the runner stores), each timed as the chapter calls it.

Each step is reported in seconds per image it handled, in forward-equivalents
(its seconds divided by the time of one clean forward pass of one image at the
search's batch size, measured first on the same images), and as a share. A
second table projects the whole preset: each step's per-image cost times the
number of images the preset gives it (the pool for classification, the selected
images for the searches, ``filter_images`` for the filter, the chapters' fixed
study sizes), which is where ``make book``'s time goes.

    python benchmarks/bench_pipeline.py --threads 2
    python benchmarks/bench_pipeline.py --correct 8 --misclassified 4 --chapters 1,2,4,10,11,12
    python benchmarks/bench_pipeline.py --compare     # every cut on and off, side by side in one run

Time it on a quiet machine: on 2 cores anything else running slows torch 10-100x.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from apem import profile  # noqa: E402
from apem.config import load_config  # noqa: E402

# the order of the report; anything else the runner records is appended
STEPS = ["decode images", "classify pool", "loss gradient", "method gradient", "method smoothgrad",
         "method lrp_epsilon", "stage maps", "search: maps", "search: shuffles", "filter"]
CHAPTER_STUDIES = {
    1: "chapter 1: searches compared",
    2: "chapter 2: LRP variants (Table 4.1)",
    4: "chapter 4: map encodings",
    10: "chapter 10: Quantus metrics",
    11: "chapter 11: randomisation cascade",
    12: "chapter 12: four more methods",
}


def forward_seconds(cfg, threads: int, n: int = 16, rounds: int = 3) -> tuple[float, int]:
    """Seconds of one clean forward pass of one image at the search's batch size (median of rounds)."""
    from apem.data import load_tensors
    from apem.metric import resolve_batch_size
    from apem.runner.selection import load_inputs

    from apem.alloc import tune_malloc

    tune_malloc()  # as the runner does
    torch.set_num_threads(threads)
    lm, images = load_inputs(cfg)
    _, x, _ = load_tensors(images.subset(range(min(n, len(images)))), lm.transform)
    x = x.to(lm.device)
    if lm.device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    b = resolve_batch_size(cfg.search_batch_size, lm.device)
    times = []
    with torch.inference_mode():
        for _ in range(2):  # warm-up: the first passes create the kernels' primitives
            for i in range(0, len(x), b):
                lm.model(x[i:i + b])
        for _ in range(rounds):
            t0 = time.perf_counter()
            for i in range(0, len(x), b):
                lm.model(x[i:i + b])
            times.append((time.perf_counter() - t0) / len(x))
    return sorted(times)[len(times) // 2], b


def _chapter_call(k: int, params: str, overrides: dict):
    """The chapter's own heavy call, with the chapter's default parameters."""
    from apem import chapters  # noqa: F401
    import importlib

    ch = importlib.import_module(f"apem.chapters.ch{k:02d}")
    if k == 1:
        return lambda: ch.Page(params, overrides).compared
    if k == 2:
        return lambda: ch.Page(params, overrides).lrp()
    if k == 4:
        return lambda: ch.Page(params, overrides).encoding()
    if k == 10:
        return lambda: ch.Page(params, overrides).scores
    if k == 11:
        return lambda: ch.Page(params, overrides).tables
    if k == 12:
        return lambda: ch.Page(params, overrides)
    raise ValueError(f"no study timed for chapter {k}")


def counting_models() -> None:
    """Every model apem loads from here on counts its forwarded images into the open Recorder."""
    import apem.models as models

    if getattr(models.load_model, "_counting", False):
        return
    original = models.load_model

    def load_model(*a, **kw):
        lm = original(*a, **kw)
        profile.count_forwards(lm.model)
        return lm

    load_model._counting = True
    models.load_model = load_model


def profile_run(params: str, overrides: dict, threads: int, chapters=(), root: Path | None = None) -> dict:
    """Run the configuration on a fresh store with the recorder open; time the chapters' studies after it."""
    from apem.run import run

    counting_models()
    cfg = load_config(params, **overrides)
    root = Path(root or tempfile.mkdtemp(prefix="apem-bench-"))
    import apem.store

    os.environ["APEM_RESULTS"] = str(root)
    apem.store.RESULTS_DIR = root  # the chapters' results() calls find this store, not results/
    t0 = time.perf_counter()
    with profile.Recorder() as rec:
        store = run(cfg, progress=False, root=root, threads=threads)
    wall = time.perf_counter() - t0
    studies, study_forwards = {}, {}
    for k in chapters:
        call = _chapter_call(int(k), params, overrides)
        name = CHAPTER_STUDIES[int(k)]
        with profile.Recorder() as srec:
            with profile.step(name, absorb=True):
                call()
        studies[name], study_forwards[name] = srec.seconds[name], srec.forwards.get(name, 0)
        print(f"({name}: {studies[name]:.1f} s, {study_forwards[name]:,} images forwarded)", flush=True)
    n_sel = len(store.read_frame("images.parquet"))  # the counts may be "all"
    return dict(seconds=dict(rec.seconds), items=dict(rec.items), forwards=dict(rec.forwards), wall=wall,
                studies=studies, study_forwards=study_forwards, n_selected=n_sel,
                pool=cfg.pool, filter_images=cfg.filter_images, root=str(root))


def per_image_rows(prof: dict, t_fwd: float) -> list[dict]:
    rows = []
    names = [s for s in STEPS if s in prof["seconds"]] + [s for s in prof["seconds"] if s not in STEPS]
    for name in names:
        sec, items = prof["seconds"][name], prof["items"].get(name, 0)
        if name.startswith("method ") or name.startswith("search") or name in ("loss gradient", "stage maps"):
            items = prof["n_selected"]  # per selected image (the searches count maps as items)
        per = sec / items if items else float("nan")
        fw = prof.get("forwards", {}).get(name, 0) / items if items else float("nan")
        rows.append(dict(step=name, seconds=sec, images=items, per_image=per, fwd_equiv=per / t_fwd, forwarded=fw))
    return rows


def preset_rows(rows: list[dict], preset, n_pool: int, studies: dict, t_fwd: float) -> list[dict]:
    """Each step's per-image cost times the images the preset gives it (with "all" on one group only: the pool,
    an upper bound)."""
    from apem.runner.remaining import planned_images

    n_sel = planned_images(preset, n_pool)[0]
    out = []
    for r in rows:
        if r["step"] == "classify pool":
            count = n_pool
        elif r["step"] == "filter":
            count = preset.filter_images
        elif r["step"] == "decode images":
            count = n_pool + n_sel + preset.filter_images  # the pool once, then each chunk and the filter again
        elif r["step"] == "search: shuffles" and not preset.shuffles:
            count = 0
        else:
            count = n_sel
        out.append(dict(step=r["step"], images=count, seconds=count * r["per_image"]))
    for name, sec in studies.items():
        out.append(dict(step=name, images=None, seconds=sec))  # a chapter's study has its own fixed size
    total = sum(r["seconds"] for r in out)
    for r in out:
        r["share"] = r["seconds"] / total if total else float("nan")
        r["fwd_equiv"] = r["seconds"] / t_fwd
    return out


def print_report(prof: dict, t_fwd: float, batch: int, preset_name: str, threads: int) -> dict:
    rows = per_image_rows(prof, t_fwd)
    per_image_total = sum(r["per_image"] for r in rows if r["step"] not in ("classify pool", "filter", "decode images"))
    print(f"\nOne clean forward pass: {1000 * t_fwd:.2f} ms per image (batch {batch}, {threads} thread(s)) "
          f"= 1 forward-equivalent (FE)\n")
    print("Per image, as the runner ran it "
          f"({prof['n_selected']} selected images, pool {prof['pool']}, filter on {prof['filter_images']}):\n")
    print("| step | images | s per image | FE per image | images forwarded per image | share of an image's cost |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        core = r["step"] not in ("classify pool", "filter", "decode images")
        share = f"{100 * r['per_image'] / per_image_total:.0f}%" if core else "-"
        print(f"| {r['step']} | {r['images']} | {r['per_image']:.3f} | {r['fwd_equiv']:,.0f} | "
              f"{r['forwarded']:,.1f} | {share} |")
    print(f"| **one selected image** (loss gradient to shuffles) | | **{per_image_total:.2f}** | "
          f"**{per_image_total / t_fwd:,.0f}** | | 100% |")
    print("\n(FE: seconds / one clean forward. Images forwarded: model calls' batch sizes, counted by a hook;"
          " a forward + backward pass counts once there and about 3 FE in time.)")
    preset = load_config(preset_name)
    from apem.data import load_image_set

    n_pool = preset.pool or len(load_image_set(preset.data, preset.ground_truth))
    P = preset_rows(rows, preset, n_pool, prof["studies"], t_fwd)
    total = sum(r["seconds"] for r in P)
    print(f"\nProjected for the preset `{preset_name}` ({preset.n_correct} + {preset.n_misclassified} images, "
          f"pool {n_pool}, {preset.shuffles} shuffles, filter on {preset.filter_images}):\n")
    print("| step | images | seconds | FE | share |")
    print("|---|---:|---:|---:|---:|")
    for r in P:
        print(f"| {r['step']} | {'' if r['images'] is None else r['images']} | {r['seconds']:,.0f} | "
              f"{r['fwd_equiv']:,.0f} | {100 * r['share']:.0f}% |")
    print(f"| **total** | | **{total:,.0f}** | **{total / t_fwd:,.0f}** | 100% |")
    return dict(per_image=rows, preset=P, total_seconds=total, t_forward=t_fwd, batch=batch)


#: The cuts, each measured against the pipeline before it: (label, configuration overrides, apem.runner.compute switches).
VARIANTS = [
    ("before: methods and pool in batches of 32, the gradient method recomputed",
     dict(batch_size=32), dict(SHARE_LOSS_GRADIENT=False)),
    ("automatic method batch (16 on the CPU)", dict(), dict(SHARE_LOSS_GRADIENT=False)),
    ("+ the gradient method reuses the loss gradient", dict(), dict(SHARE_LOSS_GRADIENT=True)),
]


def compare(params: str, over: dict, threads: int, rounds: int, t_fwd: float) -> dict:
    """Every variant on a fresh store, in alternating rounds (ABC ABC): the fastest round of each step."""
    from apem.runner import compute as run

    best: dict[str, dict[str, float]] = {label: {} for label, _, _ in VARIANTS}
    n_sel = over["n_correct"] + over["n_misclassified"]
    for r in range(rounds):
        for label, cfg_over, switches in VARIANTS:
            old = {k: getattr(run, k) for k in switches}
            for k, v in switches.items():
                setattr(run, k, v)
            try:
                prof = profile_run(params, {**over, **cfg_over}, threads)
            finally:
                for k, v in old.items():
                    setattr(run, k, v)
            for row in per_image_rows(prof, t_fwd):
                prev = best[label].get(row["step"])
                best[label][row["step"]] = row["per_image"] if prev is None else min(prev, row["per_image"])
            print(f"(round {r + 1}: {label}: run wall {prof['wall']:.1f} s)", flush=True)
    steps = [s for s in STEPS if any(s in b for b in best.values())]
    labels = [label for label, _, _ in VARIANTS]
    print(f"\nSide by side, seconds per image ({n_sel} selected images, fastest of {rounds} alternating rounds; "
          "decode and classification per pool image, the filter per filtered image):\n")
    print("| step | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for s in steps:
        print(f"| {s} | " + " | ".join(f"{best[l].get(s, float('nan')):.3f}" for l in labels) + " |")
    core = {l: sum(v for k, v in best[l].items() if k not in ("decode images", "classify pool", "filter"))
            for l in labels}
    print("| **one selected image** | " + " | ".join(f"**{core[l]:.2f}**" for l in labels) + " |")
    print("| speed-up vs before | " + " | ".join(f"{core[labels[0]] / core[l]:.2f}x" for l in labels) + " |")
    return dict(best=best, per_image=core)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="default", help="the parameter set whose pipeline is profiled")
    ap.add_argument("--preset", default=None, help="the preset projected (default: --params)")
    ap.add_argument("--correct", type=int, default=8, help="correctly classified images run")
    ap.add_argument("--misclassified", type=int, default=4, help="misclassified images run")
    ap.add_argument("--pool", type=int, default=120, help="pool images classified (enough to find the images)")
    ap.add_argument("--filter-images", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chapters", default="", help="chapters whose studies are timed too, e.g. 1,2,4,10,11,12")
    ap.add_argument("--compare", action="store_true", help="run every cut on and off (VARIANTS), side by side")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of --compare")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)
    over = dict(n_correct=args.correct, n_misclassified=args.misclassified, pool=args.pool,
                filter_images=args.filter_images)
    cfg = load_config(args.params, **over)
    t_fwd, batch = forward_seconds(cfg, args.threads)
    if args.compare:
        out = compare(args.params, over, args.threads, args.rounds, t_fwd)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        return 0
    chapters = [int(c) for c in args.chapters.split(",") if c.strip()]
    prof = profile_run(args.params, over, args.threads, chapters)
    print(f"(run wall time {prof['wall']:.1f} s; store {prof['root']})")
    out = print_report(prof, t_fwd, batch, args.preset or args.params, args.threads)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(profile=prof, report=out), indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
