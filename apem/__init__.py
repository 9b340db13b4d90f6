"""APEM: the Adversarial Perturbation Explanation Metric, batched and device-agnostic.

The package is the shared core every chapter of the book imports:

- :mod:`apem.models`    named classifiers that take images in [0, 1] pixel units
- :mod:`apem.data`      image sets with their true labels
- :mod:`apem.explain`   explanation methods behind one interface
- :mod:`apem.metric`    the epsilon searches and the APEM scores
- :mod:`apem.run`       the experiment runner and its results store
- :mod:`apem.scoring`   APEM on any classifier: ``apem.score(model, x, maps=...)``,
  and ``apem.APEM()``, the same metric as a Quantus metric

Importing apem changes nothing in the process and imports nothing: ``apem.score``,
``apem.APEM`` and ``apem.Scores`` load :mod:`apem.scoring` (torch) on first use; the
runner (:func:`apem.run.run`) applies the allocator tuning of :mod:`apem.alloc`
explicitly when it starts. See ``apem/README.md`` for where each thesis concept lives.
"""

__version__ = "0.1.0"
__all__ = ["score", "APEM", "Scores"]


def __getattr__(name):
    if name in __all__:
        from apem import scoring

        return getattr(scoring, name)
    raise AttributeError(f"module 'apem' has no attribute {name!r}")
