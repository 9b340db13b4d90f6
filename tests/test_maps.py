"""Visualisation stages against hand-computed and numpy values; figure smoke tests."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402

from apem import maps  # noqa: E402


def numpy_stages(a: np.ndarray, x: np.ndarray) -> dict[int, np.ndarray]:
    """Reference: one image (3, H, W) at a time, in float64 numpy."""

    def mm(v):
        r = v.max() - v.min()
        return np.zeros_like(v) if r == 0 else (v - v.min()) / r

    c = np.minimum(np.abs(a), np.percentile(np.abs(a), 99))
    return {1: mm(c), 2: mm(c.sum(0, keepdims=True)), 3: mm((c * x).sum(0, keepdims=True))}


def test_stage_maps_on_a_hand_made_tensor_with_an_outlier():
    # 3 x 4 x 5 = 60 values: |A| = 0.1 .. 5.9 in steps of 0.1 (shuffled signs) and one outlier of 100
    vals = np.arange(1, 61, dtype=np.float64) / 10
    vals[17] = 100.0
    signs = np.where(np.arange(60) % 3 == 0, -1.0, 1.0)
    a = (vals * signs).reshape(1, 3, 4, 5)
    x = np.linspace(0, 1, 60).reshape(1, 3, 4, 5)
    # p99 of 60 values: position 0.99 * 59 = 58.41 between the 59th (6.0) and 60th (100) sorted values
    sorted_abs = np.sort(np.abs(a).ravel())
    p99 = sorted_abs[58] + 0.41 * (sorted_abs[59] - sorted_abs[58])
    assert p99 == pytest.approx(np.percentile(np.abs(a), 99)) and p99 == pytest.approx(6.0 + 0.41 * 94)
    c = np.minimum(np.abs(a[0]), p99)
    assert c.max() == pytest.approx(p99) and c.max() < 100  # the clamp bites on the outlier only
    expected = {1: (c - 0.1) / (p99 - 0.1)}  # min |A| = 0.1, max after the clamp = p99
    s2 = c.sum(0)
    expected[2] = ((s2 - s2.min()) / (s2.max() - s2.min()))[None]
    s3 = (c * x[0]).sum(0)
    expected[3] = ((s3 - s3.min()) / (s3.max() - s3.min()))[None]
    got = maps.stage_maps(torch.tensor(a), torch.tensor(x), quantize=False)
    for s in (1, 2, 3):
        assert got[s].shape == (1, 3 if s == 1 else 1, 4, 5)
        np.testing.assert_allclose(got[s][0].numpy(), expected[s], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got[s][0].numpy(), numpy_stages(a[0], x[0])[s], rtol=1e-12, atol=1e-12)
    # the outlier's pixel is at the top of stage 1 after clamping: 1, the same as the p99 pixel
    assert got[1].flatten()[17].item() == pytest.approx(1.0)


def test_percentile_matches_numpy_and_torch_quantile():
    g = torch.Generator().manual_seed(0)
    v = torch.rand(4, 3 * 224 * 224, generator=g, dtype=torch.float64)
    ours = maps.percentile(v, 99)
    np.testing.assert_allclose(ours.numpy(), np.percentile(v.numpy(), 99, axis=1), rtol=1e-12)
    assert torch.allclose(ours, torch.quantile(v, 0.99, dim=1))
    assert torch.equal(maps.percentile(v, 0), v.min(1).values) and torch.equal(maps.percentile(v, 100), v.max(1).values)


def test_percentile_beyond_torch_quantile_size_limit():
    # torch.quantile refuses more than 2**24 values; a batch of 112 ImageNet-sized maps has 16.9 M
    v = torch.zeros(112, 3 * 224 * 224)
    v[:, 0] = 1.0
    assert (maps.percentile(v, 99) == 0).all()


@settings(max_examples=40, deadline=None)
@given(
    a=arrays(np.float64, (2, 3, 5, 4), elements=st.floats(-1e3, 1e3, allow_nan=False, width=64)),
    x=arrays(np.float64, (2, 3, 5, 4), elements=st.floats(0, 1, width=64)),
)
def test_stage_maps_match_numpy_reference(a, x):
    got = maps.stage_maps(torch.tensor(a), torch.tensor(x), quantize=False)
    for i in range(2):
        ref = numpy_stages(a[i], x[i])
        for s in (1, 2, 3):
            m = got[s][i].numpy()
            np.testing.assert_allclose(m, ref[s], rtol=1e-9, atol=1e-9)
            assert np.isfinite(m).all() and m.min() >= 0 and m.max() <= 1


def test_constant_map_is_zeros_not_nan():
    a = torch.full((2, 3, 4, 4), 0.5)
    a[1] = 0.0
    x = torch.rand(2, 3, 4, 4)
    out = maps.stage_maps(a, x)
    assert all(torch.isfinite(m).all() for m in out.values())
    assert (out[1] == 0).all() and (out[2] == 0).all()  # constant |A|: nothing stands out
    assert (out[3][1] == 0).all() and out[3][0].max() == 1  # stage 3 of a constant |A| is the image's sum
    # a constant stage-3 map from a non-constant clamp: x = 0 everywhere
    m3 = maps.stage_map(torch.rand(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), 3)
    assert (m3 == 0).all()


def test_minmax_is_per_image():
    v = torch.tensor([[1.0, 3.0], [10.0, 20.0]]).view(2, 1, 1, 2)
    assert torch.equal(maps.minmax(v).flatten(), torch.tensor([0.0, 1.0, 0.0, 1.0]))


def test_quantize_golden_values():
    m = torch.tensor([0.0, 0.5, 1.0, 0.2, 1 / 510, 0.7])
    # 0.5 * 255 = 127.5 -> 128 (half to even); 1/510 * 255 = 0.5 -> 0; 0.7 * 255 = 178.5 -> 178
    expected = torch.tensor([0, 128, 255, 51, 0, 178]) / 255
    assert torch.equal(maps.quantize(m), expected)
    assert torch.equal(maps.quantize(m, levels=2), torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 1.0]))
    q = maps.stage_map(torch.randn(1, 3, 8, 8), torch.rand(1, 3, 8, 8), 2)
    assert torch.equal(q, torch.round(q * 255) / 255)
    with pytest.raises(ValueError):
        maps.quantize(m, levels=1)


def test_stage_arguments_are_checked():
    a, x = torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)
    with pytest.raises(ValueError, match="stage"):
        maps.stage_map(a, x, 4)
    with pytest.raises(ValueError, match="must both be"):
        maps.stage_map(a, x[:, :, :2], 1)
    a[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        maps.stage_map(a, x, 1)


def test_stage_maps_keep_dtype_and_batch():
    a, x = torch.randn(3, 3, 6, 6), torch.rand(3, 3, 6, 6)
    out = maps.stage_maps(a, x, stages=(3, 1))
    assert list(out) == [3, 1] and out[1].dtype == torch.float32 and out[3].shape == (3, 1, 6, 6)
    # batched == one image at a time
    for i in range(3):
        assert torch.equal(maps.stage_map(a[i : i + 1], x[i : i + 1], 3), out[3][i : i + 1])


# --------------------------------------------------------------------------- figures


def test_method_grid_and_stage_grid_figures():
    import matplotlib.pyplot as plt

    from apem.figures import plots

    x = torch.rand(2, 3, 8, 8)
    a = torch.randn(2, 3, 8, 8)
    sm = maps.stage_maps(a, x)
    fig = plots.plot_method_grid(x, {"gradient": sm[3], "smoothgrad": sm[1]}, class_names=["cat", "dog"])
    axes = fig.get_axes()
    assert len(axes) == 6 and axes[0].get_title() == "Image" and axes[1].get_title() == "Gradient"
    assert axes[0].get_ylabel() == "cat"
    assert axes[2].get_images()[0].get_array().ndim == 3  # the 3-channel map drawn as RGB
    plt.close(fig)
    fig = plots.plot_stage_grid(x, {"gradient": sm, "lrp_epsilon": sm}, index=1)
    assert len(fig.get_axes()) == 8 and fig.get_axes()[4].get_ylabel() == "LRP-ε"
    plt.close(fig)
    with pytest.raises(ValueError):
        plots.plot_method_grid(x, {"gradient": sm[3][:1]})
    with pytest.raises(ValueError):
        plots.show_image(plt.gca(), torch.rand(2, 8, 8))
    plt.close("all")


def test_save_image_encoding_golden_values():
    """The thesis's files: (v - min) / (max - min + 1e-5), truncated to 8 bits (torchvision 0.2's save_image)."""
    # stage 2 of a 1 x 3 x 1 x 3 attribution whose clamp changes nothing but the top value
    a = torch.tensor([[[[0.0, 1e-4, 2e-4]], [[0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]]]])
    x = torch.ones_like(a)
    c = maps.clamp_abs(a).sum(1, keepdim=True).flatten()
    top = float(c[2])  # the p99 clamp of |A| over 9 values
    want = torch.floor(torch.tensor([0.0, 1e-4 / (top + 1e-5), top / (top + 1e-5)]) * 255) / 255
    got = maps.stage_maps(a, x, (2,), encoding="save_image")[2].flatten()
    assert torch.allclose(got, want, atol=0, rtol=0)
    # the round encoding of the same map reaches 1 exactly; save_image's stays below it
    assert maps.stage_maps(a, x, (2,))[2].max() == 1.0
    assert got.max() < 1.0
    assert maps.quantize(torch.tensor([0.999]), mode="floor") == 254 / 255


def test_save_image_encoding_needs_8_bits_and_a_known_name():
    a = torch.rand(1, 3, 4, 4)
    with pytest.raises(ValueError, match="quantize"):
        maps.stage_maps(a, a, encoding="save_image", quantize=False)
    with pytest.raises(ValueError, match="unknown map encoding"):
        maps.stage_maps(a, a, encoding="png")


def test_change_between_maps_closed_form():
    from apem.maps import change

    a = torch.zeros(3, 1, 2, 2)
    a[:, 0, 0, 0] = 1.0
    b = a.clone() * 7  # a positive multiple: the same perturbation
    c = torch.zeros(3, 1, 2, 2)
    c[:, 0, 1, 1] = 1.0  # no shared non-zero value
    half = torch.zeros(3, 1, 2, 2)
    half[:, 0, 0, 0], half[:, 0, 1, 1] = 1.0, 1.0  # half the budget stays, half moves
    assert change(a, b).tolist() == [0.0] * 3 and change(a, c).tolist() == [1.0] * 3
    assert change(a, half).tolist() == pytest.approx([0.5] * 3)
    # a one-channel map equals its three-channel copy
    assert change(a, a.expand(-1, 3, -1, -1)).tolist() == [0.0] * 3
    assert torch.isnan(change(torch.zeros(1, 1, 2, 2), a[:1])).all()
