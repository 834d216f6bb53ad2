"""One new patient through a model package: a one-page HTML report that opens offline (issue 9).

:func:`predict_patient` loads the patient's PET/CT (DICOM or NIfTI,
:mod:`prrt_utils.io.loading`), preprocesses it with the package's own
preprocessing configuration (:mod:`prrt_utils.data.preprocess`), and applies the
package (:mod:`prrt_utils.models.package`): the final model's probability of PFS <= 12
months and, as its uncertainty, the spread of the cross-validation models.
:func:`write_report` draws one HTML page with

* the probability and its 5-95 % range over the fold models;
* where it lies among the development cohort's out-of-fold probabilities;
* the laboratory contributions: how the probability changes when each value is
  replaced by the development cohort's median (an occlusion explanation,
  computed with the final model; positive = this value raises the risk);
* the PET saliency (captum ``IntegratedGradients`` of the final model's logit
  with respect to the PET input, zero baseline = the development cohort's mean
  image in normalised units) overlaid on the PET in three planes through the
  voxel of largest attribution;
* a plain-language statement that this is a research model.

The page carries no identifying data: not the folder name, no DICOM header
value, no date; the patient is named by a hash of the preprocessed volumes.
plotly.js is written into the page (or, for the book's copy, read from the
book's own ``_static``), so it needs no network. Words are a clinician's:
laboratory values with their units, contributions in percentage points, the
PET in a fixed SUV window with a maximum-intensity projection, and a short
"how to read this report".
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from prrt_utils.data.anatomy import SYNTHETIC_LABEL_MAP, find_labels, label_map_path, load_organs
from prrt_utils.data.cohort import LAB_LABELS
from prrt_utils.data.preprocess import PreprocessConfig, preprocess_patient
from prrt_utils.io import store
from prrt_utils.io.figures import PALETTE
from prrt_utils.io.loading import load_patient
from prrt_utils.models.inputs import CohortData, model_inputs, model_volumes
from prrt_utils.models.package import ModelPackage, PackageError

__all__ = ["HOW_TO_READ", "LAB_LABELS", "PET_WINDOW", "PatientPrediction", "development_bins", "lab_label",
           "parse_labs", "predict_patient", "write_report"]

#: PET window of the report's images: SUVbw 0-10, dark uptake on white, as a nuclear-medicine reader sets it.
PET_WINDOW = (0.0, 10.0)

HOW_TO_READ = (
    "<b>The probability</b> is the model's estimate that the disease progresses within 12 months of the start of "
    "PRRT; the range beside it is how much the cross-validation models (the same model trained on parts of the "
    "development cohort) disagree about this patient: a wide range means the model is unsure. "
    "<b>The histogram</b> shows the same estimate for every patient of the development cohort, split by what "
    "happened to them; the black line is this patient. Where the two colours overlap, the model cannot tell the "
    "groups apart. "
    "<b>Laboratory contributions</b> say, in percentage points of probability, how much the estimate would "
    "change if one value were replaced by the development cohort's median, everything else kept: "
    "+5 points means this value raises the estimate from, say, 30 % to 35 %. "
    "<b>The PET images</b> show the patient's PET as a maximum-intensity projection and in three planes "
    "(SUVbw 0-10, dark = high uptake; the patient's right on the image's left); the colours mark the voxels whose "
    "change would move the estimate most (integrated gradients), which is where the model looked, not where "
    "the disease is."
)

CAVEAT = (
    "This is a research model. It was developed on a small cohort and has not been validated for clinical use; "
    "it must not guide the treatment or follow-up of a patient. The probability is the model's estimate, "
    "not the patient's risk, and a model can be wrong with confidence."
)


@dataclasses.dataclass(frozen=True, eq=False)
class PatientPrediction:
    """What the report shows (no identifying data)."""

    report_id: str
    prediction: pd.Series
    labs: dict[str, float]
    lab_effects: pd.DataFrame
    percentile: float
    pet: np.ndarray | None
    saliency: np.ndarray | None
    model: str
    notes: list[str]


def parse_labs(text: str, columns: tuple[str, ...]) -> dict[str, float]:
    """``"ast_u_l=38,alt_u_l=27,cga_ug_l=142,ggt_u_l=56"`` (or a JSON file with that mapping) -> values.

    Every column the model needs must be given, as a non-negative number in the
    units of the column's name (U/l, ug/l).
    """
    path = Path(text)
    if path.suffix == ".json" and path.is_file():
        raw = {str(k): v for k, v in json.loads(path.read_text()).items()}
    else:
        raw = dict(item.split("=", 1) for item in text.replace(";", ",").split(",") if "=" in item)
    missing = [c for c in columns if c not in raw]
    unknown = sorted(set(raw) - set(columns))
    if missing or unknown:
        raise PackageError(f"laboratory values: need exactly {list(columns)}; missing {missing}, unknown {unknown}")
    out = {}
    for c in columns:
        try:
            v = float(str(raw[c]).replace(",", ".")) if not isinstance(raw[c], int | float) else float(raw[c])
        except ValueError:
            raise PackageError(f"laboratory value {c}={raw[c]!r} is not a number") from None
        if not np.isfinite(v) or v < 0:
            raise PackageError(f"laboratory value {c}={v} must be a non-negative number")
        out[c] = v
    return out


def _ig_pet(pkg: ModelPackage, xs: list[torch.Tensor]) -> np.ndarray:
    """IntegratedGradients of the final model's logit w.r.t. the PET input (zero baseline), ``(D, H, W)``."""
    from captum.attr import IntegratedGradients  # lazy: only a package with images needs attributions

    net = pkg.final.model
    i = list(pkg.spec.ordered_inputs).index("pet")
    ig = IntegratedGradients(lambda *a: net(*a))
    attr = ig.attribute(tuple(xs), baselines=tuple(torch.zeros_like(x) for x in xs), n_steps=32,
                        internal_batch_size=8)
    return attr[i][0, 0].detach().numpy()


def _patient_organs(folder: Path, pre: Any) -> np.ndarray | None:
    """Organ masks of one patient on its preprocessed grid, from its CT label map where the export keeps it.

    ``DATA/imaging/<id>/`` -> ``DATA/ct_labels/<id>.nii[.gz]`` (with ``codes.json``) or the synthetic
    ``DATA/ground_truth/labels/<id>.nii.gz``; None when there is none.
    """
    labels_dir, codes = find_labels(folder.resolve().parent.parent)
    found = label_map_path(labels_dir, folder.name) if labels_dir is not None else None
    if found is None:
        return None
    return load_organs(found, codes or SYNTHETIC_LABEL_MAP, pre.grid.affine, pre.pet.shape, "new patient")


def predict_patient(pkg: ModelPackage, folder: str | Path, labs: dict[str, float]) -> PatientPrediction:
    """Preprocess one patient's images with the package's settings and predict; raises naming the problem."""
    columns = tuple(pkg.manifest["lab_columns"])
    notes: list[str] = []
    volumes: dict[str, np.ndarray] = {}
    pet = None
    digest = hashlib.sha256(repr(sorted(labs.items())).encode())
    if pkg.spec.image_inputs:
        cfg = PreprocessConfig.from_yaml((pkg.path / "preprocess.yaml").read_text()).replace(on_error="stop")
        pre = preprocess_patient(load_patient(folder, "new patient"), cfg)
        volumes = {"pet": pre.pet[None, None].astype(np.float32), "ct": pre.ct[None, None].astype(np.float32)}
        organs = _patient_organs(Path(folder), pre)
        if organs is not None:
            volumes["organs"] = organs[None, None]
            notes.append("Organ masks from the patient's CT label map (liver reference, physiological organs masked).")
        pet = pre.pet
        digest.update(pre.pet.tobytes())
        digest.update(pre.ct.tobytes())
    report_id = digest.hexdigest()[:12]
    data = CohortData(("patient",), np.zeros(1, dtype=int), np.array([[labs[c] for c in columns]]),
                      model_volumes(pkg.spec, volumes) if volumes else {}, columns)
    pred = pkg.predict(data).iloc[0]
    medians = {c: pkg.summary["labs"][c]["q50"] for c in columns}
    effects = []
    for c in columns:
        swapped = dict(labs, **{c: medians[c]})
        other = CohortData(("patient",), np.zeros(1, dtype=int), np.array([[swapped[x] for x in columns]]),
                           data.volumes, columns)
        p_median = float(pkg._probs(pkg.final, other)[0])
        effects.append({"laboratory value": c, "patient": labs[c], "development median": medians[c],
                        "probability with the median instead": p_median,
                        "contribution": float(pred["prob"]) - p_median})
    saliency = None
    if "pet" in pkg.spec.image_inputs:
        xs = [torch.from_numpy(x).requires_grad_(True)
              for x in model_inputs(pkg.spec, data, np.array([0]), pkg.final.normaliser, pkg.final.lab_scaler)]
        saliency = _ig_pet(pkg, xs)
    else:
        notes.append("This model does not read the PET: no saliency map.")
    dev = pkg.development["prob"].to_numpy()
    percentile = float((dev < pred["prob"]).mean() * 100)
    return PatientPrediction(report_id, pred, labs, pd.DataFrame(effects), percentile, pet, saliency,
                             pkg.manifest["model"], notes)


def lab_label(column: str) -> str:
    """A laboratory column in words with its unit (:data:`LAB_LABELS`); an unknown column as it is named."""
    return LAB_LABELS.get(column, column)


def development_bins(values: np.ndarray, also: float | None = None, n_bins: int = 20) -> dict[str, float]:
    """Histogram bins (plotly ``xbins``) over the range the probabilities occupy, not over 0-1.

    A model's out-of-fold probabilities often lie in a narrow band (say 0.25 to 0.45); fixed bins of
    0.05 over 0-1 would put the whole cohort into three or four bars and hide its spread. ``n_bins``
    bins span the smallest to the largest value (``also``: this patient's, so that it lies inside).
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
    if also is not None:
        lo, hi = min(lo, also), max(hi, also)
    size = max((hi - lo) / n_bins, 0.005)
    return {"start": lo - size / 2, "end": hi + size / 2, "size": size}


def _figures(pkg: ModelPackage, p: PatientPrediction) -> list[Any]:
    figs = []
    dev = pkg.development
    prob = float(p.prediction["prob"])
    bins = development_bins(dev["prob"].to_numpy(), also=prob)
    fig = go.Figure()
    for y, name, colour in ((0, "long PFS (> 12 months)", PALETTE[0]), (1, "short PFS (≤ 12 months)", PALETTE[1])):
        fig.add_trace(go.Histogram(x=dev.loc[dev["y_true"] == y, "prob"] * 100, name=name, marker_color=colour,
                                   opacity=0.6, xbins={k: v * 100 for k, v in bins.items()},
                                   hovertemplate="%{x:.0f} %: %{y} patients<extra></extra>"))
    fig.add_vline(x=prob * 100, line_width=3, line_color="black",
                  annotation_text=f"this patient ({prob:.0%})", annotation_position="top")
    fig.update_layout(barmode="overlay", height=320, xaxis_title="predicted probability of progression within 12 months (%)",
                      yaxis_title="development patients", title="Where the prediction lies among the development cohort "
                      "(out-of-fold predictions)", margin={"t": 60})
    figs.append(fig)
    eff = p.lab_effects
    points = eff["contribution"] * 100
    fig = go.Figure(go.Bar(x=points, y=[lab_label(c) for c in eff["laboratory value"]], orientation="h",
                           marker_color=np.where(points > 0, PALETTE[1], PALETTE[0]),
                           text=[f"{v:+.1f} points" for v in points], textposition="outside", cliponaxis=False,
                           hovertemplate="%{y}: %{x:+.1f} percentage points<extra></extra>"))
    reach = max(float(np.abs(points).max()) if len(points) else 0.0, 0.5) * 1.4  # room for the labels
    fig.update_layout(height=260, xaxis_title="change in the probability (percentage points) against the development median",
                      xaxis_range=[-reach if (points < 0).any() else -0.1 * reach, reach if (points > 0).any() else 0.1 * reach],
                      title="Laboratory contributions (positive: this value raises the predicted risk)",
                      margin={"t": 60, "l": 110})
    figs.append(fig)
    if p.pet is not None and p.saliency is not None:
        sal = np.abs(p.saliency)
        d, h, w = np.unravel_index(int(np.argmax(sal)), sal.shape)
        planes = (("MIP, seen from the front", p.pet.max(axis=1), None), ("coronal", p.pet[:, h, :], sal[:, h, :]),
                  ("sagittal", p.pet[:, :, w], sal[:, :, w]), ("axial", p.pet[d], sal[d]))
        fig = make_subplots(rows=1, cols=4, subplot_titles=[n if s is None else f"{n} (strongest attribution)"
                                                            for n, _, s in planes])
        lo, hi = PET_WINDOW
        smax = float(sal.max()) or 1.0
        for k, (_, img, s) in enumerate(planes, start=1):
            fig.add_trace(go.Heatmap(z=img, colorscale="Greys", zmin=lo, zmax=hi, showscale=k == 1,
                                     colorbar={"title": "SUVbw", "x": -0.08},
                                     hovertemplate="SUVbw %{z:.1f}<extra></extra>"), 1, k)
            if s is not None:
                fig.add_trace(go.Heatmap(z=np.where(s >= 0.2 * smax, s / smax, np.nan), colorscale="Hot", zmin=0, zmax=1,
                                         opacity=0.55, showscale=k == 4, colorbar={"title": "attribution"},
                                         hoverinfo="skip"), 1, k)
            fig.update_yaxes(autorange="reversed", scaleanchor=f"x{k}", row=1, col=k, showticklabels=False)
            fig.update_xaxes(showticklabels=False, row=1, col=k)
        fig.update_layout(height=440, title=f"PET saliency of the final model: where it looked<br><sup>integrated "
                          f"gradients, |attribution| ≥ 20 % of its maximum, over the PET (SUVbw {lo:g}-{hi:g}, dark = "
                          "high uptake; the patient's right on the image's left)</sup>", margin={"t": 100})
        figs.append(fig)
    return figs


def write_report(pkg: ModelPackage, p: PatientPrediction, out: str | Path, plotlyjs: str = "embed") -> Path:
    """Write the one-page HTML report; it opens offline.

    ``plotlyjs``: ``"embed"`` writes plotly.js into the page (a file to hand on by itself); a
    relative path such as ``"plotly.min.js"`` refers to a copy beside it instead (the book's
    example report in ``_static``, next to the book's one copy).
    """
    out = Path(out)
    figs = _figures(pkg, p)
    first = True if plotlyjs == "embed" else plotlyjs
    parts = [f.to_html(full_html=False, include_plotlyjs=first if i == 0 else False, config={"displaylogo": False})
             for i, f in enumerate(figs)]
    pr = p.prediction
    lab_rows = "".join(f"<tr><td>{html.escape(lab_label(r['laboratory value']))}</td><td>{r['patient']:.4g}</td>"
                       f"<td>{r['development median']:.4g}</td><td>{100 * r['contribution']:+.1f}</td></tr>"
                       for _, r in p.lab_effects.iterrows())
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in p.notes)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>PFS prediction report {p.report_id}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
.box{{border:2px solid #444;padding:1em;margin:1em 0}} .caveat{{background:#fff3cd;border-color:#b58900}}
td,th{{padding:2px 10px;text-align:right}} td:first-child,th:first-child{{text-align:left}}</style></head>
<body>
<h1>Predicted progression-free survival after PRRT</h1>
<p>Report {p.report_id} (a hash of the preprocessed images and values; no name, id or date is shown).
Model: <b>{html.escape(p.model)}</b>, package {html.escape(pkg.path.name)}, developed on {pkg.manifest['n_development']}
patients.</p>
<div class="box"><p style="font-size:1.4em">Probability of progression within 12 months:
<b>{pr['prob']:.0%}</b></p>
<p>Uncertainty: the {len(pkg.folds)} cross-validation models give {pr['prob_folds_q05']:.0%} to
{pr['prob_folds_q95']:.0%} (5th to 95th percentile; mean {pr['prob_folds_mean']:.0%}). Higher than
{p.percentile:.0f}% of the development cohort's out-of-fold predictions.</p></div>
<div class="box caveat"><b>Research model.</b> {html.escape(CAVEAT)}</div>
<details open class="box"><summary><b>How to read this report</b></summary><p>{HOW_TO_READ}</p></details>
{parts[0]}
<h2>Laboratory values</h2>
<table><tr><th>value</th><th>patient</th><th>development median</th><th>contribution (percentage points)</th></tr>
{lab_rows}</table>
{''.join(parts[1:])}
<ul>{notes}</ul>
<p style="color:#666">Made by prrt-pfs with the package's preprocessing ({html.escape(str(pkg.manifest['versions']))}).</p>
</body></html>
"""
    store.write_text(out, page)
    return out
