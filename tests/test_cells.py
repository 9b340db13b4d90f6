"""The cell store: a configuration is a view, every number is computed once.

For each kind of configuration change, the table assembled from reused cells equals,
bit for bit, the table of a fresh store with the same configuration, and the run
computes exactly the cells that depend on the change (its plan says how many).
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from apem.config import Config
from apem.run import Results, run
from apem.runner.cells import Cells

REPO = Path(__file__).resolve().parents[1]

BASE = dict(name="cells", pool=16, n_correct=2, n_misclassified=1,
            methods={"gradient": {}, "smoothgrad": {"n": 2, "sigma": 0.2}}, stages=(2, 3), shuffles=1,
            search_bound=2001, chunk_size=2, batch_size=8, filter_images=0)


def cfg_of(**kw) -> Config:
    d = dict(BASE)
    d.update(kw)
    return Config(**d)


def table(cfg, store) -> pd.DataFrame:
    return Results(cfg, store).table


def same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_exact=True)


@pytest.fixture(scope="module")
def base_root(tmp_path_factory, sample_dir):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cells-shared")
    store = run(cfg_of(), root=root, threads=1, progress=False)
    assert store.plan.summary()["images_to_compute"] == 3
    return root


def _fresh_root(tmp_path, base_root) -> Path:
    """An empty store that shares only the pool's cached predictions (no cell)."""
    fresh = tmp_path / "fresh"
    shutil.copytree(base_root / "_predictions", fresh / "_predictions")
    return fresh


CHANGES = {
    # change -> (images, maps, searches, shuffled searches) the reusing run computes
    "more images": (dict(n_misclassified=2), (1, 4, 4, 4)),
    "a subset of stages": (dict(stages=(3,)), (0, 0, 0, 0)),
    "a subset of methods": (dict(methods={"gradient": {}}), (0, 0, 0, 0)),
    "another chunk size": (dict(chunk_size=3), (0, 0, 0, 0)),
    "more shuffles": (dict(shuffles=2), (3, 0, 0, 12)),
    "another search mode": (dict(search_mode="thesis", shuffles=0), (3, 0, 12, 0)),
    "a new method": (dict(methods={"gradient": {}, "smoothgrad": {"n": 2, "sigma": 0.2}, "lrp_epsilon": {}}),
                     (3, 6, 6, 6)),
    "the baseline on correct images only": (dict(shuffle_groups=("correct",)), (0, 0, 0, 0)),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_changed_configuration_computes_only_what_depends_on_the_change_and_equals_a_fresh_store(
        change, base_root, tmp_path):
    kw, (images, maps, searches, shuffles) = CHANGES[change]
    cfg = cfg_of(**kw)
    reused = run(cfg, root=base_root, threads=1, progress=False)
    s = reused.plan.summary()
    assert (s["images_to_compute"], s["maps_to_compute"], s["searches_to_compute"],
            s["shuffled_searches_to_compute"]) == (images, maps, searches, shuffles)
    fresh = run(cfg, root=_fresh_root(tmp_path, base_root), threads=1, progress=False)
    assert fresh.plan.summary()["maps_reused"] == 0
    same(table(cfg, reused), table(cfg, fresh))
    a, b = Results(cfg, reused), Results(cfg, fresh)
    for name in cfg.methods:
        for st in cfg.stages:
            assert torch.equal(a.maps(a.images.image_id, name, st), b.maps(b.images.image_id, name, st))


def test_the_shuffled_baseline_of_one_group_leaves_the_other_unsearched_and_is_completed_later(base_root, tmp_path):
    root = _fresh_root(tmp_path, base_root)
    only = cfg_of(shuffle_groups=("correct",))
    s = run(only, root=root, threads=1, progress=False).plan.summary()
    assert s["shuffled_searches_to_compute"] == 2 * 2 * 2  # 2 correct images x 2 methods x 2 stages, not 3 images
    assert s["searches_to_compute"] == 3 * 2 * 2
    T = Results(only, run(only, root=root, threads=1, progress=False)).table
    mis = T[T.group == "misclassified"]
    assert len(mis) == 4 and mis.eps_shuffle_minus.isna().all() and mis.eps_shuffle_plus.isna().all()
    assert mis.censored_shuffle_minus.isna().all() and mis.apem_norm_term.isna().all()
    cor = T[T.group == "correct"]
    assert cor.eps_shuffle_minus.notna().all() and cor.censored_shuffle_plus.notna().all()
    # both groups now: only the misclassified image's shuffled searches are computed, and the table is the base's
    both = run(cfg_of(), root=root, threads=1, progress=False)
    s = both.plan.summary()
    assert (s["images_to_compute"], s["maps_to_compute"], s["searches_to_compute"],
            s["shuffled_searches_to_compute"]) == (1, 0, 0, 4)
    same(table(cfg_of(), both), table(cfg_of(), run(cfg_of(), root=base_root, threads=1, progress=False)))
    full = table(cfg_of(), both).set_index(["image_id", "method", "stage"])
    for c in ("eps_shuffle_minus", "eps_shuffle_plus", "apem_norm_term"):
        assert np.array_equal(cor.set_index(["image_id", "method", "stage"])[c].astype(float),
                              full.loc[cor.set_index(["image_id", "method", "stage"]).index, c].astype(float))


def test_the_filter_is_computed_once_per_image_and_a_view_over_its_cells_filters_nothing(base_root, tmp_path,
                                                                                      monkeypatch):
    from apem import filtering

    cols = ["apem_before", "apem_after", "steps", "removed_fraction"]
    both = cfg_of(filter_images=2)
    fa = Results(both, run(both, root=base_root, threads=1, progress=False)).filter_table
    assert len(fa) == 2 * 2 * 2  # images x methods x stages
    calls = []
    real = filtering.explanation_filter
    monkeypatch.setattr(filtering, "explanation_filter", lambda *a, **k: calls.append(1) or real(*a, **k))
    one = cfg_of(filter_images=1, stages=(3,))  # a subset of the images and stages: read from the cells
    rb = Results(one, run(one, root=base_root, threads=1, progress=False))
    assert calls == []
    first = fa[(fa.map_row == 0) & (fa.stage == 3)].reset_index(drop=True)
    same(rb.filter_table[cols], first[cols])
    # filtered alone in a fresh store (one image, not two): the same numbers and maps, bit for bit
    fresh = cfg_of(filter_images=1)
    rf = Results(fresh, run(fresh, root=_fresh_root(tmp_path, base_root), threads=1, progress=False))
    assert len(calls) == 2 * 2  # methods x stages, on the one image
    same(rf.filter_table[rf.filter_table.stage == 3][cols].reset_index(drop=True), first[cols])
    ra = Results(both, run(both, root=base_root, threads=1, progress=False))
    for name in both.methods:
        for st in both.stages:
            iid = ra.filter_table.image_id[0]
            assert torch.equal(rf.filtered_map(iid, name, st), ra.filtered_map(iid, name, st))


def test_raw_attributions_are_kept_once_per_image_and_give_the_stored_maps(base_root):
    from apem.maps import stage_maps

    cfg = cfg_of()
    res = Results(cfg, run(cfg, root=base_root, threads=1, progress=False))
    ids = list(res.images.image_id[:2])
    alone = res.attributions(ids[1:], "smoothgrad")  # the second image first, on its own
    batches = Cells(base_root).batches()
    both = Results(cfg, res.store).attributions(ids, "smoothgrad")
    assert len(Cells(base_root).batches()) == len(batches) + 1  # only the first image was computed
    assert torch.equal(both[1], alone[0]) and both.dtype == torch.float32
    Results(cfg, res.store).attributions(ids, "smoothgrad")
    assert len(Cells(base_root).batches()) == len(batches) + 1  # nothing computed again
    x = res.image_tensors(ids).contiguous(memory_format=torch.channels_last)
    for j in range(2):  # the stages of the kept attributions are the stored maps, bit for bit
        st = stage_maps(both[j : j + 1].contiguous(memory_format=torch.channels_last), x[j : j + 1], cfg.stages)
        for s in cfg.stages:
            assert torch.equal(st[s][0], res.map(ids[j], "smoothgrad", s))
    with pytest.raises(KeyError, match="lrp_epsilon"):
        res.attributions(ids, "lrp_epsilon")
    from apem.runner import housekeeping

    kept = housekeeping.usage(base_root)  # `apem store gc` keeps them while the configuration exists
    assert any(b.startswith("attributions/") for b in kept["used"])
    assert not any(b.startswith(("attributions/", "filter/")) for b in kept["unused"])


def test_a_larger_n_keeps_the_smaller_n_images_first():
    from apem.runner.selection import select_images

    rng = np.random.default_rng(3)
    preds = pd.DataFrame({"set_position": range(40), "image_id": [f"i{k}" for k in range(40)],
                          "label": 0, "pred": 0, "confidence": 1.0, "loss": 0.0, "correct": rng.random(40) < 0.7})
    small = select_images(cfg_of(n_correct=3, n_misclassified=2), preds)
    large = select_images(cfg_of(n_correct=8, n_misclassified=5), preds)
    for group in ("correct", "misclassified"):
        a = small[small.group == group].image_id.tolist()
        b = large[large.group == group].image_id.tolist()
        assert b[: len(a)] == a


def test_an_image_map_does_not_depend_on_the_other_images_or_its_position():
    """The runner's attributions (image by image, noise keyed by the image's name): the same map in any chunk."""
    from types import SimpleNamespace

    from apem.runner.compute import attributions

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 5)).eval()
    lm = SimpleNamespace(model=net, device=torch.device("cpu"), gradcam_layer=None)
    x, t = torch.rand(3, 3, 8, 8), torch.tensor([0, 3, 1])
    ids = ["a.JPEG", "b.JPEG", "c.JPEG"]
    cfg = cfg_of(methods={"smoothgrad": {"n": 5, "sigma": 0.3}, "gradient": {"objective": "logit"}})
    for name in cfg.methods:
        together = attributions(cfg, lm, name, x, t, ids)
        swapped = attributions(cfg, lm, name, x[[2, 0]], t[[2, 0]], [ids[2], ids[0]])
        assert torch.equal(swapped[0], together[2]) and torch.equal(swapped[1], together[0])
    # the noise is the image's: another name draws other noise
    a = attributions(cfg, lm, "smoothgrad", x[:1], t[:1], ["a.JPEG"])
    assert not torch.equal(a, attributions(cfg, lm, "smoothgrad", x[:1], t[:1], ["z.JPEG"]))


def test_a_forward_of_the_search_does_not_depend_on_the_other_images_of_its_batch(sample_dir):
    """Every model call of a search has the search's batch size, so a perturbed image's logits are the same
    alone as in company (EfficientNet-Lite0 on the CPU moves them in the last bits with the batch size)."""
    from apem.metric.forward import Forward, fixed_directions
    from apem.runner.selection import load_inputs
    from apem.data import load_tensors

    torch.set_num_threads(1)
    lm, images = load_inputs(cfg_of(pool=4))
    _, x, _ = load_tensors(images.subset(range(3)), lm.transform)
    target = lm.model(x).argmax(1)
    d = fixed_directions(torch.randn(5, 3, 224, 224) * 1e-4)
    img_of = torch.tensor([0, 1, 2, 0, 1])
    fwd = Forward(lm.model, x, target, img_of, d, batch_size=4)
    _, every = fwd(torch.arange(5), torch.tensor([3, 5, 7, 9, 11]))
    for j in range(5):
        _, alone = fwd(torch.tensor([j]), torch.tensor([[3, 5, 7, 9, 11][j]]))
        assert alone[0] == every[j], j


def test_a_cell_batch_copied_under_another_key_is_refused_and_recomputed(base_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(base_root, root)
    cells = Cells(root)
    maps = [b for b in cells.batches() if b.startswith("maps/")]
    src, other = maps[0], [b for b in maps if b.split("/")[1] != maps[0].split("/")[1]][0]
    dest = cells.dir / other.rsplit("/", 1)[0] / "00000000000000000000-1-intruder"
    shutil.copytree(cells.dir / src, dest)
    cfg = cfg_of(name="copied")
    with pytest.warns(UserWarning, match="copied in from elsewhere"):
        store = run(cfg, root=root, threads=1, progress=False)
    assert not dest.exists()
    same(table(cfg, store), table(cfg_of(name="copied"), run(cfg_of(name="copied"), root=base_root, threads=1,
                                                                   progress=False)))


def test_a_damaged_cell_is_named_removed_and_recomputed(base_root, tmp_path):
    root = tmp_path / "damaged"
    shutil.copytree(base_root, root)
    cells = Cells(root)
    victim = [b for b in cells.batches() if b.startswith("search/")][0]
    f = cells.dir / victim / "rows.parquet"
    f.write_bytes(f.read_bytes()[:-20])
    cfg = cfg_of(name="damaged")
    with pytest.warns(UserWarning, match="does not match its checksum"):
        store = run(cfg, root=root, threads=1, progress=False)
    assert store.plan.summary()["searches_to_compute"] > 0
    same(table(cfg, store), table(cfg, run(cfg, root=base_root, threads=1, progress=False)))


def test_cells_of_another_thread_count_are_never_mixed_in(base_root, tmp_path, monkeypatch):
    root = tmp_path / "threads"
    shutil.copytree(base_root, root)
    two = cfg_of(name="two-threads")
    store = run(two, root=root, threads=2, progress=False)
    assert store.plan.summary()["maps_reused"] == 0  # the 1-thread cells have another key
    manifests = [json.loads((Cells(root).dir / b / "manifest.json").read_text()) for b in Cells(root).batches()]
    assert {m["environment"]["threads"] for m in manifests} == {1, 2}
    # the hole a probe found: a 1-thread configuration whose environment.json is lost, run again without
    # --threads, takes the default 2 threads; it reads the 2-thread cells, never a mix of both
    base = run(cfg_of(), root=root, threads=1, progress=False)
    (base.dir / "environment.json").unlink()
    monkeypatch.delenv("APEM_THREADS", raising=False)
    again = run(cfg_of(), root=root, progress=False)
    assert again.environment().threads == 2 and again.plan.summary()["maps_to_compute"] == 0
    cells_columns = [c for c in table(two, store).columns if c.startswith(("eps_", "censored", "undefined", "n_forward"))]
    same(table(cfg_of(), again)[cells_columns], table(two, store)[cells_columns])  # every number is a 2-thread one


def test_a_full_disk_is_one_line_and_leaves_no_temporary_folder(base_root, tmp_path, monkeypatch, capsys):
    import errno

    from apem.cli import main
    from apem.runner import cells as cells_module

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(cells_module, "fsync_write", full)
    root = tmp_path / "full"
    shutil.copytree(base_root, root)
    f = tmp_path / "more.yaml"
    f.write_text(cfg_of(n_correct=4).to_yaml())
    assert main(["run", str(f), "--results", str(root), "--threads", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("apem: error: cannot write ") and "No space left on device" in err and err.count("\n") == 1
    assert not [p for p in root.rglob(".tmp-*")]


def test_changed_images_are_named_and_only_their_cells_computed(base_root, tmp_path, sample_dir, capfd):
    sel = Results(cfg_of(), run(cfg_of(), root=base_root, threads=1, progress=False)).images
    data = tmp_path / "data"
    data.mkdir()
    for p in sorted(sample_dir.glob("*.JPEG"))[:16]:
        shutil.copy(p, data / p.name)  # new modification times, the same bytes
    root = tmp_path / "changed"
    shutil.copytree(base_root, root)
    store = run(cfg_of(data=str(data)), root=root, threads=1, progress=False)
    assert store.plan.images_to_compute == 0  # a copy of the same bytes is the same data
    from PIL import Image

    victim = data / sel.image_id[0]
    Image.open(victim).convert("RGB").rotate(90).save(victim, "JPEG")  # other bytes under the same name
    capfd.readouterr()
    store = run(cfg_of(data=str(data)), root=root, threads=1, progress=True)
    err = capfd.readouterr().err
    assert "the images of cells changed since cells-" in err and "cells of unchanged images are reused" in err
    assert store.plan.summary()["maps_reused"] > 0
    now = Results(cfg_of(data=str(data)), store).images.set_index("image_id").image_key
    if sel.image_id[0] in now.index:  # still drawn: under a new identity, so its cells were computed again
        assert now[sel.image_id[0]] != sel.image_key[0]


def test_estimate_json_says_what_is_reused_and_nothing_else_on_stdout(base_root, tmp_path):
    f = tmp_path / "cells.yaml"
    f.write_text(cfg_of(n_correct=3).to_yaml())
    out = subprocess.run([sys.executable, "-m", "apem", "run", str(f), "--results", str(base_root), "--threads", "1",
                          "--estimate-only", "--json"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)  # the whole of stdout is one JSON object
    assert (d["images_selected"], d["images_to_compute"], d["maps_to_compute"], d["searches_to_compute"],
            d["shuffled_searches_to_compute"]) == (4, 1, 4, 4, 4)
    assert (d["maps_reused"], d["searches_reused"]) == (12, 12) and d["cells_bytes"] > 0
    store = run(cfg_of(n_correct=3), root=base_root, threads=1, progress=False)
    assert store.plan.summary()["images_to_compute"] == 1  # the estimate computed nothing


def test_store_gc_removes_only_the_cells_no_configuration_reads(base_root, tmp_path):
    from apem.runner import housekeeping

    root = tmp_path / "gc"
    shutil.copytree(base_root, root)
    run(cfg_of(n_misclassified=2), root=root, threads=1, progress=False)  # one more image: cells only it reads
    before = Cells(root).batches()
    assert housekeeping.collect(root, dry_run=True)[0] == []  # every batch is read by some configuration
    for d in root.glob("cells-*"):  # remove every configuration but the base one
        if d.name != f"cells-{cfg_of().digest()}":
            shutil.rmtree(d)
    unused, size = housekeeping.collect(root, dry_run=True)
    assert unused and size > 0 and Cells(root).batches() == before  # a dry run removes nothing
    housekeeping.collect(root, dry_run=False)
    after = Cells(root).batches()
    assert set(after) == set(before) - set(unused)
    store = run(cfg_of(), root=root, threads=1, progress=False)  # the base configuration lost nothing
    assert store.plan is None or store.plan.images_to_compute == 0


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    import ast

    out = []
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] == "apem":
            out.append((n.module, [a.name for a in n.names]))
        elif isinstance(n, ast.Import):
            out += [(a.name, []) for a in n.names if a.name.split(".")[0] == "apem"]
    return out


ORDER = ["distributed", "remaining", "plan", "housekeeping", "chunks", "compute", "cells", "selection", "keys"]


def test_the_runner_reads_top_down_and_no_module_imports_a_private_name():
    runner = REPO / "apem" / "runner"
    assert sorted(p.stem for p in runner.glob("*.py") if p.stem != "__init__") == sorted(ORDER)
    for name in ORDER:
        for module, names in _imports(runner / f"{name}.py"):
            assert module != "apem.run", f"apem.runner.{name} imports apem.run (above it)"
            if module.startswith("apem.runner."):
                other = module.split(".")[2]
                assert ORDER.index(other) > ORDER.index(name), f"apem.runner.{name} imports apem.runner.{other}"
            elif module == "apem.runner":
                assert all(ORDER.index(n) > ORDER.index(name) for n in names), (name, names)
    for path in (REPO / "apem").rglob("*.py"):
        for module, names in _imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert not private, f"{path.relative_to(REPO)} imports {private} from {module}"
        if path.parent.name != "runner" and path.name != "run.py":
            assert all(m != "apem.run" or set(n) <= {"results", "Results", "run", "summary"}
                       for m, n in _imports(path)), f"{path.relative_to(REPO)} imports runner internals from apem.run"


def test_a_study_computes_each_image_once_and_a_larger_study_reuses_a_smaller_one(base_root):
    from apem.studies.common import cached_rows

    res = Results(cfg_of(), run(cfg_of(), root=base_root, threads=1, progress=False))
    ids = list(res.images.image_id)
    calls = []

    def compute(lack):
        calls.append(list(lack))
        return pd.DataFrame({"image_id": [i for i in lack for _ in range(2)],
                             "value": [hash((i, k)) % 1000 for i in lack for k in range(2)]})

    small = cached_rows(res, "test-study", compute, ids[:1], p=1)
    large = cached_rows(res, "test-study", compute, ids[::-1], p=1)
    assert calls == [ids[:1], ids[:0:-1]]  # the larger study computed only what the smaller lacked
    assert list(large.image_id) == [i for i in ids[::-1] for _ in range(2)]  # in the order asked for
    pd.testing.assert_frame_equal(large[large.image_id == ids[0]].reset_index(drop=True), small)
    cached_rows(res, "test-study", compute, ids, p=1)
    assert len(calls) == 2  # everything stored
    cached_rows(res, "test-study", compute, ids[:1], p=2)
    assert len(calls) == 3  # another parameter is another study
    # another configuration over the same cells (more images, another name) reads the same rows
    other = Results(cfg_of(name="other", n_correct=3), run(cfg_of(name="other", n_correct=3), root=base_root,
                                                            threads=1, progress=False))
    cached_rows(other, "test-study", compute, ids, p=1)
    assert len(calls) == 3
