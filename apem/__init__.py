"""APEM: the Adversarial Perturbation Explanation Metric, batched and device-agnostic.

The package is the shared core every chapter of the book imports:

- :mod:`apem.models`    named classifiers that take images in [0, 1] pixel units
- :mod:`apem.data`      image sets with their true labels
"""

__version__ = "0.1.0"
