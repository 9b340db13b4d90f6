"""The numbers the thesis reports, cited so every chapter can show them beside ours.

Source: D. N. G. do Valle, *Assessing the reliability of visual explanations of
deep models through adversarial perturbation*, M.Sc. thesis, UFMG, 2019.
VGG-16, 5,000 correctly classified (and 5,000 misclassified) ImageNet
validation images. These are quotations of published results, used only as
the reference column of our tables; nothing we compute is read from here.
"""

from __future__ import annotations

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
