"""APEM: the Adversarial Perturbation Explanation Metric, batched and device-agnostic.

The package is the shared core every chapter of the book imports:

- :mod:`apem.models`    named classifiers that take images in [0, 1] pixel units
- :mod:`apem.data`      image sets with their true labels
"""

__version__ = "0.1.0"

from apem.alloc import tune_malloc as _tune_malloc

# CPU forward passes in small batches run up to ~1.8x faster with PyTorch's activation buffers kept
# on the heap (see apem.alloc); process-wide, glibc only, APEM_MALLOC_TUNING=0 turns it off.
_tune_malloc()
