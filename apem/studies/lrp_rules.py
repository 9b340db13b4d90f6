"""Table 4.1 measured: the LRP variants' numerical stability, linear consistency, conservation, and APEM.

The thesis (section 4.2.2, Table 4.1) states three properties of three LRP
variants without measuring them:

=================================  =================  ===========  =================
property                           naive (eps = 0)    eps-variant  beta-variant
=================================  =================  ===========  =================
numerically stable                 no                 yes          yes
consistent with linear mapping     yes                yes          no
conserves relevance                yes                no           yes
=================================  =================  ===========  =================

Here each is measured, the variants being the ``lrp`` method's rules
(:data:`VARIANTS`; same zennit composite, canonizers and output relevance as
the configuration's ``lrp_epsilon``, whose maps the ``epsilon`` variant
reproduces):

numerical stability (:func:`lrp_variants`, the configuration's model and images)
    the share of maps holding NaN or inf, and the relative change of the raw
    relevance ``|R(x + d) - R(x)|_1 / |R(x)|_1`` under a tiny Gaussian input
    perturbation ``d`` (:data:`NOISE` in [0, 1] pixel units).
consistency with a linear mapping (:func:`linear_consistency`, closed form)
    on a bias-free linear model ``z = W x`` with mixed-sign inputs and
    weights, explaining ``z_c`` (output relevance ``z_c`` on class ``c``), the
    relevance should be the contributions ``x_i w_ci``. Measured: the largest
    deviation from ``x * w`` (raw), and the deviation from the best multiple of
    ``x * w`` (``proportional_dev``). The epsilon rule's only departure on a
    linear map is the factor ``z / (z + eps sign z)`` common to every input,
    which keeps every sign and ranking a map can show; the alpha-beta rule
    reweights positive and negative contributions differently.
conservation (:func:`mlp_conservation` on a bias-free ReLU network, and :func:`lrp_variants` on the model)
    ``|sum_i R_i - sum_c R_c| / |sum_c R_c|`` per input. On the model, the
    biases (the folded batch norms') take their share of relevance under every
    rule, so this row measures the rule *and* the network; the bias-free
    network isolates the rule.
APEM (:func:`lrp_variants`)
    every variant's map at the configuration's visualisation stage
    (:func:`apem.maps.stage_maps` with its quantisation and encoding), searched
    with the configuration's search as :func:`apem.runner.compute.compute_chunk` does
    (loss gradient, stored prediction as target, clean-pass margins), without
    the shuffled baseline. A map with NaN or inf gets no search (``undefined``).

Each image's rows of a variant are kept in the store's cells
(:func:`apem.studies.common.cached_rows`, per variant): a study of fewer or more images,
or of other variants, computes only the (image, variant) rows no study computed before.
Every step runs image by image, as the runner's (the loss gradient, each variant's
relevance, the stage map), and the perturbation of an image is drawn from a generator
seeded by the image's name, so an image's rows depend on it alone.

:func:`table_4_1` turns the measurements into yes/no with the thresholds
declared below; :func:`apem_by_variant` summarises APEM per variant.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from apem.numerics import no_tf32
from apem.studies.common import cached_rows, clean_inputs, correct_ids, pick_stage

#: The variants: ``lrp`` method parameters. The first three are the thesis's; ``alpha1_beta0`` is beyond it.
VARIANTS = {
    "naive": {"rule": "epsilon", "epsilon": 0.0},
    "epsilon": {"rule": "epsilon", "epsilon": 1.0},
    "alpha_beta": {"rule": "alpha_beta", "alpha": 2.0, "beta": 1.0},
    "alpha1_beta0": {"rule": "alpha_beta", "alpha": 1.0, "beta": 0.0},
}
VARIANT_LABELS = {
    "naive": "naive (ε = 0)",
    "epsilon": "ε-variant (ε = 1)",
    "alpha_beta": "β-variant (α = 2, β = 1)",
    "alpha1_beta0": "α = 1, β = 0",
}

#: Standard deviation of the input perturbation of the stability check, in [0, 1] pixel units: about
#: 1/40 of an 8-bit grey level, invisible and far below anything that changes the prediction.
NOISE = 1e-4

#: A rule is numerically stable when no map holds NaN/inf and the median relative change of the map
#: under the :data:`NOISE` perturbation is at most this. The perturbation changes the input by about
#: 0.02 % (L1); a map that changes by more than 10 % -- 500 times that -- is amplifying the noise
#: through near-zero denominators, which is what "numerically unstable" means.
STABLE_MAX_CHANGE = 0.1

#: A rule is consistent with a linear mapping when its relevance on the linear model is a multiple of
#: ``x * w`` to this relative L2 deviation: float64 rounding is ~1e-15, a rule that reweights the
#: contributions deviates by order one.
LINEAR_MAX_DEV = 1e-9

#: A rule conserves relevance when the sum of the input relevance differs from the output relevance's
#: by at most this fraction (median over inputs): float rounding over the model's ~50 layers stays far
#: below 1 %, an absorbing stabiliser (epsilon = 1) far above.
CONSERVATION_TOL = 1e-2


def variant_params(variant: str) -> dict:
    """The ``lrp`` method parameters of a variant (KeyError naming the known ones)."""
    if variant not in VARIANTS:
        raise KeyError(f"unknown LRP variant {variant!r}; variants are {list(VARIANTS)}")
    return dict(VARIANTS[variant])


# --------------------------------------------------------------------------- closed-form checks


def _check_variants(variants) -> list[str]:
    names = list(VARIANTS) if variants is None else list(variants)
    for v in names:
        variant_params(v)
    return names


def linear_consistency(variants=None, *, n_in: int = 16, n_out: int = 4, n_samples: int = 8,
                       seed: int = 0) -> pd.DataFrame:
    """Each variant's relevance on a bias-free linear model against the contributions ``x_i w_ci``.

    ``z = W x`` (float64, ``W`` and ``x`` standard normal: mixed signs),
    output relevance ``z_c`` on one class ``c`` per sample (the logit being
    explained, its value as relevance). One row per variant: ``max_abs_dev``
    (``max |R - x w_c|``), ``max_rel_dev`` (that over ``max |x w_c|``) and
    ``proportional_dev`` (largest over samples of ``|R - s x w_c|_2 / |x w_c|_2``
    with ``s`` the least-squares multiple).
    """
    from apem.explain.lrp import lrp_relevance

    names = _check_variants(variants)
    g = torch.Generator().manual_seed(int(seed))
    model = nn.Sequential(nn.Linear(n_in, n_out, bias=False)).double().eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(n_out, n_in, generator=g, dtype=torch.float64))
    x = torch.randn(n_samples, n_in, generator=g, dtype=torch.float64)
    c = torch.randint(0, n_out, (n_samples,), generator=g)
    w = model[0].weight.detach()
    expected = x * w[c]
    onehot = torch.nn.functional.one_hot(c, n_out).to(x.dtype)

    def rout(z):
        return onehot * z

    rows = []
    for v in names:
        R = lrp_relevance(model, x, rout, **variant_params(v))
        dev = (R - expected).abs()
        s = (R * expected).sum(1, keepdim=True) / (expected * expected).sum(1, keepdim=True)
        prop = (R - s * expected).norm(dim=1) / expected.norm(dim=1)
        rows.append({"variant": v, "max_abs_dev": float(dev.max()), "max_rel_dev": float(dev.max() / expected.abs().max()),
                     "proportional_dev": float(prop.max()), "finite": bool(torch.isfinite(R).all())})
    return pd.DataFrame(rows)


def relu_mlp(widths=(32, 64, 64, 10), seed: int = 0) -> nn.Sequential:
    """A bias-free ReLU network (float64, He-normal weights) for the conservation check."""
    g = torch.Generator().manual_seed(int(seed))
    layers = []
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        lin = nn.Linear(a, b, bias=False).double()
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=g, dtype=torch.float64) * (2.0 / a) ** 0.5)
        layers.append(lin)
        if k < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def mlp_conservation(variants=None, *, widths=(32, 64, 64, 10), n_samples: int = 16, seed: int = 0) -> pd.DataFrame:
    """Each variant's conservation error on a bias-free ReLU network (:func:`relu_mlp`).

    Output relevance ``softmax(logits)`` (apem's loss convention, summing to
    1); inputs standard normal. One row per variant: the median and largest
    ``|sum_i R_i - sum_c R_c| / |sum_c R_c|`` over the samples.
    """
    from apem.explain.lrp import lrp_relevance

    names = _check_variants(variants)
    model = relu_mlp(widths, seed)
    g = torch.Generator().manual_seed(int(seed) + 1)
    x = torch.randn(n_samples, widths[0], generator=g, dtype=torch.float64)
    with torch.no_grad():
        rsum = torch.softmax(model(x), 1).sum(1)
    rows = []
    for v in names:
        R = lrp_relevance(model, x, lambda z: torch.softmax(z, 1), **variant_params(v))
        err = ((R.sum(1) - rsum).abs() / rsum.abs()).numpy()
        rows.append({"variant": v, "median_err": float(np.median(err)), "max_err": float(err.max())})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the study on the configuration


@no_tf32()
def lrp_variants(res, *, n_images: int = 8, stage: int | None = None, seed: int = 0, noise: float = NOISE,
              variants=None) -> pd.DataFrame:
    """One row per (image, variant) on the first ``n_images`` correctly classified images.

    Columns: ``image_id, variant, rule, epsilon, alpha, beta``; stability:
    ``finite`` (the map holds no NaN/inf), ``finite_perturbed`` (nor does the
    map of the perturbed image), ``rel_change`` (``|R(x+d) - R(x)|_1 /
    |R(x)|_1``, ``d ~ N(0, noise^2)`` drawn per image from a generator seeded by
    ``seed`` and the image's name, inf where either map is
    not finite), ``max_abs`` (the largest ``|R_i|``); conservation:
    ``sum_in``, ``sum_out``, ``conservation_err``; APEM at ``stage``:
    ``eps_minus, eps_plus, apem, censored_minus, censored_plus, undefined,
    n_forward`` (NaN epsilons for a non-finite map), and, where the results
    table has ``lrp_epsilon``, ``apem_table`` and ``map_equals_table`` (the
    variant's stage map is bit for bit the stored ``lrp_epsilon`` map).
    Rows per variant, then per image. Each (image, variant)'s row is kept in the store's
    cells under the variant, ``stage``, ``seed``, ``noise`` and the LRP objective. Runs with
    TF32 off (:func:`apem.numerics.no_tf32`), as the runner
    computed the stored maps: on a GPU, TF32 convolutions would change the maps and the epsilons.
    """
    stage = pick_stage(res, stage)
    ids = correct_ids(res, n_images)
    if not ids:
        raise ValueError("no correctly classified images in the results table")
    names = _check_variants(variants)
    objective = res.cfg.methods.get("lrp_epsilon", {}).get("objective", "loss")
    seed, noise = int(seed), float(noise)
    frames = [cached_rows(res, "lrp_rules", lambda lack, v=v: _lrp_rules(res, lack, stage, seed, noise, [v], objective),
                          ids, variant=v, params=VARIANTS[v], stage=stage, seed=seed, noise=noise, objective=objective)
              for v in names]
    return pd.concat(frames, ignore_index=True)


def _perturbed(cfg, x, ids, seed, noise) -> torch.Tensor:
    """``x + d`` clamped to [0, 1], ``d ~ N(0, noise^2)`` from a generator of each image's own (seeded by its name)."""
    from apem.seeds import seed_of

    out = []
    for j, iid in enumerate(ids):
        gen = torch.Generator().manual_seed(seed_of(cfg.seed, "lrp_rules", "noise", seed, str(iid)))
        xj = x[j : j + 1]
        out.append((xj + noise * torch.randn(xj.shape, generator=gen, dtype=xj.dtype).to(xj.device)).clamp(0, 1))
    xn = torch.cat(out)
    if xn.device.type == "cpu":
        xn = xn.contiguous(memory_format=torch.channels_last)
    return xn


def _lrp_rules(res, ids, stage, seed, noise, names, objective) -> pd.DataFrame:
    from apem import metric
    from apem.explain.lrp import lrp_attribution, output_relevance
    from apem.maps import stage_maps
    from apem.metric.score import apem_terms
    from apem.runner.compute import image_by_image

    cfg, lm = res.cfg, res.model
    dev = lm.device
    net = lm.model.eval()
    x, target, grad, info = clean_inputs(res, ids)  # image by image, as the runner
    with torch.no_grad():
        out_rel = output_relevance(net, x, target, objective)(info.logits)
    # every per-image reduction on its own row: on 2 threads torch splits a reduction over a batch of
    # rows differently with the number of rows, so the last bits would depend on the other images
    per_row = lambda t, f: torch.stack([f(t[j]) for j in range(len(t))])  # noqa: E731
    sum_out = per_row(out_rel, torch.sum).double().cpu()
    xn = _perturbed(cfg, x, ids, seed, noise)

    T = res.table
    stored = T[(T.method == "lrp_epsilon") & (T.stage == stage)].set_index("image_id")
    n = len(ids)
    rows, blocks, where = [], [], []
    for v in names:
        p = variant_params(v)
        relevance = lambda xj, tj: lrp_attribution(net, xj, tj, objective=objective, **p)  # noqa: E731
        R = image_by_image(relevance, x, target).double()
        Rn = image_by_image(relevance, xn, target).double()
        flat, flatn = R.flatten(1).cpu(), Rn.flatten(1).cpu()
        finite = torch.isfinite(flat).all(1)
        both = finite & torch.isfinite(flatn).all(1)
        change = per_row(flatn - flat, lambda r: r.abs().sum()) / per_row(flat, lambda r: r.abs().sum())
        sum_in = per_row(flat, torch.sum)
        maps = None
        if finite.any():
            keep = finite.nonzero().flatten()
            m = image_by_image(lambda aj, xj: stage_maps(aj, xj, (stage,), quantize=cfg.quantize,
                                                         encoding=cfg.map_encoding)[stage],
                               R[keep.to(dev)].to(x.dtype), x[keep.to(dev)])
            maps = dict(zip(keep.tolist(), m.detach().cpu()))
            blocks.append(m.expand(-1, 3, -1, -1) if m.shape[1] == 1 else m)
            where += [(v, j) for j in keep.tolist()]
        for j, iid in enumerate(ids):
            ok, ok2 = bool(finite[j]), bool(both[j])
            row = {"image_id": iid, "variant": v, "rule": p["rule"], "epsilon": p.get("epsilon", np.nan),
                   "alpha": p.get("alpha", np.nan), "beta": p.get("beta", np.nan), "finite": ok,
                   "finite_perturbed": bool(torch.isfinite(flatn[j]).all()),
                   "rel_change": float(change[j]) if ok2 else np.inf,
                   "max_abs": float(flat[j].abs().max()) if ok else np.inf,
                   "sum_in": float(sum_in[j]) if ok else np.nan, "sum_out": float(sum_out[j]),
                   "conservation_err": float(abs(sum_in[j] - sum_out[j]) / abs(sum_out[j])) if ok else np.nan,
                   "stage": stage, "apem_table": np.nan, "map_equals_table": np.nan}
            if iid in stored.index:
                row["apem_table"] = float(stored.loc[iid, "apem"])
                if v == "epsilon" and ok and p == {"rule": "epsilon", "epsilon": float(
                        cfg.methods["lrp_epsilon"].get("epsilon", 1.0))}:
                    row["map_equals_table"] = float(torch.equal(maps[j], res.map(iid, "lrp_epsilon", stage)))
            rows.append(row)
    df = pd.DataFrame(rows)
    for col in ("eps_minus", "eps_plus", "apem", "n_forward"):
        df[col] = np.nan
    df["censored_minus"] = False
    df["censored_plus"] = False
    df["undefined"] = ~df.finite
    if blocks:
        all_maps = torch.cat(blocks)
        image_index = torch.tensor([j for _, j in where], device=dev)
        out = metric.evaluate_maps(net, x, all_maps, target, spec=cfg.search().replace(shuffles=0),
                                   image_index=image_index, grad=grad, margin_info=info)  # each map on its own
        und = out["undefined_minus"] | out["undefined_plus"]
        ap = apem_terms(out["eps_plus"], out["eps_minus"], und)
        pos = {(v, ids[j]): k for k, (v, j) in enumerate(where)}
        for r in df.itertuples():
            k = pos.get((r.variant, r.image_id))
            if k is None:
                continue
            df.loc[r.Index, ["eps_minus", "eps_plus", "apem", "n_forward"]] = [
                float(out["eps_minus"][k]), float(out["eps_plus"][k]), float(ap[k]), float(out["n_forward"][k])]
            df.loc[r.Index, ["censored_minus", "censored_plus", "undefined"]] = [
                bool(out["censored_minus"][k]), bool(out["censored_plus"][k]), bool(und[k])]
    assert len(df) == n * len(names)
    return df


# --------------------------------------------------------------------------- the tables


def table_4_1(study: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """Table 4.1, measured: one row per (property, variant), tidy.

    Columns: ``property``, ``variant``, ``measure`` (what was measured),
    ``value`` (the number the verdict is drawn from), ``threshold``,
    ``measured`` (a short text with the numbers), ``ours`` (yes/no from the
    threshold), ``thesis`` (the thesis's yes/no; None for a variant beyond
    it) and ``agrees``. Properties: ``numerically stable`` (from ``study``),
    ``consistent with linear mapping`` (:func:`linear_consistency`),
    ``conserves relevance`` (bias-free ReLU network, :func:`mlp_conservation`)
    and ``conserves relevance (model, biases kept)`` (from ``study``).
    """
    from apem.thesis import TABLE_4_1

    names = [v for v in VARIANTS if v in set(study.variant)]
    thesis = TABLE_4_1.set_index("property")
    lin = linear_consistency(names, seed=seed).set_index("variant")
    mlp = mlp_conservation(names, seed=seed).set_index("variant")
    rows = []

    def add(prop, thesis_prop, v, measure, value, threshold, ok, text):
        th = str(thesis.loc[thesis_prop, v]) if v in thesis.columns else None
        ours = "yes" if ok else "no"
        rows.append({"property": prop, "variant": v, "measure": measure, "value": value, "threshold": threshold,
                     "measured": text, "ours": ours, "thesis": th, "agrees": None if th is None else ours == th})

    for v in names:
        s = study[study.variant == v]
        bad = int((~s.finite).sum() + (~s.finite_perturbed).sum())  # of 2 maps per image: clean and perturbed
        change = float(s.rel_change.median())  # inf where a map is not finite
        add("numerically stable", "numerically stable", v, "median relative map change under the input noise",
            change, STABLE_MAX_CHANGE, bad == 0 and change <= STABLE_MAX_CHANGE,
            f"{bad} of {2 * len(s)} maps non-finite; change {change:.2g}")
    for v in names:
        r = lin.loc[v]
        add("consistent with linear mapping", "consistent with linear mapping", v,
            "deviation from a multiple of x·w (relative L2)", float(r.proportional_dev), LINEAR_MAX_DEV,
            bool(r.finite) and r.proportional_dev <= LINEAR_MAX_DEV,
            f"dev. {r.proportional_dev:.2g} (raw {r.max_rel_dev:.2g})")
    for v in names:
        r = mlp.loc[v]
        add("conserves relevance", "conserves relevance", v,
            "median |ΣR_in − ΣR_out| / |ΣR_out|, bias-free ReLU network", float(r.median_err), CONSERVATION_TOL,
            r.median_err <= CONSERVATION_TOL, f"error {r.median_err:.2g}")
    for v in names:
        s = study[study.variant == v]
        err = float(s.conservation_err.median()) if s.conservation_err.notna().any() else np.inf
        add("conserves relevance (model, biases kept)", "conserves relevance", v,
            "median |ΣR_in − ΣR_out| / |ΣR_out|, the configuration's model", err, CONSERVATION_TOL,
            err <= CONSERVATION_TOL, f"error {err:.2g}")
    return pd.DataFrame(rows)


def table_4_1_cells(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`table_4_1` as the thesis lays it out: properties x variants, cells ``ours (numbers; thesis: ...)``."""
    cell = table.apply(lambda r: f"{r.ours} ({r.measured}; thesis: {r.thesis if isinstance(r.thesis, str) else '—'})",
                       axis=1)
    wide = table.assign(cell=cell).pivot(index="property", columns="variant", values="cell")
    wide = wide.loc[list(dict.fromkeys(table.property)), [v for v in VARIANTS if v in wide.columns]]
    wide.columns = [VARIANT_LABELS[v] for v in wide.columns]
    wide.columns.name, wide.index.name = None, None
    return wide


def apem_by_variant(study: pd.DataFrame) -> pd.DataFrame:
    """Per variant: images, non-finite maps, undefined and censored searches, median eps-minus, eps-plus, APEM."""
    rows = []
    for v in [v for v in VARIANTS if v in set(study.variant)]:
        s = study[study.variant == v]
        rows.append({"variant": v, "label": VARIANT_LABELS[v], "n_images": len(s), "non_finite": int((~s.finite).sum()),
                     "undefined": int(s.undefined.sum()), "censored": int((s.censored_minus | s.censored_plus).sum()),
                     "eps_minus": float(s.eps_minus.median()), "eps_plus": float(s.eps_plus.median()),
                     "apem_median": float(s.apem.median()), "apem_mean": float(s.apem.mean())})
    return pd.DataFrame(rows).set_index("variant")
