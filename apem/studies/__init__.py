"""The computations behind the chapters beyond the thesis's main table, each cached in the configuration's store.

Every study has one call shape, ``study(res, *, n_images, stage, seed, ...) ->
DataFrame``: it takes a :class:`apem.run.Results` (the main configuration),
works on the **same images and the same cached maps** as the main results
table -- its first ``n_images`` correctly classified images in the order of
``images.parquet`` -- and keeps each image's rows in the results store's cells with
:func:`~apem.studies.common.cached_rows` (keyed by the study, its parameters and the
configuration's cell keys), so a chapter never recomputes what the store has, and a
study of fewer or more images, or of another configuration over the same maps, reads
what another computed and computes only the images it lacks.

Chapter 1, :func:`compare_modes` (:mod:`~apem.studies.search_modes`)
    The three search modes side by side on the stored maps, with a
    monotonicity check past the first change.

Chapter 2, :func:`lrp_variants` (:mod:`~apem.studies.lrp_rules`)
    The thesis's Table 4.1 measured: naive LRP (epsilon = 0), the
    epsilon-variant and the beta-variant (alpha-beta rule) on the first
    ``n_images`` correct images -- non-finite maps and the map's change under a
    tiny input perturbation (numerical stability), the input relevance's sum
    against the output relevance's (conservation), and APEM of each variant's
    stage map with the configuration's search; :func:`table_4_1` adds the
    closed-form checks on a bias-free linear model (consistency with a linear
    mapping) and a bias-free ReLU network (conservation of the rule alone) and
    draws yes/no from declared thresholds; :func:`apem_by_variant` summarises APEM.

Chapter 3, :func:`~apem.studies.bounds.bound_study` (:mod:`~apem.studies.bounds`)
    Every censored search of the correct images searched again on its stored map, at the
    configuration's bound (reproducing the table) and at higher bounds (10^5, 10^6):
    how many stay censored, and the table with those searches further, to decide the
    chapter's claims again.

Chapter 4, :func:`encoding_shift` (:mod:`~apem.studies.encoding`)
    The configuration's maps of its correct images recomputed under both map
    encodings (``round`` and the thesis's ``save_image`` files, :mod:`apem.maps`)
    and searched the way the runner searches them: the configuration's own
    encoding reproduces the results table exactly, so the differences are the
    encoding's alone. :func:`encoding_summary`: per method and stage, the share of
    images whose eps-minus / eps-plus moved and by how much.

Chapter 10, :func:`faithfulness_scores` (:mod:`~apem.studies.faithfulness`)
    Quantus's Pixel-Flipping, Selectivity, ROAD and Faithfulness Correlation
    (through :mod:`apem.quantus_adapter`, higher = more faithful for all four)
    and APEM on the cached stage maps. The metrics are called **one image at a
    time** with that image's maps of every method in one call, images in the
    outer loop and metrics in the inner one, so every metric sees the same
    machine load; APEM is re-run (no shuffles) with
    :func:`apem.metric.evaluate_maps` on the same maps in the same loop to
    time it. Each call counts the images its model forwarded
    (:class:`apem.quantus_adapter.CountingModel`). Constant maps are not given
    to Quantus (they rank nothing, and ROAD and Faithfulness Correlation
    refuse them); their scores are NaN, as APEM's is undefined. APEM's *score* is the table's
    (the number the book reports); the re-run is for the cost, and its
    epsilons are kept (``eps_minus_rerun`` / ``eps_plus_rerun``) to check that
    they match the table's. :func:`kendall_per_image` and
    :func:`mean_scores` turn the scores into rankings and agreements.

Chapter 11, :func:`sanity_check` (:mod:`~apem.studies.sanity`; it returns two tables)
    Cascading randomisation (Adebayo et al. 2018, :mod:`apem.randomisation`): the
    model's stages are re-initialised from the top, cumulatively; at every
    ``every``-th stage and at the last one (every layer random) each method's
    maps are recomputed **for the trained model's predicted class** and
    compared with the trained model's maps (Spearman's rho and SSIM, every
    visualisation stage). The maps of the chosen stage -- trained and
    randomised -- are then scored by APEM **on the trained model** (the
    model being explained: its loss gradient gives sign(g), its prediction is
    the target). Both the trained and the randomised maps are computed here
    with the same method parameters, so the comparison is like for like:
    the configuration's parameters, except that SmoothGrad uses
    ``min(n, smoothgrad_n)`` noisy copies and ``noise_target="fixed"``
    (every copy explains the trained prediction: only the weights may change
    between a trained map and its randomised counterpart, never the class;
    with the thesis's ``"sample"`` the randomised model's copies would explain
    the *randomised* model's own predictions).

Chapter 12, :func:`more_methods` (:mod:`~apem.studies.more_methods`; a configuration, not a table)
    The configuration re-run with other explanation methods (default
    :data:`MORE_METHODS`) through the whole pipeline, in a store of its own:
    same model, pool and seed, hence the same image draw.
    ``n_misclassified=0`` and ``filter_images=0`` (the chapter uses the
    correct images only); ``n_correct`` may be lowered to fit a time budget,
    which keeps a *subset* of the main configuration's correct images (the
    draw takes the first ``n_correct`` of one seeded permutation of the
    correct pool). :func:`combined_table` joins the two tables on the common
    images.
"""


from apem.studies.common import APEM, SCHEMA, cached_arrays, cached_rows, correct_ids, pick_stage, study_name
from apem.studies.encoding import encoding_shift, encoding_summary
from apem.studies.faithfulness import (
    agreement_table, cost_table, faithfulness_scores, kendall_per_image, mean_scores, per_image_cost,
)
from apem.studies.lrp_rules import (
    VARIANTS as LRP_VARIANTS, apem_by_variant, linear_consistency, lrp_variants, mlp_conservation, table_4_1,
    table_4_1_cells,
)
from apem.studies.more_methods import MORE_METHODS, combined_table, more_methods
from apem.studies.sanity import N_EXAMPLE, cascade_steps, sanity_check, sanity_example_maps, sanity_params
from apem.studies.search_modes import compare_modes

__all__ = [
    "APEM",
    "SCHEMA",
    "cached_arrays",
    "cached_rows",
    "correct_ids",
    "pick_stage",
    "study_name",
    "encoding_shift",
    "encoding_summary",
    "agreement_table",
    "cost_table",
    "faithfulness_scores",
    "kendall_per_image",
    "mean_scores",
    "per_image_cost",
    "LRP_VARIANTS",
    "apem_by_variant",
    "linear_consistency",
    "lrp_variants",
    "mlp_conservation",
    "table_4_1",
    "table_4_1_cells",
    "MORE_METHODS",
    "combined_table",
    "more_methods",
    "N_EXAMPLE",
    "cascade_steps",
    "sanity_check",
    "sanity_example_maps",
    "sanity_params",
    "compare_modes",
]

# Chapter 4's second study: section 4.4's order of stage 3 (sum the channels, then multiply by the image)
from apem.studies.stage_order import stage_order_shift, stage_order_summary  # noqa: E402

__all__ += ["stage_order_shift", "stage_order_summary"]
