"""The LRP variants of Table 4.1: the closed forms behind its properties, and the study on a tiny configuration."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from apem import explain
from apem.studies import lrp_rules

D = torch.float64


# --------------------------------------------------------------------------- closed forms


def test_on_a_linear_map_naive_is_x_times_w_epsilon_a_multiple_of_it_alpha_beta_neither():
    torch.manual_seed(0)
    lin = nn.Linear(10, 3, bias=False).to(D)
    x = torch.randn(5, 10, dtype=D)  # mixed signs, as the weights
    assert (x < 0).any() and (x > 0).any() and (lin.weight < 0).any() and (lin.weight > 0).any()
    c = torch.tensor([0, 1, 2, 0, 1])
    contributions = x * lin.weight.detach()[c]
    z = contributions.sum(1, keepdim=True)

    def rout(logits):  # explain the value of logit c
        return torch.nn.functional.one_hot(c, 3).to(D) * logits

    model = nn.Sequential(lin).eval()
    naive = explain.lrp_relevance(model, x, rout, **lrp_rules.variant_params("naive"))
    assert torch.allclose(naive, contributions, rtol=0, atol=1e-12)
    eps = explain.lrp_relevance(model, x, rout, **lrp_rules.variant_params("epsilon"))
    assert not torch.allclose(eps, contributions, atol=1e-3)  # shrunk by z / (z + sign z) ...
    assert torch.allclose(eps, contributions * z / (z + torch.sign(z)), rtol=0, atol=1e-12)  # ... and only that
    ab = explain.lrp_relevance(model, x, rout, **lrp_rules.variant_params("alpha_beta"))
    s = (ab * contributions).sum(1, keepdim=True) / (contributions**2).sum(1, keepdim=True)
    assert (ab - s * contributions).norm(dim=1).min() > 0.1 * contributions.norm(dim=1).min()

    table = lrp_rules.linear_consistency().set_index("variant")
    assert table.loc["naive", "max_abs_dev"] < 1e-12
    assert table.loc["epsilon", "max_rel_dev"] > 0.1 and table.loc["epsilon", "proportional_dev"] < 1e-12
    assert table.loc["alpha_beta", "proportional_dev"] > 0.1 and table.loc["alpha1_beta0", "proportional_dev"] > 0.1


def test_naive_lrp_conserves_relevance_on_a_bias_free_relu_network():
    table = lrp_rules.mlp_conservation().set_index("variant")
    assert table.loc["naive", "max_err"] < 1e-12  # exact to float64 rounding
    assert table.loc["epsilon", "median_err"] > 0.1  # epsilon = 1 absorbs relevance
    assert table.loc["alpha_beta", "max_err"] < 1e-4  # alpha - beta = 1: conserved up to zennit's 1e-6 stabiliser


def test_the_lrp_method_rules():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)).to(D).eval()
    x = torch.rand(2, 3, 4, 4, dtype=D)
    same = explain.attribute(net, x, method="lrp", rule="epsilon", epsilon=1.0)
    assert torch.equal(same, explain.attribute(net, x, method="lrp_epsilon"))
    ab = explain.attribute(net, x, method="lrp", rule="alpha_beta")
    assert torch.equal(ab, explain.lrp_attribution(net, x, rule="alpha_beta", alpha=2.0, beta=1.0))
    assert not torch.allclose(ab, same)
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        explain.get_method("lrp", rule="alpha_beta", alpha=2.0, beta=0.5)
    with pytest.raises(ValueError, match="rule"):
        explain.get_method("lrp", rule="zplus")
    # naive LRP divides by z: an all-zero input to a bias-free layer gives 0 / 0
    lin = nn.Sequential(nn.Flatten(), nn.Linear(12, 3, bias=False)).to(D).eval()
    zero = torch.zeros(1, 3, 2, 2, dtype=D)
    assert not torch.isfinite(explain.lrp_attribution(lin, zero, rule="epsilon", epsilon=0.0)).all()
    with pytest.raises(explain.AttributionError, match="lrp"):
        explain.attribute(lin, zero, method="lrp", epsilon=0.0)
    assert torch.isfinite(explain.attribute(lin, zero, method="lrp", epsilon=1.0)).all()


# --------------------------------------------------------------------------- the study


@pytest.fixture(scope="module")
def tiny_lrp_res(tmp_path_factory, sample_dir, one_thread):
    from apem.config import load_config
    from apem.run import Results, run

    cfg = load_config("smoke", name="tiny-lrp", n_correct=2, n_misclassified=0, methods={"lrp_epsilon": {"epsilon": 1.0}},
                      stages=(3,), shuffles=0, filter_images=0, chunk_size=2)
    # 2 threads whatever $APEM_THREADS says: on 2 threads torch splits a reduction over several rows differently
    # with their number, the case where an image's rows once depended on the study's other images
    store = run(cfg, progress=False, root=tmp_path_factory.mktemp("lrp"), threads=2)
    return Results(cfg, store)


@pytest.mark.usefixtures("one_thread")
def test_lrp_variants_study_reproduces_the_tables_lrp_epsilon_and_caches(tiny_lrp_res, monkeypatch):
    res = tiny_lrp_res
    variants = ["naive", "epsilon", "alpha_beta"]
    df = lrp_rules.lrp_variants(res, n_images=2, variants=variants)
    assert len(df) == 2 * 3 and list(dict.fromkeys(df.variant)) == variants
    # the epsilon = 1 variant is the configuration's lrp_epsilon: same maps, same search, same epsilons
    ep = df[df.variant == "epsilon"].set_index("image_id")
    T = res.table[(res.table.method == "lrp_epsilon") & (res.table.stage == 3)].set_index("image_id")
    assert (ep.map_equals_table == 1.0).all()
    assert (ep.eps_minus == T.loc[ep.index, "eps_minus"]).all() and (ep.eps_plus == T.loc[ep.index, "eps_plus"]).all()
    assert np.array_equal(ep.apem.to_numpy(), T.loc[ep.index, "apem"].to_numpy(), equal_nan=True)
    # the stable variants change little under the 1e-4 noise; every row has its measurements
    assert (df[df.variant != "naive"].rel_change < lrp_rules.STABLE_MAX_CHANGE).all()
    assert (df.sum_out - 1).abs().max() < 1e-5  # softmax output relevance
    assert df[df.finite].eps_minus.notna().all()

    tab = lrp_rules.table_4_1(df)
    assert len(tab) == 4 * 3 and set(tab.ours) <= {"yes", "no"} and set(tab.thesis) <= {"yes", "no"}
    lin = tab[tab.property == "consistent with linear mapping"].set_index("variant").ours
    assert lin.to_dict() == {"naive": "yes", "epsilon": "yes", "alpha_beta": "no"}
    cons = tab[tab.property == "conserves relevance"].set_index("variant").ours
    assert cons.to_dict() == {"naive": "yes", "epsilon": "no", "alpha_beta": "yes"}
    wide = lrp_rules.table_4_1_cells(tab)
    assert wide.shape == (4, 3)
    by = lrp_rules.apem_by_variant(df)
    assert list(by.index) == variants and (by.n_images == 2).all()

    monkeypatch.setattr(lrp_rules, "_lrp_rules", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    again = lrp_rules.lrp_variants(res, n_images=2, variants=variants)
    pd.testing.assert_frame_equal(again, df)


def _fresh(res, path):
    """The configuration in a fresh results root: its folder and the runner's cells copied, no study's cells."""
    import shutil

    from apem.run import Results, run

    shutil.copytree(res.store.root, path, ignore=lambda d, names: ["study"] if d.endswith("cells") else [])
    return Results(res.cfg, run(res.cfg, progress=False, root=path))


@pytest.mark.usefixtures("one_thread")
def test_lrp_variants_rows_of_an_image_are_its_own(tiny_lrp_res, tmp_path, monkeypatch):
    """Per-image cells: fewer images compute nothing; an image's rows within a larger study are, bit for bit,
    its rows computed alone in a fresh store (its input noise is its own, not the batch's second draw)."""
    from apem.studies.common import correct_ids

    res = tiny_lrp_res
    ids = correct_ids(res, 2)
    assert len(ids) == 2
    calls, real = [], lrp_rules._lrp_rules
    monkeypatch.setattr(lrp_rules, "_lrp_rules",
                        lambda r, lack, *a: calls.append((list(lack), list(a[3]))) or real(r, lack, *a))
    variants = ["naive", "alpha1_beta0"]
    both = lrp_rules.lrp_variants(res, n_images=2, seed=7, variants=variants)  # a seed no other test studies
    assert calls == [(ids, ["naive"]), (ids, ["alpha1_beta0"])]  # one computation per variant, both images
    assert list(both.image_id) == ids * 2 and list(dict.fromkeys(both.variant)) == variants
    one = lrp_rules.lrp_variants(res, n_images=1, seed=7, variants=variants[::-1])
    assert len(calls) == 2  # read from the cells
    pd.testing.assert_frame_equal(one, both[both.image_id == ids[0]].iloc[::-1].reset_index(drop=True))
    assert len(list((res.store.root / "cells" / "study").glob("*/*/manifest.json"))) >= 2

    monkeypatch.setattr(lrp_rules, "correct_ids", lambda r, n: [ids[1]])  # the second image, alone
    alone = lrp_rules.lrp_variants(_fresh(res, tmp_path / "fresh"), n_images=1, seed=7, variants=variants)
    assert calls[2:] == [([ids[1]], ["naive"]), ([ids[1]], ["alpha1_beta0"])]
    within = both[both.image_id == ids[1]].reset_index(drop=True)
    pd.testing.assert_frame_equal(alone, within, check_exact=True)
