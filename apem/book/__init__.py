"""Build the book: notebooks -> papermill -> ``book/chapters/*.ipynb`` -> Jupyter Book HTML.

Each chapter is a jupytext text notebook ``notebooks/NN_slug.md`` with a cell
tagged ``parameters`` holding ``params = "default"`` and ``overrides = {}``.
``apem book`` executes each chapter headlessly with papermill, injecting the
parameter set's name and any ``-p KEY VALUE`` overrides, writes the executed
notebook to ``book/chapters/``, and then runs ``jupyter-book build`` with
execution off (``_config.yml``), so the HTML shows exactly the executed outputs.

A chapter is re-executed only when stale: its fingerprint (the notebook text,
the ``apem`` package's source, the configuration's identity and the overrides)
is stored in the executed notebook's metadata and compared on the next build.

The build keeps going. A chapter that fails is reported (chapter, cell, error)
and rendered as a page that says it failed and why, above the cells that ran; a
chapter whose study the parameters switch off (it calls
:func:`apem.book.display.require`) renders "Not computed with these parameters"; the
other chapters and the HTML are built, and ``apem book`` exits non-zero when any
chapter failed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from apem.book.params import (  # noqa: F401  (re-exported: apem.book is where callers look for them)
    CONFIG_PARAMS, ChapterParam, chapter_parameters, describe_parameters, split_params,
)
from apem.book.noise import noise  # noqa: F401  (re-exported: build() and the tests call apem.book.noise)
from apem.config import REPO, load_config

NOTEBOOKS = REPO / "notebooks"
STATIC = REPO / "book" / "_static"
MATHJAX_DIR = STATIC / "mathjax"


class BookError(RuntimeError):
    """A chapter failed to execute or the HTML could not be built."""


def chapters() -> list[Path]:
    """The chapter notebooks, in order of their number prefix."""
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.md"))


def needs_results(nb_path: Path) -> bool:
    """Whether the chapter reads the configuration's results (false where its front matter says
    ``apem_book: {needs_results: false}``, as chapter 0's does)."""
    import jupytext

    meta = jupytext.read(nb_path).metadata.get("apem_book", {})
    return bool(meta.get("needs_results", True))


def find_chapter(key: str | int) -> Path:
    key = str(key)
    for p in chapters():
        num = p.name.split("_", 1)[0]
        if key in (num, num.lstrip("0") or "0", p.stem, p.name):  # "00".lstrip("0") is "": chapter 0 is "0"
            return p
    raise BookError(f"no chapter {key!r}; chapters: {[p.stem for p in chapters()]}")


def _package_source_digest() -> str:
    h = hashlib.sha256()
    pkg = REPO / "apem"
    for p in sorted(pkg.rglob("*.py")):
        h.update(str(p.relative_to(pkg)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def fingerprint(nb_path: Path, params: str, overrides: dict, chapter_params: dict | None = None) -> str:
    cfg = load_config(params, **overrides)
    h = hashlib.sha256()
    h.update(nb_path.read_bytes())
    h.update(_package_source_digest().encode())
    h.update(cfg.identity_yaml().encode())
    h.update(json.dumps(overrides, sort_keys=True, default=str).encode())
    if chapter_params:
        h.update(json.dumps(chapter_params, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _stored_fingerprint(out: Path) -> str | None:
    if not out.exists():
        return None
    try:
        meta = json.loads(out.read_text()).get("metadata", {})
    except ValueError:
        return None
    return meta.get("apem", {}).get("fingerprint")


@dataclass
class ChapterOutcome:
    """What happened to one chapter in a build."""

    chapter: str
    status: str  # "executed", "up to date", "not computed", "failed"
    seconds: float = 0.0
    cell: int | None = None
    error: str = ""

    def line(self) -> str:
        if self.status == "failed":
            return f"{self.chapter}: FAILED in cell {self.cell}: {self.error}"
        if self.status == "not computed":
            return f"{self.chapter}: not computed with these parameters ({self.error})"
        return f"{self.chapter}: {self.status}" + (f" in {self.seconds:.0f} s" if self.status == "executed" else "")


NOT_COMPUTED = "NotComputed"  # the exception apem.book.display.require raises


def execute_chapter(nb_path: Path, params: str = "default", overrides: dict | None = None, force: bool = False,
                    root: Path | None = None, chapter_params: dict | None = None) -> ChapterOutcome:
    """Execute one chapter with papermill if stale; a failure becomes a page that says so.

    ``chapter_params``: values for parameters the chapter declares (:func:`chapter_parameters`).
    """
    import jupytext
    import nbformat
    import papermill as pm

    overrides = dict(overrides or {})
    chapter_params = dict(chapter_params or {})
    unknown = set(chapter_params) - set(chapter_parameters(nb_path))
    if unknown:
        raise BookError(f"chapter {nb_path.stem} declares no parameter {', '.join(sorted(unknown))}")
    out_dir = Path(root if root is not None else REPO) / "book" / "chapters"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{nb_path.stem}.ipynb"
    fp = fingerprint(nb_path, params, overrides, chapter_params)
    if not force and _stored_fingerprint(out) == fp:
        print(f"  {nb_path.stem}: up to date", flush=True)
        return ChapterOutcome(nb_path.stem, "up to date")
    nb = jupytext.read(nb_path)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src = out_dir / f".in-{nb_path.stem}.ipynb"
    tmp = out_dir / f".out-{nb_path.stem}.ipynb"
    nbformat.write(nb, src)
    t0 = time.perf_counter()
    print(f"  {nb_path.stem}: executing with params={params!r} overrides={overrides}"
          + (f" chapter parameters={chapter_params}" if chapter_params else ""), flush=True)
    outcome = ChapterOutcome(nb_path.stem, "executed")
    declared = _DeclaredParameters(set(CONFIG_PARAMS) | set(chapter_parameters(nb_path)))
    papermill_log = logging.getLogger("papermill")
    papermill_log.addFilter(declared)
    try:
        with _local_kernel() as kernel_config:
            pm.execute_notebook(
                str(src), str(tmp), parameters={"params": params, "overrides": overrides, **chapter_params},
                cwd=str(REPO), kernel_name="python3", progress_bar=False, request_save_on_cell_execute=False,
                config=kernel_config,
            )
    except pm.PapermillExecutionError as e:
        not_computed = e.ename == NOT_COMPUTED
        outcome = ChapterOutcome(nb_path.stem, "not computed" if not_computed else "failed", cell=e.exec_count,
                                 error=(e.evalue if not_computed else f"{e.ename}: {e.evalue}").strip())
    except Exception as e:  # the kernel died, papermill itself failed, ...
        outcome = ChapterOutcome(nb_path.stem, "failed", error=f"{type(e).__name__}: {' '.join(str(e).split())[:500]}")
    finally:
        papermill_log.removeFilter(declared)
        src.unlink(missing_ok=True)
    outcome.seconds = time.perf_counter() - t0
    done = nbformat.read(tmp, as_version=4) if tmp.exists() else nbformat.v4.new_notebook(cells=[])
    if outcome.status != "executed":
        _mark_page(done, outcome, nb_path)
    done.metadata["apem"] = {"fingerprint": fp if outcome.status != "failed" else None, "params": params,
                             "overrides": overrides, "chapter_params": chapter_params, "status": outcome.status,
                             "seconds": round(outcome.seconds, 1)}
    for line in noise(done):
        print(f"  {nb_path.stem}: noise on the page: {line}", flush=True)
    nbformat.write(done, tmp)
    os.replace(tmp, out)
    print(f"  {outcome.line()}", flush=True)
    return outcome


class _DeclaredParameters(logging.Filter):
    """Drops papermill's "Passed unknown parameter: NAME" for a NAME the chapter declares.

    Papermill reads the parameters cell with a regular expression that does not take PEP 604
    annotations (``clip: bool | None = None``), so it calls such a parameter unknown although it
    injects it like any other. apem reads the cell itself (:func:`chapter_parameters`) and refuses a
    name the chapter does not declare before anything runs; a truly unknown name never gets here.
    """

    PREFIX = "Passed unknown parameter: "

    def __init__(self, names):
        super().__init__()
        self.names = set(names)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith(self.PREFIX) and msg[len(self.PREFIX):].strip() in self.names)


@contextlib.contextmanager
def _local_kernel():
    """The kernel's traitlets config: IPC transport (Unix sockets in a private temporary folder).

    The chapters' kernels run on this machine, so they need no TCP port; over TCP ipykernel warns
    on the terminal that its traffic is not encrypted. Unix sockets are reachable only through the
    folder (mode 0700). Where they are not available (Windows) or the socket path would be too
    long, the default (TCP) stays.
    """
    import tempfile

    from traitlets.config import Config

    config = Config()
    if os.name == "nt":
        yield config
        return
    with tempfile.TemporaryDirectory(prefix="apem-kernel-") as folder:
        ip = os.path.join(folder, "k")
        if len(ip) + 3 < 100:  # sockets are named <ip>-<n>; a Unix socket path holds at most 104-108 bytes
            config.KernelManager.transport = "ipc"
            config.KernelManager.ip = ip
        yield config


def _mark_page(nb, outcome: ChapterOutcome, nb_path: Path) -> None:
    """Turn a stopped notebook into a page that says why: the cells that ran, then the reason."""
    import nbformat

    cells = [c for c in nb.cells if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])]
    stop = next((i for i, c in enumerate(cells) if any(o.get("output_type") == "error" for o in c.get("outputs", []))),
                None)
    if stop is not None:
        cells = cells[: stop + 1]
        if outcome.status == "not computed":  # the reason is on the page already (require() displayed it)
            cells[stop].outputs = [o for o in cells[stop].outputs if o.get("output_type") != "error"]
    title = next((c for c in nb.cells if c.cell_type == "markdown" and c.source.lstrip().startswith("# ")), None)
    head = [title] if title is not None and title not in cells else []
    if outcome.status == "failed":
        where = f"in cell {outcome.cell}" if outcome.cell is not None else "before any cell finished"
        note = nbformat.v4.new_markdown_cell(
            f"```{{error}}\nThis chapter failed to execute with these parameters ({where}):\n"
            f"`{outcome.error[:500]}`.\n\nThe cells that ran are shown below, the failing one with its traceback. "
            f"Re-run it with `apem book --chapter {nb_path.name[:2]}` after fixing the cause.\n```")
        cells = head + [note] + cells
    nb.cells = cells


def ensure_mathjax() -> None:
    """Vendor MathJax 3 from the npm registry so the HTML needs no network."""
    if (MATHJAX_DIR / "tex-chtml.js").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise BookError("npm is needed once to vendor MathJax 3 for offline HTML (apt-get install npm)")
    cache = REPO / ".cache" / "npm"
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(cache), "mathjax@3"],
                   check=True, stdout=subprocess.DEVNULL)
    src = cache / "node_modules" / "mathjax" / "es5"
    if not (src / "tex-chtml.js").exists():
        raise BookError(f"MathJax install did not produce {src / 'tex-chtml.js'}")
    shutil.rmtree(MATHJAX_DIR, ignore_errors=True)
    shutil.copytree(src, MATHJAX_DIR)


def build_html(root: Path = REPO, quiet: bool = False) -> Path:
    ensure_mathjax()
    root = Path(root)
    if root != REPO:
        copy_sources(root)
    shutil.rmtree(root / "_build" / "html", ignore_errors=True)  # a failed build never leaves stale pages
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(root), "--path-output", str(root)]
    if quiet:
        cmd.append("--quiet")
    r = subprocess.run(cmd, cwd=root, capture_output=quiet, text=True)
    if r.returncode != 0:
        raise BookError("jupyter-book build failed" + (f":\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}" if quiet else ""))
    return root / "_build" / "html" / "index.html"


def copy_sources(dest: Path) -> None:
    """The book's hand-written sources in another folder (a separate build, e.g. the tests' smoke book)."""
    dest = Path(dest)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(REPO / name, dest / name)
    for p in (REPO / "book").rglob("*"):
        rel = p.relative_to(REPO)
        if p.is_file() and "chapters" not in rel.parts:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dest / rel)


_IPROGRESS = "ignore:IProgress not found"


def _with_filter(current: str | None, extra: str) -> str:
    """``PYTHONWARNINGS`` with one more filter (the user's own filters kept, and taking precedence)."""
    parts = [p for p in (current or "").split(",") if p]
    return ",".join(parts if extra in parts else [extra, *parts])


def build(params: str = "default", chapter_keys=None, overrides: dict | None = None, force: bool = False,
          html: bool = True, progress: bool = True, root: Path | None = None, threads: int | None = None,
          results_root: str | Path | None = None,
          chapter_params: dict[str, dict] | None = None,
          ray: str | None = None) -> tuple[Path | None, list[ChapterOutcome]]:
    """Run the configuration, execute stale chapters, build the HTML (under ``root``).

    Returns the index page (None without HTML) and each chapter's outcome; a failing
    chapter does not stop the others or the HTML.
    """
    from apem.run import run

    root = Path(root) if root is not None else REPO
    overrides = dict(overrides or {})
    cfg = load_config(params, **overrides)
    print(f"apem book: parameter set {params!r} -> configuration {cfg.name} ({cfg.digest()})", flush=True)
    t0 = time.perf_counter()
    # No progress bars inside the pages (the terminal shows the run's); tqdm.auto's "IProgress not
    # found" warning (no ipywidgets in a headless kernel) is filtered by its message, before any import.
    env = {"TQDM_DISABLE": "1", "PYTHONWARNINGS": _with_filter(os.environ.get("PYTHONWARNINGS"), _IPROGRESS)}
    if threads is not None:
        env["APEM_THREADS"] = str(threads)
    if results_root is not None:
        env["APEM_RESULTS"] = str(Path(results_root).resolve())
    # the heavy work, once, in the terminal (on a Ray cluster with `ray`: apem.runner.distributed)
    todo = [find_chapter(k) for k in chapter_keys] if chapter_keys else chapters()
    if any(needs_results(nb) for nb in todo):
        run(cfg, progress=progress, root=results_root, threads=threads, ray=ray)
        print(f"results ready in {time.perf_counter() - t0:.0f} s", flush=True)
    else:  # chapter 0 builds its models on the page: asking for it alone must not start the image run
        print("no chapter asked for reads the configuration's results: the run is skipped", flush=True)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the chapters' kernels inherit the store and thread count
    try:
        outcomes = [execute_chapter(nb, params, overrides, force, root, (chapter_params or {}).get(nb.stem))
                    for nb in todo]
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    failed = [o for o in outcomes if o.status == "failed"]
    if not html:
        return None, outcomes
    index = build_html(root)
    print(f"book built in {time.perf_counter() - t0:.0f} s: {index}")
    if failed:
        print(f"{len(failed)} chapter(s) failed; their pages say why:", flush=True)
        for o in failed:
            print(f"  {o.line()}", flush=True)
    return index, outcomes


def register(sub) -> None:
    from apem.cli import add_run_args

    p = sub.add_parser("book", help="execute the chapters with papermill and build the HTML book")
    p.add_argument("--params", default="default", help="parameter set in params/ or a YAML file (default: default)")
    p.add_argument("--chapter", action="append", help="only this chapter (number or name); repeatable")
    add_run_args(p)
    p.add_argument("--force", action="store_true", help="re-execute even up-to-date chapters")
    p.add_argument("--no-html", action="store_true", help="execute chapters only")
    p.add_argument("--list-params", action="store_true",
                   help="print the chapters' parameters (-p NAME VALUE) with their defaults, and exit")
    p.set_defaults(func=_cmd_book)


def _cmd_book(args) -> int:
    todo = [find_chapter(k) for k in args.chapter] if args.chapter else chapters()
    if args.list_params:
        print(describe_parameters(todo))
        return 0
    overrides, per_chapter = split_params(args.param, todo)
    _, outcomes = build(args.params, args.chapter, overrides, args.force, not args.no_html,
                        threads=args.threads, results_root=args.results, chapter_params=per_chapter, ray=args.ray)
    return 1 if any(o.status == "failed" for o in outcomes) else 0
