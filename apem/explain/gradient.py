"""The gradient and SmoothGrad (thesis 4.2.1) of the method's objective."""

from __future__ import annotations

import torch

from apem.seeds import seed_of
from apem.explain.base import (
    Method, choice, nonneg_float, objective_gradient, nonneg_int, optional_int, optional_keys, positive_int, register, resolve_target,
)


@register
class Gradient(Method):
    """The input gradient of the method's objective at the target class ``t`` (default: the prediction).

    The thesis defines the map as ``dS_c/dx``, the gradient of the class
    score (its section on the explanation methods, 4.2); its code used the
    gradient of the cross-entropy loss, which is the default here::

        objective="loss"  (default, the thesis's code):    A = dCE(model(x), t)/dx
                                                           = -(1 - p_t) dz_t/dx + sum_{k != t} p_k dz_k/dx
        objective="logit" (the thesis's definition):       A = dS_t/dx = dz_t/dx

    with ``z = model(x)`` the logits and ``p = softmax(z)``. In a
    configuration: ``methods: {gradient: {objective: logit}}``. The two differ
    by more than a scale: the loss gradient also pushes away from the other
    classes, weighted by their probabilities (for a linear model ``z = Wx + b``
    the logit map is ``W[t]`` and the loss map ``-(1 - p_t) W[t] + sum_{k != t}
    p_k W[k]``).
    """

    name = "gradient"
    spec = {}

    def _attribute(self, model, x, target, default_layer):
        return objective_gradient(model, x, target, self.params["objective"])


def smoothgrad_noise(x_i: torch.Tensor, n: int, seed: int, index: int) -> torch.Tensor:
    """The ``n`` noise draws ``e_k ~ N(0, 1)`` (shape ``(n, *x_i.shape)``) for the image at ``index``.

    One ``torch.Generator`` on ``x_i``'s device, seeded with
    :func:`apem.seeds.seed_of` ``(seed, index)``, draws all ``n`` at once. The noise
    therefore depends only on (seed, index, n, shape, dtype, device type):
    not on the other images in the batch nor on ``batch_size``.
    """
    g = torch.Generator(device=x_i.device)
    g.manual_seed(seed_of(seed, index))
    return torch.randn((n, *x_i.shape), generator=g, device=x_i.device, dtype=x_i.dtype)


def _noisy_batches(x, n, sigma, seed, keys, batch_size):
    """Yield ``(image index (B,), noisy copies (B, C, H, W))``: the N*n copies in chunks of ``batch_size``.

    Copy ``k`` of image ``i`` is ``x_i + sigma * e_k``, not clipped to [0, 1]
    (the thesis adds the noise only), its noise drawn by :func:`smoothgrad_noise`
    with ``keys[i]``; a chunk may hold the copies of several images.
    """
    buf_x, buf_i, size = [], [], 0
    for i in range(len(x)):
        noisy = x[i].unsqueeze(0) + sigma * smoothgrad_noise(x[i], n, seed, keys[i])
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


@register
class SmoothGrad(Method):
    """SmoothGrad (thesis 4.2.1): the mean :class:`Gradient` over noisy copies of the image::

        A(x) = 1/n * sum_{k=1..n} dCE(model(x + e_k), t_k) / dx,   e_k ~ N(0, sigma^2 I)

    As for :class:`Gradient`, the thesis defines the averaged map with the
    class score ``dS_c/dx``; its code averaged the gradient of the cross-entropy
    loss, which is the default here (``objective="loss"``); ``objective="logit"``
    averages ``dS_{t_k}/dx`` instead, the thesis's definition
    (``methods: {smoothgrad: {objective: logit}}``).

    ``sigma`` is in the model's input units, [0, 1] pixels (thesis: 0.2), and
    the noisy copies are not clipped to [0, 1].
    ``noise_target="sample"`` (thesis): ``t_k`` is the noisy copy's own
    prediction; ``"fixed"``: ``t_k`` is the image's target.
    The N*n copies run in chunks of ``batch_size``. The noise of image ``i``
    is :func:`smoothgrad_noise` ``(x_i, n, seed, key_i)``, where ``key_i`` is
    ``noise_keys[i]`` when given (the runner passes one per image, derived from
    the image's name: :func:`apem.runner.compute.method_for`) and ``offset + i``
    otherwise, so it never depends on the batch's other images. ``seed=None``
    draws a seed from torch's global generator. An image's n gradients are summed
    in one fixed-order reduction once all of them are computed, wherever the
    chunk boundaries fell, so its map is the same in any batch or position
    (on the CPU, bit for bit: ``tests/test_cells.py``).
    """

    name = "smoothgrad"
    spec = {
        "n": (100, positive_int),
        "sigma": (0.2, nonneg_float),
        "noise_target": ("sample", choice("sample", "fixed")),
        "batch_size": (32, positive_int),
        "seed": (0, optional_int),
        "offset": (0, nonneg_int),
        "noise_keys": (None, optional_keys),
    }

    def _attribute(self, model, x, target, default_layer):
        p = self.params
        seed = p["seed"] if p["seed"] is not None else int(torch.randint(0, 2**62, ()).item())
        if p["noise_target"] == "fixed":
            target = resolve_target(model, x, target)
        keys = p["noise_keys"]
        if keys is None:
            keys = [p["offset"] + i for i in range(len(x))]
        elif len(keys) != len(x):
            raise ValueError(f"smoothgrad: noise_keys has {len(keys)} keys for {len(x)} images")
        out = torch.zeros_like(x)
        pending: dict[int, list] = {}  # image -> its gradients so far (copies arrive in image order)
        for idx, noisy in _noisy_batches(x, p["n"], p["sigma"], seed, keys, p["batch_size"]):
            t = target[idx] if p["noise_target"] == "fixed" else None
            grad = objective_gradient(model, noisy, t, p["objective"])
            images, counts = torch.unique_consecutive(idx, return_counts=True)
            for i, seg in zip(images.tolist(), grad.split(counts.tolist())):
                pending.setdefault(i, []).append(seg)
                if sum(len(g) for g in pending[i]) == p["n"]:
                    # one reduction over the n copies in order: the same sum whatever the batches were
                    # (a fixed-order sum where index_add_ would use atomics on CUDA)
                    out[i] = torch.cat(pending.pop(i)).sum(0)
        return out / p["n"]
