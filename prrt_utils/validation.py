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

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prrt_utils import store
from prrt_utils.cohort import PFS_THRESHOLD_MONTHS
from prrt_utils.package import ModelPackage, cohort_summary, load_package

__all__ = ["EXPECTED_SHIFT", "RATIO_FLAG", "ValidationChapter", "final_package", "hazard_ratio_sentence", "recalibrate_in_the_large",
           "run_validation", "shift_sentence", "shift_table", "validation_chapter", "validation_cohort"]

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
    from prrt_utils.calibration import EPS, calibration_stats

    a = calibration_stats(y, p).intercept
    lp = np.log(np.clip(p, EPS, 1 - EPS) / (1 - np.clip(p, EPS, 1 - EPS))) + a
    return 1 / (1 + np.exp(-lp)), a


def run_validation(package: str | Path | ModelPackage, data_dir: str | Path, work_dir: str | Path,
                   pfs_threshold_months: float = PFS_THRESHOLD_MONTHS, on_error: str = "skip", n_jobs: int = 2,
                   progress: bool = False) -> Path:
    """Cohort, preprocessing (package's settings) and predictions of another cohort; returns the output folder."""
    from prrt_utils import grid
    from prrt_utils.cohort import CohortConfig, build_cohort
    from prrt_utils.preprocess import PreprocessConfig, load_volumes, run_preprocessing
    from prrt_utils.training import CohortData, model_volumes

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
        raise grid.GridError(f"no patient of {data_dir} is usable for validation (see {work_dir / 'cohort'})")
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
    import json

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
    from prrt_utils.calibration import bootstrap_ci

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
    from prrt_utils.calibration import calibration_stats

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
    from prrt_utils.calibration import decision_curve, decision_figure, reliability_curve, reliability_figure
    from prrt_utils.explain import km_figure
    from prrt_utils.stats import km_by_prediction
    from prrt_utils.survival import cox_hr_by_group

    _, lab = calibration_summary(pred)
    points = pd.concat([reliability_curve(lab["y_true"], lab[c]).assign(model=n)
                        for c, n in (("prob", model_name), ("prob_recalibrated", f"{model_name}, recalibrated"))])
    dc = decision_curve(lab.rename(columns={"prob": model_name, "prob_recalibrated": f"{model_name}, recalibrated"}),
                        [model_name, f"{model_name}, recalibrated"])
    surv = pred[["patient_id", "prob", "pfs_months", "event"]]
    km = km_by_prediction(surv, threshold, prob_is="short")
    hr = cox_hr_by_group(surv, threshold, prob_is="short")
    return {"reliability": reliability_figure(points), "decision": decision_figure(dc),
            "km": km_figure(km, f"PFS by prediction ({model_name}), log-rank p = {km.p_value:.3g}"),
            "km_result": km, "hazard_ratio": hr}


def write_report(out_dir: str | Path, path: str | Path, n_boot: int = 1000) -> Path:
    """The validation chapter as one offline HTML page (plotly.js embedded)."""
    import html as html_

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
"""Laboratory assays that differ at the synthetic second centre (``prrt_utils.synth``): what chapter 08 expects
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
    """A :class:`prrt_utils.survival.CoxHRResult` of predicted short vs long PFS in words (or why there is none)."""
    if min(hr.n_short, hr.n_long) == 0:
        return (f"At the threshold 0.5 every patient falls into one group ({hr.n_short} predicted short, "
                f"{hr.n_long} predicted long): no hazard ratio can be estimated. With predictions this far "
                "from the observed share (see calibration), the paper's fixed threshold does not transport.")
    return (f"Hazard ratio, predicted short vs predicted long: **{hr.hazard_ratio:.2f}** (95 % CI "
            f"{hr.ci[0]:.2f} to {hr.ci[1]:.2f}, p = {hr.p_value:.3g}; {hr.n_short} vs {hr.n_long} patients).")


@dataclasses.dataclass(frozen=True)
class ValidationChapter:
    """Everything chapter 08 shows, computed once; each section returns what its cell displays.

    Attributes
    ----------
    other : Path
        The other cohort's raw export.
    model : str
        The packaged model; ``name`` its display name.
    package : ModelPackage or None
        ``None`` when there is no other cohort (``ready`` false): then every section is empty.
    predictions, shift : DataFrame or None
        :func:`load_results` of the validation.
    discrimination, calibration : DataFrame or None
        :func:`discrimination`, :func:`calibration_summary` (its table).
    development : MetricSummary or None
        The same model's AUROC in cross-validation on the development cohort.
    figures : dict or None
        :func:`figures`.
    patient : PatientPrediction or None
        The example report's prediction; ``report_href`` links to the report from the page.
    expected_shift : frozenset or None
        Assays expected to be flagged (synthetic second centre only).
    """

    other: Path
    model: str
    name: str
    package: Any = None
    predictions: pd.DataFrame | None = None
    shift: pd.DataFrame | None = None
    discrimination: pd.DataFrame | None = None
    calibration: pd.DataFrame | None = None
    development: Any = None
    figures: dict | None = None
    patient: Any = None
    report_href: str = ""
    expected_shift: frozenset[str] | None = None

    @property
    def ready(self) -> bool:
        """Whether there was another cohort to validate on."""
        return self.package is not None

    def intro(self) -> tuple[Any, ...]:
        """Nothing when ready; else the sentence saying how to get a validation cohort."""
        from IPython.display import Markdown

        if self.ready:
            return ()
        return (Markdown(f"**No validation cohort** (`{self.other}` holds none): this chapter has nothing to show. Run "
                         "`prrt validate --model PACKAGE --cohort OTHER.yaml` with a package made by "
                         "`prrt train-final`, or give this page `validation_data`."),)

    def manifest_section(self) -> tuple[Any, ...]:
        """The package's manifest without the per-file checksums."""
        if not self.ready:
            return ()
        manifest = {k: v for k, v in self.package.manifest.items() if k not in ("sha256", "source_key")}
        return (pd.Series(manifest, name="manifest").to_frame(),)

    def predictions_section(self) -> tuple[Any, ...]:
        """How many patients were predicted and how many have a known 12-month outcome."""
        from IPython.display import Markdown

        if not self.ready:
            return ()
        lab = labelled(self.predictions)
        return (Markdown(f"**{len(self.predictions)}** patients predicted, **{len(lab)}** with a known 12-month "
                         f"outcome ({int(lab['y_true'].sum())} with PFS ≤ 12 months)."),)

    def shift_section(self) -> tuple[Any, ...]:
        """The flagged features in words and the shift table."""
        from IPython.display import Markdown

        if not self.ready:
            return ()
        return (Markdown(shift_sentence(self.shift, self.expected_shift)), self.shift.round(3))

    def discrimination_section(self) -> tuple[Any, ...]:
        """AUROC and AUPRC with intervals, and the AUROC beside the development cross-validation."""
        from IPython.display import Markdown

        if not self.ready:
            return ()
        auc = self.discrimination.loc[self.discrimination["metric"] == "AUROC"].iloc[0]
        return (self.discrimination.round(3), Markdown(
            f"{self.name}: AUROC **{auc['estimate']:.2f}** ({auc['ci_lower']:.2f} to {auc['ci_upper']:.2f}) "
            f"on the other cohort; {self.development.format()} in cross-validation on the "
            "development cohort (mean ± standard error over repeats)."))

    def calibration_section(self) -> tuple[Any, ...]:
        """Calibration as shipped and recalibrated, and the reliability diagram."""
        return (self.calibration.round(3), self.figures["reliability"]) if self.ready else ()

    def decision_section(self) -> tuple[Any, ...]:
        """The decision curve."""
        return (self.figures["decision"],) if self.ready else ()

    def survival_section(self) -> tuple[Any, ...]:
        """The hazard ratio in words and the Kaplan-Meier curves by prediction."""
        from IPython.display import Markdown

        if not self.ready:
            return ()
        return (Markdown(hazard_ratio_sentence(self.figures["hazard_ratio"])), self.figures["km"])

    def report_section(self) -> tuple[Any, ...]:
        """The link to the example patient report."""
        from IPython.display import HTML

        if self.patient is None:
            return ()
        pred = self.patient.prediction
        return (HTML(f'<p><a href="{self.report_href}">Open the example report</a> (report '
                     f"{self.patient.report_id}: probability {pred['prob']:.2f}, fold models "
                     f"{pred['prob_folds_q05']:.2f} to {pred['prob_folds_q95']:.2f}).</p>"),)

    def findings(self, names: dict[str, str] | None = None) -> Any:
        """The chapter's key findings (:func:`prrt_utils.findings.validation_findings`)."""
        from prrt_utils import findings

        if not self.ready:
            return findings.KeyFindings(("No validation cohort: nothing to report.",))
        return findings.validation_findings(self.discrimination, self.development, self.calibration, self.model, names)


def final_package(work_dir: str | Path, model: str, profile: str = "default", seed: int = 0,
                  epochs: int = 0) -> Path:
    """``WORK/packages/<model>/``: the final model of chapter 08, trained, or reused when made from the same
    results and settings (:func:`prrt_utils.package.train_final`). The book trains it as a stage before
    the read-only pages; the page then reuses it."""
    from prrt_utils import package
    from prrt_utils.training import TrainConfig

    cfg = TrainConfig.profile(profile, seed=seed, **({"epochs": int(epochs)} if epochs else {}))
    return package.train_final(work_dir, Path(work_dir) / "packages" / model, model, cfg)


def validation_chapter(work_dir: str | Path, data_dir: str | Path, model: str, validation_data: str | Path = "", *,
                       profile: str = "default", seed: int = 0, epochs: int = 0, n_jobs: int = 2, n_boot: int = 1000,
                       names: dict[str, str] | None = None, static_dir: str | Path | None = None) -> ValidationChapter:
    """Chapter 08 end to end: package ``model``, validate it on the other cohort, and report one patient.

    Parameters
    ----------
    work_dir : path
        The development ``WORK``: its results, ``packages/<model>/`` and ``validation-centre/``.
    data_dir : path
        The development cohort (the synthetic second centre lies beside it).
    model : str
        The model to package.
    validation_data : path, optional
        The other cohort's raw export; empty: :func:`validation_cohort`.
    profile, seed, epochs : str, int, int
        Training recipe of the final model (``epochs`` 0: the profile's).
    n_jobs, n_boot : int
        Preprocessing workers; bootstrap resamples.
    names : dict, optional
        Display names.
    static_dir : path, optional
        Where the example patient report is written (default :func:`prrt_utils.book.static_dir`); the page
        links to it through :func:`prrt_utils.book.static_href`.

    Returns
    -------
    ValidationChapter
        Empty (``ready`` false) when the other cohort has no ``clinical.csv``.
    """
    from prrt_utils import book, metrics, package
    from prrt_utils.patient_report import predict_patient, write_report

    names = names or {}
    other = validation_cohort(data_dir, validation_data)
    name = names.get(model, model)
    if not (other / "clinical.csv").is_file():
        return ValidationChapter(other=other, model=model, name=name)
    work_dir = Path(work_dir)
    pkg = package.load_package(final_package(work_dir, model, profile=profile, seed=seed, epochs=epochs))
    out = run_validation(pkg, other, work_dir / "validation-centre", n_jobs=n_jobs)
    pred, shift, _ = load_results(out)
    development = metrics.evaluate(pd.read_parquet(work_dir / "results" / "predictions.parquet")
                                   .query("model == @model")).get(model)
    clinical = pd.read_csv(other / "clinical.csv", dtype={"patient_id": str}).set_index("patient_id")
    first = pred["patient_id"].iloc[0]  # the first patient whose images were usable
    one = predict_patient(pkg, other / "imaging" / first,
                          {c: float(clinical.loc[first, c]) for c in pkg.manifest["lab_columns"]})
    # plotly.js from the book's own copy beside it in _static (prrt predict embeds it instead)
    static = Path(static_dir) if static_dir is not None else book.static_dir()
    write_report(pkg, one, static / "patient_report.html", plotlyjs="plotly.min.js")
    return ValidationChapter(
        other=other, model=model, name=name, package=pkg, predictions=pred, shift=shift,
        discrimination=discrimination(pred, n_boot=n_boot, seed=seed), calibration=calibration_summary(pred)[0],
        development=development, figures=figures(pred, name), patient=one,
        report_href=book.static_href("patient_report.html"),
        expected_shift=None if str(validation_data) else EXPECTED_SHIFT)
