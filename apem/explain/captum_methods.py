"""The methods beyond the thesis, through captum: integrated gradients, input x gradient, guided backprop, Grad-CAM."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from apem.explain.base import (
    Method, boolean, grad_input, last_conv_name, optional_str, positive_int, objective_model, register, resolve_target,
    submodule,
)


@register
class IntegratedGradients(Method):
    """captum IntegratedGradients of the target **logit**, from a black baseline (all zeros)::

        A = x * integral_0^1 d logit_t(alpha * x) / dx  d alpha

    with ``n_steps`` Gauss-Legendre points (captum's default), run in internal
    batches of ``internal_batch_size``.
    """

    name = "integrated_gradients"
    objective = "logit"
    spec = {"n_steps": (32, positive_int), "internal_batch_size": (32, positive_int)}

    def _attribute(self, model, x, target, default_layer):
        from captum.attr import IntegratedGradients as IG

        target = resolve_target(model, x, target)
        return IG(objective_model(model, self.params["objective"])).attribute(
            grad_input(x), baselines=torch.zeros_like(x), target=target,
            n_steps=self.params["n_steps"], internal_batch_size=self.params["internal_batch_size"],
        )


@register
class InputXGradient(Method):
    """captum InputXGradient: ``A = x * d logit_t / dx`` (the target **logit**)."""

    name = "input_x_gradient"
    objective = "logit"
    spec = {}

    def _attribute(self, model, x, target, default_layer):
        from captum.attr import InputXGradient as IxG

        target = resolve_target(model, x, target)
        return IxG(objective_model(model, self.params["objective"])).attribute(grad_input(x), target=target)


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


@register
class GuidedBackprop(Method):
    """Guided backpropagation of the target **logit** (captum GuidedBackprop).

    ``relu6=True`` (default) also guides ``nn.ReLU6`` modules, which is every
    activation of EfficientNet-Lite0; ``relu6=False`` is captum's own
    behaviour, under which Lite0's result is the plain logit gradient.
    Only activation *modules* are guided, never functional calls.
    """

    name = "guided_backprop"
    objective = "logit"
    spec = {"relu6": (True, boolean)}

    def _attribute(self, model, x, target, default_layer):
        target = resolve_target(model, x, target)
        gb = _guided_backprop(objective_model(model, self.params["objective"]), self.params["relu6"])
        with warnings.catch_warnings():  # captum announces its (temporary) ReLU hooks on every call
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
            return gb.attribute(grad_input(x), target=target)


@register
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
    objective = "logit"
    spec = {"layer": (None, optional_str), "relu": (True, boolean)}

    def _attribute(self, model, x, target, default_layer):
        from captum.attr import LayerAttribution, LayerGradCam

        name = self.params["layer"] or default_layer or last_conv_name(model)
        layer = submodule(model, name)
        target = resolve_target(model, x, target)
        cam = LayerGradCam(objective_model(model, self.params["objective"]), layer).attribute(grad_input(x), target=target, relu_attributions=self.params["relu"])
        cam = LayerAttribution.interpolate(cam.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
        return cam.expand(-1, x.shape[1], -1, -1).contiguous()

