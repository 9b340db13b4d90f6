"""The runner on a Ray cluster (apem.runner.distributed): the serial run's table, bit for bit, through faults.

One local Ray (2 CPUs) for the whole module; every run pins one thread, so the serial
reference and each Ray worker compute in the same numeric environment. The smoke
parameters, cut to 4 images in 4 chunks of one (two methods, one stage, one shuffle).
"""

import json
import os
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
import torch

ray = pytest.importorskip("ray")

from apem.runner import distributed  # noqa: E402
from apem.runner.chunks import ChunkFailure  # noqa: E402
from apem.config import load_config  # noqa: E402
from apem.run import Results, _Interrupt, run  # noqa: E402
from apem.runner.cells import Cells  # noqa: E402
from apem.store import Store  # noqa: E402

SMALL = dict(pool=16, n_correct=3, n_misclassified=1, chunk_size=1, filter_images=0, stages=[3], shuffles=1,
             methods={"gradient": {}, "smoothgrad": {"n": 2, "sigma": 0.2}})
N_CHUNKS = 4


def small(name: str):
    return load_config("smoke", name=name, **SMALL)


@pytest.fixture(scope="module")
def cluster():
    """A local Ray with 2 CPUs; its GCS address (for a second driver process)."""
    import logging

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 << 20, logging_level=logging.WARNING)
    print(f"\nlocal Ray started in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("ray")  # one root: the pool's predictions are classified once


@pytest.fixture(scope="module")
def reference(sample_dir, root):
    """The serial run: its table and every stored map."""
    store = run(small("ref"), progress=False, root=root, threads=1)
    return Results(store.cfg, store).table, _maps(Results(store.cfg, store))


def _maps(res) -> dict:
    return {(m, s): res.maps(res.images.image_id, m, s) for m in res.cfg.methods for s in res.cfg.stages}


@pytest.fixture
def fresh(root, tmp_path):
    """A store root with no cell (the same cells would be reused, not computed): only the pool's predictions."""
    new = tmp_path / "fresh"
    shutil.copytree(root / "_predictions", new / "_predictions")
    return new


def stored_images(root) -> set:
    """The images whose maps the cells of ``root`` hold."""
    cells = Cells(root)
    return {k for b in cells.batches() if b.startswith("maps/")
            for k in json.loads((cells.dir / b / "manifest.json").read_text())["images"]}


def same_as_reference(store, reference):
    table, maps = reference
    res = Results(store.cfg, store)
    pd.testing.assert_frame_equal(res.table, table, check_exact=True)
    for k, m in _maps(res).items():
        assert torch.equal(m, maps[k]), k


def test_a_ray_run_equals_the_serial_run_bit_for_bit(cluster, reference, fresh):
    store = run(small("eq"), progress=False, root=fresh, threads=1, ray="local", workers=2)
    assert sorted(store.computed) == list(range(N_CHUNKS))
    assert all("pid" in w for w in store.chunk_workers.values())
    same_as_reference(store, reference)


def test_a_worker_killed_mid_chunk_has_its_chunk_redone_elsewhere(cluster, reference, fresh, tmp_path, monkeypatch):
    hold = tmp_path / "hold"
    monkeypatch.setattr(distributed, "TEST_HOOKS", {"hold_first_chunk": str(hold)})
    killed = []

    def kill_the_held_worker():
        pid_file = Path(f"{hold}.pid")
        deadline = time.time() + 240
        while time.time() < deadline and not (pid_file.exists() and pid_file.read_text()):
            time.sleep(0.05)
        if pid_file.exists():
            killed.append(int(pid_file.read_text()))
            os.kill(killed[0], signal.SIGKILL)
        hold.touch()  # releases a held worker if the kill did not happen

    t = threading.Thread(target=kill_the_held_worker)
    t.start()
    try:
        store = run(small("killed"), progress=False, root=fresh, threads=1, ray="local", workers=2)
    finally:
        hold.touch()
        t.join()
    assert killed, "no worker took a chunk"
    assert f"pid {killed[0]} " not in " ".join(store.chunk_workers.values())  # its chunk was finished by another
    assert sorted(store.computed) == list(range(N_CHUNKS))
    same_as_reference(store, reference)


def test_a_ray_run_resumes_a_serial_run(cluster, reference, fresh):
    cfg = small("resume")
    with pytest.raises(_Interrupt):
        run(cfg, progress=False, root=fresh, threads=1, fail_after_chunks=2)
    store = run(cfg, progress=False, root=fresh, threads=1, ray="local")
    assert store.plan.images_to_compute == 2  # the serial run's chunks were not recomputed
    same_as_reference(store, reference)
    # the other way round (a serial run finishing a Ray run): the failing chunk's test below


def test_a_ray_run_of_more_images_reuses_the_serial_cells_and_equals_a_fresh_store(cluster, reference, fresh):
    """A configuration change on Ray: more images than a serial run computed; only the new ones are computed."""
    run(load_config("smoke", name="fewer", **dict(SMALL, n_correct=1)), progress=False, root=fresh, threads=1)
    store = run(small("more"), progress=False, root=fresh, threads=1, ray="local")
    assert store.plan.images_to_compute == 2 and store.plan.summary()["maps_reused"] == 2 * len(SMALL["methods"])
    same_as_reference(store, reference)


RAY_CHANGES = {  # the kinds of change of tests/test_cells.py, from SMALL
    "more images": dict(n_correct=4),
    "a subset of methods": dict(methods={"gradient": {}}),
    "another chunk size": dict(chunk_size=2),
    "more shuffles": dict(shuffles=2),
    "another search mode": dict(search_mode="thesis", shuffles=0),
    "a new method": dict(methods={**SMALL["methods"], "lrp_epsilon": {}}),
    "the baseline on both groups": dict(shuffle_groups=["correct", "misclassified"]),
}


@pytest.fixture(scope="module")
def base_cells(root, tmp_path_factory, sample_dir):
    """A root holding SMALL's cells, computed serially once."""
    base = tmp_path_factory.mktemp("ray-base")
    shutil.copytree(root / "_predictions", base / "_predictions")
    run(small("base"), progress=False, root=base, threads=1)
    return base


@pytest.mark.parametrize("change", list(RAY_CHANGES))
def test_each_kind_of_change_on_ray_reuses_the_cells_and_equals_the_serial_table(change, cluster, base_cells,
                                                                                tmp_path):
    """With tests/test_cells.py (a serial run that reuses cells equals a fresh store), bit for bit on Ray too."""
    cfg = load_config("smoke", name="changed", **dict(SMALL, **RAY_CHANGES[change]))
    on_ray, serial = tmp_path / "ray", tmp_path / "serial"
    shutil.copytree(base_cells, on_ray)
    shutil.copytree(base_cells, serial)
    a = run(cfg, progress=False, root=on_ray, threads=1, ray="local")
    b = run(cfg, progress=False, root=serial, threads=1)
    assert a.plan.summary() == b.plan.summary()
    assert all("pid" in w for w in a.chunk_workers.values()) and len(a.chunk_workers) == len(a.plan.chunks)
    ra, rb = Results(cfg, a), Results(cfg, b)
    pd.testing.assert_frame_equal(ra.table, rb.table, check_exact=True)
    for k, m in _maps(ra).items():
        assert torch.equal(m, _maps(rb)[k]), k


def _ray_processes(session: str) -> list[int]:
    """The processes whose command line names Ray session ``session``."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if session.encode() in (p / "cmdline").read_bytes():
                    out.append(int(p.name))
            except OSError:
                pass
    return out


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
@pytest.mark.timeout(300)
def test_kill_9_of_a_driver_with_its_own_local_ray_leaves_no_ray_process(reference, fresh, tmp_path):
    cfg_file = tmp_path / "reaped.yaml"
    cfg_file.write_text(small("reaped").to_yaml())
    sessions = lambda: {p.name for p in Path("/tmp/ray").glob("session_2*")}  # noqa: E731
    before = sessions()
    proc = subprocess.Popen([sys.executable, "-m", "apem", "run", str(cfg_file), "--ray", "--results", str(fresh),
                             "--threads", "1", "--no-progress"], env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not stored_images(fresh):
        time.sleep(0.05)
    assert proc.poll() is None, "the driver ended before it could be killed"
    new = sessions() - before
    assert len(new) == 1, new  # the driver's own local Ray
    session = new.pop()
    assert _ray_processes(session), "no process of the driver's Ray session was found to begin with"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and _ray_processes(session):
        time.sleep(0.5)
    assert _ray_processes(session) == []


def test_a_driver_killed_with_kill_9_resumes_without_recomputing(cluster, reference, fresh, tmp_path):
    cfg = small("driver")
    cfg_file = tmp_path / "driver.yaml"
    cfg_file.write_text(cfg.to_yaml())
    script = textwrap.dedent(f"""
        from apem.config import Config
        from apem.run import run
        run(Config.from_yaml({str(cfg_file)!r}), progress=False, root={str(fresh)!r}, threads=1, ray={cluster!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())
    store = Store(cfg, fresh)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not stored_images(fresh):
        time.sleep(0.05)
    assert proc.poll() is None, "the driver ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored = stored_images(fresh)
    assert 0 < len(stored) < N_CHUNKS and store.read_frame("results.parquet") is None
    cells = Cells(fresh)
    stamps = {b: (cells.dir / b / "manifest.json").stat().st_mtime_ns for b in cells.batches()}
    resumed = run(cfg, progress=False, root=fresh, threads=1, ray="local")
    # an image whose chunk was cut short keeps the cells it wrote and computes the rest
    assert resumed.plan.summary()["maps_reused"] > 0
    assert {b: (cells.dir / b / "manifest.json").stat().st_mtime_ns for b in stamps} == stamps
    same_as_reference(resumed, reference)


@pytest.mark.timeout(400)
def test_a_chunk_failing_every_time_is_named_the_run_ends_and_a_serial_run_finishes_it(cluster, reference, fresh,
                                                                                        monkeypatch):
    """Chunk 1 fails on every worker; chunk 2's image cannot be read (on the driver, which decodes)."""
    from apem.data import DataError

    cfg = small("failing")
    monkeypatch.setattr(distributed, "TEST_HOOKS", {"fail_chunks": [1]})
    real_decode = distributed.decode

    def decode(images, transform, ch):
        if ch.index == 2:
            raise DataError(f"cannot read image {ch.part.image_id[0]}.JPEG: truncated (test)")
        return real_decode(images, transform, ch)

    monkeypatch.setattr(distributed, "decode", decode)
    with pytest.raises(ChunkFailure) as err:
        run(cfg, progress=False, root=fresh, threads=1, ray="local")
    store = Store(cfg, fresh)
    sel = store.read_frame("images.parquet")
    ids = sel.image_id
    message = str(err.value)
    assert message.startswith("2 chunk(s) failed and were given up") and "\n" not in message
    assert f"chunk 1, images {ids[1]}: RuntimeError: chunk 1 fails on purpose" in message
    assert f"chunk 2, images {ids[2]}: DataError: cannot read image {ids[2]}.JPEG" in message
    assert stored_images(fresh) == {sel.image_key[0], sel.image_key[3]}
    assert store.read_frame("results.parquet") is None  # no partial table
    monkeypatch.undo()
    store = run(cfg, progress=False, root=fresh, threads=1)  # serial: resumes what the Ray run stored
    assert store.plan.images_to_compute == 2
    same_as_reference(store, reference)


@pytest.mark.timeout(300)
def test_a_worker_in_another_numeric_environment_is_refused(cluster, reference, fresh, monkeypatch):
    monkeypatch.setattr(distributed, "TEST_HOOKS", {"threads_offset": 1})  # workers would compute with 2 threads
    with pytest.raises(distributed.ClusterError, match=r"refused: it computes under .*threads 2 \(store: 1\)"):
        run(small("refused"), progress=False, root=fresh, threads=1, ray="local")
    assert stored_images(fresh) == set()


# ----------------------------------------------------------------------------- no cluster needed


def test_bad_addresses_are_one_line_errors(tmp_path, capsys, sample_dir):
    from apem.cli import main

    for bad in ("not an address", "host", "http://x:1"):
        with pytest.raises(distributed.ClusterError, match="expected nothing"):
            distributed.check_address(bad)
    assert distributed.check_address("10.0.0.1:6379") == "10.0.0.1:6379"
    assert distributed.check_address("ray://head:10001") == "ray://head:10001"
    t0 = time.perf_counter()
    with pytest.raises(distributed.ClusterError, match="no Ray cluster answers at 127.0.0.1:1"):
        distributed._reachable("127.0.0.1:1")
    assert time.perf_counter() - t0 < 10  # not Ray's own two minutes of retries
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(small("cli").to_yaml())
    assert main(["run", str(cfg_file), "--ray", "two words", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("apem: error: --ray 'two words'") and err.count("\n") == 1


def test_apem_runs_without_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails from here on
    with pytest.raises(distributed.ClusterError, match=r"pip install 'ray=="):
        distributed._ray()
    code = "import sys; sys.modules['ray'] = None; import apem.run, apem.cli, apem.book; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_the_ray_flag_of_run_table_and_book(monkeypatch, tmp_path, sample_dir):
    from apem import book
    from apem.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["run", "smoke"]).ray is None
    assert parse(["run", "smoke", "--ray"]).ray == "local"
    assert parse(["table", "smoke", "--ray", "auto"]).ray == "auto"
    args = parse(["book", "--params", "smoke", "--ray", "head:6379", "--no-html"])
    assert args.ray == "head:6379"
    import apem.run

    seen = {}
    monkeypatch.setattr(apem.run, "run", lambda cfg, **kw: seen.update(kw))
    ch3 = book.find_chapter(3)  # a chapter that reads the results, so the book runs the configuration
    monkeypatch.setattr(book, "chapters", lambda: [ch3])
    monkeypatch.setattr(book, "execute_chapter", lambda nb, *a, **k: book.ChapterOutcome(nb.stem, "executed"))
    assert args.func(args) == 0
    assert seen["ray"] == "head:6379"


def test_a_worker_is_refused_for_any_difference_in_its_environment_or_code():
    from apem.numerics import NumericEnv

    gpu = NumericEnv(torch="2.14.1", device_type="cuda", device_name="NVIDIA H100", threads=2)
    code = distributed.code_digest()

    def info(env, **kw):
        return dict(dict(pid=7, host="node", env=env.record(), code=code, error=None), **kw)

    assert distributed._refusal(info(gpu), gpu, code) is None
    assert distributed._refusal(info(gpu.__class__(**{**gpu.record(), "threads": 8})), gpu, code) is None  # not on CUDA
    for field, value in (("device_name", "NVIDIA A100"), ("torch", "2.13.0"), ("tf32_matmul", True), ("dtype", "bfloat16"),
                         ("device_type", "cpu")):
        why = distributed._refusal(info(NumericEnv(**{**gpu.record(), field: value})), gpu, code)
        assert why is not None and f"{value!r} (store:" in why, (field, why)
    assert "other apem code" in distributed._refusal(info(gpu, code="0" * 12), gpu, code)
    assert "cannot load the model" in distributed._refusal(info(gpu, error="WeightsError: no file"), gpu, code)
    assert distributed._cause(ValueError("a\n  b")) == "ValueError: a b"
