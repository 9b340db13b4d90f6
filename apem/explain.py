"""Explanation methods behind one interface.

Every method maps a batch ``x`` (N, 3, H, W) in [0, 1] pixels and its
targets (LongTensor (N,), or None for the model's own prediction) to a *raw*
attribution tensor of ``x``'s shape on ``x``'s device::

    from apem.explain import attribute, get_method, method_params
    A = attribute(model, x, method="smoothgrad", n=100, sigma=0.2)
    sg = get_method("smoothgrad", n=8)      # a callable: sg(model, x, target=None)
    method_params("lrp_epsilon")            # {'epsilon': 1.0, 'output': 'softmax'}

``model`` is an ``nn.Module`` taking [0, 1] pixels (every apem model is
``Sequential(normalize, net)``) or an :class:`apem.models.LoadedModel`.

The thesis's three methods (section 4.2) explain the **cross-entropy loss**
``CE(model(x), target)`` (its gradient is what APEM perturbs along):

``gradient``      ``dCE/dx`` (:func:`apem.metric.clean.loss_gradient`).
``smoothgrad``    ``1/n sum_k dCE(x + e_k)/dx``, ``e_k ~ N(0, sigma^2)`` in pixel units.
``lrp_epsilon``   LRP-epsilon (epsilon = 1) from the softmax output relevance.

The methods beyond the thesis go through captum and explain the **target
class logit** (captum's convention): ``integrated_gradients``,
``input_x_gradient``, ``guided_backprop``, ``gradcam``.

Any NaN or inf in an attribution raises :class:`AttributionError`. No method
leaves hooks, canonizers or changed ``requires_grad`` flags on the model.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from apem.metric.clean import loss_gradient
from apem.models import Normalize


class AttributionError(ValueError):
    """An attribution holds NaN or inf values."""


# --------------------------------------------------------------------------- helpers


def _unwrap(model) -> tuple[nn.Module, str | None]:
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


def _as_target(target, x: torch.Tensor) -> torch.Tensor | None:
    if target is None:
        return None
    t = torch.as_tensor(target, device=x.device).long().reshape(-1)
    if t.numel() == 1 and len(x) > 1:
        t = t.expand(len(x))
    if t.shape != (len(x),):
        raise ValueError(f"target must have one class index per image ({len(x)}), got shape {tuple(t.shape)}")
    return t


def _resolve_target(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    return predict_targets(model, x) if target is None else target


def _grad_input(x: torch.Tensor) -> torch.Tensor:
    """A leaf copy of ``x`` that requires grad (captum warns when it must set the flag itself)."""
    return x.detach().clone().requires_grad_(True)


def _check_finite(name: str, attribution: torch.Tensor) -> None:
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


@contextmanager
def _model_state_kept(model: nn.Module):
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


def _module(model: nn.Module, name: str) -> nn.Module:
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


def _positive_int(v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"expected a positive integer, got {v!r}")
    return int(v)


def _nonneg_int(v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise ValueError(f"expected a non-negative integer, got {v!r}")
    return int(v)


def _nonneg_float(v):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not np.isfinite(v) or v < 0:
        raise ValueError(f"expected a finite number >= 0, got {v!r}")
    return float(v)


def _bool(v):
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"expected true or false, got {v!r}")
    return bool(v)


def _optional_int(v):
    return None if v is None else _nonneg_int(v)


def _optional_str(v):
    if v is not None and not isinstance(v, str):
        raise ValueError(f"expected a module name (string) or null, got {v!r}")
    return v


def _choice(*options):
    def check(v):
        if v not in options:
            raise ValueError(f"expected one of {options}, got {v!r}")
        return v

    return check


# --------------------------------------------------------------------------- the interface


class Method:
    """A configured explanation method: ``method(model, x, target=None) -> attribution``.

    Subclasses set ``name``, ``spec`` (parameter -> (default, validator)) and
    implement ``_attribute(model, x, target, default_layer)``.
    """

    name: str = ""
    spec: dict[str, tuple[object, Callable]] = {}

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
        net, default_layer = _unwrap(model)
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"{self.name}: x must be a float tensor (N, C, H, W), got {getattr(x, 'shape', type(x))}")
        target = _as_target(target, x)
        # gradients are needed even when the caller runs under no_grad or inference_mode
        with _model_state_kept(net), torch.inference_mode(False), torch.enable_grad():
            x = x.detach().clone() if x.is_inference() else x.detach()
            a = self._attribute(net, x, target, default_layer)
        a = a.detach().to(x.device)
        if a.shape != x.shape:  # pragma: no cover - a bug in a method
            raise RuntimeError(f"{self.name}: attribution shape {tuple(a.shape)} != input shape {tuple(x.shape)}")
        _check_finite(self.name, a)
        return a

    def _attribute(self, model, x, target, default_layer):  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------- gradient, SmoothGrad


class Gradient(Method):
    """``A = dCE(model(x), t)/dx`` with ``t`` the target (default: the prediction)."""

    name = "gradient"
    spec = {}

    def _attribute(self, model, x, target, default_layer):
        grad, _, _ = loss_gradient(model, x, target)
        return grad


def image_seed(seed: int, index: int) -> int:
    """A 64-bit seed for image ``index`` under run seed ``seed``.

    numpy's SeedSequence mixes the pair, so that nearby ``(seed, index)``
    pairs give unrelated streams (``seed * K + index`` would collide).
    """
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 32) | int(state[1])


def smoothgrad_noise(x_i: torch.Tensor, n: int, seed: int, index: int) -> torch.Tensor:
    """The ``n`` noise draws ``e_k ~ N(0, 1)`` (shape (n, *x_i.shape)) for the image at ``index``.

    One ``torch.Generator`` on ``x_i``'s device, seeded with
    :func:`image_seed` ``(seed, index)``, draws all ``n`` at once. The noise
    therefore depends only on (seed, index, n, shape, dtype, device type):
    not on the other images in the batch nor on ``batch_size``.
    """
    g = torch.Generator(device=x_i.device)
    g.manual_seed(image_seed(seed, index))
    return torch.randn((n, *x_i.shape), generator=g, device=x_i.device, dtype=x_i.dtype)


def _noisy_batches(x, n, sigma, seed, offset, batch_size):
    """Yield ``(image index (B,), noisy copies (B, C, H, W))``: the N*n copies in chunks of ``batch_size``.

    Copy ``k`` of image ``i`` is ``x_i + sigma * e_k``, not clipped to [0, 1]
    (the thesis adds the noise only); a chunk may hold the copies of several images.
    """
    buf_x, buf_i, size = [], [], 0
    for i in range(len(x)):
        noisy = x[i].unsqueeze(0) + sigma * smoothgrad_noise(x[i], n, seed, offset + i)
        idx = torch.full((n,), i, dtype=torch.long, device=x.device)
        start = 0
        while start < n:
            take = min(batch_size - size, n - start)
            buf_x.append(noisy[start : start + take])
            buf_i.append(idx[start : start + take])
            size += take
            start += take
            if size == batch_size:
                yield torch.cat(buf_i), torch.cat(buf_x)
                buf_x, buf_i, size = [], [], 0
    if size:
        yield torch.cat(buf_i), torch.cat(buf_x)


class SmoothGrad(Method):
    """SmoothGrad of the loss gradient (thesis 4.2.1)::

        A(x) = 1/n * sum_{k=1..n} dCE(model(x + e_k), t_k) / dx,   e_k ~ N(0, sigma^2 I)

    ``sigma`` is in the model's input units, [0, 1] pixels (thesis: 0.2), and
    the noisy copies are not clipped to [0, 1].
    ``noise_target="sample"`` (thesis): ``t_k`` is the noisy copy's own
    prediction; ``"fixed"``: ``t_k`` is the image's target.
    The N*n copies run in chunks of ``batch_size``. The noise of image ``i``
    is :func:`smoothgrad_noise` ``(x_i, n, seed, offset + i)``, so it depends
    on (seed, offset + position in the batch), not on the batch's other images;
    pass ``offset`` = the batch's start in a larger set to make each image's
    noise independent of how the set is batched. ``seed=None`` draws a seed
    from torch's global generator. Results are reproducible bit for bit for
    the same inputs, parameters and device; a different ``batch_size`` can
    change the last bits (the model sees different batch shapes and the
    per-image sums are taken per chunk).
    """

    name = "smoothgrad"
    spec = {
        "n": (100, _positive_int),
        "sigma": (0.2, _nonneg_float),
        "noise_target": ("sample", _choice("sample", "fixed")),
        "batch_size": (32, _positive_int),
        "seed": (0, _optional_int),
        "offset": (0, _nonneg_int),
    }

    def _attribute(self, model, x, target, default_layer):
        p = self.params
        seed = p["seed"] if p["seed"] is not None else int(torch.randint(0, 2**62, ()).item())
        if p["noise_target"] == "fixed":
            target = _resolve_target(model, x, target)
        out = torch.zeros_like(x)
        for idx, noisy in _noisy_batches(x, p["n"], p["sigma"], seed, p["offset"], p["batch_size"]):
            t = target[idx] if p["noise_target"] == "fixed" else None
            grad, _, _ = loss_gradient(model, noisy, t)
            # per-image sums over the chunk's consecutive rows (a handful of segments);
            # a fixed-order sum where index_add_ would use atomics on CUDA
            images, counts = torch.unique_consecutive(idx, return_counts=True)
            for i, seg in zip(images.tolist(), grad.split(counts.tolist())):
                out[i] += seg.sum(0)
        return out / p["n"]


# --------------------------------------------------------------------------- LRP


def _timm_blocks():
    """timm's EfficientNet block classes, or None when timm is missing."""
    try:
        from timm.models import _efficientnet_blocks as eb
        from timm.models.efficientnet import EfficientNet, EfficientNetFeatures
    except ImportError:  # pragma: no cover - timm is a dependency
        return None
    return eb, (EfficientNet, EfficientNetFeatures)


def _timm_conv_bn_names(module) -> list[tuple[str, str]]:
    """``(conv attribute, batch-norm attribute)`` pairs inside one timm module, in forward order."""
    found = _timm_blocks()
    if found is None:
        return []
    eb, roots = found
    if isinstance(module, roots):
        return [("conv_stem", "bn1"), ("conv_head", "bn2")]
    if type(module) is eb.ConvBnAct:
        return [("conv", "bn1")]
    if type(module) is eb.DepthwiseSeparableConv:
        return [("conv_s2d", "bn_s2d"), ("conv_dw", "bn1"), ("conv_pw", "bn2")]
    if type(module) is eb.InvertedResidual:
        return [("conv_s2d", "bn_s2d"), ("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")]
    if type(module) is eb.EdgeResidual:
        return [("conv_exp", "bn1"), ("conv_pwl", "bn2")]
    return []


def conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """Every ``(convolution, batch norm)`` pair of ``model`` whose BN can be folded into the convolution.

    timm's blocks are matched by their attribute names (their
    ``BatchNormAct2d`` holds its activation as a child, so zennit's
    leaf-order ``SequentialMergeBatchNorm`` cannot see it); any other BN is
    paired with the leaf module right before it when that is a convolution
    or linear layer (zennit's SequentialMergeBatchNorm rule, e.g. VGG-BN).
    """
    from zennit.core import collect_leaves
    from zennit.types import BatchNorm, Linear as LinearType

    pairs, taken = [], set()
    for module in model.modules():
        for conv_name, bn_name in _timm_conv_bn_names(module):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if conv is None or bn is None or isinstance(bn, nn.Identity):
                continue
            pairs.append((conv, bn))
            taken.add(id(bn))
    last = None
    for leaf in collect_leaves(model):
        if isinstance(leaf, BatchNorm) and id(leaf) not in taken and isinstance(last, LinearType):
            pairs.append((last, leaf))
            taken.add(id(leaf))
        last = leaf
    return pairs


def _check_batch_norms_foldable(model: nn.Module, pairs) -> None:
    from zennit.types import BatchNorm

    taken = {id(bn) for _, bn in pairs}
    left = [n for n, m in model.named_modules() if isinstance(m, BatchNorm) and id(m) not in taken]
    if left:
        raise ValueError(
            f"LRP: batch norm layer(s) {left[:5]} follow no convolution that apem knows how to fold them into; "
            "their affine shift would be ignored by the relevance. Add their (conv, bn) pair to "
            "apem.explain._timm_conv_bn_names."
        )


def _make_canonizer_classes():
    """Build the canonizer classes lazily (zennit is imported only when LRP is used)."""
    from zennit.canonizers import AttributeCanonizer, MergeBatchNorm
    from zennit.layer import Sum

    class FoldBatchNorm(MergeBatchNorm):
        """Fold each BN of :func:`conv_bn_pairs` into its convolution, for the attribution only.

        ``W' = W * gamma / sqrt(var + eps)``, ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``;
        the BN becomes the identity. zennit 0.5.1 leaves the BN computing
        ``x / sqrt(1 + eps)`` (it resets var to 1 but keeps eps: 0.05 % per
        layer for timm's TF-ported eps = 1e-3, which compounds over 49 BNs),
        so this also sets ``eps = 0`` while applied and restores it on removal.
        """

        def apply(self, root_module):
            instances = []
            for conv, bn in conv_bn_pairs(root_module):
                inst = self.copy()
                inst.register((conv,), bn)
                instances.append(inst)
            return instances

        def register(self, linears, batch_norm):
            self.bn_eps = batch_norm.eps
            super().register(linears, batch_norm)
            batch_norm.eps = 0.0

        def remove(self):
            super().remove()
            self.batch_norm.eps = self.bn_eps

    class TimmResidualSum(AttributeCanonizer):
        """Route the skip addition of timm's residual blocks through a zennit ``Sum`` module.

        ``x = drop_path(branch) + shortcut`` becomes
        ``Sum(stack([shortcut, drop_path(branch)], -1))``: with the ``Norm`` rule
        that ``layer_map_base`` gives ``Sum``, the block's output relevance is split
        ``R_a = a / (a + b) * R``, ``R_b = b / (a + b) * R`` between the two
        branches instead of reaching both whole (counted twice, as the plain
        gradient of ``+`` would). Imitates zennit's ResNetBottleneckCanonizer:
        the block's ``forward`` is overloaded on the instance and removed after.
        Blocks whose ``has_skip`` is false are left alone.
        """

        def __init__(self):
            super().__init__(self._attribute_map)

        def copy(self):
            return TimmResidualSum()

        @classmethod
        def _attribute_map(cls, name, module):
            found = _timm_blocks()
            if found is None or not getattr(module, "has_skip", False):
                return None
            eb, _ = found
            fwd = {
                eb.InvertedResidual: _inverted_residual_forward,
                eb.DepthwiseSeparableConv: _depthwise_separable_forward,
                eb.ConvBnAct: _conv_bn_act_forward,
            }.get(type(module))
            if fwd is None:
                raise ValueError(
                    f"LRP: residual block {name!r} ({type(module).__name__}) has no canonizer; its skip "
                    "addition would count the relevance twice"
                )
            return {"forward": fwd.__get__(module), "canonizer_sum": Sum()}

    return FoldBatchNorm, TimmResidualSum


def _skip_sum(self, branch, shortcut):
    return self.canonizer_sum(torch.stack([shortcut, self.drop_path(branch)], dim=-1))


def _inverted_residual_forward(self, x):
    """timm ``InvertedResidual.forward`` (timm 1.0) with the skip through ``canonizer_sum``."""
    shortcut = x
    if self.conv_s2d is not None:
        x = self.bn_s2d(self.conv_s2d(x))
    x = self.bn1(self.conv_pw(x))
    x = self.bn2(self.conv_dw(x))
    x = self.se(self.aa(x))
    x = self.bn3(self.conv_pwl(x))
    return _skip_sum(self, x, shortcut)


def _depthwise_separable_forward(self, x):
    """timm ``DepthwiseSeparableConv.forward`` (timm 1.0) with the skip through ``canonizer_sum``."""
    shortcut = x
    if self.conv_s2d is not None:
        x = self.bn_s2d(self.conv_s2d(x))
    x = self.bn1(self.conv_dw(x))
    x = self.se(self.aa(x))
    x = self.bn2(self.conv_pw(x))
    return _skip_sum(self, x, shortcut)


def _conv_bn_act_forward(self, x):
    """timm ``ConvBnAct.forward`` (timm 1.0) with the skip through ``canonizer_sum``."""
    shortcut = x
    x = self.aa(self.bn1(self.conv(x)))
    return _skip_sum(self, x, shortcut)


_CANONIZERS = None


def canonizer_classes():
    """``(FoldBatchNorm, TimmResidualSum)``: the canonizer classes LRP applies."""
    global _CANONIZERS
    if _CANONIZERS is None:
        _CANONIZERS = _make_canonizer_classes()
    return _CANONIZERS


def lrp_canonizers(model: nn.Module) -> list:
    """Canonizers for ``model``: fold batch norms into convolutions, sum residuals through ``Sum``.

    Raises ValueError when a batch norm cannot be folded (see
    :func:`conv_bn_pairs`). A model without BN or residuals (VGG-16) gets
    canonizers that do nothing.
    """
    _check_batch_norms_foldable(model, conv_bn_pairs(model))
    fold, residual = canonizer_classes()
    for name, module in model.named_modules():
        residual._attribute_map(name, module)  # raises now for a residual block it cannot canonize
    return [fold(), residual()]


def lrp_layer_map(epsilon: float = 1.0, stabilizer: float = 1e-6) -> list:
    """zennit layer map of the thesis's LRP-epsilon.

    - ``apem.models.Normalize``: ``Pass`` (relevance goes straight through the
      element-wise normalisation, so the input relevance is that of the first
      convolution's input);
    - ``layer_map_base()``: activations (ReLU, ReLU6, ...) and batch norms
      ``Pass``, ``Sum`` and average pools ``Norm`` (``R_i = x_i / sum x * R``);
    - every convolution and linear layer: ``Epsilon(epsilon)``::

          R_i = sum_j x_i w_ij / (z_j + epsilon * sign(z_j)) * R_j,   z_j = sum_i x_i w_ij + b_j

      with zennit's ``sign(0) = +1``.

    Max pools get no rule: their gradient sends each output's relevance to the
    winning input (winner takes all). ``stabilizer`` is the ``Norm`` rule's
    ``z + stabilizer * sign(z)`` (zennit's default 1e-6); it absorbs a little
    relevance where a pooled or summed ``z`` is tiny.
    """
    from zennit.composites import layer_map_base
    from zennit.rules import Epsilon, Pass
    from zennit.types import Convolution, Linear as LinearType

    return [(Normalize, Pass())] + layer_map_base(stabilizer) + [
        (Convolution, Epsilon(epsilon=epsilon)),
        (LinearType, Epsilon(epsilon=epsilon)),
    ]


def lrp_composite(model: nn.Module, epsilon: float = 1.0, stabilizer: float = 1e-6):
    """The zennit ``LayerMapComposite`` for ``model``: :func:`lrp_layer_map` and :func:`lrp_canonizers`.

    ``with lrp_composite(model).context(model): ...`` applies the canonizers
    and rules and removes both on exit.
    """
    from zennit.composites import LayerMapComposite

    return LayerMapComposite(lrp_layer_map(epsilon, stabilizer), canonizers=lrp_canonizers(model))


def lrp_relevance(
    model: nn.Module, x: torch.Tensor, output_relevance, epsilon: float = 1.0, stabilizer: float = 1e-6
) -> torch.Tensor:
    """Input relevance of ``model`` at ``x`` (any shape) for a given output relevance.

    ``output_relevance``: a tensor of the output's shape or a function
    ``logits -> tensor``. Canonizers and hooks are removed on return.
    """
    from zennit.attribution import Gradient as ZGradient

    composite = lrp_composite(model, epsilon, stabilizer)
    if callable(output_relevance):
        fn = output_relevance

        def rel(out):
            return fn(out.detach())

    else:
        rel = output_relevance.detach()
    xin = x.detach().clone().requires_grad_(True)
    try:  # not the attributor's `with`: a canonizer failing half-way must still be undone
        composite.register(model)
        with torch.enable_grad():
            _, relevance = ZGradient(model, composite)(xin, rel)
    finally:
        composite.remove()
    return relevance.detach()


class LRPEpsilon(Method):
    """LRP-epsilon (thesis 4.2.2; epsilon = 1 on every convolution and linear layer).

    Output relevance: ``output="softmax"`` (thesis code) ``R_out = softmax(logits)``
    over all classes, the target unused; ``output="onehot"``: ``R_out = onehot(target)``.
    See :func:`lrp_layer_map` for the rules and :func:`lrp_canonizers` for
    what EfficientNet needs (BN folding, residual ``Sum``).
    """

    name = "lrp_epsilon"
    spec = {
        "epsilon": (1.0, _nonneg_float),
        "output": ("softmax", _choice("softmax", "onehot")),
    }

    def _attribute(self, model, x, target, default_layer):
        if self.params["output"] == "softmax":
            def rout(logits):
                return torch.softmax(logits, dim=1)
        else:
            target = _resolve_target(model, x, target)

            def rout(logits):
                return F.one_hot(target, logits.shape[1]).to(logits.dtype)

        return lrp_relevance(model, x, rout, self.params["epsilon"])


# --------------------------------------------------------------------------- captum methods


class IntegratedGradients(Method):
    """captum IntegratedGradients of the target **logit**, from a black baseline (all zeros)::

        A = x * integral_0^1 d logit_t(alpha * x) / dx  d alpha

    with ``n_steps`` Gauss-Legendre points (captum's default), run in internal
    batches of ``internal_batch_size``.
    """

    name = "integrated_gradients"
    spec = {"n_steps": (32, _positive_int), "internal_batch_size": (32, _positive_int)}

    def _attribute(self, model, x, target, default_layer):
        from captum.attr import IntegratedGradients as IG

        target = _resolve_target(model, x, target)
        return IG(model).attribute(
            _grad_input(x), baselines=torch.zeros_like(x), target=target,
            n_steps=self.params["n_steps"], internal_batch_size=self.params["internal_batch_size"],
        )


class InputXGradient(Method):
    """captum InputXGradient: ``A = x * d logit_t / dx`` (the target **logit**)."""

    name = "input_x_gradient"
    spec = {}

    def _attribute(self, model, x, target, default_layer):
        from captum.attr import InputXGradient as IxG

        target = _resolve_target(model, x, target)
        return IxG(model).attribute(_grad_input(x), target=target)


def _guided_backprop(model: nn.Module, relu6: bool):
    """captum GuidedBackprop, optionally also guiding ``nn.ReLU6`` modules.

    captum hooks only ``nn.ReLU`` *modules* (functional relus are missed, and
    ``nn.ReLU6`` is not an ``nn.ReLU`` subclass), so on timm's EfficientNet-Lite0,
    whose activations are all ReLU6, plain captum computes the ordinary logit
    gradient. With ``relu6`` the same rule, ``relu(grad at the module input)``,
    is applied to ReLU6 modules (their gradient is ReLU's times the
    ``x < 6`` mask). This overrides captum's private ``_register_hooks``.
    """
    from captum._utils.common import _register_backward_hook
    from captum.attr import GuidedBackprop

    kinds = (nn.ReLU, nn.ReLU6) if relu6 else (nn.ReLU,)

    class _GB(GuidedBackprop):
        def _register_hooks(self, module):
            if isinstance(module, kinds):
                self.backward_hooks.extend(_register_backward_hook(module, self._backward_hook, self))

    if not any(isinstance(m, kinds) for m in model.modules()):
        warnings.warn(
            "guided_backprop: the model has no "
            + ("nn.ReLU/nn.ReLU6" if relu6 else "nn.ReLU")
            + " modules, so the result is the plain gradient of the logit",
            stacklevel=4,
        )
    return _GB(model)


class GuidedBackprop(Method):
    """Guided backpropagation of the target **logit** (captum GuidedBackprop).

    ``relu6=True`` (default) also guides ``nn.ReLU6`` modules, which is every
    activation of EfficientNet-Lite0; ``relu6=False`` is captum's own
    behaviour, under which Lite0's result is the plain logit gradient.
    Only activation *modules* are guided, never functional calls.
    """

    name = "guided_backprop"
    spec = {"relu6": (True, _bool)}

    def _attribute(self, model, x, target, default_layer):
        target = _resolve_target(model, x, target)
        gb = _guided_backprop(model, self.params["relu6"])
        with warnings.catch_warnings():  # captum announces its (temporary) ReLU hooks on every call
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
            return gb.attribute(_grad_input(x), target=target)


class GradCAM(Method):
    """Grad-CAM of the target **logit** (captum LayerGradCam) at layer ``layer``::

        alpha_k = mean_{h,w} d logit_t / dA_k,    cam = relu(sum_k alpha_k A_k)

    upsampled bilinearly (``align_corners=False``) to the input size with
    captum's ``LayerAttribution.interpolate`` and repeated to 3 channels.
    ``layer``: dotted module name; default the ``LoadedModel``'s
    ``gradcam_layer`` when a LoadedModel is given, else the last ``nn.Conv2d``.
    ``relu=False`` keeps the negative part.
    """

    name = "gradcam"
    spec = {"layer": (None, _optional_str), "relu": (True, _bool)}

    def _attribute(self, model, x, target, default_layer):
        from captum.attr import LayerAttribution, LayerGradCam

        name = self.params["layer"] or default_layer or last_conv_name(model)
        layer = _module(model, name)
        target = _resolve_target(model, x, target)
        cam = LayerGradCam(model, layer).attribute(_grad_input(x), target=target, relu_attributions=self.params["relu"])
        cam = LayerAttribution.interpolate(cam.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
        return cam.expand(-1, x.shape[1], -1, -1).contiguous()


# --------------------------------------------------------------------------- registry

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (Gradient, SmoothGrad, LRPEpsilon, IntegratedGradients, InputXGradient, GuidedBackprop, GradCAM)
}
THESIS_METHODS = ("gradient", "smoothgrad", "lrp_epsilon")


def _method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"unknown explanation method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]


def method_params(name: str) -> dict:
    """The parameters of method ``name`` with their defaults (ValueError for an unknown name)."""
    return _method_class(name).defaults()


def get_method(name: str, **params) -> Method:
    """A configured method ``m``; ``m(model, x, target=None)`` returns the attribution.

    ValueError names an unknown method, an unknown parameter, or a bad value.
    """
    return _method_class(name)(**params)


def attribute(model, x: torch.Tensor, target=None, method: str = "gradient", **params) -> torch.Tensor:
    """``get_method(method, **params)(model, x, target)``."""
    return get_method(method, **params)(model, x, target)
