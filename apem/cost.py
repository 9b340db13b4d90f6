"""What a run will cost, said before it starts: forward-equivalents times a calibrated second.

The work of a configuration is counted in **forward-equivalents (FE)**: one clean
forward pass of one image at the search's batch size. What each step of the runner
costs in FE per image depends on the configuration (methods and their parameters,
maps per image, search mode, shuffles) far more than on the machine, so it comes from
one table, :data:`COSTS`, measured by ``benchmarks/bench_pipeline.py``. The machine
enters through two numbers timed on the loaded model in a second or two
(:func:`calibrate`): the seconds of one FE, and the seconds to decode one JPEG (CPU
work that is not a forward pass).

Per selected image, with ``M = len(methods) * len(stages)`` maps and ``S`` shuffles::

    loss gradient + sum over methods of the method's FE + M * stage maps
    + M * 2 directions * (forwards per direction of the search mode)
    + M * 2 groups * S * (tested steps per shuffled group or member) * (1 + the permutation's FE if per_step)

plus one FE per pool image to classify, the filter's FE per filtered image, and the
decoding of every image read (the pool once, each chunk's images again, the filtered
images). :func:`estimate` multiplies; :func:`apem.runner.remaining.remaining_work` says
what is still missing in a store (a resumed run is estimated on its missing cells only);
:func:`apem.runner.remaining.announce` prints the estimate before the runner computes its
first chunk, and ``apem run CONFIG --estimate-only`` prints it without computing.

The constants were measured on the 2-core development CPU with EfficientNet-Lite0
(the table says which were not); on another model or an accelerator (larger batches)
the ratios move: take the estimate there as an order of magnitude.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

_BENCH = ("benchmarks/bench_pipeline.py (2 threads) on the 2-core development CPU, EfficientNet-Lite0, "
          "params/default.yaml (3 methods x 3 stages)")


@dataclass(frozen=True)
class Cost:
    """One constant of the cost model: its value, what it counts, where it comes from."""

    value: float
    unit: str
    source: str


#: The cost model's constants, each with its source. FE = one clean forward pass of one image at the
#: search's batch size (2 on the CPU).
COSTS: dict[str, Cost] = {
    "loss gradient": Cost(3.0, "FE per selected image", _BENCH),
    "method gradient": Cost(2.5, "FE per image", _BENCH + " (2-3 FE)"),
    "method smoothgrad": Cost(3.5, "FE per image and noisy copy (n)",
                              _BENCH + ", methods' automatic batch 16: n = 100 gave ~350 FE"),
    "method lrp_epsilon": Cost(8.0, "FE per image", _BENCH),
    "stage maps": Cost(1.0 / 9, "FE per map", _BENCH + ": ~1 FE per image for its 9 maps"),
    "search bisect": Cost(4.3, "forwards per map and direction", _BENCH + "; bench_search.py: 8.0-8.5 per map"),
    "search thesis": Cost(18.0, "forwards per map and direction",
                          _BENCH + "; bench_search.py: 35.3 forwards per map (benchmarks/README.md)"),
    "search linear": Cost(64.0, "forwards per map and direction",
                          "not measured: the scan forwards 32 steps per pass up to the flip, and the thesis's median "
                          "epsilons (16-81, Table 4.4) take one to three passes"),
    "shuffles bisect": Cost(4.2, "tested steps per shuffled member (shuffle_mode fixed), 1 forward each", _BENCH),
    "shuffles thesis": Cost(17.0, "tested steps per shuffled group, S forwards each (per_step; fixed alike: "
                                  "the group's S members are tested together)",
                            _BENCH + " with search_mode thesis, shuffle_mode per_step"),
    "shuffles linear": Cost(64.0, "tested steps per shuffled group, S forwards each", "not measured, as search linear"),
    "shuffles per_step draw": Cost(0.12, "FE per shuffled image forwarded with shuffle_mode per_step (its permutation)",
                                   "a randperm of the 150,528 values and its gather, timed beside a forward at batch 4 "
                                   "in one process at 1 thread on the shared 2-core CPU: 1.9 vs 31 ms per image under "
                                   "load (0.061); a 2-thread FE is about half a 1-thread one, the draw is one thread"),
    "classify": Cost(1.0, "FE per pool image (decoding timed apart)", _BENCH),
    "filter bisect": Cost(1400.0, "FE per filtered image with 9 maps, scaled per map",
                          _BENCH + ", filter_images 1, filter_fast_k 8; other search modes scale it by their "
                                   "forwards per direction over bisect's (thesis: 18 / 4.3, ~4x)"),
}

#: Methods without a measurement of their own, costed as a measured one (an assumption, said here):
#: a gradient-like single backward pass as ``gradient``, Integrated Gradients' steps as SmoothGrad's copies
#: (one batched gradient pass each), ``lrp`` (any rule) as ``lrp_epsilon``.
METHOD_AS = {"input_x_gradient": "gradient", "guided_backprop": "gradient", "gradcam": "gradient",
             "integrated_gradients": "smoothgrad", "lrp": "lrp_epsilon"}
#: the parameter that multiplies a method's cost (its passes per image)
METHOD_PASSES = {"smoothgrad": "n", "integrated_gradients": "n_steps"}

#: the steps of the breakdown, in the order printed
STEPS = ("classify pool", "decode images", "loss gradient", "methods", "stage maps", "search: maps",
         "search: shuffles", "filter")


def _c(name: str) -> float:
    """The value of :data:`COSTS` ``name``."""
    return COSTS[name].value


def method_fe(name: str, params: dict | None = None) -> float:
    """FE per image of one explanation method with its parameters (defaults filled in)."""
    from apem import explain

    p = dict(explain.method_params(name))
    p.update(params or {})
    base = METHOD_AS.get(name, name)
    passes = float(p[METHOD_PASSES[name]]) if name in METHOD_PASSES else 1.0
    return _c(f"method {base}") * passes


def maps_per_image(cfg) -> int:
    return len(cfg.methods) * len(cfg.stages)


def fe_per_image(cfg) -> dict[str, float]:
    """FE per selected image, step by step (the runner's steps from the loss gradient to the shuffles)."""
    M = maps_per_image(cfg)
    mode = cfg.search_mode
    out = {
        "loss gradient": _c("loss gradient"),
        "methods": sum(method_fe(n, p) for n, p in cfg.methods.items()),
        "stage maps": M * _c("stage maps"),
        "search: maps": M * 2 * _c(f"search {mode}"),
        "search: shuffles": 0.0,
    }
    if cfg.shuffles:
        # bisect searches each fixed member alone; a scan tests the S members of a group at each step together
        per_forward = 1.0 + (_c("shuffles per_step draw") if cfg.shuffle_mode == "per_step" else 0.0)
        out["search: shuffles"] = M * 2 * cfg.shuffles * _c(f"shuffles {mode}") * per_forward
    return out


def shuffled_share(cfg) -> float:
    """The share of the selected images that get the shuffled baseline (``cfg.shuffle_groups``), from the
    configuration's counts; 1.0 (an upper bound) where a count is ``all``."""
    from apem.config import ALL, GROUPS

    if not cfg.shuffles:
        return 0.0
    counts = {g: cfg.wanted(g, 0) if getattr(cfg, f"n_{g}") != ALL else None for g in GROUPS}
    if set(cfg.shuffle_groups) == set(GROUPS) or None in counts.values():
        return 1.0
    total = sum(counts.values())
    return sum(counts[g] for g in cfg.shuffle_groups) / total if total else 0.0


def filter_fe_per_image(cfg) -> float:
    """FE of the explanation filter per filtered image: the measured 9-map figure per map, scaled by search mode."""
    per_map = _c("filter bisect") / 9
    return maps_per_image(cfg) * per_map * _c(f"search {cfg.search_mode}") / _c("search bisect")


# ----------------------------------------------------------------------------- what is left to do


@dataclass
class Work:
    """What a run of a configuration still has to compute."""

    images: int  # selected images with a missing cell
    chunks: int
    selected: int  # selected images in all (an upper bound when not exact)
    classify: int = 0  # pool images to classify (0 when the predictions are cached)
    filter_images: int = 0  # images the filter runs on (0 when its files are there and no chunk is redone)
    exact: bool = True
    # cells to compute, (kind, method) -> count, from the plan (None: every cell of every selected image)
    cells: dict | None = None
    plan: dict | None = None  # apem.runner.plan.Plan.summary(): what is computed and what is reused

    @property
    def empty(self) -> bool:
        return not (self.images or self.classify or self.filter_images)


# ----------------------------------------------------------------------------- the machine's second


@dataclass(frozen=True)
class Calibration:
    """Seconds of one FE and of decoding one image on this machine, for one model."""

    fe_seconds: float
    decode_seconds: float
    batch: int
    model: str = ""
    device: str = "cpu"
    threads: int = 0
    load: float | None = None  # the machine's 1-minute load average before the timing (None: unknown)


def calibrate(lm, images, cfg, n_decode: int = 8, min_seconds: float = 0.3, max_rounds: int = 20) -> Calibration:
    """Time ``n_decode`` image decodings and a few clean forwards at the search's batch size (a second or two).

    Deterministic work only (no random numbers are drawn): calling it leaves the run's numbers unchanged.
    """
    import torch

    from apem.data import load_tensors
    from apem.metric.forward import wants_channels_last, resolve_batch_size

    k = max(1, min(int(n_decode), len(images)))
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        load = None
    t0 = time.perf_counter()
    _, x, _ = load_tensors(images.subset(range(k)), lm.transform)
    decode = (time.perf_counter() - t0) / len(x)
    dev = lm.device
    b = resolve_batch_size(cfg.search_batch_size, dev)
    x = x.to(dev).repeat((b + len(x) - 1) // len(x), 1, 1, 1)[:b]
    if wants_channels_last(lm.model):
        x = x.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times: list[float] = []
    with torch.inference_mode():
        lm.model(x)  # warm-up
        sync()
        while len(times) < 3 or (sum(times) < min_seconds and len(times) < max_rounds):
            t1 = time.perf_counter()
            lm.model(x)
            sync()
            times.append(time.perf_counter() - t1)
    fe = min(times) / b  # the fastest round: a moment's load on the machine does not inflate hours of estimate
    return Calibration(fe_seconds=fe, decode_seconds=decode, batch=b, model=lm.name, device=str(dev),
                       threads=torch.get_num_threads(), load=load)


# ----------------------------------------------------------------------------- the estimate


@dataclass
class Estimate:
    """FE and seconds per step of a run (:data:`STEPS`); ``seconds`` is the total."""

    name: str
    work: Work
    calibration: Calibration
    fe: dict[str, float] = field(default_factory=dict)  # per step; "decode images" is 0 (it is timed in seconds)
    decode_images: int = 0

    def step_seconds(self) -> dict[str, float]:
        s = {k: v * self.calibration.fe_seconds for k, v in self.fe.items()}
        s["decode images"] = self.decode_images * self.calibration.decode_seconds
        return {k: s[k] for k in STEPS if k in s}

    @property
    def seconds(self) -> float:
        return sum(self.step_seconds().values())

    @property
    def total_fe(self) -> float:
        return sum(self.fe.values())

    def as_json(self) -> dict:
        """``apem run --estimate-only --json``: what is selected, computed and reused, the seconds, the store's size."""
        from apem.runner.cells import Cells

        w = self.work
        out = {"name": self.name, "images_selected": w.selected, "exact": w.exact,
               "images_to_compute": w.images, "chunks_to_compute": w.chunks}
        out.update({k: v for k, v in (w.plan or {}).items() if k not in out})
        out.update(classify_images=w.classify, filter_images=w.filter_images, seconds=round(self.seconds, 1))
        store = getattr(self, "store", None)
        if store is not None:
            out["cells_bytes"] = Cells(store.root).size()
        return out

    def report(self) -> str:
        """The lines :func:`apem.runner.remaining.announce` prints."""
        w, cal = self.work, self.calibration
        reuse = ""
        if w.plan is not None:
            pl = w.plan
            reuse = (f"  reused from the cells: {pl['maps_reused']:,} maps, {pl['searches_reused']:,} searches, "
                     f"{pl['shuffled_searches_reused']:,} shuffled searches; to compute: {pl['maps_to_compute']:,}, "
                     f"{pl['searches_to_compute']:,}, {pl['shuffled_searches_to_compute']:,}")
        if w.empty:
            return f"apem: {self.name}: nothing left to compute" + ("\n" + reuse if reuse else "")
        what = []
        if w.images:
            n = f"{w.images:,}" if w.exact else f"at most {w.images:,}"
            what.append(f"{n} of {w.selected:,} selected images in {w.chunks:,} chunk(s)" if w.exact
                        else f"{n} images (a group is 'all': counted once the pool is classified)")
        if w.classify:
            what.append(f"classifying the pool of {w.classify:,}")
        if w.filter_images:
            what.append(f"the filter on {w.filter_images}")
        lines = [f"apem: estimate for {self.name}: about {fmt_duration(self.seconds)} on this machine for "
                 + ", ".join(what),
                 f"  1 FE (one clean forward pass of one image) = {1000 * cal.fe_seconds:.2f} ms ({cal.model}, "
                 f"batch {cal.batch}, {cal.device}, {cal.threads} thread(s)); decoding {1000 * cal.decode_seconds:.1f}"
                 " ms per image; cost model: apem/cost.py"]
        if reuse:
            lines.append(reuse)
        if cal.load is not None and cal.load >= 0.5 * (os.cpu_count() or 1):
            lines.append(f"  (load average {cal.load:.1f} on {os.cpu_count()} cores while timing: other work slows "
                         "the forward passes, so the estimate is high while it runs)")
        total = self.seconds or 1.0
        for k, sec in self.step_seconds().items():
            if sec > 0:
                fe = "" if k == "decode images" else f"{self.fe[k]:>13,.0f} FE"
                lines.append(f"  {k:<18}{fe:>16}  {fmt_duration(sec):>8}  {100 * sec / total:3.0f}%")
        return "\n".join(lines)


def estimate(cfg, n_images: int, device=None, *, classify: int = 0, filter_images: int | None = None,
             calibration: Calibration | None = None, work: Work | None = None) -> Estimate:
    """The time ``cfg`` takes on ``n_images`` selected images (seconds: ``.seconds``; per step: ``.step_seconds()``).

    ``classify``: pool images to classify too; ``filter_images``: images the filter runs on (None: the
    configuration's). ``calibration``: this machine's seconds per FE and per decoded image; None loads
    the model on ``device`` (None: the configuration's) and times it (:func:`calibrate`).
    ``work`` (from :func:`apem.runner.remaining.remaining_work`) replaces the three counts.
    """
    if work is None:
        n = int(n_images)
        work = Work(images=n, chunks=len(range(0, n, cfg.chunk_size)), selected=n, classify=int(classify),
                    filter_images=cfg.filter_images if filter_images is None else int(filter_images))
    if calibration is None:
        from apem.runner.selection import load_inputs

        lm, images = load_inputs(cfg if device is None else cfg.replace(device=str(device)))
        calibration = calibrate(lm, images, cfg)
    per = fe_per_image(cfg)
    per["search: shuffles"] *= shuffled_share(cfg)  # only the images of cfg.shuffle_groups
    fe = {"classify pool": work.classify * _c("classify")}
    fe.update({k: work.images * v for k, v in per.items()})
    if work.cells is not None:  # cell by cell: only what is missing
        c = work.cells
        maps_of = {name: c.get(("maps", name), 0) for name in cfg.methods}
        fe["methods"] = sum(method_fe(name, p) * maps_of[name] / len(cfg.stages) for name, p in cfg.methods.items())
        fe["stage maps"] = sum(maps_of.values()) * _c("stage maps")
        fe["search: maps"] = sum(c.get(("search", n), 0) for n in cfg.methods) * 2 * _c(f"search {cfg.search_mode}")
        if cfg.shuffles:
            per_forward = 1.0 + (_c("shuffles per_step draw") if cfg.shuffle_mode == "per_step" else 0.0)
            fe["search: shuffles"] = (sum(c.get(("shuffle", n), 0) for n in cfg.methods) * 2 * cfg.shuffles
                                      * _c(f"shuffles {cfg.search_mode}") * per_forward)
    fe["filter"] = work.filter_images * filter_fe_per_image(cfg)
    decode = work.classify + work.images + work.filter_images  # the pool once, each chunk's and the filter's again
    return Estimate(cfg.name, work, calibration, fe, decode)


def fmt_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
