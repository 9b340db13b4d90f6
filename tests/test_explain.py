"""Explanation methods: each against an independent computation (finite differences,
closed forms, slow reference loops, conservation laws)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from apem import explain, thesis
from apem.seeds import seed_of
from apem.metric.clean import loss_gradient
from apem.models import Normalize

D = torch.float64


def wrap(net: nn.Module, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25), dtype=D) -> nn.Module:
    """An apem-style model: Sequential(normalize, net), eval, frozen parameters."""
    model = nn.Sequential(OrderedDict(normalize=Normalize(mean, std), net=net)).to(dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def tiny_cnn(bias=True, seed=0, classes=5) -> nn.Module:
    """conv-relu-maxpool-conv-relu-flatten-linear on 3 x 8 x 8 inputs."""
    torch.manual_seed(seed)
    return wrap(nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, bias=bias), nn.ReLU(), nn.Flatten(), nn.Linear(64, classes, bias=bias),
    ))


def images(n=3, size=8, seed=1, dtype=D):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g, dtype=dtype)


def hooks_and_flags(model):
    return (
        [p.requires_grad for p in model.parameters()],
        [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
        [n for n, _ in model.named_modules()],
    )


# --------------------------------------------------------------------------- gradient


def test_gradient_equals_central_finite_differences():
    model, x = tiny_cnn(), images(2)
    target = explain.predict_targets(model, x)
    a = explain.attribute(model, x, method="gradient")

    def loss(z):
        with torch.no_grad():
            return F.cross_entropy(model(z), target, reduction="sum").item()

    h = 1e-6
    rng = np.random.default_rng(0)
    for _ in range(8):
        idx = (int(rng.integers(2)), int(rng.integers(3)), int(rng.integers(8)), int(rng.integers(8)))
        xp, xm = x.clone(), x.clone()
        xp[idx] += h
        xm[idx] -= h
        fd = (loss(xp) - loss(xm)) / (2 * h)
        assert a[idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_gradient_uses_given_target():
    model, x = tiny_cnn(), images(2)
    t = torch.tensor([3, 1])
    g, _, _ = loss_gradient(model, x, t)
    assert torch.equal(explain.attribute(model, x, t), g)
    assert not torch.allclose(explain.attribute(model, x, t), explain.attribute(model, x, (explain.predict_targets(model, x) + 1) % 5))


# --------------------------------------------------------------------------- SmoothGrad


def smoothgrad_reference(model, x, target, n, sigma, seed, noise_target, offset=0):
    """One noisy copy at a time."""
    out = torch.zeros_like(x)
    for i in range(len(x)):
        noise = explain.smoothgrad_noise(x[i], n, seed, offset + i)
        for k in range(n):
            xi = (x[i] + sigma * noise[k]).unsqueeze(0)
            t = None if noise_target == "sample" else target[i : i + 1]
            g, _, _ = loss_gradient(model, xi, t)
            out[i] += g[0]
    return out / n


def test_smoothgrad_with_vanishing_noise_is_the_gradient():
    model, x = tiny_cnn(), images(3)
    sg = explain.attribute(model, x, method="smoothgrad", n=5, sigma=1e-8, batch_size=4)
    assert torch.allclose(sg, explain.attribute(model, x), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("noise_target", ["sample", "fixed"])
def test_smoothgrad_equals_slow_reference(noise_target):
    model, x = tiny_cnn(), images(3)
    t = torch.tensor([0, 2, 4])
    # n = 5 copies in chunks of 3: chunks span two images
    sg = explain.attribute(model, x, t, method="smoothgrad", n=5, sigma=0.3, batch_size=3, seed=7, noise_target=noise_target)
    ref = smoothgrad_reference(model, x, t, 5, 0.3, 7, noise_target)
    assert torch.allclose(sg, ref, rtol=1e-10, atol=1e-12)


def test_smoothgrad_targets_differ_between_modes():
    # with large noise some copies change class: "sample" and "fixed" must then differ
    model, x = tiny_cnn(), images(3)
    a = explain.attribute(model, x, method="smoothgrad", n=16, sigma=1.0, noise_target="sample")
    b = explain.attribute(model, x, method="smoothgrad", n=16, sigma=1.0, noise_target="fixed")
    assert not torch.allclose(a, b)


def test_smoothgrad_is_reproducible_and_seeded():
    model, x = tiny_cnn(), images(3, dtype=torch.float32).float()
    model = model.float()
    a = explain.attribute(model, x, method="smoothgrad", n=6, seed=3)
    b = explain.attribute(model, x, method="smoothgrad", n=6, seed=3)
    c = explain.attribute(model, x, method="smoothgrad", n=6, seed=4)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_smoothgrad_noise_depends_on_seed_and_position_only():
    model, x = tiny_cnn(), images(4)
    full = explain.attribute(model, x, method="smoothgrad", n=4, seed=1, batch_size=5)
    head = explain.attribute(model, x[:2], method="smoothgrad", n=4, seed=1, batch_size=3)
    tail = explain.attribute(model, x[2:], method="smoothgrad", n=4, seed=1, batch_size=8, offset=2)
    assert torch.allclose(full, torch.cat([head, tail]), rtol=1e-12, atol=1e-14)
    # without the offset the tail images get the head's noise
    assert not torch.allclose(full[2:], explain.attribute(model, x[2:], method="smoothgrad", n=4, seed=1))


def test_image_seeds_do_not_collide():
    seeds = {seed_of(s, i) for s in range(20) for i in range(200)}
    assert len(seeds) == 20 * 200


# --------------------------------------------------------------------------- LRP


def test_lrp_on_a_linear_model_equals_the_closed_form():
    torch.manual_seed(0)
    lin = nn.Linear(12, 4)
    model = wrap(nn.Sequential(nn.Flatten(), lin))
    x = images(2, size=2)
    eps = 1.0
    xn = ((x - model.normalize.mean) / model.normalize.std).flatten(1)  # relevance passes through Normalize
    w, b = lin.weight.to(D), lin.bias.to(D)
    z = xn @ w.T + b
    for objective in ("loss", "logit"):
        t = torch.tensor([1, 3])
        rout = torch.softmax(z, 1) if objective == "loss" else F.one_hot(t, 4).to(D)
        expected = torch.einsum("ni,ji,nj->ni", xn, w, rout / (z + eps * torch.sign(z)))
        got = explain.attribute(model, x, t, method="lrp_epsilon", epsilon=eps, objective=objective)
        assert torch.allclose(got.flatten(1), expected, rtol=1e-10, atol=1e-14)


def _layer_relevances(net: nn.Sequential, x, rout, eps):
    """Relevance entering each Conv/Linear layer: LRP of the network's tail from that layer on.

    The rules are local, so the tail's input relevance is the full network's
    relevance at that layer."""
    sums = []
    with torch.no_grad():
        acts = [x]
        for layer in net:
            acts.append(layer(acts[-1]))
    for k, layer in enumerate(net):
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            sums.append(explain.lrp_relevance(net[k:], acts[k], rout, eps).sum().item())
    return sums


def test_lrp_conserves_relevance_layer_by_layer_without_bias_and_epsilon():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 6 * 6, 5, bias=False),
    ).to(D).eval()
    x = images(1, size=6)
    rout = torch.softmax(net(x), 1).detach()
    sums = _layer_relevances(net, x, rout, 1e-9)
    assert len(sums) == 3
    assert sums == pytest.approx([1.0] * 3, rel=1e-6)
    # epsilon = 1 absorbs relevance: the z / (z + eps) factors shrink it at every layer
    sums1 = _layer_relevances(net, x, rout, 1.0)
    assert abs(sums1[0] - 1.0) > 1e-2


def test_lrp_max_pool_sends_relevance_to_the_winner():
    torch.manual_seed(0)
    net = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 2 * 2, 3)).to(D).eval()
    a = images(1, size=4)
    rel = explain.lrp_relevance(net, a, lambda z: torch.softmax(z, 1), 1e-9)
    winners = F.max_pool2d(a, 2, return_indices=True)[1]
    mask = torch.zeros(a.numel(), dtype=torch.bool)
    mask[(winners + torch.arange(3).view(1, 3, 1, 1) * 16).flatten()] = True
    flat = rel.flatten()
    assert torch.all(flat[~mask] == 0) and torch.all(flat[mask] != 0)


def test_lrp_handles_conv2d_same_like_explicit_padding():
    from timm.layers import Conv2dSame

    torch.manual_seed(0)
    same = Conv2dSame(3, 4, 3, stride=2, bias=False)
    explicit = nn.Conv2d(3, 4, 3, stride=2, padding=0, bias=False)
    explicit.weight.data.copy_(same.weight.data)
    head = nn.Linear(4 * 4 * 4, 3, bias=False)
    # 8 x 8 input, stride 2: TF "same" pads 1 on the right/bottom only
    a = wrap(nn.Sequential(same, nn.ReLU(), nn.Flatten(), head))
    b = wrap(nn.Sequential(nn.ZeroPad2d((1, 1, 1, 1)), explicit, nn.ReLU(), nn.Flatten(), head))
    x = images(2, size=8)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))  # symmetric padding is not TF "same" here
    b.net[0].padding = (0, 1, 0, 1)
    with torch.no_grad():
        assert torch.allclose(a(x), b(x))
    ra = explain.attribute(a, x, method="lrp_epsilon", epsilon=1e-9)
    rb = explain.attribute(b, x, method="lrp_epsilon", epsilon=1e-9)
    assert torch.allclose(ra, rb, rtol=1e-9, atol=1e-15)
    assert ra.sum().item() == pytest.approx(2.0, rel=1e-6)  # conserved: softmax sums to 1 per image


def randomise_batch_norms(model, zero_shift=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            if zero_shift:
                m.running_mean.zero_()
                m.bias.data.zero_()
            else:
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)


def residual_block():
    from timm.models._efficientnet_blocks import InvertedResidual

    torch.manual_seed(0)
    block = InvertedResidual(4, 4, exp_ratio=2, act_layer=nn.ReLU).eval()
    randomise_batch_norms(block, zero_shift=True)
    for p in block.parameters():
        p.requires_grad_(False)
    return block.to(D)


def _relevance_sum(block, composite, x, rout):
    from zennit.attribution import Gradient

    with Gradient(block, composite) as attributor:
        _, rel = attributor(x.clone().requires_grad_(True), rout)
    return rel.sum().item()


def test_lrp_residual_sum_conserves_relevance_without_double_counting():
    from zennit.composites import LayerMapComposite

    block = residual_block()
    assert block.has_skip
    x = torch.randn(2, 4, 5, 5, dtype=D, generator=torch.Generator().manual_seed(2))
    rout = torch.rand(2, 4, 5, 5, dtype=D, generator=torch.Generator().manual_seed(3))
    fold, residual = explain.canonizer_classes()
    with_sum = LayerMapComposite(explain.lrp_layer_map(1e-12, 1e-12), canonizers=[fold(), residual()])
    without = LayerMapComposite(explain.lrp_layer_map(1e-12, 1e-12), canonizers=[fold()])
    total = rout.sum().item()
    assert _relevance_sum(block, with_sum, x, rout) == pytest.approx(total, rel=1e-6)
    # a plain "+" hands the whole relevance to both branches: counted twice
    assert _relevance_sum(block, without, x, rout) == pytest.approx(2 * total, rel=1e-6)


@pytest.fixture(scope="module")
def random_lite0():
    import timm

    torch.manual_seed(0)
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    randomise_batch_norms(net)
    return wrap(net, mean=(0.5,) * 3, std=(0.5,) * 3, dtype=torch.float32)


def snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: m.eps for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)},
        hooks_and_flags(model),
        [n for n, m in model.named_modules() if "forward" in vars(m)],
        [n for n, m in model.named_parameters()] + [n for n, m in model.named_buffers()],
    )


def assert_same_snapshot(a, b):
    assert a[0].keys() == b[0].keys()
    assert all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    assert a[1:] == b[1:]


def test_lite0_canonized_logits_equal_and_model_unchanged(random_lite0):
    model = random_lite0
    x = images(2, size=64, dtype=torch.float32)
    with torch.no_grad():
        before = model(x)
    state = snapshot(model)
    composite = explain.lrp_composite(model)
    with composite.context(model):
        with torch.no_grad():
            canon = model(x)
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        from apem.explain.timm_canonizers import FOLDED_BN_EPS

        assert len(bns) == 49 and all(torch.all(m.running_var == 1) and m.eps == FOLDED_BN_EPS for m in bns)
        assert torch.sqrt(torch.tensor(1.0) + FOLDED_BN_EPS) == 1.0  # the folded BN divides by exactly 1
        assert sum(hasattr(m, "canonizer_sum") for m in model.modules()) == 9  # Lite0's skip blocks
    assert before.abs().max() > 0.1
    assert torch.allclose(canon, before, atol=1e-4, rtol=1e-4)
    assert_same_snapshot(state, snapshot(model))
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_lrp_on_lite0_is_finite_and_leaves_model_unchanged(random_lite0):
    model = random_lite0
    x = images(2, size=64, dtype=torch.float32)
    state = snapshot(model)
    a = explain.attribute(model, x, method="lrp_epsilon")
    assert a.shape == x.shape and torch.isfinite(a).all() and a.abs().sum() > 0
    assert_same_snapshot(state, snapshot(model))


def test_lrp_on_lite0_conserves_relevance_without_bias(random_lite0):
    # folded BN shifts are the only biases: with them at zero and a tiny epsilon
    # (and stabilizer) the whole network, residual sums included, conserves the
    # softmax's 1 per image
    import copy

    model = copy.deepcopy(random_lite0).double()
    randomise_batch_norms(model, zero_shift=True)
    model.net.classifier.bias.data.zero_()
    x = images(1, size=32)
    rout = torch.softmax(model(x), 1)
    a = explain.lrp_relevance(model, x, rout, epsilon=1e-12, stabilizer=1e-12)
    assert a.sum().item() == pytest.approx(1.0, rel=1e-6)


def test_lrp_on_random_vgg16_small_input():
    from torchvision.models import vgg16

    torch.manual_seed(0)
    model = wrap(vgg16(weights=None), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), dtype=torch.float32)
    x = images(1, size=64, dtype=torch.float32)
    state = hooks_and_flags(model)
    a = explain.attribute(model, x, method="lrp_epsilon")
    assert a.shape == (1, 3, 64, 64) and torch.isfinite(a).all() and a.abs().sum() > 0
    assert hooks_and_flags(model) == state


def test_lrp_refuses_a_batch_norm_it_cannot_fold():
    torch.manual_seed(0)
    model = wrap(nn.Sequential(nn.Flatten(), nn.Unflatten(1, (3, 2, 2)), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 2)))
    with pytest.raises(ValueError, match="batch norm"):
        explain.attribute(model, images(1, size=2), method="lrp_epsilon")


# --------------------------------------------------------------------------- captum methods


def test_integrated_gradients_completeness_on_the_target_logit():
    # smooth model: IG sums to logit_t(x) - logit_t(0) (captum: the target is the logit)
    torch.manual_seed(0)
    model = wrap(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)))
    x = images(2)
    t = torch.tensor([1, 4])
    a = explain.attribute(model, x, t, method="integrated_gradients", n_steps=32, internal_batch_size=16)
    with torch.no_grad():
        diff = model(x).gather(1, t[:, None]) - model(torch.zeros_like(x)).gather(1, t[:, None])
    assert torch.allclose(a.sum((1, 2, 3)), diff.flatten(), rtol=1e-6, atol=1e-8)


def test_input_x_gradient_is_input_times_logit_gradient():
    model, x = tiny_cnn(), images(2)
    t = torch.tensor([0, 3])
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg).gather(1, t[:, None]).sum(), xg)
    assert torch.allclose(explain.attribute(model, x, t, method="input_x_gradient"), x * g)


def test_guided_backprop_on_relu6_closed_form():
    torch.manual_seed(0)
    l1, l2 = nn.Linear(12, 6), nn.Linear(6, 3)
    model = wrap(nn.Sequential(nn.Flatten(), l1, nn.ReLU6(), l2))
    x = images(2, size=2) * 8  # some hidden units above 6
    t = torch.tensor([0, 2])
    std = model.normalize.std.flatten().repeat_interleave(4)
    with torch.no_grad():
        h = l1(((x - model.normalize.mean) / model.normalize.std).flatten(1))
    mask = ((h > 0) & (h < 6)).to(D)
    # guided: only positive gradients pass each ReLU6, then the linear layers' transposes
    up = torch.relu(mask * l2.weight[t])
    expected = (up @ l1.weight) / std
    got = explain.attribute(model, x, t, method="guided_backprop")
    assert torch.allclose(got.flatten(1), expected)
    # relu6=False is captum's own behaviour: ReLU6 is not hooked, the plain logit gradient
    with pytest.warns(UserWarning, match="plain gradient"):
        plain = explain.attribute(model, x, t, method="guided_backprop", relu6=False)
    assert torch.allclose(plain.flatten(1), ((mask * l2.weight[t]) @ l1.weight) / std)


def test_gradcam_equals_manual_computation():
    model, x = tiny_cnn(), images(2)
    t = torch.tensor([1, 2])
    layer = model.net[3]  # the last Conv2d: the default
    acts = {}
    handle = layer.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    xg = x.clone().requires_grad_(True)
    out = model(xg)
    (g,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), acts["a"])
    handle.remove()
    cam = torch.relu((g.mean((2, 3), keepdim=True) * acts["a"]).sum(1, keepdim=True)).detach()
    expected = F.interpolate(cam, size=(8, 8), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    assert torch.allclose(explain.attribute(model, x, t, method="gradcam"), expected)
    assert torch.allclose(explain.attribute(model, x, t, method="gradcam", layer="net.3"), expected)
    with pytest.raises(ValueError, match="net.nope"):
        explain.attribute(model, x, t, method="gradcam", layer="net.nope")


def test_gradcam_default_layer_of_a_loaded_model():
    from apem.models import LoadedModel

    model, x = tiny_cnn(), images(2)
    loaded = LoadedModel(name="tiny", preset="standard", model=model, transform=None, mean=(), std=(),
                         weights="random", gradcam_layer="net.4")
    a = explain.attribute(loaded, x, method="gradcam")
    assert torch.allclose(a, explain.attribute(model, x, method="gradcam", layer="net.4"))
    assert not torch.allclose(a, explain.attribute(model, x, method="gradcam"))


# --------------------------------------------------------------------------- common behaviour

FAST = {"smoothgrad": {"n": 3}, "integrated_gradients": {"n_steps": 4}}


@pytest.mark.parametrize("name", sorted(explain.METHODS))
def test_every_method_keeps_model_state_and_shape(name):
    model, x = tiny_cnn(), images(2)
    model.net[0].weight.requires_grad_(True)  # a mixed state must survive too
    before = hooks_and_flags(model)
    a = explain.attribute(model, x, method=name, **FAST.get(name, {}))
    assert a.shape == x.shape and a.dtype == x.dtype and a.device == x.device
    assert hooks_and_flags(model) == before
    assert not a.requires_grad


class Sqrt(nn.Module):
    def forward(self, x):
        return x.sqrt()


@pytest.mark.parametrize("name", ["gradient", "input_x_gradient", "smoothgrad"])
def test_non_finite_attribution_raises_naming_method_and_count(name):
    torch.manual_seed(0)
    model = wrap(nn.Sequential(Sqrt(), nn.Flatten(), nn.Linear(12, 3)), mean=(0,) * 3, std=(1,) * 3)
    x = images(3, size=2) + 0.1
    x[1, 0, 0, 0] = 0.0  # d sqrt / dx = inf at 0: one image of three
    params = {"n": 2, "sigma": 0.0} if name == "smoothgrad" else {}
    with pytest.raises(explain.AttributionError, match=rf"{name}: .*1 of 3 image"):
        explain.attribute(model, x, method=name, **params)


def test_attribution_error_is_a_value_error():
    assert issubclass(explain.AttributionError, ValueError)


# --------------------------------------------------------------------------- registry


def test_registry_names_and_defaults():
    assert set(thesis.THESIS_METHODS) <= set(explain.METHODS)
    assert explain.method_params("smoothgrad") == {
        "n": 100, "sigma": 0.2, "noise_target": "sample", "batch_size": 32, "seed": 0, "offset": 0, "noise_keys": None, "objective": "loss",
    }
    assert explain.method_params("lrp_epsilon") == {"epsilon": 1.0, "objective": "loss"}
    assert explain.method_params("gradient") == {"objective": "loss"}
    assert explain.method_params("gradcam")["objective"] == "logit"
    m = explain.get_method("smoothgrad", n=4)
    assert m.params["n"] == 4 and m.params["sigma"] == 0.2 and "n=4" in repr(m)


def test_objective_says_what_a_method_explains():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).double().eval()
    x = torch.rand(3, 3, 2, 2, dtype=torch.float64)
    t = torch.tensor([0, 2, 1])
    g_loss, _, _ = loss_gradient(model, x, t)
    w = model[1].weight
    g_logit = w[t].reshape(3, 3, 2, 2)
    assert torch.equal(explain.attribute(model, x, t, method="gradient"), g_loss)
    assert torch.allclose(explain.attribute(model, x, t, method="gradient", objective="logit"), g_logit)
    assert torch.allclose(explain.attribute(model, x, t, method="input_x_gradient"), x * g_logit)
    # the loss per class is -log_softmax: its gradient at the target is the loss gradient
    assert torch.allclose(explain.attribute(model, x, t, method="input_x_gradient", objective="loss"), x * g_loss)
    with pytest.raises(ValueError, match="objective"):
        explain.get_method("gradient", objective="margin")


def linear_classifier(seed=0, classes=5, shape=(3, 2, 2)):
    """``z = W flatten(x) + b`` in float64: every gradient has a closed form."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape)), classes)).double().eval()
    x = torch.rand(4, *shape, dtype=torch.float64)
    return model, x, model[1].weight.detach()


def test_gradient_objectives_match_their_closed_forms_on_a_linear_classifier():
    """logit: dS_c/dx = W[c] (the thesis's definition); loss: -(1 - p_c) W[c] + sum_{k != c} p_k W[k] (its code)."""
    model, x, W = linear_classifier()
    t = torch.tensor([0, 3, 1, 4])
    p = torch.softmax(model(x), 1).detach()
    logit = explain.attribute(model, x, t, method="gradient", objective="logit")
    assert torch.equal(logit, W[t].reshape(x.shape))
    loss = explain.attribute(model, x, t, method="gradient", objective="loss")
    closed = torch.stack([
        -(1 - p[i, c]) * W[c] + sum(p[i, k] * W[k] for k in range(W.shape[0]) if k != c)
        for i, c in enumerate(t.tolist())
    ]).reshape(x.shape)
    torch.testing.assert_close(loss, closed, rtol=1e-12, atol=1e-15)
    # the default is the loss (the thesis's code), and the two objectives differ
    assert torch.equal(explain.attribute(model, x, t, method="gradient"), loss)
    assert not torch.allclose(loss, logit)


def test_smoothgrad_logit_objective_averages_the_class_score_gradient():
    """On a linear model every noisy copy's logit gradient is W[t]: the mean is W[t] (noise_target fixed)."""
    model, x, W = linear_classifier(seed=1)
    t = torch.tensor([2, 0, 1, 1])
    sg = explain.attribute(model, x, t, method="smoothgrad", objective="logit", n=8, noise_target="fixed", seed=3)
    torch.testing.assert_close(sg, W[t].reshape(x.shape), rtol=1e-12, atol=1e-15)


def test_a_configuration_passes_the_objective_to_gradient_and_smoothgrad(tmp_path):
    from apem.config import Config
    from apem.runner.compute import method_for

    f = tmp_path / "c.yaml"
    f.write_text("methods:\n  gradient: {objective: logit}\n  smoothgrad: {objective: logit, n: 2}\n")
    cfg = Config.from_yaml(f)
    assert cfg.methods == {"gradient": {"objective": "logit"}, "smoothgrad": {"objective": "logit", "n": 2}}
    for name in ("gradient", "smoothgrad"):
        assert method_for(cfg, name, ["a.JPEG"]).params["objective"] == "logit"
    model, x, W = linear_classifier()
    t = torch.tensor([1, 1, 0, 2])
    got = method_for(cfg, "gradient", ["a", "b", "c", "d"])(model, x, t)
    assert torch.equal(got, W[t].reshape(x.shape))
    assert Config().methods.get("gradient", {}).get("objective", "loss") == "loss"


def test_unknown_method_or_parameter_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="'gradcam_plus'"):
        explain.get_method("gradcam_plus")
    with pytest.raises(ValueError, match="'nope'"):
        explain.method_params("nope")
    with pytest.raises(ValueError, match="sigmaa"):
        explain.get_method("smoothgrad", sigmaa=0.1)
    with pytest.raises(ValueError, match="epsilon"):
        explain.attribute(tiny_cnn(), images(1), method="gradient", epsilon=1.0)


@settings(max_examples=30, deadline=None)
@given(
    key=st.sampled_from(["n", "sigma", "noise_target", "batch_size", "seed"]),
    value=st.one_of(st.integers(-5, 0), st.floats(allow_nan=True), st.text(max_size=3), st.none(), st.booleans()),
)
def test_bad_parameter_values_are_refused(key, value):
    ok = {
        "n": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "batch_size": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "sigma": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v >= 0,
        "noise_target": lambda v: v in ("sample", "fixed"),
        "seed": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    }[key](value)
    if ok:
        explain.get_method("smoothgrad", **{key: value})
    else:
        with pytest.raises(ValueError, match=key):
            explain.get_method("smoothgrad", **{key: value})


def test_methods_work_under_no_grad_and_inference_mode():
    model, x = tiny_cnn(), images(2)
    expected = explain.attribute(model, x)
    with torch.no_grad():
        assert torch.equal(explain.attribute(model, x), expected)
    with torch.inference_mode():
        xi = x.clone()
        assert torch.equal(explain.attribute(model, xi), expected)


def test_target_shape_is_checked():
    with pytest.raises(ValueError, match="one class index per image"):
        explain.attribute(tiny_cnn(), images(2), torch.tensor([1, 2, 3]))
