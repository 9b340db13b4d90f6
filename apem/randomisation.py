"""Model parameter randomisation: the sanity check of Adebayo et al. (2018).

An explanation that depends on what the model learned must change when the
learned weights are destroyed. The *cascading* test re-initialises the
model's parameterised layers from the top (the logits) down, one stage at a
time and cumulatively, and compares each explanation of the randomised model
with the original one (:func:`map_similarity`: Spearman rank correlation and
SSIM). The *independent* test re-initialises one stage at a time.

Stages (:func:`randomization_stages`)
    The parameterised layers of the network in forward (registration) order,
    grouped so that one stage is one architectural unit, then reversed (top
    first). Rules, applied to the children of ``net`` (an apem model is
    ``Sequential(normalize, net)``; the parameter-free ``normalize`` layer is
    never a stage and never changes):

    - a child that is a container (``features``, ``classifier``, ``blocks``)
      contributes one stage per parameterised child of its own
      (``features.28``, ``classifier.6``, ``blocks.6``);
    - a parameterised leaf child is a stage (``conv_stem``, ``classifier``);
    - a normalisation layer (BatchNorm, GroupNorm, LayerNorm) joins the stage
      of the layer before it (``conv_stem+bn1``, ``conv_head+bn2``).

    timm's EfficientNet-Lite0: ``classifier, conv_head+bn2, blocks.6, ...,
    blocks.0, conv_stem+bn1``; torchvision's VGG-16: ``classifier.6,
    classifier.3, classifier.0, features.28, features.26, ..., features.0``.

Re-initialisation
    Every parameterised module of a stage calls its own ``reset_parameters()``
    -- PyTorch's default initialisation for that layer type (Conv/Linear:
    Kaiming-uniform, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for the bias),
    which is also what Quantus's ``ModelParameterRandomisation`` does -- under
    a seed derived from ``(seed, stage name)``, so a stage gets the same
    weights whether it is reached by the cascade, the independent test or
    :func:`randomize_all`, and the global RNG is left as it was. A module with
    parameters but no ``reset_parameters`` gets ``N(0, s^2)`` weights, ``s``
    the standard deviation of its trained tensor. The random weights depend on
    the device (CPU and CUDA generators differ).

BatchNorm
    ``batchnorm="reset"`` (default) re-initialises BatchNorm layers with their
    ``reset_parameters()`` too: ``gamma = 1, beta = 0``, running mean 0 and
    variance 1 (Quantus does the same). That is a re-initialisation rather
    than randomness -- a BatchNorm layer is a per-channel affine map, so
    random ``gamma, beta`` would only rescale channels -- and it removes the
    learned statistics, which would otherwise keep normalising the random
    convolution's outputs with the trained layer's moments.
    ``batchnorm="keep"`` leaves BatchNorm layers (parameters and statistics)
    trained.

Reference
    Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim (2018), "Sanity Checks for
    Saliency Maps", NeurIPS.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from apem.seeds import seed_of
from apem.correlation import rank_correlation

_NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


@dataclass(frozen=True)
class Stage:
    """One randomisation stage: a readable name and the dotted names of its modules in the model."""

    name: str
    modules: tuple[str, ...]


def _unwrap(model) -> nn.Module:
    """An apem ``LoadedModel`` or a plain module -> the module."""
    return model.model if hasattr(model, "model") and isinstance(model.model, nn.Module) else model


def _net(model: nn.Module) -> tuple[nn.Module, str]:
    """The network inside ``Sequential(normalize, net)``, with its prefix; else the model itself."""
    net = getattr(model, "net", None)
    if isinstance(net, nn.Module):
        return net, "net."
    return model, ""


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def randomization_stages(model) -> list[Stage]:
    """The model's randomisation stages, top (logits) first. See the module docstring for the rules."""
    net, prefix = _net(_unwrap(model))
    units: list[tuple[str, nn.Module]] = []  # forward order
    for name, child in net.named_children():
        if not _has_params(child):
            continue
        grand = [(f"{name}.{n}", c) for n, c in child.named_children() if _has_params(c)]
        if grand and not any(True for _ in child.parameters(recurse=False)):
            units.extend(grand)
        else:
            units.append((name, child))
    stages: list[list[str]] = []
    for name, mod in units:
        if isinstance(mod, _NORM_LAYERS) and stages:
            stages[-1].append(name)  # BatchNorm belongs to the layer before it
        else:
            stages.append([name])
    return [Stage("+".join(s), tuple(prefix + n for n in s)) for s in reversed(stages)]


def _stage_seed(seed: int, name: str) -> int:
    return seed_of(int(seed), name)


def _reinit_module(mod: nn.Module, batchnorm: str) -> None:
    """Re-initialise ``mod`` and every parameterised submodule (see the module docstring)."""
    for sub in mod.modules():
        own = list(sub.parameters(recurse=False))
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            if batchnorm == "reset":
                sub.reset_parameters()  # gamma=1, beta=0, running stats (0, 1)
            continue
        if not own:
            continue
        if hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
        else:
            with torch.no_grad():
                for p in own:
                    s = float(p.float().std()) if p.numel() > 1 else 0.0
                    p.normal_(0.0, s if s > 0 else 0.01)


def _randomize_stage(model: nn.Module, stage: Stage, seed: int, batchnorm: str) -> None:
    """In place: re-initialise every module of ``stage`` under the stage's own seed."""
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):  # leave the caller's RNG streams alone
        torch.manual_seed(_stage_seed(seed, stage.name))
        mods = dict(model.named_modules())
        with torch.no_grad():
            for name in stage.modules:
                _reinit_module(mods[name], batchnorm)


def _select(stages: list[Stage], layers) -> list[Stage]:
    if layers is None:
        return stages
    if isinstance(layers, int):
        return stages[:layers]
    names = [s.name if isinstance(s, Stage) else str(s) for s in layers]
    known = {s.name for s in stages}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; the model's stages are {[s.name for s in stages]}")
    return [s for s in stages if s.name in set(names)]  # always top-down


def _check_batchnorm(batchnorm: str) -> None:
    if batchnorm not in ("reset", "keep"):
        raise ValueError(f"batchnorm must be 'reset' or 'keep', not {batchnorm!r}")


def cascading_randomization(model, layers=None, seed: int = 0, batchnorm: str = "reset",
                            ) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(stage_name, model_copy)`` with the top stages re-initialised, cumulatively.

    The k-th copy has stages 1..k (top first, :func:`randomization_stages`)
    re-initialised. ``layers``: ``None`` for every stage, an int ``k`` for the
    top ``k``, or a list of stage names / :class:`Stage` (taken in top-down
    order; stages not listed stay trained). ``model`` (an ``nn.Module`` or a
    ``LoadedModel``) is never modified: a deep copy is randomised step by step
    and each yielded model is an independent copy of it (keep it or drop it).
    The copies are in ``eval()`` mode, on the model's device.
    """
    _check_batchnorm(batchnorm)
    base = _unwrap(model)
    work = copy.deepcopy(base).eval()
    for stage in _select(randomization_stages(base), layers):
        _randomize_stage(work, stage, seed, batchnorm)
        yield stage.name, copy.deepcopy(work)


def independent_randomization(model, layers=None, seed: int = 0, batchnorm: str = "reset",
                              ) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(stage_name, model_copy)`` with only that one stage re-initialised (top first)."""
    _check_batchnorm(batchnorm)
    base = _unwrap(model)
    for stage in _select(randomization_stages(base), layers):
        work = copy.deepcopy(base).eval()
        _randomize_stage(work, stage, seed, batchnorm)
        yield stage.name, work


def randomize_all(model, seed: int = 0, batchnorm: str = "reset") -> nn.Module:
    """A copy of ``model`` with every stage re-initialised: the last model of the cascade."""
    _check_batchnorm(batchnorm)
    base = _unwrap(model)
    work = copy.deepcopy(base).eval()
    for stage in randomization_stages(base):
        _randomize_stage(work, stage, seed, batchnorm)
    return work


# ----------------------------------------------------------------------------- similarity


def _to_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().float().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def _as_maps(a) -> np.ndarray:
    """(N, H, W) or (N, C, H, W) -> (N, C, H, W)."""
    a = _to_numpy(a)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise ValueError(f"maps must be (N, H, W) or (N, C, H, W), got shape {a.shape}")
    return a


def map_similarity(a, b, abs: bool = True) -> pd.DataFrame:
    """Per-image similarity of two batches of maps: Spearman rank correlation and SSIM.

    ``a, b``: (N, H, W) or (N, C, H, W) maps in [0, 1] (torch or numpy).
    Returns a DataFrame with one row per image and columns

    - ``spearman``: Spearman's rho between the flattened ``|a|`` and ``|b|``
      (``abs=True``, as in Adebayo et al. 2018, Sec. 4) over all values,
      ties averaged; NaN when either map is constant;
    - ``ssim``: :func:`skimage.metrics.structural_similarity` with
      ``data_range=1`` on the 2-D maps (Wang et al. 2004; 7x7 Gaussian-free
      window, skimage's defaults); a C-channel map is compared channel by
      channel and the SSIMs averaged (``channel_axis``).

    Raises ``ValueError`` for maps outside [0, 1] (SSIM's constants assume
    that range) or of different shapes.
    """
    from skimage.metrics import structural_similarity

    a, b = _as_maps(a), _as_maps(b)
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    tol = 1e-6
    if min(a.min(initial=0), b.min(initial=0)) < -tol or max(a.max(initial=0), b.max(initial=0)) > 1 + tol:
        raise ValueError("map_similarity expects maps in [0, 1] (SSIM uses data_range=1): normalise them first")
    n, c = a.shape[:2]
    fa, fb = a.reshape(n, -1), b.reshape(n, -1)
    rho = rank_correlation(np.abs(fa), np.abs(fb), axis=1) if abs else rank_correlation(fa, fb, axis=1)
    if c == 1:
        ssim = [structural_similarity(a[i, 0], b[i, 0], data_range=1.0) for i in range(n)]
    else:
        ssim = [structural_similarity(a[i], b[i], data_range=1.0, channel_axis=0) for i in range(n)]
    return pd.DataFrame({"spearman": rho, "ssim": np.asarray(ssim, dtype=float)})
