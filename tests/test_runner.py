"""The configuration, the results store and the resumable runner."""

import dataclasses
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from apem.config import Config, ConfigError, load_config
from apem.run import Results, _Interrupt, run
from apem.store import Store, StoreError

REPO = Path(__file__).resolve().parents[1]

TINY = dict(
    name="tiny", pool=24, n_correct=3, n_misclassified=1, methods={"gradient": {}, "lrp_epsilon": {}},
    stages=(2, 3), shuffles=1, chunk_size=1, batch_size=8, filter_images=0,
)


def tiny(**kw) -> Config:
    d = dict(TINY)
    d.update(kw)
    return Config(**d)


# ----------------------------------------------------------------------------- configuration


def test_every_field_changes_the_hash(few_samples):
    base = Config()
    changed = {
        "name": "other", "model": "vgg16", "weights": "none", "preset": "thesis", "data": str(few_samples),
        "ground_truth": str(few_samples / "val.txt"), "pool": 10, "n_correct": 7, "n_misclassified": 3,
        "methods": {"gradient": {}}, "stages": (1,), "quantize": False, "map_encoding": "save_image",
        "search_mode": "linear",
        "search_bound": 501, "clip": True, "shuffles": 3, "shuffle_mode": "per_step", "shuffle_groups": ("correct",),
        "filter_images": 2,
        "filter_fast_k": 4, "seed": 1, "device": "cpu", "batch_size": 7, "search_batch_size": 2, "chunk_size": 9,
    }
    assert set(changed) == {f.name for f in dataclasses.fields(Config)}, "a new field needs a case here"
    (few_samples / "val.txt").write_text("".join(f"{p.name} 0\n" for p in sorted(few_samples.iterdir())))
    digests = {base.digest()}
    for k, v in changed.items():
        kw = {k: v}
        if k == "shuffle_mode":
            kw["search_mode"] = "thesis"
        if k == "ground_truth":
            kw["data"] = str(few_samples)
        d = base.replace(**kw).digest()
        assert d not in digests, f"changing {k} did not change the hash"
        digests.add(d)
    # a method parameter counts too
    assert base.replace(methods={"smoothgrad": {"n": 100}}).digest() != base.replace(methods={"smoothgrad": {"n": 99}}).digest()


def test_typo_in_a_field_fails_at_load_naming_it(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("n_corect: 5\n")
    with pytest.raises(ConfigError, match=r"'n_corect'.*did you mean 'n_correct'"):
        Config.from_yaml(p)


def test_unknown_method_or_parameter_fails_at_load_naming_it(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("methods:\n  gradient: {}\n  smoothgrd: {n: 3}\n")
    with pytest.raises(ConfigError, match="smoothgrd"):
        Config.from_yaml(p)
    with pytest.raises(ConfigError, match="sigmaa"):
        Config(methods={"smoothgrad": {"sigmaa": 0.1}})


def test_bad_values_fail_at_load():
    with pytest.raises(ConfigError, match="search_mode"):
        Config(search_mode="binary")
    with pytest.raises(ConfigError, match="stages"):
        Config(stages=(4,))
    with pytest.raises(ConfigError, match="per_step"):
        Config(shuffle_mode="per_step", search_mode="bisect")
    with pytest.raises(ConfigError, match="search_batch_size"):
        Config(search_batch_size=0)


def test_parameter_sets_load_and_papermill_overrides_apply():
    for name in ("default", "smoke", "paper", "full"):
        cfg = load_config(name)
        assert cfg.name == name
    cfg = load_config("default", n_correct=5, stages=[1])
    assert cfg.n_correct == 5 and cfg.stages == (1,)
    with pytest.raises(ConfigError, match="unknown parameter set"):
        load_config("nope")


# ----------------------------------------------------------------------------- store


def test_a_store_of_another_configuration_is_never_mixed_in(tmp_path, sample_dir):
    a = Store(tiny(), tmp_path).open()
    (a.dir / "config.yaml").write_text(tiny(seed=5).to_yaml())  # as if another config wrote here
    with pytest.raises(StoreError, match="different configuration"):
        Store(tiny(), tmp_path).open()


def test_half_written_cell_folders_are_never_read(tmp_path):
    from apem.runner.cells import Cells

    cells = Cells(tmp_path)
    key_dir = cells.dir / "search" / "0123456789abcdef"
    tmp = key_dir / ".tmp-abc"
    tmp.mkdir(parents=True)
    (tmp / "rows.parquet").write_bytes(b"partial")
    assert cells.batches() == [] and cells.index("search", {"x": 1}) == {}
    cells.sweep()
    assert not tmp.exists()


# ----------------------------------------------------------------------------- runner


@pytest.fixture(scope="module")
def reference(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("ref")
    cfg = tiny()
    store = run(cfg, progress=False, root=root)
    return cfg, Results(cfg, store).table


def _same(a: pd.DataFrame, b: pd.DataFrame):
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_exact=True)


def test_table_is_tidy_with_the_thesis_columns(reference):
    cfg, t = reference
    assert len(t) == (cfg.n_correct + cfg.n_misclassified) * len(cfg.methods) * len(cfg.stages)
    for col in ("image_id", "label", "pred", "correct", "confidence", "loss", "group", "method", "stage",
                "eps_minus", "eps_plus", "apem", "censored_minus", "censored_plus", "undefined_minus",
                "undefined_plus", "reason", "eps_shuffle_minus", "eps_shuffle_plus"):
        assert col in t, col
    assert (t.groupby("image_id").size() == len(cfg.methods) * len(cfg.stages)).all()
    assert set(t.group) == {"correct", "misclassified"}
    assert (t[t.group == "correct"].label == t[t.group == "correct"].pred).all()
    assert (t[t.group == "misclassified"].label != t[t.group == "misclassified"].pred).all()
    ok = t.apem.notna()
    assert (t.apem[ok] == (t.eps_plus - t.eps_minus)[ok]).all()


def test_interrupted_run_resumes_to_the_same_table(reference, tmp_path):
    cfg, ref = reference
    with pytest.raises(_Interrupt):
        run(cfg, progress=False, root=tmp_path, fail_after_chunks=2)
    store = Store(cfg, tmp_path)
    assert store.read_frame("results.parquet") is None
    store = run(cfg, progress=False, root=tmp_path)
    n = len(Results(cfg, store).images)
    assert store.plan.images_to_compute == n - 2  # chunk_size 1: the two stored chunks' images are reused
    _same(Results(cfg, store).table, ref)


def test_the_gradient_method_reuses_the_loss_gradient_bit_for_bit(reference, tmp_path, monkeypatch):
    """Sharing the chunk's loss gradient with the gradient method changes no map and no epsilon."""
    import torch

    from apem.runner import compute

    cfg, ref = reference
    assert compute.SHARE_LOSS_GRADIENT  # the reference table was computed with the shared pass
    monkeypatch.setattr(compute, "SHARE_LOSS_GRADIENT", False)
    recomputed = Results(cfg, run(cfg, progress=False, root=tmp_path / "recomputed"))
    _same(recomputed.table, ref)
    monkeypatch.setattr(compute, "SHARE_LOSS_GRADIENT", True)
    shared = Results(cfg, run(cfg, progress=False, root=tmp_path / "shared"))
    for iid in ref.image_id.unique():
        for s in cfg.stages:
            assert torch.equal(shared.map(iid, "gradient", s), recomputed.map(iid, "gradient", s)), (iid, s)


def test_corrupt_chunk_is_detected_and_recomputed(reference, tmp_path):
    cfg, ref = reference
    from apem.runner.cells import Cells

    store = run(cfg, progress=False, root=tmp_path)
    (store.dir / "results.parquet").unlink()
    f = Cells(tmp_path).dir / [b for b in Cells(tmp_path).batches() if b.startswith("search/")][1] / "rows.parquet"
    blob = bytearray(f.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    f.write_bytes(bytes(blob))
    with pytest.warns(UserWarning, match="rows.parquet does not match its checksum"):
        store = run(cfg, progress=False, root=tmp_path)
    assert store.plan.summary()["searches_to_compute"] == len(cfg.stages)
    _same(Results(cfg, store).table, ref)


def test_killed_subprocess_resumes_to_the_same_table(reference, tmp_path):
    """kill -9 in the middle of a run, then run again: same table as an uninterrupted run."""
    from apem.runner.cells import Cells

    cfg, ref = reference
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(cfg.to_yaml())
    script = textwrap.dedent(f"""
        from apem.config import Config
        from apem.run import run
        run(Config.from_yaml({str(cfg_file)!r}), progress=False, root={str(tmp_path / 'store')!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())
    store = Store(cfg, tmp_path / "store")
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if Cells(tmp_path / "store").batches():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert store.read_frame("results.parquet") is None
    run(cfg, progress=False, root=tmp_path / "store")
    _same(Results(cfg, store).table, ref)


def test_results_give_back_cached_maps(reference, tmp_path):
    cfg, ref = reference
    res = Results(cfg, run(cfg, progress=False, root=tmp_path))
    row = ref.iloc[0]
    m = res.map(row.image_id, row.method, row.stage)
    assert m.shape[0] == 1 and 0 <= float(m.min()) and float(m.max()) == 1.0
    assert torch_unique_levels(m) <= 256


def torch_unique_levels(m) -> int:
    return int(m.flatten().unique().numel())


def test_run_and_table_commands(reference, tmp_path, monkeypatch, capsys):
    cfg, ref = reference
    from apem import store as store_mod
    from apem.cli import main

    monkeypatch.setattr(store_mod, "RESULTS_DIR", tmp_path)
    p = tmp_path / "tiny.yaml"
    p.write_text(cfg.to_yaml())
    assert main(["run", str(p), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "APEM per method and stage" in out and "LRP-ε" in out  # display names, as the book prints them
    assert main(["table", str(p)]) == 0
    assert "median" in capsys.readouterr().out


# ----------------------------------------------------------------------------- "all" images of a group


def _preds(n_right: int, n_wrong: int) -> pd.DataFrame:
    """A classified pool, correct and misclassified images interleaved."""
    right = [True] * n_right + [False] * n_wrong
    order = sorted(range(len(right)), key=lambda i: (i * 7) % len(right))
    correct = [right[i] for i in order]
    return pd.DataFrame({
        "set_position": range(len(correct)), "image_id": [f"img{i}" for i in range(len(correct))],
        "label": [1] * len(correct), "pred": [1 if c else 2 for c in correct], "confidence": 0.5, "loss": 1.0,
        "correct": correct,
    })


def test_all_selects_every_image_of_its_group_and_the_draw_of_that_count():
    from apem.runner.selection import select_images

    preds = _preds(7, 3)
    sel = select_images(tiny(n_correct="all", n_misclassified="all", filter_images=0), preds)
    assert sorted(sel.image_id) == sorted(preds.image_id)
    assert (sel.group == "correct").sum() == 7 and (sel.group == "misclassified").sum() == 3
    # "all" on one group, a count on the other: the count's draw is unchanged, the group is whole
    mixed = select_images(tiny(n_correct="all", n_misclassified=2, filter_images=0), preds)
    counted = select_images(tiny(n_correct=7, n_misclassified=2, filter_images=0), preds)
    _same(mixed, counted)
    assert set(mixed[mixed.group == "correct"].image_id) == set(preds[preds.correct].image_id)
    # a group that is empty in the pool gives no image, and "all" of it is no error
    only = select_images(tiny(n_correct="all", n_misclassified="all", filter_images=0), _preds(4, 0))
    assert len(only) == 4 and set(only.group) == {"correct"}
    with pytest.raises(ValueError, match="no image selected"):
        select_images(tiny(n_correct=0, n_misclassified="all", filter_images=0), _preds(4, 0))
    with pytest.raises(ValueError, match=r"filter_images \(5\) exceeds the 4 correctly classified images"):
        select_images(tiny(n_correct="all", n_misclassified=0, filter_images=5), _preds(4, 2))


@pytest.mark.parametrize("key", ["n_correct", "n_misclassified"])
@pytest.mark.parametrize("value,message", [
    ("most", "must be an integer or all; got 'most'"), ("ALL", "must be an integer or all; got 'ALL'"),
    (-1, "must be >= 0 or all, got -1"), (2.5, "must be an integer or all; got 2.5"),
    (None, "must be an integer or all, not null; got None"),
])
def test_a_bad_image_count_fails_naming_its_key(key, value, message):
    with pytest.raises(ConfigError, match=f"^{key} {re.escape(message)}$"):
        tiny(**{key: value})


def test_all_loads_from_yaml_and_hashes_apart_from_any_count(tmp_path, sample_dir):
    p = tmp_path / "c.yaml"
    p.write_text("n_correct: all\nn_misclassified: all\n")
    cfg = Config.from_yaml(p)
    assert (cfg.n_correct, cfg.n_misclassified) == ("all", "all")
    base = Config(name="c")
    assert cfg.digest() == base.replace(n_correct="all", n_misclassified="all").digest()  # YAML, -p, replace alike
    digests = {base.replace(n_correct=v, n_misclassified="all").digest() for v in ("all", 883, 1000, 0)}
    assert len(digests) == 4
    assert base.replace(n_correct="all").wanted("correct", 883) == 883
    assert base.replace(n_correct=5).wanted("correct", 883) == 5
    # the "at least one image" and filter checks wait for the counts: all + 0 loads
    assert tiny(n_correct="all", n_misclassified=0, filter_images=3).filter_images == 3


def test_full_is_the_thesis_settings_on_every_image_with_the_offline_model():
    full, paper, default = load_config("full"), load_config("paper"), load_config("default")
    for k in ("methods", "stages", "map_encoding", "search_mode", "search_bound", "shuffles", "shuffle_mode",
              "quantize", "clip", "seed"):
        assert getattr(full, k) == getattr(paper, k), k
    for k in ("model", "weights", "preset", "data", "pool", "device"):
        assert getattr(full, k) == getattr(default, k), k
    assert (full.n_correct, full.n_misclassified) == ("all", "all") and full.filter_images > 0
