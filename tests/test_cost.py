"""The cost model (apem.cost): closed-form FE counts, what a store still lacks, the estimate a run prints."""

import re

import pandas as pd
import pytest

from apem import cost
from apem.runner import remaining
from apem.config import load_config
from apem.cost import COSTS, Calibration, Work
from apem.run import Results, _Interrupt, run
from apem.store import Store

CAL = Calibration(fe_seconds=0.004, decode_seconds=0.01, batch=4, model="m", threads=1)


def v(name: str) -> float:
    return COSTS[name].value


def test_every_constant_says_what_it_counts_and_where_it_comes_from():
    for name, c in COSTS.items():
        assert c.value > 0 and c.unit and c.source, name


def test_fe_per_image_of_full_is_the_closed_form_sum():
    cfg = load_config("full")
    M = 3 * 3  # methods x stages
    expect = {
        "loss gradient": v("loss gradient"),
        "methods": v("method gradient") + 100 * v("method smoothgrad") + v("method lrp_epsilon"),
        "stage maps": M * v("stage maps"),
        "search: maps": M * 2 * v("search thesis"),
        # 2 groups per map, 10 images per tested step, each with a permutation drawn for it
        "search: shuffles": M * 2 * 10 * v("shuffles thesis") * (1 + v("shuffles per_step draw")),
    }
    assert cost.fe_per_image(cfg) == pytest.approx(expect, rel=1e-12)
    assert sum(expect.values()) == pytest.approx(3 + 360.5 + 1 + 324 + 3060 * 1.12)  # the table's values
    # bisect with fixed shuffles (default): each of the 3 members per group searched alone
    d = load_config("default")
    assert sum(cost.fe_per_image(d).values()) == pytest.approx(
        v("loss gradient") + v("method gradient") + 100 * v("method smoothgrad") + v("method lrp_epsilon")
        + M * v("stage maps") + M * 2 * v("search bisect") + M * 2 * 3 * v("shuffles bisect"), rel=1e-12)
    assert cost.fe_per_image(d.replace(shuffles=0))["search: shuffles"] == 0
    # the filter: the measured 9-map figure, scaled per map and by the search's forwards per direction
    assert cost.filter_fe_per_image(d) == pytest.approx(v("filter bisect"))
    assert cost.filter_fe_per_image(cfg.replace(stages=[3])) == pytest.approx(
        v("filter bisect") / 3 * v("search thesis") / v("search bisect"))
    # a method's passes multiply its cost; a method without a measurement costs as its stand-in
    assert cost.method_fe("smoothgrad", {"n": 7}) == 7 * v("method smoothgrad")
    assert cost.method_fe("integrated_gradients", {"n_steps": 16}) == 16 * v("method smoothgrad")
    assert cost.method_fe("lrp", {"rule": "alpha_beta"}) == v("method lrp_epsilon")


def test_estimate_is_fe_times_the_calibrated_second_plus_decoding():
    cfg = load_config("full")
    n, pool, filt = 1000, 1000, cfg.filter_images
    est = cost.estimate(cfg, n, classify=pool, calibration=CAL)
    fe = (pool * v("classify") + n * sum(cost.fe_per_image(cfg).values())
          + filt * 9 * v("filter bisect") / 9 * v("search thesis") / v("search bisect"))
    assert est.total_fe == pytest.approx(fe, rel=1e-12)
    assert est.seconds == pytest.approx(fe * CAL.fe_seconds + (pool + n + filt) * CAL.decode_seconds, rel=1e-12)
    assert est.work.chunks == 500 and sum(est.step_seconds().values()) == pytest.approx(est.seconds)
    assert cost.estimate(cfg, 10, calibration=CAL, filter_images=0).total_fe == pytest.approx(
        10 * sum(cost.fe_per_image(cfg).values()))


def test_planned_images_are_exact_unless_one_group_waits_for_the_classification():
    full = load_config("full")
    assert remaining.planned_images(full, 1000) == (1000, True)  # every image of both groups: the pool
    d = load_config("default")
    assert remaining.planned_images(d, 1000) == (d.n_correct + d.n_misclassified, True)  # counts: exact
    mixed = full.replace(n_misclassified=1)
    assert remaining.planned_images(mixed, 1000) == (1000, False)  # an upper bound
    preds = pd.DataFrame({"correct": [True] * 8 + [False] * 2})
    assert remaining.planned_images(mixed, 10, preds) == (9, True)
    assert remaining.planned_images(full, 10, preds) == (10, True)


# ----------------------------------------------------------------------------- on a tiny pool, with the model

# the full preset on the first 6 images (both groups whole), one map per image; no filter: with the thesis's
# search it costs more than the rest here, and its resumption is the runner's, not the preset's
TINY_FULL = dict(name="full-tiny", pool=6, methods={"gradient": {}}, stages=[3], shuffles=2, filter_images=0)


@pytest.fixture(scope="module")
def full_tiny(tmp_path_factory, sample_dir):
    cfg = load_config("full", **TINY_FULL)
    store = run(cfg, progress=False, root=tmp_path_factory.mktemp("full-ref"))
    return cfg, Results(cfg, store).table


def test_full_on_every_image_resumes_to_the_same_table_and_estimates_what_is_left(full_tiny, tmp_path, capfd):
    cfg, ref = full_tiny
    assert ref.image_id.nunique() == 6 and set(ref.group) == {"correct", "misclassified"}  # the whole pool
    from apem.numerics import NumericEnv
    from apem.runner.selection import load_inputs

    _, images = load_inputs(cfg)
    env = NumericEnv.current("cpu")
    per = sum(cost.fe_per_image(cfg).values())
    fresh = remaining.remaining_work(cfg, Store(cfg, tmp_path / "none"), images, env)
    assert (fresh.images, fresh.chunks, fresh.selected, fresh.classify, fresh.filter_images) == (6, 3, 6, 6, 0)
    assert not (tmp_path / "none").exists()  # read only
    filtered = cfg.replace(filter_images=1)
    assert remaining.remaining_work(filtered, Store(filtered, tmp_path / "none"), images, env).filter_images == 1

    with pytest.raises(_Interrupt):
        run(cfg, progress=True, root=tmp_path, fail_after_chunks=1)
    out, err = capfd.readouterr()
    assert out == ""  # the estimate and the bar go to stderr
    assert "apem: estimate for full-tiny: about" in err
    assert "6 of 6 selected images in 3 chunk(s), classifying the pool of 6\n" in err

    store = Store(cfg, tmp_path)
    env = store.environment()
    left = remaining.remaining_work(cfg, store, images, env)
    assert (left.images, left.chunks, left.selected, left.classify, left.filter_images) == (4, 2, 6, 0, 0)
    e0, e1 = (cost.estimate(cfg, 0, calibration=CAL, work=w) for w in (fresh, left))
    assert e0.total_fe - e1.total_fe == pytest.approx(2 * per + 6 * v("classify"), rel=1e-12)
    assert e0.seconds - e1.seconds == pytest.approx(
        (2 * per + 6 * v("classify")) * CAL.fe_seconds + (2 + 6) * CAL.decode_seconds, rel=1e-12)

    run(cfg, progress=True, root=tmp_path)
    err = capfd.readouterr().err
    assert "4 of 6 selected images in 2 chunk(s)\n" in err and "classifying" not in err
    # the bar starts at the resumed count and shows an ETA once a chunk is done
    assert re.search(r"APEM full-tiny: +33%\|.*\| 2/6 \[", err)
    assert re.search(r" 4/6 \[\d\d:\d\d<\d\d:\d\d, ", err)
    pd.testing.assert_frame_equal(Results(cfg, store).table, ref, check_exact=True)
    assert remaining.remaining_work(cfg, store, images, env).empty
    run(cfg, progress=True, root=tmp_path)  # nothing left: no estimate, no bar
    assert "estimate" not in capfd.readouterr().err


def test_estimate_only_prints_the_estimate_and_creates_nothing(sample_dir, tmp_path, capsys):
    from apem.cli import main

    cfg = load_config("full", **TINY_FULL)
    p = tmp_path / "full-tiny.yaml"
    p.write_text(cfg.to_yaml())
    assert main(["run", str(p), "--estimate-only", "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "apem: estimate for full-tiny: about" in out and "6 of 6 selected images in 3 chunk(s)" in out
    assert re.search(r"1 FE \(one clean forward pass of one image\) = \d+\.\d\d ms \(efficientnet_lite0, batch 2", out)
    assert not (tmp_path / "r").exists()
