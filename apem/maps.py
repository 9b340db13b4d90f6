"""The thesis's visualisation stages (sections 4.2 and 4.4): raw attribution -> relevance map.

From a raw attribution ``A`` (N, 3, H, W) and the images ``x`` (N, 3, H, W) in
[0, 1], per image:

1. ``C = min(|A|, p99(|A|))`` with the 99th percentile over the image's
   3*H*W values, min-max scaled to [0, 1]: a 3-channel map;
2. ``sum_c C``, min-max scaled: a 1-channel map;
3. ``sum_c C * x``, min-max scaled: a 1-channel map (the thesis's final map).

Min-max scaling is ``(v - min) / (max - min)`` over each image's values. A
constant map (``max == min``) becomes all zeros: no pixel is more relevant
than another. The thesis stored every map as an 8-bit PNG, so by default the
maps are quantised to 256 levels (:func:`quantize`).

Encodings (``encoding=``, the configuration's ``map_encoding``)
    ``"round"`` (default): exact min-max, then ``round(m * 255) / 255``.
    ``"save_image"``: what the thesis's code wrote, ``torchvision.utils.save_image(
    normalize=True)`` of its time (torchvision 0.2): min-max dividing by
    ``max - min + 1e-5`` and conversion to uint8 by truncation,
    ``floor(m * 255) / 255``. For maps whose value range is small (raw
    gradients are ~1e-3), the ``+ 1e-5`` keeps the top value below 1 and the
    truncation lowers every level by up to one step; chapter 4 measures how
    much the epsilons move.

Everything is batched (no loop over images) and stays on the input's device.
"""

from __future__ import annotations

import math

import numpy as np
import torch

STAGES = (1, 2, 3)
ENCODINGS = ("round", "save_image")
SAVE_IMAGE_EPS = 1e-5  # torchvision 0.2's save_image(normalize=True): (v - min) / (max - min + 1e-5)


def percentile(v: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q``-th percentile (0..100) of each row of ``v`` (N, M), linear interpolation.

    Same definition as ``numpy.percentile(method="linear")`` and
    ``torch.quantile(interpolation="linear")``: with the row sorted ascending,
    position ``p = q/100 * (M - 1)``, value ``s[floor p] + (p - floor p) *
    (s[floor p + 1] - s[floor p])``. Computed with two ``kthvalue`` calls
    rather than ``torch.quantile``, which refuses inputs of more than 2**24
    values (a batch of 112 images of 3 x 224 x 224) and sorts the whole row.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    m = v.shape[1]
    pos = q / 100 * (m - 1)
    lo = int(math.floor(pos))
    frac = pos - lo
    low = v.kthvalue(lo + 1, dim=1).values
    if frac == 0 or lo + 1 >= m:
        return low
    high = v.kthvalue(lo + 2, dim=1).values
    return low + (high - low) * frac


def minmax(v: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Per image ``(v - min) / (max - min + eps)`` over all of an image's values; constant images -> 0."""
    flat = v.reshape(len(v), -1)
    lo = flat.min(1, keepdim=True).values
    rng = flat.max(1, keepdim=True).values - lo
    if eps > 0:
        return ((flat - lo) / (rng + eps)).reshape(v.shape)
    out = torch.where(rng > 0, (flat - lo) / torch.where(rng > 0, rng, torch.ones_like(rng)), torch.zeros_like(flat))
    return out.reshape(v.shape)


def clamp_abs(a: torch.Tensor, q: float = 99.0) -> torch.Tensor:
    """``min(|A|, p_q(|A|))`` per image, ``p_q`` the :func:`percentile` over its C*H*W values."""
    mag = a.abs()
    cap = percentile(mag.reshape(len(mag), -1), q)
    return torch.minimum(mag, cap.view(-1, *([1] * (mag.ndim - 1))))


def quantize(m: torch.Tensor, levels: int = 256, mode: str = "round") -> torch.Tensor:
    """``round(m * (levels - 1)) / (levels - 1)``: what an 8-bit PNG keeps of a map in [0, 1].

    ``torch.round`` rounds halves to even (0.5 * 255 = 127.5 -> 128). ``mode="floor"``
    truncates instead, as ``tensor.mul(255).byte()`` did in torchvision 0.2's ``save_image``.
    """
    if levels < 2:
        raise ValueError(f"quantize needs at least 2 levels, got {levels}")
    if mode not in ("round", "floor"):
        raise ValueError(f"quantize mode must be 'round' or 'floor', got {mode!r}")
    op = torch.round if mode == "round" else torch.floor
    return op(m * (levels - 1)) / (levels - 1)


def _check(a: torch.Tensor, x: torch.Tensor) -> None:
    if a.ndim != 4 or a.shape != x.shape:
        raise ValueError(f"attribution {tuple(a.shape)} and images {tuple(x.shape)} must both be (N, C, H, W)")
    if not torch.isfinite(a).all():
        bad = int((~torch.isfinite(a).reshape(len(a), -1).all(1)).sum())
        raise ValueError(f"attribution holds NaN/inf values in {bad} of {len(a)} image(s)")


def _from_clamped(c: torch.Tensor, x: torch.Tensor, stage: int, eps: float = 0.0) -> torch.Tensor:
    if stage == 1:
        return minmax(c, eps)
    if stage == 2:
        return minmax(c.sum(1, keepdim=True), eps)
    if stage == 3:
        return minmax((c * x).sum(1, keepdim=True), eps)
    raise ValueError(f"unknown visualisation stage {stage!r}; stages are {STAGES}")


def stage_maps(a: torch.Tensor, x: torch.Tensor, stages=STAGES, quantize: bool = True,
               levels: int = 256, encoding: str = "round") -> dict[int, torch.Tensor]:
    """``{stage: map}`` for the requested stages (see the module docstring).

    Stage 1 maps are (N, 3, H, W), stages 2 and 3 (N, 1, H, W), all in [0, 1]
    (quantised to ``levels`` when ``quantize``). The p99 clamp is computed once.
    ``encoding``: ``"round"`` or ``"save_image"`` (the thesis's files; needs ``quantize``).
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown map encoding {encoding!r}; encodings are {ENCODINGS}")
    if encoding == "save_image" and not quantize:
        raise ValueError("the save_image encoding writes 8-bit maps: it needs quantize=True")
    eps, mode = (SAVE_IMAGE_EPS, "floor") if encoding == "save_image" else (0.0, "round")
    for s in stages:
        if s not in STAGES:
            raise ValueError(f"unknown visualisation stage {s!r}; stages are {STAGES}")
    _check(a, x)
    c = clamp_abs(a)
    x = x.to(c.dtype)
    out = {}
    for s in stages:
        m = _from_clamped(c, x, s, eps)
        out[s] = _quantize(m, levels, mode) if quantize else m
    return out


def stage_map(a: torch.Tensor, x: torch.Tensor, stage: int, quantize: bool = True, levels: int = 256,
              encoding: str = "round") -> torch.Tensor:
    """The map of one visualisation stage (1, 2 or 3); see :func:`stage_maps`."""
    return stage_maps(a, x, (stage,), quantize=quantize, levels=levels, encoding=encoding)[stage]


_quantize = quantize  # the stage functions' `quantize` flag shadows the function's name


# ----------------------------------------------------------------------------- storage


def to_storage(m: torch.Tensor, quantized: bool) -> np.ndarray:
    """Maps in [0, 1] -> uint8 (exact for 256-level maps) or float16."""
    if quantized:
        return torch.round(m.float() * 255).to(torch.uint8).numpy()
    return m.float().numpy().astype(np.float16)


def from_storage(a: np.ndarray) -> torch.Tensor:
    """Stored maps (uint8 or float16) back to float32 maps in [0, 1]."""
    a = np.asarray(a)
    t = torch.from_numpy(a if a.flags.writeable else a.copy())  # arrays that came through Ray are read-only
    return t.float() / 255 if t.dtype == torch.uint8 else t.float()


def change(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r"""How much two maps of the same images differ as *perturbations*: per image, in [0, 1].

    Each map is L1-normalised over its :math:`3HW` values (a one-channel map counts its three
    copies), exactly as the search normalises it (:func:`apem.metric.directions`), and the
    result is half the L1 distance of the two, :math:`\tfrac12 \lVert a/\lVert a\rVert_1 -
    b/\lVert b\rVert_1 \rVert_1`: the share of the perturbation's budget that moves to other
    input values (the total variation distance of the two maps read as distributions). 0 when
    one map is a positive multiple of the other, 1 when they share no non-zero value. NaN where
    either map is all zero. ``a``, ``b``: (N, 1 or 3, H, W).
    """
    from apem.metric.directions import normalised

    na, oka, _ = normalised(a, torch.float64, a.device)
    nb, okb, _ = normalised(b.to(a.device), torch.float64, a.device)
    d = 0.5 * (na.abs() - nb.abs()).abs().flatten(1).sum(1)
    return torch.where(oka & okb, d, torch.full_like(d, float("nan")))
