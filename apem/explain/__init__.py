"""Explanation methods behind one interface.

Every method maps a batch ``x`` (N, 3, H, W) in [0, 1] pixels and its
targets (LongTensor (N,), or None for the model's own prediction) to a *raw*
attribution tensor of ``x``'s shape on ``x``'s device::

    from apem.explain import attribute, get_method, method_params
    A = attribute(model, x, method="smoothgrad", n=100, sigma=0.2)
    sg = get_method("smoothgrad", n=8)      # a callable: sg(model, x, target=None)
    method_params("lrp_epsilon")            # {'epsilon': 1.0, 'objective': 'loss'}

``model`` is an ``nn.Module`` taking [0, 1] pixels (every apem model is
``Sequential(normalize, net)``) or an :class:`apem.models.LoadedModel`.

Every method takes an ``objective`` parameter that says what it explains:
``"loss"``, the **cross-entropy loss** ``CE(model(x), target)`` (its gradient
is what APEM perturbs along), or ``"logit"``, the **target class logit**. The
thesis's three methods (section 4.2) explain the loss by default:

``gradient``
    ``dCE/dx`` (:func:`apem.metric.clean.loss_gradient`): what the thesis's code
    computed; the thesis *defines* the map as ``dS_c/dx``, the class
    score's gradient, which is ``objective="logit"``
    (``methods: {gradient: {objective: logit}}`` in a configuration).
``smoothgrad``
    ``1/n sum_k dCE(x + e_k)/dx``, ``e_k ~ N(0, sigma^2)`` in pixel units.
``lrp_epsilon``
    LRP-epsilon (epsilon = 1) from the softmax output relevance.

``lrp`` (beyond the thesis's three) is LRP with a ``rule`` choice, for the
variants of the thesis's Table 4.1: ``rule="epsilon"`` with ``epsilon=0``
(naive LRP) or ``epsilon=1`` (= ``lrp_epsilon``), ``rule="alpha_beta"``.

The methods beyond the thesis go through captum and explain the target
class logit by default (captum's convention): ``integrated_gradients``,
``input_x_gradient``, ``guided_backprop``, ``gradcam``.

Modules: :mod:`~apem.explain.base` (the :class:`Method` interface, parameter
validation, the objective, the registry), :mod:`~apem.explain.gradient`
(gradient, SmoothGrad), :mod:`~apem.explain.lrp` (the LRP zennit
composite), :mod:`~apem.explain.timm_canonizers` (what timm's EfficientNet
needs for LRP), :mod:`~apem.explain.captum_methods`.

Any NaN or inf in an attribution raises :class:`AttributionError`. No method
leaves hooks, canonizers or changed ``requires_grad`` flags on the model.
"""

from apem.explain.base import (
    METHODS, OBJECTIVES, AttributionError, Method, attribute, check_params, get_method, last_conv_name, method_params,
    predict_targets, register,
)
from apem.explain.gradient import Gradient, SmoothGrad, smoothgrad_noise
from apem.explain.lrp import LRP, LRPEpsilon, RULES as LRP_RULES, layer_rule, lrp_attribution, lrp_composite, lrp_layer_map, lrp_relevance
from apem.explain.captum_methods import GradCAM, GuidedBackprop, InputXGradient, IntegratedGradients
from apem.explain.timm_canonizers import canonizer_classes, conv_bn_pairs, lrp_canonizers

__all__ = [
    "METHODS",
    "OBJECTIVES",
    "AttributionError",
    "Method",
    "attribute",
    "check_params",
    "get_method",
    "last_conv_name",
    "method_params",
    "predict_targets",
    "register",
    "Gradient",
    "SmoothGrad",
    "smoothgrad_noise",
    "LRP",
    "LRPEpsilon",
    "LRP_RULES",
    "layer_rule",
    "lrp_attribution",
    "lrp_composite",
    "lrp_layer_map",
    "lrp_relevance",
    "GradCAM",
    "GuidedBackprop",
    "InputXGradient",
    "IntegratedGradients",
    "canonizer_classes",
    "conv_bn_pairs",
    "lrp_canonizers",
]
