"""Chapter 11: cascading randomisation of the model, map similarity, and APEM of the randomised maps.

See :func:`sanity_check`. Each image's rows -- and the example maps of the first images -- are
kept in the store's cells (:func:`apem.studies.common.cached_rows`,
:func:`apem.studies.common.cached_arrays`): the randomised models are seeded by the layers'
names, the maps are computed image by image (SmoothGrad's noise keyed by the image's name) and
each map is searched with its image's own clean pass, so an image's rows depend on it alone and
a study of fewer or more images reads what another computed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from apem import randomisation
from apem.numerics import no_tf32
from apem.metric.score import apem_terms
from apem.studies.common import (cached_arrays, cached_rows, clean_inputs, correct_ids, ordered_rows, pick_stage,
                                 table_methods)


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
        p["batch_size"] = res.cfg.method_batch(res.model.device, res.model.model)
    if method == "gradcam" and not p.get("layer"):
        p["layer"] = res.model.gradcam_layer
    return p


@no_tf32()
def sanity_check(res, *, n_images: int = 8, stage: int | None = None, seed: int = 0, every: int = 3,
                 smoothgrad_n: int = 16, methods=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cascading randomisation: map similarity per step, and APEM of the maps on the trained model.

    Returns ``(similarity, apem)``:

    ``similarity``: one row per (image, method, visualisation stage, step)
    with ``step`` (1-based position in the full cascade; the last step has
    every stage random), ``layer`` (the stage randomised last),
    ``spearman``, ``ssim`` (:func:`apem.randomisation.map_similarity` of the
    randomised model's map against the trained model's; Spearman is NaN when
    a map is constant) and ``constant`` (the randomised map is constant,
    e.g. all zero: it marks no pixel as more relevant than another).

    ``apem``: one row per (image, method, step) at visualisation stage
    ``stage``, ``step = 0`` / ``layer = "trained"`` for the trained model's
    own maps, with ``eps_minus, eps_plus, apem`` (NaN when undefined),
    censored and undefined flags, all measured on the **trained** model, and
    the main table's ``apem_table`` and ``apem_shuffle`` of the same image
    and method (the shuffled baseline of the configuration's maps).

    Steps: :func:`cascade_steps` over :func:`apem.randomisation.randomization_stages`.
    Each image's rows are kept in the store's cells: the similarity rows under ``every``,
    ``smoothgrad_n``, ``seed`` and the methods, the APEM rows under those and ``stage``; a study
    of fewer or more images computes only the images no study computed before. The maps of the
    first :data:`N_EXAMPLE` images are kept with them, for figures (:func:`sanity_example_maps`).
    """
    job = _SanityJob(res, n_images, stage, every, smoothgrad_n, methods, seed)
    sim = cached_rows(res, "sanity-sim", job.rows("sim"), job.ids, **job.sim_params)
    ap = cached_rows(res, "sanity-apem", job.rows("apem"), job.ids, **job.apem_params)
    kept = [i for i in job.examples if i in job.done]  # computed here anyway: keep their maps for the figures
    if kept:
        cached_arrays(res, "sanity-maps", job.arrays, kept, **job.apem_params)
    # the tables' order: per step and method (and visualisation stage), the images innermost
    sim = ordered_rows(sim, step=sorted(set(sim.step)) if len(sim) else [], method=job.methods,
                       vis_stage=list(res.cfg.stages), image_id=job.ids)
    ap = ordered_rows(ap, step=sorted(set(ap.step)) if len(ap) else [], method=job.methods, image_id=job.ids)
    return sim, ap


@no_tf32()
def sanity_example_maps(res, *, n_images: int = 8, stage: int | None = None, seed: int = 0, every: int = 3,
                        smoothgrad_n: int = 16, methods=None) -> dict:
    """The stage maps of the first :data:`N_EXAMPLE` images along the cascade, as kept by :func:`sanity_check`.

    ``{(method, step): tensor (k, C, H, W)}`` with step 0 the trained model;
    the same parameters as :func:`sanity_check` (computed if missing: the cascade of those
    images alone).
    """
    from apem.maps import from_storage

    job = _SanityJob(res, n_images, stage, every, smoothgrad_n, methods, seed)
    arrays = cached_arrays(res, "sanity-maps", job.arrays, job.examples, **job.apem_params)
    out = {}
    for k in arrays.get(job.examples[0], {}):
        m, step = k.rsplit("__", 1)
        out[(m, int(step))] = from_storage(np.concatenate([arrays[i][k] for i in job.examples]))
    return out


N_EXAMPLE = 2  # images whose randomised maps sanity_check keeps for figures


class _SanityJob:
    """The parameters of one sanity check, the cells' keys, and its computation: each image at most once."""

    def __init__(self, res, n_images, stage, every, smoothgrad_n, methods, seed):
        self.res = res
        self.stage = pick_stage(res, stage)
        self.methods = table_methods(res, methods)
        self.ids = correct_ids(res, n_images)
        if not self.ids:
            raise ValueError("no correctly classified images in the results table")
        self.examples = self.ids[:N_EXAMPLE]
        self.every, self.smoothgrad_n, self.seed = int(every), int(smoothgrad_n), int(seed)
        self.sim_params = dict(methods=self.methods, every=self.every, sg=self.smoothgrad_n, seed=self.seed,
                               params={m: res.cfg.methods[m] for m in self.methods})
        self.apem_params = dict(self.sim_params, stage=self.stage)
        self.done = {}  # image_id -> {"sim": rows, "apem": rows, "maps": {name: array}}

    def compute(self, ids) -> None:
        """The cascade of the images of ``ids`` not computed yet (the example images' maps kept)."""
        todo = [i for i in ids if i not in self.done]
        if not todo:
            return
        out = _sanity(self.res, todo, self.stage, self.every, self.smoothgrad_n, self.methods, self.seed,
                      keep=set(self.examples))
        for i in todo:
            self.done[i] = {"sim": out["sim"][out["sim"].image_id == i], "apem": out["apem"][out["apem"].image_id == i],
                            "maps": out["maps"].get(i, {})}

    def rows(self, kind: str):
        """``compute`` for :func:`cached_rows`: the ``kind`` rows (``sim`` or ``apem``) of the lacking images."""
        def rows(lack):
            self.compute(lack)
            return pd.concat([self.done[i][kind] for i in lack], ignore_index=True)

        return rows

    def arrays(self, lack) -> dict:
        self.compute(lack)
        return {i: self.done[i]["maps"] for i in lack}


def _attribution_maps(res, model, x, target, methods, smoothgrad_n, stages, ids) -> dict:
    """Each method's stage maps of ``x`` under ``model``, image by image as the runner computes them
    (:func:`apem.runner.compute.image_by_image`; SmoothGrad's noise keyed by the image's name)."""
    from apem.explain import get_method
    from apem.maps import stage_maps
    from apem.runner.compute import image_by_image
    from apem.seeds import seed_of

    out = {}
    for m in methods:
        params = sanity_params(res, m, smoothgrad_n)
        A = []
        for j, iid in enumerate(ids):
            p = dict(params, noise_keys=[seed_of(str(iid))]) if m == "smoothgrad" else params
            A.append(get_method(m, **p)(model, x[j : j + 1], target[j : j + 1]))
        A = torch.cat(A)
        maps = image_by_image(lambda aj, xj: tuple(stage_maps(aj, xj, res.cfg.stages, quantize=res.cfg.quantize,
                                                              encoding=res.cfg.map_encoding)[s]
                                                   for s in res.cfg.stages), A, x)
        out[m] = {s: v.detach().cpu() for s, v in zip(res.cfg.stages, maps)}
    return out


def _sanity(res, ids, stage, every, smoothgrad_n, methods, seed, keep=()) -> dict:
    """The sanity check of images ``ids``: ``{"sim": rows, "apem": rows, "maps": {image_id: {name: array}}}``,
    the maps (``<method>__<step>``, storage form) of the images in ``keep`` only."""
    from apem.maps import to_storage
    from apem.metric import evaluate_maps

    cfg, lm = res.cfg, res.model
    dev = lm.device
    trained = lm.model.eval()
    x, target, grad, info = clean_inputs(res, ids)  # image by image, as the runner's
    n = len(ids)
    stages = randomisation.randomization_stages(trained)
    wanted = set(cascade_steps(len(stages), every))

    maps = {0: ("trained", _attribution_maps(res, trained, x, target, methods, smoothgrad_n, cfg.stages, ids))}
    for k, (layer, model) in enumerate(randomisation.cascading_randomization(trained, seed=seed)):
        if k in wanted:
            maps[k + 1] = (layer, _attribution_maps(res, model, x, target, methods, smoothgrad_n, cfg.stages, ids))
        del model

    sim_rows = []
    ref = maps[0][1]
    for step, (layer, mm) in maps.items():
        if step == 0:
            continue
        for m in methods:
            for s in cfg.stages:
                sim = randomisation.map_similarity(ref[m][s], mm[m][s])
                flat = mm[m][s].flatten(1)
                constant = (flat.amax(1) == flat.amin(1)).tolist()
                for j, iid in enumerate(ids):
                    sim_rows.append({"image_id": iid, "method": m, "vis_stage": s, "step": step, "layer": layer,
                                     "n_stages": len(stages), "spearman": float(sim.spearman[j]),
                                     "ssim": float(sim.ssim[j]), "constant": bool(constant[j])})

    kept = {iid: {f"{m}__{step}": to_storage(mm[m][stage][j : j + 1], cfg.quantize)
                  for step, (_, mm) in maps.items() for m in methods}
            for j, iid in enumerate(ids) if iid in keep}

    # APEM on the trained model of every map of the chosen stage, in one batched search (each map searched
    # as on its own: the image's clean pass, batches of the search's size)
    keys, blocks = [], []
    for step, (layer, mm) in maps.items():
        for m in methods:
            blocks.append(mm[m][stage])
            keys.append((step, layer, m))
    all_maps = torch.cat(blocks).to(dev)
    image_index = torch.arange(n, device=dev).repeat(len(blocks))
    out = evaluate_maps(trained, x, all_maps, target, spec=cfg.search().replace(shuffles=0), image_index=image_index,
                        grad=grad, margin_info=info)
    apem = apem_terms(out["eps_plus"], out["eps_minus"], out["undefined_minus"] | out["undefined_plus"])
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
    return {"sim": pd.DataFrame(sim_rows), "apem": pd.DataFrame(ap_rows), "maps": kept}
