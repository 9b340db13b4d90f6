"""LRP (thesis 4.2.2) as a zennit composite: the layer rules, and the methods.

The thesis's method is LRP-epsilon with epsilon = 1 (``lrp_epsilon``); the
variants of its Table 4.1 -- naive LRP (epsilon = 0), the epsilon-variant and
the beta-variant (alpha-beta rule) -- are the ``lrp`` method's ``rule`` choices
(:data:`RULES`), built by the same composite with the same canonizers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from apem.explain.base import Method, choice, nonneg_float, register, resolve_target
from apem.explain.timm_canonizers import lrp_canonizers
from apem.models import Normalize


#: The rules a convolution or linear layer can get (see :func:`lrp_layer_map`).
RULES = ("epsilon", "alpha_beta")


def layer_rule(rule: str = "epsilon", epsilon: float = 1.0, alpha: float = 2.0, beta: float = 1.0):
    """The zennit rule of every convolution and linear layer.

    ``"epsilon"``: ``Epsilon(epsilon)`` (``epsilon = 0`` is naive LRP, LRP-0:
    ``z_j = 0`` then divides by zero); ``"alpha_beta"``: ``AlphaBeta(alpha, beta)``::

        R_i = sum_j (alpha * z+_ij / sum_i' z+_i'j  -  beta * z-_ij / sum_i' z-_i'j) R_j

    where ``z+`` (``z-``) are the positive (negative) contributions ``x_i w_ij``,
    the positive (negative) part of the bias included in their sum; zennit requires
    ``alpha - beta = 1``, the thesis's ``alpha + beta = 1`` with its beta <= 0 written as ``-beta``.
    """
    from zennit.rules import AlphaBeta, Epsilon

    if rule == "epsilon":
        return Epsilon(epsilon=epsilon)
    if rule == "alpha_beta":
        return AlphaBeta(alpha=alpha, beta=beta)
    raise ValueError(f"unknown LRP rule {rule!r}; rules are {RULES}")


def lrp_layer_map(epsilon: float = 1.0, stabilizer: float = 1e-6, rule: str = "epsilon", alpha: float = 2.0,
                  beta: float = 1.0) -> list:
    """zennit layer map of the thesis's LRP-epsilon (or another rule, see :func:`layer_rule`).

    - ``apem.models.Normalize``: ``Pass`` (relevance goes straight through the
      element-wise normalisation, so the input relevance is that of the first
      convolution's input);
    - ``layer_map_base()``: activations (ReLU, ReLU6, ...) and batch norms
      ``Pass``, ``Sum`` and average pools ``Norm`` (``R_i = x_i / sum x * R``);
    - every convolution and linear layer: ``Epsilon(epsilon)``::

          R_i = sum_j x_i w_ij / (z_j + epsilon * sign(z_j)) * R_j,   z_j = sum_i x_i w_ij + b_j

      with zennit's ``sign(0) = +1`` (or ``layer_rule(rule, epsilon, alpha, beta)``).

    Max pools get no rule: their gradient sends each output's relevance to the
    winning input (winner takes all). ``stabilizer`` is the ``Norm`` rule's
    ``z + stabilizer * sign(z)`` (zennit's default 1e-6); it absorbs a little
    relevance where a pooled or summed ``z`` is tiny.
    """
    from zennit.composites import layer_map_base
    from zennit.rules import Pass
    from zennit.types import Convolution, Linear as LinearType

    return [(Normalize, Pass())] + layer_map_base(stabilizer) + [
        (Convolution, layer_rule(rule, epsilon, alpha, beta)),
        (LinearType, layer_rule(rule, epsilon, alpha, beta)),
    ]


def lrp_composite(model: nn.Module, epsilon: float = 1.0, stabilizer: float = 1e-6, rule: str = "epsilon",
                  alpha: float = 2.0, beta: float = 1.0):
    """The zennit ``LayerMapComposite`` for ``model``: :func:`lrp_layer_map` and :func:`lrp_canonizers`.

    ``with lrp_composite(model).context(model): ...`` applies the canonizers
    and rules and removes both on exit.
    """
    from zennit.composites import LayerMapComposite

    return LayerMapComposite(lrp_layer_map(epsilon, stabilizer, rule, alpha, beta), canonizers=lrp_canonizers(model))


def lrp_relevance(
    model: nn.Module, x: torch.Tensor, output_relevance, epsilon: float = 1.0, stabilizer: float = 1e-6,
    rule: str = "epsilon", alpha: float = 2.0, beta: float = 1.0,
) -> torch.Tensor:
    """Input relevance of ``model`` at ``x`` (any shape) for a given output relevance.

    ``output_relevance``: a tensor of the output's shape or a function
    ``logits -> tensor``. Canonizers and hooks are removed on return. The
    relevance is returned as computed: NaN or inf (naive LRP dividing by a
    zero ``z``) are not checked here but by the methods.
    """
    from zennit.attribution import Gradient as ZGradient

    composite = lrp_composite(model, epsilon, stabilizer, rule, alpha, beta)
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


def output_relevance(model: nn.Module, x: torch.Tensor, target, objective: str):
    """The output relevance of apem's LRP methods, ``logits -> R_out``.

    ``objective="loss"`` (the thesis's code): ``softmax(logits)`` over all
    classes, the target unused; ``"logit"``: ``onehot(target)`` (the model's
    prediction when ``target`` is None).
    """
    if objective == "loss":
        def rout(logits):
            return torch.softmax(logits, dim=1)
    else:
        target = resolve_target(model, x, target)

        def rout(logits):
            return F.one_hot(target, logits.shape[1]).to(logits.dtype)

    return rout


def lrp_attribution(model: nn.Module, x: torch.Tensor, target=None, *, rule: str = "epsilon", epsilon: float = 1.0,
                    alpha: float = 2.0, beta: float = 1.0, objective: str = "loss") -> torch.Tensor:
    """The raw relevance the ``lrp`` / ``lrp_epsilon`` methods return, NaN or inf left in.

    The methods raise on a non-finite map; a study of naive LRP's numerical
    stability needs to count them instead.
    """
    with torch.inference_mode(False), torch.enable_grad():
        return lrp_relevance(model, x, output_relevance(model, x, target, objective), epsilon, rule=rule,
                             alpha=alpha, beta=beta)


@register
class LRP(Method):
    """LRP with one rule on every convolution and linear layer (thesis 4.2.2, Table 4.1).

    ``rule="epsilon"``: ``Epsilon(epsilon)``; ``epsilon = 0`` is the thesis's
    naive LRP and ``epsilon = 1`` its method (the same maps as ``lrp_epsilon``).
    ``rule="alpha_beta"``: zennit's ``AlphaBeta(alpha, beta)``, the thesis's
    beta-variant (``alpha - beta = 1``; default 2, 1). Output relevance, layer
    map and canonizers as :class:`LRPEpsilon`.
    """

    name = "lrp"
    spec = {
        "rule": ("epsilon", choice(*RULES)),
        "epsilon": (1.0, nonneg_float),
        "alpha": (2.0, nonneg_float),
        "beta": (1.0, nonneg_float),
    }

    def __init__(self, **params):
        super().__init__(**params)
        if self.params.get("rule") == "alpha_beta" and self.params["alpha"] - self.params["beta"] != 1.0:
            raise ValueError(f"method {self.name!r}: the alpha-beta rule needs alpha - beta = 1, "
                             f"got alpha={self.params['alpha']!r}, beta={self.params['beta']!r}")

    def _attribute(self, model, x, target, default_layer):
        p = self.params
        return lrp_attribution(model, x, target, rule=p.get("rule", "epsilon"), epsilon=p["epsilon"],
                               alpha=p.get("alpha", 2.0), beta=p.get("beta", 1.0), objective=p["objective"])


@register
class LRPEpsilon(LRP):
    """LRP-epsilon (thesis 4.2.2; epsilon = 1 on every convolution and linear layer).

    Output relevance: ``objective="loss"`` (the thesis's code, which explains
    the loss family of methods) ``R_out = softmax(logits)`` over all classes,
    the target unused; ``objective="logit"``: ``R_out = onehot(target)``, the
    target logit alone.
    See :func:`lrp_layer_map` for the rules and :func:`lrp_canonizers` for
    what EfficientNet needs (BN folding, residual ``Sum``). The ``lrp``
    method with ``rule="epsilon"`` computes the same maps.
    """

    name = "lrp_epsilon"
    spec = {
        "epsilon": (1.0, nonneg_float),
    }
