"""Chapter parameters from the command line: declared, routed, typed, fingerprinted; noise on a page is found."""

from __future__ import annotations

import nbformat
import pytest

from apem import book
from apem.config import ConfigError

NB = '''---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# A chapter

```{code-cell} ipython3
:tags: [parameters, remove-cell]

params = "default"  # a parameter set
overrides = {}  # configuration fields
n_images = 8  # images in the figure
alpha = 0.05  # level of the claims' tests
method = "gradient"  # the method shown
stage = None  # the stage (None: 3)
```
'''


@pytest.fixture
def chapter(tmp_path):
    p = tmp_path / "99_test.md"
    p.write_text(NB)
    return p


def test_parameters_are_read_with_defaults_and_comments(chapter):
    ps = book.chapter_parameters(chapter)
    assert list(ps) == ["n_images", "alpha", "method", "stage"]  # params / overrides are the configuration's
    assert ps["n_images"].default == 8 and ps["n_images"].comment == "images in the figure"
    assert ps["stage"].default is None
    text = book.describe_parameters([chapter])
    assert "-p alpha 0.05" in text and "# level of the claims' tests" in text


def test_routing_config_fields_and_chapter_parameters(chapter):
    overrides, per = book.split_params([("n_correct", "48"), ("alpha", "0.01"), ("n_images", "3"),
                                        ("method", "3"), ("stage", "2")], [chapter])
    assert overrides == {"n_correct": 48}
    assert per[chapter.stem] == {"alpha": 0.01, "n_images": 3, "method": "3", "stage": 2}
    _, per = book.split_params([("alpha", "1")], [chapter])
    assert per[chapter.stem]["alpha"] == 1.0 and isinstance(per[chapter.stem]["alpha"], float)


@pytest.mark.parametrize("pair, fragment", [
    (("bogus", "1"), "neither a configuration field nor a parameter"),
    (("n_images", "abc"), "takes an int"),
    (("n_images", "2.5"), "takes an int"),
    (("n_images", "true"), "takes an int"),
    (("alpha", "[1]"), "takes a float"),
])
def test_bad_chapter_parameters_are_one_line_errors(chapter, pair, fragment):
    with pytest.raises(ConfigError, match=fragment):
        book.split_params([pair], [chapter])


def test_a_chapter_parameter_changes_the_fingerprint(chapter, sample_dir):
    a = book.fingerprint(chapter, "smoke", {})
    b = book.fingerprint(chapter, "smoke", {}, {"n_images": 3})
    assert a != b and b == book.fingerprint(chapter, "smoke", {}, {"n_images": 3})
    assert a == book.fingerprint(chapter, "smoke", {}, {})


def test_the_command_line_refuses_unknown_names_with_exit_2(chapter, monkeypatch, capsys):
    from apem.cli import main

    monkeypatch.setattr(book, "NOTEBOOKS", chapter.parent)
    assert main(["book", "--chapter", "99", "-p", "no_such_name", "1", "--no-html"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_name" in err[0] and "alpha, method, n_images, stage" in err[0]
    assert "configuration field" in err[0]
    assert main(["book", "--chapter", "99", "-p", "n_images", "abc", "--no-html"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "takes an int" in err[0] and "'abc'" in err[0]
    assert main(["book", "--chapter", "99", "--list-params"]) == 0
    out = capsys.readouterr().out
    assert "-p alpha 0.05    # level of the claims' tests" in out and "configuration field" in out


def test_params_and_overrides_are_not_chapter_parameters(chapter):
    for name in ("params", "overrides"):
        with pytest.raises(ConfigError, match="--params NAME"):
            book.split_params([(name, "smoke")], [chapter])


ANNOTATED = NB.replace('stage = None  # the stage (None: 3)', 'stage: int | None = None  # the stage (None: 3)\n'
                       'colour = "#8fb3d9"  # the bars\' colour\n'
                       'ratio: "float | str" = 0.5  # a share or "auto"')


def test_an_annotation_types_a_none_default_and_a_hash_in_a_string_is_no_comment(tmp_path):
    p = tmp_path / "98_annotated.md"
    p.write_text(ANNOTATED)
    ps = book.chapter_parameters(p)
    assert ps["stage"].types == (int, type(None)) and ps["stage"].type_name() == "int | None"
    assert ps["colour"].default == "#8fb3d9" and ps["colour"].comment == "the bars' colour"
    _, per = book.split_params([("stage", "2"), ("ratio", "auto")], [p])
    assert per[p.stem] == {"stage": 2, "ratio": "auto"}
    _, per = book.split_params([("stage", "null"), ("ratio", "1")], [p])
    assert per[p.stem] == {"stage": None, "ratio": 1.0}
    with pytest.raises(ConfigError, match=r"takes an int \| None; got 'abc'"):
        book.split_params([("stage", "abc")], [p])
    assert "-p stage None (int | None)" in book.describe_parameters([p])
    # without an annotation a None default takes any value: the chapter has to check it
    plain = tmp_path / "97_plain.md"
    plain.write_text(NB)
    _, per = book.split_params([("stage", "abc")], [plain])
    assert per[plain.stem] == {"stage": "abc"}


def test_without_chapter_a_parameter_goes_to_every_chapter_that_declares_it(tmp_path):
    a, b = tmp_path / "01_a.md", tmp_path / "02_b.md"
    a.write_text(NB)
    b.write_text(NB.replace("n_images = 8  # images in the figure\n", ""))
    overrides, per = book.split_params([("alpha", "0.01"), ("n_images", "2"), ("shuffles", "0")], [a, b])
    assert overrides == {"shuffles": 0}
    assert per == {"01_a": {"alpha": 0.01, "n_images": 2}, "02_b": {"alpha": 0.01}}


def _fake_papermill(calls):
    import nbformat

    def execute_notebook(src, dst, parameters, **kw):
        calls.append(parameters)
        nb = nbformat.read(src, as_version=4)
        nb.metadata["papermill"] = {"parameters": parameters}
        nbformat.write(nb, dst)

    return execute_notebook


def test_a_chapter_parameter_reaches_papermill_and_re_executes_only_when_it_changes(chapter, tmp_path, monkeypatch):
    import json

    import papermill

    calls = []
    monkeypatch.setattr(papermill, "execute_notebook", _fake_papermill(calls))
    root = tmp_path / "book_root"
    assert book.execute_chapter(chapter, "smoke", {}, root=root, chapter_params={"n_images": 3}).status == "executed"
    assert calls[-1] == {"params": "smoke", "overrides": {}, "n_images": 3}
    meta = json.loads((root / "book" / "chapters" / f"{chapter.stem}.ipynb").read_text())["metadata"]["apem"]
    assert meta["chapter_params"] == {"n_images": 3} and meta["fingerprint"]
    assert book.execute_chapter(chapter, "smoke", {}, root=root, chapter_params={"n_images": 3}).status == "up to date"
    assert book.execute_chapter(chapter, "smoke", {}, root=root, chapter_params={"n_images": 4}).status == "executed"
    assert book.execute_chapter(chapter, "smoke", {}, root=root).status == "executed"  # back to the default
    assert len(calls) == 3 and calls[-1] == {"params": "smoke", "overrides": {}}
    with pytest.raises(book.BookError, match="declares no parameter bogus"):
        book.execute_chapter(chapter, "smoke", {}, root=root, chapter_params={"bogus": 1})


def test_build_routes_each_chapter_its_parameters_with_quiet_kernels(tmp_path, monkeypatch):
    import os

    import apem.run

    a, b = tmp_path / "01_a.md", tmp_path / "02_b.md"
    a.write_text(NB)
    b.write_text(NB.replace("n_images = 8  # images in the figure\n", ""))
    monkeypatch.setattr(book, "NOTEBOOKS", tmp_path)
    monkeypatch.setattr(apem.run, "run", lambda *a, **k: None)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    seen = []

    def execute_chapter(nb, params, overrides, force, root, chapter_params):
        seen.append((nb.stem, chapter_params, os.environ.get("TQDM_DISABLE"), os.environ.get("PYTHONWARNINGS")))
        return book.ChapterOutcome(nb.stem, "executed")

    monkeypatch.setattr(book, "execute_chapter", execute_chapter)
    overrides, per = book.split_params([("n_images", "2")], book.chapters())
    book.build("smoke", None, overrides, html=False, root=tmp_path, chapter_params=per)
    assert [s[:2] for s in seen] == [("01_a", {"n_images": 2}), ("02_b", {})]
    assert all(s[2] == "1" and "ignore:IProgress not found" in s[3] for s in seen)
    assert "TQDM_DISABLE" not in os.environ  # the build's environment is put back


def test_every_chapter_takes_alpha():
    for nb in book.chapters():
        assert "alpha" in book.chapter_parameters(nb), f"{nb.stem} has no alpha parameter"


def _nb(*outputs):
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=list(outputs))])


def test_noise_finds_warnings_reprs_and_nan_and_nothing_on_a_clean_page():
    out = nbformat.v4.new_output
    clean = _nb(out("display_data", data={"text/markdown": "APEM 41 [30, 52]"}),
                out("display_data", data={"image/png": "AAAA", "text/plain": "<Figure size 640x480 with 1 Axes>"}),
                out("execute_result", data={"text/html": "<td>1.5</td>", "text/plain": "nan"}, execution_count=1))
    assert book.noise(clean) == []
    dirty = _nb(out("stream", name="stderr", text="TqdmWarning: IProgress not found\n"),
                out("execute_result", data={"text/plain": "<seaborn.axisgrid.FacetGrid at 0x7f00>"}, execution_count=1),
                out("display_data", data={"text/plain": "<Figure size 640x480 with 1 Axes>"}),
                out("display_data", data={"text/markdown": "rho = nan"}),
                out("execute_result", data={"text/html": "<td>NaN</td>"}, execution_count=2))
    found = book.noise(dirty)
    assert len(found) == 5, found
    assert any("TqdmWarning" in f for f in found) and any("FacetGrid" in f for f in found)


def test_noise_finds_line_reprs_text_nan_and_a_figure_shown_twice_but_not_fallbacks_or_prose():
    out = nbformat.v4.new_output
    clean = _nb(out("display_data", data={"text/markdown": "a NaN shuffled epsilon gives a NaN term",
                                          "text/plain": "<IPython.core.display.Markdown object>"}),
                out("execute_result", data={"text/html": "<table><td>1</td></table>",
                                            "text/plain": "<pandas.io.formats.style.Styler at 0x7f00>"},
                    execution_count=1),
                out("display_data", data={"image/png": "BBBB", "text/plain": "<Figure size 640x480 with 1 Axes>"}),
                out("stream", name="stdout", text="nanosecond timer\n"))
    assert book.noise(clean) == []
    dirty = _nb(out("execute_result", data={"text/plain": "[<matplotlib.lines.Line2D at 0x7f098c9e2050>]"},
                    execution_count=1),
                out("execute_result", data={"text/plain": "mean    nan\nName: apem, dtype: float64"}, execution_count=2),
                out("execute_result", data={"image/png": "CCCC", "text/plain": "<Figure size 1x1>"}, execution_count=3),
                out("display_data", data={"image/png": "CCCC", "text/plain": "<Figure size 1x1>"}))
    found = book.noise(dirty)
    assert len(found) == 3, found
    assert "Line2D" in found[0] and "'nan' in text/plain" in found[1] and "twice" in found[2]


def test_charts_and_plots_release_their_figures_from_pyplot():
    """The inline backend shows what pyplot still holds: a returned figure must not be shown a second time."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import torch

    from apem.figures import charts
    from apem.figures import plots

    plt.close("all")
    outcomes = pd.DataFrame({"a": ["gradient"], "b": ["smoothgrad"], "better": [0.5], "equal": [0.25],
                             "worse": [0.25]})
    figs = [charts.pairwise_bars(outcomes), charts.hist_kde([0.0, 1.0, 2.0, 2.5], "x"),
            plots.plot_method_grid(torch.rand(1, 3, 8, 8), {"gradient": torch.rand(1, 1, 8, 8)})]
    assert plt.get_fignums() == []
    for fig in figs:  # still a figure one can change and draw
        fig.set_size_inches(8, 6)
        fig.tight_layout()
        fig.canvas.draw()
    fig, ax = plt.subplots()
    assert charts.hist_kde([0.0, 1.0, 2.0], "x", ax=ax) is fig and plt.get_fignums() == [fig.number]  # the caller's
    plt.close("all")


def test_papermills_unknown_parameter_warning_is_dropped_only_for_declared_parameters():
    """Papermill's regex misses ``clip: bool | None = None`` and calls it unknown; apem checked it already."""
    import logging

    from apem.book import _DeclaredParameters

    keep = _DeclaredParameters({"clip", "params"})
    record = lambda msg: logging.LogRecord("papermill", logging.WARNING, __file__, 0, msg, None, None)  # noqa: E731
    assert not keep.filter(record("Passed unknown parameter: clip"))
    assert keep.filter(record("Passed unknown parameter: clipping")) and keep.filter(record("Input Notebook: x"))


def test_the_chapters_kernels_talk_over_unix_sockets_not_tcp():
    """ipykernel warns on the terminal that TCP is unencrypted; a local kernel needs no TCP port."""
    import os

    from apem.book import _local_kernel

    with _local_kernel() as config:
        if os.name != "nt":
            assert config.KernelManager.transport == "ipc" and len(config.KernelManager.ip) < 100
            folder = os.path.dirname(config.KernelManager.ip)
            assert os.path.isdir(folder) and oct(os.stat(folder).st_mode)[-3:] == "700"
    assert os.name == "nt" or not os.path.exists(folder)


def test_noise_finds_eaten_latex_cut_cells_and_minus_zero():
    out = nbformat.v4.new_output
    clean = _nb(out("display_data", data={"text/markdown": r"$\varepsilon\text{-shuffle}$ is -0.5 or 10.0, ρ = +0.12"}),
                out("execute_result", data={"text/html": "<td>[-0.05, 1.13]</td><td>0</td>"}, execution_count=1))
    assert book.noise(clean) == []
    dirty = _nb(out("display_data", data={"text/markdown": "with fewer of them $\x0barepsilon\text{-shuffle}$"}),
                out("execute_result", data={"text/html": "<td>apem(n_steps=16, baseline=...</td>"}, execution_count=1),
                out("display_data", data={"text/markdown": "median APEM -0 vs 3"}),
                out("execute_result", data={"text/html": "<td>[-0.00, 1.13]</td>"}, execution_count=2))
    found = book.noise(dirty)
    assert len(found) == 4, found
    assert "control character" in found[0] and "cut short" in found[1] and "-0" in found[2] and "-0" in found[3]


def test_numbers_never_print_as_minus_zero():
    from apem import claims
    from apem.book import display

    assert claims.fmt(-0.001, 2) == "0.00" and claims.fmt(-0.3, 0) == "0" and claims.fmt(-0.001, 2, sign=True) == "0.00"
    assert claims.fmt(-0.5, 1) == "-0.5" and claims.fmt(0.004, 2, sign=True) == "0.00"
    assert claims.fmt(0.25, 2, sign=True) == "+0.25" and claims.fmt(-1e-9, 1, pct=True) == "0.0%"
    assert display.num(-0.004, 2) == "0.00" and display.fmt_ci(0.5, -0.001, 1.13, 2) == "0.50 [0.00, 1.13]"
    assert display.fmt_median(-0.2, -0.2, 0) == "0"
