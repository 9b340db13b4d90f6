"""The book's API reference (``book/api/*.md``): one name per object, a Sphinx extension.

The reference pages document each package with ``.. automodule:: apem.claims
:members:``, which (the package having an ``__all__``) documents what the package
exports under the package's name -- ``apem.claims.Paired``, the name the chapters
import and link with ``{py:class}`apem.claims.Paired```. The same pages then document
the package's modules (``apem.claims.kinds``) for what they define and the package
does not export; this extension skips, in a module, every member its package
already exports, so no object is described twice (Sphinx would warn "duplicate
object description") and every link has one target; a link that names such an object by its module
(``apem.claims.kinds.Paired``) is resolved to it too. ``sphinx.ext.viewcode`` finds
an exported function's or class's source in the module that defines it, so its ``[source]``
link works under either name.

Loaded by ``_config.yml`` (``sphinx: local_extensions``).
"""

from __future__ import annotations

import importlib
import importlib.util

#: the modules the reference documents, by page (``book/api/<page>.md``); tests/test_api_reference.py
#: checks that each page names exactly these and that each imports
PAGES = {
    "scoring": ["apem.scoring"],
    "metric": ["apem.metric", "apem.metric.directions", "apem.metric.clean", "apem.metric.margin",
               "apem.metric.engines", "apem.metric.bisect", "apem.metric.spec", "apem.metric.forward",
               "apem.metric.search", "apem.metric.evaluate", "apem.metric.score", "apem.metric.monotonicity"],
    "explain": ["apem.explain", "apem.explain.base", "apem.explain.gradient", "apem.explain.lrp",
                "apem.explain.timm_canonizers", "apem.explain.captum_methods", "apem.explain.external"],
    "claims": ["apem.claims", "apem.claims.base", "apem.claims.kinds", "apem.claims.zero", "apem.claims.family"],
    "stats": ["apem.stats", "apem.correlation"],
    "experiment": ["apem.run", "apem.runner", "apem.runner.keys", "apem.runner.cells", "apem.runner.plan", "apem.runner.remaining",
                   "apem.runner.compute", "apem.runner.chunks", "apem.runner.distributed", "apem.runner.selection",
                   "apem.runner.housekeeping", "apem.store", "apem.config", "apem.data", "apem.models", "apem.maps",
                   "apem.filtering", "apem.seeds", "apem.cost", "apem.numerics", "apem.profile", "apem.alloc",
                   "apem.cli"],
    "studies": ["apem.studies", "apem.studies.common", "apem.studies.search_modes", "apem.studies.lrp_rules",
                "apem.studies.bounds",
                "apem.studies.encoding", "apem.studies.stage_order", "apem.studies.faithfulness", "apem.studies.sanity",
                "apem.studies.more_methods"],
    "quantus_adapter": ["apem.quantus_adapter"],
    "randomisation": ["apem.randomisation"],
    "by_hand": ["apem.by_hand"],
    "thesis": ["apem.thesis"],
    "figures": ["apem.figures.plots", "apem.figures.charts"],
    "book": ["apem.book", "apem.book.params", "apem.book.display", "apem.book.noise", "apem.book.exercises",
             "apem.book.runtimes", "apem.book.coverage", "apem.book.apidoc"],
    "chapters": ["apem.chapters"] + [f"apem.chapters.ch{n:02d}" for n in range(14)],
}


def is_submodule(package: str, name: str) -> bool:
    """Whether ``package.name`` is a module (``apem.metric.directions``: a module, and a function of the package)."""
    try:
        return importlib.util.find_spec(f"{package}.{name}") is not None
    except (ImportError, ValueError):
        return False


def exported_by_package(module: str, name: str, obj) -> bool:
    """Whether ``module``'s package documents ``obj``: it exports it as ``name`` in its ``__all__``.

    Not when the package has a module of that name: ``apem.metric.directions`` names the module, so the
    function ``directions`` is documented in it (a link to ``apem.metric.directions`` reaches both).
    """
    package = module.rpartition(".")[0]
    if not package:
        return False
    try:
        pkg = importlib.import_module(package)
    except ImportError:
        return False
    return (name in getattr(pkg, "__all__", ()) and getattr(pkg, name, None) is obj
            and not is_submodule(package, name))


def skip_member(module: str, name: str, obj) -> bool:
    """Whether the reference leaves ``obj`` out of ``module``'s members (it is documented under another name).

    Functions and classes only: a constant's ``#:`` comment is read from the module that assigns it, so
    its package shows no text for it and the module keeps it.
    """
    if not callable(obj):
        return False
    mod = importlib.import_module(module)
    if hasattr(mod, "__path__") and is_submodule(module, name):  # a package's member that is also its module
        return True
    return exported_by_package(module, name, obj)


def documented_name(target: str) -> str:
    """The name the reference describes ``target`` under: ``apem.claims.kinds.Paired`` -> ``apem.claims.Paired``.

    A link written with the defining module's name (``{py:func}`apem.studies.encoding.encoding_shift```)
    reaches the object its package exports (``apem.studies.encoding_shift``); other names come back as they are.
    """
    parts = target.split(".")
    for i in range(len(parts) - 1, 1, -1):
        module, name = ".".join(parts[:i]), parts[i]
        try:
            obj = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if callable(obj) and exported_by_package(module, name, obj):
            return ".".join([module.rpartition(".")[0], *parts[i:]])
        return target
    return target


def _resolve_by_export(app, env, node, contnode):
    """``missing-reference``: a Python link to an exported object under its module's name, resolved to the package's."""
    if node.get("refdomain") != "py" or not node.get("reftarget", "").startswith("apem."):
        return None
    target = documented_name(node["reftarget"])
    if target == node["reftarget"]:
        return None
    return env.get_domain("py").resolve_xref(env, node["refdoc"], app.builder, node["reftype"], target, node,
                                             contnode)


def _skip(app, what, name, obj, skip, options):
    module = app.env.temp_data.get("autodoc:module")  # the module whose members autodoc is filtering
    if what == "module" and module and skip_member(module, name, obj):
        return True
    return None  # autodoc's own decision


def setup(app):
    app.connect("autodoc-skip-member", _skip)
    app.connect("missing-reference", _resolve_by_export)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
