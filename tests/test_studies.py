"""The studies of chapters 10-12 on a tiny configuration: caching, randomised maps, costs."""

import numpy as np
import pandas as pd
import pytest
import torch

from apem import studies
from apem.studies import faithfulness as faithfulness_study
from apem.studies import sanity as sanity_study
from apem.config import Config
from apem.run import Results, run


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_res(tmp_path_factory, sample_dir, one_thread):
    cfg = Config(name="tiny-exp", pool=24, n_correct=3, n_misclassified=1,
                 methods={"gradient": {}, "input_x_gradient": {}}, stages=(2,), shuffles=1, chunk_size=2,
                 filter_images=0, batch_size=16)
    root = tmp_path_factory.mktemp("exp")
    store = run(cfg, progress=False, root=root)
    return Results(cfg, store)


def _boom():
    raise AssertionError("recomputed although the store has the table")


def test_correct_ids_are_the_tables_first_correct_images(tiny_res):
    ids = studies.correct_ids(tiny_res, 2)
    want = tiny_res.images[tiny_res.images.group == "correct"].image_id.head(2).tolist()
    assert ids == want
    assert len(studies.correct_ids(tiny_res, 99)) == 3  # capped at what there is


def test_cascade_steps():
    assert studies.cascade_steps(10, 2) == [0, 2, 4, 6, 8, 9]
    assert studies.cascade_steps(9, 2) == [0, 2, 4, 6, 8]
    assert studies.cascade_steps(3, 5) == [0, 2]
    assert studies.cascade_steps(1, 1) == [0]


def test_faithfulness_scores_costs_and_cache(tiny_res, monkeypatch):
    small = {"PixelFlipping": {"features_in_step": 224 * 224 // 2}, "Selectivity": {"patch_size": 112},
             "ROAD": {"percentages": [5, 10]}, "FaithfulnessCorrelation": {"nr_runs": 4}}
    df = studies.faithfulness_scores(tiny_res, n_images=2, stage=2, metric_params=small)
    assert set(df.metric) == {"PixelFlipping", "Selectivity", "ROAD", "FaithfulnessCorrelation", studies.APEM}
    assert len(df) == 2 * 2 * 5  # images x methods x metrics
    assert (df.forwards_map > 0).all() and (df.seconds_image > 0).all()
    ap = df[df.metric == studies.APEM]
    # APEM's score is the table's, and the timing re-run finds the same epsilons
    T = tiny_res.table.set_index(["image_id", "method"])
    assert np.allclose(ap.score.to_numpy(), [T.loc[(r.image_id, r.method), "apem"] for r in ap.itertuples()],
                       equal_nan=True)
    assert (ap.eps_minus_rerun == ap.eps_minus_table).all() and (ap.eps_plus_rerun == ap.eps_plus_table).all()
    # the counted forwards: the table's perturbed passes plus the shared clean pass, per map, and the copies
    # that fill a search's last batch of a pass to the search's batch size (apem.metric.forward.Forward)
    asked = ap.groupby("image_id").n_forward_table.transform("mean") + 1 / 2
    assert (ap.forwards_map >= asked - 1e-9).all() and (ap.forwards_map > asked).any()
    cost = studies.cost_table(df)
    assert cost.loc["PixelFlipping", "forwards_map"] >= 6  # 6 steps of 224*224/2 channel values
    assert (cost.fwd_equiv_map > 0).all()
    # cached: a second call reads the store, even with the computation broken
    monkeypatch.setattr(faithfulness_study, "_faithfulness", lambda *a, **k: _boom())
    again = studies.faithfulness_scores(tiny_res, n_images=2, stage=2, metric_params=small)
    pd.testing.assert_frame_equal(again.reset_index(drop=True), df.reset_index(drop=True))
    first = studies.correct_ids(tiny_res, 1)[0]  # each image's rows are cells: fewer images read them too
    one = studies.faithfulness_scores(tiny_res, n_images=1, stage=2, metric_params=small)
    pd.testing.assert_frame_equal(one, df[df.image_id == first].reset_index(drop=True))
    agree = studies.agreement_table(df)
    assert list(agree.metric_a[:4]) == [studies.APEM] * 4
    assert agree.tau_mean.dropna().between(-1, 1).all()


def test_kendall_per_image():
    df = pd.DataFrame({
        "image_id": ["a"] * 3 * 2 + ["b"] * 3 * 2,
        "method": ["m1", "m2", "m3"] * 4,
        "metric": (["X"] * 3 + ["Y"] * 3) * 2,
        "score": [1, 2, 3, 10, 20, 30, 1, 2, 3, 30, 20, 10],
    })
    tau = studies.kendall_per_image(df, "X", "Y")
    assert tau["a"] == pytest.approx(1.0) and tau["b"] == pytest.approx(-1.0)
    means = studies.mean_scores(df)
    assert means[means.metric == "X"].set_index("method")["rank"].to_dict() == {"m1": 3, "m2": 2, "m3": 1}


def test_sanity_check_randomised_maps_differ_and_cache(tiny_res, monkeypatch):
    sim, ap = studies.sanity_check(tiny_res, n_images=2, stage=2, every=5, methods=["gradient"])
    # every=5 over EfficientNet-Lite0's 10 stages: steps 1, 6 and 10 (all random)
    assert sorted(sim.step.unique()) == [1, 6, 10]
    assert sorted(ap.step.unique()) == [0, 1, 6, 10]
    assert (ap[ap.step == 0].layer == "trained").all()
    assert sim.layer[sim.step == 10].iloc[0] == "conv_stem+bn1"
    # randomised maps differ from the trained ones, more so when everything is random
    assert (sim.spearman < 0.999).all()
    full = sim[sim.step == 10].spearman.mean()
    assert full < 0.9
    # APEM is measured on the trained model: the trained maps' epsilons are the table's
    tr = ap[ap.step == 0].set_index("image_id")
    T = tiny_res.table[(tiny_res.table.method == "gradient")].set_index("image_id")
    assert (tr.apem == T.loc[tr.index, "apem"]).all()
    assert np.allclose(tr.apem_table, tr.apem)
    monkeypatch.setattr(sanity_study, "_sanity", lambda *a, **k: _boom())
    sim2, ap2 = studies.sanity_check(tiny_res, n_images=2, stage=2, every=5, methods=["gradient"])
    pd.testing.assert_frame_equal(sim2, sim)
    pd.testing.assert_frame_equal(ap2, ap)
    # the example maps were kept with the tables: trained = the cached map, the last step differs
    ex = studies.sanity_example_maps(tiny_res, n_images=2, stage=2, every=5, methods=["gradient"])
    assert sorted(k[1] for k in ex) == [0, 1, 6, 10]
    first = studies.correct_ids(tiny_res, 1)[0]
    assert torch.equal(ex[("gradient", 0)][0], tiny_res.map(first, "gradient", 2))
    assert not torch.equal(ex[("gradient", 10)][0], ex[("gradient", 0)][0])
    # each image's rows are cells: a study of fewer images reads them, in the tables' order
    sim1, ap1 = studies.sanity_check(tiny_res, n_images=1, stage=2, every=5, methods=["gradient"])
    pd.testing.assert_frame_equal(sim1, sim[sim.image_id == first].reset_index(drop=True))
    pd.testing.assert_frame_equal(ap1, ap[ap.image_id == first].reset_index(drop=True))
    assert list(sim.image_id[:2]) == studies.correct_ids(tiny_res, 2)  # the images innermost, as before
    ex1 = studies.sanity_example_maps(tiny_res, n_images=1, stage=2, every=5, methods=["gradient"])
    assert set(ex1) == set(ex) and all(torch.equal(ex1[k][0], ex[k][0]) for k in ex)


def _fresh(res, path):
    """The configuration in a fresh results root: its folder and the runner's cells copied, no study's cells."""
    import shutil

    shutil.copytree(res.store.root, path, ignore=lambda d, names: ["study"] if d.endswith("cells") else [])
    return Results(res.cfg, run(res.cfg, progress=False, root=path))


def test_compare_modes_rows_of_an_image_are_its_own(tiny_res, tmp_path, monkeypatch):
    """Per-image cells: fewer images compute nothing, more compute only the new one; an image's rows within a
    larger study are, bit for bit, its rows computed alone in a fresh store (timings aside)."""
    from apem.studies import search_modes

    ids = studies.correct_ids(tiny_res, 3)
    calls, real = [], search_modes._compare
    monkeypatch.setattr(search_modes, "_compare", lambda r, lack, *a: calls.append(list(lack)) or real(r, lack, *a))
    kw = dict(horizon=4, linear_cap=70)  # parameters no other test studies (70: a few exact answers)
    two = studies.compare_modes(tiny_res, n_images=2, **kw)
    assert calls == [ids[:2]]
    assert list(dict.fromkeys(two.image_id)) == ids[:2] and len(two) == 2 * 2 * 1 * 2  # images, methods, stages, sides
    assert list(two.columns[:4]) == ["image_id", "method", "stage", "side"] and (two.stage == 2).all()
    assert two.eps_linear.notna().any() and two.non_monotone.notna().any()
    batches = sorted((tiny_res.store.root / "cells" / "study").glob("*/*/manifest.json"))
    one = studies.compare_modes(tiny_res, n_images=1, **kw)
    assert calls == [ids[:2]]  # nothing computed, nothing written
    assert sorted((tiny_res.store.root / "cells" / "study").glob("*/*/manifest.json")) == batches
    pd.testing.assert_frame_equal(one, two[two.image_id == ids[0]].reset_index(drop=True))
    three = studies.compare_modes(tiny_res, n_images=3, **kw)
    assert calls == [ids[:2], ids[2:3]]  # only the new image
    pd.testing.assert_frame_equal(three.iloc[: len(two)], two)

    monkeypatch.setattr(search_modes, "correct_ids", lambda r, n: [ids[1]])  # the second image, alone
    alone = studies.compare_modes(_fresh(tiny_res, tmp_path / "fresh"), n_images=1, **kw)
    assert calls[-1] == [ids[1]]
    within = two[two.image_id == ids[1]].reset_index(drop=True)
    same = [c for c in within if not c.startswith("seconds_")]
    pd.testing.assert_frame_equal(alone[same], within[same], check_exact=True)


def test_more_methods_keeps_a_subset_of_the_images(tiny_res, tmp_path):
    cfg = tiny_res.cfg
    extra = studies.more_methods(cfg, methods={"gradcam": {}}, n_correct=2, root=tiny_res.store.root)
    assert extra.cfg.n_misclassified == 0 and extra.cfg.filter_images == 0
    assert set(extra.table.image_id) <= set(tiny_res.table[tiny_res.table.group == "correct"].image_id)
    both = studies.combined_table(tiny_res, extra)
    assert set(both.method) == {"gradient", "input_x_gradient", "gradcam"}
    assert both.groupby("method").image_id.nunique().eq(2).all()


def test_bound_study_reproduces_the_table_then_searches_further(tmp_path_factory, sample_dir):
    """Censored searches searched again: at the configuration's bound the table's values, at a higher one fewer
    censored; the chapter's table with those values differs from the stored one on the censored rows only."""
    from apem.studies.bounds import bound_study, bound_summary, with_bound

    cfg = Config(name="tiny-bounds", pool=24, n_correct=2, n_misclassified=0, methods={"gradient": {}}, stages=(2,),
                 shuffles=0, chunk_size=2, filter_images=0, batch_size=16, search_bound=3)
    res = Results(cfg, run(cfg, progress=False, root=tmp_path_factory.mktemp("bounds")))
    T = res.table
    cens = T[(T.group == "correct") & (T.censored_minus | T.censored_plus) & T.apem.notna()]
    assert len(cens) > 0  # a bound of 3 steps censors the ε⁺ searches at least
    B = bound_study(res, bounds=(10**4,))
    assert len(B) == len(cens) and B.reproduces.all()
    S = bound_summary(B)
    assert int(S["censored at 3"].sum()) == len(cens) >= int(S["censored at 10,000"].sum())
    assert (B.eps_plus_10000 >= B.eps_plus_3).all() and (B.eps_minus_10000 >= B.eps_minus_3).all()
    high = with_bound(T, B, 10**4)
    changed = (high[["eps_minus", "eps_plus"]] != T[["eps_minus", "eps_plus"]]).any(axis=1)
    assert set(high[changed].index) <= set(cens.index)
    # a side that changed the prediction below the bound keeps its step at every higher bound
    for side in ("minus", "plus"):
        kept = ~B[f"censored_{side}_3"]
        assert (B.loc[kept, f"eps_{side}_10000"] == B.loc[kept, f"eps_{side}_3"]).all()
    # at each higher bound only the searches still censored at the one before are searched again
    import apem.metric as metric_module

    calls, real = [], metric_module.evaluate_maps
    metric_module.evaluate_maps = lambda *a, **k: calls.append(len(a[2])) or real(*a, **k)
    try:
        nested = bound_study(res, bounds=(10**4, 10**5), group=None)  # None joins the groups' own studies
    finally:
        metric_module.evaluate_maps = real
    still = int((B.censored_minus_10000 | B.censored_plus_10000).sum())
    assert calls == [len(cens), len(cens)] + ([still] if still else [])  # bound 3 (all), 10^4 (all), 10^5
    for c in ("eps_minus_10000", "eps_plus_10000", "censored_minus_10000", "censored_plus_10000"):
        assert nested[c].tolist() == B[c].tolist()
    # cached in the store: the second call computes nothing
    import apem.studies.bounds as bounds_module

    orig = bounds_module._search
    bounds_module._search = lambda *a, **k: _boom()
    try:
        assert bound_study(res, bounds=(10**4,)).equals(B)
    finally:
        bounds_module._search = orig
