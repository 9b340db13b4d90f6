"""Figures of relevance maps (thesis Figures 4.1 and 4.6).

Every function that makes a figure returns it released from pyplot
(:func:`released`): a notebook shows it once and prints no repr.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import torch

from apem.thesis import label  # the one table of method display names

DEFAULT_CMAP = "gray"  # the thesis's maps were grayscale PNGs
STAGE_TITLES = {1: "1: |R| clamped, 3 channels", 2: "2: summed over channels", 3: "3: × image, summed"}


def released(fig):
    """``fig``, closed in pyplot and returned.

    The inline backend shows every figure pyplot still holds at the end of a cell, so a
    figure that is also the cell's value (or passed to ``display``) would appear twice. A
    closed figure is an ordinary object: it can still be changed, saved and displayed.
    """
    plt.close(fig)
    return fig


def _hwc(t: torch.Tensor):
    """(C, H, W) or (1, C, H, W) tensor -> numpy (H, W, 3) or (H, W), clipped to [0, 1]."""
    t = t.detach().float().cpu()
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"show_image takes a (3, H, W) or (1, H, W) tensor, got {tuple(t.shape)}")
    t = t.clamp(0, 1)
    return t[0].numpy() if t.shape[0] == 1 else t.permute(1, 2, 0).numpy()


def show_image(ax, t: torch.Tensor, title: str | None = None, cmap: str = DEFAULT_CMAP):
    """Draw a (3, H, W) image as RGB or a (1, H, W) map with ``cmap`` on [0, 1]; axes hidden."""
    img = _hwc(t)
    if img.ndim == 2:
        ax.imshow(img, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(img, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=11)
    return ax


def plot_method_grid(
    x: torch.Tensor,
    maps_by_method: Mapping[str, torch.Tensor],
    titles: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    cmap: str = DEFAULT_CMAP,
    cell: float = 2.2,
):
    """Rows = images, columns = the original + one map per method (thesis Figure 4.1).

    ``x``: (N, 3, H, W) images; ``maps_by_method``: method -> (N, C, H, W) maps
    in [0, 1] (1-channel maps drawn with ``cmap``, 3-channel maps as RGB).
    ``titles``: column titles (original first), default "Image" and the
    methods' display names. ``class_names``: one row label per image.
    """
    methods = list(maps_by_method)
    n = len(x)
    for m in methods:
        if len(maps_by_method[m]) != n:
            raise ValueError(f"{m}: {len(maps_by_method[m])} maps for {n} images")
    cols = 1 + len(methods)
    titles = list(titles) if titles is not None else ["Image"] + [label(m) for m in methods]
    if len(titles) != cols:
        raise ValueError(f"{len(titles)} titles for {cols} columns")
    if class_names is not None and len(class_names) != n:
        raise ValueError(f"{len(class_names)} class names for {n} images")
    fig, axes = plt.subplots(n, cols, figsize=(cell * cols, cell * n + 0.4), squeeze=False)
    for i in range(n):
        show_image(axes[i, 0], x[i], titles[0] if i == 0 else None)
        if class_names is not None:
            axes[i, 0].set_ylabel(class_names[i], fontsize=10)
        for j, m in enumerate(methods, start=1):
            show_image(axes[i, j], maps_by_method[m][i], titles[j] if i == 0 else None, cmap=cmap)
    fig.tight_layout()
    return released(fig)


def plot_stage_grid(
    x: torch.Tensor,
    stage_maps_by_method: Mapping[str, Mapping[int, torch.Tensor]],
    index: int = 0,
    class_name: str | None = None,
    cmap: str = DEFAULT_CMAP,
    cell: float = 2.4,
):
    """For one image: rows = methods, columns = the original + stages 1, 2, 3 (thesis Figure 4.6).

    ``x``: the image (3, H, W) or a batch (N, 3, H, W) of which ``index`` is
    drawn; ``stage_maps_by_method``: method -> {stage: map}, each map (C, H, W)
    or a batch (N, C, H, W) (as :func:`apem.maps.stage_maps` returns).
    """
    img = x[index] if x.ndim == 4 else x
    methods = list(stage_maps_by_method)
    stages = sorted({s for m in methods for s in stage_maps_by_method[m]})
    fig, axes = plt.subplots(len(methods), 1 + len(stages), figsize=(cell * (1 + len(stages)), cell * len(methods) + 0.4),
                             squeeze=False)
    for i, m in enumerate(methods):
        show_image(axes[i, 0], img, ("Image" + (f" ({class_name})" if class_name else "")) if i == 0 else None)
        axes[i, 0].set_ylabel(label(m), fontsize=11)
        for j, s in enumerate(stages, start=1):
            maps = stage_maps_by_method[m]
            if s not in maps:
                axes[i, j].set_axis_off()
                continue
            t = maps[s][index] if maps[s].ndim == 4 else maps[s]
            show_image(axes[i, j], t, STAGE_TITLES.get(s, f"stage {s}") if i == 0 else None, cmap=cmap)
    fig.tight_layout()
    return released(fig)
