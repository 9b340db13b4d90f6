"""The one seed derivation every random draw in apem starts from.

``seed_of(*parts)`` feeds the parts to :class:`numpy.random.SeedSequence`
(integers >= 0 as they are, strings as the integer of their UTF-8 bytes
with a trailing 0x01 byte, so ``"a"`` and ``97`` differ) and returns 63 bits
of its state: a seed for ``torch.Generator.manual_seed``,
``numpy.random.default_rng`` or a ``torch.long`` tensor. The same parts give
the same seed in any process, batch or order; nearby parts (``(s, 1)`` and
``(s + 1, 0)``) give unrelated streams.

Where it is used (each draw names what it is for):

- shuffled baseline of a map: ``seed_of(cfg.seed, image_id, method, stage)``
  per map (:mod:`apem.run`), then ``seed_of(that, 0)`` for the relevance map
  and ``seed_of(that, 1)`` for the irrelevance map (:mod:`apem.metric.directions`);
- SmoothGrad noise of an image: ``seed_of(seed, key)`` (:mod:`apem.explain.gradient`), where the
  runner gives the method the seed ``seed_of(cfg.seed, method)`` and each image the noise key
  ``seed_of(image_id)`` (:func:`apem.runner.compute.method_for`): an image's noise is its own in
  any chunk, order or configuration, which lets the results store reuse its maps;
- sanity checks: a layer's re-initialisation ``seed_of(seed, layer name)`` (:mod:`apem.randomisation`).
"""

from __future__ import annotations

import numpy as np

MASK63 = (1 << 63) - 1


def _word(part) -> int:
    if isinstance(part, (bool, np.bool_)):
        part = int(part)
    if isinstance(part, (int, np.integer)):
        if part < 0:
            raise ValueError(f"seed parts must be >= 0, got {part}")
        return int(part)
    return int.from_bytes(str(part).encode() + b"\x01", "little")


def seed_of(*parts) -> int:
    """A 63-bit seed derived from ``parts`` (ints >= 0 and strings) by numpy's SeedSequence."""
    state = np.random.SeedSequence([_word(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return ((int(state[0]) << 32) | int(state[1])) & MASK63
