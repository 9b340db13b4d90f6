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
    (("n_images", "abc"), "takes a int"),
    (("n_images", "2.5"), "takes a int"),
    (("n_images", "true"), "takes a int"),
    (("alpha", "[1]"), "takes a float"),
])
def test_bad_chapter_parameters_are_one_line_errors(chapter, pair, fragment):
    with pytest.raises(ConfigError, match=fragment):
        book.split_params([pair], [chapter])


def test_a_chapter_parameter_changes_the_fingerprint(chapter):
    a = book.fingerprint(chapter, "smoke", {})
    b = book.fingerprint(chapter, "smoke", {}, {"n_images": 3})
    assert a != b and b == book.fingerprint(chapter, "smoke", {}, {"n_images": 3})
    assert a == book.fingerprint(chapter, "smoke", {}, {})


def test_the_command_line_refuses_unknown_names_with_exit_2(capsys):
    from apem.cli import main

    assert main(["book", "--chapter", "3", "-p", "no_such_name", "1", "--no-html"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_name" in err[0] and "alpha" in err[0]
    assert main(["book", "--chapter", "3", "--list-params"]) == 0
    assert "-p alpha" in capsys.readouterr().out


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
