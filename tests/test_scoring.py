"""The public entry point: apem.score and apem.APEM (Quantus's call) against the linear classifier's closed form;
models and methods by name (timm:, torchvision:, captum:, zennit:, module:function); bad input in one line."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import apem
from apem import by_hand, explain, models
from apem.maps import stage_map

BOUND = 10001


def toy_case(n=16, seed=3):
    """The chapter-0 linear classifier, its image ``n`` times, and ``n`` maps: random ones and two named ones."""
    toy = by_hand.toy()
    maps = [tuple(v) for v in np.random.default_rng(seed).random((n - 2, by_hand.PIXELS))]
    maps += [by_hand.NAMED_MAPS["one-hot on the most sensitive pixel"], by_hand.NAMED_MAPS["all ones"]]
    x = toy.image().repeat(len(maps), 1, 1, 1)
    return toy, maps, x, by_hand.closed_forms(toy, maps, BOUND, False)


def as_found(s: apem.Scores):
    t = s.table()
    return t.rename(columns={})[["eps_minus", "eps_plus", "censored_minus", "censored_plus", "undefined_minus",
                                 "undefined_plus"]]


@pytest.mark.parametrize("mode", ["bisect", "thesis", "linear"])
def test_score_is_the_closed_form_of_the_linear_classifier(mode):
    toy, maps, x, closed = toy_case()
    s = apem.score(toy.model(), x, maps=by_hand.maps_tensor(maps), mode=mode, batch_size=by_hand.BATCH,
                   block=by_hand.BLOCK)
    assert not by_hand.disagreements(closed, as_found(s)).any()
    und = s.undefined_minus | s.undefined_plus
    assert und.tolist() == [False] * (len(maps) - 1) + [True]  # the all-ones map's irrelevance has no direction
    assert np.isnan(s.apem[und]).all() and s.reason[-1].startswith("eps-plus: zero L1 norm")
    assert (s.reason[~und] == "").all()
    np.testing.assert_array_equal(s.apem[~und], (s.eps_plus - s.eps_minus)[~und])
    assert (s.target == 0).all() and (s.n_forward > 0).all()
    assert "1 undefined" in repr(s) and f"search {mode}" in repr(s)


def test_a_wrong_answer_is_caught():
    """The comparison above can fail: moving one epsilon by one step is a disagreement."""
    toy, maps, x, closed = toy_case(6)
    found = as_found(apem.score(toy.model(), x, maps=by_hand.maps_tensor(maps), batch_size=by_hand.BATCH))
    found.loc[0, "eps_minus"] += 1
    assert by_hand.disagreements(closed, found)[(0, "minus")]


def test_a_method_gives_the_same_scores_as_its_maps():
    """``method=`` is the method's attribution through stage 3, then the same search as ``maps=``."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6)).eval()
    x = torch.rand(4, 3, 12, 12)
    for method, own in (("gradient", lambda m, x, t: explain.get_method("gradient")(m, x, t)),
                        ("captum:Saliency", lambda m, x, t: explain.get_method("captum:Saliency")(m, x, t))):
        by_name = apem.score(net, x, method=method, bound=2001)
        by_callable = apem.score(net, x, method=own, bound=2001)
        t = net(x).argmax(1)
        maps = stage_map(explain.get_method(method)(net, x, t), x, 3)
        by_maps = apem.score(net, x, maps=maps, bound=2001)
        for s in (by_callable, by_maps):
            np.testing.assert_array_equal(s.eps_minus, by_name.eps_minus)
            np.testing.assert_array_equal(s.eps_plus, by_name.eps_plus)


def test_target_label_searches_for_a_change_from_the_label():
    toy, maps, x, closed = toy_case(4)
    s = apem.score(toy.model(), x, target=1, maps=by_hand.maps_tensor(maps), batch_size=by_hand.BATCH)
    assert (s.eps_minus == 1).all()  # the prediction (class 0) already differs from target 1: the first step


# ----------------------------------------------------------------------------- Quantus's call convention


class Float64(nn.Module):
    """Quantus feeds float32 tensors to the model; the toy computes in float64, as its closed form."""

    def forward(self, x):
        return x.double()


def test_apem_in_quantus_evaluate_beside_pixel_flipping():
    quantus = pytest.importorskip("quantus")
    toy, maps, x, closed = toy_case(8)
    keep = slice(0, 7)  # leave out the all-ones map: its APEM is undefined (NaN)
    model = nn.Sequential(Float64(), toy.model()).eval()
    x_batch = x[keep].numpy()
    y_batch = np.zeros(len(x_batch), dtype=np.int64)
    a_batch = by_hand.maps_tensor(maps)[keep].numpy()
    metric = apem.APEM(stage=None, batch_size=by_hand.BATCH)
    assert metric.score_direction == quantus.helpers.enums.ScoreDirection.HIGHER
    results = quantus.evaluate(
        metrics={"APEM": metric,
                 "PixelFlipping": quantus.PixelFlipping(features_in_step=1, perturb_baseline="black",
                                                        disable_warnings=True, display_progressbar=False)},
        xai_methods={"by hand": a_batch}, model=model, x_batch=x_batch, y_batch=y_batch,
        call_kwargs={"set": {"channel_first": True, "device": "cpu"}}, agg_func=np.mean)
    expected = float(np.mean((closed.eps_plus - closed.eps_minus)[keep]))
    assert results["by hand"]["APEM"] == pytest.approx(expected, abs=0)
    assert np.isfinite(np.asarray(results["by hand"]["PixelFlipping"], dtype=float)).all()
    assert metric.evaluation_scores == [float(v) for v in (closed.eps_plus - closed.eps_minus)[keep]]


def test_apem_metric_makes_maps_from_raw_attributions_by_the_thesis_stage():
    toy, maps, x, closed = toy_case(5)
    torch.manual_seed(1)
    a = torch.randn(5, 3, 2, 2, dtype=torch.float64)
    got = apem.APEM(batch_size=by_hand.BATCH)(model=toy.model(), x_batch=x.numpy(), y_batch=np.zeros(5), a_batch=a.numpy())
    want = apem.score(toy.model(), x, maps=stage_map(a, x, 3), batch_size=by_hand.BATCH)
    np.testing.assert_array_equal(np.asarray(got), want.apem)


# ----------------------------------------------------------------------------- bad input, one line each


@pytest.mark.parametrize("kwargs, message", [
    (dict(maps=torch.rand(3, 1, 2, 2, dtype=torch.float64)), "maps must have shape (4, 1 or 3, 2, 2)"),
    (dict(maps=torch.rand(4, 1, 2, 2, dtype=torch.float64) * 2), "maps must lie in [0, 1]"),
    (dict(maps=torch.full((4, 1, 2, 2), math.nan)), "maps hold NaN"),
    (dict(), "give either maps"),
    (dict(method="no_such_method"), "unknown explanation method 'no_such_method'"),
    (dict(method=lambda m, x, t: x[:, :, :1]), "returned an attribution of shape (4, 3, 1, 2)"),
    (dict(method=lambda m, x, t: x * math.nan), "NaN/inf"),
    (dict(method="gradient", target=7), "target holds class indices outside 0 .. 1"),
])
def test_bad_input_is_one_line(kwargs, message):
    toy, maps, x, closed = toy_case(4)
    with pytest.raises((ValueError, TypeError)) as e:
        apem.score(toy.model(), x, **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_model_whose_output_is_not_logits_is_one_line():
    with pytest.raises(ValueError, match=r"output has shape \(2, 4, 6, 6\).*\(N, classes\)"):
        apem.score(nn.Conv2d(3, 4, 3), torch.rand(2, 3, 8, 8), maps=torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="x must be float images"):
        apem.score(nn.Flatten(), torch.rand(2, 8), maps=torch.rand(2, 1, 8, 8))


# ----------------------------------------------------------------------------- models by name


@pytest.mark.parametrize("name", ["timm:resnet18", "torchvision:resnet18"])
def test_a_library_model_gets_its_own_preprocessing_as_first_layer_and_a_weights_file(name, tmp_path):
    lm = models.load_model(name, weights=None, device="cpu")
    assert isinstance(lm.model.normalize, models.Normalize)
    assert lm.mean == (0.485, 0.456, 0.406) and lm.gradcam_layer == "net.layer4.1.conv2"
    resize = lm.transform.transforms[0]
    assert resize.size == (236 if name.startswith("timm") else 256)  # timm: 224 / crop_pct 0.95; torchvision: 256
    path = tmp_path / "w.pth"
    torch.save(lm.model.net.state_dict(), path)
    again = models.load_model(name, weights=str(path), device="cpu")
    x = torch.rand(1, 3, 224, 224)
    torch.testing.assert_close(again(x), lm(x), rtol=0, atol=0)
    assert again.weights == str(path)


def test_default_weights_come_from_the_local_cache_only(tmp_path, monkeypatch):
    lm = models.load_model("torchvision:resnet18", weights=None, device="cpu")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(models.WeightsError, match="no pretrained weights in the local cache.*nothing is downloaded"):
        models.load_model("torchvision:resnet18", device="cpu")
    (tmp_path / "checkpoints").mkdir()
    torch.save(lm.model.net.state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    cached = models.load_model("torchvision:resnet18", device="cpu")
    x = torch.rand(1, 3, 224, 224)
    torch.testing.assert_close(cached(x), lm(x), rtol=0, atol=0)

    import huggingface_hub
    import timm

    net = timm.create_model("resnet18", pretrained=False)
    torch.save(net.state_dict(), tmp_path / "timm.pth")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, fn: str(tmp_path / "timm.pth"))
    from_hub = models.load_model("timm:resnet18", device="cpu")
    assert from_hub.weights == str(tmp_path / "timm.pth")
    got = from_hub.model.net.state_dict()
    assert all(torch.equal(got[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("name, message", [
    ("timm:no_such_net", "unknown timm model 'no_such_net'"),
    ("torchvision:resnt18", "unknown torchvision model 'resnt18'"),
    ("resnet18", "unknown model 'resnet18'"),
])
def test_unknown_model_names_are_one_line(name, message):
    with pytest.raises(ValueError, match=message):
        models.load_model(name, weights=None)


# ----------------------------------------------------------------------------- methods by name


def test_module_function_methods_take_parameters_and_are_keyed_by_their_source(tmp_path, monkeypatch):
    (tmp_path / "my_attr.py").write_text(textwrap.dedent('''
        import torch
        def times(model, x, target, k: float = 2.0):
            return x * k
        def one_channel(model, x, target):
            return x[:, :1]
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    m = explain.get_method("my_attr:times", k=3.0)
    assert explain.method_params("my_attr:times") == {"k": 2.0, "objective": "loss"}
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(m(nn.Sequential(nn.Flatten(), nn.Linear(48, 3)), x), x * 3.0)
    one = explain.get_method("my_attr:one_channel")(nn.Sequential(nn.Flatten(), nn.Linear(48, 3)), x)
    assert one.shape == x.shape and torch.equal(one[:, 2], x[:, 0])
    from apem.config import Config
    from apem.runner.keys import method_parts

    cfg = Config(methods={"my_attr:times": {"k": 3.0}}, weights="none")
    parts = method_parts(cfg, "my_attr:times")
    assert parts["params"] == {"k": 3.0, "objective": "loss"} and len(parts["code"]) == 16
    with pytest.raises(ValueError, match="unknown parameter"):
        explain.get_method("my_attr:times", q=1)


@pytest.mark.parametrize("name", ["captum:Saliency", "captum:IntegratedGradients", "zennit:epsilon_plus_flat"])
def test_library_methods_by_name_match_the_library(name):
    torch.manual_seed(0)
    net = nn.Sequential(models.Normalize((0.5,) * 3, (0.5,) * 3), nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 6 * 6, 5, bias=False)).eval()
    x = torch.rand(3, 3, 8, 8)
    t = net(x).argmax(1)
    params = {"n_steps": 8} if "Integrated" in name else {}
    a = explain.get_method(name, **params)(net, x, t)
    if name.startswith("captum:"):
        import captum.attr

        ref = getattr(captum.attr, name[7:])(net).attribute(x.clone().requires_grad_(True), target=t, **params)
        torch.testing.assert_close(a, ref.detach())
    else:  # the one-hot output relevance is conserved through the bias-free ReLU net (epsilon ~ 0) and the
        # normalisation layer (passed through; its gradient would double it, std = 0.5): input relevance sums to 1
        assert a.shape == x.shape
        torch.testing.assert_close(a.sum((1, 2, 3)), torch.ones(3), rtol=1e-4, atol=1e-4)
    assert explain.method_params(name)["objective"] == "logit"


@pytest.mark.parametrize("name, message", [
    ("captum:NoSuch", "unknown captum method 'NoSuch'; captum.attr has"),
    ("captum:LayerGradCam", "not built from the forward function alone"),
    ("zennit:no_such", "unknown zennit composite 'no_such'"),
    ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
    ("apem.thesis:no_such_function", "has no function 'no_such_function'"),
])
def test_unknown_method_names_are_one_line(name, message):
    with pytest.raises(ValueError, match=message) as e:
        explain.method_params(name)
    assert "\n" not in str(e.value)


def test_a_method_missing_a_required_parameter_names_it():
    with pytest.raises(ValueError, match="needs it.*give low, high"):
        explain.get_method("zennit:EpsilonGammaBox")


# ----------------------------------------------------------------------------- apem score


def test_apem_score_prints_the_table_writes_parquet_and_a_rerun_computes_nothing(few_samples, tmp_path, monkeypatch,
                                                                                 capsys):
    import pandas as pd

    from apem.cli import main

    (tmp_path / "my_maps.py").write_text("def brightness(model, x, target):\n    return x.mean(1, keepdim=True)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["score", "--model", "timm:resnet18", "--weights", "none", "--method", "captum:Saliency", "--method",
            "my_maps:brightness", "--data", str(few_samples), "-n", "0", "--misclassified", "2", "--results",
            str(tmp_path / "r"), "--threads", "1", "--no-progress", "-p", "search_bound", "2001", "--out", "s.parquet"]
    assert main(args) == 0
    first = capsys.readouterr().out
    t = pd.read_parquet(tmp_path / "s.parquet")
    assert sorted(t.method.unique()) == ["captum:Saliency", "my_maps:brightness"] and set(t.stage) == {3}
    assert len(t) == 4 and set(t.group) == {"misclassified"}  # random weights: no image is classified correctly
    assert "APEM per method and stage" in first and "computed 1 chunk(s)" in first
    assert main(args) == 0
    again = capsys.readouterr().out
    assert "computed 0 chunk(s)" in again
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "s.parquet"), t)
    assert main(args[:5] + ["--method", "captum:NoSuch"] + args[9:]) == 2
    assert "unknown captum method 'NoSuch'" in capsys.readouterr().err


def test_apem_score_hands_its_configuration_and_ray_to_the_runner(monkeypatch):
    import apem.run
    from apem.cli import build_parser

    args = build_parser().parse_args(["score", "--method", "gradient", "--method", "captum:Saliency", "--ray",
                                      "head:6379", "--weights", "none", "-n", "5", "--misclassified", "2",
                                      "--stage", "2", "-p", "search_mode", "thesis"])
    seen = {}

    class Stop(Exception):
        pass

    def fake_run(cfg, **kw):
        seen.update(kw, cfg=cfg)
        raise Stop

    monkeypatch.setattr(apem.run, "run", fake_run)
    with pytest.raises(Stop):
        args.func(args)
    cfg = seen["cfg"]
    assert seen["ray"] == "head:6379" and cfg.methods == {"gradient": {}, "captum:Saliency": {}}
    assert (cfg.n_correct, cfg.n_misclassified, cfg.stages, cfg.shuffles, cfg.search_mode) == (5, 2, (2,), 0, "thesis")
    assert cfg.weights == "none" and cfg.filter_images == 0
