"""The end-of-chapter exercises: their format, their commands' parameters, and every command run on smoke.

An exercise's command is every line of a chapter's "Exercises" section that starts with
``apem book --chapter``. Each is checked against the chapter's declared parameters and the
configuration's fields (as ``apem book`` checks them), then executed through the command line
with ``--params smoke --no-html --results <the session's smoke store>`` added, the executed page
written to a temporary folder. A command that changes only a chapter parameter reuses the smoke
run; one that changes a configuration field computes a small smoke run of its own.
"""

import json
import re
import shlex
from pathlib import Path

import pytest

from apem import book
from apem.book import chapters, split_params

REPO = Path(__file__).resolve().parents[1]
COMMAND = "apem book --chapter"
_BLOCK = re.compile(r"^::::\{(exercise|solution)\}[ \t]*(.*?)\n(.*?)^::::[ \t]*$", re.M | re.S)
_GLUE = re.compile(r"\{glue:text\}`([A-Za-z0-9_-]+)")
NOT_COMPUTED = "Not computed with these parameters"  # an exercise about that outcome says so in its text


def exercise_section(nb: Path) -> str:
    text = nb.read_text()
    i = text.find("\n## Exercises\n")
    return text[i:] if i >= 0 else ""


def exercises(nb: Path) -> list[dict]:
    """The exercises of a chapter: label, title, body, command lines, and the matching solution's options and body."""
    blocks = [(kind, head.strip(), body) for kind, head, body in _BLOCK.findall(exercise_section(nb))]
    sols = {}
    for kind, head, body in blocks:
        if kind == "solution":
            sols[head] = body
    out = []
    for kind, head, body in blocks:
        if kind != "exercise":
            continue
        label = re.search(r"^:label:\s*(\S+)", body, re.M)
        label = label.group(1) if label else None
        out.append({"chapter": nb.name[:2], "title": head, "label": label, "body": body,
                    "commands": [ln.strip() for ln in body.splitlines() if ln.strip().startswith(COMMAND)],
                    "solution": sols.get(label)})
    return out


def all_commands() -> list[tuple[str, str, dict]]:
    """(chapter stem, command, exercise) for every command line in every chapter's exercise section."""
    out = []
    for nb in chapters():
        section = exercise_section(nb)
        exs = exercises(nb)
        for line in section.splitlines():
            if line.strip().startswith(COMMAND):
                ex = next((e for e in exs if line.strip() in e["commands"]), None)
                out.append((nb.stem, line.strip(), ex))
    return out


def parse(command: str):
    """The command as ``apem book`` parses it (its argv after ``apem``)."""
    from apem.cli import build_parser

    return build_parser().parse_args(shlex.split(command)[1:])


# ----------------------------------------------------------------------------- format (no execution)


def test_every_chapter_ends_with_two_to_four_exercises_in_the_shared_format():
    for nb in chapters():
        exs = exercises(nb)
        n = nb.name[:2]
        assert 2 <= len(exs) <= 4, f"{nb.name}: {len(exs)} exercises"
        assert exercise_section(nb).count("::::{exercise}") == len(exs), f"{nb.name}: an exercise block is malformed"
        for e in exs:
            where = f"{nb.name}: exercise {e['title']!r}"
            assert e["label"] and e["label"].startswith(f"ex-{n}-"), where
            assert len(e["commands"]) == 1, f"{where}: {len(e['commands'])} command lines"
            cmd = e["commands"][0]
            assert cmd.startswith(f"{COMMAND} {int(n)} "), f"{where}: {cmd!r} is not chapter {int(n)}'s command"
            assert "```bash\n" + cmd + "\n```" in e["body"], f"{where}: the command is not in its own bash block"
            assert "**Predict first:**" in e["body"], where
            assert e["solution"] is not None, f"{where}: no solution for {e['label']}"
            assert re.search(r"^:class:\s*dropdown\s*$", e["solution"], re.M), f"{where}: the solution is not hidden"
        labels = [e["label"] for e in exs]
        assert len(set(labels)) == len(labels), f"{nb.name}: duplicate labels"


def test_exercise_commands_name_existing_parameters_one_change_each():
    from apem.config import ConfigError

    found = all_commands()
    assert len(found) >= 2 * len(chapters())
    for stem, cmd, _ in found:
        args = parse(cmd)
        assert args.func is book._cmd_book and len(args.chapter) == 1, cmd
        assert len(args.param) == 1, f"{cmd}: an exercise changes one parameter"
        assert not (args.params != "default" or args.results or args.no_html or args.force), \
            f"{cmd}: the test adds --params, --results and --no-html itself"
        nb = book.find_chapter(args.chapter[0])
        assert nb.stem == stem, f"{cmd} in {stem} runs another chapter"
        try:
            overrides, per_chapter = split_params(args.param, [nb])
        except ConfigError as e:  # pragma: no cover - the failure message is the point
            pytest.fail(f"{stem}: {cmd}: {e}")
        assert overrides or per_chapter[stem], cmd


def test_split_params_rejects_what_an_exercise_must_not_name():
    """The check above can fail: an unknown name and a value of the wrong type are errors."""
    from apem.config import ConfigError

    nb = book.find_chapter(3)
    with pytest.raises(ConfigError):
        split_params([("no_such_parameter", "1")], [nb])
    with pytest.raises(ConfigError):
        split_params([("n_upsets", "many")], [nb])


def test_solutions_quote_glued_values_that_the_module_computes():
    """Every ``{glue:text}`` name a solution quotes is one its chapter module's ``exercise_values`` computes."""
    import importlib
    import inspect

    for nb in chapters():
        n = nb.name[:2]
        module = importlib.import_module(f"apem.chapters.ch{n}")
        if n == "00":  # chapter 0's names are ch00-...
            src, prefix, where = inspect.getsource(module.exercise_values), f"ch{n}-", f"ch{n}.exercise_values"
        else:
            src, prefix, where = inspect.getsource(module.exercise_values), f"ex{n}_", f"ch{n}.exercise_values"
        for name in _GLUE.findall(exercise_section(nb)):
            name = name[: -len("_here")] if name.endswith("_here") else name
            assert name.startswith(prefix), f"{nb.name}: glue name {name} is not this chapter's"
            assert f'"{name}"' in src, f"{nb.name}: {name} is not computed by {where}"


def test_helpers_closed_form():
    from scipy import stats as sps

    from apem.book.exercises import all_success_n, counts_sentence, smallest_mann_whitney_p

    for thr, alpha in ((0.95, 0.05), (0.9, 0.01), (0.5, 0.05)):
        n = all_success_n(thr, alpha)
        assert thr ** n < alpha <= thr ** (n - 1)
        assert sps.binomtest(n, n, thr, alternative="greater").pvalue < alpha
        assert sps.binomtest(n - 1, n - 1, thr, alternative="greater").pvalue >= alpha
    assert all_success_n(0.95, 0.05) == 59
    # the exact one-sided Mann-Whitney p-value of complete separation
    p = sps.mannwhitneyu([1, 2], [3, 4, 5, 6], alternative="less", method="exact").pvalue
    assert smallest_mann_whitney_p(2, 4) == pytest.approx(p) == pytest.approx(1 / 15)
    assert counts_sentence({"held": 2, "inconclusive": 1}) == "2 held, 0 not held, 1 inconclusive, 0 not applicable"


# ----------------------------------------------------------------------------- every command, executed on smoke


def _glued(nb_json: dict) -> set:
    return {o.get("metadata", {}).get("scrapbook", {}).get("name") for c in nb_json["cells"]
            for o in c.get("outputs", []) if o.get("output_type") == "display_data"} - {None}


COMMANDS = all_commands()


@pytest.mark.parametrize("stem,cmd,ex", COMMANDS, ids=[f"{c[0][:2]}-{c[2]['label'] if c[2] else i}"
                                                      for i, c in enumerate(COMMANDS)])
def test_exercise_command_runs_on_smoke(stem, cmd, ex, smoke_results, tmp_path, monkeypatch):
    from apem.cli import main

    outcomes = []
    real = book.build

    def build(*a, **k):  # the command as typed, its page written under tmp_path (not book/chapters)
        k.update(root=tmp_path, progress=False)
        index, out = real(*a, **k)
        outcomes.extend(out)
        return index, out

    monkeypatch.setattr(book, "build", build)
    rc = main(shlex.split(cmd)[1:] + ["--params", "smoke", "--no-html", "--results", str(smoke_results)])
    assert rc == 0 and len(outcomes) == 1, f"{cmd}: {[o.line() for o in outcomes]}"
    o = outcomes[0]
    allowed = {"executed"} | ({"not computed"} if ex and NOT_COMPUTED in ex["body"] else set())
    assert o.status in allowed, f"{cmd} on smoke: {o.line()} (a student would see nothing)"
    if o.status == "executed":
        nb = json.loads((tmp_path / "book" / "chapters" / f"{stem}.ipynb").read_text())
        quoted = set(_GLUE.findall(exercise_section(book.find_chapter(stem[:2]))))
        missing = quoted - _glued(nb)
        assert not missing, f"{cmd}: the page glues no {sorted(missing)}"
