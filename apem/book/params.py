"""A chapter's parameters: read from its ``parameters`` cell, typed, and set from the command line.

``apem book -p NAME VALUE`` sends NAME to the configuration when it is a
:class:`apem.config.Config` field and to the chapters that declare it otherwise;
:func:`split_params` decides which, :func:`chapter_parameters` reads a chapter's
declarations (default, comment, annotation) and :func:`describe_parameters` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: the parameters every chapter has: they carry the configuration and are set by --params / -p FIELD
CONFIG_PARAMS = ("params", "overrides")


@dataclass
class ChapterParam:
    """A parameter declared in a chapter's ``parameters`` cell: its default, its comment, its type.

    ``types``: the Python types its annotation allows (``stage: int | None = None`` ->
    ``(int, NoneType)``); None when the line has no annotation, and the default's type
    decides (a ``None`` default then takes any value).
    """

    name: str
    default: object
    comment: str = ""
    types: tuple | None = None

    def type_name(self) -> str:
        if self.types is not None:
            return " | ".join("None" if t is type(None) else t.__name__ for t in self.types)
        return "any" if self.default is None else type(self.default).__name__


_ANNOTATION_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict,
                     "tuple": tuple, "None": type(None)}


def _annotation_types(node) -> tuple | None:
    """``int``, ``int | None``, ``Optional[int]``, ``list[int]``, ``"int"`` -> the types they allow (None: unknown)."""
    import ast

    if isinstance(node, ast.Constant) and node.value is None:
        return (type(None),)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a quoted annotation
        try:
            return _annotation_types(ast.parse(node.value, mode="eval").body)
        except SyntaxError:
            return None
    if isinstance(node, ast.Name):
        t = _ANNOTATION_TYPES.get(node.id)
        return None if t is None else (t,)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        a, b = _annotation_types(node.left), _annotation_types(node.right)
        return None if a is None or b is None else tuple(dict.fromkeys(a + b))
    if isinstance(node, ast.Subscript):
        head = node.value.id if isinstance(node.value, ast.Name) else getattr(node.value, "attr", "")
        if head in ("list", "dict", "tuple", "List", "Dict", "Tuple"):
            return (_ANNOTATION_TYPES[head.lower()],)
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        parts = [_annotation_types(a) for a in args]
        if head in ("Optional", "Union") and all(p is not None for p in parts):
            extra = (type(None),) if head == "Optional" else ()
            return tuple(dict.fromkeys(sum(parts, ()) + extra))
    return None


def chapter_parameters(nb_path: Path) -> dict[str, ChapterParam]:
    """The parameters a chapter declares in its cell tagged ``parameters`` (besides params and overrides).

    Read with :mod:`ast`: each ``NAME = <literal>  # comment`` (or ``NAME: TYPE = <literal>``)
    line is a parameter with its default, its comment and the type its annotation allows
    (papermill injects new values as a cell after this one).
    """
    import ast

    import jupytext

    nb = jupytext.read(nb_path)
    cell = next((c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])), None)
    if cell is None:
        return {}
    try:
        body = ast.parse(cell.source).body
    except SyntaxError as e:
        from apem.book import BookError  # here, not at the top: apem.book imports this module

        raise BookError(f"{nb_path.name}: the parameters cell is not plain Python ({e.msg}, line {e.lineno})") from None
    lines = cell.source.splitlines()
    out = {}
    for node in body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, types = node.targets[0].id, None
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name, types = node.target.id, _annotation_types(node.annotation)
        else:
            continue
        if name in CONFIG_PARAMS:
            continue
        try:
            default = ast.literal_eval(node.value)
        except (ValueError, TypeError, SyntaxError):
            continue
        rest = lines[node.end_lineno - 1][node.value.end_col_offset:]  # after the value: a "#" in a string is no comment
        comment = rest.split("#", 1)[1].strip() if "#" in rest else ""
        out[name] = ChapterParam(name, default, comment, types)
    return out


def _article(name: str) -> str:
    return ("an " if name[:1] in "aeiou" else "a ") + name


def _coerce(name: str, text, p: ChapterParam, chapter: str):
    """A command-line value for a chapter parameter, checked against its annotation or the type of its default."""
    from apem.config import ConfigError, parse_value

    raw = text if isinstance(text, str) else None
    value = parse_value(text, name) if isinstance(text, str) else text
    allowed = p.types
    if allowed is None:
        d = p.default
        if d is None:
            return value
        allowed = (type(d), type(None)) if not isinstance(d, (list, tuple)) else (list, tuple, type(None))
    if value is None and type(None) in allowed:
        return value
    ok = False
    for t in allowed:
        if t is bool:
            ok = isinstance(value, bool)
        elif t is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif t is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif t in (list, tuple):
            ok = isinstance(value, (list, tuple))
        elif t is not str and t is not type(None):
            ok = isinstance(value, t)
        if ok:
            break
    if not ok and str in allowed:
        if raw is not None and not isinstance(value, str):
            value = raw  # -p method 3 is the text "3" for a text parameter
        ok = isinstance(value, str)
    if not ok:
        what = p.type_name() if p.types is not None else f"{type(p.default).__name__} like its default {p.default!r}"
        raise ConfigError(f"-p {name} {raw if raw is not None else value!r}: chapter {chapter}'s parameter {name} "
                          f"takes {_article(what)}; got {value!r}")
    return value


def split_params(pairs, nb_paths) -> tuple[dict, dict[str, dict]]:
    """``-p NAME VALUE`` pairs -> (configuration overrides, {chapter stem: chapter parameters}).

    A configuration field goes to the configuration (every chapter sees it); a parameter
    declared in chapters goes to those that declare it, checked against its type (a NAME
    that is both goes to both). Any other NAME is an error that lists the chapters'
    parameters and points at the configuration's fields.
    """
    from dataclasses import fields

    from apem.config import Config, ConfigError, parse_value

    config_fields = {f.name for f in fields(Config)}
    declared = {nb.stem: chapter_parameters(nb) for nb in nb_paths}
    overrides, per_chapter = {}, {nb.stem: {} for nb in nb_paths}
    for name, text in pairs:
        takers = [stem for stem, ps in declared.items() if name in ps]
        if name in config_fields:
            overrides[name] = parse_value(text, name) if isinstance(text, str) else text
        elif name in CONFIG_PARAMS:
            raise ConfigError(f"-p {name}: not a parameter to set; the parameter set is --params NAME and the "
                              "configuration's fields are set one by one, -p FIELD VALUE (e.g. -p n_correct 48)")
        elif not takers:
            known = sorted({n for ps in declared.values() for n in ps})
            where = ("chapter " + nb_paths[0].stem) if len(nb_paths) == 1 else "the selected chapters"
            raise ConfigError(f"-p {name}: neither a configuration field nor a parameter of {where}; "
                              f"chapter parameters: {', '.join(known) or 'none'}; configuration fields are "
                              "the Config fields in apem/config.py (apem book --list-params shows the chapters')")
        for stem in takers:
            per_chapter[stem][name] = _coerce(name, text, declared[stem][name], stem)
    return overrides, per_chapter


def describe_parameters(nb_paths) -> str:
    """The chapters' parameters with their defaults and comments, for ``apem book --list-params``."""
    out = []
    for nb in nb_paths:
        out.append(f"{nb.stem}:")
        ps = chapter_parameters(nb)
        for p in ps.values():
            typed = f" ({p.type_name()})" if p.types is not None else ""
            out.append(f"  -p {p.name} {p.default!r}{typed}" + (f"    # {p.comment}" if p.comment else ""))
        if not ps:
            out.append("  (no chapter parameters)")
    out.append("and any configuration field (-p n_correct 48, -p shuffles 0, ...; see Config in apem/config.py)")
    return "\n".join(out)
