"""One frozen object names every setting of an epsilon search: :class:`SearchSpec`.

Every place that runs a search (the runner, the explanation filter, the
search-mode comparison, the faithfulness and sanity studies) receives one
``SearchSpec`` -- :meth:`apem.config.Config.search` builds it from a
configuration -- so a setting cannot be dropped on the way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from apem.metric.clean import SLOPES
from apem.metric.engines import ENGINES

SEARCH_MODES = tuple(ENGINES)
SHUFFLE_MODES = ("fixed", "per_step")
THESIS_BOUND = 10001
#: The largest ``bound`` a search can represent. A step ``e`` reaches the model as the float32 image
#: ``x + e * d`` (:class:`apem.metric.forward.Forward` casts the torch.long steps to the direction's
#: dtype, float32), and float32 holds every integer only up to 2**24 = 16,777,216: beyond it
#: 2**24 + 1 rounds to 2**24, so two steps would test the same image and the integer search would
#: lose its meaning. The other arithmetic has more room (steps are torch.long, up to 2**63 - 1; the
#: bisect engine's estimates are float64, exact to 2**53), so float32 sets the limit: with
#: ``bound <= 2**24`` every tested step ``1 .. bound - 1`` and the censored value ``bound`` itself
#: are exact. (The thesis's 10001 is far below; a bound like 10**30 would overflow torch.long.)
MAX_BOUND = 2**24


@dataclass(frozen=True)
class SearchSpec:
    """How to search: every setting that can change an epsilon or its cost.

    ``mode``: an engine of :data:`apem.metric.engines.ENGINES` (``thesis``,
    ``linear``, ``bisect``); ``bound``: steps ``1 .. bound - 1`` are tested
    (the thesis: 10001; at most :data:`MAX_BOUND`, 2**24); ``clip``: clamp perturbed images to [0, 1];
    ``batch_size``: perturbed images per model call (None: the device's
    default, :data:`apem.metric.forward.AUTO_BATCH`); ``block``: steps per
    item per pass of ``linear``; ``shuffles``/``shuffle_mode``: the shuffled
    baseline of APEM_norm (``per_step`` needs a scan: ``thesis`` or
    ``linear``); ``slope``: where ``bisect`` takes its first slope from
    (:data:`apem.metric.clean.SLOPES`).
    """

    mode: str = "bisect"
    bound: int = THESIS_BOUND
    clip: bool = False
    batch_size: int | None = None
    block: int = 32
    shuffles: int = 0
    shuffle_mode: str = "fixed"
    slope: str = "loss"

    def __post_init__(self):
        if self.mode not in SEARCH_MODES:
            raise ValueError(f"unknown search mode {self.mode!r}; choose one of {SEARCH_MODES}")
        if int(self.bound) < 2:
            raise ValueError(f"bound must be >= 2 (steps 1 .. bound-1 are tested), got {self.bound}")
        if int(self.bound) > MAX_BOUND:
            raise ValueError(f"bound must be <= {MAX_BOUND} (2**24: larger steps are not exact in the float32 "
                             f"perturbed image), got {self.bound}")
        if self.batch_size is not None and int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1 (or None for the device's default), got {self.batch_size}")
        if int(self.block) < 1 or int(self.shuffles) < 0:
            raise ValueError(f"block must be >= 1 and shuffles >= 0, got {self.block} and {self.shuffles}")
        if self.shuffle_mode not in SHUFFLE_MODES:
            raise ValueError(f"unknown shuffle_mode {self.shuffle_mode!r}; choose one of {SHUFFLE_MODES}")
        if self.shuffles and self.shuffle_mode == "per_step" and self.mode == "bisect":
            raise ValueError("per_step shuffles need a scan (mode 'thesis' or 'linear'); bisect uses shuffle_mode='fixed'")
        if self.slope not in SLOPES:
            raise ValueError(f"unknown slope {self.slope!r}; choose one of {SLOPES}")

    def replace(self, **changes) -> "SearchSpec":
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes) if changes else self

    @classmethod
    def build(cls, spec: "SearchSpec | None" = None, **settings) -> "SearchSpec":
        """``spec`` (default: all defaults) with the keyword ``settings`` applied on top."""
        return (spec or cls()).replace(**settings)
