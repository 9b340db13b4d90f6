"""Chapter 2, the explanation methods: the plumbing of its page (maps, tables, generated prose).

The page (``notebooks/02_explanation_methods.md``) selects the correctly classified
images at the final stage, reads their maps, measures how much the methods agree
(:func:`similarity`, :func:`total_variation`), runs the LRP-variant study
(:func:`apem.studies.lrp_rules.lrp_variants`) and declares its claims itself. This
module holds what the page calls:

* :func:`recomputed_maps`: the Gradient and SmoothGrad maps of the chapter's images
  with another ``objective`` (the class score, the thesis's text, instead of the
  loss, its code), with the noise and targets of the stored maps;
* :func:`similarity`, :func:`agreement_table`, :func:`total_variation`,
  :func:`noise_table`: the agreement and noise of the maps;
* :func:`lrp_rows`, :func:`variant_view`, :func:`model_note`: the LRP variants' tables and note;
* :func:`setting`, :func:`exercise_values`.
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pandas as pd
import torch

from apem import claims, thesis

#: the methods that are gradients of an objective (the ``objective`` parameter of the page changes them)
GRADIENT_METHODS = ("gradient", "smoothgrad")

#: what each ``objective`` is the gradient of, in words
OBJECTIVES = {"loss": "the cross-entropy loss at the model's prediction (the thesis's code)",
              "logit": "the class score $S_c$ of the model's prediction, its logit (the thesis's text)"}


# ----------------------------------------------------------------------------- maps


def recomputed_maps(res, ids: list, methods, stage: int, objective: str) -> dict[str, torch.Tensor]:
    """``{method: (N, C, H, W) stage maps}`` of ``ids`` recomputed with ``objective`` ("loss" or "logit").

    Every other parameter is the run's (:func:`apem.runner.compute.attributions`): the
    method's parameters from the configuration, its seed and SmoothGrad's noise keyed by the
    image (so each noisy copy is the stored map's), the model's prediction as the target, and
    the configuration's stage encoding. With ``objective="loss"`` the maps are the stored
    ones, bit for bit. Computed once, in the store's numeric environment, and kept in the
    configuration's store (``extra/objective_maps-<digest>.npz``).
    """
    from apem.maps import from_storage, stage_map, to_storage
    from apem.runner.compute import attributions
    from apem.studies.common import study_name

    cfg, T, methods = res.cfg, res.table, list(methods)
    name = f"extra/{study_name('objective_maps', ids=list(ids), methods=methods, stage=stage, objective=objective)}.npz"
    stored = res.store.read_arrays(name)
    if stored is not None:
        return {m: from_storage(stored[m]) for m in methods}
    lm = res.model
    where = T.drop_duplicates("image_id").set_index("image_id")
    out = {m: [] for m in methods}
    with res.store.pinned():
        for iid in ids:
            x = res.image_tensors([iid]).to(lm.device)
            y = torch.tensor([int(where.loc[iid, "pred"])], device=lm.device)
            for m in methods:
                # the run's own attributions (image by image, the noise keyed by the image), another objective
                other = cfg.replace(methods={**cfg.methods, m: {**cfg.methods[m], "objective": objective}})
                A = attributions(other, lm, m, x, y, [iid])
                out[m].append(stage_map(A, x, stage, quantize=cfg.quantize, encoding=cfg.map_encoding)[0].cpu())
    maps = {m: torch.stack(v) for m, v in out.items()}
    res.store.write_arrays(name, {m: to_storage(v, cfg.quantize) for m, v in maps.items()})
    return maps


def setting(cfg, n_images: int, stage: int, objective: str) -> str:
    """The setting line: model, images, stage, the methods' parameters and the objective of the gradients."""
    text = (f"**Setting.** {cfg.model}, {n_images} correctly classified images, stage {stage}; methods and "
            "parameters: " + "; ".join(f"{thesis.label(m)} {p or '(none)'}" for m, p in cfg.methods.items()) + ".")
    if objective == "loss":
        return text + " The Gradient and SmoothGrad maps are gradients of the loss (`objective = \"loss\"`)."
    return text + (f" The Gradient and SmoothGrad maps are recomputed here as gradients of {OBJECTIVES[objective]} "
                   f"(`objective = \"{objective}\"`); the other chapters score the stored loss maps.")


# ----------------------------------------------------------------------------- agreement and noise


def similarity(maps: dict, ids: list) -> pd.DataFrame:
    """Per image and pair of methods (columns ``a, b, image_id, spearman, ssim``).

    ``maps``: ``{method: (N, C, H, W)}`` in the order of ``ids``; the measures are
    :func:`apem.randomisation.map_similarity`'s (Spearman's rho of the map values, SSIM).
    """
    from apem.randomisation import map_similarity

    parts = [map_similarity(maps[a], maps[b]).assign(a=a, b=b, image_id=ids)
             for a, b in itertools.combinations(list(maps), 2)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["a", "b", "image_id", "spearman", "ssim"])


def agreement_table(sim: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Per pair of methods: median [distribution-free ``1 - alpha`` interval] of each measure over images."""
    from scipy import stats as sps

    rows = []
    for (a, b), g in sim.groupby(["a", "b"], sort=False):
        row = {"pair": f"{thesis.label(a)} – {thesis.label(b)}", "images": int(g.spearman.notna().sum())}
        for col in ("spearman", "ssim"):
            v = g[col].dropna().to_numpy(float)
            if v.size == 0:
                row[col] = "–"
                continue
            med = float(np.median(v))
            ci = sps.quantile_test(v, q=med).confidence_interval(1 - alpha)
            rng = (f" [{claims.fmt(float(ci.low))}, {claims.fmt(float(ci.high))}]"
                   if np.isfinite(ci.low) and np.isfinite(ci.high) else "")
            row[col] = claims.fmt(med) + rng
        rows.append(row)
    return pd.DataFrame(rows).set_index("pair").rename(
        columns={"spearman": "Spearman ρ, median", "ssim": "SSIM, median"})


def total_variation(m: torch.Tensor) -> np.ndarray:
    """Per map: mean absolute difference between vertical neighbours plus that between horizontal ones."""
    dv = (m[..., 1:, :] - m[..., :-1, :]).abs().mean((1, 2, 3))
    dh = (m[..., :, 1:] - m[..., :, :-1]).abs().mean((1, 2, 3))
    return (dv + dh).numpy()


def noise_table(tv: pd.DataFrame) -> pd.DataFrame:
    """Total variation per method (columns of ``tv``): median, mean, min, max over images."""
    out = pd.DataFrame({"median": tv.median(), "mean": tv.mean(), "min": tv.min(), "max": tv.max()})
    out.index = out.index.map(thesis.label)
    return out.map(lambda v: f"{v:.4f}")


# ----------------------------------------------------------------------------- Table 4.1


def lrp_rows(lrp: pd.DataFrame) -> pd.DataFrame:
    """The LRP-variant study's rows as the page shows them (one per image and variant)."""
    cols = ["image_id", "variant", "finite", "finite_perturbed", "rel_change", "conservation_err",
            "eps_minus", "eps_plus", "apem", "censored_minus", "censored_plus"]
    d = lrp[[c for c in cols if c in lrp]].copy()
    for c in ("rel_change", "conservation_err"):
        d[c] = d[c].map(lambda v: f"{v:.3g}" if np.isfinite(v) else "non-finite")
    for c in ("eps_minus", "eps_plus", "apem"):  # undefined where the map is not finite: "–", never nan
        if c in d:
            d[c] = d[c].map(lambda v: f"{v:.0f}" if np.isfinite(v) else "–")
    return d.set_index(["image_id", "variant"])


def variant_view(S: pd.DataFrame) -> pd.DataFrame:
    """:func:`apem.book.display.summary_view` of a summary per LRP variant, the variants named."""
    from apem.book import display
    from apem.studies.lrp_rules import VARIANT_LABELS

    view = display.summary_view(S)
    view.index = [VARIANT_LABELS.get(v, v) for v in view.index]
    return view


def model_note(t41: pd.DataFrame) -> str:
    """The verdicts' note on our model: no variant conserves relevance when the model's biases are kept."""
    model = t41[t41.property == "conserves relevance (model, biases kept)"]
    if not len(model) or model.ours.eq("yes").any():
        return ""
    return ("On our model, whose folded batch normalisations carry biases, no variant conserves relevance "
            f"(median error at least {claims.fmt(float(model.value.min()))}), which the thesis's table does not "
            "consider.")


# ----------------------------------------------------------------------------- exercises


def exercise_values(lrp: pd.DataFrame, t41: pd.DataFrame, sim: pd.DataFrame, tv: pd.DataFrame,
                    chapter_claims: list, alpha: float, objective: str) -> dict[str, str]:
    """The numbers the exercises' solutions quote (glue name -> text).

    ``lrp``: the LRP-variant study; ``t41``: its :func:`apem.studies.lrp_rules.table_4_1`;
    ``sim``, ``tv``: :func:`similarity` and the total variations (images x methods);
    ``chapter_claims``: the page's claims, decided here at ``alpha`` and at another
    level (copies: the page's own decided claims are left as they are); ``objective``:
    what the gradient maps are the gradient of.
    """
    from apem.book.exercises import counts_sentence

    stab = t41[t41.property == "numerically stable"]
    stable = ", ".join(f"{v} {claims.fmt(float(x), 4)}" for v, x in zip(stab.variant, stab.value))
    other = 0.01 if alpha != 0.01 else 0.05

    def counts(a):
        return counts_sentence(claims.Claims(copy.deepcopy(chapter_claims), alpha=a).counts())

    rho = sim.groupby(["a", "b"], sort=False).spearman.median()
    return {"ex02_lrp_n": str(int(lrp.image_id.nunique())), "ex02_stability": stable,
            "ex02_stability_max": claims.fmt(float(stab.threshold.iloc[0]), 0, pct=True) if len(stab) else "–",
            "ex02_alpha": f"{alpha:g}", "ex02_verdicts": counts(alpha),
            "ex02_other_alpha": f"{other:g}", "ex02_verdicts_other": counts(other),
            "ex02_objective": objective,
            "ex02_tv": ", ".join(f"{thesis.label(m)} {claims.fmt(float(v), 4)}" for m, v in tv.median().items()),
            "ex02_rho": ", ".join(f"{thesis.label(a)} – {thesis.label(b)} {claims.fmt(float(v), 2, sign=True)}"
                                  for (a, b), v in rho.items())}
