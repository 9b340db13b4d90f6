r"""Directions :math:`d = R / \lVert R \rVert_1 \odot \operatorname{sign}(g)`, undefined maps, shuffles."""

from __future__ import annotations

import torch

from apem.seeds import seed_of

#: Reason codes for undefined items (``SearchResult.reason``); 0 = defined.
REASONS = (
    "",
    "zero L1 norm: the map is all zero, so it gives no direction",
    "the map has non-finite values",
    "zero direction: sign(grad) is 0 wherever the map is non-zero",
    "marked undefined by the caller",
)
REASON_ZERO_NORM, REASON_NONFINITE, REASON_ZERO_DIRECTION, REASON_CALLER = 1, 2, 3, 4


def _expand3(maps: torch.Tensor) -> torch.Tensor:
    if maps.dim() != 4 or maps.shape[1] not in (1, 3):
        raise ValueError(f"maps must have shape (M, 1 or 3, H, W), got {tuple(maps.shape)}")
    return maps.expand(-1, 3, -1, -1)


def normalised(maps: torch.Tensor, dtype, device):
    r"""``(Rn, ok, reason)``: :math:`R / \lVert R \rVert_1` as (M, 3, H, W) in ``dtype`` (zero where undefined).

    The division is done in float64 and rounded once to ``dtype``, so a map
    scaled by a positive constant normalises to the same tensor (up to that
    one rounding; bit for bit for powers of two).
    """
    # Every step below is a pass over M x 3HW values, so the common case (finite, non-negative
    # maps) skips the ones that would not change a bit: the where, the abs and the masking.
    R = _expand3(maps).to(device=device)
    isf = torch.isfinite(R)
    finite = isf.flatten(1).all(1)
    R64 = R.to(torch.float64)
    if not bool(finite.all()):
        R64 = torch.where(isf, R64, torch.zeros((), dtype=torch.float64, device=device))
    del isf
    norm = (R64 if bool(R64.amin() >= 0) else R64.abs()).flatten(1).sum(1)
    ok = finite & (norm > 0)
    safe = torch.where(ok, norm, torch.ones_like(norm))
    Rn = (R64 / safe[:, None, None, None]).to(dtype)
    del R64
    if not bool(ok.all()):
        Rn[~ok] = 0
    reason = torch.zeros(len(Rn), dtype=torch.long, device=device)
    reason[finite & ~(norm > 0)] = REASON_ZERO_NORM
    reason[~finite] = REASON_NONFINITE
    return Rn, ok, reason


def permute(Rn: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Permute all ``3 H W`` values of each row: ``Rn.flatten(1)[:, perm]``."""
    perm = perm.to(Rn.device).long()
    flat = Rn.reshape(len(Rn), -1)
    flat = flat[:, perm] if perm.dim() == 1 else flat.gather(1, perm)
    return flat.view_as(Rn)


def directions(maps, grad, *, image_index=None, shuffle_perm=None, return_reason=False, out=None):
    r"""Directions :math:`d = R / \lVert R\rVert_1 \odot \operatorname{sign}(g)`.

    ``maps`` (M, 1 or 3, H, W); ``grad`` (M, 3, H, W) aligned with the maps,
    or per image (B, 3, H, W) with ``image_index`` (M,). ``shuffle_perm``
    (M, 3HW) or (3HW,): permute the flattened normalised 3-channel map before
    taking the sign, ``Rn.flatten()[perm]``.

    Returns ``(d, defined)`` (and ``reason`` codes, see :data:`REASONS`, with
    ``return_reason``); undefined rows of ``d`` are zero. ``out``: an
    (M, 3, H, W) tensor (a view is fine) to write ``d`` into.
    """
    sg = torch.sign(grad)  # per image, then gathered: one pass over B images instead of M maps
    if image_index is not None:
        sg = sg[torch.as_tensor(image_index, device=grad.device).long()]
    if maps.shape[0] != sg.shape[0] or tuple(maps.shape[2:]) != tuple(sg.shape[2:]):
        raise ValueError(f"maps {tuple(maps.shape)} do not match gradients {tuple(sg.shape)}")
    Rn, ok, reason = normalised(maps, grad.dtype, grad.device)
    if shuffle_perm is not None:
        Rn = permute(Rn, shuffle_perm)
    d = torch.mul(Rn, sg, out=out)
    del Rn, sg
    nonzero = (d != 0).flatten(1).any(1)
    defined = ok & nonzero
    reason[ok & ~nonzero] = REASON_ZERO_DIRECTION
    return (d, defined, reason) if return_reason else (d, defined)


def side_seed(seed: int, irrelevance: bool) -> int:
    """The seed of one side of a map: :func:`apem.seeds.seed_of` ``(seed, 0)`` (relevance) or ``(seed, 1)``."""
    return seed_of(int(seed), int(bool(irrelevance)))


def shuffle_permutations(seed: int, n_values: int, shuffles: int) -> torch.Tensor:
    """``shuffles`` permutations of ``range(n_values)`` from ``torch.Generator().manual_seed(seed)`` (CPU)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.stack([torch.randperm(n_values, generator=gen) for _ in range(shuffles)])


def map_shuffle_permutations(seed: int, n_values: int, shuffles: int, irrelevance: bool = False) -> torch.Tensor:
    """The ``shuffles`` fixed permutations :func:`evaluate_maps` uses for a map with per-item ``seed``.

    The relevance map (``eps_shuffle_minus``) draws from ``side_seed(seed, False)``
    and the irrelevance map (``eps_shuffle_plus``) from ``side_seed(seed, True)``;
    per-step shuffles draw from the same generators, ``shuffles`` per tested step.
    """
    return shuffle_permutations(side_seed(seed, irrelevance), n_values, shuffles)


# ----------------------------------------------------------------------------- permutations drawn on a device
#
# A torch.Generator is one sequential stream: drawing a permutation per (item, draw) from per-item generators
# needs the host to know which items a pass requests (a synchronisation) and one randperm call per row. On an
# accelerator per-step shuffles instead sort the row's 3HW positions by a keyed bijection of [0, 2**32): keys
# are computed for all rows of a batch at once, on the device, from (item seed, draw number) alone.

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9
#: rounds of the keyed mixer that orders a row's positions (each one: xor a round key, then murmur3's fmix32)
KEY_ROUNDS = 3


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2**32`` for int64 ``x`` in ``[0, 2**32)``, exactly: ``c`` is taken in ``(-2**31, 2**31)``."""
    c = c - (1 << 32) if c >= 1 << 31 else c  # |x * c| < 2**63: no int64 overflow; & keeps the low 32 bits
    return (x * c) & _M32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """murmur3's finaliser, a bijection of ``[0, 2**32)`` (int64 tensors holding 32-bit values)."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def _round_keys(seeds: torch.Tensor, draws: torch.Tensor) -> list[torch.Tensor]:
    """:data:`KEY_ROUNDS` 32-bit keys per row from its 63-bit ``seed`` and ``draw`` number (two chained digests)."""
    words = [seeds & _M32, (seeds >> 32) & _M32, draws & _M32, (draws >> 32) & _M32]
    h1 = torch.full_like(seeds, 0x243F6A88)
    h2 = torch.full_like(seeds, 0x85A308D3)
    for w in words:
        h1 = _fmix32(h1 ^ w)
        h2 = _fmix32((h2 + _mul32(w, _GOLDEN)) & _M32)
    return [_fmix32(_mul32((h1 + r) & _M32, _GOLDEN) ^ h2) for r in range(KEY_ROUNDS)]


def keyed_permutations(seeds: torch.Tensor, draws: torch.Tensor, n_values: int) -> torch.Tensor:
    """One permutation of ``range(n_values)`` per row, a function of ``(seeds[r], draws[r])`` only, on their device.

    Row ``r`` sorts the positions ``j`` by ``k_r(j)``, a bijection of ``[0, 2**32)`` keyed by the row's seed
    and draw number (:data:`KEY_ROUNDS` rounds of xor-key-then-fmix32), so keys never tie and the order is
    deterministic. A row does not depend on the other rows, on the batch, or on the device: the arithmetic is
    exact int64 (products stay below 2**63). Used by per-step shuffles on an accelerator
    (:class:`apem.metric.forward.PerStepShuffles`); these are not the permutations a CPU generator draws.
    """
    if n_values > 1 << 32:
        raise ValueError(f"keyed permutations cover at most 2**32 values, got {n_values}")
    seeds = torch.as_tensor(seeds).long()
    draws = torch.as_tensor(draws, device=seeds.device).long()
    keys = _round_keys(seeds, draws)
    v = torch.arange(n_values, dtype=torch.long, device=seeds.device).expand(len(seeds), -1)
    for k in keys:
        v = _fmix32(v ^ k[:, None])
    # 32-bit keys shifted into int32 (same order): a cheaper sort than int64
    return torch.argsort((v - (1 << 31)).to(torch.int32), dim=1, stable=True)


def perturbation_size(maps: torch.Tensor, eps) -> dict:
    r"""How large the perturbation :math:`x' - x = \varepsilon\, d` is, per map, at step ``eps`` (no clipping).

    ``maps`` (M, 1 or 3, H, W): the maps the search perturbs along (for ε⁺ the irrelevance
    map, :math:`1 - R`); ``eps`` a number or (M,) steps. Since :math:`|d| = |R| / \lVert R
    \rVert_1` wherever the gradient's sign is not 0, the change of each input value is
    :math:`\varepsilon |R| / \lVert R \rVert_1`, known from the map alone:

    - ``max_change``: the largest change of any input value, in units of the [0, 1] pixel range
      (times 255: 8-bit grey levels);
    - ``psnr``: :math:`10 \log_{10}(1 / \mathrm{MSE})` dB over the :math:`3HW` values (peak 1),
      infinite for a zero step.

    An undefined map (all zero, non-finite) gives NaN. A zero gradient sign zeroes a value of
    ``d``, so the true change can only be smaller: both figures are then bounds (the largest
    change an upper one, the PSNR a lower one).
    """
    Rn, ok, _ = normalised(maps, torch.float64, maps.device)
    e = torch.as_tensor(eps, dtype=torch.float64, device=maps.device).expand(len(Rn))
    flat = Rn.abs().flatten(1)
    max_change = e * flat.amax(1)
    mse = e.square() * flat.square().mean(1)
    psnr = torch.where(mse > 0, 10 * torch.log10(1 / mse), torch.full_like(mse, float("inf")))
    nan = torch.full_like(mse, float("nan"))
    return {"max_change": torch.where(ok, max_change, nan), "psnr": torch.where(ok, psnr, nan)}
