"""Explanation methods named by where they live: ``captum:ClassName``, ``zennit:composite``, ``module:function``.

A researcher's method need not be in the registry (:data:`apem.explain.METHODS`):
:func:`external_class` turns such a name into a :class:`~apem.explain.base.Method`
subclass, so it takes parameters, is validated at load time and runs in the
runner, the command line and :func:`apem.score` like the built-in methods.

``captum:ClassName``
    any attribution class of ``captum.attr`` whose constructor takes the
    forward function (``Saliency``, ``IntegratedGradients``, ``DeepLift``,
    ``GradientShap``, ``Occlusion``, ...). Its parameters are those of its
    ``attribute`` method (``n_steps``, ``internal_batch_size``, ...) and of its
    constructor (``multiply_by_inputs``), with captum's defaults; the target is
    the class logit (captum's convention; ``objective: loss`` explains the loss).
``zennit:composite``
    an LRP composite of ``zennit.composites`` by registry name
    (``epsilon_plus_flat``) or class name (``EpsilonPlusFlat``), its
    constructor's parameters as parameters (``epsilon``, or ``low``/``high`` of
    ``EpsilonGammaBox``), with apem's canonizers
    (:func:`apem.explain.timm_canonizers.lrp_canonizers`) and relevance passed
    straight through the model's normalisation layer; output relevance: the
    target's one-hot logit (zennit's convention; ``objective: loss`` starts from
    the softmax, as :mod:`apem.explain.lrp`).
``module:function``
    the user's own code: ``function(model, x, target, **params)`` returning an
    attribution of ``x``'s shape (N, 3, H, W), or one channel (N, 1, H, W),
    which is repeated over the three; ``target`` is a LongTensor (N,) (the
    model's prediction when the caller gives none). Its keyword parameters with
    defaults are the method's parameters. The module is imported by name (the
    current directory is searched too; with ``--ray`` on a cluster, every worker
    must be able to import it: the same folder or an installed package).

Parameter values are what a YAML file or ``-p`` can hold: numbers, booleans,
text, null, and lists of those. The store keys a method by its name, its
parameters and, for ``module:function``, a digest of its module's source (so
editing the function recomputes its maps), for the libraries their version.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import sys
from functools import lru_cache

import torch

from apem.explain.base import Method, as_attribution, objective_model, resolve_target

_SCALARS = (type(None), bool, int, float, str)


def yaml_value(v):
    """A parameter value a configuration can hold (numbers, booleans, text, null, lists of them)."""
    if isinstance(v, _SCALARS) or (isinstance(v, (list, tuple)) and all(isinstance(e, _SCALARS) for e in v)):
        return v
    raise ValueError(f"expected a number, boolean, text, null or a list of them, got {type(v).__name__}")


def _required(name: str, missing: list[str]):
    def check(v):
        if v is None:
            raise ValueError(f"{name} needs it (no default): give {', '.join(missing)}")
        return yaml_value(v)

    return check


def _signature_spec(fn, skip: set[str], what: str) -> dict:
    """``parameter -> (default, validator)`` from a signature: keyword parameters beyond ``skip``."""
    spec = {}
    params = inspect.signature(fn).parameters.values()
    missing = [p.name for p in params if p.name not in skip and p.default is inspect.Parameter.empty
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for p in params:
        if p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is inspect.Parameter.empty:
            spec[p.name] = (None, _required(what, missing))
        else:
            spec[p.name] = (p.default if isinstance(p.default, _SCALARS) else None, yaml_value)
    return spec


def _given(params: dict, spec_keys) -> dict:
    """The parameters to hand on: those set to something other than None (None: the callee's default)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in params.items() if k in spec_keys and v is not None}


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{module} {version(module)}"
    except PackageNotFoundError:  # pragma: no cover - imported, so installed
        return module


# --------------------------------------------------------------------------- captum


def _from_forward_func(cls) -> bool:
    """A captum class built from the forward function alone (not a layer, neuron or abstract attribution)."""
    import captum.attr as ca

    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return (bool(params) and params[0].name in ("forward_func", "model") and callable(getattr(cls, "attribute", None))
            and cls not in (ca.GradientAttribution, ca.PerturbationAttribution)
            and all(p.default is not inspect.Parameter.empty for p in params[1:]))


def _captum_class(cls_name: str) -> type[Method]:
    try:
        import captum.attr as ca
    except ImportError:
        raise ValueError("captum: methods need captum: pip install 'apem[methods]'") from None
    cls = getattr(ca, cls_name, None)
    if not (inspect.isclass(cls) and issubclass(cls, ca.Attribution)):
        known = sorted(n for n, c in vars(ca).items() if inspect.isclass(c) and issubclass(c, ca.Attribution)
                       and _from_forward_func(c) and "LLM" not in n and not n.startswith("_"))
        raise ValueError(f"unknown captum method {cls_name!r}; captum.attr has {', '.join(known)}")
    if not _from_forward_func(cls):
        raise ValueError(f"captum:{cls_name} is not built from the forward function alone (layer and neuron "
                         "attributions need a layer: apem's gradcam method wraps LayerGradCam)")
    attr_spec = _signature_spec(cls.attribute, {"self", "inputs", "target", "additional_forward_args"},
                                f"captum:{cls_name}")
    init_spec = _signature_spec(cls.__init__, {"self", "forward_func", "model"}, f"captum:{cls_name}")

    def _attribute(self, model, x, target, default_layer):
        target = resolve_target(model, x, target)
        p = self.params
        method = cls(objective_model(model, p["objective"]), **_given(p, init_spec))
        a = method.attribute(x.detach().clone().requires_grad_(True), target=target, **_given(p, attr_spec))
        return a[0] if isinstance(a, tuple) else a

    return type(f"Captum{cls_name}", (Method,), {
        "name": f"captum:{cls_name}", "objective": "logit", "spec": {**init_spec, **attr_spec},
        "library": _version("captum"), "_attribute": _attribute, "__doc__": f"captum.attr.{cls_name} (see {__name__})."})


# --------------------------------------------------------------------------- zennit


def _zennit_class(comp_name: str) -> type[Method]:
    try:
        from zennit import composites
    except ImportError:
        raise ValueError("zennit: methods need zennit: pip install 'apem[methods]'") from None
    cls = composites.COMPOSITES.get(comp_name) or getattr(composites, comp_name, None)
    if not (inspect.isclass(cls) and issubclass(cls, composites.Composite)) or cls is composites.Composite:
        raise ValueError(f"unknown zennit composite {comp_name!r}; zennit.composites.COMPOSITES has "
                         f"{', '.join(sorted(composites.COMPOSITES))}")
    skip = {"self", "layer_map", "first_map", "zero_params", "canonizers", "module_map"}
    spec = _signature_spec(cls.__init__, skip, f"zennit:{comp_name}")
    takes_layer_map = "layer_map" in inspect.signature(cls.__init__).parameters

    def _attribute(self, model, x, target, default_layer):
        from zennit.attribution import Gradient as ZGradient
        from zennit.rules import Pass

        from apem.explain.lrp import output_relevance
        from apem.explain.timm_canonizers import lrp_canonizers
        from apem.models import Normalize

        kw = _given(self.params, spec)
        if takes_layer_map:  # the model's first layer, (x - mean) / std, passes relevance through
            kw["layer_map"] = [(Normalize, Pass())]
        composite = cls(canonizers=lrp_canonizers(model), **kw)
        rout = output_relevance(model, x, target, self.params["objective"])
        xin = x.detach().clone().requires_grad_(True)
        try:  # registered by hand, as apem.explain.lrp does: a canonizer failing half-way must be undone
            composite.register(model)
            with torch.enable_grad():
                _, relevance = ZGradient(model, composite)(xin, lambda out: rout(out.detach()))
        finally:
            composite.remove()
        return relevance

    return type(f"Zennit{cls.__name__}", (Method,), {
        "name": f"zennit:{comp_name}", "objective": "logit", "spec": spec, "library": _version("zennit"),
        "_attribute": _attribute, "__doc__": f"zennit.composites.{cls.__name__} (see {__name__})."})


# --------------------------------------------------------------------------- module:function


def _import(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module.split(".")[0] or os.getcwd() in sys.path:
            raise ValueError(f"cannot import module {module!r}: {e}") from None
    sys.path.insert(0, os.getcwd())  # a console script does not search the current directory; python -m does
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise ValueError(f"cannot import module {module!r} (searched sys.path and {os.getcwd()}): {e}") from None


def _function_class(module: str, fn_name: str) -> type[Method]:
    name = f"{module}:{fn_name}"
    mod = _import(module)
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise ValueError(f"{name}: module {module!r} has no function {fn_name!r}")
    try:
        code = hashlib.sha256(inspect.getsource(mod).encode()).hexdigest()[:16]
    except (OSError, TypeError):  # no source to read (a compiled module): its qualified name only
        code = f"no source: {getattr(mod, '__file__', module)}"
    positional = [p.name for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:3]
    if len(positional) < 3:
        raise ValueError(f"{name} must take (model, x, target, **params); its signature is {inspect.signature(fn)}")
    spec = _signature_spec(fn, set(positional), name)
    spec.pop("objective", None)

    def _attribute(self, model, x, target, default_layer):
        target = resolve_target(model, x, target)
        return as_attribution(fn(model, x, target, **{k: v for k, v in self.params.items() if k != "objective"}), x,
                              name)

    return type(f"Function_{fn_name}", (Method,), {
        "name": name, "objective": "loss", "spec": spec, "code": code, "_attribute": _attribute,
        "__doc__": (fn.__doc__ or f"{name} (see {__name__}).")})


@lru_cache(maxsize=None)
def external_class(name: str) -> type[Method]:
    """The :class:`Method` class of ``captum:ClassName``, ``zennit:composite`` or ``module:function``.

    ValueError (one line) for a name that does not resolve. The same name gives the same class.
    """
    prefix, _, rest = name.partition(":")
    if not prefix or not rest:
        raise ValueError(f"method {name!r}: expected captum:ClassName, zennit:composite or module:function")
    if prefix == "captum":
        return _captum_class(rest)
    if prefix == "zennit":
        return _zennit_class(rest)
    return _function_class(prefix, rest)
