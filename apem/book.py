"""Build the book: notebooks -> papermill -> ``book/chapters/*.ipynb`` -> Jupyter Book HTML.

Each chapter is a jupytext text notebook ``notebooks/NN_slug.md`` with a cell
tagged ``parameters`` holding ``params = "default"`` and ``overrides = {}``.
``apem book`` executes each chapter headlessly with papermill, injecting the
parameter set's name and any ``-p KEY VALUE`` overrides, writes the executed
notebook to ``book/chapters/``, and then runs ``jupyter-book build`` with
execution off (``_config.yml``), so the HTML shows exactly the executed outputs.

A chapter is re-executed only when stale: its fingerprint (the notebook text,
the ``apem`` package's source, the parameter file and the overrides) is stored
in the executed notebook's metadata and compared on the next build. A chapter
whose execution fails stops the build, and the failing cell's error is shown.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from apem.config import PARAMS_DIR, REPO, load_config

NOTEBOOKS = REPO / "notebooks"
STATIC = REPO / "book" / "_static"
MATHJAX_DIR = STATIC / "mathjax"


class BookError(RuntimeError):
    """A chapter failed to execute or the HTML could not be built."""


def chapters() -> list[Path]:
    """The chapter notebooks, in order of their number prefix."""
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.md"))


def find_chapter(key: str | int) -> Path:
    key = str(key)
    for p in chapters():
        num = p.name.split("_", 1)[0]
        if key in (num, num.lstrip("0"), p.stem, p.name):
            return p
    raise BookError(f"no chapter {key!r}; chapters: {[p.stem for p in chapters()]}")


def _package_source_digest() -> str:
    h = hashlib.sha256()
    pkg = REPO / "apem"
    for p in sorted(pkg.rglob("*.py")):  # every module of every sub-package: a change anywhere re-executes
        h.update(p.relative_to(pkg).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def fingerprint(nb_path: Path, params: str, overrides: dict) -> str:
    cfg = load_config(params, **overrides)
    h = hashlib.sha256()
    h.update(nb_path.read_bytes())
    h.update(_package_source_digest().encode())
    h.update(cfg.to_yaml().encode())
    h.update(json.dumps(overrides, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _stored_fingerprint(out: Path) -> str | None:
    if not out.exists():
        return None
    try:
        meta = json.loads(out.read_text()).get("metadata", {})
    except ValueError:
        return None
    return meta.get("apem", {}).get("fingerprint")


def execute_chapter(nb_path: Path, params: str = "default", overrides: dict | None = None, force: bool = False,
                    root: Path = REPO) -> bool:
    """Execute one chapter with papermill if stale; True when it ran."""
    import jupytext
    import nbformat
    import papermill as pm

    overrides = dict(overrides or {})
    out_dir = Path(root) / "book" / "chapters"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{nb_path.stem}.ipynb"
    fp = fingerprint(nb_path, params, overrides)
    if not force and _stored_fingerprint(out) == fp:
        print(f"  {nb_path.stem}: up to date")
        return False
    nb = jupytext.read(nb_path)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src = out_dir / f".in-{nb_path.stem}.ipynb"
    tmp = out_dir / f".out-{nb_path.stem}.ipynb"
    nbformat.write(nb, src)
    t0 = time.perf_counter()
    print(f"  {nb_path.stem}: executing with params={params!r} overrides={overrides}", flush=True)
    try:
        pm.execute_notebook(
            str(src), str(tmp), parameters={"params": params, "overrides": overrides},
            cwd=str(REPO), kernel_name="python3", progress_bar=False, request_save_on_cell_execute=False,
        )
    except pm.PapermillExecutionError as e:
        raise BookError(
            f"chapter {nb_path.stem} failed in cell {e.exec_count}:\n{e.ename}: {e.evalue}\n"
            + "".join(e.traceback[-5:])
        ) from None
    finally:
        src.unlink(missing_ok=True)
    done = nbformat.read(tmp, as_version=4)
    done.metadata["apem"] = {"fingerprint": fp, "params": params, "overrides": overrides,
                             "seconds": round(time.perf_counter() - t0, 1)}
    nbformat.write(done, tmp)
    os.replace(tmp, out)
    print(f"  {nb_path.stem}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    return True


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


def build(params: str = "default", chapter_keys=None, overrides: dict | None = None, force: bool = False,
          html: bool = True, progress: bool = True, root: Path = REPO) -> Path | None:
    """Run the configuration, execute stale chapters, build the HTML (under ``root``)."""
    from apem.run import run

    cfg = load_config(params, **(overrides or {}))
    print(f"apem book: parameter set {params!r} -> configuration {cfg.name} ({cfg.digest()})", flush=True)
    t0 = time.perf_counter()
    run(cfg, progress=progress)  # the heavy work, once, with a progress bar here in the terminal
    print(f"results ready in {time.perf_counter() - t0:.0f} s", flush=True)
    todo = [find_chapter(k) for k in chapter_keys] if chapter_keys else chapters()
    for nb in todo:
        execute_chapter(nb, params, overrides, force, root)
    if not html:
        return None
    index = build_html(root)
    print(f"book built in {time.perf_counter() - t0:.0f} s: {index}")
    return index


def register(sub) -> None:
    p = sub.add_parser("book", help="execute the chapters with papermill and build the HTML book")
    p.add_argument("--params", default="default", help="parameter set in params/ (default: default)")
    p.add_argument("--chapter", action="append", help="only this chapter (number or name); repeatable")
    p.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="override a configuration field for this build, e.g. -p n_correct 200")
    p.add_argument("--force", action="store_true", help="re-execute even up-to-date chapters")
    p.add_argument("--no-html", action="store_true", help="execute chapters only")
    p.set_defaults(func=_cmd_book)


def _cmd_book(args) -> int:
    from apem.config import parse_value

    overrides = {k: parse_value(v) for k, v in args.param}
    try:
        build(args.params, args.chapter, overrides, args.force, not args.no_html)
    except BookError as e:
        print(f"apem book: {e}", file=sys.stderr)
        return 1
    return 0
