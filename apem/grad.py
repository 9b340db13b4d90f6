"""The loss gradient every part of APEM starts from.

``g = d CrossEntropy(model(x), target) / d x``, per image, in the model's input
space ([0, 1] pixels for apem models). The target is the model's own
prediction unless given, as in the thesis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def loss_gradient(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor | None = None):
    """Return ``(grad, logits, target)`` for a batch.

    The loss is summed over the batch, so each image's gradient is that of its
    own cross-entropy (images do not interact in an ``eval()`` model).
    """
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        if target is None:
            target = logits.argmax(1)
        target = torch.as_tensor(target, device=logits.device).long()
        loss = F.cross_entropy(logits, target, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad.detach(), logits.detach(), target
