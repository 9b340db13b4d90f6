"""The logic of each chapter of the book, so that a notebook reads as prose, one call, its output.

``apem.chapters.chNN`` holds chapter NN's page object: it loads the results once,
and each method shows one table, figure or verdict family. The verdicts are
:class:`apem.claims.Claims` families declared in these modules, printed by the
object that decides them.
"""

import warnings

# tqdm.auto, which the model libraries import, warns "IProgress not found" once in a kernel without
# ipywidgets; the pages run with progress bars off, so the warning is noise on every page.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import tqdm.auto  # noqa: F401
