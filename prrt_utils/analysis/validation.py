"""External validation: apply a model package to another cohort, with no retraining (issue 9).

:func:`run_validation` takes the other cohort through the same stages as the
development cohort (cohort table, preprocessing with the PACKAGE's
preprocessing configuration), predicts every usable patient with the package
and writes ``WORK/validation/<model>/``:

* ``predictions.parquet``: ``patient_id, y_true, pfs_months, event, prob`` and
  the fold models' spread (patients with a known 12-month label only get
  ``y_true``; censored patients keep theirs empty and count for the
  Kaplan-Meier only);
* ``shift.csv``: :func:`shift_table`, the other cohort against the
  development cohort's summary stored in the package;
* ``done.json`` (last).

The validation chapter (``notebooks/08_validation.py``) reads these files and
draws discrimination, calibration (and recalibration in the large), the
decision curve, the Kaplan-Meier by prediction and the shift table.
"""

from __future__ import annotations

import html as html_
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prrt_utils.analysis.calibration import (
    EPS,
    bootstrap_ci,
    calibration_stats,
    decision_curve,
    decision_figure,
    reliability_curve,
    reliability_figure,
)
from prrt_utils.analysis.kaplan_meier import cox_hr_by_group, km_by_prediction
from prrt_utils.data.cohort import PFS_THRESHOLD_MONTHS, CohortConfig, build_cohort
from prrt_utils.data.preprocess import PreprocessConfig, load_volumes, run_preprocessing
from prrt_utils.io import store
from prrt_utils.io.figures import km_figure
from prrt_utils.models import stored
from prrt_utils.models.inputs import CohortData, model_volumes
from prrt_utils.models.package import ModelPackage, cohort_summary, load_package

__all__ = [
    "EXPECTED_SHIFT",
    "RATIO_FLAG",
    "hazard_ratio_sentence",
    "recalibrate_in_the_large",
    "run_validation",
    "shift_sentence",
    "shift_table",
    "validation_cohort",
]

RATIO_FLAG = 1.5
"""A laboratory value whose validation median is more than 1.5 times (or less than 1/1.5 of) the
development median is flagged as shifted (:func:`shift_table`)."""


def shift_table(development: dict, validation: dict) -> pd.DataFrame:
    """Each laboratory value and image intensity: development vs validation median and IQR, and a flag.

    ``shift_iqr`` is the difference of medians in units of the development
    interquartile range and ``median_ratio`` their ratio. A feature is flagged
    ``shifted`` when its validation median lies outside the development IQR,
    or, for laboratory values (skewed, positive; an assay's calibration scales
    them), when the medians differ by more than a factor of 1.5 either way.
    The package holds quantiles, not patients' values, so no two-sample test
    is possible: this is a screening rule, stated with its thresholds.
    """
    rows = []
    for group in ("labs", "images"):
        for name, dev in development.get(group, {}).items():
            val = validation.get(group, {}).get(name)
            if val is None:
                continue
            iqr = dev["q75"] - dev["q25"]
            shift = (val["q50"] - dev["q50"]) / iqr if iqr > 0 else np.nan
            ratio = val["q50"] / dev["q50"] if group == "labs" and dev["q50"] > 0 else np.nan
            outside = val["q50"] < dev["q25"] or val["q50"] > dev["q75"]
            scaled = bool(np.isfinite(ratio) and (ratio > RATIO_FLAG or ratio < 1 / RATIO_FLAG))
            rows.append({"feature": name, "kind": group, "development_median": dev["q50"],
                         "development_iqr": f"{dev['q25']:.4g}-{dev['q75']:.4g}", "validation_median": val["q50"],
                         "validation_iqr": f"{val['q25']:.4g}-{val['q75']:.4g}", "shift_iqr": shift,
                         "median_ratio": ratio, "shifted": bool(outside or scaled)})
    return pd.DataFrame(rows)


def recalibrate_in_the_large(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, float]:
    """Shift every logit by the calibration intercept estimated on this cohort: ``(new p, intercept)``.

    The update a receiving centre may make with its own outcomes (Steyerberg,
    Clinical Prediction Models, ch. 20): ranks, hence AUROC, are unchanged;
    the mean predicted probability then equals the observed share.
    """
    a = calibration_stats(y, p).intercept
    lp = np.log(np.clip(p, EPS, 1 - EPS) / (1 - np.clip(p, EPS, 1 - EPS))) + a
    return 1 / (1 + np.exp(-lp)), a


def run_validation(package: str | Path | ModelPackage, data_dir: str | Path, work_dir: str | Path,
                   pfs_threshold_months: float = PFS_THRESHOLD_MONTHS, on_error: str = "skip", n_jobs: int = 2,
                   progress: bool = False) -> Path:
    """Cohort, preprocessing (package's settings) and predictions of another cohort; returns the output folder."""
    pkg = package if isinstance(package, ModelPackage) else load_package(package)
    data_dir, work_dir = Path(data_dir), Path(work_dir)
    cohort_all = build_cohort(CohortConfig(pfs_threshold_months=pfs_threshold_months, on_error=on_error),
                              data_dir, work_dir)
    spec = pkg.spec
    if spec.image_inputs:
        cfg = PreprocessConfig.from_yaml((pkg.path / "preprocess.yaml").read_text()).replace(on_error=on_error)
        run_preprocessing(cfg, work_dir / "cohort" / "cohort.csv", data_dir / "imaging", work_dir,
                          progress=progress, n_jobs=n_jobs)
    # every patient with images (censored ones too: they count for the Kaplan-Meier)
    usable = cohort_all.copy()
    if spec.image_inputs:
        index = pd.read_csv(work_dir / "preprocessed" / "index.csv", dtype={"patient_id": str})
        usable = usable[usable["patient_id"].isin(index.loc[index["status"] == "ok", "patient_id"])]
    usable = usable.sort_values("patient_id").reset_index(drop=True)
    if usable.empty:
        raise stored.GridError(f"no patient of {data_dir} is usable for validation (see {work_dir / 'cohort'})")
    volumes = load_volumes(work_dir, usable["patient_id"].tolist()) if spec.image_inputs else {}
    labels = usable["pfs_short"].fillna(0).astype(int)  # unknown labels are masked below, not used
    data = CohortData.from_frame(usable.assign(pfs_short=labels), model_volumes(spec, volumes))
    pred = pkg.predict(data)
    pred.insert(1, "y_true", usable["pfs_short"].to_numpy())
    pred.insert(2, "pfs_months", usable["pfs_months"].to_numpy())
    pred.insert(3, "event", usable["event"].to_numpy())
    out = work_dir / "validation" / pkg.manifest["model"]
    store.write_parquet(out / "predictions.parquet", pred)
    summary = cohort_summary(usable, volumes, data.lab_columns)
    store.write_csv(out / "shift.csv", shift_table(pkg.summary, summary))
    store.write_json(out / "summary.json", summary)
    store.write_json(out / "done.json", {"package": pkg.path.name, "model": pkg.manifest["model"],
                                         "n_patients": len(pred), "data": data_dir.name})
    return out


# --------------------------------------------------------------------------- what the chapter and the report show


def load_results(out_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """``predictions.parquet``, ``shift.csv`` and ``done.json`` of a finished validation."""
    out_dir = Path(out_dir)
    done = out_dir / "done.json"
    if not done.is_file():
        raise FileNotFoundError(f"{out_dir} holds no finished validation (run prrt validate)")
    return (pd.read_parquet(out_dir / "predictions.parquet"), pd.read_csv(out_dir / "shift.csv"),
            json.loads(done.read_text()))


def labelled(pred: pd.DataFrame) -> pd.DataFrame:
    """Patients whose 12-month label is known (the censored-before-12-months have none)."""
    out = pred[pred["y_true"].notna()].copy()
    out["y_true"] = out["y_true"].astype(int)
    return out


def discrimination(pred: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """AUROC and AUPRC (either class positive) with percentile-bootstrap 95 % intervals, on the labelled patients."""
    lab = labelled(pred)
    y, p = lab["y_true"].to_numpy(int), lab["prob"].to_numpy(float)
    rows = []
    for label, metric, yy, pp in (("AUROC", "auroc", y, p), ("AUPRC, short PFS positive", "auprc", y, p),
                                  ("AUPRC, long PFS positive", "auprc", 1 - y, 1.0 - p)):
        ci = bootstrap_ci(yy, pp, metric, n_boot=n_boot, seed=seed)
        rows.append({"metric": label, "estimate": ci.estimate, "ci_lower": ci.lower, "ci_upper": ci.upper,
                     "chance": 0.5 if metric == "auroc" else float(yy.mean()),
                     "n": len(lab), "n_short": int(y.sum())})
    return pd.DataFrame(rows)


def calibration_summary(pred: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Calibration as shipped and after recalibration in the large; and the labelled rows with both probabilities."""
    lab = labelled(pred)
    lab["prob_recalibrated"], _ = recalibrate_in_the_large(lab["y_true"].to_numpy(), lab["prob"].to_numpy())
    rows = []
    for col, name in (("prob", "as shipped"), ("prob_recalibrated", "recalibrated in the large")):
        c = calibration_stats(lab["y_true"], lab[col])
        rows.append({"predictions": name, "observed share": c.prevalence, "mean predicted": c.mean_prob,
                     "intercept": c.intercept, "intercept 95% CI": f"{c.intercept_ci[0]:.2f} to {c.intercept_ci[1]:.2f}",
                     "slope": c.slope, "slope 95% CI": f"{c.slope_ci[0]:.2f} to {c.slope_ci[1]:.2f}",
                     "Brier": c.brier})
    return pd.DataFrame(rows), lab


def figures(pred: pd.DataFrame, model_name: str, threshold: float = 0.5) -> dict[str, object]:
    """Reliability diagram, decision curve and Kaplan-Meier by prediction (plotly), and the Cox HR."""
    _, lab = calibration_summary(pred)
    points = pd.concat([reliability_curve(lab["y_true"], lab[c]).assign(model=n)
                        for c, n in (("prob", model_name), ("prob_recalibrated", f"{model_name}, recalibrated"))])
    dc = decision_curve(lab.rename(columns={"prob": model_name, "prob_recalibrated": f"{model_name}, recalibrated"}),
                        [model_name, f"{model_name}, recalibrated"])
    surv = pred[["patient_id", "prob", "pfs_months", "event"]]
    km = km_by_prediction(surv, threshold, prob_is="short")
    hr = cox_hr_by_group(surv, threshold, prob_is="short")
    return {"reliability": reliability_figure(points), "decision": decision_figure(dc),
            "km": km_figure(km.labelled_curves(), threshold=PFS_THRESHOLD_MONTHS,
                            title=f"PFS by prediction ({model_name}), log-rank p = {km.p_value:.3g} {km.logrank_text()}"),
            "km_result": km, "hazard_ratio": hr}


def write_report(out_dir: str | Path, path: str | Path, n_boot: int = 1000) -> Path:
    """The validation chapter as one offline HTML page (plotly.js embedded)."""
    pred, shift, done = load_results(out_dir)
    figs = figures(pred, done["model"])
    disc = discrimination(pred, n_boot)
    cal, _ = calibration_summary(pred)
    hr = figs["hazard_ratio"]
    plots = [figs[k].to_html(full_html=False, include_plotlyjs=(i == 0)) for i, k in
             enumerate(("reliability", "decision", "km"))]
    table = lambda df: df.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0)  # noqa: E731
    flagged = shift.loc[shift["shifted"], "feature"].tolist()
    hr_text = (f"At the threshold 0.5 every patient falls into one group ({hr.n_short} predicted short, {hr.n_long} "
               "predicted long): no hazard ratio." if min(hr.n_short, hr.n_long) == 0 else
               f"Hazard ratio, predicted short vs long: {hr.hazard_ratio:.2f} (95% CI {hr.ci[0]:.2f} to "
               f"{hr.ci[1]:.2f}, p = {hr.p_value:.3g}; {hr.n_short} vs {hr.n_long} patients).")
    page = f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>External validation of {html_.escape(done['model'])}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}} td,th{{padding:2px 8px}}</style></head><body>
<h1>External validation of {html_.escape(done['model'])} ({html_.escape(done['package'])})</h1>
<p>{done['n_patients']} patients of the validation cohort, predicted with no retraining. A research model: these
numbers describe how it transports to this cohort, not a licence for clinical use.</p>
<h2>Discrimination</h2>{table(disc)}
<h2>Calibration</h2>{table(cal)}
<p>Intercept 0 and slope 1 are perfect calibration; recalibration in the large moves every logit by the intercept
estimated on this cohort (the ranking, hence the AUROC, is unchanged).</p>{plots[0]}
<h2>Decision curve</h2>{plots[1]}
<h2>Kaplan-Meier by prediction</h2><p>{hr_text}</p>{plots[2]}
<h2>Shift against the development cohort</h2>
<p>Flagged (validation median outside the development interquartile range, or a laboratory median
more than 1.5 times higher or lower):
<b>{html_.escape(', '.join(flagged) or 'none')}</b>.</p>{table(shift)}
</body></html>"""
    store.write_text(path, page)
    return Path(path)


# --------------------------------------------------------------------------- chapter 08: what its cells show

EXPECTED_SHIFT = frozenset({"cga_ug_l", "ggt_u_l"})
"""Laboratory assays that differ at the synthetic second centre (``prrt_utils.synthetic``): what chapter 08 expects
the shift screening to flag there."""


def validation_cohort(data_dir: str | Path, validation_data: str | Path = "") -> Path:
    """The other cohort of chapter 08: ``validation_data`` when given, else the synthetic second centre beside
    ``data_dir`` (``<data_dir>/../synthetic-b``)."""
    return Path(validation_data) if str(validation_data) else Path(data_dir).parent / "synthetic-b"


def shift_sentence(shift: pd.DataFrame, expected: frozenset[str] | set[str] | None = None) -> str:
    """The flagged features in words and, for the synthetic second centre (``expected`` given), whether the
    assays known to differ were flagged."""
    flagged = shift.loc[shift["shifted"], "feature"].tolist()
    note = ""
    if expected is not None:
        missing = sorted(set(expected) - set(flagged))
        note = (f" Expected on the synthetic second centre: {', '.join(sorted(expected))}; "
                + ("all of them flagged." if not missing else
                   f"not flagged: {', '.join(missing)} (its shift stays under the screening rule's thresholds)."))
    return f"Flagged: **{', '.join(flagged) or 'none'}**.{note}"


def hazard_ratio_sentence(hr: Any) -> str:
    """A :class:`prrt_utils.analysis.kaplan_meier.CoxHRResult` of predicted short vs long PFS in words (or why there is none)."""
    if min(hr.n_short, hr.n_long) == 0:
        return (f"At the threshold 0.5 every patient falls into one group ({hr.n_short} predicted short, "
                f"{hr.n_long} predicted long): no hazard ratio can be estimated. With predictions this far "
                "from the observed share (see calibration), the paper's fixed threshold does not transport.")
    return (f"Hazard ratio, predicted short vs predicted long: **{hr.hazard_ratio:.2f}** (95 % CI "
            f"{hr.ci[0]:.2f} to {hr.ci[1]:.2f}, p = {hr.p_value:.3g}; {hr.n_short} vs {hr.n_long} patients).")


