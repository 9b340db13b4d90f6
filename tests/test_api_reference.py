"""The API reference (book/api/*.md): its pages, the modules they document, and the links the chapters make to it.

Fast and without a book build: the built HTML (API pages, viewcode's ``_modules/``) is checked by
tests/test_book.py on the smoke book.
"""

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest
import yaml

import apem
from apem.book.apidoc import PAGES, documented_name, skip_member

REPO = Path(__file__).resolve().parents[1]
API = REPO / "book" / "api"
_AUTOMODULE = re.compile(r"^\.\. automodule:: (\S+)", re.M)
_ROLE = re.compile(r"\{py:(func|class|meth|mod|data|attr|obj|exc)\}`([^`]+)`")

DOCUMENTED = [m for mods in PAGES.values() for m in mods]


def _toc_files() -> list[str]:
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    return [c["file"] for part in toc.get("parts", []) for c in part.get("chapters", [])]


def test_each_api_page_documents_its_modules_and_is_in_the_toc():
    files = _toc_files()
    assert "book/api/index" in files
    for page, modules in PAGES.items():
        assert f"book/api/{page}" in files, f"book/api/{page}.md is not in _toc.yml"
        assert _AUTOMODULE.findall((API / f"{page}.md").read_text()) == modules, page
    pages = {p.stem for p in API.glob("*.md")} - {"index"}
    assert pages == set(PAGES), f"pages without an entry in apem.book.apidoc.PAGES: {pages - set(PAGES)}"
    assert len(DOCUMENTED) == len(set(DOCUMENTED)), "a module is documented twice"


@pytest.mark.parametrize("module", DOCUMENTED)
def test_every_documented_module_imports(module):
    importlib.import_module(module)


def test_every_module_of_apem_is_in_the_reference():
    found = {m.name for m in pkgutil.walk_packages(apem.__path__, "apem.")} - {"apem.__main__"}
    assert not found - set(DOCUMENTED), f"not in the API reference: {sorted(found - set(DOCUMENTED))}"


def _public(module: str):
    mod = importlib.import_module(module)
    for name, obj in vars(mod).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module:
            continue
        if inspect.isfunction(obj):
            yield f"{module}.{name}", obj
        elif inspect.isclass(obj):
            yield f"{module}.{name}", obj
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and inspect.isfunction(member):
                    yield f"{module}.{name}.{attr}", getattr(obj, attr)


@pytest.mark.parametrize("package", ["apem.stats", "apem.correlation", "apem.claims", "apem.metric"])
def test_every_public_function_has_a_docstring(package):
    modules = [package]
    mod = importlib.import_module(package)
    if hasattr(mod, "__path__"):
        modules += [m.name for m in pkgutil.walk_packages(mod.__path__, f"{package}.")]
    bare = [name for m in modules for name, obj in _public(m) if not (inspect.getdoc(obj) or "").strip()]
    assert not bare, f"no docstring (the API reference would show a bare signature): {bare}"


def resolve(target: str):
    """The object a dotted name names (the longest importable module, then attributes), or raise."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(target)


def _attr_documented(module: str, name: str) -> bool:
    """A module constant shows in the reference only with a ``#:`` comment (or a docstring after it)."""
    from sphinx.pycode import ModuleAnalyzer

    return ("", name) in ModuleAnalyzer.for_module(module).find_attr_docs()


def documented(target: str) -> bool:
    """Whether the API reference describes ``target`` under exactly that name (so a role links it)."""
    if target in DOCUMENTED:
        return True  # a module (apem.metric.directions: the module, where its function is described too)
    module = max((m for m in DOCUMENTED if target.startswith(m + ".")), key=len, default=None)
    if module is None:
        return False
    name, *rest = target[len(module) + 1:].split(".")
    mod = importlib.import_module(module)
    obj = getattr(mod, name)
    if skip_member(module, name, obj):
        return False
    if hasattr(mod, "__all__"):
        listed = name in mod.__all__
    else:
        listed = getattr(obj, "__module__", module) == module
    if not listed:
        return False
    if callable(obj):
        ok = bool(inspect.getdoc(obj))
    else:
        ok = _attr_documented(module, name)
    for attr in rest:  # a method or attribute of a documented class
        obj = getattr(obj, attr)
        ok = ok and not attr.startswith("_") and bool(inspect.getdoc(obj))
    return ok


def _roles():
    sources = [*sorted((REPO / "notebooks").glob("*.md")), *sorted((REPO / "book").glob("*.md")),
               *sorted(API.glob("*.md"))]
    for p in sources:
        for kind, text in _ROLE.findall(p.read_text()):
            target = text.rsplit("<", 1)[1].rstrip(">").strip() if text.endswith(">") else text
            yield p.relative_to(REPO), kind, target.lstrip("~!")


def test_every_py_role_names_an_object_that_exists_and_apem_ones_are_in_the_reference():
    """``{py:func}`apem.stats.summary_table``` in a chapter: the name imports, and the reference describes it."""
    roles = list(_roles())
    assert roles, "no page links the API reference"
    missing, undocumented = [], []
    for page, kind, target in roles:
        try:
            resolve(target)
        except (ImportError, AttributeError):
            missing.append(f"{page}: {{py:{kind}}}`{target}`")
            continue
        if target.split(".")[0] == "apem" and not documented(documented_name(target)):
            undocumented.append(f"{page}: {{py:{kind}}}`{target}`")
    assert not missing, f"roles naming nothing: {missing}"
    assert not undocumented, f"roles naming an object the API reference does not describe (no link): {undocumented}"


def test_a_package_export_is_described_once():
    """``apem.claims.Paired`` is described under the package's name and left out of ``apem.claims.kinds``."""
    from apem.claims import Paired
    from apem.metric import directions

    assert documented("apem.claims.Paired") and not documented("apem.claims.kinds.Paired")
    assert skip_member("apem.claims.kinds", "Paired", Paired)
    # a function that shares its name with a module of the package is described in that module
    assert skip_member("apem.metric", "directions", directions)
    assert not skip_member("apem.metric.directions", "directions", directions)
    assert documented("apem.metric.directions.directions")
    # a link by the defining module's name reaches the package's description (apidoc's missing-reference handler)
    assert documented_name("apem.claims.kinds.Paired") == "apem.claims.Paired"
    assert documented_name("apem.claims.kinds.Paired.rule") == "apem.claims.Paired.rule"
    assert documented_name("apem.metric.directions.directions") == "apem.metric.directions.directions"
    assert documented_name("apem.stats.summary_table") == "apem.stats.summary_table"
