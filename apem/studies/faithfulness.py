"""Chapter 10: Quantus's faithfulness metrics and APEM on the same maps, and what each cost.

See :func:`faithfulness_scores`. Each image's rows are kept in the store's cells
(:func:`apem.studies.common.cached_rows`): every metric scores one image's maps in a call
of its own (ROAD's and Faithfulness Correlation's draws seeded afresh per call,
:mod:`apem.quantus_adapter`) and APEM's timing re-run searches that image alone, so an
image's rows depend on it alone and a study of fewer or more images reads what another
computed.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from apem import quantus_adapter
from apem.numerics import no_tf32
from apem.studies.common import APEM, cached_rows, correct_ids, pick_stage, predictions, table_methods


@no_tf32()
def faithfulness_scores(res, *, n_images: int = 8, stage: int | None = None, seed: int = 0, metrics=quantus_adapter.METRICS,
                        methods=None, metric_params: dict | None = None) -> pd.DataFrame:
    """Per-image scores of each method's maps by each metric, and what each metric cost.

    Long table, one row per (image, method, metric) with ``metric`` one of
    ``metrics`` (canonical Quantus names) or ``"APEM"``:

    - ``score``: higher = more faithful (APEM: the results table's value,
      NaN where undefined);
    - ``seconds_image``: wall seconds the metric took to score the
      ``n_maps`` maps of this image, measured when the image was computed
      (one call: every method's map, except,
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
    :func:`apem.quantus_adapter.default_params`. Each image's rows are kept in the store's
    cells under ``stage``, ``metrics``, ``methods``, ``metric_params`` and ``seed``: a study of
    fewer or more images computes only the images no study computed before.
    """
    stage = pick_stage(res, stage)
    methods = table_methods(res, methods)
    metrics = [quantus_adapter.canonical_name(m) for m in metrics]
    metric_params = {quantus_adapter.canonical_name(k): dict(v) for k, v in (metric_params or {}).items()}
    ids = correct_ids(res, n_images)
    if not ids:
        raise ValueError("no correctly classified images in the results table")
    compute = lambda lack: _faithfulness(res, lack, stage, metrics, methods, metric_params, seed)  # noqa: E731
    return cached_rows(res, "faithfulness", compute, ids, stage=stage, metrics=metrics, methods=methods,
                       params=metric_params, seed=seed)


def _faithfulness(res, ids, stage, metrics, methods, metric_params, seed) -> pd.DataFrame:
    from apem.metric import evaluate_maps

    cfg, lm = res.cfg, res.model
    dev = lm.device
    net = lm.model.eval()
    x_all = res.image_tensors(ids).to(dev)
    y_all = predictions(res, ids).to(dev)
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
                r = quantus_adapter.quantus_evaluate(metric, lm, xs[okd], ys[okd], maps[okd], params=metric_params.get(metric),
                                        batch_size=cfg.method_batch(lm.device, lm.model), seed=seed)
                sc[ok.numpy()] = r.scores
                secs, fwd = r.seconds, r.forward_images / k
            for j, m in enumerate(methods):
                rows.append({"image_id": iid, "method": m, "metric": metric, "score": float(sc[j]),
                             "seconds_image": secs, "n_maps": k, "forwards_map": fwd, "backwards_image": 0})
        counter = quantus_adapter.CountingModel(net)
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
