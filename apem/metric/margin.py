r"""The target margin :math:`m = z_t - \max_{j\ne t} z_j` and the per-image quantities built on it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r""":math:`m = z_t - \max_{j \ne t} z_j` per row (> 0: the target is strictly ahead)."""
    zt = logits.gather(1, target[:, None]).squeeze(1)
    others = logits.scatter(1, target[:, None], float("-inf"))
    return zt - others.amax(1)


def changed(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``argmax != target`` with ``torch.argmax`` semantics (ties -> lowest index)."""
    return logits.argmax(1) != target


@dataclass
class MarginInfo:
    r"""Per-image quantities shared by every map of an image.

    ``target`` (B,), ``logits`` (B, K) clean logits, ``margin`` (B,)
    :math:`m(x)`, ``changed`` (B,) whether the clean input is already not the
    target; for ``bisect``'s first estimate, either ``grad`` (B, 3, H, W)
    :math:`\nabla_x m(x)` (one backward pass per image) or ``loss_grad``
    (B, 3, H, W), the cross-entropy gradient :math:`g` the directions are built
    from (free: every mode needs it).
    """

    target: torch.Tensor
    logits: torch.Tensor
    margin: torch.Tensor
    changed: torch.Tensor
    grad: torch.Tensor | None = None
    loss_grad: torch.Tensor | None = None

    @classmethod
    def from_logits(cls, logits, target=None, *, grad=None, loss_grad=None) -> "MarginInfo":
        """Build from clean logits (e.g. those :func:`apem.metric.clean.loss_gradient` returns)."""
        target = logits.argmax(1) if target is None else torch.as_tensor(target, device=logits.device).long()
        return cls(target, logits, margin(logits, target), changed(logits, target), grad, loss_grad)

    def rest(self) -> torch.Tensor:
        r""":math:`1 - p_t` per image, from the logits in float64 (log-sum-exp of the other classes)."""
        lp = torch.log_softmax(self.logits.double(), 1)
        return torch.logsumexp(lp.scatter(1, self.target[:, None], float("-inf")), 1).exp()

    @property
    def has_slope(self) -> bool:
        return self.grad is not None or (self.loss_grad is not None and self.logits is not None)

    def slope(self, d: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        r"""Directional derivative :math:`m'(0)` of the margin along every direction.

        With ``grad``: :math:`\nabla_x m \cdot d`, exact. With ``loss_grad``
        only: :math:`-\,g \cdot d \,/\, (1 - p_t)` -- the cross-entropy
        gradient is :math:`g = \sum_{j \ne t} p_j (\nabla z_j - \nabla z_t)`,
        which is :math:`-(1 - p_t)\nabla m` when the other classes move
        together with the runner-up (on EfficientNet-Lite0 gradient maps the
        ratio to the exact slope has median 1.0, typically within 30%). It only
        seeds the search: a worse slope costs forward passes, never correctness.
        """
        src = (self.grad if self.grad is not None else self.loss_grad).to(d.dtype)
        out = torch.empty(len(d), dtype=torch.float64, device=d.device)
        # runs of consecutive directions of one image share its gradient by broadcasting (no gather)
        img, counts = torch.unique_consecutive(image_index, return_counts=True)
        a = 0
        for b, n in zip(img.tolist(), counts.tolist()):
            for s in range(a, a + n, 256):
                e = min(s + 256, a + n)
                out[s:e] = (src[b] * d[s:e]).flatten(1).sum(1, dtype=torch.float64)
            a += n
        if self.grad is None:
            out = -out / self.rest().to(out.device)[image_index].clamp_min(1e-300)
        return out
