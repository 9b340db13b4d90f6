r"""APEM on any PyTorch classifier: :func:`score`, and :class:`APEM`, the same metric as a Quantus metric.

``apem.score(model, x, target, maps=...)`` (or ``method=``) returns, per image,
:math:`\epsilon^-`, :math:`\epsilon^+`, APEM :math:`= \epsilon^+ - \epsilon^-`, the
censoring flags and the reason for every undefined row (:class:`Scores`). It
needs only torch and numpy (the lean install): it is
:func:`apem.metric.evaluate_maps` behind the checks a user's inputs need, with
the maps made from an explanation method by the thesis's visualisation stage
(:func:`apem.maps.stage_map`) when no maps are given.

``apem.APEM()`` follows Quantus's metric call (``metric(model=, x_batch=,
y_batch=, a_batch=, ...)`` returning one score per image, higher is better),
so ``quantus.evaluate`` runs it beside Pixel-Flipping or ROAD.

Units: the epsilons are steps in the units of ``x``. apem's own models take
pixels in [0, 1] (their normalisation is their first layer,
:mod:`apem.models`), so a step of 1 is one L1 unit of the normalised map spread
over the image's pixels; a model fed normalised images measures in those units.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from apem.metric.directions import REASONS
from apem.metric.spec import SearchSpec


@dataclass
class Scores:
    """Per image: the epsilons, APEM, censoring and the reasons a row is undefined (numpy arrays, one row per image).

    ``apem`` is NaN where either side is undefined (a map with no direction,
    ``reason`` says why); a censored side (no step below ``spec.bound`` changed
    the prediction) keeps the bound, a lower bound of its epsilon, so a mean over
    censored rows is a bound, not an estimate: :meth:`table` and the book's
    :func:`apem.stats.summary_table` say so.
    """

    target: np.ndarray
    eps_minus: np.ndarray
    eps_plus: np.ndarray
    censored_minus: np.ndarray
    censored_plus: np.ndarray
    undefined_minus: np.ndarray
    undefined_plus: np.ndarray
    reason: np.ndarray
    n_forward: np.ndarray
    spec: SearchSpec = field(default_factory=SearchSpec)

    @property
    def apem(self) -> np.ndarray:
        a = (self.eps_plus - self.eps_minus).astype(np.float64)
        return np.where(self.undefined_minus | self.undefined_plus, np.nan, a)

    @property
    def censored(self) -> np.ndarray:
        return self.censored_minus | self.censored_plus

    def __len__(self) -> int:
        return len(self.eps_minus)

    def __repr__(self) -> str:
        und = int((self.undefined_minus | self.undefined_plus).sum())
        return (f"Scores({len(self)} images: {len(self) - und} defined, {int(self.censored.sum())} censored "
                f"(bound {self.spec.bound}), {und} undefined; search {self.spec.mode})")

    def table(self):
        """A pandas DataFrame, one row per image (the columns of the book's results table)."""
        import pandas as pd

        return pd.DataFrame({"target": self.target, "eps_minus": self.eps_minus, "eps_plus": self.eps_plus,
                             "apem": self.apem, "censored_minus": self.censored_minus,
                             "censored_plus": self.censored_plus, "undefined_minus": self.undefined_minus,
                             "undefined_plus": self.undefined_plus, "reason": self.reason,
                             "n_forward": self.n_forward})


def _module(model) -> nn.Module:
    from apem.explain.base import unwrap_model

    return unwrap_model(model)[0]


def _images(x, dtype, device) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"x must be float images (N, C, H, W), got {x.dtype} of shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("x holds NaN or inf values")
    return x.to(device=device, dtype=dtype)


def check_classifier(net: nn.Module, x: torch.Tensor) -> int:
    """The number of classes ``net`` outputs for ``x[:2]``; ValueError unless its output is (N, classes)."""
    with torch.no_grad():
        out = net(x[:2])
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"the model returns {type(out).__name__}, not a tensor of logits (N, classes)")
    if out.ndim != 2 or out.shape[0] != len(x[:2]) or out.shape[1] < 2:
        raise ValueError(f"the model's output has shape {tuple(out.shape)} for {len(x[:2])} image(s): APEM needs "
                         "logits of shape (N, classes) with at least 2 classes")
    return int(out.shape[1])


def _maps_from(method, model, x: torch.Tensor, target, stage: int, quantize: bool, method_params: dict | None):
    """Relevance maps of ``x`` by ``method`` (a name, a :class:`~apem.explain.base.Method` or a callable)."""
    from apem.explain.base import Method, as_attribution, check_finite, get_method
    from apem.maps import stage_map

    if isinstance(method, str):
        fn, name = get_method(method, **(method_params or {})), method
    elif callable(method):
        if method_params:
            raise ValueError("method_params go with a method name; a callable takes its parameters itself")
        fn, name = method, getattr(method, "name", getattr(method, "__name__", type(method).__name__))
    else:
        raise TypeError(f"method must be a name or a callable (model, x, target) -> attribution, got {type(method).__name__}")
    a = fn(model, x, target)
    if not isinstance(fn, Method):  # a Method checks its own output
        a = as_attribution(a, x, name)
        check_finite(name, a)
    return stage_map(a.to(x.dtype), x, stage, quantize=quantize)


def score(model, x, target=None, *, maps=None, method=None, method_params: dict | None = None, stage: int = 3,
          quantize: bool = True, spec: SearchSpec | None = None, progress: bool = False, **settings) -> Scores:
    r"""APEM of each image of ``x``: :math:`\epsilon^-` along its relevance map, :math:`\epsilon^+` along ``1 - map``.

    ``model``: any ``torch.nn.Module`` returning logits (N, classes) (or an
    :class:`apem.models.LoadedModel`), used as it is (put it in ``eval()``
    mode); the search runs on its device. ``x`` (N, C, H, W): images as the
    model takes them (tensor or numpy). ``target``: the class whose prediction
    must change, one per image (default: the model's prediction, as the thesis).

    The maps: ``maps`` (N, 1 or C, H, W) in [0, 1], one per image; or ``method``,
    an explanation method name (``"gradient"``, ``"captum:IntegratedGradients"``,
    ``"zennit:epsilon_plus_flat"``, ``"mymodule:my_function"``; parameters in
    ``method_params``) or a callable ``(model, x, target) -> attribution`` of
    ``x``'s shape, turned into maps by the thesis's visualisation ``stage``
    (:func:`apem.maps.stage_map`; 3, the thesis's final map, quantised to 256
    levels as its PNGs unless ``quantize=False``).

    ``spec``: the :class:`~apem.metric.SearchSpec` (mode, bound, batch size),
    keyword ``settings`` on top (``mode="thesis"``, ``bound=2001``). Returns
    :class:`Scores`. Bad input fails with one line: images that are not (N, C, H, W)
    or hold NaN, a model whose output is not (N, classes), maps of another shape,
    outside [0, 1] or with NaN, a method that returns another shape or NaN.
    """
    from apem.explain.base import as_target
    from apem.metric.evaluate import check_maps, evaluate_maps

    net = _module(model)
    p = next(iter(net.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    x = _images(x, p.dtype if p is not None and p.is_floating_point() else torch.float32, device)
    classes = check_classifier(net, x)
    t = as_target(target, x)
    if t is not None and ((t < 0) | (t >= classes)).any():
        raise ValueError(f"target holds class indices outside 0 .. {classes - 1}")
    if (maps is None) == (method is None):
        raise ValueError("give either maps (N, 1 or C, H, W) in [0, 1] or an explanation method, not both or neither")
    if maps is None:
        m = _maps_from(method, model, x, t, stage, quantize, method_params)
    else:
        m = torch.as_tensor(np.asarray(maps) if not isinstance(maps, torch.Tensor) else maps).to(device)
        if m.ndim != 4 or m.shape[0] != len(x) or m.shape[1] not in (1, x.shape[1]) or m.shape[2:] != x.shape[2:]:
            raise ValueError(f"maps must have shape ({len(x)}, 1 or {x.shape[1]}, {x.shape[2]}, {x.shape[3]}), one per "
                             f"image; got {tuple(m.shape)}")
        if not torch.isfinite(m).all():
            raise ValueError("maps hold NaN or inf values")
        m = m.to(x.dtype)
        check_maps(m)
    spec = SearchSpec.build(spec, **settings)
    if spec.shuffles:
        raise ValueError("score() computes APEM; the shuffled baseline of APEM_norm runs in apem.metric.evaluate_maps")
    if t is None:
        with torch.no_grad():
            t = net(x).argmax(1)
    r = evaluate_maps(net, x, m, t, spec=spec, progress=progress)
    code = np.where(r["undefined_minus"].numpy(), r["reason_minus"].numpy(), r["reason_plus"].numpy())
    side = np.where(r["undefined_minus"].numpy(), "eps-minus: ", np.where(r["undefined_plus"].numpy(), "eps-plus: ", ""))
    reason = np.array([s + REASONS[int(c)] if c else "" for s, c in zip(side, code)], dtype=object)
    return Scores(target=t.cpu().numpy(), eps_minus=r["eps_minus"].numpy(), eps_plus=r["eps_plus"].numpy(),
                  censored_minus=r["censored_minus"].numpy().astype(bool),
                  censored_plus=r["censored_plus"].numpy().astype(bool),
                  undefined_minus=r["undefined_minus"].numpy().astype(bool),
                  undefined_plus=r["undefined_plus"].numpy().astype(bool), reason=reason,
                  n_forward=r["n_forward"].numpy(), spec=spec)


class APEM:
    """APEM as a Quantus metric: ``APEM()(model=, x_batch=, y_batch=, a_batch=)`` -> one score per image.

    ``a_batch`` holds raw attributions (what ``quantus.explain`` returns, (N, 1
    or C, H, W)); they become relevance maps by the thesis's visualisation
    ``stage`` (3, its final map; ``stage=None`` takes ``a_batch`` as maps in [0,
    1] already). Without ``a_batch``, ``explain_func(model=, inputs=, targets=,
    **explain_func_kwargs)`` makes them, as Quantus's metrics do. ``target``:
    ``"prediction"`` (the thesis: the search waits for the model's answer to
    change) or ``"label"`` (``y_batch``). Higher is better (an explanation whose
    relevant pixels flip the prediction sooner than its irrelevant ones),
    declared as Quantus declares it (:attr:`score_direction`). A row whose APEM
    is undefined scores NaN: aggregate with ``np.nanmean``. :attr:`scores` keeps the
    last call's :class:`Scores` (epsilons, censoring, reasons).
    """

    name = "APEM"

    def __init__(self, *, stage: int | None = 3, quantize: bool = True, target: str = "prediction",
                 spec: SearchSpec | None = None, return_aggregate: bool = False, aggregate_func=None,
                 disable_warnings: bool = True, display_progressbar: bool = False, **settings):
        if target not in ("prediction", "label"):
            raise ValueError(f"target must be 'prediction' or 'label', got {target!r}")
        self.stage, self.quantize, self.target = stage, quantize, target
        self.spec = SearchSpec.build(spec, **settings)
        self.return_aggregate, self.aggregate_func = return_aggregate, aggregate_func or np.nanmean
        self.disable_warnings, self.display_progressbar = disable_warnings, display_progressbar
        self.scores: Scores | None = None
        self.evaluation_scores: list = []

    @property
    def score_direction(self):
        """``quantus.ScoreDirection.HIGHER`` (the string ``"higher"`` when Quantus is not installed)."""
        try:
            from quantus.helpers.enums import ScoreDirection
        except ImportError:
            return "higher"
        return ScoreDirection.HIGHER

    @property
    def evaluation_category(self):
        """``quantus.EvaluationCategory.FAITHFULNESS`` (``"Faithfulness"`` without Quantus)."""
        try:
            from quantus.helpers.enums import EvaluationCategory
        except ImportError:
            return "Faithfulness"
        return EvaluationCategory.FAITHFULNESS

    def __call__(self, model, x_batch, y_batch, a_batch=None, s_batch=None, channel_first: bool | None = True,
                 explain_func=None, explain_func_kwargs=None, device=None, batch_size: int | None = None, **kwargs):
        net = _module(model)
        if device is not None:
            net = net.to(device)
        if a_batch is None:
            if explain_func is None:
                raise ValueError("APEM needs a_batch or an explain_func to make it")
            a_batch = explain_func(model=net, inputs=x_batch, targets=y_batch, **(explain_func_kwargs or {}))
        p = next(iter(net.parameters()), None)
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        dev = p.device if p is not None else torch.device("cpu")
        x = _images(x_batch, dtype, dev)
        a = torch.as_tensor(np.asarray(a_batch)).to(device=dev, dtype=dtype)
        if a.ndim == 3:
            a = a[:, None]
        y = torch.as_tensor(np.asarray(y_batch)).long().to(dev)
        if self.stage is None:
            maps = a
        else:
            from apem.maps import stage_map

            if a.ndim == 4 and a.shape[1] == 1 and a.shape[0] == len(x):
                a = a.expand(-1, x.shape[1], -1, -1)
            maps = stage_map(a, x, self.stage, quantize=self.quantize)
        spec = self.spec if batch_size is None else self.spec.replace(batch_size=batch_size)
        self.scores = score(net, x, y if self.target == "label" else None, maps=maps, spec=spec,
                            progress=self.display_progressbar)
        self.evaluation_scores = [float(v) for v in self.scores.apem]
        if self.return_aggregate:
            return [float(self.aggregate_func(self.evaluation_scores))]
        return self.evaluation_scores
