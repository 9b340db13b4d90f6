"""zennit canonizers for timm's EfficientNet blocks (batch-norm folding, residual sums).

The model-family specific part of LRP, kept apart as zennit keeps its
torchvision canonizers apart from its rules.
"""

from __future__ import annotations

import torch
from torch import nn


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
            "apem.explain.timm_canonizers._timm_conv_bn_names."
        )


FOLDED_BN_EPS = 1e-12  # positive (torch 2.11 refuses 0), and 1 + eps == 1 in float32


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
        so this also sets ``eps`` to :data:`FOLDED_BN_EPS` while applied and restores it on removal.
        Not 0: torch 2.11 rejects ``eps = 0`` even in eval mode. With var = 1, ``sqrt(1 + 1e-12)``
        is exactly 1 in float32 (and ``1 - 5e-13`` in double, below half a float32 ulp), so the
        BN is the identity bit for bit.
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
            batch_norm.eps = FOLDED_BN_EPS

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


def _space_to_depth(self, x):
    """timm 1.0's optional space-to-depth stem of a block (identity when the block has none)."""
    return x if self.conv_s2d is None else self.bn_s2d(self.conv_s2d(x))


def _inverted_residual_forward(self, x):
    """timm ``InvertedResidual.forward`` (timm 1.0) with the skip through ``canonizer_sum``."""
    x_in = x
    x = self.bn1(self.conv_pw(_space_to_depth(self, x)))
    x = self.se(self.aa(self.bn2(self.conv_dw(x))))
    return _skip_sum(self, self.bn3(self.conv_pwl(x)), x_in)


def _depthwise_separable_forward(self, x):
    """timm ``DepthwiseSeparableConv.forward`` (timm 1.0) with the skip through ``canonizer_sum``."""
    x_in = x
    x = self.se(self.aa(self.bn1(self.conv_dw(_space_to_depth(self, x)))))
    return _skip_sum(self, self.bn2(self.conv_pw(x)), x_in)


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

