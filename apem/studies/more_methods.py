"""Chapter 12: the configuration re-run with other explanation methods, and the joined table."""

from __future__ import annotations

import copy

import pandas as pd

#: Chapter 12's methods and their parameters (Integrated Gradients with 16 Gauss-Legendre steps).
MORE_METHODS = {
    "integrated_gradients": {"n_steps": 16},
    "input_x_gradient": {},
    "guided_backprop": {},
    "gradcam": {},
}


def more_methods(params="default", overrides: dict | None = None, methods: dict | None = None,
                 n_correct: int | None = None, stages=None, shuffles: int | None = None,
                 progress: bool = False, root=None):
    """Results of the configuration ``params`` (+ ``overrides``) with other methods (default :data:`MORE_METHODS`).

    Correct images only (``n_misclassified=0``), no explanation filter
    (``filter_images=0``); ``n_correct`` (at most the configuration's) keeps
    a subset of its correct images; ``stages`` and ``shuffles`` (None: the
    configuration's) let a chapter drop the shuffled baseline where it does
    not need it. Everything else -- model, pool, seed, search, batch size --
    is the configuration's.
    """
    from apem.config import ALL, load_config
    from apem.run import results

    over = dict(overrides or {})
    base = load_config(params, **over)
    over.update(methods=copy.deepcopy(methods if methods is not None else MORE_METHODS),
                n_misclassified=0, filter_images=0)
    if n_correct is None:
        over["n_correct"] = base.n_correct
    else:  # the first n_correct of the correct group's permutation: a subset of the base's draw, "all" included
        over["n_correct"] = int(n_correct) if base.n_correct == ALL else min(int(n_correct), base.n_correct)
    if stages is not None:
        over["stages"] = tuple(stages)
    if shuffles is not None:
        over["shuffles"] = int(shuffles)
    return results(params, progress=progress, root=root, **over)


def combined_table(main, extra, group: str = "correct") -> pd.DataFrame:
    """The main table's ``group`` rows and the extra methods' rows, on the images both hold.

    Raises ``ValueError`` if an image of ``extra`` is not in ``main`` or the
    two disagree on an image's prediction (they would not be the same draw).
    """
    A = main.table[main.table.group == group]
    B = extra.table[extra.table.group == group]
    a_img = A.drop_duplicates("image_id").set_index("image_id")
    b_img = B.drop_duplicates("image_id").set_index("image_id")
    stray = sorted(set(b_img.index) - set(a_img.index))
    if stray:
        raise ValueError(f"{len(stray)} image(s) of the extra run are not in the main table, e.g. {stray[:3]}")
    common = b_img.index
    if not (a_img.loc[common, "pred"].to_numpy() == b_img.loc[common, "pred"].to_numpy()).all():
        raise ValueError("the two runs disagree on the model's predictions: not the same model/images")
    clash = sorted(set(A.method) & set(B.method))
    if clash:
        B = B[~B.method.isin(clash)]
    out = pd.concat([A[A.image_id.isin(common)], B], ignore_index=True)
    return out

