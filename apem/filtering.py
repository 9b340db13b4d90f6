r"""The explanation filter (thesis section 3.2, Algorithm 2).

Algorithm 2, per map::

    apem <- APEM(R, x)
    repeat
        best_R, best_apem <- R, apem
        v <- smallest positive value of best_R
        R <- best_R with every entry equal to v set to 0
        apem <- APEM(R, x)
    until apem < best_apem
    return best_R

where :math:`\mathrm{APEM}(R, x) = \epsilon^+ - \epsilon^-` for the one image
(:func:`apem.metric.evaluate_maps`). Zeroing the ``k`` smallest positive
levels at once is the same as zeroing them one by one, so candidate ``k`` is
``where(R <= v_k, 0, R)`` with ``v_1 < v_2 < ...`` the positive levels of the
current map. On 256-level maps (values ``k / 255``) there are at most 255
steps.

Edge cases (the thesis does not define them):

- a map whose APEM is undefined from the start (all zero: no relevance
  direction; all ones: no irrelevance direction) is returned unchanged,
  ``steps = 0``, ``apem_before = apem_after = nan``, ``status = "undefined"``;
- a candidate whose APEM is undefined counts as a drop. Removing the last
  positive level gives the all-zero map, which has no relevance direction, so
  the filter stops before it and never returns an empty map;
- censored epsilons enter the comparison as their value (the search bound, a
  lower bound of the true step); ``censored_*`` flags of the returned map are
  reported.

``fast_k = K > 0`` evaluates the next ``K`` candidate levels of every map in
one batch and takes the first drop among them: the same result as the exact
one-level-at-a-time loop (``fast_k = 0``), whose candidates and evaluations
it reproduces (each map's search depends only on that map), in about ``K``
times fewer sequential rounds, at the price of evaluating up to ``K - 1``
candidates past the drop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from apem import metric
from apem.numerics import no_tf32

#: ``FilterResult.status`` values
STATUSES = ("dropped", "undefined")


@dataclass
class FilterResult:
    """Outcome of :func:`explanation_filter` per map (tensors of length M, on the CPU).

    ``maps`` (M, C, H, W): the last map before the APEM drop; ``apem_before``,
    ``apem_after``: APEM of the input and of the returned map; ``steps``: levels
    zeroed; ``removed_fraction``: fraction of the input's positive entries set
    to zero; ``eps_minus``/``eps_plus`` and ``censored_minus``/``censored_plus``
    of the returned map; ``status``: ``"dropped"`` or ``"undefined"``;
    ``rounds``: sequential evaluation rounds; ``n_forward``: perturbed images
    forwarded per map over the whole filter.
    """

    maps: torch.Tensor
    apem_before: torch.Tensor
    apem_after: torch.Tensor
    steps: torch.Tensor
    removed_fraction: torch.Tensor
    eps_minus: torch.Tensor
    eps_plus: torch.Tensor
    censored_minus: torch.Tensor
    censored_plus: torch.Tensor
    status: list = field(default_factory=list)
    rounds: int = 0
    n_forward: torch.Tensor | None = None


def smallest_positive(maps: torch.Tensor, above: torch.Tensor | None = None) -> torch.Tensor:
    """Per map, the smallest value ``> above`` (default 0); ``inf`` when there is none."""
    thr = torch.zeros(len(maps), dtype=maps.dtype, device=maps.device) if above is None else above
    big = torch.full((), float("inf"), dtype=maps.dtype, device=maps.device)
    return torch.where(maps > thr.view(-1, *([1] * (maps.dim() - 1))), maps, big).flatten(1).amin(1)


def next_levels(maps: torch.Tensor, k: int) -> torch.Tensor:
    """(M, k): the k smallest positive distinct values of each map, ``inf`` past the last one."""
    out, cur = [], None
    for _ in range(k):
        cur = smallest_positive(maps, cur)
        out.append(cur)
    return torch.stack(out, 1)


def zero_up_to(maps: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """``where(maps <= level, 0, maps)`` per map (``level`` (M,))."""
    lv = level.view(-1, *([1] * (maps.dim() - 1)))
    return torch.where(maps <= lv, torch.zeros((), dtype=maps.dtype, device=maps.device), maps)


def _map_apem(res: dict) -> torch.Tensor:
    """Per-map APEM ``eps_plus - eps_minus`` as float64, NaN where undefined (:func:`apem.metric.apem_terms`)."""
    und = res["undefined_minus"] | res["undefined_plus"]
    return torch.from_numpy(metric.apem_terms(res["eps_plus"], res["eps_minus"], und))


@no_tf32()
def explanation_filter(model, x, maps, target=None, *, spec: metric.SearchSpec | None = None, image_index=None,
                       grad=None, fast_k=0, margin_info=None, use_hints=True, progress=False,
                       **settings) -> FilterResult:
    """Algorithm 2 on M maps in lockstep (see the module docstring).

    ``x`` (B, 3, H, W), ``maps`` (M, 1 or 3, H, W) in [0, 1], ``image_index``
    (M,) (default ``arange(M)``); ``grad``/``margin_info`` per image are
    computed once when None. ``spec``: the :class:`apem.metric.SearchSpec`
    of every search (keyword ``settings`` such as ``mode="linear"`` are
    applied on top; its shuffles are not used; ``slope``: see
    :func:`apem.metric.prepare_images`). ``fast_k = K > 0``: K candidate levels per round.
    ``use_hints``: ``bisect`` starts each candidate's search at the input
    map's epsilons (a cost saving; the answers are verified steps either way,
    equal whenever the flip is monotone). Runs with TF32 off (:func:`apem.numerics.no_tf32`).
    """
    spec = metric.SearchSpec.build(spec, **settings).replace(shuffles=0)
    mode = spec.mode
    dev = x.device
    M = len(maps)
    ii = metric.as_index(image_index, M, dev)
    maps = maps.to(dev)
    metric.check_maps(maps)
    grad, margin_info, _, _ = metric.prepare_images(model, x, ii, target, grad=grad, margin_info=margin_info,
                                                    mode=mode, slope=spec.slope, batch_size=spec.batch_size)
    K = max(1, int(fast_k))

    def evaluate(cand, idx, hints):
        res = metric.evaluate_maps(model, x, cand, spec=spec, image_index=ii[idx], grad=grad, margin_info=margin_info,
                                   hints=hints if use_hints and mode == "bisect" else None)
        return res

    res0 = evaluate(maps, torch.arange(M, device=dev), None)
    cur = maps.clone()
    cur_apem = _map_apem(res0)
    eps_m, eps_p = res0["eps_minus"].clone(), res0["eps_plus"].clone()
    cen_m, cen_p = res0["censored_minus"].clone(), res0["censored_plus"].clone()
    nfw = res0["n_forward"].clone()
    apem_before = cur_apem.clone()
    # hints: the input map's epsilons, the same for every candidate whatever K is, so that the
    # exact and the fast variant run identical searches (bisect's path depends on its start)
    hint_m, hint_p = eps_m.clone(), eps_p.clone()
    steps = torch.zeros(M, dtype=torch.long)
    active = torch.isfinite(cur_apem)
    status = ["dropped" if a else "undefined" for a in active.tolist()]
    rounds = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=M, desc="filter", unit="map", leave=False)
        bar.update(int((~active).sum()))
    while bool(active.any()):
        ai = active.nonzero().squeeze(1)
        ai_dev = ai.to(dev)
        base = cur[ai_dev]
        levels = next_levels(base, K)  # (A, K)
        has = torch.isfinite(levels)
        cands = torch.stack([zero_up_to(base, levels[:, k]) for k in range(K)], 1)  # (A, K, C, H, W)
        sel = has.reshape(-1)
        flat = cands.reshape(-1, *base.shape[1:])[sel]
        idx = ai_dev.repeat_interleave(K)[sel]
        hints = (hint_m[ai].repeat_interleave(K)[sel.cpu()], hint_p[ai].repeat_interleave(K)[sel.cpu()])
        res = evaluate(flat, idx, hints)
        rounds += 1
        a_c = torch.full((len(ai) * K,), float("nan"), dtype=torch.float64)
        a_c[sel.cpu()] = _map_apem(res)
        a_c = a_c.view(len(ai), K)
        nf = torch.zeros(len(ai) * K, dtype=torch.long)
        nf[sel.cpu()] = res["n_forward"]
        nfw[ai] += nf.view(len(ai), K).sum(1)
        fields = {}
        for key in ("eps_minus", "eps_plus", "censored_minus", "censored_plus"):
            v = torch.zeros(len(ai) * K, dtype=res[key].dtype)
            v[sel.cpu()] = res[key]
            fields[key] = v.view(len(ai), K)
        prev = torch.cat([cur_apem[ai][:, None], a_c[:, :-1]], 1)
        # a drop: APEM lower than the previous candidate's, or undefined (NaN); no level left counts too
        drop = ~(a_c >= prev) & has.cpu()
        drop = drop | ~has.cpu()
        first = torch.where(drop.any(1), drop.float().argmax(1), torch.full((len(ai),), K))
        for r, m in enumerate(ai.tolist()):
            k = int(first[r])  # candidates 0..k-1 were accepted
            if k > 0:
                cur[m] = cands[r, k - 1]
                cur_apem[m] = a_c[r, k - 1]
                eps_m[m], eps_p[m] = fields["eps_minus"][r, k - 1], fields["eps_plus"][r, k - 1]
                cen_m[m], cen_p[m] = fields["censored_minus"][r, k - 1], fields["censored_plus"][r, k - 1]
                steps[m] += k
            if k < K:
                active[m] = False
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    pos0 = (maps > 0).flatten(1).sum(1).double().cpu()
    pos1 = (cur > 0).flatten(1).sum(1).double().cpu()
    removed = torch.where(pos0 > 0, 1 - pos1 / pos0.clamp_min(1), torch.zeros_like(pos0))
    return FilterResult(cur.cpu(), apem_before, cur_apem, steps, removed, eps_m, eps_p, cen_m, cen_p,
                        status, rounds, nfw)
