"""The GPU path, checked on the CPU: device-drawn per-step shuffles, host synchronisations per pass,
memory-capped automatic batches, TF32 off at every entry point.

There is no GPU here: the accelerator's code paths are switched on explicitly
(``PerStepShuffles(draw_on="device")``, :data:`apem.metric.forward.DRAW_ON`),
host synchronisations are counted by a dispatch mode that flags the operations
that synchronise on CUDA, and memory readings are faked. The tests that need
CUDA (``torch.cuda.set_sync_debug_mode``, a real memory probe) skip without it.
"""

import collections
import json
import sys
import traceback
import warnings
import weakref
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from apem import metric, numerics
from apem.metric import evaluate
from apem.metric import forward
from apem.metric.directions import keyed_permutations, permute, side_seed

GOLDEN = Path(__file__).parent / "data" / "searches_before_gpu_path.json"
pytestmark = pytest.mark.usefixtures("one_thread")  # hundreds of tiny passes; the golden numbers used 1 thread
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs on the GPU machine)")


def small_net(scale=1.0):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 36, 5))
    net = net.double().eval().requires_grad_(False)
    with torch.no_grad():
        net[0].weight.mul_(scale)
    return net


def problem():
    """3 images, 6 maps (one all zero) of a small tanh net whose epsilons lie around 400."""
    net = small_net(0.003)
    x = torch.rand(3, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    maps = torch.randint(0, 256, (6, 1, 6, 6), generator=torch.Generator().manual_seed(21)).double() / 255
    maps[4] = 0.0
    return net, x, maps, torch.tensor([0, 1, 2, 0, 1, 2])


# ----------------------------------------------------------------------------- the engines did not change


@pytest.mark.slow  # over 3 s: left out of `make test-fast`
def test_every_mode_gives_the_pre_change_numbers_bit_for_bit():
    """eps, censoring, undefined, reasons and every forward count of thesis / linear / bisect, fixed and per-step
    shuffles, two bounds and batch sizes, bisect with hints: as the engines gave them before the host
    synchronisations were taken out of their passes (recorded then in ``tests/data``)."""
    want = json.loads(GOLDEN.read_text())
    net, x, maps, ii = problem()
    got = {}
    for mode, smode in (("thesis", "fixed"), ("thesis", "per_step"), ("linear", "fixed"), ("linear", "per_step"),
                        ("bisect", "fixed")):
        for bound, bs in ((3000, None), (400, 5)):
            r = metric.evaluate_maps(net, x, maps, image_index=ii, seeds=torch.arange(30, 36), mode=mode, shuffles=3,
                                     shuffle_mode=smode, bound=bound, block=8, batch_size=bs, max_directions=12)
            got[f"{mode}/{smode}/{bound}"] = {k: v.tolist() for k, v in r.items()}
    hints = (torch.tensor([400, 0, 380, 1, 0, 410]), torch.tensor([390, 404, 2999, 0, 405, 1]))
    r = metric.evaluate_maps(net, x, maps, image_index=ii, mode="bisect", bound=3000, hints=hints)
    got["bisect/hints"] = {k: v.tolist() for k, v in r.items()}
    assert sorted(got) == sorted(want)
    for run in want:
        assert sorted(got[run]) == sorted(want[run]), run
        for k in want[run]:
            assert got[run][k] == want[run][k], (run, k)
    assert want["thesis/fixed/400"]["censored_minus"].count(True) >= 2  # the problem censors some items


# ----------------------------------------------------------------------------- keyed permutations


def test_keyed_permutations_are_permutations_and_depend_on_seed_and_draw_only():
    seeds = torch.tensor([5, 5, 6, 2**62 + 3, 0])
    draws = torch.tensor([0, 1, 0, 7, 2**40])
    P = keyed_permutations(seeds, draws, 1000)
    assert P.shape == (5, 1000) and P.dtype == torch.long
    for row in P:
        assert torch.equal(row.sort().values, torch.arange(1000))
    assert torch.equal(P, keyed_permutations(seeds, draws, 1000))  # deterministic
    for r in range(5):  # a row alone, or among other rows in another order, is the same row
        assert torch.equal(keyed_permutations(seeds[r : r + 1], draws[r : r + 1], 1000)[0], P[r])
    rev = keyed_permutations(seeds.flip(0), draws.flip(0), 1000)
    assert torch.equal(rev.flip(0), P)
    assert len({tuple(row.tolist()) for row in P}) == 5  # other seed or draw: another permutation


@pytest.mark.parametrize("n", [3, 4])
def test_keyed_permutations_are_uniform_over_all_n_factorial(n):
    """Every one of the n! permutations equally often, over draws of one seed and over seeds (chi-square,
    (n! - 1) degrees of freedom, against its 1e-6 quantile: 5 dof 35.9, 23 dof 65.0)."""
    R = 24_000
    k = 6 if n == 3 else 24
    limit = 35.9 if n == 3 else 65.0
    for seeds, draws in ((torch.full((R,), 7), torch.arange(R)), (torch.arange(R) * 1_000_003, torch.zeros(R).long())):
        c = collections.Counter(map(tuple, keyed_permutations(seeds, draws, n).tolist()))
        assert len(c) == k
        e = R / k
        assert sum((v - e) ** 2 / e for v in c.values()) < limit


def test_keyed_permutations_positions_are_uniform_and_consecutive_draws_unrelated():
    n, R = 50, 4000
    P = keyed_permutations(torch.full((R,), 11), torch.arange(R), n)
    # where value 0 lands: uniform over 50 positions (49 dof, 1e-6 quantile 104.7)
    counts = torch.bincount((P == 0).float().argmax(1), minlength=n).double()
    e = R / n
    assert float(((counts - e) ** 2 / e).sum()) < 104.7
    # consecutive draws: the rank correlation of their positions is that of independent permutations (sd 1/7)
    pos = P.argsort(1).double()
    a, b = pos[:-1] - pos[:-1].mean(1, keepdim=True), pos[1:] - pos[1:].mean(1, keepdim=True)
    rho = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    assert abs(float(rho.mean())) < 5 / (7 * R**0.5) and float(rho.std()) == pytest.approx(1 / 7, rel=0.1)


def test_occurrence_counts_earlier_rows_with_the_same_value():
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        idx = torch.randint(0, 5, (int(torch.randint(0, 30, (1,), generator=g)),), generator=g)
        seen = collections.Counter()
        want = []
        for v in idx.tolist():
            want.append(seen[v])
            seen[v] += 1
        assert forward.occurrence(idx).tolist() == want


# ----------------------------------------------------------------------------- per-step shuffles


def shuffle_inputs(G=4, S=3, n_img=2, size=5):
    g = torch.Generator().manual_seed(4)
    Rn = torch.rand(G, 3, size, size, generator=g, dtype=torch.float64)
    sign = torch.sign(torch.randn(n_img, 3, size, size, generator=g, dtype=torch.float64))
    img_of_item = torch.arange(G) % n_img
    seeds = torch.tensor([side_seed(s, k) for s in range(G // 2) for k in (False, True)])
    return Rn, sign, img_of_item, seeds, S


def request_sequence(G, S):
    """Requests (member, step) as an engine makes them, group by group, over 3 passes of varying company."""
    reqs = []
    for p, groups in enumerate(([0, 1, 2, 3], [1, 3], [0, 1, 3])):
        for grp in groups:
            for s in range(S):
                reqs.append((grp * S + s, 10 * p + grp))
    return torch.tensor(reqs)


def test_cpu_default_per_step_draws_are_the_cpu_generators_randperms():
    """Unchanged on the CPU: the k-th request of an item gets the k-th torch.randperm of its own generator."""
    Rn, sign, img_of_item, seeds, S = shuffle_inputs()
    ps = forward.PerStepShuffles(Rn, sign, img_of_item, seeds, S)
    assert ps.draw_on == "host"
    reqs = request_sequence(len(Rn), S)
    got = torch.cat([ps(reqs[a:b, 0], reqs[a:b, 1]) for a, b in ((0, 5), (5, 12), (12, len(reqs)))])
    gens = {i: torch.Generator().manual_seed(int(seeds[i])) for i in range(len(Rn))}
    n = Rn[0].numel()
    for row, (m, _) in zip(got, reqs.tolist()):
        i = m // S
        perm = torch.randperm(n, generator=gens[i])
        want = Rn[i].flatten()[perm].view_as(Rn[i]) * sign[img_of_item[i]]
        assert torch.equal(row, want)


def test_device_per_step_draws_do_not_depend_on_batching_or_company():
    Rn, sign, img_of_item, seeds, S = shuffle_inputs()
    G, n = len(Rn), Rn[0].numel()
    reqs = request_sequence(G, S)
    one = forward.PerStepShuffles(Rn, sign, img_of_item, seeds, S, draw_on="device")(reqs[:, 0], reqs[:, 1])
    # the slow twin: the k-th request of item i is keyed_permutations(seed_i, k)
    k = collections.Counter()
    for row, (m, _) in zip(one, reqs.tolist()):
        i = m // S
        perm = keyed_permutations(seeds[i : i + 1], torch.tensor([k[i]]), n)[0]
        k[i] += 1
        assert torch.equal(row, permute(Rn[i : i + 1], perm)[0] * sign[img_of_item[i]])
    # in sub-batches of every size (what Forward's batch_size does)
    for bs in (1, 2, 5, 7):
        ps = forward.PerStepShuffles(Rn, sign, img_of_item, seeds, S, draw_on="device")
        got = torch.cat([ps(reqs[a : a + bs, 0], reqs[a : a + bs, 1]) for a in range(0, len(reqs), bs)])
        assert torch.equal(got, one), bs
    # each item alone (as if no other item shared its batches)
    for i in range(G):
        mine = (reqs[:, 0] // S) == i
        ps = forward.PerStepShuffles(Rn[i : i + 1], sign, img_of_item[i : i + 1], seeds[i : i + 1], S, draw_on="device")
        alone = ps(reqs[mine, 0] - i * S, reqs[mine, 1])
        assert torch.equal(alone, one[mine]), i
    with pytest.raises(ValueError, match="draw_on"):
        forward.PerStepShuffles(Rn, sign, img_of_item, seeds, S, draw_on="gpu")


def keyed_thesis_loop(model, x, Rn, sign, seed, S, t, bound):
    """The thesis's per-step shuffled loop with the device's draws: S keyed permutations per tested sigma."""
    n, start, count = Rn.numel(), 0, 0
    for pace in (1000, 100, 10, 1):
        for sigma in range(start, bound, pace):
            perms = keyed_permutations(torch.full((S,), seed), torch.arange(count, count + S), n)
            d = torch.stack([Rn.flatten()[p].view_as(Rn) for p in perms]) * sign
            count += S
            with torch.no_grad():
                if (model(x + sigma * d).argmax(1) != t).any():
                    break
            start = sigma
    return start + 1, count


@pytest.mark.slow  # over 3 s: left out of `make test-fast`
def test_device_draws_through_evaluate_maps(monkeypatch):
    """With the accelerator's draws: thesis per-step epsilons equal the slow loop's, and neither mode depends on
    the batch size, the chunking or which other maps are in the call."""
    monkeypatch.setattr(forward, "DRAW_ON", "device")
    net, x, maps, ii = problem()
    seeds = torch.arange(30, 36)
    kw = dict(shuffles=3, shuffle_mode="per_step", bound=3000, block=8)
    a = metric.evaluate_maps(net, x, maps, image_index=ii, seeds=seeds, mode="thesis", **kw)
    from apem.metric.clean import loss_gradient

    g, _, t = loss_gradient(net, x)
    for i in (0, 3, 5):
        for k, key in ((0, "minus"), (1, "plus")):
            R = (maps[i] if k == 0 else 1 - maps[i]).expand(3, -1, -1)
            eps, count = keyed_thesis_loop(net, x[ii[i]][None], R / R.sum(), g[ii[i]].sign(),
                                           side_seed(int(seeds[i]), k), 3, int(t[ii[i]]), 3000)
            assert int(a[f"eps_shuffle_{key}"][i]) == eps and int(a[f"n_forward_shuffle_{key}"][i]) == count
    for mode in ("thesis", "linear"):
        full = a if mode == "thesis" else metric.evaluate_maps(net, x, maps, image_index=ii, seeds=seeds, mode=mode,
                                                               **kw)
        order = torch.tensor([5, 2, 0])
        part = metric.evaluate_maps(net, x, maps[order], image_index=ii[order], seeds=seeds[order], mode=mode,
                                    batch_size=3, max_directions=6, **kw)
        for k in ("eps_shuffle_minus", "eps_shuffle_plus", "censored_shuffle_minus", "n_forward_shuffle_plus"):
            assert torch.equal(part[k], full[k][order]), (mode, k)


# ----------------------------------------------------------------------------- host synchronisations


class SyncLint(TorchDispatchMode):
    """Counts the operations that synchronise with the host on CUDA, run on the CPU.

    Scalar reads (``item``, ``bool``, ``int``), ``nonzero``, boolean-mask indexing and writes,
    tensors made from Python data (a host-to-device copy), ``unique``, CPU ``randperm`` and
    ``tolist``. Counted only below a frame of ``files`` (the pass loops).
    """

    A = torch.ops.aten
    OPS = {A._local_scalar_dense.default, A.nonzero.default, A.masked_select.default, A.is_nonzero.default,
           A.lift_fresh.default, A.lift_fresh_copy.default, A.unique_consecutive.default, A._unique2.default,
           A.randperm.generator, A.randperm.default}
    INDEX = {A.index.Tensor, A.index_put_.default, A.index_put.default, A._index_put_impl_.default}

    def __init__(self, files):
        super().__init__()
        self.files, self.hits = files, collections.Counter()

    def _hit(self, what):
        frames = [f for f in traceback.extract_stack() if "/apem/" in f.filename]
        if any(f.filename.endswith(self.files) for f in frames):
            f = frames[-1]
            self.hits[(what, f"{Path(f.filename).name}:{f.lineno}")] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.OPS or (func in self.INDEX and any(i is not None and i.dtype == torch.bool for i in args[1])):
            self._hit(str(func))
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self._tolist = torch.Tensor.tolist
        lint = self

        def tolist(t):
            lint._hit("tolist")
            return lint._tolist(t)

        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)


def engine_syncs(monkeypatch, **kw):
    """(syncs inside the engines' calls, passes) of one evaluate_maps call."""
    passes = []
    run = evaluate.run_engine

    def counted(*a, **k):
        out = run(*a, **k)
        passes.append(out[3])
        return out

    monkeypatch.setattr(evaluate, "run_engine", counted)
    SE = sys.modules["apem.metric.search"]

    monkeypatch.setattr(SE, "run_engine", counted)
    net, x, maps, ii = problem()
    with SyncLint(("engines.py", "bisect.py")) as lint:
        metric.evaluate_maps(net, x, maps, image_index=ii, seeds=torch.arange(6), bound=3000, block=8, batch_size=64,
                             **kw)
    return lint.hits, sum(passes), len(passes)


@pytest.mark.parametrize("mode,smode,per_pass", [("thesis", "fixed", 1), ("linear", "fixed", 1), ("bisect", "fixed", 2),
                                                 ("thesis", "per_step", 1), ("linear", "per_step", 1)])
def test_engines_synchronise_at_most_once_or_twice_per_pass(monkeypatch, mode, smode, per_pass):
    """Counted on the CPU (:class:`SyncLint`): thesis and linear 1 per pass (the nonzero whose size ends the loop),
    bisect 2 (also its pairs); per-step shuffles drawn as on an accelerator add none. Per engine call at most 4
    more: the last, empty nonzero, thesis's pace table, bisect's slope (MarginInfo.slope: unique + 2 tolist)."""
    monkeypatch.setattr(forward, "DRAW_ON", "device")
    hits, passes, calls = engine_syncs(monkeypatch, mode=mode, shuffles=3, shuffle_mode=smode)
    total = sum(hits.values())
    assert passes >= 10
    assert total <= per_pass * passes + 4 * calls, (passes, calls, hits.most_common(8))
    assert not [h for h in hits if h[1].startswith(("forward.py", "directions.py"))], hits


@cuda
@pytest.mark.parametrize("mode,smode,per_pass",
                         [("thesis", "per_step", 1), ("linear", "per_step", 1), ("bisect", "fixed", 2)])
def test_cuda_synchronisations_per_pass(monkeypatch, mode, smode, per_pass):
    """On a CUDA device, torch's own sync debugger: at most ``per_pass`` per pass plus a few per engine call."""
    passes = []
    run = evaluate.run_engine

    def counted(*a, **k):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out = run(*a, **k)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        passes.append(out[3])
        return out

    SE = sys.modules["apem.metric.search"]

    monkeypatch.setattr(evaluate, "run_engine", counted)
    monkeypatch.setattr(SE, "run_engine", counted)
    net, x, maps, ii = problem()
    net, x = net.cuda(), x.cuda()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metric.evaluate_maps(net, x, maps, image_index=ii, seeds=torch.arange(6), bound=3000, block=8, mode=mode,
                             shuffles=3, shuffle_mode=smode)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    where = collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)
    assert sum(passes) >= 20
    assert len(syncs) <= per_pass * sum(passes) + 5 * len(passes), (sum(passes), where.most_common(8))


# ----------------------------------------------------------------------------- automatic batches and memory


def test_memory_cap_arithmetic():
    assert forward.memory_capped(256, 10 * 2**30, 20 * 2**20) == 256  # 0.5 * 10 GiB / 20 MiB = 256
    assert forward.memory_capped(256, 10 * 2**30, 21 * 2**20) == 243  # floor(5120 / 21)
    assert forward.memory_capped(256, 10 * 2**30, 21 * 2**20, fraction=0.25) == 121
    assert forward.memory_capped(128, 100, 10**9) == 1  # never below one
    assert forward.memory_capped(4, 10**12, 1) == 4  # never above the default


@pytest.fixture
def fake_cuda_memory(monkeypatch):
    """``available_memory`` and ``probe_bytes_per_image`` faked: 8 GiB available, 48 MiB per forward image and
    3x that per forward + backward image; every probe is logged."""
    probes = []

    def probe(model, device, kind, shape, dtype=None, n=forward.PROBE_IMAGES):
        probes.append((kind, tuple(shape)))
        return (48 if kind == "forward" else 144) * 2**20

    monkeypatch.setattr(forward, "available_memory", lambda device: 8 * 2**30)
    monkeypatch.setattr(forward, "probe_bytes_per_image", probe)
    monkeypatch.setattr(forward, "_MEMORY_BATCH", weakref.WeakKeyDictionary())
    return probes


def test_automatic_batches_are_capped_by_device_memory(fake_cuda_memory):
    net = small_net()
    # 0.5 * 8 GiB / 48 MiB = 85 < 256; / 144 MiB = 28 < 128
    assert forward.resolve_batch_size(None, "cuda", model=net, shape=(3, 6, 6)) == 85
    assert forward.resolve_method_batch(None, "cuda", model=net) == 28
    assert forward.resolve_batch_size(None, "cuda", model=net, shape=(3, 6, 6), kind="backward") == 28
    assert fake_cuda_memory == [("forward", (3, 6, 6)), ("backward", (3, 224, 224)), ("backward", (3, 6, 6))]
    assert forward.resolve_batch_size(None, "cuda", model=net, shape=(3, 6, 6)) == 85  # cached: no new probe
    assert len(fake_cuda_memory) == 3
    # unchanged: the CPU, explicit sizes, and calls without a model (the old signatures)
    assert forward.resolve_batch_size(None, "cpu", model=net, shape=(3, 6, 6)) == forward.AUTO_BATCH["cpu"]
    assert forward.resolve_method_batch(None, "cpu", model=net) == 16
    assert forward.resolve_batch_size(300, "cuda", model=net) == 300 and forward.resolve_method_batch(7, "cuda", model=net) == 7
    assert forward.resolve_batch_size(None, "cuda") == 256 and forward.resolve_method_batch(None, "cuda") == 128
    assert len(fake_cuda_memory) == 3
    from apem.config import Config

    cfg = Config()
    lm = SimpleNamespace(model=net, device=torch.device("cuda"))
    assert cfg.method_batch("cuda", lm) == 28 and cfg.method_batch("cuda") == 128 and cfg.method_batch("cpu", net) == 16
    assert cfg.replace(batch_size=64).method_batch("cuda", lm) == 64


def test_forward_and_clean_pass_ask_for_the_memory_cap(monkeypatch):
    calls = []

    def spy(default, model, device, kind="forward", shape=forward.MODEL_INPUT):
        calls.append((default, model, torch.device(device).type, kind, tuple(shape)))
        return 1  # below every automatic default: the cap is what the caller uses

    monkeypatch.setattr(forward, "memory_batch", spy)
    net, x, maps, ii = problem()
    f = forward.Forward(net, x, torch.zeros(3).long(), ii, forward.fixed_directions(torch.zeros(6, 3, 6, 6).double()))
    auto = forward.AUTO_BATCH["cpu"]
    assert f.batch_size == 1 and calls[-1] == (auto, net, "cpu", "forward", (3, 6, 6))
    metric.clean_pass(net, x)
    assert calls[-1] == (auto, net, "cpu", "backward", (3, 6, 6))


def test_the_direction_budget_is_256_on_the_cpu_and_by_memory_on_cuda(fake_cuda_memory):
    assert forward.direction_budget("cpu") == forward.MAX_DIRECTIONS["cpu"] == 256
    # 0.5 * 8 GiB over 5 x (3 x 224 x 224) float32 elements (3,010,560 bytes) = 1,426 directions
    assert forward.direction_budget("cuda") == (4 * 2**30) // (5 * 3 * 224 * 224 * 4) == 1426
    assert forward.direction_budget("cuda", (3, 224, 224), torch.float64) == 713
    assert forward.direction_budget("cuda", (3, 8, 8)) == forward.MAX_DIRECTIONS_ACCELERATOR  # capped


def test_evaluate_maps_holds_the_device_budget_of_directions_when_not_told(monkeypatch):
    """``max_directions=None``: the device's budget (256 on the CPU: 128 maps' minus and plus per group); the maps
    searched in groups of two give the epsilons of all six searched in the same passes."""
    asked, groups = [], []
    monkeypatch.setattr(evaluate, "direction_budget", lambda dev, shape, dtype: asked.append((dev.type, shape)) or 4)
    real = evaluate._plain_chunk
    monkeypatch.setattr(evaluate, "_plain_chunk", lambda model, x, maps, *a: groups.append(len(maps)) or real(model, x, maps, *a))
    net, x, maps, ii = problem()
    got = metric.evaluate_maps(net, x, maps, image_index=ii, bound=600, block=8)
    told = metric.evaluate_maps(net, x, maps, image_index=ii, bound=600, block=8, max_directions=256)
    assert asked == [("cpu", (3, 6, 6))] and groups == [2, 2, 2, 6]  # all six maps in the same passes: same numbers
    for k in ("eps_minus", "eps_plus", "censored_minus", "censored_plus", "n_forward"):
        assert torch.equal(got[k], told[k]), k


def test_a_gpu_chunk_takes_as_many_images_as_the_direction_budget_holds(monkeypatch):
    """``chunk_images``: ``chunk_size`` on the CPU; on CUDA multiples of it, by the direction budget, at most 256.

    That a chunk's size never changes a cell is ``test_cells``' "another chunk size" (chunks of 3 and of 2
    give the same table, bit for bit)."""
    from apem.config import Config
    from apem.runner import plan

    cfg = Config()  # 3 methods x 3 stages: 18 directions per image
    cpu, gpu = SimpleNamespace(device_type="cpu"), SimpleNamespace(device_type="cuda")
    assert plan.chunk_images(cfg, cpu) == cfg.chunk_size == 4
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for budget, images in ((1000, 52), (10**6, 256), (20, 4), (18 * 9, 8)):
        monkeypatch.setattr(forward, "direction_budget", lambda device, b=budget: b)
        assert plan.chunk_images(cfg, gpu) == images, budget
        assert plan.chunk_images(cfg.replace(chunk_size=32), gpu) == max(32, images // 32 * 32), budget
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a Ray driver for a GPU cluster: the cap
    assert plan.chunk_images(cfg, gpu) == plan.MAX_CHUNK_IMAGES_ACCELERATOR
    monkeypatch.setattr(plan, "CHUNK_IMAGES", 7)
    assert plan.chunk_images(cfg, cpu) == plan.chunk_images(cfg, gpu) == 7


@cuda
def test_a_gpu_chunk_of_many_images_gives_the_cells_of_small_chunks(tmp_path, sample_dir, monkeypatch):
    """On the device: one chunk of six images (its maps searched in the same passes) = three chunks of two."""
    from apem.config import Config
    from apem.run import Results, run
    from apem.runner import plan

    cfg = Config(name="gpu-chunks", pool=16, n_correct=4, n_misclassified=2, stages=(2, 3), shuffles=2,
                 methods={"gradient": {}, "smoothgrad": {"n": 2, "sigma": 0.2}}, search_bound=2001, chunk_size=2,
                 filter_images=0, device="cuda")
    tables = []
    for size in (2, None):
        monkeypatch.setattr(plan, "CHUNK_IMAGES", size)
        store = run(cfg, root=tmp_path / f"chunks-{size}", progress=False)
        assert store.plan.summary()["chunks_to_compute"] == (3 if size else 1)
        tables.append(Results(cfg, store).table)
    pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=True)


@cuda
def test_memory_probe_on_cuda():
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 32 * 32, 10)).cuda()
    fwd = forward.probe_bytes_per_image(net, "cuda", "forward", (3, 32, 32))
    bwd = forward.probe_bytes_per_image(net, "cuda", "backward", (3, 32, 32))
    assert 16 * 32 * 32 * 4 <= fwd < bwd  # at least the conv output; the backward keeps more
    assert 1 <= forward.memory_batch(256, net, "cuda", "forward", (3, 32, 32)) <= 256


# ----------------------------------------------------------------------------- TF32



def test_lrp_variants_study_runs_with_tf32_off(tf32_on, monkeypatch):
    from apem.studies import lrp_rules

    seen = []
    monkeypatch.setattr(lrp_rules, "cached_rows",
                        lambda res, study, compute, ids, **p: seen.append(numerics.tf32_flags()) or pd.DataFrame())
    res = SimpleNamespace(
        cfg=SimpleNamespace(stages=(3,), methods={"lrp_epsilon": {}}),
        table=pd.DataFrame({"image_id": ["a"], "method": ["gradient"], "stage": [3]}),
        images=pd.DataFrame({"image_id": ["a"], "group": ["correct"]}),
    )
    lrp_rules.lrp_variants(res)
    assert len(seen) == len(lrp_rules.VARIANTS)  # one study per variant
    assert set(seen) == {(False, False)} and numerics.tf32_flags() == (True, True)


def test_apem_classify_runs_with_tf32_off(tf32_on, monkeypatch, capsys):
    import apem.data
    import apem.models
    from apem import cli

    seen = []

    def model(x):
        seen.append(numerics.tf32_flags())
        return torch.eye(3)[: len(x)]

    images = type("Images", (), {"__len__": lambda self: 2, "layout": "flat", "root": "here"})()
    monkeypatch.setattr(apem.data, "load_image_set", lambda data, gt: images)
    batch = ([0, 1], torch.zeros(2, 3), torch.tensor([0, 2]))
    monkeypatch.setattr(apem.data, "iter_batches", lambda imgs, tf, bs: iter([batch]))
    monkeypatch.setattr(apem.models, "load_model", lambda *a: SimpleNamespace(
        model=model, device=torch.device("cpu"), name="m", preset="standard", weights="w", transform=None))
    args = cli.build_parser().parse_args(["classify", "--device", "cpu"])
    assert args.func(args) == 0
    assert seen == [(False, False)] and numerics.tf32_flags() == (True, True)
    assert "top-1 accuracy: 0.5000 (1/2)" in capsys.readouterr().out
