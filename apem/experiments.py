"""The computations behind chapters 10-12, each cached in the configuration's store.

Every function takes a :class:`apem.run.Results` (the main configuration) and a
few small parameters, works on the **same images and the same cached maps** as
the main results table -- its first ``n_images`` correctly classified images in
the order of ``images.parquet`` -- and keeps its result as a parquet table with
``res.store.cached_frame(name, compute)``, the name holding every parameter,
so a chapter never recomputes what the store has.

Chapter 10, :func:`faithfulness_scores`
    Quantus's Pixel-Flipping, Selectivity, ROAD and Faithfulness Correlation
    (through :mod:`apem.faithfulness`, higher = more faithful for all four)
    and APEM on the cached stage maps. The metrics are called **one image at a
    time** with that image's maps of every method in one call, images in the
    outer loop and metrics in the inner one, so every metric sees the same
    machine load; APEM is re-run (no shuffles) with
    :func:`apem.metric.evaluate_maps` on the same maps in the same loop to
    time it. Each call counts the images its model forwarded
    (:class:`apem.faithfulness.CountingModel`). Constant maps are not given
    to Quantus (they rank nothing, and ROAD and Faithfulness Correlation
    refuse them); their scores are NaN, as APEM's is undefined. APEM's *score* is the table's
    (the number the book reports); the re-run is for the cost, and its
    epsilons are kept (``eps_minus_rerun`` / ``eps_plus_rerun``) to check that
    they match the table's. :func:`kendall_per_image` and
    :func:`mean_scores` turn the scores into rankings and agreements.

Chapter 11, :func:`sanity_check`
    Cascading randomisation (Adebayo et al. 2018, :mod:`apem.sanity`): the
    model's stages are re-initialised from the top, cumulatively; at every
    ``every``-th stage and at the last one (every layer random) each method's
    maps are recomputed **for the trained model's predicted class** and
    compared with the trained model's maps (Spearman's rho and SSIM, every
    visualisation stage). The maps of the chosen stage -- trained and
    randomised -- are then scored by APEM **on the trained model** (the
    model being explained: its loss gradient gives sign(g), its prediction is
    the target). Both the trained and the randomised maps are computed here
    with the same method parameters, so the comparison is like for like:
    the configuration's parameters, except that SmoothGrad uses
    ``min(n, smoothgrad_n)`` noisy copies and ``noise_target="fixed"``
    (every copy explains the trained prediction: only the weights may change
    between a trained map and its randomised counterpart, never the class;
    with the thesis's ``"sample"`` the randomised model's copies would explain
    the *randomised* model's own predictions).

Chapter 12, :func:`more_methods`
    The configuration re-run with other explanation methods (default
    :data:`MORE_METHODS`) through the whole pipeline, in a store of its own:
    same model, pool and seed, hence the same image draw.
    ``n_misclassified=0`` and ``filter_images=0`` (the chapter uses the
    correct images only); ``n_correct`` may be lowered to fit a time budget,
    which keeps a *subset* of the main configuration's correct images (the
    draw takes the first ``n_correct`` of one seeded permutation of the
    correct pool). :func:`combined_table` joins the two tables on the common
    images.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time

import numpy as np
import pandas as pd
import torch

from apem import faithfulness as FA
from apem import sanity as SN

APEM = "APEM"

#: Chapter 12's methods and their parameters (Integrated Gradients with 16 Gauss-Legendre steps).
MORE_METHODS = {
    "integrated_gradients": {"n_steps": 16},
    "input_x_gradient": {},
    "guided_backprop": {},
    "gradcam": {},
}


# ----------------------------------------------------------------------------- helpers


#: Bumped when a cached table's columns or meaning change, so an old table is not read back.
SCHEMA = 2


def _key(**parts) -> str:
    """A short digest of the parameters (and :data:`SCHEMA`), for the cached table's name."""
    blob = json.dumps({**parts, "schema": SCHEMA}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def correct_ids(res, n: int | None = None) -> list[str]:
    """The first ``n`` correctly classified images of the main table (``images.parquet`` order)."""
    ids = res.images.loc[res.images.group == "correct", "image_id"].tolist()
    tab = set(res.table.image_id)
    ids = [i for i in ids if i in tab]
    return ids if n is None else ids[: max(0, int(n))]


def pick_stage(res, stage: int | None = None) -> int:
    """``stage``, checked against the configuration; None: 3 when the configuration has it, else its last."""
    stages = res.cfg.stages
    if stage is None:
        return 3 if 3 in stages else max(stages)
    if stage not in stages:
        raise ValueError(f"stage {stage} is not among the configuration's stages {list(stages)}")
    return int(stage)


def _methods(res, methods) -> list[str]:
    have = list(dict.fromkeys(res.table.method))
    if methods is None:
        return have
    missing = [m for m in methods if m not in have]
    if missing:
        raise ValueError(f"method(s) {missing} are not in the results table (it has {have})")
    return list(methods)


def _preds(res, ids) -> torch.Tensor:
    p = res.images.set_index("image_id").loc[list(ids), "pred"].to_numpy().copy()
    return torch.tensor(p, dtype=torch.long)


def _apem_of(out: dict) -> np.ndarray:
    und = (out["undefined_minus"] | out["undefined_plus"]).numpy()
    a = (out["eps_plus"] - out["eps_minus"]).double().numpy()
    return np.where(und, np.nan, a)


# ----------------------------------------------------------------------------- chapter 10


def faithfulness_scores(res, n_images: int = 8, stage: int | None = None, metrics=FA.METRICS, methods=None,
                        metric_params: dict | None = None, seed: int = 0) -> pd.DataFrame:
    """Per-image scores of each method's maps by each metric, and what each metric cost.

    Long table, one row per (image, method, metric) with ``metric`` one of
    ``metrics`` (canonical Quantus names) or ``"APEM"``:

    - ``score``: higher = more faithful (APEM: the results table's value,
      NaN where undefined);
    - ``seconds_image``: wall seconds the metric took to score the
      ``n_maps`` maps of this image (one call: every method's map, except,
      for the Quantus metrics, constant maps, which rank no pixel above
      another and which Quantus's ROAD and Faithfulness Correlation refuse;
      their score is NaN for every metric, as APEM's is undefined);
    - ``forwards_map``: images the metric's model forwarded, per map (one
      call's count divided by ``n_maps``); for APEM this includes the clean
      forward pass of the image;
    - ``backwards_image``: backward passes per image (APEM: the loss gradient
      for sign(g) and, for the ``bisect`` search, the margin gradient; the
      Quantus metrics need none);
    - ``n_methods``, ``threads`` (torch threads), ``device``;
    - APEM rows also carry ``n_forward_table`` (the table's ``n_forward``:
      perturbed images per map in the main run) and ``eps_minus_rerun``,
      ``eps_plus_rerun`` (the timing re-run's epsilons).

    ``metric_params``: ``{metric: {param: value}}`` overriding
    :func:`apem.faithfulness.default_params`. Cached as
    ``faithfulness-s<stage>-n<n>-<digest>``.
    """
    stage = pick_stage(res, stage)
    methods = _methods(res, methods)
    metrics = [FA.canonical_name(m) for m in metrics]
    metric_params = {FA.canonical_name(k): dict(v) for k, v in (metric_params or {}).items()}
    ids = correct_ids(res, n_images)
    if not ids:
        raise ValueError("no correctly classified images in the results table")
    name = "faithfulness-s{}-n{}-{}".format(stage, len(ids), _key(
        metrics=metrics, methods=methods, params=metric_params, seed=seed, ids=ids))
    return res.store.cached_frame(name, lambda: _faithfulness(res, ids, stage, metrics, methods, metric_params, seed))


def _faithfulness(res, ids, stage, metrics, methods, metric_params, seed) -> pd.DataFrame:
    from apem.metric import evaluate_maps

    cfg, lm = res.cfg, res.model
    dev = lm.device
    net = lm.model.eval()
    x_all = res.image_tensors(ids).to(dev)
    y_all = _preds(res, ids).to(dev)
    T = res.table
    Ts = T[(T.stage == stage) & T.image_id.isin(ids)].set_index(["image_id", "method"])
    M = len(methods)
    with torch.no_grad():  # warm-up: the first forward pass of a process is slow
        net(x_all[:1])
    import quantus  # noqa: F401  (imported before the clock starts)

    rows = []
    threads = torch.get_num_threads()
    backwards = 2 if cfg.search_mode == "bisect" else 1
    for i, iid in enumerate(ids):
        maps = torch.stack([res.map(iid, m, stage) for m in methods]).to(dev)
        xi = x_all[i : i + 1]
        yi = y_all[i : i + 1]
        xs = xi.expand(M, -1, -1, -1).contiguous()
        ys = yi.expand(M).contiguous()
        flat = maps.flatten(1)
        ok = (flat.amax(1) > flat.amin(1)).cpu()  # a constant map ranks nothing: Quantus refuses it (ROAD, FC)
        k = int(ok.sum())
        for metric in metrics:
            sc = np.full(M, np.nan)
            secs = fwd = np.nan
            if k:
                okd = ok.to(dev)
                r = FA.quantus_evaluate(metric, lm, xs[okd], ys[okd], maps[okd], params=metric_params.get(metric),
                                        batch_size=cfg.batch_size, seed=seed)
                sc[ok.numpy()] = r.scores
                secs, fwd = r.seconds, r.forward_images / k
            for j, m in enumerate(methods):
                rows.append({"image_id": iid, "method": m, "metric": metric, "score": float(sc[j]),
                             "seconds_image": secs, "n_maps": k, "forwards_map": fwd, "backwards_image": 0})
        counter = FA.CountingModel(net)
        t0 = time.perf_counter()
        out = evaluate_maps(counter, xi, maps, yi, image_index=torch.zeros(M, dtype=torch.long, device=dev),
                            grad=None, spec=cfg.search().replace(shuffles=0))
        dt = time.perf_counter() - t0
        for j, m in enumerate(methods):
            t = Ts.loc[(iid, m)]
            rows.append({"image_id": iid, "method": m, "metric": APEM, "score": float(t.apem),
                         "seconds_image": dt, "n_maps": M, "forwards_map": counter.images / M,
                         "backwards_image": backwards,
                         "n_forward_table": float(t.n_forward),
                         "eps_minus_rerun": int(out["eps_minus"][j]), "eps_plus_rerun": int(out["eps_plus"][j]),
                         "eps_minus_table": int(t.eps_minus), "eps_plus_table": int(t.eps_plus)})
    df = pd.DataFrame(rows)
    df["n_methods"] = M
    df["threads"] = threads
    df["device"] = str(dev)
    return df


def mean_scores(scores: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Mean score per (metric, method) with a bootstrap 95% interval, and the rank it gives (1 = best)."""
    from apem.stats import bootstrap_ci

    rows = []
    for (metric, method), g in scores.groupby(["metric", "method"], sort=False):
        est, lo, hi = bootstrap_ci(g.score, "mean", n_boot=n_boot, seed=seed)
        rows.append({"metric": metric, "method": method, "n": int(g.score.notna().sum()),
                     "mean": est, "mean_lo": lo, "mean_hi": hi})
    out = pd.DataFrame(rows)
    out["rank"] = out.groupby("metric", sort=False)["mean"].rank(ascending=False, method="min")
    return out


def kendall_per_image(scores: pd.DataFrame, metric_a: str, metric_b: str) -> pd.Series:
    """Kendall's tau-b between two metrics' scores of the methods, per image (NaN where undefined).

    Undefined when fewer than two methods have both scores or either metric
    scores them all alike.
    """
    from scipy.stats import kendalltau

    wide = scores[scores.metric.isin([metric_a, metric_b])].pivot_table(
        index=["image_id", "method"], columns="metric", values="score", aggfunc="first")
    out = {}
    for iid, g in wide.groupby(level=0, sort=False):
        g = g[[metric_a, metric_b]].dropna()
        if len(g) >= 2 and g[metric_a].nunique() > 1 and g[metric_b].nunique() > 1:
            out[iid] = float(kendalltau(g[metric_a], g[metric_b]).statistic)
        else:
            out[iid] = np.nan
    return pd.Series(out, name="tau", dtype=float)


def agreement_table(scores: pd.DataFrame, reference: str = APEM, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """For every pair (``reference`` first, then the other metrics among themselves):
    mean per-image Kendall tau with its bootstrap interval, the share of images with the same
    order (tau = 1), and tau between the rankings of the mean scores."""
    from scipy.stats import kendalltau

    from apem.stats import bootstrap_ci

    metrics = list(dict.fromkeys(scores.metric))
    others = [m for m in metrics if m != reference]
    pairs = [(reference, m) for m in others if reference in metrics]
    pairs += [(a, b) for k, a in enumerate(others) for b in others[k + 1 :]]
    means = scores.groupby(["metric", "method"]).score.mean().unstack("metric")
    rows = []
    for a, b in pairs:
        tau = kendall_per_image(scores, a, b).dropna()
        est, lo, hi = bootstrap_ci(tau, "mean", n_boot=n_boot, seed=seed)
        mm = means[[a, b]].dropna()
        overall = float(kendalltau(mm[a], mm[b]).statistic) if len(mm) >= 2 and mm[a].nunique() > 1 and mm[b].nunique() > 1 else np.nan
        rows.append({"metric_a": a, "metric_b": b, "n_images": int(tau.size), "tau_mean": est, "tau_lo": lo,
                     "tau_hi": hi, "same_order": float(np.isclose(tau, 1).mean()) if tau.size else np.nan,
                     "tau_of_means": overall})
    return pd.DataFrame(rows)


def cost_table(scores: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per metric: seconds per map and forward passes per map (means over images, bootstrap intervals)."""
    from apem.stats import bootstrap_ci

    per_image = _per_image(scores)
    rows = []
    for metric, g in per_image.groupby("metric", sort=False):
        s = bootstrap_ci(g.seconds_map, "mean", n_boot=n_boot, seed=seed)
        f = bootstrap_ci(g.forwards_map, "mean", n_boot=n_boot, seed=seed)
        e = bootstrap_ci(g.fwd_equiv_map, "mean", n_boot=n_boot, seed=seed)
        rows.append({"metric": metric, "images": int(g.seconds_map.notna().sum()), "seconds_map": s[0], "seconds_map_lo": s[1],
                     "seconds_map_hi": s[2], "median_seconds_map": float(g.seconds_map.median()),
                     "forwards_map": f[0], "forwards_map_lo": f[1], "forwards_map_hi": f[2],
                     "backwards_image": float(g.backwards_image.mean()),
                     "fwd_equiv_map": e[0], "fwd_equiv_map_lo": e[1], "fwd_equiv_map_hi": e[2]})
    return pd.DataFrame(rows).set_index("metric")


def _per_image(scores: pd.DataFrame) -> pd.DataFrame:
    per_image = scores.drop_duplicates(["image_id", "metric"]).copy()
    per_image["seconds_map"] = per_image.seconds_image / per_image.n_maps
    per_image["fwd_equiv_map"] = per_image.forwards_map + 2 * per_image.backwards_image / per_image.n_maps
    return per_image


def per_image_cost(scores: pd.DataFrame, column: str = "seconds_map") -> pd.DataFrame:
    """Wide per-image cost: one row per image, one column per metric (``seconds_map`` or ``fwd_equiv_map``).

    ``fwd_equiv_map`` counts a backward pass as two forward passes (shared by the image's maps).
    """
    return _per_image(scores).pivot(index="image_id", columns="metric", values=column)


# ----------------------------------------------------------------------------- chapter 11


def cascade_steps(n_stages: int, every: int = 2) -> list[int]:
    """0-based indices of the cascade steps to evaluate: ``0, every, 2*every, ...`` and always the last."""
    if n_stages < 1:
        return []
    every = max(1, int(every))
    steps = list(range(0, n_stages, every))
    if steps[-1] != n_stages - 1:
        steps.append(n_stages - 1)
    return steps


def sanity_params(res, method: str, smoothgrad_n: int = 16) -> dict:
    """The method parameters the sanity check uses (see the module docstring)."""
    from apem.explain import method_params
    from apem.seeds import seed_of

    p = dict(res.cfg.methods.get(method, {}))
    defaults = method_params(method)
    if method == "smoothgrad":
        p["n"] = min(int(p.get("n", defaults["n"])), int(smoothgrad_n))
        p["noise_target"] = "fixed"
    if "seed" in defaults and "seed" not in p:
        p["seed"] = seed_of(res.cfg.seed, method, "sanity")
    if "batch_size" in defaults and "batch_size" not in p:
        p["batch_size"] = res.cfg.batch_size
    if method == "gradcam" and not p.get("layer"):
        p["layer"] = res.model.gradcam_layer
    return p


def sanity_check(res, n_images: int = 8, stage: int | None = None, every: int = 3, smoothgrad_n: int = 16,
                 methods=None, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cascading randomisation: map similarity per step, and APEM of the maps on the trained model.

    Returns ``(similarity, apem)``:

    ``similarity``: one row per (image, method, visualisation stage, step)
    with ``step`` (1-based position in the full cascade; the last step has
    every stage random), ``layer`` (the stage randomised last),
    ``spearman``, ``ssim`` (:func:`apem.sanity.map_similarity` of the
    randomised model's map against the trained model's; Spearman is NaN when
    a map is constant) and ``constant`` (the randomised map is constant,
    e.g. all zero: it marks no pixel as more relevant than another).

    ``apem``: one row per (image, method, step) at visualisation stage
    ``stage``, ``step = 0`` / ``layer = "trained"`` for the trained model's
    own maps, with ``eps_minus, eps_plus, apem`` (NaN when undefined),
    censored and undefined flags, all measured on the **trained** model, and
    the main table's ``apem_table`` and ``apem_shuffle`` of the same image
    and method (the shuffled baseline of the configuration's maps).

    Steps: :func:`cascade_steps` over :func:`apem.sanity.randomization_stages`.
    Cached as ``extra/sanity-sim-<key>.parquet`` and ``extra/sanity-apem-<key>.parquet``;
    the maps of the first images are kept for figures (:func:`sanity_example_maps`).
    """
    job = _SanityJob(res, n_images, stage, every, smoothgrad_n, methods, seed)
    sim = res.store.cached_frame(f"sanity-sim-{job.key}", lambda: job.compute()["sim"])
    ap = res.store.cached_frame(f"sanity-apem-{job.key}", lambda: job.compute()["apem"])
    return sim, ap


def sanity_example_maps(res, n_images: int = 8, stage: int | None = None, every: int = 3, smoothgrad_n: int = 16,
                        methods=None, seed: int = 0) -> dict:
    """The stage maps of the first :data:`N_EXAMPLE` images along the cascade, as kept by :func:`sanity_check`.

    ``{(method, step): tensor (k, C, H, W)}`` with step 0 the trained model;
    the same parameters as :func:`sanity_check` (computed if missing).
    """
    from apem.run import _from_storage

    job = _SanityJob(res, n_images, stage, every, smoothgrad_n, methods, seed)
    arrays = res.store.read_arrays(job.maps_file)
    if arrays is None:
        job.compute()
        arrays = res.store.read_arrays(job.maps_file)
    out = {}
    for k, v in arrays.items():
        m, step = k.rsplit("__", 1)
        out[(m, int(step))] = _from_storage(v)
    return out


N_EXAMPLE = 2  # images whose randomised maps sanity_check keeps for figures


class _SanityJob:
    """The parameters of one sanity check, its cache key, and its computation (run at most once)."""

    def __init__(self, res, n_images, stage, every, smoothgrad_n, methods, seed):
        self.res = res
        self.stage = pick_stage(res, stage)
        self.methods = _methods(res, methods)
        self.ids = correct_ids(res, n_images)
        if not self.ids:
            raise ValueError("no correctly classified images in the results table")
        self.every, self.smoothgrad_n, self.seed = int(every), int(smoothgrad_n), int(seed)
        self.key = "s{}-n{}-e{}-{}".format(self.stage, len(self.ids), self.every, _key(
            methods=self.methods, sg=self.smoothgrad_n, seed=self.seed, ids=self.ids,
            params={m: res.cfg.methods[m] for m in self.methods}))
        self.maps_file = f"extra/sanity-maps-{self.key}.npz"
        self._out = None

    def compute(self) -> dict:
        if self._out is None:
            self._out = _sanity(self.res, self.ids, self.stage, self.every, self.smoothgrad_n, self.methods,
                                self.seed, self.maps_file)
        return self._out


def _attribution_maps(res, model, x, target, methods, smoothgrad_n, stages) -> dict:
    from apem.explain import get_method
    from apem.maps import stage_maps

    out = {}
    for m in methods:
        A = get_method(m, **sanity_params(res, m, smoothgrad_n))(model, x, target)
        out[m] = {s: v.detach().cpu() for s, v in stage_maps(A, x, res.cfg.stages, quantize=res.cfg.quantize).items()}
    return out


def _sanity(res, ids, stage, every, smoothgrad_n, methods, seed, maps_file=None) -> dict:
    from apem.metric.clean import loss_gradient
    from apem.metric import evaluate_maps

    cfg, lm = res.cfg, res.model
    dev = lm.device
    trained = lm.model.eval()
    x = res.image_tensors(ids).to(dev)
    target = _preds(res, ids).to(dev)
    n = len(ids)
    stages = SN.randomization_stages(trained)
    wanted = set(cascade_steps(len(stages), every))

    maps = {0: ("trained", _attribution_maps(res, trained, x, target, methods, smoothgrad_n, cfg.stages))}
    for k, (layer, model) in enumerate(SN.cascading_randomization(trained, seed=seed)):
        if k in wanted:
            maps[k + 1] = (layer, _attribution_maps(res, model, x, target, methods, smoothgrad_n, cfg.stages))
        del model

    sim_rows = []
    ref = maps[0][1]
    for step, (layer, mm) in maps.items():
        if step == 0:
            continue
        for m in methods:
            for s in cfg.stages:
                sim = SN.map_similarity(ref[m][s], mm[m][s])
                flat = mm[m][s].flatten(1)
                constant = (flat.amax(1) == flat.amin(1)).tolist()
                for j, iid in enumerate(ids):
                    sim_rows.append({"image_id": iid, "method": m, "vis_stage": s, "step": step, "layer": layer,
                                     "n_stages": len(stages), "spearman": float(sim.spearman[j]),
                                     "ssim": float(sim.ssim[j]), "constant": bool(constant[j])})

    if maps_file is not None:
        from apem.run import _to_storage

        res.store.write_arrays(maps_file, {f"{m}__{step}": _to_storage(mm[m][stage][:N_EXAMPLE], res.cfg.quantize)
                                           for step, (_, mm) in maps.items() for m in methods})

    # APEM on the trained model of every map of the chosen stage, in one batched search
    grad, _, _ = loss_gradient(trained, x, target)
    keys, blocks = [], []
    for step, (layer, mm) in maps.items():
        for m in methods:
            blocks.append(mm[m][stage])
            keys.append((step, layer, m))
    all_maps = torch.cat(blocks).to(dev)
    image_index = torch.arange(n, device=dev).repeat(len(blocks))
    out = evaluate_maps(trained, x, all_maps, target, spec=cfg.search().replace(shuffles=0), image_index=image_index,
                        grad=grad)
    apem = _apem_of(out)
    T = res.table
    Ts = T[T.stage == stage].set_index(["image_id", "method"])
    ap_rows = []
    for b, (step, layer, m) in enumerate(keys):
        for j, iid in enumerate(ids):
            k = b * n + j
            t = Ts.loc[(iid, m)]
            ap_rows.append({
                "image_id": iid, "method": m, "step": step, "layer": layer, "stage": stage,
                "eps_minus": int(out["eps_minus"][k]), "eps_plus": int(out["eps_plus"][k]), "apem": float(apem[k]),
                "censored_minus": bool(out["censored_minus"][k]), "censored_plus": bool(out["censored_plus"][k]),
                "undefined": bool(out["undefined_minus"][k] | out["undefined_plus"][k]),
                "n_forward": int(out["n_forward"][k]),
                "apem_table": float(t.apem), "apem_shuffle": float(t.get("apem_shuffle", np.nan)),
            })
    return {"sim": pd.DataFrame(sim_rows), "apem": pd.DataFrame(ap_rows)}


# ----------------------------------------------------------------------------- chapter 12


def more_methods(params="default", overrides: dict | None = None, methods: dict | None = None,
                 n_correct: int | None = None, stages=None, shuffles: int | None = None,
                 progress: bool = False, root=None):
    """Results of the configuration ``params`` (+ ``overrides``) with other methods (default :data:`MORE_METHODS`).

    Correct images only (``n_misclassified=0``), no explanation filter
    (``filter_images=0``); ``n_correct`` (at most the configuration's) keeps
    a subset of its correct images; ``stages`` and ``shuffles`` (None: the
    configuration's) let a chapter drop the shuffled baseline where it does
    not need it. Everything else -- model, pool, seed, search, batch size --
    is the configuration's.
    """
    from apem.config import load_config
    from apem.run import results

    over = dict(overrides or {})
    base = load_config(params, **over)
    over.update(methods=copy.deepcopy(methods if methods is not None else MORE_METHODS),
                n_misclassified=0, filter_images=0)
    over["n_correct"] = base.n_correct if n_correct is None else min(int(n_correct), base.n_correct)
    if stages is not None:
        over["stages"] = tuple(stages)
    if shuffles is not None:
        over["shuffles"] = int(shuffles)
    return results(params, progress=progress, root=root, **over)


def combined_table(main, extra, group: str = "correct") -> pd.DataFrame:
    """The main table's ``group`` rows and the extra methods' rows, on the images both hold.

    Raises ``ValueError`` if an image of ``extra`` is not in ``main`` or the
    two disagree on an image's prediction (they would not be the same draw).
    """
    A = main.table[main.table.group == group]
    B = extra.table[extra.table.group == group]
    a_img = A.drop_duplicates("image_id").set_index("image_id")
    b_img = B.drop_duplicates("image_id").set_index("image_id")
    stray = sorted(set(b_img.index) - set(a_img.index))
    if stray:
        raise ValueError(f"{len(stray)} image(s) of the extra run are not in the main table, e.g. {stray[:3]}")
    common = b_img.index
    if not (a_img.loc[common, "pred"].to_numpy() == b_img.loc[common, "pred"].to_numpy()).all():
        raise ValueError("the two runs disagree on the model's predictions: not the same model/images")
    clash = sorted(set(A.method) & set(B.method))
    if clash:
        B = B[~B.method.isin(clash)]
    out = pd.concat([A[A.image_id.isin(common)], B], ignore_index=True)
    return out
