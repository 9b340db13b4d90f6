"""A result is what its name says: data identity, store integrity, numeric environment, bad input.

Each test here reproduces a way results went silently wrong before: another image
folder reusing a store, a truncated map file trusted, chunks of two thread counts
mixed, two writers of one chunk, a killed run, and bad input that gave a traceback.
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from apem.config import Config
from apem.data import DataError
from apem.numerics import EnvironmentMismatch
from apem.run import Results, _Interrupt, run
from apem.runner.cells import Cells
from apem.store import Store, StoreError


def _manifests(root) -> list[dict]:
    import json

    cells = Cells(root)
    return [json.loads((cells.dir / b / "manifest.json").read_text()) for b in cells.batches()]

TINY = dict(name="tiny", n_correct=3, n_misclassified=1, methods={"gradient": {}}, stages=(2, 3), shuffles=1,
            chunk_size=1, batch_size=8, filter_images=0)


def _copy(sample_dir: Path, dest: Path, names) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy2(sample_dir / n, dest / n)
    return dest


@pytest.fixture(scope="module")
def folders(tmp_path_factory, sample_dir):
    """Two folders of 12 sample images each, no image in common."""
    names = sorted(p.name for p in sample_dir.iterdir() if p.suffix == ".JPEG")
    rng = random.Random(0)
    pick = rng.sample(names, 24)
    root = tmp_path_factory.mktemp("folders")
    return _copy(sample_dir, root / "a", pick[:12]), _copy(sample_dir, root / "b", pick[12:])


def tiny(data, **kw) -> Config:
    return Config(**dict(TINY, data=str(data), **kw))


def _same(a: pd.DataFrame, b: pd.DataFrame):
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_exact=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, folders):
    root = tmp_path_factory.mktemp("ref")
    cfg = tiny(folders[0])
    store = run(cfg, progress=False, root=root)
    return cfg, Results(cfg, store).table


# ----------------------------------------------------------------------------- data identity


def test_the_data_folder_and_its_files_are_part_of_the_identity(folders, tmp_path, monkeypatch):
    a, b = folders
    assert tiny(a).digest() != tiny(b).digest()
    # data: null reads $APEM_DATA: the digest follows what it points at
    monkeypatch.setenv("APEM_DATA", str(a))
    da = Config(**TINY).digest()
    monkeypatch.setenv("APEM_DATA", str(b))
    assert Config(**TINY).digest() != da
    # the same folder with one file rewritten, one removed, one added
    c = tmp_path / "c"
    shutil.copytree(a, c)
    base = tiny(c).digest()
    f = sorted(c.iterdir())[0]
    f.write_bytes(f.read_bytes() + b"\0")
    assert tiny(c).digest() != base
    changed = tiny(c).digest()
    sorted(c.iterdir())[1].unlink()
    assert tiny(c).digest() != changed
    # the cached predictions are keyed by the same identity
    assert tiny(a).classification_key()["data"] != tiny(b).classification_key()["data"]


def test_an_empty_or_missing_folder_is_an_error_not_an_old_table(tmp_path, reference, monkeypatch):
    cfg, _ = reference
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no labelled images"):
        run(cfg.replace(data=str(tmp_path / "empty")), progress=False, root=tmp_path / "r")
    with pytest.raises(DataError, match="does not exist"):
        run(cfg.replace(data=str(tmp_path / "nope")), progress=False, root=tmp_path / "r")
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_a_folder_of_other_images_never_reuses_results(reference, folders, tmp_path):
    cfg, ref = reference
    a, b = folders
    ra = Results(cfg, run(cfg, progress=False, root=tmp_path))
    other = cfg.replace(data=str(b))
    rb = Results(other, run(other, progress=False, root=tmp_path))
    assert ra.store.dir != rb.store.dir
    assert set(ra.table.image_id) <= {p.name for p in a.iterdir()}
    assert set(rb.table.image_id) <= {p.name for p in b.iterdir()}
    _same(ra.table, ref)


# ----------------------------------------------------------------------------- integrity


def test_a_truncated_map_file_is_detected_and_recomputed(reference, tmp_path):
    cfg, ref = reference
    store = run(cfg, progress=False, root=tmp_path)
    res = Results(cfg, store)
    row = res.table.iloc[-1]
    f = Cells(tmp_path).dir / res.map_location(row.image_id, row.method, row.stage).batch / "maps.npz"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    # a reader is told which batch and file
    with pytest.raises(StoreError, match=r"maps\.npz.*checksum"):
        Results(cfg, store).map(row.image_id, row.method, row.stage)
    # results.parquet exists, yet the run checks the maps it points to, names the damaged batch and recomputes it
    with pytest.warns(UserWarning, match=r"maps\.npz does not match its checksum"):
        store = run(cfg, progress=False, root=tmp_path)
    assert len(store.computed) == 1 and store.plan.summary()["maps_to_compute"] == len(cfg.stages)
    res = Results(cfg, store)
    _same(res.table, ref)
    assert res.map(row.image_id, row.method, row.stage).shape[0] == 1


def test_a_damaged_table_is_recomputed_not_trusted(reference, tmp_path):
    cfg, ref = reference
    store = run(cfg, progress=False, root=tmp_path)
    t = store.dir / "results.parquet"
    blob = bytearray(t.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    t.write_bytes(bytes(blob))
    with pytest.warns(UserWarning, match="results.parquet"):
        store = run(cfg, progress=False, root=tmp_path)
    assert store.computed == []  # the chunks were intact: only the table was gathered again
    _same(Results(cfg, store).table, ref)


def test_two_writers_of_the_same_cells_never_fail_and_leave_complete_batches(tmp_path, reference):
    cfg, _ = reference
    from apem.numerics import NumericEnv

    env = NumericEnv.current("cpu")
    cells = Cells(tmp_path)
    parts = {"kind": "maps", "environment": env.key(), "test": 1}
    rows = pd.DataFrame({"image_key": ["a@1", "b@2"], "image_id": ["a", "b"], "stage": [3, 3], "row": [0, 1]})
    maps = {"s3": np.zeros((2, 1, 8, 8), np.uint8)}
    errors = []

    def writer():
        try:
            for _ in range(30):
                cells.write("maps", parts, rows, env.record(), maps)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    reader = Cells(tmp_path)
    assert set(reader.index("maps", parts)) == {("a@1", 3), ("b@2", 3)}
    assert len(reader.batches()) == 90
    assert all(reader.problem(b, "maps", b.split("/")[1], parts) is None for b in reader.batches())
    key_dir = reader.dir / reader.batches()[0].rsplit("/", 1)[0]
    assert not [p for p in key_dir.iterdir() if p.name.startswith(".tmp-")]


def test_temporary_files_of_live_processes_are_not_swept(tmp_path, reference):
    cfg, _ = reference
    store = Store(cfg, tmp_path).open()
    key_dir = Cells(tmp_path).dir / "maps" / "0123456789abcdef"
    key_dir.mkdir(parents=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mine = key_dir / f".tmp-{live.pid}-abc"
        mine.mkdir()
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        theirs = key_dir / f".tmp-{dead.pid}-abc"
        theirs.mkdir()
        view = store.dir / f".tmp-{dead.pid}-abc"
        view.mkdir()
        Store(cfg, tmp_path).open()
        Cells(tmp_path).sweep()
        assert mine.exists() and not theirs.exists() and not view.exists()
    finally:
        live.kill()
        live.wait()


def _run_script(cfg_file: Path, root: Path, extra: str = "") -> str:
    return textwrap.dedent(f"""
        import sys
        from apem.config import Config
        from apem.run import run
        {extra}
        s = run(Config.from_yaml({str(cfg_file)!r}), progress=False, root={str(root)!r})
        print("computed", len(s.computed), flush=True)
    """)


def test_two_concurrent_runs_do_the_work_once(reference, tmp_path):
    cfg, ref = reference
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(cfg.to_yaml())
    root = tmp_path / "store"
    procs = [subprocess.Popen([sys.executable, "-c", _run_script(cfg_file, root)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    computed = sorted(int(o[0].split("computed")[1]) for o in outs)
    n_images = len(Results(cfg, Store(cfg, root)).images)
    assert computed == [0, n_images], outs  # chunk_size 1: a chunk per image  # one of them did everything, the other waited and reused it
    assert "waiting" in outs[0][1] + outs[1][1]
    _same(Results(cfg, Store(cfg, root)).table, ref)


def test_a_stale_lock_of_a_dead_run_is_taken_over(reference, tmp_path):
    cfg, ref = reference
    store = Store(cfg, tmp_path).open()
    (store.dir / "lock").write_text("pid 999999 on nowhere\n")  # the file a killed run leaves
    _same(Results(cfg, run(cfg, progress=False, root=tmp_path, wait=False)).table, ref)


def test_killed_at_random_moments_then_resumed_gives_the_same_table(reference, tmp_path):
    """kill -9 at several random points of a run, in a loop, then resume: bit-identical table."""
    cfg, ref = reference
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(cfg.to_yaml())
    root = tmp_path / "store"
    store = Store(cfg, root)
    rng = random.Random(1)
    killed = 0
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _run_script(cfg_file, root)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        # wait until the run is past its imports and model load (a chunk folder appears or it ends), then a bit more
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not Cells(root).batches():
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
    assert killed >= 2, "the runs finished before they could be killed"
    _same(Results(cfg, run(cfg, progress=False, root=root)).table, ref)


# ----------------------------------------------------------------------------- numeric environment


def test_resuming_under_another_thread_count_is_refused_with_a_way_out(reference, tmp_path):
    cfg, _ = reference
    with pytest.raises(_Interrupt):
        run(cfg, progress=False, root=tmp_path, threads=1, fail_after_chunks=1)
    with pytest.raises(EnvironmentMismatch, match=r"--threads 1.*new store"):
        run(cfg, progress=False, root=tmp_path, threads=2)
    store = run(cfg, progress=False, root=tmp_path)  # no thread count given: the store's is used
    assert store.environment().threads == 1
    assert {m["environment"]["threads"] for m in _manifests(tmp_path)} == {1}


def test_every_cell_batch_records_its_numeric_environment(reference, tmp_path):
    cfg, _ = reference
    run(cfg, progress=False, root=tmp_path)
    import torch

    from apem.numerics import NumericEnv, resolve_threads

    manifests = _manifests(tmp_path)
    assert manifests
    for m in manifests:
        env = NumericEnv.from_record(m["environment"])
        assert env.torch == torch.__version__.split("+")[0] and env.device_type == "cpu"
        assert env.threads == resolve_threads(None, None)  # no store record: $APEM_THREADS, else the default 2
        assert env.tf32_matmul is False and env.dtype == "float32"


# ----------------------------------------------------------------------------- bad input: one line, non-zero


BAD = [
    (["-p", "n_correct", "2.5"], "n_correct must be an integer or all; got 2.5"),
    (["-p", "n_correct", "abc"], "n_correct must be an integer or all; got 'abc'"),
    (["-p", "n_correct", "true"], "n_correct must be an integer or all; got True"),
    (["-p", "n_correct", "null"], "n_correct must be an integer or all, not null"),
    (["-p", "n_misclassified", "-3"], "n_misclassified must be >= 0 or all, got -3"),
    (["-p", "stages", "3"], "stages must be a list"),
    (["-p", "stages", "[4]"], "stages must be a non-empty subset"),
    (["-p", "stages", "[1, 2"], "-p stages '[1, 2': not a valid YAML value"),
    (["-p", "device", "cuda"] if not __import__("torch").cuda.is_available() else ["-p", "device", "cuda:99"],
     "device 'cuda"),
    (["-p", "device", "nosuch"], "device 'nosuch' is not a device"),
    (["-p", "pool", "0"], "pool must be >= 1"),
    (["-p", "n_correct", "0", "-p", "n_misclassified", "0"], "ask for at least one image"),
    (["-p", "filter_images", "99"], "filter_images (99) cannot exceed n_correct"),
    (["-p", "name", "../up"], "name '../up' must be letters"),
    (["-p", "methods", "gradient"], "methods must be a mapping"),
    (["-p", "methods", "{smoothgrad: {m: 3}}"], "unknown parameter(s) ['m']"),
    (["-p", "seed", "-1"], "seed must be >= 0"),
    (["-p", "clip", "maybe"], "clip must be true or false"),
    (["-p", "n_corect", "3"], "did you mean 'n_correct'"),
    (["-p", "search_mode", "fast"], "unknown search_mode 'fast'"),
    (["-p", "shuffle_mode", "per_step"], "per_step shuffles need a scan"),
    (["-p", "data", "/no/such/folder"], "image folder /no/such/folder does not exist"),
    (["-p", "data", "{empty}"], "no labelled images in"),
    (["-p", "weights", "{not_a_state_dict}"], "not a PyTorch state dict"),
    (["-p", "weights", "/no/such.pth"], "weights file not found: /no/such.pth"),
    (["-p", "n_correct", "500"], "asked for 500 correct images but the pool has only"),
    (["--threads", "0"], "thread count must be >= 1"),
    (["{bad_yaml}"], "not valid YAML"),
    (["{not_a_mapping}"], "expected a mapping of fields"),
    (["nosuchset"], "unknown parameter set 'nosuchset'"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_exits_non_zero_with_one_line_and_leaves_no_folder(argv, message, tmp_path, capsys, monkeypatch,
                                                                     folders):
    import torch

    from apem.cli import main

    (tmp_path / "empty").mkdir()
    pickled = tmp_path / "model.pth"
    torch.save({"net": torch.nn.Linear(2, 2)}, pickled)  # a whole module, not a state dict
    (tmp_path / "bad.yaml").write_text("n_correct: [1\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    subst = {"{empty}": str(tmp_path / "empty"), "{not_a_state_dict}": str(pickled),
             "{bad_yaml}": str(tmp_path / "bad.yaml"), "{not_a_mapping}": str(tmp_path / "list.yaml")}
    argv = [subst.get(a, a) for a in argv]
    target = argv[0] if argv[0].endswith(".yaml") or argv[0] == "nosuchset" else "smoke"
    rest = argv[1:] if target != "smoke" else argv
    root = tmp_path / "results"
    monkeypatch.setenv("APEM_DATA", str(folders[0]))
    code = main(["run", target, *rest, "--no-progress", "--results", str(root),
                 *(["-p", "pool", "12"] if target == "smoke" and "pool" not in rest else [])])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err, err
    assert len(err.splitlines()) == 1, err
    assert not root.exists() or not [p for p in root.iterdir() if p.name != "_predictions"], list(root.iterdir())


# ----------------------------------------------------------------------------- the book keeps going

_HEAD = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# {title}

```{{code-cell}} ipython3
:tags: [parameters]

params = "default"
overrides = {{}}
```

```{{code-cell}} ipython3
{body}
```

```{{code-cell}} ipython3
print("UNREACHED_CELL")
```
"""


def test_the_book_keeps_going_past_a_failing_or_switched_off_chapter(reference, tmp_path, monkeypatch):
    import json

    from apem import book

    cfg, _ = reference
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    bodies = {"01_ok": 'print("fine")', "02_fails": "1 / 0",
              "03_off": 'from apem.book.display import require\nrequire(False, "the study is off", "-p shuffles 3")'}
    for stem, body in bodies.items():
        (nbs / f"{stem}.md").write_text(_HEAD.format(title=stem, body=body))
    monkeypatch.setattr(book, "NOTEBOOKS", nbs)
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(cfg.to_yaml())
    _, outcomes = book.build(str(cfg_file), html=False, progress=False, root=tmp_path / "out",
                             results_root=tmp_path / "results")
    status = {o.chapter: o.status for o in outcomes}
    assert status == {"01_ok": "executed", "02_fails": "failed", "03_off": "not computed"}
    failed = next(o for o in outcomes if o.status == "failed")
    assert failed.cell is not None and "ZeroDivisionError" in failed.error and "02_fails" in failed.line()
    pages = tmp_path / "out" / "book" / "chapters"
    bad = json.loads((pages / "02_fails.ipynb").read_text())
    text = json.dumps(bad["cells"])
    assert "failed to execute" in text and "ZeroDivisionError" in text and "UNREACHED_CELL" not in text
    assert bad["metadata"]["apem"]["fingerprint"] is None  # re-executed next time
    off = json.loads((pages / "03_off.ipynb").read_text())
    text = json.dumps(off["cells"])
    assert "Not computed with these parameters" in text and "-p shuffles 3" in text
    assert '"output_type": "error"' not in json.dumps(off["cells"]).replace(": ", ": ")
    # the failing chapter is executed again on the next build; the others are up to date
    _, again = book.build(str(cfg_file), html=False, progress=False, root=tmp_path / "out",
                          results_root=tmp_path / "results")
    assert {o.chapter: o.status for o in again} == {"01_ok": "up to date", "02_fails": "failed",
                                                     "03_off": "up to date"}
    # and the command's exit code says a chapter failed
    from apem.cli import main

    monkeypatch.setattr(book, "REPO", tmp_path / "out")
    assert main(["book", "--params", str(cfg_file), "--no-html", "--results", str(tmp_path / "results")]) == 1
