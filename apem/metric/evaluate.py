"""Maps -> epsilons: eps-minus, eps-plus and the shuffled baseline of relevance maps, batched."""

from __future__ import annotations

import torch

from apem.metric.clean import prepare_images
from apem.numerics import no_tf32
from apem.profile import step
from apem.metric.directions import directions, normalised, permute, shuffle_permutations, side_seed
from apem.metric.forward import direction_budget, fixed_directions, Forward, group_any, PerStepShuffles
from apem.metric.search import as_index, run_engine, search
from apem.metric.spec import SearchSpec


def _progress_bar(progress, total, desc):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="item", leave=False)


def check_maps(maps):
    """Raise ``ValueError`` unless every map value lies in [0, 1] (what a relevance map is)."""
    if maps.numel() and (maps.amin() < 0 or maps.amax() > 1):
        raise ValueError(f"maps must lie in [0, 1] (got [{float(maps.amin()):g}, {float(maps.amax()):g}])")


@no_tf32()
def evaluate_maps(model, x, maps, target=None, *, spec: SearchSpec | None = None, image_index=None, grad=None,
                  seeds=None, progress=False, margin_info=None, hints=None, max_directions=None, plain=True,
                  **settings) -> dict:
    r"""Epsilons of relevance maps: :math:`\epsilon^-` from ``maps``, :math:`\epsilon^+` from ``1 - maps``.

    ``x`` (B, 3, H, W) images in the model's input space; ``maps`` (M, 1 or 3,
    H, W) in [0, 1]; ``image_index`` (M,) the image of each map (default
    ``arange(M)``). ``grad`` (B, 3, H, W): the loss gradients giving
    :math:`\operatorname{sign}(g)` (computed with the cross-entropy at
    ``target``, default the prediction, when None). ``spec``: the
    :class:`~apem.metric.spec.SearchSpec` (keyword ``settings`` such as
    ``mode="linear", shuffles=2`` are applied on top); ``spec.shuffles = S > 0``
    adds the shuffled baseline (thesis 5.2) with per-map ``seeds`` (M,) (default
    ``arange(M)``). ``hints``: optional ``(eps_minus, eps_plus)`` expected
    values (``bisect`` starts there). ``max_directions`` bounds how many
    (3, H, W) direction tensors are held at once, and so how many maps share the same passes (None:
    :func:`~apem.metric.forward.direction_budget` of the device, 256 on the CPU, by memory on CUDA). ``plain=False`` runs only the
    shuffled baseline (the runner stores it apart from the epsilons: a new shuffle
    count searches no map again); the result then has only its keys and
    ``n_image_passes``.

    Returns (all on the CPU): ``eps_minus, eps_plus, censored_minus,
    censored_plus, undefined_minus, undefined_plus, reason_minus, reason_plus,
    n_forward_minus, n_forward_plus, n_forward`` (= minus + plus, perturbed
    images forwarded), ``n_image_passes`` (0-d: images that got the shared clean
    forward/backward pass here), and with shuffles ``eps_shuffle_minus,
    eps_shuffle_plus, censored_shuffle_minus, censored_shuffle_plus,
    n_forward_shuffle_minus, n_forward_shuffle_plus`` (S images per tested step).

    Runs with TF32 off (:func:`apem.numerics.no_tf32`), as the runner does.
    """
    spec = SearchSpec.build(spec, **settings)
    mode, bound, clip, batch_size, block = spec.mode, spec.bound, spec.clip, spec.batch_size, spec.block
    shuffles, shuffle_mode, slope = spec.shuffles, spec.shuffle_mode, spec.slope
    dev = x.device
    M = len(maps)
    ii = as_index(image_index, M, dev)
    maps = maps.to(dev)
    check_maps(maps)
    grad, info, n_clean, n_back = prepare_images(model, x, ii, target, grad=grad, margin_info=margin_info, mode=mode,
                                                 slope=slope, batch_size=batch_size)
    if not plain and not shuffles:
        raise ValueError("plain=False asks for the shuffled baseline only: give shuffles > 0")
    if max_directions is None:
        max_directions = direction_budget(dev, tuple(x.shape[1:]), grad.dtype)
    out = {k: [] for k in ("eps", "censored", "undefined", "reason", "n_forward")}
    bar = _progress_bar(progress, 2 * M * ((1 if plain else 0) + (1 if shuffles else 0)), f"apem {mode}")
    chunk = max(1, int(max_directions) // 2)
    for s in range(0, M if plain else 0, chunk):
        sl = slice(s, min(s + chunk, M))
        with step("search: maps", sl.stop - sl.start):
            res = _plain_chunk(model, x, maps[sl], ii[sl], grad, info, mode, bound, clip, batch_size, block,
                               None if hints is None else (hints[0][sl], hints[1][sl]), bar)
        for k in out:
            out[k].append(getattr(res, k))
    result = {}
    if plain:
        result = _split_pm({k: torch.cat(v) if v else torch.zeros(0) for k, v in out.items()})
        result["n_forward"] = result["n_forward_minus"] + result["n_forward_plus"]
    result["n_image_passes"] = torch.tensor(n_clean)
    result["n_image_backward"] = torch.tensor(n_back)
    if shuffles:
        seeds = torch.arange(M) if seeds is None else torch.as_tensor(seeds).long().cpu()
        outs = {k: [] for k in ("eps", "censored", "n_forward")}
        # fixed shuffles hold S directions per map side; per-step ones only the side's map (their draws are made
        # for each forwarded batch)
        held = 2 * (int(shuffles) if shuffle_mode == "fixed" else 1)
        chunk = max(1, int(max_directions) // held)
        for s in range(0, M, chunk):
            sl = slice(s, min(s + chunk, M))
            with step("search: shuffles", sl.stop - sl.start):
                r = _shuffle_chunk(model, x, maps[sl], ii[sl], grad, info, mode, bound, clip, batch_size, block,
                                   int(shuffles), shuffle_mode, seeds[sl], bar)
            for k in outs:
                outs[k].append(r[k])
        sh = _split_pm({k: torch.cat(v) for k, v in outs.items()})
        result.update({"eps_shuffle_minus": sh["eps_minus"], "eps_shuffle_plus": sh["eps_plus"],
                       "censored_shuffle_minus": sh["censored_minus"], "censored_shuffle_plus": sh["censored_plus"],
                       "n_forward_shuffle_minus": sh["n_forward_minus"],
                       "n_forward_shuffle_plus": sh["n_forward_plus"]})
    if bar is not None:
        bar.close()
    return result


def _split_pm(res: dict) -> dict:
    """Chunks store [minus rows, plus rows] per chunk: undo that into ``*_minus`` / ``*_plus``."""
    out = {}
    for k, v in res.items():
        v = v.cpu()
        out[f"{k}_minus"], out[f"{k}_plus"] = v[0::2], v[1::2]
    return out


def _interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rows a0, b0, a1, b1, ...: minus and plus of a map side by side."""
    return torch.stack([a, b], 1).reshape(-1, *a.shape[1:])


def _bar_hook(bar):
    if bar is None:
        return None
    state = {"last": 0}

    def hook(done):
        n = int(done.sum())
        bar.update(n - state["last"])
        state["last"] = n

    return hook


def _plain_chunk(model, x, maps, ii, grad, info, mode, bound, clip, batch_size, block, hints, bar):
    """Search minus and plus directions of a chunk of maps together (rows interleaved)."""
    # minus and plus directions written straight into their interleaved rows (no stacking copy)
    d = torch.empty((2 * len(maps), 3, *grad.shape[2:]), dtype=grad.dtype, device=grad.device)
    _, ok_m, rs_m = directions(maps, grad, image_index=ii, return_reason=True, out=d[0::2])
    _, ok_p, rs_p = directions(1 - maps, grad, image_index=ii, return_reason=True, out=d[1::2])
    hint = None if hints is None else _interleave(torch.as_tensor(hints[0]).to(ii.device).long(),
                                                  torch.as_tensor(hints[1]).to(ii.device).long())
    res = search(model, x, d, info.target, image_index=ii.repeat_interleave(2), mode=mode, bound=bound, clip=clip,
                 batch_size=batch_size, block=block, defined=_interleave(ok_m, ok_p), margin_info=info,
                 hint=hint, reason=_interleave(rs_m, rs_p), _on_pass=_bar_hook(bar))
    return res


def _shuffle_chunk(model, x, maps, ii, grad, info, mode, bound, clip, batch_size, block, S, shuffle_mode, seeds, bar):
    """Shuffled epsilons of a chunk: groups (map, minus|plus) of S shuffled members."""
    dev = x.device
    n = 3 * maps.shape[-2] * maps.shape[-1]
    Rm, ok_m, _ = normalised(maps, grad.dtype, dev)
    Rp, ok_p, _ = normalised(1 - maps, grad.dtype, dev)
    Rn = _interleave(Rm, Rp)
    del Rm, Rp
    active = _interleave(ok_m, ok_p)
    item_seeds = torch.tensor([side_seed(s, k) for s in seeds.tolist() for k in (False, True)], dtype=torch.long)
    G = len(Rn)
    img_of_item = ii.repeat_interleave(2)
    img_of_member = img_of_item.repeat_interleave(S)
    sign = torch.sign(grad)
    if shuffle_mode == "fixed":
        perms = torch.cat([shuffle_permutations(int(s), n, S) for s in item_seeds.tolist()])
        d = permute(Rn.repeat_interleave(S, 0), perms) * sign[img_of_member]
        direction = fixed_directions(d)
        active = active & group_any((d != 0).flatten(1).any(1), torch.arange(G * S, device=dev) // S, G)
    else:
        d = None
        direction = PerStepShuffles(Rn, sign, img_of_item, item_seeds, S)
    target_of = info.target[img_of_member]
    fwd = Forward(model, x, info.target, img_of_member, direction, clip=clip, batch_size=batch_size)
    eps, cens, nfw, _ = run_engine(mode, fwd, target_of, S, G, int(bound), active, block=block, info=info,
                                    img_of_member=img_of_member, d=d, on_pass=_bar_hook(bar))
    return {"eps": eps, "censored": cens, "n_forward": nfw}
