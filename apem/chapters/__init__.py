"""The plumbing of each chapter of the book: tested functions that take data frames and return tables or figures.

The science is on the pages (``notebooks/NN_*.md``): which rows of the results table
enter, each statistic as a call into apem's API, and the chapter's claims, declared with
:mod:`apem.claims` in a cell tagged ``claims`` before the results they judge and decided
in "What held". ``apem.chapters.chNN`` keeps what a reader need not see to follow a
number: drawing a figure, formatting a table (the thesis beside ours, censoring marks),
and ``exercise_values``, the numbers its exercises' solutions quote. Chapters do not
import each other; what several share lives in :mod:`apem.figures`, :mod:`apem.stats`
and :mod:`apem.book.display`.
"""

import warnings

# tqdm.auto, which the model libraries import, warns "IProgress not found" once in a kernel without
# ipywidgets; the pages run with progress bars off, so the warning is noise on every page.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import tqdm.auto  # noqa: F401
