r"""APEM, the Adversarial Perturbation Explanation Metric (thesis chapter 3, section 5.2).

Definitions
-----------
A relevance map :math:`R \in [0, 1]^{C \times H \times W}` (``C`` = 1 or 3; one
channel is broadcast to the image's three, as the thesis read its one-channel
PNGs back as three equal channels) is turned into a *direction*

.. math::  d = \frac{R}{\lVert R \rVert_1} \odot \operatorname{sign}(g),
           \qquad g = \nabla_x \operatorname{CE}(f(x), t),

the L1 norm taken over all :math:`3 H W` values. The *irrelevance* map is
:math:`1 - R`. The perturbed input is :math:`x + \epsilon d` in pixel units
(no clipping unless ``clip=True``). With the target :math:`t` (the model's own
prediction by default), the prediction has *changed* at step :math:`\epsilon`
when :math:`\operatorname{argmax}_j f_j(x + \epsilon d) \neq t`, with
``torch.argmax`` semantics: a tie goes to the lowest class index, so a class
:math:`j < t` that ties the target's logit counts as a change and a class
:math:`j > t` that ties it does not.

- :math:`\epsilon^-`: the smallest integer step :math:`\epsilon \ge 1` at
  which the prediction changes along the direction of :math:`R`;
- :math:`\epsilon^+`: the same along the direction of :math:`1 - R`;
- :math:`\mathrm{APEM} = \frac1n \sum_i (\epsilon^+_i - \epsilon^-_i)`;
- :math:`\mathrm{APEM}_{norm} = \frac1n \sum_i \left(\frac{\epsilon^+_i}
  {\epsilon\text{-shuffle}^+_i} - \frac{\epsilon^-_i}{\epsilon\text{-shuffle}^-_i}\right)`
  (thesis 5.2), the shuffled epsilons coming from ``S`` random permutations of
  the normalised map (all :math:`3 H W` values of :math:`R / \lVert R\rVert_1`
  permuted), a step counting as a change as soon as any one of the ``S``
  shuffled directions changes the prediction.

Steps are searched in ``1 .. bound - 1`` (the thesis: ``bound = 10001``, it
tests ``sigma in range(start, 10001, pace)``). When no tested step changes the
prediction the item is **censored**: its value is ``bound`` (10001, what the
thesis's code returns) and ``censored`` is True -- a lower bound, never an
invented number. A map whose L1 norm is zero (e.g. ``1 - R`` for an all-ones
``R``), that has non-finite values, or whose direction vanishes (``sign(g) = 0``
wherever the map is non-zero) has no direction: it is **undefined**
(``undefined`` True, ``eps = 0``, a reason code, see :data:`REASONS`); it is
never divided by zero and never stops the rest of the batch.

Search modes
------------
All modes are batched: many images, relevance and irrelevance maps and
shuffles share each forward pass (at most ``batch_size`` perturbed images per
model call; by default 2 on the CPU, whose cache-bound forward is fastest per
image in small batches, and 256 on an accelerator: :data:`AUTO_BATCH`, fewer
on a CUDA device whose available memory does not hold them); maps
refer to their image through ``image_index`` so ``x`` is not replicated per
map; all state stays on the model's device.

``linear``
    The reference: scans ``block`` consecutive steps per item per forward pass
    and returns the **true first step** that changes the prediction.
``thesis``
    The thesis's own coarse-to-fine search, reproduced exactly::

        start = 0
        for pace in (1000, 100, 10, 1):
            for sigma in range(start, bound, pace):
                if changed(sigma): break
                start = sigma
        eps = start + 1

    It re-tests ``start`` at each finer pace and tests ``sigma = 0`` (the
    clean image), one forward pass per tested sigma (counted in ``n_forward``
    exactly as the original did). When the prediction flips and flips back it
    returns the first flip *found on its coarse-to-fine grid*: a flip window
    ``[a, b)`` that holds no multiple of 1000 is skipped entirely, so its
    answer can be later than ``linear``'s. If the clean input is already not
    predicted as the target, ``eps = 1`` (the test at ``sigma = 0`` breaks
    every pace).
``bisect``
    A bracketed root search on the integers, all items in lockstep. It keeps a
    bracket ``lo < hi`` verified by forward passes: prediction unchanged at
    ``lo`` (``lo = 0`` is the clean image) and changed at ``hi``, and stops
    when ``hi = lo + 1``: ``eps = hi``. The candidates come from the margin
    :math:`m(\epsilon) = z_t - \max_{j\ne t} z_j` along the line (a smooth
    stand-in for "changed": :math:`m < 0` changes it, :math:`m = 0` is a tie).
    :math:`m(0)` comes from the clean forward pass (one per *image*, shared
    by every map of the image: relevance, irrelevance, every method, shuffles)
    and the slope :math:`m'(0)` either from the cross-entropy gradient every
    mode already has, :math:`m'(0) \approx -g \cdot d / (1 - p_t)`
    (``slope="loss"``, free, the default of :func:`evaluate_maps`), or exactly
    from :math:`\nabla_x m \cdot d` with one backward pass per image
    (``slope="margin"``; :func:`search` uses it when it computes the
    per-image pass itself). Along such lines the margin is close to
    :math:`m(\epsilon) \approx m(0) + m'(0)\,\tau \log(1 + \epsilon/\tau)`
    (the drop slows down as the step grows), so:

    1. the first probe aims at that model's root with
       :math:`\tau = m(0)/(-m'(0))` (:math:`\approx 1.72\times` the
       first-order root :math:`m(0)/(-m'(0))`);
    2. while no upper end is known, each unchanged probe refits
       :math:`\tau` through it, and the next probe is the larger of that
       model's root and the two-point extrapolation; after 3 such probes each
       step at least doubles the previous one (growth safeguard), capped at
       ``bound - 1``;
    3. inside a bracket the estimate is the root of the two-parameter model
       :math:`m(0) - A\tau\log(1+\epsilon/\tau)` through the two tested
       points with the smallest :math:`|m|` (a secant through them when the
       model does not fit), kept strictly inside the bracket (else regula
       falsi on the bracket ends, else the midpoint); a Brent-style guard
       bisects a bracket that has not halved for 4 passes in a row, so the
       worst case stays logarithmic when the margin misleads (the secant on
       the best points replaces the Illinois trick: it never keeps a stale end);
    4. when a tested point lies within :math:`\max(1, 0.3\sqrt{r})` of the
       estimate :math:`r`, the two integers around it are tested in the same
       pass (with a 1-wide bracket that is the last pass).
    5. when two such pairs in a row both fall short of the root (a margin
       that flattens just above zero keeps every estimate a few steps low),
       the next steps go up from ``lo`` by the estimated distance times 2, 4,
       8, ..., never past the bracket's midpoint.

    Tuning lives in :class:`BisectTuning`; it changes the cost, never the
    validity of the answer. On EfficientNet-Lite0 gradient maps this takes
    about 4 forward passes per epsilon (``benchmarks/bench_search.py``). The
    answer is always a verified integer bracket, never the margin estimate.
    When the prediction flips once and stays flipped, ``bisect == linear``.
    When it does not, ``bisect`` returns *some* flip boundary inside its
    bracket -- a step that changes the prediction whose predecessor does not
    -- which can be later than ``linear``'s (an early flip window that no
    probe lands in is missed), never a step that does not change it.
    Censoring assumes monotonicity too: an item is censored when step
    ``bound - 1`` does not change the prediction. If the clean input is not
    predicted as the target, the bracket cannot start at 0: step 1 is tested
    first and, if it changes the prediction, ``eps = 1`` (as ``linear``).

Modules
-------
:mod:`~apem.metric.margin` (margin, :class:`MarginInfo`),
:mod:`~apem.metric.clean` (loss gradient, clean pass),
:mod:`~apem.metric.directions` (directions, reason codes, shuffle permutations),
:mod:`~apem.metric.forward` (batched forwarding),
:mod:`~apem.metric.engines` (the ``thesis`` and ``linear`` engines and the
registry :data:`ENGINES`), :mod:`~apem.metric.bisect` (the bracketed root
search), :mod:`~apem.metric.spec` (:class:`SearchSpec`),
:mod:`~apem.metric.search` (:func:`search`, :func:`trace`),
:mod:`~apem.metric.evaluate` (:func:`evaluate_maps`),
:mod:`~apem.metric.score` (:func:`apem`, :func:`apem_norm`, :func:`table_summary`),
:mod:`~apem.metric.monotonicity`.

:func:`monotonicity_check` measures how often the flip is non-monotone on real
images (a linear scan past the first flip, up to a horizon).

Counting
--------
``n_forward`` counts the perturbed images forwarded per item (one per tested
step, ``S`` per tested step for a group of ``S`` shuffles), exactly what a
batch-1 implementation would forward. The shared per-image passes are not in
it: ``bisect``'s clean forward (and, with ``slope="margin"``, one backward)
per *image*, and the loss gradient when it is computed here;
:func:`evaluate_maps` reports them as ``n_image_passes`` and
``n_image_backward``.

Shuffles
--------
``shuffle_mode="per_step"`` draws ``S`` new permutations at every tested step
(what the thesis did; for ``thesis`` and ``linear``); ``"fixed"`` draws one set
of ``S`` permutations per item (``thesis``, ``linear`` and ``bisect``). With
fixed shuffles ``linear`` returns the first step at which any of the ``S``
changes the prediction, i.e. :math:`\min_s \epsilon_s` (each member's first
flip), and ``bisect`` returns the smallest verified flip boundary over the
members: each member runs its own bracket search, but the group's smallest
verified changed step caps every member's bracket (members whose bracket
reaches it stop). When every shuffled direction flips monotonically this is
:math:`\min_s \epsilon_s`, the ``linear`` value; otherwise it is a step
that changes the prediction for some member, never below ``linear``'s.
Permutations come from ``torch.Generator`` seeded per item with the caller's
``seeds`` (the irrelevance map uses a seed derived from the same value):
an item's permutations depend only on its seed, never on batch composition
or order; per-step draws happen in (step, shuffle) order for each item.
On the CPU per-step permutations come from those CPU generators; on an
accelerator they are computed on the device itself from (item seed, draw
number) (:func:`~apem.metric.directions.keyed_permutations`), so a GPU run
draws different (equally distributed) per-step permutations than a CPU run
with the same seeds; the store records the device of every chunk
(:class:`apem.numerics.NumericEnv`). Fixed shuffles are the same on every device.
"""

from apem.metric.bisect import BISECT, BisectTuning
from apem.metric.clean import SLOPES, clean_pass, loss_gradient, prepare_images
from apem.metric.directions import (
    REASON_CALLER, REASON_NONFINITE, REASON_ZERO_DIRECTION, REASON_ZERO_NORM, REASONS, directions,
    map_shuffle_permutations, perturbation_size, shuffle_permutations,
)
from apem.metric.engines import ENGINES, THESIS_PACES
from apem.metric.evaluate import check_maps, evaluate_maps
from apem.metric.forward import AUTO_BATCH, AUTO_BATCH_ACCELERATOR, resolve_batch_size
from apem.metric.margin import MarginInfo, changed, margin
from apem.metric.monotonicity import monotonicity_check
from apem.metric.score import NORM_REASONS, apem, apem_norm, apem_norm_terms, apem_terms, defined_rows, table_summary
from apem.metric.search import SearchResult, as_index, search, trace
from apem.metric.spec import MAX_BOUND, SEARCH_MODES, SHUFFLE_MODES, THESIS_BOUND, SearchSpec

__all__ = [
    "BISECT",
    "BisectTuning",
    "SLOPES",
    "clean_pass",
    "loss_gradient",
    "prepare_images",
    "REASON_CALLER",
    "REASON_NONFINITE",
    "REASON_ZERO_DIRECTION",
    "REASON_ZERO_NORM",
    "REASONS",
    "directions",
    "map_shuffle_permutations",
    "perturbation_size",
    "shuffle_permutations",
    "ENGINES",
    "THESIS_PACES",
    "check_maps",
    "evaluate_maps",
    "AUTO_BATCH",
    "AUTO_BATCH_ACCELERATOR",
    "resolve_batch_size",
    "MarginInfo",
    "changed",
    "margin",
    "monotonicity_check",
    "apem",
    "apem_norm",
    "apem_norm_terms",
    "apem_terms",
    "NORM_REASONS",
    "defined_rows",
    "table_summary",
    "SEARCH_MODES",
    "SHUFFLE_MODES",
    "THESIS_BOUND",
    "MAX_BOUND",
    "SearchResult",
    "SearchSpec",
    "as_index",
    "search",
    "trace",
]
