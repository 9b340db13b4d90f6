"""LRP-epsilon (thesis 4.2.2) as a zennit composite: the layer rules, and the method."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from apem.explain.base import Method, nonneg_float, register, resolve_target
from apem.explain.timm_canonizers import lrp_canonizers
from apem.models import Normalize


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


@register
class LRPEpsilon(Method):
    """LRP-epsilon (thesis 4.2.2; epsilon = 1 on every convolution and linear layer).

    Output relevance: ``objective="loss"`` (the thesis's code, which explains
    the loss family of methods) ``R_out = softmax(logits)`` over all classes,
    the target unused; ``objective="logit"``: ``R_out = onehot(target)``, the
    target logit alone.
    See :func:`lrp_layer_map` for the rules and :func:`lrp_canonizers` for
    what EfficientNet needs (BN folding, residual ``Sum``).
    """

    name = "lrp_epsilon"
    spec = {
        "epsilon": (1.0, nonneg_float),
    }

    def _attribute(self, model, x, target, default_layer):
        if self.params["objective"] == "loss":
            def rout(logits):
                return torch.softmax(logits, dim=1)
        else:
            target = resolve_target(model, x, target)

            def rout(logits):
                return F.one_hot(target, logits.shape[1]).to(logits.dtype)

        return lrp_relevance(model, x, rout, self.params["epsilon"])
