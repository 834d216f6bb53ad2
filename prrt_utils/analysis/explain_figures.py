"""Chapter 06's figures and what its cells show (paper 3.4, Figures 6-9).

The computations over the stored folds are :class:`prrt_utils.analysis.explain.Explainer`'s; this
module draws what they return and assembles the page's sections: the permutation importances
(:func:`importance_figure`), the UMAP panels (:func:`umap_figure`), the lab gradients
(:func:`lab_gradient_table`), the PET saliency of chosen patients (:func:`saliency_panels`,
:class:`SaliencyPanel`: a static three-plane figure and a kernel-free slice viewer) and the
gradient-magnitude distributions of two PET models with the paper's six distances beside ours
(:func:`gradient_comparison`, :func:`distance_table`). Colours: :data:`prrt_utils.io.figures.PALETTE`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from prrt_utils.analysis.explain import lab_gradient_summary, normalised_magnitude
from prrt_utils.analysis.saliency_stats import distribution_distances
from prrt_utils.io import viewer
from prrt_utils.io.figures import PALETTE

__all__ = [
    "PAPER_GRADIENT_DISTANCES",
    "VIEWER_PET_WINDOW",
    "SaliencyPanel",
    "distance_table",
    "gradient_comparison",
    "gradient_histogram_figure",
    "importance_figure",
    "lab_gradient_table",
    "saliency_figure",
    "saliency_panels",
    "saliency_title",
    "saliency_viewer",
    "slice_viewer",
    "umap_figure",
]


# --------------------------------------------------------------------------- permutation importance (Figure 7)


def importance_figure(summary: pd.DataFrame, names: Mapping[str, str] | None = None) -> Any:
    """Grouped bars: mean drop in AUROC per feature and model, error bars = SE over folds (plotly)."""
    fig = go.Figure()
    for i, (model, s) in enumerate(summary.groupby("model", sort=False)):
        fig.add_trace(go.Bar(x=s["feature"], y=s["mean_drop"], error_y={"type": "data", "array": s["se_folds"]},
                             name=(names or {}).get(model, model), marker_color=PALETTE[i % len(PALETTE)]))
    fig.add_hline(y=0, line_color="grey")
    fig.update_layout(barmode="group", yaxis_title="Drop in AUROC when permuted (mean over folds ± SE)",
                      height=430, legend={"orientation": "h", "y": -0.2}, margin={"t": 30})
    return fig


# --------------------------------------------------------------------------- gradient distances (Figure 8b)


PAPER_GRADIENT_DISTANCES: dict[str, tuple[float, str]] = {
    "Wasserstein distance": (0.090, "9% of range"),
    "Kolmogorov-Smirnov statistic": (0.241, "moderate, p < 0.001"),
    "Jensen-Shannon distance": (0.418, "moderate (a distance: as a divergence it exceeds the 0.27 its Bhattacharyya allows)"),
    "Energy distance": (0.183, "18% of range"),
    "Bhattacharyya distance": (0.207, "moderate"),
    "Histogram overlap": (0.518, "52% overlap"),
}
"""Paper Figure 8(b): PET only vs PET fusion on the real cohort (value, the paper's reading)."""


def distance_table(comparison: Any) -> pd.DataFrame:
    """:meth:`prrt_utils.analysis.saliency_stats.DistributionComparison.to_frame` with the paper's Figure 8(b) values beside.

    Returns
    -------
    DataFrame
        ``metric, value (this cohort), p_value, range, reading, paper (real cohort), paper's reading``.
    """
    out = comparison.to_frame().rename(columns={"value": "value (this cohort)"})
    paper = [next((v for k, v in PAPER_GRADIENT_DISTANCES.items() if m.startswith(k)), (math.nan, "")) for m in out["metric"]]
    out["paper (real cohort)"] = [p[0] for p in paper]
    out["paper's reading"] = [p[1] for p in paper]
    return out


# --------------------------------------------------------------------------- UMAP, gradient histogram, saliency maps (Figures 6, 8a, 9)

def umap_figure(frame: pd.DataFrame, names: Mapping[str, str] | None = None, cols: int = 2) -> Any:
    """One UMAP panel per model, points coloured by class, test patients as crosses (plotly).

    Two panels a row, each title on two lines (name, silhouette): on a book page of about
    700 pixels, three long model names a row ran into each other.
    """
    models = list(dict.fromkeys(frame["model"]))
    rows = max(1, math.ceil(len(models) / cols))
    titles = []
    for m in models:
        sub = frame[frame["model"] == m]
        sil = sub["silhouette"].iloc[0] if "silhouette" in sub else math.nan
        titles.append(f"{(names or {}).get(m, m)}<br>silhouette {sil:.2f}")
    fig = make_subplots(rows=rows, cols=min(cols, len(models)), subplot_titles=titles, vertical_spacing=0.3 / rows,
                        horizontal_spacing=0.06)
    fig.update_annotations(font_size=12)
    style = {0: (PALETTE[0], "PFS > 12 months"), 1: (PALETTE[1], "PFS <= 12 months")}
    for i, m in enumerate(models):
        r, c = i // cols + 1, i % cols + 1
        sub = frame[frame["model"] == m]
        for (y, split), g in sub.groupby(["y_true", "split"]):
            colour, label = style[int(y)]
            fig.add_trace(go.Scatter(x=g["umap_1"], y=g["umap_2"], mode="markers", text=g["patient_id"],
                                     marker={"color": colour, "symbol": "x" if split == "test" else "circle",
                                             "size": 7 if split == "test" else 6, "opacity": 0.8},
                                     name=f"{label}, {split}", legendgroup=f"{y}{split}", showlegend=i == 0,
                                     hovertemplate="%{text}<extra></extra>"), row=r, col=c)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_layout(height=340 * rows, legend={"orientation": "h", "y": -0.08}, margin={"t": 60})
    return fig


def gradient_histogram_figure(hist: pd.DataFrame, names: Mapping[str, str] | None = None) -> Any:
    """Density of normalised gradient magnitudes per model (paper Fig. 8a), log-scaled y (plotly)."""
    fig = go.Figure()
    for i, (model, g) in enumerate(hist.groupby("model", sort=False)):
        centre = (g["bin_left"] + g["bin_right"]) / 2
        fig.add_trace(go.Scatter(x=centre, y=g["density"], mode="lines", line={"shape": "hvh", "color": PALETTE[i % len(PALETTE)]},
                                 name=(names or {}).get(model, model)))
    fig.update_layout(xaxis_title="Normalised gradient magnitude |g| / max|g| (per patient)",
                      yaxis_title="Density", yaxis_type="log", height=400, legend={"orientation": "h", "y": -0.2},
                      margin={"t": 30})
    return fig


def _slices(vol: np.ndarray, at: Sequence[int]) -> list[np.ndarray]:
    d, h, w = at
    # axial (rows anterior->posterior, columns patient right->left: radiological view), coronal, sagittal
    return [vol[d], vol[:, h, :], vol[:, :, w]]


def saliency_figure(pet: np.ndarray, maps: Mapping[str, np.ndarray], at: Sequence[int] | None = None,
                    vmin: float = 0.3, lesions: np.ndarray | None = None, title: str = "") -> Any:
    """PET and saliency overlays in axial, coronal and sagittal planes (paper Fig. 9), matplotlib.

    Parameters
    ----------
    pet : ndarray (D, H, W)
        SUVbw on the model grid (``D`` head -> feet, ``H`` anterior -> posterior,
        ``W`` patient right -> left; 10 mm voxels).
    maps : mapping label -> ndarray (D, H, W)
        Normalised gradient magnitudes in [0, 1], one per model.
    at : (d, h, w), optional
        Slice positions; default the voxel with the largest summed saliency.
    vmin : float
        Saliency below this is transparent (the paper filters at 0.3).
    lesions : ndarray (D, H, W) of bool, optional
        Ground-truth lesion mask, drawn as a cyan outline.

    Returns
    -------
    matplotlib.figure.Figure
        Rows: PET, then one overlay per model; columns: axial, coronal, sagittal.
    """
    if at is None:
        at = np.unravel_index(int(np.argmax(sum(np.asarray(m) for m in maps.values()))), pet.shape)
    hi = float(np.percentile(pet[pet > 0], 99.5)) if (pet > 0).any() else 1.0
    rows = 1 + len(maps)
    fig, axes = plt.subplots(rows, 3, figsize=(9.5, 3.1 * rows), squeeze=False,
                             gridspec_kw={"width_ratios": [pet.shape[2], pet.shape[2], pet.shape[1]]})
    planes = [f"axial (slice {at[0]})", f"coronal (row {at[1]})", f"sagittal (column {at[2]})"]
    pet_sl = _slices(pet, at)
    les_sl = _slices(lesions.astype(float), at) if lesions is not None else [None] * 3
    for j in range(3):
        axes[0, j].imshow(pet_sl[j], cmap="gray_r", vmin=0, vmax=hi, interpolation="nearest")
        axes[0, j].set_title(f"PET SUVbw, {planes[j]}", fontsize=9)
    for i, (label, m) in enumerate(maps.items(), start=1):
        for j, sl in enumerate(_slices(np.asarray(m), at)):
            ax = axes[i, j]
            # PET dimmed (its maximum shows mid-grey) so that the red-to-yellow saliency stands out
            ax.imshow(pet_sl[j], cmap="gray", vmin=0, vmax=2.0 * hi, interpolation="nearest")
            shown = np.ma.masked_less(sl, vmin)
            im = ax.imshow(shown, cmap="autumn", vmin=vmin, vmax=1.0, alpha=0.85, interpolation="nearest")
            if les_sl[j] is not None and les_sl[j].max() > 0:
                ax.contour(les_sl[j], levels=[0.5], colors="cyan", linewidths=0.8)
            ax.set_title(f"{label}, {planes[j].split(' ')[0]}", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[1:, :].ravel().tolist(), shrink=0.6, label="|gradient| / max (>= vmin)")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


#: PET window of the kernel-free saliency viewer: SUVbw 0-10, dark uptake on white, as a
#: nuclear-medicine reader sets it (the static figure above uses each patient's 99.5th percentile).
VIEWER_PET_WINDOW = (0.0, 10.0)


def saliency_viewer(pet: np.ndarray, maps: Mapping[str, np.ndarray], vmin: float = 0.3,
                    lesions: np.ndarray | None = None, title: str = "") -> Any:
    """PET with each model's saliency, to scroll through in the static book (paper Fig. 9, interactive).

    A plotly figure (:func:`prrt_utils.io.viewer.slice_viewer`) that needs no kernel: a slice slider,
    axial / coronal / sagittal buttons and a menu that lays the saliency of one model (or none)
    over the PET, with the true lesions outlined in cyan when ``lesions`` is given.

    Parameters
    ----------
    pet : ndarray (D, H, W)
        SUVbw on the model grid; shown in :data:`VIEWER_PET_WINDOW`.
    maps : mapping label -> ndarray (D, H, W)
        Normalised gradient magnitudes in [0, 1] (:func:`prrt_utils.analysis.explain.normalised_magnitude`), one per model.
    vmin : float
        Saliency below it is not drawn (0.3 as in the paper).
    lesions : ndarray (D, H, W) of bool, optional
        Ground-truth lesion mask (synthetic cohort only).
    """
    lo, hi = VIEWER_PET_WINDOW
    note = (f"PET SUVbw {lo:g}-{hi:g} (dark = high uptake); colour: saliency >= {vmin:g} of the patient's maximum"
            + ("; cyan: true lesions" if lesions is not None else ""))
    text = f"{title}<br><sup>{note}</sup>" if title else note
    return viewer.slice_viewer(pet, maps, window=VIEWER_PET_WINDOW, invert=True, vmin=vmin, outlines=lesions,
                        volume_label="PET (SUVbw)", overlay_label="saliency", title=text)


def slice_viewer(pet: np.ndarray, maps: Mapping[str, np.ndarray], vmin: float = 0.3) -> Any:
    """Interactive slice viewer (ipywidgets): one slider per axis over :func:`saliency_figure`.

    Needs a live kernel; the book shows :func:`saliency_viewer`, which does not.
    """
    import ipywidgets as widgets  # lazy: only a live kernel has widgets; the book and the tests never call this

    d, h, w = pet.shape

    def draw(axial: int, coronal: int, sagittal: int, threshold: float) -> None:
        fig = saliency_figure(pet, maps, (axial, coronal, sagittal), threshold)
        plt.show()
        plt.close(fig)

    peak = np.unravel_index(int(np.argmax(sum(np.asarray(m) for m in maps.values()))), pet.shape)
    return widgets.interactive(
        draw,
        axial=widgets.IntSlider(int(peak[0]), 0, d - 1, description="axial"),
        coronal=widgets.IntSlider(int(peak[1]), 0, h - 1, description="coronal"),
        sagittal=widgets.IntSlider(int(peak[2]), 0, w - 1, description="sagittal"),
        threshold=widgets.FloatSlider(vmin, min=0.0, max=0.95, step=0.05, description="vmin"),
    )


# --------------------------------------------------------------------------- chapter 06: what its cells show


def lab_gradient_table(explainer: Any, fusion: Sequence[str]) -> pd.DataFrame | None:
    """Mean absolute and mean signed fusion-layer gradient per laboratory value (rows) and model (columns).

    Parameters
    ----------
    explainer : Explainer
        Anything with :meth:`prrt_utils.analysis.explain.Explainer.lab_gradients`.
    fusion : sequence of str
        The fusion models; none gives ``None`` (nothing to show).

    Returns
    -------
    DataFrame or None
        :func:`prrt_utils.analysis.explain.lab_gradient_summary` pivoted to ``feature`` x (``mean_abs_gradient`` / ``mean_gradient``, model).
    """
    if not fusion:
        return None
    gradients = lab_gradient_summary(explainer.lab_gradients(list(fusion)))
    return gradients.pivot(index="feature", columns="model", values=["mean_abs_gradient", "mean_gradient"]).round(3)


@dataclasses.dataclass(frozen=True)
class SaliencyPanel:
    """One patient's PET and each compared model's normalised saliency, ready to draw (chapter 06).

    Attributes
    ----------
    patient_id : str
    pet : ndarray
        ``(D, H, W)`` PET as the networks see it.
    maps : dict
        Display name -> :func:`prrt_utils.analysis.explain.normalised_magnitude` of that model's saliency, ``(D, H, W)``.
    lesions : ndarray or None
        Boolean lesion mask on the same grid (synthetic cohort), else ``None``.
    title : str
        Patient, true class and each model's predicted probability of short PFS.
    vmin : float
        Saliency below this is not drawn.
    """

    patient_id: str
    pet: np.ndarray
    maps: dict[str, np.ndarray]
    lesions: np.ndarray | None
    title: str
    vmin: float = 0.3

    def show(self) -> None:
        """The static three-plane figure (matplotlib) and, below it, the page's slice-by-slice viewer."""
        fig = saliency_figure(self.pet, self.maps, vmin=self.vmin, lesions=self.lesions, title=self.title)
        plt.show()
        plt.close(fig)
        saliency_viewer(self.pet, self.maps, vmin=self.vmin, lesions=self.lesions, title=self.title).show()

    def live_viewer(self) -> Any:
        """The ipywidgets viewer moving all three planes at once (needs a live kernel)."""
        return slice_viewer(self.pet, self.maps, self.vmin)


def saliency_title(patient_id: str, y: int, probs: Mapping[str, float], names: Mapping[str, str] | None = None) -> str:
    """``"P001: short PFS; P(short) PET only 0.71, PET fusion 0.64"``: the heading of a saliency panel."""
    names = names or {}
    return (f"{patient_id}: {'short' if y else 'long'} PFS; P(short) "
            + ", ".join(f"{names.get(m, m)} {p:.2f}" for m, p in probs.items()))


def saliency_panels(explainer: Any, predictions: pd.DataFrame, compare: Sequence[str], patients: Sequence[str],
                    repeat: int, names: Mapping[str, str] | None = None,
                    with_lesions: bool = False) -> tuple[list[SaliencyPanel], list[str]]:
    """The saliency panels of chapter 06 and, with lesion outlines, the label-geometry check of each patient.

    Parameters
    ----------
    explainer : Explainer
        Supplies ``data``, ``saliency``, ``labels_on_grid``, ``alignment_check`` and ``config.vmin``.
    predictions : DataFrame
        Stored out-of-fold predictions (``model, repeat, patient_id, prob``).
    compare : sequence of str
        PET models whose saliency is drawn; none gives no panel.
    patients : sequence of str
        Patients to draw.
    repeat : int
        The repeat whose predictions the titles quote.
    names : mapping, optional
        Display names.
    with_lesions : bool
        Outline the true lesions (synthetic cohort: ground-truth label maps exist).

    Returns
    -------
    panels : list of SaliencyPanel
        One per patient, in the order given.
    checks : list of str
        ``"<id>: PET vs resampled true SUV, Pearson r = ..."`` per patient when ``with_lesions``.
    """
    names = names or {}
    patients = list(patients) if compare else []
    lesion_maps: dict[str, np.ndarray] = {}
    checks: list[str] = []
    if with_lesions and patients:
        lab = explainer.labels_on_grid(patients)
        lesion_code = {v: k for k, v in lab["names"].items()}["lesion"]
        lesion_maps = {p: lab["labels"][i] == lesion_code for i, p in enumerate(patients)}
        checks = [f"{p}: PET vs resampled true SUV, Pearson r = {explainer.alignment_check(p):.3f} "
                  "(label geometry check)" for p in patients]
    volumes = explainer.data
    panels = []
    for pid in patients:
        row = volumes.rows([pid])[0]
        prob = predictions[(predictions["repeat"] == repeat) & (predictions["patient_id"] == pid)].set_index("model")["prob"]
        panels.append(SaliencyPanel(
            patient_id=pid, pet=volumes.volumes["pet"][row, 0],
            maps={names.get(m, m): normalised_magnitude(explainer.saliency(m, [pid]))[0] for m in compare},
            lesions=lesion_maps.get(pid), vmin=explainer.config.vmin,
            title=saliency_title(pid, int(volumes.y[row]), {m: float(prob[m]) for m in compare}, names)))
    return panels, checks


def gradient_comparison(explainer: Any, compare: Sequence[str], names: Mapping[str, str] | None = None) -> tuple[Any, ...]:
    """Chapter 06's gradient-magnitude section: histogram, sizes and the six distances of two PET models.

    Returns
    -------
    tuple
        ``(figure, sentence, distance table)`` for exactly two models in ``compare``; otherwise one
        sentence saying two are needed.
    """
    if len(compare) != 2:
        return ("Two PET models are needed for this comparison (parameter `compare`).",)
    names = names or {}
    cfg = explainer.config
    gd = explainer.gradient_distributions(list(compare))
    a, b = compare
    comparison = distribution_distances(gd["samples"][a], gd["samples"][b], bins=cfg.bins, range=(0.0, 1.0))
    return (gradient_histogram_figure(gd["hist"], names),
            f"{names.get(a, a)} vs {names.get(b, b)}, {gd['n_patients']} test patients of repeat {cfg.repeat}; "
            f"{comparison.n_a:,} and {comparison.n_b:,} voxels in the distances",
            distance_table(comparison))
