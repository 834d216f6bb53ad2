"""Pages assembled from the analyses: each chapter that needs more than a call and a display gets one object
here that holds its results, its sections in reading order and its key findings (the notebook shows them).
The page objects of the positive control and of CT pretraining live beside their stages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.express as px
from IPython.display import HTML, Markdown

from prrt_utils.analysis import calibration as cal
from prrt_utils.analysis import families, metrics
from prrt_utils.analysis.kaplan_meier import cox_hr_by_group
from prrt_utils.analysis.validation import (
    EXPECTED_SHIFT,
    calibration_summary,
    discrimination,
    figures,
    hazard_ratio_sentence,
    labelled,
    load_results,
    run_validation,
    shift_sentence,
    validation_cohort,
)
from prrt_utils.io.config import SEED
from prrt_utils.models import package, stored
from prrt_utils.models.final import final_package
from prrt_utils.models.survival import evaluation_bias, useful_thresholds
from prrt_utils.report import book, findings
from prrt_utils.report.patient_report import predict_patient, write_report
from prrt_utils.report.tables import words


@dataclasses.dataclass(frozen=True)
class SaliencyMass:
    """Where the PET saliency falls, per region and model (chapter 06; synthetic cohort only).

    Attributes
    ----------
    mass : DataFrame or None
        :meth:`Explainer.saliency_mass`; ``None`` without ground-truth label maps or PET models.
    volumes : DataFrame or None
        Per region: total volume from the occupancy fractions and from the majority labels, and their ratio.
    reason : str
        Why there is nothing to show (empty when there is).
    """

    mass: pd.DataFrame | None
    volumes: pd.DataFrame | None
    reason: str = ""

    def tables(self, names: Mapping[str, str] | None = None) -> tuple[Any, ...]:
        """Patients without saliency (if any), mass fraction and enrichment per region x model, and a bar figure."""
        if self.mass is None:
            return (self.reason,)

        names = names or {}
        mass = self.mass
        flat = mass.groupby("model")[["n_patients", "n_without_saliency"]].first()
        without = (("Patients whose prediction does not depend on the PET at all (zero gradient everywhere; "
                    "left out):", flat) if flat["n_without_saliency"].any() else ())
        bar = px.bar(mass.assign(model=mass["model"].map(lambda m: names.get(m, m))), x="model", y="mass_fraction",
                     color="region", title="Share of PET saliency per region (test patients of one repeat)",
                     labels={"mass_fraction": "share of saliency"})
        return (*without,
                mass.pivot(index="region", columns="model", values="mass_fraction").round(3),
                mass.pivot(index="region", columns="model", values="enrichment").round(2), bar)

    def findings(self, names: Mapping[str, str] | None = None) -> Any:
        """:func:`prrt_utils.report.findings.saliency_findings`, or the sentence that a real cohort has no outlines."""
        if self.mass is None:
            return findings.KeyFindings(("No ground-truth label maps: a real cohort has none, so where the saliency "
                                         "falls is shown, not scored.",))
        return findings.saliency_findings(self.mass, names)


def saliency_mass_section(explainer: Any, pet_models: Sequence[str], has_truth: bool, data_dir: str | Path = "") -> SaliencyMass:
    """:class:`SaliencyMass` of ``pet_models`` over the test patients of the explainer's repeat, with region volumes.

    Without ground truth (``has_truth`` false: an own cohort) or without PET models, nothing is computed.
    """
    if not (has_truth and pet_models):
        return SaliencyMass(None, None, f"No ground-truth label maps in {data_dir}: a real cohort has none, so this "
                                        "section is skipped.")
    mass = explainer.saliency_mass(list(pet_models))
    repeat = explainer.config.repeat
    ids = sorted(explainer.folds.loc[explainer.folds["repeat"] == repeat, "patient_id"].unique())
    vol = (explainer.labels_on_grid(ids)["volumes"].groupby("region", sort=False)
           [["volume_ml_fractional", "volume_ml_majority"]].sum())
    return SaliencyMass(mass, vol.assign(ratio=vol["volume_ml_majority"] / vol["volume_ml_fractional"]).round(2))


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
        if not self.ready:
            return ()
        lab = labelled(self.predictions)
        return (Markdown(f"**{len(self.predictions)}** patients predicted, **{len(lab)}** with a known 12-month "
                         f"outcome ({int(lab['y_true'].sum())} with PFS ≤ 12 months)."),)

    def shift_section(self) -> tuple[Any, ...]:
        """The flagged features in words and the shift table."""
        if not self.ready:
            return ()
        named = self.shift.assign(feature=self.shift["feature"].map(words))  # "CgA (µg/l)", not cga_ug_l
        expected = None if self.expected_shift is None else {words(f) for f in self.expected_shift}
        return (Markdown(shift_sentence(named, expected)), named.round(3))

    def discrimination_section(self) -> tuple[Any, ...]:
        """AUROC and AUPRC with intervals, and the AUROC beside the development cross-validation."""
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
        if not self.ready:
            return ()
        return (Markdown(hazard_ratio_sentence(self.figures["hazard_ratio"])), self.figures["km"])

    def report_section(self) -> tuple[Any, ...]:
        """The link to the example patient report."""
        if self.patient is None:
            return ()
        pred = self.patient.prediction
        return (HTML(f'<p><a href="{self.report_href}">Open the example report</a> (report '
                     f"{self.patient.report_id}: probability {pred['prob']:.2f}, fold models "
                     f"{pred['prob_folds_q05']:.2f} to {pred['prob_folds_q95']:.2f}).</p>"),)

    def findings(self, names: dict[str, str] | None = None) -> Any:
        """The chapter's key findings (:func:`prrt_utils.report.findings.validation_findings`)."""
        if not self.ready:
            return findings.KeyFindings(("No validation cohort: nothing to report.",))
        return findings.validation_findings(self.discrimination, self.development, self.calibration, self.model, names)


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
        Where the example patient report is written (default :func:`prrt_utils.report.book.static_dir`); the page
        links to it through :func:`prrt_utils.report.book.static_href`.

    Returns
    -------
    ValidationChapter
        Empty (``ready`` false) when the other cohort has no ``clinical.csv``.
    """
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


@dataclasses.dataclass(frozen=True)
class ClassificationValue:
    """Chapter 07's questions to the stored classification models: evaluation bias, calibration, value, uncertainty.

    Every part is computed from the stored out-of-fold predictions (nothing is
    retrained). Without any finished model every part is ``None`` and each
    section shows nothing but the first, which says why.

    Attributes
    ----------
    models : list of str
    evaluation : DataFrame or None
        :func:`evaluation_bias`: ``model, repeat, design, n, prevalence, auroc``.
    evaluation_wide : DataFrame or None
        Mean AUROC per model (rows) and design, with ``complete cases - truth``.
    calibration : DataFrame or None
        Per model, mean over repeats of ``prevalence, mean_prob, brier, intercept, slope``.
    reliability : DataFrame or None
        :func:`prrt_utils.analysis.calibration.reliability_table`.
    recalibration_basis : DataFrame or None
        :func:`prrt_utils.analysis.calibration.recalibration_basis` of the inner predictions.
    recalibrated : DataFrame or None
        ``brier, intercept, slope`` before and after recalibration within folds (``... recalibrated``).
    decision : DataFrame or None
        :func:`prrt_utils.analysis.calibration.decision_curve_over_repeats`.
    bootstrap : DataFrame or None
        Estimate and 95 % interval of AUROC and AUPRC per model, one column each.
    reference : str
        The pre-specified model the DeLong tests compare against (:func:`prrt_utils.analysis.families.primary_model`).
    delong : DataFrame or None
        :func:`prrt_utils.analysis.calibration.delong_summary`; ``None`` also with a single model.
    hazard_ratios : DataFrame or None
        :func:`cox_hr_by_group` of ``reference``'s predicted groups, one row per repeat.
    alpha : float
    """

    models: list[str]
    evaluation: pd.DataFrame | None = None
    evaluation_wide: pd.DataFrame | None = None
    calibration: pd.DataFrame | None = None
    reliability: pd.DataFrame | None = None
    recalibration_basis: pd.DataFrame | None = None
    recalibrated: pd.DataFrame | None = None
    decision: pd.DataFrame | None = None
    bootstrap: pd.DataFrame | None = None
    reference: str = ""
    delong: pd.DataFrame | None = None
    hazard_ratios: pd.DataFrame | None = None
    alpha: float = 0.05

    @property
    def available(self) -> bool:
        """Whether any classification model had results."""
        return self.evaluation is not None

    @property
    def lower(self) -> int:
        """Models whose complete-case AUROC is below their AUROC against the truth."""
        return int((self.evaluation_wide["complete cases - truth"] < 0).sum()) if self.available else 0

    @property
    def survivors(self) -> list[str]:
        """Models whose difference from :attr:`reference` survives Holm's adjustment in every repeat."""
        if self.delong is None:
            return []
        return self.delong.loc[self.delong["significant_holm"] == self.delong["repeats"], "model"].tolist()

    def evaluation_section(self, names: dict[str, str] | None = None) -> tuple[Any, ...]:
        """The complete-case evaluation table and its sentence, or why there is nothing to show."""
        if not self.available:
            return ("No classification model has finished results in this work folder: the sections below need them.",)
        ev, wide = self.evaluation, self.evaluation_wide
        return (wide.rename(index=names or {}).round(3), Markdown(
            f"Came out: the complete-case AUROC is lower than the AUROC against the truth for **{self.lower} of "
            f"{len(wide)}** models (mean difference {wide['complete cases - truth'].mean():+.3f}); "
            f"prevalence {ev.loc[ev['design'] == 'complete cases', 'prevalence'].mean():.2f} among complete cases vs "
            f"{ev.loc[ev['design'] == 'truth', 'prevalence'].mean():.2f} in truth."))

    def calibration_section(self, names: dict[str, str] | None = None) -> tuple[Any, ...]:
        """Mean calibration per model and the pooled reliability diagram."""
        if not self.available:
            return ()
        return (self.calibration.rename(index=names or {}).round(3), cal.reliability_figure(self.reliability, names))

    def recalibration_section(self, names: dict[str, str] | None = None) -> tuple[Any, ...]:
        """What the inner predictions hold per model, and calibration before and after recalibration."""
        if not self.available:
            return ()
        names = names or {}
        basis = self.recalibration_basis.assign(model=lambda f: f["model"].map(lambda m: names.get(m, m)))
        return (basis, self.recalibrated.rename(index=names).round(3))

    def decision_section(self, names: dict[str, str] | None = None) -> tuple[Any, ...]:
        """The decision curves and, per model, the thresholds where it beats both defaults."""
        if not self.available:
            return ()
        return (cal.decision_figure(self.decision, names), useful_thresholds(self.decision, self.models, names))

    def bootstrap_section(self, names: dict[str, str] | None = None) -> tuple[Any, ...]:
        """Bootstrap estimates and intervals, one row per model."""
        return (self.bootstrap.rename(index=names or {}).round(3),) if self.available else ()

    def delong_section(self, names: dict[str, str] | None = None, n_patients: int = 0) -> tuple[Any, ...]:
        """DeLong's comparisons with the reference and which differences survive, in words."""
        if self.delong is None:
            return ()
        names = names or {}
        survive = [names.get(m, m) for m in self.survivors]
        ref = names.get(self.reference, self.reference)
        return (self.delong.assign(model=self.delong["model"].map(lambda m: names.get(m, m))).round(3), Markdown(
            f"**Which differences survive.** Against {ref}, the AUROC difference is significant "
            f"after Holm's adjustment in every repeat for: {', '.join(survive) if survive else 'no model'}. "
            f"For the others the data do not show a difference at the {self.alpha:.0%} level in every repeat; "
            f"with about {n_patients} patients, small AUROC differences cannot be told apart from chance."))

    def summary_lines(self, names: dict[str, str] | None = None) -> list[str]:
        """The chapter summary's bullets about the classification models (none without results)."""
        if not self.available:
            return []
        names = names or {}
        wide, calib = self.evaluation_wide, self.calibration
        lines = [
            f"* **Complete-case evaluation** lowers the AUROC of {self.lower} of {len(wide)} stored models "
            f"(mean {wide['complete cases - truth'].mean():+.3f}).",
            f"* **Calibration**: slopes from {calib['slope'].min():.2f} to {calib['slope'].max():.2f} "
            f"(1 is ideal), Brier scores from {calib['brier'].min():.3f} to {calib['brier'].max():.3f}.",
        ]
        if self.delong is not None:
            survive = [names.get(m, m) for m in self.survivors]
            lines.append(f"* **DeLong**: against {names.get(self.reference, self.reference)}, differences surviving "
                         f"Holm's adjustment in every repeat: {', '.join(survive) if survive else 'none'}.")
        return lines


def assess_classification(predictions: pd.DataFrame | None, inner: pd.DataFrame | None, censored: pd.DataFrame,
                          survival: pd.DataFrame | None, models: Sequence[str], n_boot: int = 1000, seed: int = SEED,
                          alpha: float = 0.05, threshold: float = 0.5) -> ClassificationValue:
    """Compute every part of :class:`ClassificationValue` from stored predictions (chapter 07).

    Parameters
    ----------
    predictions : DataFrame or None
        Out-of-fold predictions of ``models``; ``None`` (or no model) gives an empty result.
    inner : DataFrame or None
        Inner predictions of the same folds (:func:`prrt_utils.models.stored.read_inner_results`).
    censored : DataFrame
        :func:`administrative_censoring` of the cohort.
    survival : DataFrame or None
        ``patient_id, pfs_months, event`` (uncensored PFS) for the hazard ratios.
    models : sequence of str
    n_boot, seed : int
        Bootstrap resamples and their seed.
    alpha : float
        Level of DeLong's tests (Holm-adjusted within a repeat).
    threshold : float
        P(long PFS) cut-off of the predicted groups of the hazard ratios.

    Returns
    -------
    ClassificationValue
    """
    models = list(models)
    if predictions is None or not models:
        return ClassificationValue(models=models, alpha=alpha)
    ev = evaluation_bias(predictions, censored)
    wide = ev.pivot_table(index="model", columns="design", values="auroc").reindex(models)
    wide["complete cases - truth"] = wide["complete cases"] - wide["truth"]
    calib = (cal.calibration_table(predictions, models)
             .groupby("model", sort=False)[["prevalence", "mean_prob", "brier", "intercept", "slope"]].mean())
    recal = cal.recalibrate_within_folds(predictions, inner)
    after = cal.calibration_table(recal, models).groupby("model", sort=False)[["brier", "intercept", "slope"]].mean()
    boot = cal.bootstrap_table(predictions, models, n_boot=n_boot, seed=seed)
    boot_wide = boot.set_index(["model", "metric"])[["estimate", "lower", "upper"]].unstack("metric")
    boot_wide.columns = [f"{m} {s}" for s, m in boot_wide.columns]
    best = families.primary_model(models)
    others = [m for m in models if m != best]
    delong = cal.delong_summary(cal.delong_table(predictions, best, others), alpha) if others else None
    hr = None
    if survival is not None:
        hr = pd.concat([
            cox_hr_by_group(families.survival_frame(predictions, survival, best, r), threshold, prob_is="short")
            .to_frame().assign(repeat=r)
            for r in sorted(predictions["repeat"].unique())
        ], ignore_index=True)
    return ClassificationValue(
        models=models, evaluation=ev, evaluation_wide=wide, calibration=calib,
        reliability=cal.reliability_table(predictions, models), recalibration_basis=cal.recalibration_basis(inner),
        recalibrated=calib[["brier", "intercept", "slope"]].join(after, rsuffix=" recalibrated"),
        decision=cal.decision_curve_over_repeats(predictions, models), bootstrap=boot_wide, reference=best,
        delong=delong, hazard_ratios=hr, alpha=alpha)


def classification_value(work_dir: str | Path, censored: pd.DataFrame, n_boot: int = 1000, seed: int = SEED,
                         alpha: float = 0.05) -> ClassificationValue:
    """:func:`assess_classification` of every model with finished results in ``WORK/results`` (none: empty)."""
    work_dir = Path(work_dir)
    models = families.available_models(work_dir) if (work_dir / "results").is_dir() else []
    if not models:
        return ClassificationValue(models=[], alpha=alpha)
    return assess_classification(stored.read_results(work_dir, models), stored.read_inner_results(work_dir, models),
                                 censored, families.read_survival(work_dir), models, n_boot=n_boot, seed=seed,
                                 alpha=alpha)
