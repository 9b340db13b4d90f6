"""The other order of stage 3 (chapter 4): section 4.4's "sum the channels, then multiply by the image".

- :func:`apem.studies.stage_order.stage3_map` gives the book's stage 3 in the book's
  order, and section 4.4's two readings in the other, which equal it on a grey image;
- :func:`apem.studies.stage_order.stage_order_shift` recomputes the run's stage-3 maps
  exactly, searches the other orders' maps and is cached in the store;
- :func:`apem.studies.stage_order.stage_order_summary` counts what changed.
"""

import numpy as np
import pandas as pd
import pytest
import torch

from apem import maps
from apem.config import Config
from apem.run import Results, run
from apem.studies import stage_order

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(pool=24, n_correct=2, n_misclassified=1, methods={"gradient": {}}, stages=(2, 3), shuffles=0,
            chunk_size=2, batch_size=8, filter_images=0)


def _inputs(seed=0, grey=False):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(2, 3, 8, 8, generator=g)
    x = torch.rand(2, 3, 8, 8, generator=g)
    if grey:
        x = x[:, :1].expand(-1, 3, -1, -1).contiguous()
    return a, x


def test_the_book_order_is_stage_3_and_the_other_orders_are_section_4_4s():
    a, x = _inputs()
    for enc in ("round", "save_image"):
        assert torch.equal(stage_order.stage3_map(a, x, encoding=enc), maps.stage_map(a, x, 3, encoding=enc))
    c = maps.clamp_abs(a)
    three = stage_order.stage3_map(a, x, "sum_then_multiply", quantize=False)
    one = stage_order.stage3_map(a, x, "sum_then_multiply_then_sum", quantize=False)
    assert three.shape == (2, 3, 8, 8) and one.shape == (2, 1, 8, 8)
    torch.testing.assert_close(three, maps.minmax(c.sum(1, keepdim=True) * x))
    torch.testing.assert_close(one, maps.minmax(c.sum(1, keepdim=True) * x.sum(1, keepdim=True)))
    book = stage_order.stage3_map(a, x, quantize=False)
    assert not torch.allclose(one, book)  # a colour image: the orders differ
    with pytest.raises(ValueError, match="unknown stage-3 order"):
        stage_order.stage3_map(a, x, "sideways")


def test_on_a_grey_image_every_order_gives_the_same_map():
    a, x = _inputs(1, grey=True)
    book = stage_order.stage3_map(a, x)
    for order in stage_order.OTHER_ORDERS:
        m = stage_order.stage3_map(a, x, order)
        assert torch.equal(m.expand(-1, 3, -1, -1), book.expand(-1, 3, -1, -1)), order


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, sample_dir, one_thread):
    cfg = Config(name="stage-order", **TINY)
    return Results(cfg, run(cfg, progress=False, root=tmp_path_factory.mktemp("stage_order")))


def test_stage_order_shift_searches_the_other_orders_beside_the_table(tiny, monkeypatch):
    res = tiny
    df = stage_order.stage_order_shift(res, n_images=1)
    ids = res.images[res.images.group == "correct"].image_id.tolist()[:1]
    assert sorted(set(df.image_id)) == ids
    assert len(df) == len(ids) * len(stage_order.OTHER_ORDERS)
    T = res.table[res.table.stage == 3].set_index(["image_id", "method"])
    for r in df.itertuples():
        assert r.eps_minus_book == T.loc[(r.image_id, r.method), "eps_minus"]
        assert r.eps_plus_book == T.loc[(r.image_id, r.method), "eps_plus"]
    assert df.map_differs.all() and (df.values_changed > 0).all()  # a colour photograph
    np.testing.assert_array_equal(df.d_eps_minus, df.eps_minus - df.eps_minus_book)
    # the searched maps are the other order's: search one again by hand
    from apem import metric
    from apem.metric.clean import loss_gradient
    from apem.runner.compute import attributions, image_by_image
    from apem.seeds import seed_of

    cfg, lm = res.cfg, res.model
    part = res.images.iloc[: cfg.chunk_size]
    with res.store.pinned():
        x = res.image_tensors(part.image_id).contiguous(memory_format=torch.channels_last)
        target = torch.tensor(part.pred.to_numpy().copy()).long()
        A = attributions(cfg, lm, "gradient", x, target, part.image_id)
        m = image_by_image(lambda aj, xj: stage_order.stage3_map(aj, xj, "sum_then_multiply"), A, x)
        grad, logits = image_by_image(lambda xj, tj: loss_gradient(lm.model, xj, tj)[:2], x, target)
        j = 0
        iid = part.image_id.iloc[j]
        r = metric.evaluate_maps(lm.model, x, m[j:j + 1], target, spec=cfg.search().replace(shuffles=0),
                                 image_index=torch.tensor([j]), grad=grad,
                                 seeds=torch.tensor([seed_of(cfg.seed, iid, "gradient", 3)]),
                                 margin_info=metric.MarginInfo.from_logits(logits, target, loss_grad=grad))
    row = df[(df.image_id == iid) & (df.order == "sum_then_multiply")].iloc[0]
    assert row.eps_minus == float(r["eps_minus"][0]) and row.eps_plus == float(r["eps_plus"][0])
    # cached in the store: a second call reads it back
    monkeypatch.setattr(stage_order, "_shift", lambda *a: (_ for _ in ()).throw(AssertionError("recomputed")))
    pd.testing.assert_frame_equal(stage_order.stage_order_shift(res, n_images=1), df)


def test_stage_order_summary_counts_changes_over_defined_rows():
    df = pd.DataFrame({"image_id": list("abcd"), "method": "gradient", "order": "sum_then_multiply",
                       "map_differs": [True, True, False, True],
                       "d_eps_minus": [0.0, 2.0, -4.0, np.nan], "d_eps_plus": [0.0, 0.0, 0.0, np.nan],
                       "d_apem": [0.0, -2.0, 5.0, np.nan],
                       "censored_minus": False, "censored_plus": [False, True, False, False],
                       "censored_minus_book": False, "censored_plus_book": False})
    row = stage_order.stage_order_summary(df).loc[("sum_then_multiply", "gradient")]
    assert row["images"] == 4 and row["maps differ"] == 3
    assert row["ε⁻ changed"] == "2 of 3" and row["median |Δε⁻|"] == "3.0" and row["largest |Δε⁻|"] == "4"
    assert row["ε⁺ changed"] == "0 of 3" and row["largest |Δε⁺|"] == "–"
    assert row["median ΔAPEM"] == "0.0" and row["censored"] == 1
