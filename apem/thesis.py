"""The numbers the thesis reports, cited so every chapter can show them beside ours.

Source: D. N. G. do Valle, *Assessing the reliability of visual explanations of
deep models through adversarial perturbation*, M.Sc. thesis, UFMG, 2019.
VGG-16, 5,000 correctly classified (and 5,000 misclassified) ImageNet
validation images. These are quotations of published results, used only as
the reference column of our tables; nothing we compute is read from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

CITATION = "Valle (2019), UFMG M.Sc. thesis"
METHOD_LABELS = {
    "gradient": "Gradient",
    "smoothgrad": "SmoothGrad",
    "lrp_epsilon": "LRP-ε",
    "lrp": "LRP",
    "integrated_gradients": "Integrated Gradients",
    "input_x_gradient": "Input × Gradient",
    "guided_backprop": "Guided Backprop",
    "gradcam": "Grad-CAM",
}
#: The thesis's three methods (section 4.2) with the parameters it used; the default configuration's methods.
THESIS_METHOD_PARAMS = {"gradient": {}, "smoothgrad": {"n": 100, "sigma": 0.2}, "lrp_epsilon": {"epsilon": 1.0}}
THESIS_METHODS = tuple(THESIS_METHOD_PARAMS)
#: The thesis's order of the three methods by APEM (Tables 4.2 and 4.4, by the mean and the median alike):
#: each beats every one after it. The one place the book writes this order.
RANKING = ("gradient", "lrp_epsilon", "smoothgrad")

# Table 4.1 (section 4.2.2): properties of the LRP variants, as the thesis states them (not measured there).
TABLE_4_1 = pd.DataFrame(
    {
        "property": ["numerically stable", "consistent with linear mapping", "conserves relevance"],
        "naive": ["no", "yes", "yes"],  # epsilon = 0
        "epsilon": ["yes", "yes", "no"],
        "alpha_beta": ["yes", "no", "yes"],  # the thesis's "beta-variant"
    }
)

# Table 4.4 (stages 1, 2, 3); its stage-3 column is Table 4.2.
TABLE_4_4 = pd.DataFrame(
    {
        "method": ["gradient"] * 3 + ["smoothgrad"] * 3 + ["lrp_epsilon"] * 3,
        "stage": [1, 2, 3] * 3,
        "mean": [231.76, 176.86, 127.79, 93.40, 74.61, 44.38, 101.65, 93.93, 66.07],
        "median": [137.00, 105.00, 81.00, 41.00, 28.00, 16.00, 59.0, 51.00, 41.00],
    }
)
TABLE_4_2 = TABLE_4_4[TABLE_4_4.stage == 3].drop(columns="stage").reset_index(drop=True)

# Table 4.3: examples where the usual winner loses (eps-minus, eps-plus, APEM).
TABLE_4_3 = pd.DataFrame(
    [
        ("a", "Image 1", "gradient", 2, 4, 2), ("a", "Image 1", "lrp_epsilon", 1, 4, 3),
        ("a", "Image 2", "gradient", 2, 3, 1), ("a", "Image 2", "lrp_epsilon", 1, 3, 2),
        ("a", "Image 3", "gradient", 2, 6, 4), ("a", "Image 3", "lrp_epsilon", 1, 6, 5),
        ("b", "Image 4", "smoothgrad", 275, 444, 169), ("b", "Image 4", "lrp_epsilon", 297, 433, 136),
        ("b", "Image 5", "smoothgrad", 392, 470, 78), ("b", "Image 5", "lrp_epsilon", 455, 467, 12),
        ("b", "Image 6", "smoothgrad", 458, 515, 57), ("b", "Image 6", "lrp_epsilon", 482, 510, 28),
    ],
    columns=["part", "image", "method", "eps_minus", "eps_plus", "apem"],
)

# Table 5.1: APEM_norm per method and stage.
TABLE_5_1 = pd.DataFrame(
    {
        "method": ["gradient"] * 3 + ["smoothgrad"] * 3 + ["lrp_epsilon"] * 3,
        "stage": [1, 2, 3] * 3,
        "apem_norm": [1.11, 0.85, 0.66, 0.39, 0.30, 0.21, 0.53, 0.48, 0.40],
    }
)

# Table 5.2: APEM (stage 3) for correctly classified and misclassified images.
TABLE_5_2 = pd.DataFrame(
    {
        "method": ["gradient", "smoothgrad", "lrp_epsilon"],
        "mean_correct": [127.79, 44.38, 66.07],
        "mean_misclassified": [43.58, 12.65, 20.34],
        "median_correct": [81.00, 16.00, 41.00],
        "median_misclassified": [25.00, 4.00, 11.00],
    }
)

# Table 5.3: Spearman correlation with the loss (dagger = significant at p < 0.01).
TABLE_5_3 = pd.DataFrame(
    {
        "row": ["gradient", "smoothgrad", "lrp_epsilon", "confidence"],
        "correct": [-0.827, -0.470, -0.602, -1.000],
        "misclassified": [0.069, -0.025, 0.001, -0.121],
        "all": [-0.543, -0.349, -0.446, -0.697],
        "significant_correct": [True, True, True, True],
        "significant_misclassified": [True, False, False, True],
        "significant_all": [True, True, True, True],
    }
)


def label(method: str) -> str:
    """A method's display name."""
    return METHOD_LABELS.get(method, method)


# ----------------------------------------------------------------------------- the thesis's statements


@dataclass(frozen=True)
class Statement:
    """One quantitative statement of the thesis's chapters 3-6, and where the book decides it.

    ``key`` is what a chapter's claim names in its ``ref`` (:class:`apem.claims.Claim`); ``chapter`` is the
    book chapter that declares that claim, or None with ``reason`` saying why no data of ours can test it.
    ``text`` paraphrases the thesis (its section ``section``) as closely as a test can state it.
    """

    key: str
    section: str
    text: str
    chapter: int | None
    reason: str = ""

    def __post_init__(self):
        if (self.chapter is None) == (not self.reason):
            raise ValueError(f"{self.key}: a statement has a chapter that tests it or a reason why none can")


_NO_MASKS = ("it is about where objects are, and the images come with class labels only: no object boxes or "
             "segmentations to test it against")

#: Every quantitative statement of the thesis's chapters 3-6, in the thesis's order. The book's coverage page
#: (:mod:`apem.book.coverage`) shows each with the verdicts of the claims that test it on this build; a test
#: (tests/test_coverage.py) checks that each one is tested by a chapter's claim or says why it cannot be.
STATEMENTS = (
    Statement("3.1-gap", "3.1", "Perturbing along the relevance map flips the decision with a smaller step than "
              "along the irrelevance map: ε⁻ < ε⁺, so APEM > 0, for every method", 3),
    Statement("3.2-filter-keeps", "3.2, Alg. 2", "The explanation filter zeroes the least relevant values "
              "without lowering the map's APEM", 5),
    Statement("3.3-imperceptible", "3.3, Fig. 3.3", "The perturbation that flips the decision is hardly "
              "noticeable: the model misclassifies with low ε", 3),
    Statement("4.2-smoothgrad-less-noisy", "4.2.1", "SmoothGrad's averaging gives less noisy maps than the "
              "Gradient", 2),
    Statement("4.2-table-4.1", "4.2.2, Table 4.1", "The LRP variants have the properties of Table 4.1 "
              "(numerical stability, consistency with linear mappings, conservation)", 2),
    Statement("4.3-maps-similar", "4.3, Fig. 4.1", "The methods' maps present their higher values in close "
              "regions", 2),
    Statement("4.3-focus-differs", "4.3, Fig. 4.1", "Each method focuses on a different part of the object",
              None, _NO_MASKS),
    Statement("4.3-gradient-over-lrp", "4.3, Table 4.2", "The Gradient has a higher APEM than LRP-ε", 3),
    Statement("4.3-gradient-over-smoothgrad", "4.3, Table 4.2", "The Gradient has a higher APEM than "
              "SmoothGrad", 3),
    Statement("4.3-lrp-over-smoothgrad", "4.3, Table 4.2", "SmoothGrad, though built on the gradient, has a "
              "lower APEM than LRP-ε", 3),
    Statement("4.3-eps-minus-order", "4.3, Fig. 4.3", "The methods with the better APEM also have the lower "
              "ε⁻ (every pair of the thesis's order)", 3),
    Statement("4.3-eps-plus-order", "4.3, Fig. 4.3", "The methods with the better APEM also have the higher "
              "ε⁺ (every pair of the thesis's order)", 3),
    Statement("4.3-pairwise", "4.3, Fig. 4.4", "The method with the higher APEM is also higher image by image "
              "(every pair)", 3),
    Statement("4.3-gradient-below-lrp-rare", "4.3", "The Gradient scoring below LRP-ε is rare", 3),
    Statement("4.3a-small-difference", "4.3, Table 4.3a", "Where LRP-ε beats the Gradient, the APEMs differ by "
              "at most 1 (on most such images: the thesis shows three)", 3),
    Statement("4.3a-eps-plus-equal", "4.3, Table 4.3a", "Where LRP-ε beats the Gradient, only ε⁻ differs: ε⁺ "
              "is equal (on most such images)", 3),
    Statement("4.3a-low-apem", "4.3, Table 4.3a", "Where LRP-ε beats the Gradient, APEM is very low", 3),
    Statement("4.3a-small-object", "4.3, Fig. 4.5", "Those images are explained by a concise small object "
              "centred in the image", None, _NO_MASKS),
    Statement("4.3b-both-eps", "4.3, Table 4.3b", "Where SmoothGrad beats LRP-ε, it beats it on both ε⁻ and ε⁺ "
              "(on most such images)", 3),
    Statement("4.3b-regions", "4.3, Fig. 4.5", "There SmoothGrad marks whole regions and LRP-ε their contours",
              None, _NO_MASKS),
    Statement("4.4-stages-lower", "4.4, Table 4.4", "Each visualisation step lowers APEM, for every method", 4),
    Statement("4.4-most-changed-loses-most", "4.4", "The methods the processing changes most lose the most "
              "APEM", 4),
    Statement("4.4-eps-follow-apem", "4.4, Fig. 4.7", "Across the stages, a higher APEM goes with a lower ε⁻ "
              "and a higher ε⁺", 4),
    Statement("4.4-best-wins-each-stage", "4.4, Fig. 4.7", "At every stage the method with the greatest APEM "
              "beats the others image by image", 4),
    Statement("4.4-gradient-every-image", "4.4", "Each simplification lowers the Gradient's APEM on every image",
              4),
    Statement("4.4-others-sometimes-gain", "4.4", "For SmoothGrad and LRP-ε, a simplification raises APEM in "
              "uncommon cases", 4),
    Statement("4.4-gains-on-low-apem", "4.4", "Those cases are images with a low APEM", 4),
    Statement("4.5-filter-keeps", "4.5", "Filtered maps keep their APEM while they lose noise", 5),
    Statement("4.5-filter-removes", "4.5, Fig. 4.8", "The filter removes a large part of the map", 5),
    Statement("4.5-filter-context", "4.5, Fig. 4.8", "What the filter removes is context outside the main "
              "object", None, _NO_MASKS),
    Statement("4.5-every-method", "4.5, Fig. 4.9", "The filter works for every method and stage (tested per "
              "method, each image's stages pooled)", 5),
    Statement("5.1-missing-region", "5.1", "A map that misses a relevant region lowers ε⁺ (recall)", 0),
    Statement("5.1-extra-region", "5.1", "A map that marks an irrelevant region raises ε⁻ while ε⁺ is "
              "not lowered, so its APEM is lower (precision)", 0),
    Statement("5.1-lrp-simplified", "5.1", "LRP-ε's maps are more simplified than SmoothGrad's", 6),
    Statement("5.1-eps-plus-both-ways", "5.1, Fig. 5.1", "Where LRP-ε has the better ε⁻, its ε⁺ is sometimes "
              "better and sometimes worse than SmoothGrad's", 6),
    Statement("5.1-eps-minus-resemble", "5.1", "LRP-ε's and SmoothGrad's ε⁻ distributions resemble each other "
              "(tested on the median of the per-image difference)",
              6),
    Statement("5.2-shuffle-zero", "5.2, Fig. 5.2", "Shuffled maps score around 0, median 0, for every method "
              "and stage", 7),
    Statement("5.2-shuffle-equal", "5.2", "A shuffled map's ε-shuffle⁻ and ε-shuffle⁺ are equal or very close",
              7),
    Statement("5.2-shuffle-between", "5.2", "A shuffled map's ε lies between the map's own: ε⁻ ≤ ε-shuffle⁻ and "
              "ε-shuffle⁺ ≤ ε⁺",
              7),
    Statement("5.2-norm-order", "5.2, Table 5.1", "APEM_norm orders the methods as APEM does, at every stage",
              7),
    Statement("5.2-norm-falls", "5.2, Table 5.1", "APEM_norm falls with each visualisation stage, for every "
              "method", 7),
    Statement("5.3-apem-lower", "5.3, Table 5.2", "APEM is lower on misclassified images, for every method", 8),
    Statement("5.3-eps-lower", "5.3", "ε⁻ and ε⁺ are each lower on misclassified images", 8),
    Statement("5.3-fall-size", "5.3, Table 5.2", "APEM falls by about two thirds on misclassified images "
              "(66-71% by the mean in Table 5.2)", 8),
    Statement("5.3-ranking-kept", "5.3, Table 5.2", "The methods keep their ranking on misclassified images", 8),
    Statement("5.3-less-confident", "5.3", "The model is less certain when it predicts a wrong label", 8),
    Statement("5.3-similar-distributions", "5.3, Fig. 5.3", "APEM's distribution on misclassified images is "
              "similar to that on correct ones", 8),
    Statement("5.4-correct-negative", "5.4, Table 5.3", "On correct images APEM correlates negatively with the "
              "loss, for every method", 9),
    Statement("5.4-all-negative", "5.4, Table 5.3", "On all images APEM correlates negatively with the loss, "
              "for every method", 9),
    Statement("5.4-misclassified-vanishes", "5.4, Table 5.3", "On misclassified images the correlation "
              "virtually vanishes", 9),
    Statement("5.4-best-strongest", "5.4", "The method with the greater APEM has the stronger correlation", 9),
    Statement("5.4-confidence", "5.4, Table 5.3", "The model's confidence correlates negatively with the loss "
              "(-1 on correct images)", 9),
    Statement("6-random-zero", "6", "APEM is zero for random maps", 7),
    Statement("6-drastic-fall", "6", "APEM drastically falls when the model misclassifies", 8),
    Statement("6-reliable-output", "6", "APEM can tell whether a model's output is reliable", 8),
)


def statement(key: str) -> Statement:
    """The thesis statement with this key (``KeyError`` with the known keys otherwise)."""
    for s in STATEMENTS:
        if s.key == key:
            return s
    raise KeyError(f"{key!r} is not a thesis statement; known: {', '.join(s.key for s in STATEMENTS)}")
