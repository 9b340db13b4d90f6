"""The explanation-method interface: :class:`Method`, parameter validation, the objective, the registry.

Every method is a :class:`Method` subclass registered with :func:`register`
under its ``name``; :data:`METHODS` maps names to classes, :func:`get_method`
builds a configured one, :func:`method_params` lists its parameters and
:func:`check_params` validates their values without building anything else.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch
from torch import nn

from apem.metric.clean import loss_gradient


class AttributionError(ValueError):
    """An attribution holds NaN or inf values."""


# --------------------------------------------------------------------------- helpers


def unwrap_model(model) -> tuple[nn.Module, str | None]:
    """``(nn.Module, default Grad-CAM layer)`` from an ``nn.Module`` or a ``LoadedModel``."""
    if isinstance(model, nn.Module):
        return model, None
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module):  # apem.models.LoadedModel (duck-typed: no import cycle)
        return inner, getattr(model, "gradcam_layer", None)
    raise TypeError(f"model must be a torch.nn.Module or an apem LoadedModel, got {type(model).__name__}")


@torch.no_grad()
def predict_targets(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's prediction ``argmax_c logits_c(x)`` as a LongTensor (N,)."""
    return model(x).argmax(1)


def as_target(target, x: torch.Tensor) -> torch.Tensor | None:
    if target is None:
        return None
    t = torch.as_tensor(target, device=x.device).long().reshape(-1)
    if t.numel() == 1 and len(x) > 1:
        t = t.expand(len(x))
    if t.shape != (len(x),):
        raise ValueError(f"target must have one class index per image ({len(x)}), got shape {tuple(t.shape)}")
    return t


def resolve_target(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    return predict_targets(model, x) if target is None else target


def grad_input(x: torch.Tensor) -> torch.Tensor:
    """A leaf copy of ``x`` that requires grad (captum warns when it must set the flag itself)."""
    return x.detach().clone().requires_grad_(True)


def check_finite(name: str, attribution: torch.Tensor) -> None:
    """Raise :class:`AttributionError` naming ``name`` and how many images hold NaN/inf."""
    bad = ~torch.isfinite(attribution).reshape(len(attribution), -1).all(1)
    k = int(bad.sum())
    if k:
        idx = bad.nonzero().flatten().tolist()
        shown = ", ".join(map(str, idx[:10])) + (" ..." if k > 10 else "")
        raise AttributionError(
            f"{name}: the attribution holds NaN/inf values in {k} of {len(attribution)} image(s) "
            f"(batch positions {shown})"
        )


def as_attribution(a, x: torch.Tensor, name: str) -> torch.Tensor:
    """A user function's output as an attribution of ``x``'s shape: one channel (N, 1, H, W) is repeated over
    ``x``'s channels; any other shape is a ValueError naming ``name`` and both shapes."""
    a = torch.as_tensor(a).to(device=x.device)
    if a.ndim == 4 and a.shape[0] == len(x) and a.shape[1] == 1 and a.shape[2:] == x.shape[2:]:
        a = a.expand_as(x)
    if tuple(a.shape) != tuple(x.shape):
        raise ValueError(f"{name} returned an attribution of shape {tuple(a.shape)} for images of shape "
                         f"{tuple(x.shape)}: expected {tuple(x.shape)} or {(len(x), 1, *x.shape[2:])}")
    return a.to(x.dtype)


@contextmanager
def model_state_kept(model: nn.Module):
    """Restore every parameter's ``requires_grad`` and the ``training`` flags on exit.

    Captum and zennit remove their own hooks and canonizers; this guards the
    flags so that an exception half-way cannot leave the model changed.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for p, rg in flags:
            p.requires_grad_(rg)
        for m, tr in modes:
            m.training = tr


def submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as e:
        names = [n for n, _ in model.named_modules() if n]
        raise ValueError(f"no module named {name!r} in the model (e.g. {names[-3:]})") from e


def last_conv_name(model: nn.Module) -> str:
    """Dotted name of the last ``nn.Conv2d`` in ``model.named_modules()`` order."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise ValueError("the model has no Conv2d layer: give Grad-CAM a layer name (layer=...)")
    return names[-1]


# --------------------------------------------------------------------------- parameter checks


def positive_int(v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"expected a positive integer, got {v!r}")
    return int(v)


def nonneg_int(v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise ValueError(f"expected a non-negative integer, got {v!r}")
    return int(v)


def nonneg_float(v):
    f = None
    if not isinstance(v, bool) and isinstance(v, (int, float, np.floating, np.integer)):
        try:  # float(), not np.isfinite: an int beyond int64 (sigma: 2**70) is a number, 10**400 is too large
            f = float(v)
        except OverflowError:
            f = None
    if f is None or not math.isfinite(f) or f < 0:
        raise ValueError(f"expected a finite number >= 0, got {v!r}")
    return f


def boolean(v):
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"expected true or false, got {v!r}")
    return bool(v)


def optional_int(v):
    return None if v is None else nonneg_int(v)


def optional_keys(v):
    """None, or a sequence of integers >= 0 (one per image: SmoothGrad's ``noise_keys``)."""
    if v is None:
        return None
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__"):
        raise ValueError(f"expected a list of non-negative integers (one per image) or null, got {v!r}")
    return tuple(nonneg_int(k) for k in v)


def optional_str(v):
    if v is not None and not isinstance(v, str):
        raise ValueError(f"expected a module name (string) or null, got {v!r}")
    return v


def choice(*options):
    def check(v):
        if v not in options:
            raise ValueError(f"expected one of {options}, got {v!r}")
        return v

    return check


# --------------------------------------------------------------------------- the interface


OBJECTIVES = ("loss", "logit")


class LossOutput(nn.Module):
    """``x -> -log_softmax(model(x))``: output ``c`` is the cross-entropy ``CE(model(x), c)``.

    A method that explains output ``t`` of this module explains the loss at
    target ``t``, whatever it does to a model's outputs (captum's methods take it as is).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return -torch.log_softmax(self.model(x), 1)


def objective_model(model: nn.Module, objective: str) -> nn.Module:
    """The function a method explains: the loss per class (:class:`LossOutput`) or the logits themselves."""
    return LossOutput(model) if objective == "loss" else model


def objective_gradient(model: nn.Module, x: torch.Tensor, target, objective: str) -> torch.Tensor:
    """``d objective / dx``: the loss gradient (:func:`apem.metric.clean.loss_gradient`) or that of the target logit."""
    if objective == "loss":
        return loss_gradient(model, x, target)[0]
    xg = grad_input(x)
    with torch.enable_grad():
        z = model(xg)
        t = z.argmax(1) if target is None else target
        (g,) = torch.autograd.grad(z.gather(1, t[:, None]).sum(), xg)
    return g.detach()


class Method:
    """A configured explanation method: ``method(model, x, target=None) -> attribution``.

    Subclasses set ``name``, ``spec`` (parameter -> (default, validator)),
    ``objective`` (the default of the ``objective`` parameter every method
    takes: ``"loss"``, the cross-entropy at the target, or ``"logit"``, the
    target class's logit; see :func:`objective_model`) and implement
    ``_attribute(model, x, target, default_layer)``.
    """

    name: str = ""
    spec: dict[str, tuple[object, Callable]] = {}
    objective: str = "loss"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.spec = {**cls.spec, "objective": (cls.objective, choice(*OBJECTIVES))}

    def __init__(self, **params):
        unknown = sorted(set(params) - set(self.spec))
        if unknown:
            allowed = ", ".join(self.spec) or "none"
            raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for method {self.name!r} (allowed: {allowed})")
        self.params = {}
        for key, (default, check) in self.spec.items():
            value = params.get(key, default)
            try:
                self.params[key] = check(value)
            except ValueError as e:
                raise ValueError(f"method {self.name!r}, parameter {key!r}: {e}") from None

    @classmethod
    def defaults(cls) -> dict:
        return {k: d for k, (d, _) in cls.spec.items()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    def __call__(self, model, x: torch.Tensor, target=None) -> torch.Tensor:
        net, default_layer = unwrap_model(model)
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"{self.name}: x must be a float tensor (N, C, H, W), got {getattr(x, 'shape', type(x))}")
        target = as_target(target, x)
        # gradients are needed even when the caller runs under no_grad or inference_mode
        with model_state_kept(net), torch.inference_mode(False), torch.enable_grad():
            x = x.detach().clone() if x.is_inference() else x.detach()
            try:
                a = self._attribute(net, x, target, default_layer)
            except ModuleNotFoundError as e:  # the lean install: LRP and captum come with apem[methods]
                raise ImportError(f"method {self.name!r} needs the package {e.name!r}: pip install 'apem[methods]'") from None
        a = a.detach().to(x.device)
        if a.shape != x.shape:  # pragma: no cover - a bug in a method
            raise RuntimeError(f"{self.name}: attribution shape {tuple(a.shape)} != input shape {tuple(x.shape)}")
        check_finite(self.name, a)
        return a

    def _attribute(self, model, x, target, default_layer):  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------- registry

#: Every method by name, in the order they were registered (see :func:`register`).
METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add a :class:`Method` subclass to :data:`METHODS` under its ``name``."""
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    """The class of method ``name``: a registered name, or ``captum:ClassName``, ``zennit:composite`` or
    ``module:function`` (:func:`apem.explain.external.external_class`); ValueError naming the known ones otherwise."""
    if name in METHODS:
        return METHODS[name]
    if ":" in str(name):
        from apem.explain.external import external_class

        return external_class(str(name))
    raise ValueError(f"unknown explanation method {name!r}; choose one of {sorted(METHODS)}, "
                     "captum:ClassName, zennit:composite or module:function")


def method_params(name: str) -> dict:
    """The parameters of method ``name`` with their defaults (ValueError for an unknown name)."""
    return method_class(name).defaults()


def check_params(name: str, params: dict) -> dict:
    """Validate ``params`` for method ``name`` as building it would, without a model: the checked values.

    Every parameter goes through the checker its class declares in ``spec``
    (and a subclass's cross-parameter checks, such as LRP's alpha - beta = 1);
    ValueError names the method, the parameter and the value. Building a
    :class:`Method` does no work beyond this, so the configuration can call it
    at load time (:func:`apem.config.Config.validate`), long before any image
    is classified.
    """
    return dict(method_class(name)(**dict(params or {})).params)


def get_method(name: str, **params) -> Method:
    """A configured method ``m``; ``m(model, x, target=None)`` returns the attribution.

    ValueError names an unknown method, an unknown parameter, or a bad value.
    """
    return method_class(name)(**params)


def attribute(model, x: torch.Tensor, target=None, method: str = "gradient", **params) -> torch.Tensor:
    """``get_method(method, **params)(model, x, target)``."""
    return get_method(method, **params)(model, x, target)
