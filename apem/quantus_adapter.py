"""APEM among faithfulness metrics: our maps and models fed to Quantus 0.6.0 itself.

Four Quantus metrics score the same maps that APEM scores:

================================  =======================================  =====================================
metric (Quantus class)            what Quantus returns per image           our scalar (higher = more faithful)
================================  =======================================  =====================================
``PixelFlipping`` (Bach 2015)     p(y) after each step of removing the     ``1 - AUC_norm``
                                  most relevant features (set to "black")
``Selectivity`` (Montavon 2018)   p(y) after each most-relevant patch is   ``1 - AUC_norm``
                                  set to "black"
``ROAD`` (Rong 2022), MoRF        1 if the prediction stays ``y`` after    ``1 - AUC_norm``
                                  imputing the top p% pixels, else 0
``FaithfulnessCorrelation``       Pearson r between the relevance summed   r as it is
(Bhatt 2020)                      over random feature subsets and the
                                  output drop when they are removed
================================  =======================================  =====================================

``AUC_norm`` is the trapezoidal area under the curve divided by the width of
its x-axis: ``quantus.helpers.utils.calculate_auc(curve) / (T - 1)`` for the
``T``-step Pixel-Flipping and Selectivity curves (steps equally spaced) and
``np.trapz(curve, percentages) / (max - min)`` for ROAD. It is a mean height in
[0, 1] (the curves are probabilities or 0/1 accuracies). Quantus scores these
three curves with lower = better (``score_direction = LOWER``): removing what
a faithful map marks relevant first destroys the prediction fast. We report
``1 - AUC_norm`` so that **higher = more faithful for all four**, like APEM.
The raw curves are kept in :class:`QuantusResult`.

Inputs: images ``x`` (N, C, H, W) in the model's input space ([0, 1] pixels
for apem models, so Quantus's "black" baseline -- the per-image minimum -- is
black), targets ``y`` (the model's predictions, as in the thesis) and maps
(N, H, W), (N, 1, H, W) or (N, C, H, W). Quantus broadcasts a one-channel
map over the channels and ranks the C*H*W channel values; it normalises maps
by their maximum, which changes none of these scores. Quantus's own defaults
are kept unless listed below. ``softmax`` is each metric's Quantus default:
probabilities for Pixel-Flipping, Selectivity and ROAD, logits for
Faithfulness Correlation.

Defaults chosen for cost (:func:`default_params`, for a C x H x W image)
    Forward passes dominate; EfficientNet-Lite0 takes about 11-13 ms per
    224x224 image on a 2-core CPU, so ~60 passes per image is ~1 s.

    - Pixel-Flipping: ``features_in_step = H*W / k`` with ``k`` the divisor
      of ``H*W`` nearest to ``48 / C`` (Quantus asserts that
      ``features_in_step`` divides ``H*W``): ``C*k`` steps -- 48 steps of
      3,136 channel values (~2% of the pixels) for 224x224 RGB (Quantus's
      default, 1, would be 150,528 passes). 224*224 has no factor 3, so a
      step may end inside a pixel's three channels.
    - Selectivity: ``patch_size = ceil(H / 8)``: 64 patches (28x28 pixels
      at 224; Quantus's default 8 gives 784).
    - ROAD: ``percentages = (5, 10, 20, 30, 40, 50)`` (Quantus: 1, 3, ...,
      99); ``noise = 0.01``. Its cost is mostly scipy's sparse solve of the
      imputation, which grows with the imputed fraction: measured on
      224x224 gradient maps, ~0.02-0.25 s per percentage up to 50% but
      ~0.4-1.1 s each at 60-90%; pass ``percentages`` to go further.
    - Faithfulness Correlation: ``nr_runs = 64`` (Quantus: 100),
      ``subset_size = 224`` channel values (Quantus's default),
      ``return_aggregate = False`` (Quantus's default returns the batch mean).

ROAD workaround (Quantus 0.6.0)
    Stock ``quantus.ROAD`` cannot score a 3-channel image with any map shape.
    It broadcasts the map to the image's (C, H, W), ranks all C*H*W channel
    values, keeps the top ``int(a_size * p / 100)`` of them (``a_size`` is
    the size of the *map* of the first image: H*W for an (N, 1, H, W) map,
    C*H*W for an (N, C, H, W) one) and hands those flat channel-value
    indices to ``noisy_linear_imputation``, which imputes *pixels* and
    indexes a mask of H*W entries with them: any index >= H*W raises
    ``IndexError`` (an (N, H, W) map becomes (N, 1, H, W) first). We pass the
    map broadcast to (N, C, H, W), so ``a_size = C*H*W`` and the kept count
    is p% of the channel values, and replace the perturbation function by
    :func:`pixel_noisy_linear_imputation`: it folds each channel-value index
    to its pixel (``i mod H*W``), keeps the pixels in order of first
    appearance (a pixel ranks by its most relevant channel) and imputes the
    first ``ceil(k / C)`` of them -- p% of the pixels, the most relevant
    first -- with Quantus's own ``noisy_linear_imputation``. Ties between
    pixels (quantised maps) therefore cannot inflate the count.

    Stock ROAD also averages its 0/1 results over the images of the *first
    batch* only (``custom_postprocess``); to get per-image curves we call it
    once per image.

Randomness
    ROAD's noise and Faithfulness Correlation's subsets come from NumPy's
    global generator. Both metrics are called one image at a time, each
    call seeded with ``seed`` (the global state is restored afterwards), so
    an image's score does not depend on the other images in the call.
    Pixel-Flipping and Selectivity are deterministic and run in batches.

Cost
    :func:`quantus_evaluate` wraps the model in :class:`CountingModel` and
    reports forward calls, images forwarded and seconds per image. Measured
    with these defaults on EfficientNet-Lite0, 8 sample images, 224x224
    ``|gradient|`` maps, CPU, one torch thread on a shared 2-core machine (a
    plain forward pass: ~14-16 ms per image)::

        metric                     forwards/image   s/image
        PixelFlipping              48               0.7
        Selectivity                64               0.9
        ROAD                        6 (+ solves)    0.8
        FaithfulnessCorrelation    65 (batch 1)     1.2

    (Quantus's own defaults would need 150,528, 784, 50 + 50 solves up to
    99%, and 101 forward passes per image.)

References
    Bach et al. (2015) PLoS ONE 10(7); Montavon, Samek, Mueller (2018) Digital
    Signal Processing 73; Rong et al. (2022) "A Consistent and Efficient
    Evaluation Strategy for Attribution Methods", ICML; Bhatt, Weller, Moura
    (2020) IJCAI; Hedstroem et al. (2023) "Quantus", JMLR 24(34).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from apem.numerics import no_tf32

METRICS = ("PixelFlipping", "Selectivity", "ROAD", "FaithfulnessCorrelation")
CURVE_METRICS = ("PixelFlipping", "Selectivity", "ROAD")

_ALIASES = {m.lower(): m for m in METRICS}
_ALIASES.update({"pf": "PixelFlipping", "faithfulnesscorr": "FaithfulnessCorrelation", "fc": "FaithfulnessCorrelation"})


def canonical_name(name: str) -> str:
    """``"pixel_flipping"``, ``"Pixel-Flipping"``, ``"PixelFlipping"`` -> ``"PixelFlipping"``."""
    key = "".join(ch for ch in str(name).lower() if ch.isalnum())
    if key not in _ALIASES:
        raise ValueError(f"unknown faithfulness metric {name!r}; choose one of {METRICS}")
    return _ALIASES[key]


# ----------------------------------------------------------------------------- parameters


def _nearest_divisor(n: int, target: float) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(math.log(d / target)), d))


def default_params(metric_name: str, image_shape=(3, 224, 224)) -> dict:
    """The affordable defaults of this module for a (C, H, W) image (see the module docstring)."""
    name = canonical_name(metric_name)
    c, h, w = (int(s) for s in image_shape[-3:])
    if name == "PixelFlipping":
        k = _nearest_divisor(h * w, 48 / c)
        return {"features_in_step": h * w // k}
    if name == "Selectivity":
        return {"patch_size": max(1, math.ceil(h / 8))}
    if name == "ROAD":
        return {"percentages": [5, 10, 20, 30, 40, 50], "noise": 0.01}
    return {"nr_runs": 64, "subset_size": min(224, c * h * w - 1), "return_aggregate": False}


def pixel_noisy_linear_imputation(arr: np.ndarray, indices, noise: float = 0.01, **kwargs) -> np.ndarray:
    """ROAD's imputation for channel-value indices: fold them to pixels, then impute the pixels.

    ``arr``: one image (C, H, W). ``indices``: the top ``k`` flat indices
    into C*H*W, most relevant first, as stock ``quantus.ROAD`` produces them.
    Each index becomes its pixel ``i mod H*W``; the pixels are kept in order of
    first appearance and the first ``ceil(k / C)`` are imputed by
    :func:`quantus.functions.perturb_func.noisy_linear_imputation` (the
    8-neighbour linear system of Rong et al. 2022, plus ``noise`` times
    standard normal noise). See the module docstring for why.
    """
    from quantus.functions.perturb_func import noisy_linear_imputation

    c = arr.shape[0]
    hw = int(np.prod(arr.shape[1:]))
    idx = np.asarray(indices, dtype=np.int64).ravel()
    if idx.size == 0:
        return arr.copy()
    pix = idx % hw
    _, first = np.unique(pix, return_index=True)
    ordered = pix[np.sort(first)]
    keep = ordered[: -(-idx.size // c)]
    return noisy_linear_imputation(arr, keep, noise=noise, **kwargs)


def make_metric(metric_name: str, params: dict | None = None, image_shape=(3, 224, 224)):
    """A Quantus metric instance with this module's defaults, overridden by ``params``."""
    import quantus

    name = canonical_name(metric_name)
    kw = {"disable_warnings": True, "display_progressbar": False, **default_params(name, image_shape)}
    kw.update(params or {})
    if name == "ROAD" and kw.get("perturb_func") is None:
        kw["perturb_func"] = pixel_noisy_linear_imputation  # the workaround (module docstring)
    return getattr(quantus, name)(**kw)


# ----------------------------------------------------------------------------- model counting


class CountingModel(nn.Module):
    """Wraps a model and counts its forward calls and the images they carried."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.calls = 0
        self.images = 0
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images += int(x.shape[0])
        return self.model(x)


# ----------------------------------------------------------------------------- evaluation


@dataclass
class QuantusResult:
    """Per-image scores (higher = more faithful) with the raw curves and the cost."""

    metric: str
    scores: np.ndarray                 # (N,)
    curves: np.ndarray | None          # (N, T) for the curve metrics, else None
    x_axis: np.ndarray | None          # (T,) step index, or ROAD's percentages
    forward_calls: int
    forward_images: int
    seconds: float
    n_images: int
    params: dict = field(default_factory=dict)

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(1, self.n_images)

    @property
    def forwards_per_image(self) -> float:
        """Images forwarded per scored image (one batched call of B images counts B)."""
        return self.forward_images / max(1, self.n_images)


def _to_numpy(a, dtype=np.float32) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(a), dtype=dtype)


def _prepare_maps(maps, x: np.ndarray) -> np.ndarray:
    """(N, H, W) / (N, 1, H, W) / (N, C, H, W) -> float32 (N, 1 or C, H, W)."""
    a = _to_numpy(maps)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4 or a.shape[0] != x.shape[0] or a.shape[2:] != x.shape[2:] or a.shape[1] not in (1, x.shape[1]):
        raise ValueError(f"maps of shape {a.shape} do not fit images of shape {x.shape}")
    return a


@contextlib.contextmanager
def _numpy_seed(seed: int):
    """Seed NumPy's global generator (which Quantus uses) and restore its state afterwards."""
    state = np.random.get_state()
    np.random.seed(int(seed) % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


def curve_auc(curves: np.ndarray, x_axis=None) -> np.ndarray:
    """Normalised trapezoidal AUC per row: ``trapz(curve, x) / (x[-1] - x[0])``.

    ``x_axis=None`` means equally spaced steps, where this is
    ``quantus.helpers.utils.calculate_auc(curve) / (T - 1)``. A one-point
    curve's AUC is its value.
    """
    from quantus.helpers.utils import calculate_auc

    curves = np.atleast_2d(np.asarray(curves, dtype=float))
    t = curves.shape[1]
    if t == 1:
        return curves[:, 0].copy()
    if x_axis is None:
        return calculate_auc(curves, batched=True) / (t - 1)
    x = np.asarray(x_axis, dtype=float)
    return np.trapz(curves, x=x, axis=1) / (x[-1] - x[0])


def _run(metric, model, x, y, a, device, batch_size):
    return metric(model=model, x_batch=x, y_batch=y, a_batch=a, channel_first=True,
                  device=device, batch_size=batch_size)


@no_tf32()
def quantus_evaluate(metric_name: str, model, x, y, maps, *, params: dict | None = None,
                     device: str | torch.device | None = None, batch_size: int = 64, seed: int = 0,
                     ) -> QuantusResult:
    """Score ``maps`` with one Quantus faithfulness metric; see the module docstring.

    ``model``: an ``nn.Module`` in ``eval()`` mode or an apem ``LoadedModel``;
    ``x``: (N, C, H, W) images; ``y``: (N,) target classes; ``maps``: (N, H, W),
    (N, 1, H, W) or (N, C, H, W); torch or numpy. ``params`` override
    :func:`default_params` and go to the Quantus constructor. ``device``:
    where Quantus puts its inputs (default: the model's device). Runs with TF32
    off (:func:`apem.numerics.no_tf32`), as APEM's searches do.
    """
    name = canonical_name(metric_name)
    net = model.model if hasattr(model, "model") and isinstance(model.model, nn.Module) else model
    if device is None:
        p = next(net.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = str(device)
    xs = _to_numpy(x)
    ys = _to_numpy(y, np.int64).ravel()
    a = _prepare_maps(maps, xs)
    n = xs.shape[0]
    counter = CountingModel(net)
    metric = make_metric(name, params, xs.shape[1:])
    used = metric.get_params if hasattr(metric, "get_params") else {}

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # Quantus warns on every step whose perturbation left an image unchanged
        # (e.g. "black" over pixels already at the minimum); that is expected here.
        warnings.filterwarnings("ignore", module=r"quantus\..*")
        if name == "ROAD":
            a = np.ascontiguousarray(np.broadcast_to(a, xs.shape))  # a_size = C*H*W (the workaround)
            rows = []
            for i in range(n):  # one image per call: per-image curves, per-image seed
                with _numpy_seed(seed):
                    out = _run(metric, counter, xs[i : i + 1], ys[i : i + 1], a[i : i + 1], device, 1)
                rows.append([out[p] for p in metric.percentages])
            curves = np.asarray(rows, dtype=float)
            x_axis = np.asarray(metric.percentages, dtype=float)
            scores = 1.0 - curve_auc(curves, x_axis)
        elif name == "FaithfulnessCorrelation":
            vals = []
            for i in range(n):
                with _numpy_seed(seed):
                    out = _run(metric, counter, xs[i : i + 1], ys[i : i + 1], a[i : i + 1], device, 1)
                vals.append(out[0])
            curves, x_axis = None, None
            scores = np.asarray(vals, dtype=float)
        else:  # PixelFlipping, Selectivity: deterministic, batched
            out = _run(metric, counter, xs, ys, a, device, batch_size)
            curves = np.asarray([np.asarray(c, dtype=float) for c in out])
            x_axis = np.arange(curves.shape[1], dtype=float)
            scores = 1.0 - curve_auc(curves)
    seconds = time.perf_counter() - t0
    return QuantusResult(metric=name, scores=np.asarray(scores, dtype=float), curves=curves, x_axis=x_axis,
                         forward_calls=counter.calls, forward_images=counter.images, seconds=seconds,
                         n_images=n, params=_plain_params(used))


def _plain_params(p) -> dict:
    try:
        return {k: v for k, v in dict(p).items() if isinstance(v, (int, float, str, bool, list, tuple, type(None)))}
    except Exception:  # pragma: no cover - Quantus's get_params is informational only
        return {}


@no_tf32()
def quantus_scores(metric_name: str, model, x, y, maps, *, params: dict | None = None,
                   device: str | torch.device | None = None, batch_size: int = 64, seed: int = 0) -> np.ndarray:
    """Per-image scores, higher = more faithful: :func:`quantus_evaluate`'s ``scores``."""
    return quantus_evaluate(metric_name, model, x, y, maps, params=params, device=device,
                            batch_size=batch_size, seed=seed).scores
