"""Models, weights and image sets: the foundation everything else reads."""

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from apem import data
from apem.models import Normalize, WeightsError, load_model, map_state_dict_in_order


# ----------------------------------------------------------------------------- models


def test_models_take_pixels_normalisation_is_first_layer(effnet):
    assert isinstance(effnet.model.normalize, Normalize)
    x = torch.rand(2, 3, 224, 224)
    manual = effnet.model.net((x - 0.5) / 0.5)
    assert torch.allclose(effnet.model(x), manual, atol=1e-5)


def test_thesis_preset_has_no_normalisation():
    lm = load_model("efficientnet_lite0", preset="thesis", weights=None)
    x = torch.rand(1, 3, 224, 224)
    assert torch.equal(lm.model.normalize(x), x)
    im = Image.fromarray(np.zeros((100, 300, 3), np.uint8))
    assert tuple(lm.transform(im).shape) == (3, 224, 224)  # square resize, no crop


def test_standard_transform_resize_then_centre_crop(effnet):
    # a 512x256 image: short side -> 256, centre crop 224; the left third is white
    arr = np.zeros((256, 512, 3), np.uint8)
    arr[:, :170] = 255
    t = effnet.transform(Image.fromarray(arr))
    assert tuple(t.shape) == (3, 224, 224)
    assert t.min() >= 0 and t.max() <= 1
    # the crop keeps columns 144..367: white columns 144..169 become crop columns 0..25
    assert t[:, :, :24].mean() > 0.95 and t[:, :, 28:].mean() < 0.05


def test_effnet_weights_map_in_order_and_predict_sample_images(effnet, sample_dir):
    images = data.load_image_set(sample_dir)
    sub = images.subset(range(0, 1000, 50))  # 20 classes spread over the list
    _, x, y = data.load_tensors(sub, effnet.transform)
    with torch.no_grad():
        acc = (effnet.model(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.75, acc  # random weights would give ~0.001


def test_wrong_weights_file_gives_clear_error(tmp_path):
    import timm

    sd = timm.create_model("tf_efficientnet_lite0").state_dict()
    keys = list(sd)
    bad = dict(sd)
    bad[keys[0]] = torch.zeros(5, 5)  # wrong shape
    p = tmp_path / "bad.pth"
    torch.save({f"k{i}": v for i, v in enumerate(bad.values())}, p)
    with pytest.raises(WeightsError, match="shape"):
        load_model("efficientnet_lite0", weights=p)
    short = tmp_path / "short.pth"
    torch.save({f"k{i}": v for i, v in enumerate(list(sd.values())[:-2])}, short)
    with pytest.raises(WeightsError, match="wrong or truncated"):
        load_model("efficientnet_lite0", weights=short)


def test_truncated_weights_file_gives_clear_error(tmp_path):
    from apem.models import _effnet_lite0_file

    blob = _effnet_lite0_file().read_bytes()
    p = tmp_path / "trunc.pth"
    p.write_bytes(blob[: len(blob) // 3])
    with pytest.raises(WeightsError, match="truncated"):
        load_model("efficientnet_lite0", weights=p)
    with pytest.raises(WeightsError, match="not found"):
        load_model("efficientnet_lite0", weights=tmp_path / "nope.pth")


def test_map_state_dict_in_order_renames_and_keeps_values():
    src = {"a.w": torch.ones(2, 3), "a.b": torch.arange(3.0)}
    tgt = {"x.weight": torch.zeros(2, 3), "x.bias": torch.zeros(3)}
    out = map_state_dict_in_order(src, tgt)
    assert list(out) == ["x.weight", "x.bias"] and torch.equal(out["x.bias"], torch.arange(3.0))


@pytest.mark.slow  # over 3 s: left out of `make test-fast`
def test_vgg16_without_weights_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match="IMAGENET1K_V1"):
        load_model("vgg16")
    lm = load_model("vgg16", weights=None)  # random weights for tests
    with torch.no_grad():
        assert lm.model(torch.rand(1, 3, 64, 64)).shape == (1, 1000)


@pytest.mark.slow  # over 3 s: left out of `make test-fast`
def test_vgg16_loads_a_given_state_dict_file(tmp_path):
    from torchvision.models import vgg16

    p = tmp_path / "vgg.pth"
    torch.manual_seed(0)
    torch.save(vgg16().state_dict(), p)
    lm = load_model("vgg16", preset="thesis", weights=p)
    assert lm.weights == str(p) and torch.equal(lm.model.normalize.std.flatten(), torch.ones(3))


def test_unknown_model_and_preset():
    with pytest.raises(ValueError, match="unknown model"):
        load_model("resnet9000")
    with pytest.raises(ValueError, match="preset"):
        load_model("vgg16", preset="fancy", weights=None)


# ----------------------------------------------------------------------------- data


def _jpeg(path: Path, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path, "JPEG")


def test_class_index_is_position_among_sorted_wnids():
    w = data.wnids()
    assert len(w) == 1000 and w[0] == "n01440764" and w[-1] == "n15075141"
    assert data.class_name(0) == "tench" and len(data.class_names()) == 1000


def test_sample_layout_labels(tmp_path):
    _jpeg(tmp_path / "n01440764_tench.JPEG")
    _jpeg(tmp_path / "n15075141_toilet_tissue.JPEG")
    s = data.load_image_set(tmp_path)
    assert s.layout == "samples" and s.labels == (0, 999)


def test_sample_set_has_1000_distinct_classes(sample_dir):
    s = data.load_image_set(sample_dir)
    assert len(s) == 1000 and sorted(s.labels) == list(range(1000))


def test_per_class_layout(tmp_path):
    for wnid, n in [("n01443537", 2), ("n01440764", 1)]:
        (tmp_path / wnid).mkdir()
        for i in range(n):
            _jpeg(tmp_path / wnid / f"ILSVRC2012_val_{i:08d}.JPEG", i)
    s = data.load_image_set(tmp_path)
    assert s.layout == "per-class" and s.labels == (0, 1, 1)


def test_flat_layout_with_val_txt(tmp_path):
    for i in (1, 2, 3):
        _jpeg(tmp_path / f"ILSVRC2012_val_{i:08d}.JPEG", i)
    (tmp_path / "val.txt").write_text(
        "ILSVRC2012_val_00000001.JPEG 65\nILSVRC2012_val_00000002.JPEG 970\nILSVRC2012_val_00000003.JPEG 230\n"
    )
    s = data.load_image_set(tmp_path)
    assert s.layout == "flat+ground-truth" and s.labels == (65, 970, 230)


def test_flat_layout_with_kaggle_csv_beside_the_folder(tmp_path):
    val = tmp_path / "val"
    val.mkdir()
    _jpeg(val / "ILSVRC2012_val_00000001.JPEG")
    _jpeg(val / "ILSVRC2012_val_00000002.JPEG")
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\nILSVRC2012_val_00000002,n01443537 1 2 3 4\n"
        "ILSVRC2012_val_00000001,n01440764 1 2 3 4 n01440764 5 6 7 8\n"
    )
    s = data.load_image_set(val)
    assert s.labels == (0, 1)


def test_devkit_ground_truth_needs_meta_mat(tmp_path):
    _jpeg(tmp_path / "ILSVRC2012_val_00000001.JPEG")
    (tmp_path / "ILSVRC2012_validation_ground_truth.txt").write_text("490\n")
    with pytest.raises(data.DataError, match="meta.mat"):
        data.load_image_set(tmp_path)


def test_bad_val_txt_line_is_named(tmp_path):
    _jpeg(tmp_path / "ILSVRC2012_val_00000001.JPEG")
    (tmp_path / "val.txt").write_text("ILSVRC2012_val_00000001.JPEG tench\n")
    with pytest.raises(data.DataError, match=r"val.txt:1"):
        data.load_image_set(tmp_path)


def test_missing_data_folder(tmp_path, monkeypatch):
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_image_set(tmp_path / "nowhere")
    monkeypatch.setenv("APEM_DATA", str(tmp_path / "nowhere2"))
    with pytest.raises(data.DataError, match="nowhere2"):
        data.load_image_set()


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(data.DataError, match="no labelled images"):
        data.load_image_set(tmp_path)


def test_corrupt_and_non_image_files_are_skipped_with_a_warning(few_samples, effnet):
    (few_samples / "n01443537_goldfish.JPEG").write_bytes(b"this is not a jpeg")
    (few_samples / "notes.txt").write_text("hello")
    with pytest.warns(UserWarning, match="notes.txt"):
        s = data.load_image_set(few_samples)
    assert len(s) == 4  # the corrupt one has a valid name: it is found at load time
    with pytest.warns(UserWarning, match="n01443537_goldfish.JPEG"):
        idx, x, y = data.load_tensors(s, effnet.transform)
    assert len(idx) == 3 and x.shape == (3, 3, 224, 224)
    with pytest.raises(data.DataError, match="cannot read image"):
        data.load_image(few_samples / "n01443537_goldfish.JPEG", effnet.transform)


def test_classify_command(few_samples, capsys):
    from apem.cli import main

    assert main(["classify", "--data", str(few_samples), "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "top-1 accuracy" in out and "images=4" in out


def test_cli_reports_a_missing_folder_without_a_traceback(tmp_path, capsys):
    from apem.cli import main

    assert main(["classify", "--data", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_version_flag(capsys):
    import apem
    from apem.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"apem {apem.__version__}"


def test_malloc_tuning_applies_once_and_can_be_turned_off():
    import platform
    import subprocess
    import sys

    # importing apem changes nothing; the runner calls tune_malloc explicitly
    code = "import apem, apem.alloc as a; print('ok' in a._state, a.tune_malloc(), a.tune_malloc())"
    env = {k: v for k, v in os.environ.items() if k != "APEM_MALLOC_TUNING"}
    on = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    off = subprocess.run([sys.executable, "-c", code], env=env | {"APEM_MALLOC_TUNING": "0"},
                         capture_output=True, text=True, check=True)
    assert off.stdout.split() == ["False", "False", "False"]
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert on.stdout.split() == ["False", "True", "True"]
