"""Stored numbers are the numbers the public functions give: recomputed rows, map encodings, TF32.

- a stored row, recomputed from its stored map with :func:`apem.metric.evaluate_maps`
  (same target, seed and search), gives the same epsilons bit for bit;
- ``map_encoding: save_image`` stores the thesis's truncated 8-bit levels;
- :func:`apem.studies.encoding_shift` reproduces the table under the configuration's
  encoding and the other encoding's run under the other one;
- every public search entry point runs with TF32 off and gives the caller's flags back.
"""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from apem import metric, numerics
from apem.config import Config
from apem.run import Results, run
from apem.seeds import seed_of

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(pool=24, n_correct=2, n_misclassified=1, methods={"gradient": {}}, stages=(2, 3), shuffles=1,
            chunk_size=2, batch_size=8, filter_images=0)


@pytest.fixture(scope="module")
def tiny_round(tmp_path_factory, sample_dir, one_thread):
    cfg = Config(name="fidelity", **TINY)
    return Results(cfg, run(cfg, progress=False, root=tmp_path_factory.mktemp("round")))


@pytest.fixture(scope="module")
def tiny_linear(tmp_path_factory, sample_dir, one_thread):
    cfg = Config(name="fidelity-linear", search_mode="linear", search_bound=33, **TINY)
    return Results(cfg, run(cfg, progress=False, root=tmp_path_factory.mktemp("linear")))


@pytest.fixture(scope="module")
def tiny_save_image(tmp_path_factory, sample_dir, one_thread):
    cfg = Config(name="fidelity-save-image", map_encoding="save_image", **dict(TINY, shuffles=0))
    return Results(cfg, run(cfg, progress=False, root=tmp_path_factory.mktemp("save_image")))


# ----------------------------------------------------------------------------- recomputed rows


def _recompute(res, row) -> dict:
    """One stored row's epsilons from its stored map alone, searched as the runner searches.

    The gradient pass runs on the row's chunk of images (the batch the runner used);
    the search gets the one map.
    """
    cfg, lm = res.cfg, res.model
    part = res.images.iloc[int(row.chunk) * cfg.chunk_size : (int(row.chunk) + 1) * cfg.chunk_size]
    j = part.image_id.tolist().index(row.image_id)
    x = res.image_tensors(part.image_id).to(lm.device).contiguous(memory_format=torch.channels_last)
    target = torch.tensor(part.pred.to_numpy().copy()).long()
    grad, logits, _ = metric.loss_gradient(lm.model, x, target)
    info = metric.MarginInfo.from_logits(logits, target, loss_grad=grad)
    m = res.map(row.image_id, row.method, int(row.stage))
    maps = m.expand(3, -1, -1).unsqueeze(0)
    return metric.evaluate_maps(lm.model, x, maps, target, spec=cfg.search(), image_index=torch.tensor([j]),
                                grad=grad, seeds=torch.tensor([seed_of(cfg.seed, row.image_id, row.method,
                                                                       int(row.stage))]), margin_info=info)


@pytest.mark.parametrize("which", ["tiny_round", "tiny_linear"])
@pytest.mark.slow  # over 3 s: left out of `make test-fast`
def test_random_stored_rows_recompute_exactly_from_their_stored_maps(which, request):
    res = request.getfixturevalue(which)
    T = res.table
    rng = np.random.default_rng(7)
    picks = T.iloc[np.sort(rng.choice(len(T), size=4, replace=False))]
    cols = ["eps_minus", "eps_plus", "undefined_minus", "undefined_plus", "censored_minus", "censored_plus"]
    cols += [c for c in ("eps_shuffle_minus", "eps_shuffle_plus") if c in T]
    assert "eps_shuffle_minus" in cols  # the configuration has the shuffled baseline: it is checked too
    with res.store.pinned():
        for row in picks.itertuples():
            out = _recompute(res, row)
            got = {c: out[c].item() for c in cols}
            want = {c: getattr(row, c) for c in cols}
            assert got == want, f"{row.image_id} {row.method} stage {row.stage}: {got} != {want}"


# ----------------------------------------------------------------------------- map encodings


def test_save_image_encoding_stores_floor_truncated_levels(tiny_round, tiny_save_image):
    from apem.maps import stage_maps

    res, ref = tiny_save_image, tiny_round
    # the same configuration but for the encoding draws the same images
    assert res.images.image_id.tolist() == ref.images.image_id.tolist()
    T = res.table
    for row in T.itertuples():
        v = res.map(row.image_id, row.method, int(row.stage))
        k = v * 255
        assert torch.all((k - torch.round(k)).abs() < 1e-4), "a stored level is not a multiple of 1/255"
        r = ref.map(row.image_id, row.method, int(row.stage))
        # (v - min) / (max - min + 1e-5), truncated: never above the rounded exact min-max, lower somewhere
        assert torch.all(torch.round(k) <= torch.round(r * 255))
        assert torch.any(torch.round(k) < torch.round(r * 255))
        assert float(r.max()) == 1.0
        if row.stage == 3:
            assert float(v.max()) < 1.0  # raw gradients span ~1e-3: the + 1e-5 keeps the top level below 255
    # the stored maps are stage_maps(..., encoding="save_image") of the recomputed gradient, exactly
    iid = T.image_id.iloc[0]
    part = res.images.iloc[: res.cfg.chunk_size]
    lm = res.model
    with res.store.pinned():
        x = res.image_tensors(part.image_id).to(lm.device).contiguous(memory_format=torch.channels_last)
        target = torch.tensor(part.pred.to_numpy().copy()).long()
        from apem.explain import get_method

        j = part.image_id.tolist().index(iid)
        # the runner computes an image's maps alone (apem.runner.compute.image_by_image)
        A = get_method("gradient")(lm.model, x[j : j + 1], target[j : j + 1])
        maps = stage_maps(A, x[j : j + 1], res.cfg.stages, encoding="save_image")
    for s in res.cfg.stages:
        assert torch.equal(maps[s][0], res.map(iid, "gradient", s))


def test_encoding_shift_reproduces_both_encodings_runs(tiny_round, tiny_save_image, monkeypatch):
    from apem.studies import encoding as enc_study
    from apem.studies import encoding_shift, encoding_summary

    res = tiny_round
    df = encoding_shift(res)
    ids = res.images[res.images.group == "correct"].image_id.tolist()
    assert sorted(set(df.image_id)) == sorted(ids) and len(df) == len(ids) * len(res.cfg.stages)
    keys = ["image_id", "method", "stage"]
    for enc, other in (("round", res), ("save_image", tiny_save_image)):
        T = other.table[other.table.group == "correct"]
        m = df.merge(T, on=keys, validate="one_to_one")
        assert len(m) == len(df)
        for col in ("eps_minus", "eps_plus"):
            assert (m[f"{col}_{enc}"].to_numpy() == m[col].to_numpy()).all(), (enc, col)
        np.testing.assert_array_equal(m[f"apem_{enc}"].to_numpy(), m["apem"].to_numpy())
        assert (m[f"censored_minus_{enc}"] == m.censored_minus).all()
        assert (m[f"censored_plus_{enc}"] == m.censored_plus).all()
    assert (df.top_level_round == 255).all() and (df[df.stage == 3].top_level_save_image < 255).all()
    np.testing.assert_array_equal(df.d_eps_minus, df.eps_minus_save_image - df.eps_minus_round)
    S = encoding_summary(df)
    assert list(S.index) == [("gradient", 2), ("gradient", 3)]
    assert (S.n == len(ids)).all()
    for (method, stage), row in S.iterrows():
        g = df[(df.method == method) & (df.stage == stage)]
        assert row.changed_minus == (g.d_eps_minus != 0).mean()
        assert row.max_abs_d_plus == g.d_eps_plus.abs().max()
        assert row.median_abs_d_minus == g.d_eps_minus.abs().median()
    # cached in the store: a second call reads it back
    monkeypatch.setattr(enc_study, "_shift", lambda *a: (_ for _ in ()).throw(AssertionError("recomputed")))
    pd.testing.assert_frame_equal(encoding_shift(res), df)


def test_encoding_summary_counts_changes_over_defined_rows():
    from apem.studies import encoding_summary

    df = pd.DataFrame({"image_id": list("abcd"), "method": "gradient", "stage": 3,
                       "d_eps_minus": [0.0, 2.0, -4.0, np.nan], "d_eps_plus": [0.0, 0.0, 1.0, np.nan],
                       "d_apem": [0.0, -2.0, 5.0, np.nan]})
    row = encoding_summary(df).loc[("gradient", 3)]
    assert row.n == 4 and row.changed_minus == 2 / 3 and row.changed_plus == 1 / 3
    assert row.median_abs_d_minus == 2.0 and row.max_abs_d_minus == 4.0 and row.max_abs_d_apem == 5.0


# ----------------------------------------------------------------------------- TF32


class FlagRecorder(nn.Module):
    """A linear classifier on 3 x 2 x 2 images that records the TF32 flags at every forward pass."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(12, 4)
        self.seen = []

    def forward(self, x):
        self.seen.append(numerics.tf32_flags())
        return self.lin(x.flatten(1))



def test_no_tf32_switches_both_flags_off_and_restores_them(tf32_on):
    assert numerics.tf32_flags() == (True, True)
    with numerics.no_tf32():
        assert numerics.tf32_flags() == (False, False)
        with numerics.no_tf32():
            assert numerics.tf32_flags() == (False, False)
        assert numerics.tf32_flags() == (False, False)
    assert numerics.tf32_flags() == (True, True)
    with pytest.raises(RuntimeError):
        with numerics.no_tf32():
            raise RuntimeError("boom")
    assert numerics.tf32_flags() == (True, True)
    torch.backends.cudnn.allow_tf32 = False  # a mixed state comes back as it was
    with numerics.no_tf32():
        pass
    assert numerics.tf32_flags() == (True, False)
    with numerics.pinned(1):
        assert numerics.tf32_flags() == (False, False)
    assert numerics.tf32_flags() == (True, False)


def test_every_public_search_runs_with_tf32_off(tf32_on, monkeypatch):
    from apem import quantus_adapter
    from apem.filtering import explanation_filter

    model = FlagRecorder().eval()
    x = torch.rand(2, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    maps = torch.rand(2, 1, 2, 2, generator=torch.Generator().manual_seed(2))
    maps = torch.round(maps * 255) / 255
    d, _ = metric.directions(maps, metric.loss_gradient(model, x)[0])
    calls = {
        "evaluate_maps": lambda: metric.evaluate_maps(model, x, maps, mode="linear", bound=20, shuffles=1),
        "search": lambda: metric.search(model, x, d, mode="bisect", bound=20),
        "trace": lambda: metric.trace(model, x[0], d[0], mode="linear", bound=20),
        "monotonicity_check": lambda: metric.monotonicity_check(model, x, d, torch.tensor([1, 1]), horizon=2),
        "explanation_filter": lambda: explanation_filter(model, x, maps, mode="linear", bound=20, fast_k=2),
    }
    for name, call in calls.items():
        model.seen.clear()
        call()
        assert model.seen and set(model.seen) == {(False, False)}, name
        assert numerics.tf32_flags() == (True, True), f"{name} did not give the caller's flags back"

    # Quantus's metrics: the metric's forward passes run inside quantus_evaluate's block
    def fake_run(metric_obj, counter, xs, ys, a, device, batch_size):
        model.seen.append(numerics.tf32_flags())
        return [np.array([1.0, 0.5, 0.0])] * len(xs)

    monkeypatch.setattr(quantus_adapter, "_run", fake_run)
    model.seen.clear()
    quantus_adapter.quantus_scores("PixelFlipping", model, x.numpy(), np.array([0, 1]), maps.numpy(),
                      params={"features_in_step": 2})
    assert set(model.seen) == {(False, False)} and numerics.tf32_flags() == (True, True)


def test_every_study_runs_with_tf32_off(tf32_on, monkeypatch):
    from apem import studies
    from apem.studies import encoding, faithfulness, sanity, search_modes

    seen = []

    def fake_rows(res, study, compute, ids, **params):
        seen.append((study.split("-")[0], numerics.tf32_flags()))
        return pd.DataFrame()

    def fake_arrays(res, study, compute, ids, **params):
        seen.append(("maps", numerics.tf32_flags()))
        return {}

    for mod in (encoding, faithfulness, sanity, search_modes):
        monkeypatch.setattr(mod, "cached_rows", fake_rows)
    monkeypatch.setattr(sanity, "cached_arrays", fake_arrays)
    res = SimpleNamespace(
        cfg=SimpleNamespace(stages=(3,), methods={"gradient": {}}, quantize=True),
        table=pd.DataFrame({"image_id": ["a"], "method": ["gradient"], "stage": [3]}),
        images=pd.DataFrame({"image_id": ["a"], "group": ["correct"]}),
    )
    studies.encoding_shift(res)
    studies.faithfulness_scores(res)
    studies.sanity_check(res)
    studies.sanity_example_maps(res)
    studies.compare_modes(res)
    assert [s for s, _ in seen] == ["encoding", "faithfulness", "sanity", "sanity", "maps", "search_modes"]
    assert {f for _, f in seen} == {(False, False)}
    assert numerics.tf32_flags() == (True, True)
