"""Model parameter randomisation (Adebayo et al. 2018) and map similarity."""

import numpy as np
import pytest
import torch
from torch import nn

from apem import randomisation

EFFNET_STAGES = ["classifier", "conv_head+bn2"] + [f"blocks.{i}" for i in range(6, -1, -1)] + ["conv_stem+bn1"]


def _snapshot(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _owner(key: str, stages) -> int | None:
    """Index of the stage whose module holds state-dict entry ``key`` (None: no stage)."""
    for i, s in enumerate(stages):
        if any(key.startswith(m + ".") for m in s.modules):
            return i
    return None


def test_stage_order_for_the_two_architectures(effnet):
    assert [s.name for s in randomisation.randomization_stages(effnet)] == EFFNET_STAGES
    assert randomisation.randomization_stages(effnet.model)[1].modules == ("net.conv_head", "net.bn2")
    from torchvision.models import vgg16

    vgg = nn.Sequential()
    with torch.device("meta"):  # the structure is enough: no memory, no initialisation
        vgg.add_module("net", vgg16(weights=None))
    names = [s.name for s in randomisation.randomization_stages(vgg)]
    convs = [28, 26, 24, 21, 19, 17, 14, 12, 10, 7, 5, 2, 0]
    assert names == ["classifier.6", "classifier.3", "classifier.0"] + [f"features.{i}" for i in convs]


def test_cascade_changes_exactly_the_top_stages_and_leaves_the_input_model(effnet):
    model = effnet.model
    before = _snapshot(model)
    stages = randomisation.randomization_stages(model)
    rng_state = torch.get_rng_state()
    seen = []
    for k, (name, rnd) in enumerate(randomisation.cascading_randomization(model, seed=1), start=1):
        seen.append(name)
        assert rnd is not model and not rnd.training
        after = rnd.state_dict()
        assert set(after) == set(before)
        for key, old in before.items():
            owner = _owner(key, stages)
            same = torch.equal(after[key], old)
            if key.endswith("num_batches_tracked"):
                continue  # a counter, not a weight
            if owner is not None and owner < k:
                assert not same, f"step {k} ({name}): {key} of a randomised stage did not change"
            else:
                assert same, f"step {k} ({name}): {key} changed but its stage is not randomised yet"
        # the parameter-free first layer never changes
        assert torch.equal(rnd.normalize.mean, model.normalize.mean)
    assert seen == EFFNET_STAGES
    for key, old in before.items():  # the input model is untouched
        assert torch.equal(model.state_dict()[key], old), key
    assert torch.equal(torch.get_rng_state(), rng_state)  # the caller's RNG is untouched


def test_stage_seeds_are_shared_between_cascade_independent_and_all(effnet):
    cascade = dict(randomisation.cascading_randomization(effnet, layers=3, seed=5))
    assert list(cascade) == EFFNET_STAGES[:3]
    indep = dict(randomisation.independent_randomization(effnet, layers=["blocks.6"], seed=5))
    w = "net.blocks.6.0.conv_pw.weight"
    assert torch.equal(indep["blocks.6"].state_dict()[w], cascade["blocks.6"].state_dict()[w])
    # the independent copy keeps the stages above trained
    assert torch.equal(indep["blocks.6"].state_dict()["net.classifier.weight"],
                       effnet.model.state_dict()["net.classifier.weight"])
    # each yielded model is its own copy: the first one keeps blocks.6 trained
    assert torch.equal(cascade["classifier"].state_dict()[w], effnet.model.state_dict()[w])
    full = randomisation.randomize_all(effnet, seed=5)
    assert torch.equal(full.state_dict()[w], cascade["blocks.6"].state_dict()[w])
    (_, other), = randomisation.independent_randomization(effnet, layers=["blocks.6"], seed=6)
    assert not torch.equal(other.state_dict()[w], full.state_dict()[w])
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert not torch.allclose(full(x), effnet.model(x))


def test_batchnorm_choice(effnet):
    (_, reset), = randomisation.cascading_randomization(effnet, layers=["conv_head+bn2"])
    (_, keep), = randomisation.cascading_randomization(effnet, layers=["conv_head+bn2"], batchnorm="keep")
    bn = reset.net.bn2
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))
    assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    assert torch.equal(keep.net.bn2.weight, effnet.model.net.bn2.weight)
    assert torch.equal(keep.net.bn2.running_mean, effnet.model.net.bn2.running_mean)
    assert not torch.equal(keep.net.conv_head.weight, effnet.model.net.conv_head.weight)
    with pytest.raises(ValueError):
        next(randomisation.cascading_randomization(effnet, batchnorm="random"))
    with pytest.raises(ValueError, match="unknown stage"):
        next(randomisation.cascading_randomization(effnet, layers=["blocks.9"]))


def test_vgg_top_layer_randomised_rest_kept():
    from torchvision.models import vgg16

    torch.manual_seed(0)
    with torch.device("meta"):  # VGG-16's layout, made light: conv0, conv2, then a small classifier
        net = vgg16(weights=None)
        net.features = net.features[:5]
        net.classifier[0] = nn.Linear(64 * 7 * 7, 32)
        net.classifier[3] = nn.Linear(32, 32)
        net.classifier[6] = nn.Linear(32, 10)
    net = net.to_empty(device="cpu")
    for m in net.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    model = nn.Sequential()
    model.add_module("net", net)
    model.eval()
    stages = randomisation.randomization_stages(model)
    assert [s.name for s in stages] == ["classifier.6", "classifier.3", "classifier.0", "features.2", "features.0"]
    before = _snapshot(model)
    steps = list(randomisation.cascading_randomization(model, layers=2))
    for k, (_, rnd) in enumerate(steps, start=1):
        for key, old in before.items():
            owner = _owner(key, stages)
            assert torch.equal(rnd.state_dict()[key], old) == (owner is None or owner >= k), (k, key)


# ----------------------------------------------------------------------------- similarity


def test_map_similarity_identical_inverted_and_unrelated():
    rng = np.random.default_rng(0)
    a = rng.random((3, 32, 32))
    same = randomisation.map_similarity(a, a)
    np.testing.assert_allclose(same.spearman, 1.0)
    np.testing.assert_allclose(same.ssim, 1.0)
    inv = randomisation.map_similarity(a, 1.0 - a)
    np.testing.assert_allclose(inv.spearman, -1.0)
    assert (inv.ssim < 0).all()
    other = randomisation.map_similarity(torch.tensor(a[:, None]), torch.tensor(rng.random((3, 1, 32, 32))))
    assert (other.spearman.abs() < 0.2).all() and (other.ssim.abs() < 0.2).all()
    # rank correlation ignores monotone rescaling, SSIM does not
    sq = randomisation.map_similarity(a, a ** 3)
    np.testing.assert_allclose(sq.spearman, 1.0)
    assert (sq.ssim < 0.99).all()


def test_map_similarity_checks_inputs():
    a = np.zeros((2, 8, 8))
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        randomisation.map_similarity(a + 2, a)
    with pytest.raises(ValueError, match="shape"):
        randomisation.map_similarity(a, np.zeros((2, 8, 9)))
    assert randomisation.map_similarity(a, a).spearman.isna().all()  # constant maps: undefined
    rgb = np.random.default_rng(1).random((2, 3, 16, 16))
    np.testing.assert_allclose(randomisation.map_similarity(rgb, rgb).ssim, 1.0)
