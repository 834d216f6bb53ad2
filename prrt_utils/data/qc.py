"""Chapter 02's quality control of the preprocessed volumes: the harmonisation summary,
the grid table, QC images and figures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prrt_utils.data.preprocess import PreprocessConfig, load_volumes
from prrt_utils.io import store
from prrt_utils.io.figures import PALETTE
from prrt_utils.io.images import InputError
from prrt_utils.io.loading import load_patient
from prrt_utils.io.viewer import image_browser, window_uint8

__all__ = [
    "HarmonisationSummary",
    "describe_grid_mm",
    "grid_table",
    "harmonisation_summary",
    "histogram_figure",
    "qc_browser",
    "qc_figure",
    "qc_images",
]


# ---------------------------------------------------------------------------
# For the book: harmonisation summaries, grid table and QC figures
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class HarmonisationSummary:
    """Intensities before and after harmonisation, per patient and modality.

    Attributes
    ----------
    histograms : pd.DataFrame
        ``patient_id, modality, stage (before|after), quantity, bin_left, bin_right, fraction``;
        bins are shared by all patients of one quantity.
    stats : pd.DataFrame
        ``patient_id, modality, stage, quantity, p01, median, p99`` (PET over voxels > 0).
    """

    histograms: pd.DataFrame
    stats: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        return self.stats


_QUANTITIES = {
    ("CT", "before"): "CT stored value",
    ("CT", "after"): "HU",
    ("PT", "before"): "PET Bq/ml",
    ("PT", "after"): "SUVbw",
}


def harmonisation_summary(
    imaging_dir: str | Path, patient_ids: Sequence[str], *, bins: int = 60
) -> HarmonisationSummary:
    """Histograms of CT stored values vs HU and PET Bq/ml vs SUVbw for a few patients.

    Before harmonisation the CT histograms of different series are shifted and
    stretched by their RescaleIntercept/Slope and the PET histograms scaled by
    dose and weight; after it they should line up. PET histograms use voxels
    > 0 only. Patients whose images cannot be read are left out.
    """
    samples: list[tuple[str, str, str, np.ndarray]] = []
    for pid in patient_ids:
        try:
            im = load_patient(store.child(imaging_dir, pid), pid, keep_raw=True)
        except InputError:
            continue
        for vol in (im.ct, im.pet):
            raw = vol.raw if vol.raw is not None else vol.array
            for stage, values in (("before", raw), ("after", vol.array)):
                v = values.ravel()
                if vol.modality == "PT":
                    v = v[v > 0]
                samples.append((pid, vol.modality, stage, v))
    hist_rows, stat_rows = [], []
    for (modality, stage), quantity in _QUANTITIES.items():
        group = [s for s in samples if s[1] == modality and s[2] == stage]
        if not group:
            continue
        pooled = np.concatenate([g[3] for g in group])
        lo, hi = np.percentile(pooled, [0.5, 99.5]) if pooled.size else (0.0, 1.0)
        edges = np.linspace(float(lo), float(hi) if hi > lo else float(lo) + 1.0, bins + 1)
        for pid, _, _, v in group:
            counts, _ = np.histogram(np.clip(v, edges[0], edges[-1]), edges)
            frac = counts / max(int(counts.sum()), 1)
            hist_rows += [
                {
                    "patient_id": pid,
                    "modality": modality,
                    "stage": stage,
                    "quantity": quantity,
                    "bin_left": edges[i],
                    "bin_right": edges[i + 1],
                    "fraction": frac[i],
                }
                for i in range(bins)
            ]
            p01, med, p99 = np.percentile(v, [1, 50, 99]) if v.size else (np.nan,) * 3
            stat_rows.append(
                {
                    "patient_id": pid,
                    "modality": modality,
                    "stage": stage,
                    "quantity": quantity,
                    "p01": float(p01),
                    "median": float(med),
                    "p99": float(p99),
                }
            )
    return HarmonisationSummary(pd.DataFrame(hist_rows), pd.DataFrame(stat_rows))


def histogram_figure(summary: HarmonisationSummary) -> Any:
    """Plotly figure: 2 x 2 histograms (CT stored / HU, PET Bq/ml / SUVbw), one line per patient."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    order = list(_QUANTITIES.items())
    fig = make_subplots(rows=2, cols=2, subplot_titles=[f"{q} ({s} harmonisation)" for (_, s), q in order])
    colours = {}
    h = summary.histograms
    for n, ((modality, stage), quantity) in enumerate(order):
        part = h[(h["modality"] == modality) & (h["stage"] == stage)]
        for pid, g in part.groupby("patient_id", sort=True):
            colour = colours.setdefault(pid, PALETTE[len(colours) % len(PALETTE)])
            fig.add_trace(
                go.Scatter(
                    x=(g["bin_left"] + g["bin_right"]) / 2,
                    y=g["fraction"],
                    mode="lines",
                    name=pid,
                    line={"color": colour},
                    legendgroup=pid,
                    showlegend=n == 0,
                ),
                row=n // 2 + 1,
                col=n % 2 + 1,
            )
        fig.update_xaxes(title_text=quantity, row=n // 2 + 1, col=n % 2 + 1)
    fig.update_yaxes(title_text="fraction of voxels")
    fig.update_layout(height=650, title="Intensities before and after harmonisation")
    return fig


def grid_table(cfg: PreprocessConfig) -> pd.DataFrame:
    """The target grid in words: one row per array axis (voxels, spacing, extent, direction)."""
    directions = ("head -> feet (LPS -z)", "anterior -> posterior (LPS +y)", "patient right -> left (LPS +x)")
    return pd.DataFrame(
        {
            "axis": ["D (cranio-caudal)", "H (antero-posterior)", "W (right-left)"],
            "voxels": list(cfg.shape),
            "spacing_mm": list(cfg.spacing_mm),
            "extent_mm": [float(b) for b in cfg.box_mm],
            "direction": list(directions),
        }
    )


def qc_figure(work_dir: str | Path, patient_id: str) -> Any:
    """Plotly QC figure of one preprocessed patient: PET coronal MIP, CT axial and coronal, fused coronal.

    Images are shown in radiological convention (patient right on the image
    left, head at the top); the axial slice is the one through the PET maximum
    outside the bottom fifth of the box (bladder), the coronal slices run through the body centre.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    vols = load_volumes(work_dir, [patient_id])
    pet, ct = vols["pet"][0, 0], vols["ct"][0, 0]
    D, H, _ = pet.shape
    upper = pet[: max(1, int(0.8 * D))]
    k_ax = int(np.unravel_index(int(np.argmax(upper)), upper.shape)[0])
    j_cor = _coronal_row(ct)
    vmax = float(np.percentile(pet[pet > 0], 99.5)) if (pet > 0).any() else 1.0
    fig = make_subplots(
        rows=1,
        cols=4,
        subplot_titles=(
            "PET MIP (coronal)",
            f"CT axial (slice {k_ax})",
            f"CT coronal (row {j_cor})",
            "PET/CT fused (coronal)",
        ),
        horizontal_spacing=0.03,
    )
    grey = dict(colorscale="Gray", zmin=-200, zmax=300, showscale=False)
    fig.add_trace(
        go.Heatmap(
            z=pet.max(axis=1),
            colorscale="Gray_r",
            zmin=0,
            zmax=vmax,
            showscale=False,
            hovertemplate="SUV %{z:.1f}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(go.Heatmap(z=ct[k_ax], hovertemplate="%{z:.0f} HU<extra></extra>", **grey), row=1, col=2)
    fig.add_trace(
        go.Heatmap(z=ct[:, j_cor], hovertemplate="%{z:.0f} HU<extra></extra>", **grey), row=1, col=3
    )
    fig.add_trace(go.Heatmap(z=ct[:, j_cor], hoverinfo="skip", **grey), row=1, col=4)
    hot = [
        [0.0, "rgba(0,0,0,0)"],
        [0.15, "rgba(128,0,0,0.5)"],
        [0.5, "rgba(255,64,0,0.8)"],
        [1.0, "rgba(255,255,0,0.95)"],
    ]
    fig.add_trace(
        go.Heatmap(
            z=pet[:, j_cor],
            colorscale=hot,
            zmin=0,
            zmax=vmax,
            colorbar={"title": "SUV"},
            hovertemplate="SUV %{z:.1f}<extra></extra>",
        ),
        row=1,
        col=4,
    )
    for c in range(1, 5):
        fig.update_yaxes(
            autorange="reversed", scaleanchor=f"x{'' if c == 1 else c}", showticklabels=False, row=1, col=c
        )
        fig.update_xaxes(showticklabels=False, row=1, col=c)
    fig.update_layout(height=420, title=f"{patient_id}: preprocessed PET/CT (10 mm voxels)", margin={"t": 70})
    return fig


def _coronal_row(ct: np.ndarray) -> int:
    """The coronal row (H index) through the body's antero-posterior centre (CT above -500 HU)."""
    rows = np.nonzero((ct > -500).any(axis=(0, 2)))[0]
    return int(rows.mean()) if len(rows) else ct.shape[1] // 2


#: Windows of the kernel-free QC views: PET SUVbw 0-10 (dark uptake on white, as nuclear medicine
#: reads a MIP) and CT in a soft-tissue window (level 40 HU, width 400 HU).
QC_PET_WINDOW = (0.0, 10.0)
QC_CT_WINDOW = (-160.0, 240.0)


def qc_images(pet: np.ndarray, ct: np.ndarray, pet_window: tuple[float, float] = QC_PET_WINDOW,
              ct_window: tuple[float, float] = QC_CT_WINDOW) -> dict[str, np.ndarray]:
    """The QC views of one preprocessed patient as uint8 images (radiological view, head at the top).

    Parameters
    ----------
    pet, ct : ndarray (D, H, W)
        SUVbw and HU on the model grid (:func:`load_volumes`).

    Returns
    -------
    dict
        ``"PET MIP (coronal)"``: maximum over H, inverted grey in ``pet_window``, ``(D, W)``;
        ``"CT coronal"``: the row through the body's centre in ``ct_window``, ``(D, W)``;
        ``"PET on CT (coronal)"``: that CT row with the PET of the same row in hot colours,
        opaque in proportion to SUV, ``(D, W, 3)``.
    """
    import matplotlib


    j = _coronal_row(ct)
    ct_row = window_uint8(ct[:, j], *ct_window)
    heat = np.clip((pet[:, j] - pet_window[0]) / (pet_window[1] - pet_window[0]), 0.0, 1.0)
    hot = matplotlib.colormaps["hot"](heat)[..., :3] * 255
    weight = (0.9 * heat)[..., None]
    fused = np.rint(ct_row[..., None] * (1 - weight) + hot * weight).astype(np.uint8)
    return {
        "PET MIP (coronal)": window_uint8(pet.max(axis=1), *pet_window, invert=True),
        "CT coronal": ct_row,
        "PET on CT (coronal)": fused,
    }


def qc_browser(work_dir: str | Path, patient_ids: Sequence[str]) -> Any:
    """Every listed patient's PET MIP, CT and fused view, the patient chosen from a drop-down (plotly).

    Works in the static book without a kernel (:func:`prrt_utils.io.viewer.image_browser`); the
    images are 8-bit PNGs of the 75 x 50 x 50 grid, a few kB per patient.
    """

    items = {}
    for pid in patient_ids:
        vols = load_volumes(work_dir, [pid])
        items[pid] = qc_images(vols["pet"][0, 0], vols["ct"][0, 0])
    lo, hi = QC_PET_WINDOW
    return image_browser(items, title=f"Preprocessed PET/CT (PET SUVbw {lo:g}-{hi:g}, dark = high uptake)")


def describe_grid_mm(cfg: PreprocessConfig) -> str:
    """One sentence describing the target box, for the book."""
    d, h, w = cfg.shape
    bd, bh, bw = cfg.box_mm
    sd, sh, sw = cfg.spacing_mm
    return (
        f"{d} x {h} x {w} voxels of {sd:g} x {sh:g} x {sw:g} mm covering {bd:g} x {bh:g} x {bw:g} mm "
        f"(cranio-caudal x antero-posterior x right-left), anchored {cfg.top_margin_mm:g} mm above the lung apex"
        if cfg.anchor == "lung_apex"
        else f"{d} x {h} x {w} voxels of {sd:g} mm covering {bd:g} x {bh:g} x {bw:g} mm from the top of the body"
    )
