"""Chapter 2: the explanation methods, how much their maps agree, and the LRP variants (Table 4.1)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import torch

from apem import claims
from apem import stats, thesis
from apem.book import display
from apem.book.display import method_order, show_figure, show_markdown

#: the thesis's methods whose noise the SmoothGrad claim compares
NOISY, SMOOTH = "gradient", "smoothgrad"


def total_variation(m: torch.Tensor) -> np.ndarray:
    """Per map: mean absolute difference between vertical neighbours plus that between horizontal ones."""
    dv = (m[..., 1:, :] - m[..., :-1, :]).abs().mean((1, 2, 3))
    dh = (m[..., :, 1:] - m[..., :, :-1]).abs().mean((1, 2, 3))
    return (dv + dh).numpy()


class Page:
    """The results of a configuration as chapter 2 shows them."""

    def __init__(self, params="default", overrides=None, alpha: float = claims.ALPHA, lrp_images: int = 8):
        from apem.run import results

        self.res = results(params, progress=False, **dict(overrides or {}))
        self.cfg, T = self.res.cfg, self.res.table
        self.stage = 3 if 3 in self.cfg.stages else max(self.cfg.stages)
        self.C = T[(T.group == "correct") & (T.stage == self.stage)]
        display.require(len(self.C) > 0, "no correctly classified image in this configuration", "-p n_correct 4")
        self.methods = method_order(self.C)
        self.ids = list(self.C.image_id.unique())
        self.alpha, self.lrp_images = alpha, lrp_images
        self._maps = self._sim = self._lrp = None

    def setting(self) -> None:
        show_markdown(f"**Setting.** {self.cfg.model}, {len(self.ids)} correctly classified images, stage {self.stage}; "
                      "methods and parameters: " + "; ".join(f"{thesis.label(m)} {p or '(none)'}"
                                                             for m, p in self.cfg.methods.items()) + ".")

    # ------------------------------------------------------------------ maps
    def maps(self) -> dict:
        if self._maps is None:
            self._maps = {m: torch.stack([self.res.map(i, m, self.stage) for i in self.ids]) for m in self.methods}
        return self._maps

    def figure(self, n_images: int = 5) -> None:
        from apem.figures import plots

        show = self.ids[:n_images]
        fig = plots.plot_method_grid(self.res.image_tensors(show), {m: self.maps()[m][:len(show)] for m in self.methods},
                                     class_names=[self.C[self.C.image_id == i].label_name.iloc[0] for i in show])
        show_figure(fig)

    # ------------------------------------------------------------------ agreement
    def similarity(self) -> pd.DataFrame:
        """Per image and pair of methods: Spearman's rho of the map values and SSIM."""
        from apem.randomisation import map_similarity

        if self._sim is None:
            parts = []
            for a, b in itertools.combinations(self.methods, 2):
                s = map_similarity(self.maps()[a], self.maps()[b]).assign(a=a, b=b, image_id=self.ids)
                parts.append(s)
            self._sim = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
                columns=["a", "b", "image_id", "spearman", "ssim"])
        return self._sim

    def agreement(self) -> pd.DataFrame:
        """Per pair of methods: median [distribution-free 95% interval] of each measure over images."""
        from scipy import stats as sps

        rows = []
        for (a, b), g in self.similarity().groupby(["a", "b"], sort=False):
            row = {"pair": f"{thesis.label(a)} – {thesis.label(b)}", "images": int(g.spearman.notna().sum())}
            for col in ("spearman", "ssim"):
                v = g[col].dropna().to_numpy(float)
                if v.size == 0:
                    row[col] = "–"
                    continue
                med = float(np.median(v))
                ci = sps.quantile_test(v, q=med).confidence_interval(1 - self.alpha)
                rng = f" [{claims.fmt(float(ci.low))}, {claims.fmt(float(ci.high))}]" if np.isfinite(ci.low) and np.isfinite(ci.high) else ""
                row[col] = claims.fmt(med) + rng
            rows.append(row)
        return pd.DataFrame(rows).set_index("pair").rename(columns={"spearman": "Spearman ρ, median", "ssim": "SSIM, median"})

    def noise(self) -> pd.DataFrame:
        """Total variation per method: median, mean, min, max over images."""
        tv = self.total_variation()
        out = pd.DataFrame({"median": tv.median(), "mean": tv.mean(), "min": tv.min(), "max": tv.max()})
        out.index = out.index.map(thesis.label)
        return out.map(lambda v: f"{v:.4f}")

    def total_variation(self) -> pd.DataFrame:
        return pd.DataFrame({m: total_variation(self.maps()[m]) for m in self.methods}, index=self.ids)

    # ------------------------------------------------------------------ Table 4.1
    @staticmethod
    def thesis_table_4_1() -> pd.DataFrame:
        """The thesis's Table 4.1 as it states it (yes/no per property and variant)."""
        return thesis.TABLE_4_1.set_index("property")

    def lrp(self) -> pd.DataFrame:
        from apem.studies import lrp_rules

        if self._lrp is None:
            self._lrp = lrp_rules.lrp_variants(self.res, n_images=self.lrp_images)
        return self._lrp

    def lrp_rows(self) -> pd.DataFrame:
        cols = ["image_id", "variant", "finite", "finite_perturbed", "rel_change", "conservation_err",
                "eps_minus", "eps_plus", "apem", "censored_minus", "censored_plus"]
        d = self.lrp()[[c for c in cols if c in self.lrp()]].copy()
        for c in ("rel_change", "conservation_err"):
            d[c] = d[c].map(lambda v: f"{v:.3g}" if np.isfinite(v) else "non-finite")
        for c in ("eps_minus", "eps_plus", "apem"):  # undefined where the map is not finite: "–", never nan
            if c in d:
                d[c] = d[c].map(lambda v: f"{v:.0f}" if np.isfinite(v) else "–")
        return d.set_index(["image_id", "variant"])

    def table_4_1(self) -> pd.DataFrame:
        from apem.studies import lrp_rules

        return lrp_rules.table_4_1_cells(self._table41())

    def _table41(self) -> pd.DataFrame:
        from apem.studies import lrp_rules

        return lrp_rules.table_4_1(self.lrp())

    def lrp_apem(self) -> pd.DataFrame:
        """APEM per LRP variant with censoring in view."""
        from apem.studies.lrp_rules import VARIANT_LABELS

        S = stats.summary_table(self.lrp(), by="variant", ci=False)
        view = display.summary_view(S)
        view.index = [VARIANT_LABELS.get(v, v) for v in view.index]
        return view

    # ------------------------------------------------------------------ claims
    def claims(self) -> claims.Claims:
        sim = self.similarity()
        pairs = [claims.Location(f"{thesis.label(a)} and {thesis.label(b)}: positive rank correlation", values=
                            g.set_index("image_id").spearman, threshold=0.0, what="Spearman ρ")
                 for (a, b), g in sim.groupby(["a", "b"], sort=False)]
        out = [claims.AllOf("The methods' maps point to similar regions (for every pair of methods, the per-image rank "
                       "correlation of the maps is above 0)", of=pairs, applicable=len(pairs) > 0,
                       reason="fewer than two methods")]
        tv = self.total_variation()
        have = {NOISY, SMOOTH} <= set(self.methods)
        out.append(claims.Paired("SmoothGrad's maps are less noisy than the Gradient's (lower total variation)",
                            a=tv[NOISY] if have else None, b=tv[SMOOTH] if have else None,
                            names=("Gradient", "SmoothGrad"), digits=4, applicable=have,
                            reason="the configuration lacks the Gradient or SmoothGrad"))
        t41 = self._table41()
        t41 = t41[t41.thesis.notna() & (t41.property != "conserves relevance (model, biases kept)")]
        out.append(claims.Invariant("Table 4.1: the LRP variants have the properties the thesis lists", n=len(t41),
                               violations=int((~t41.agrees.astype(bool)).sum()), what="cells of Table 4.1",
                               basis="each cell's yes/no from a threshold declared in apem/studies/lrp_rules.py, "
                                     "measured on the images for stability and in closed form for the other two"))
        return claims.Claims(out, title="Did the claims hold on our model?", alpha=self.alpha)

    def verdicts(self) -> None:
        t = self._table41()
        model = t[t.property == "conserves relevance (model, biases kept)"]
        note = ("On our model, whose folded batch normalisations carry biases, no variant conserves relevance "
                f"(median error at least {claims.fmt(float(model.value.min()))}), which the thesis's table does not "
                "consider.") if len(model) and not model.ours.eq("yes").any() else ""
        self.claims().show(model=note)

