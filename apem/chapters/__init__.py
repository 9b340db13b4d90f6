"""The logic of each chapter of the book, so that a notebook reads as prose, one call, its output.

``apem.chapters.chNN`` holds chapter NN's page object: it loads the results once,
and each method shows one table, figure or verdict family. The verdicts are
:class:`apem.claims.Claims` families declared in these modules, printed by the
object that decides them.
"""
