"""Clinical value of the classification models: calibration, decision curves, uncertainty (chapter 07).

The paper (Baur et al. 2025, sections 2.6 and 3.2) reports discrimination only
(AUROC, AUPRC, accuracy). A statistician would ask three more questions of the
stored out-of-fold predictions (``WORK/results/predictions.parquet``,
``prob`` = predicted probability of PFS <= 12 months):

* **Calibration**: do predicted probabilities match observed frequencies?
  Reliability diagram (:func:`reliability_curve`, scikit-learn's
  ``calibration_curve``), Brier score, and logistic recalibration intercept
  ("calibration in the large", 0 is ideal) and slope (1 is ideal; < 1 means
  too extreme predictions) (:func:`calibration_stats`, statsmodels GLM).
  :func:`recalibrate_within_folds` fits a logistic (Platt) recalibration
  inside the training part of each fold, on predictions of training patients
  that no test patient of the fold influenced (:func:`platt_fit`).
* **Decision curves**: net benefit of "closer follow-up after PRRT if P(short
  PFS) >= threshold" against treat-all and treat-none (:func:`decision_curve`
  calls ``dcurves.dca``; the tests check it against the formula of Vickers & Elkin
  2006 written out by hand).
* **Uncertainty**: percentile bootstrap confidence intervals of AUROC and AUPRC
  of each patient's out-of-fold prediction averaged over the repeats, a defined
  estimand (:func:`averaged_predictions`, :func:`bootstrap_ci`,
  :func:`bootstrap_table`), and DeLong's test of two correlated AUROCs
  (:func:`delong_test`; the fast algorithm of Sun & Xu 2014, written by hand
  because no maintained Python library provides it; tested against a
  brute-force DeLong 1988 covariance, scikit-learn's AUROC and the published
  worked example of Hanley & McNeil's CT ratings: area 0.8932, DeLong standard
  error 0.0307).

Every function takes ``y`` (0/1, 1 = short PFS) and ``p`` (probability of short
PFS) for one set of patients; the ``*_table`` helpers loop over models and
repeats of a predictions frame (``model, repeat, fold, patient_id, y_true, prob``).
Within one repeat each patient is in exactly one test fold, so the pooled
out-of-fold set of a repeat has each patient once.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence

import dcurves
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import statsmodels.api as sm
from numpy.typing import ArrayLike
from scipy import stats as sps
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from statsmodels.stats.multitest import multipletests

from prrt_utils.io.figures import PALETTE
from prrt_utils.models.stored import INNER_SOURCES

__all__ = [
    "average_precision_rows",
    "averaged_predictions",
    "BOOTSTRAP_ESTIMAND",
    "BootstrapCI",
    "CalibrationError",
    "CalibrationResult",
    "DeLongResult",
    "bootstrap_ci",
    "bootstrap_table",
    "calibration_stats",
    "calibration_table",
    "decision_curve",
    "decision_curve_over_repeats",
    "decision_figure",
    "delong_summary",
    "delong_table",
    "delong_test",
    "platt_fit",
    "pooled_predictions",
    "RECALIBRATION_FITTED_ON",
    "recalibrate_within_folds",
    "recalibration_basis",
    "reliability_curve",
    "reliability_figure",
    "reliability_table",
]

EPS = 1e-6
"""Probabilities are clipped to ``[EPS, 1 - EPS]`` before the logit (a forest can predict exactly 0 or 1)."""


class CalibrationError(ValueError):
    """Inputs that cannot be scored (one class only, mismatched lengths, missing model)."""


def _yp(y: ArrayLike, p: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=float).ravel()
    p = np.asarray(p, dtype=float).ravel()
    if y.shape != p.shape:
        raise CalibrationError(f"y has {y.size} values but p has {p.size}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise CalibrationError("y must be 0/1 (1 = short PFS)")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise CalibrationError("p must be probabilities in [0, 1]")
    return y.astype(int), p


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, EPS, 1 - EPS)
    return np.log(q / (1 - q))


# --------------------------------------------------------------------------- calibration


@dataclasses.dataclass(frozen=True)
class CalibrationResult:
    """Calibration of one set of predictions.

    Attributes
    ----------
    n : int
        Patients.
    prevalence : float
        Observed share of short PFS.
    mean_prob : float
        Mean predicted probability (equal to ``prevalence`` for predictions
        calibrated in the large).
    brier : float
        Mean squared error of the probabilities, 0 = perfect; a constant
        prediction of the prevalence scores ``prevalence * (1 - prevalence)``.
    intercept : float
        Calibration in the large: ``a`` in ``logit P(y=1) = a + logit(p)``
        (slope fixed at 1). 0 is ideal; > 0 means the model under-predicts risk.
    slope : float
        ``b`` in ``logit P(y=1) = a' + b logit(p)``. 1 is ideal; < 1 means the
        predictions are too extreme (over-fitting), > 1 too modest.
    intercept_ci, slope_ci : tuple of float
        95 % Wald confidence intervals.
    method : str
    """

    n: int
    prevalence: float
    mean_prob: float
    brier: float
    intercept: float
    intercept_ci: tuple[float, float]
    slope: float
    slope_ci: tuple[float, float]
    method: str

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([dataclasses.asdict(self)])


def calibration_stats(y: ArrayLike, p: ArrayLike) -> CalibrationResult:
    """Brier score and logistic calibration intercept and slope (Cox 1958; Van Calster et al. 2019).

    Parameters
    ----------
    y : array, shape (n,)
        Observed class, 1 = short PFS.
    p : array, shape (n,)
        Predicted probability of short PFS.

    Returns
    -------
    CalibrationResult
        Intercept and slope come from unpenalised logistic regressions
        (``statsmodels`` GLM, binomial family) on ``logit(p)``: the intercept with
        ``logit(p)`` as an offset, the slope with ``logit(p)`` as the covariate.
    """
    y, p = _yp(y, p)
    if y.min() == y.max():
        raise CalibrationError("calibration needs both classes among the patients")
    lp = _logit(p)
    fam = sm.families.Binomial()
    large = sm.GLM(y, np.ones((len(y), 1)), family=fam, offset=lp).fit()
    if np.ptp(lp) > 0:
        weak = sm.GLM(y, sm.add_constant(lp), family=fam).fit()
        slope, slope_ci = float(weak.params[1]), tuple(float(v) for v in weak.conf_int()[1])
    else:  # constant predictions: no slope can be estimated
        slope, slope_ci = math.nan, (math.nan, math.nan)
    return CalibrationResult(
        n=len(y),
        prevalence=float(y.mean()),
        mean_prob=float(p.mean()),
        brier=float(brier_score_loss(y, p)),
        intercept=float(large.params[0]),
        intercept_ci=tuple(float(v) for v in large.conf_int()[0]),
        slope=slope,
        slope_ci=slope_ci,
        method="Brier (sklearn); logistic recalibration intercept (offset logit p) and slope (statsmodels GLM)",
    )


def reliability_curve(y: ArrayLike, p: ArrayLike, n_bins: int = 5, strategy: str = "quantile") -> pd.DataFrame:
    """Points of a reliability diagram: mean predicted vs observed share of short PFS per bin.

    Returns
    -------
    DataFrame
        ``mean_predicted, observed, n`` per non-empty bin (``sklearn.calibration.calibration_curve``,
        with the bin sizes added for the marker size).
    """
    y, p = _yp(y, p)
    observed, predicted = calibration_curve(y, p, n_bins=n_bins, strategy=strategy)
    if strategy == "quantile":  # the bins of sklearn's calibration_curve, to count patients per point
        edges = np.percentile(p, np.linspace(0, 100, n_bins + 1))
    else:
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=n_bins)
    counts = counts[counts > 0]
    return pd.DataFrame({"mean_predicted": predicted, "observed": observed, "n": counts[: len(observed)]})


def pooled_predictions(predictions: pd.DataFrame, model: str, repeat: int) -> pd.DataFrame:
    """One repeat's out-of-fold predictions of ``model``: each patient once (``patient_id, y_true, prob, fold``)."""
    sub = predictions[(predictions["model"] == model) & (predictions["repeat"] == repeat)]
    if sub.empty:
        raise CalibrationError(f"no predictions of model {model!r} in repeat {repeat}")
    if sub["patient_id"].duplicated().any():
        raise CalibrationError(f"model {model!r}, repeat {repeat}: a patient appears in two test folds")
    return sub.sort_values("patient_id").reset_index(drop=True)


def _model_repeats(predictions: pd.DataFrame, models: Sequence[str] | None) -> list[tuple[str, int]]:
    models = list(models) if models is not None else list(dict.fromkeys(predictions["model"]))
    return [(m, int(r)) for m in models for r in sorted(predictions.loc[predictions["model"] == m, "repeat"].unique())]


def calibration_table(predictions: pd.DataFrame, models: Sequence[str] | None = None) -> pd.DataFrame:
    """:func:`calibration_stats` per model and repeat of pooled out-of-fold predictions.

    Returns
    -------
    DataFrame
        ``model, repeat, n, prevalence, mean_prob, brier, intercept, slope`` (and CIs).
    """
    rows = []
    for m, r in _model_repeats(predictions, models):
        pooled = pooled_predictions(predictions, m, r)
        res = calibration_stats(pooled["y_true"], pooled["prob"])
        rows.append({"model": m, "repeat": r, **dataclasses.asdict(res)})
    return pd.DataFrame(rows).drop(columns="method")


def reliability_table(predictions: pd.DataFrame, models: Sequence[str] | None = None, n_bins: int = 5) -> pd.DataFrame:
    """Reliability points of every model from all repeats' out-of-fold predictions pooled (``model`` column added).

    Quantile bins over the 5 x N predictions: each repeat contributes each
    patient once, so a point is an average over repeats as well as patients.
    """
    parts = []
    for m in (list(models) if models is not None else list(dict.fromkeys(predictions["model"]))):
        sub = predictions[predictions["model"] == m]
        parts.append(reliability_curve(sub["y_true"], sub["prob"], n_bins=n_bins).assign(model=m))
    return pd.concat(parts, ignore_index=True)[["model", "mean_predicted", "observed", "n"]]


def platt_fit(y: ArrayLike, p: ArrayLike) -> tuple[float, float]:
    """Platt's logistic recalibration ``P(y=1) = sigmoid(a + b logit(p))``, with Platt's smoothed targets.

    Platt (1999) fits the two parameters by maximum likelihood against the
    targets ``(N+ + 1) / (N+ + 2)`` for the positives and ``1 / (N- + 2)`` for
    the negatives instead of 1 and 0, so that a small or perfectly separated
    calibration set (a fold's validation split holds some 15 patients) gives a
    finite, moderate fit instead of an infinite slope. Unpenalised otherwise.

    Returns
    -------
    (a, b) : float
        Intercept and slope on the logit scale.
    """
    y, p = _yp(y, p)
    if y.min() == y.max():
        raise CalibrationError("recalibration needs both classes among the patients it is fitted on")
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1.0 / (n_neg + 2))
    x = _logit(p)[:, None]
    with warnings.catch_warnings():  # C=inf is sklearn 1.8's spelling of "no penalty"; it still warns
        warnings.simplefilter("ignore", UserWarning)
        lr = LogisticRegression(C=np.inf, max_iter=1000).fit(
            np.vstack([x, x]), np.r_[np.ones(len(y)), np.zeros(len(y))], sample_weight=np.r_[t, 1 - t])
    return float(lr.intercept_[0]), float(lr.coef_[0, 0])


RECALIBRATION_FITTED_ON = (
    "each fold's inner predictions: patients of that fold's TRAINING part, predicted by that fold's own model "
    "(networks: its validation split, held out of fitting but used to choose the stopping epoch; tabular models: "
    "an inner 3-fold cross-validation over the training part). No test patient of the fold, and no model that "
    "trained on one, is involved."
)
"""What :func:`recalibrate_within_folds` is fitted on, in words for the book."""


def recalibrate_within_folds(predictions: pd.DataFrame, inner: pd.DataFrame) -> pd.DataFrame:
    """Platt recalibration of each fold's test predictions, fitted inside that fold's training part.

    For every ``(model, repeat, fold)`` the two parameters of :func:`platt_fit`
    are fitted on the fold's inner predictions only (``inner``, from
    :func:`prrt_utils.models.stored.read_inner_results`: the fold's own model predicting
    training patients it was not fitted on; see
    :data:`prrt_utils.models.stored.INNER_SOURCES`) and applied to the fold's test
    predictions. No row of another fold is read: the other folds' out-of-fold
    predictions, which the version before issue 15 used, come from models
    trained on this fold's test patients.

    Limitation (stated in the book): a network's inner predictions are those of
    its validation split, which also chose the stopping epoch, so they are a
    little more favourable than truly new patients; and they are few (about a
    fifth of the training part), so the recalibration is noisy, which Platt's
    smoothed targets keep finite.

    Returns
    -------
    DataFrame
        The input with ``prob`` replaced by the recalibrated probability, the
        original kept as ``prob_raw``, and ``recalibrated``: False for a fold whose
        inner predictions hold one class only (possible on a small cohort; no
        slope can be fitted, so its predictions are left as they are, and
        :func:`recalibration_basis` counts such folds).

    Raises
    ------
    CalibrationError
        A fold without inner predictions (trained before they were written, or
        a network without validation split), or whose inner predictions hold one
        of its own test patients.
    """
    keys = ["model", "repeat", "fold"]
    inner_groups = {k: g for k, g in inner.groupby(keys, sort=False)} if len(inner) else {}
    out = []
    for key, test in predictions.groupby(keys, sort=False):
        fit = inner_groups.get(key)
        where = f"model {key[0]!r}, repeat {key[1]}, fold {key[2]}"
        if fit is None or fit.empty:
            raise CalibrationError(f"{where}: no inner predictions to recalibrate on (retrain the fold: folds "
                                   "finished before inner_predictions.parquet existed lack them)")
        leak = sorted(set(fit["patient_id"]) & set(test["patient_id"]))
        if leak:
            raise CalibrationError(f"{where}: the inner predictions hold test patient {leak[0]} of the same fold")
        if fit["y_true"].nunique() < 2:  # nothing to fit a slope on: the fold is left as it is, and says so
            out.append(test.assign(prob_raw=test["prob"], recalibrated=False))
            continue
        a, b = platt_fit(fit["y_true"], fit["prob"])
        new = 1.0 / (1.0 + np.exp(-(a + b * _logit(test["prob"].to_numpy()))))
        out.append(test.assign(prob_raw=test["prob"], prob=new, recalibrated=True))
    return pd.concat(out).sort_index()


def recalibration_basis(inner: pd.DataFrame) -> pd.DataFrame:
    """Per model: what its recalibration was fitted on and how many patients per fold (median, min).

    Returns
    -------
    DataFrame
        ``model, fitted on, patients per fold (median), (min), short PFS per fold (median),
        folds left as they are (one class)``.
    """
    per = inner.groupby(["model", "repeat", "fold"], sort=False).agg(
        source=("source", "first"), n=("patient_id", "size"), pos=("y_true", "sum"),
        classes=("y_true", "nunique")).reset_index()
    rows = []
    for m, g in per.groupby("model", sort=False):
        rows.append({"model": m, "fitted on": "; ".join(INNER_SOURCES.get(x, x) for x in g["source"].unique()),
                     "patients per fold (median)": float(g["n"].median()), "(min)": int(g["n"].min()),
                     "short PFS per fold (median)": float(g["pos"].median()),
                     "folds left as they are (one class)": int((g["classes"] < 2).sum())})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- decision curves


def decision_curve(frame: pd.DataFrame, models: Sequence[str], thresholds: ArrayLike | None = None,
                   outcome: str = "y_true") -> pd.DataFrame:
    """Net benefit of each model against treat-all and treat-none, via ``dcurves.dca``.

    Parameters
    ----------
    frame : DataFrame
        One row per patient: ``outcome`` (0/1) and one probability column per model.
    models : sequence of str
        Columns of ``frame`` holding probabilities of short PFS.
    thresholds : array, optional
        Threshold probabilities, default 0.05 to 0.80 in steps of 0.01.

    Returns
    -------
    DataFrame
        ``model, threshold, net_benefit`` (``model`` also ``all`` and ``none``).
    """
    th = np.round(np.arange(0.05, 0.801, 0.01), 2) if thresholds is None else np.asarray(thresholds, dtype=float)
    res = dcurves.dca(data=frame[[outcome, *models]].reset_index(drop=True), outcome=outcome,
                      modelnames=list(models), thresholds=list(th))
    return res[["model", "threshold", "net_benefit"]].reset_index(drop=True)


def decision_curve_over_repeats(predictions: pd.DataFrame, models: Sequence[str],
                                thresholds: ArrayLike | None = None) -> pd.DataFrame:
    """Decision curves of each repeat's pooled out-of-fold predictions, averaged over repeats.

    Returns
    -------
    DataFrame
        ``model, threshold, net_benefit`` (mean over repeats; ``all`` and ``none`` included).
    """
    parts = []
    for r in sorted(predictions["repeat"].unique()):
        sub = predictions[(predictions["repeat"] == r) & predictions["model"].isin(list(models))]
        wide = sub.pivot(index="patient_id", columns="model", values="prob")
        wide["y_true"] = sub.groupby("patient_id")["y_true"].first()
        parts.append(decision_curve(wide.reset_index(), list(models), thresholds).assign(repeat=int(r)))
    allc = pd.concat(parts, ignore_index=True)
    out = allc.groupby(["model", "threshold"], sort=False)["net_benefit"].mean().reset_index()
    return out


# --------------------------------------------------------------------------- bootstrap


@dataclasses.dataclass(frozen=True)
class BootstrapCI:
    """Percentile bootstrap interval of a statistic over resampled patients.

    Attributes
    ----------
    estimate : float
        The statistic on the original sample.
    lower, upper : float
        ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of the bootstrap replicates.
    level : float
    n_boot : int
        Replicates drawn; those with one class only are skipped (``n_valid``).
    n_valid : int
    """

    estimate: float
    lower: float
    upper: float
    level: float
    n_boot: int
    n_valid: int

    def format(self, digits: int = 2) -> str:
        return f"{self.estimate:.{digits}f} [{self.lower:.{digits}f}, {self.upper:.{digits}f}]"


METRIC_FUNCS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "auroc": roc_auc_score,
    "auprc": average_precision_score,
}


def average_precision_rows(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Average precision of every row of ``(B, n)`` labels and scores at once.

    The step-wise definition :func:`sklearn.metrics.average_precision_score`
    uses, ``sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds from
    high to low (tied scores form one threshold), vectorised over rows for the
    bootstrap; equal to scikit-learn's value row by row (tested). Rows need at
    least one positive.
    """
    y = np.asarray(y, dtype=float)
    s = np.asarray(s, dtype=float)
    order = np.argsort(-s, axis=1, kind="mergesort")
    ys = np.take_along_axis(y, order, axis=1)
    ss = np.take_along_axis(s, order, axis=1)
    tp = np.cumsum(ys, axis=1)
    precision = tp / np.arange(1, y.shape[1] + 1)
    last = np.ones_like(ss, dtype=bool)  # the last position of each group of tied scores is a threshold
    last[:, :-1] = ss[:, 1:] != ss[:, :-1]
    tp_at_thresholds = np.where(last, tp, 0.0)
    previous = np.maximum.accumulate(np.concatenate([np.zeros((len(y), 1)), tp_at_thresholds[:, :-1]], axis=1), axis=1)
    return np.where(last, (tp - previous) * precision, 0.0).sum(axis=1) / tp[:, -1]


def bootstrap_ci(y: ArrayLike, p: ArrayLike, metric: str | Callable = "auroc", n_boot: int = 1000,
                 level: float = 0.95, seed: int = 0) -> BootstrapCI:
    """Percentile bootstrap CI of ``metric(y, p)`` resampling patients with replacement.

    Parameters
    ----------
    metric : {"auroc", "auprc"} or callable ``f(y, p) -> float``
    n_boot : int
        Bootstrap replicates.
    seed : int
        Seed of ``numpy.random.default_rng``: the same seed gives the same interval.
    """
    y, p = _yp(y, p)
    f = METRIC_FUNCS[metric] if isinstance(metric, str) else metric
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(n_boot, len(y)))
    yb, pb = y[idx], p[idx]
    npos = yb.sum(axis=1)
    valid = (npos > 0) & (npos < len(y))
    if metric == "auroc":  # all replicates at once: Mann-Whitney form of the AUROC (equals roc_auc_score)
        ranks = sps.rankdata(pb, axis=1)
        m, n = npos[valid], len(y) - npos[valid]
        reps = ((ranks[valid] * yb[valid]).sum(axis=1) - m * (m + 1) / 2) / (m * n)
    elif metric == "auprc":
        reps = average_precision_rows(yb[valid], pb[valid])
    else:
        reps = [f(a, b) for a, b in zip(yb[valid], pb[valid], strict=True)]
    lo, hi = np.percentile(reps, [50 * (1 - level), 50 * (1 + level)])
    return BootstrapCI(float(f(y, p)), float(lo), float(hi), level, n_boot, len(reps))


def averaged_predictions(predictions: pd.DataFrame, model: str) -> pd.DataFrame:
    """Each patient's out-of-fold probability of ``model`` averaged over the repeats.

    Within a repeat each patient has exactly one out-of-fold prediction (from
    the one model of that repeat that did not train on them), so the mean over
    ``R`` repeats is a per-patient quantity: the prediction of the "repeated
    cross-validation ensemble", still out of fold for every patient.

    Returns
    -------
    DataFrame
        ``patient_id, y_true, prob, n_repeats``, one row per patient, sorted by id.

    Raises
    ------
    CalibrationError
        No predictions of ``model``, a patient twice in one repeat, or a patient
        missing from some repeat (the average would mix different numbers of repeats).
    """
    sub = predictions[predictions["model"] == model]
    if sub.empty:
        raise CalibrationError(f"no predictions of model {model!r}")
    if sub.duplicated(["repeat", "patient_id"]).any():
        raise CalibrationError(f"model {model!r}: a patient appears in two test folds of one repeat")
    out = (sub.groupby("patient_id", sort=True)
           .agg(y_true=("y_true", "first"), prob=("prob", "mean"), n_repeats=("repeat", "nunique"),
                y_values=("y_true", "nunique"))
           .reset_index())
    if (out["n_repeats"] != sub["repeat"].nunique()).any():
        raise CalibrationError(f"model {model!r}: some patients lack an out-of-fold prediction in some repeat")
    if (out["y_values"] != 1).any():
        raise CalibrationError(f"model {model!r}: a patient has different outcomes in different repeats")
    return out.drop(columns="y_values")


BOOTSTRAP_ESTIMAND = ("AUROC/AUPRC of each patient's out-of-fold probability averaged over the repeats "
                      "(patients resampled with replacement, percentile interval)")
"""What :func:`bootstrap_table` estimates and resamples, in words for the book."""


def bootstrap_table(predictions: pd.DataFrame, models: Sequence[str] | None = None, n_boot: int = 1000,
                    level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Bootstrap CIs of AUROC and AUPRC of the repeat-averaged out-of-fold prediction, per model.

    The estimand is defined: the AUROC (AUPRC) of ``prob`` =
    each patient's out-of-fold probability averaged over the repeats
    (:func:`averaged_predictions`), one value per patient. ``estimate`` is that
    metric on the cohort (``roc_auc_score(y, prob)``); the interval resamples
    patients with replacement (:func:`bootstrap_ci`). Averaging per-repeat
    intervals instead (what this function did before issue 15) gives the
    bounds of no quantity: it is neither the interval of one repeat nor that
    of the averaged prediction. Note that the averaged prediction's AUROC is
    usually a little above the mean of the per-repeat AUROCs (averaging smooths
    the noise of single training runs); the interval reflects the finite number
    of patients, not the variation between training sets.

    Returns
    -------
    DataFrame
        ``model, metric, estimate, lower, upper, n_patients, n_repeats`` (same seed
        for every model, and patients in the same order, so the intervals of two
        models resample the same patients).
    """
    rows = []
    for m in (list(models) if models is not None else list(dict.fromkeys(predictions["model"]))):
        avg = averaged_predictions(predictions, m)
        for metric in METRIC_FUNCS:
            ci = bootstrap_ci(avg["y_true"], avg["prob"], metric, n_boot, level, seed)
            rows.append({"model": m, "metric": metric, "estimate": ci.estimate, "lower": ci.lower,
                         "upper": ci.upper, "n_patients": len(avg), "n_repeats": int(avg["n_repeats"].iloc[0])})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- DeLong


@dataclasses.dataclass(frozen=True)
class DeLongResult:
    """DeLong's test of two correlated AUROCs on the same patients (DeLong et al. 1988).

    Attributes
    ----------
    auc1, auc2 : float
        AUROC of each score (equal to ``sklearn.metrics.roc_auc_score``).
    difference : float
        ``auc1 - auc2``.
    se : float
        Standard error of the difference.
    ci : tuple of float
        95 % normal-approximation interval of the difference.
    z : float
        ``difference / se``.
    p_value : float
        Two-sided; small values mean the AUROCs differ.
    covariance : ndarray, shape (2, 2)
        DeLong covariance of ``(auc1, auc2)``.
    method : str
    """

    auc1: float
    auc2: float
    difference: float
    se: float
    ci: tuple[float, float]
    z: float
    p_value: float
    covariance: np.ndarray = dataclasses.field(compare=False, repr=False)
    method: str = "DeLong test, fast algorithm of Sun & Xu (2014)"

    def to_frame(self) -> pd.DataFrame:
        d = dataclasses.asdict(self)
        d.pop("covariance")
        return pd.DataFrame([d])


def _midrank(x: np.ndarray) -> np.ndarray:
    """Mid-ranks (ties share the average rank), 1-based, along the last axis."""
    return sps.rankdata(x, method="average", axis=-1)


def delong_covariance(y: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs and their DeLong covariance for ``k`` scores on the same patients (Sun & Xu 2014).

    Parameters
    ----------
    y : array, shape (n,)
        0/1 labels.
    scores : array, shape (k, n)
        Higher score = more likely class 1.

    Returns
    -------
    aucs : ndarray, shape (k,)
    cov : ndarray, shape (k, k)
        ``S10 / m + S01 / n`` with the covariance matrices of the structural
        components (placement values) of the m positives and n negatives.
    """
    y = np.asarray(y).astype(int).ravel()
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    pos, neg = s[:, y == 1], s[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m < 2 or n < 2:
        raise CalibrationError("DeLong needs at least two patients of each class")
    tx, ty = _midrank(pos), _midrank(neg)
    tz = _midrank(np.concatenate([pos, neg], axis=1))
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v10 = (tz[:, :m] - tx) / n  # per positive: share of negatives scored below it (ties count 1/2)
    v01 = 1.0 - (tz[:, m:] - ty) / m  # per negative: share of positives scored above it
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def delong_test(y: ArrayLike, p1: ArrayLike, p2: ArrayLike, level: float = 0.95) -> DeLongResult:
    """Two-sided DeLong test of ``AUROC(p1) == AUROC(p2)`` on the same patients.

    Written by hand (no maintained Python library; pROC's ``roc.test`` is R).
    """
    y, a = _yp(y, p1)
    _, b = _yp(y, p2)
    aucs, cov = delong_covariance(y, np.vstack([a, b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    zq = sps.norm.ppf(0.5 + level / 2)
    if se > 0:
        z = diff / se
        p = float(2 * sps.norm.sf(abs(z)))
    else:  # identical rankings
        z, p = (0.0, 1.0) if diff == 0 else (math.inf, 0.0)
    return DeLongResult(float(aucs[0]), float(aucs[1]), diff, se, (diff - zq * se, diff + zq * se), float(z), p, cov)


def delong_table(predictions: pd.DataFrame, reference: str, others: Sequence[str]) -> pd.DataFrame:
    """DeLong test of ``reference`` against each of ``others``, per repeat (pooled out-of-fold predictions).

    Returns
    -------
    DataFrame
        ``model, repeat, auc_reference, auc_model, difference, ci_low, ci_high, p_value,
        p_holm`` where ``p_holm`` is Holm-adjusted over the ``others`` within a
        repeat (statsmodels ``multipletests``).
    """
    rows = []
    repeats = sorted(predictions.loc[predictions["model"] == reference, "repeat"].unique())
    for r in repeats:
        ref = pooled_predictions(predictions, reference, int(r)).set_index("patient_id")
        part = []
        for m in others:
            oth = pooled_predictions(predictions, m, int(r)).set_index("patient_id").loc[ref.index]
            res = delong_test(ref["y_true"], ref["prob"], oth["prob"])
            part.append({"model": m, "repeat": int(r), "auc_reference": res.auc1, "auc_model": res.auc2,
                         "difference": res.difference, "ci_low": res.ci[0], "ci_high": res.ci[1],
                         "z": res.z, "p_value": res.p_value})
        if part:
            adj = multipletests([row["p_value"] for row in part], method="holm")[1]
            for row, pa in zip(part, adj, strict=True):
                row["p_holm"] = float(pa)
        rows.extend(part)
    return pd.DataFrame(rows)


def delong_summary(table: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Per compared model: mean AUROC difference and in how many repeats DeLong's test rejects.

    Returns
    -------
    DataFrame
        ``model, repeats, mean_difference, significant_raw, significant_holm, verdict``
        where the verdict says whether the difference survives Holm's adjustment
        in every repeat, in some, or in none.
    """
    rows = []
    for m, sub in table.groupby("model", sort=False):
        k, n = int((sub["p_holm"] < alpha).sum()), len(sub)
        verdict = ("survives in every repeat" if k == n else "survives in none of the repeats" if k == 0
                   else f"survives in {k} of {n} repeats")
        rows.append({"model": m, "repeats": n, "mean_difference": float(sub["difference"].mean()),
                     "significant_raw": int((sub["p_value"] < alpha).sum()), "significant_holm": k,
                     "verdict": verdict})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- figures


def reliability_figure(points: pd.DataFrame, names: dict[str, str] | None = None) -> object:
    """Plotly reliability diagram from :func:`reliability_table`: one line per model and the diagonal."""
    names = names or {}
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dash", "color": "grey"},
                             name="perfect calibration"))
    for i, (m, sub) in enumerate(points.groupby("model", sort=False)):
        colour = PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(x=sub["mean_predicted"], y=sub["observed"], mode="lines+markers", line={"color": colour},
                                 marker={"size": 4 + 10 * sub["n"] / points["n"].max(), "color": colour}, name=names.get(m, m),
                                 customdata=sub["n"], hovertemplate="predicted %{x:.2f}<br>observed %{y:.2f}<br>n %{customdata}"))
    fig.update_layout(xaxis_title="mean predicted P(PFS ≤ 12 months)", yaxis_title="observed share with PFS ≤ 12 months",
                      xaxis_range=[0, 1], yaxis_range=[0, 1], width=650, height=500)
    return fig


def decision_figure(curves: pd.DataFrame, names: dict[str, str] | None = None) -> object:
    """Plotly decision curves from :func:`decision_curve` output (``model, threshold, net_benefit``)."""
    names = {"all": "follow up everyone", "none": "follow up no one", **(names or {})}
    fig = go.Figure()
    models = [m for m in dict.fromkeys(curves["model"]) if m not in ("all", "none")]
    for m, sub in curves.groupby("model", sort=False):
        style = {"dash": "dot", "color": "black"} if m in ("all", "none") else {"color": PALETTE[models.index(m) % len(PALETTE)]}
        fig.add_trace(go.Scatter(x=sub["threshold"], y=sub["net_benefit"], mode="lines", line=style,
                                 name=names.get(m, m)))
    top = curves["net_benefit"].max()
    fig.update_layout(xaxis_title="threshold probability of PFS ≤ 12 months for closer follow-up",
                      yaxis_title="net benefit", yaxis_range=[-0.05, max(top, 0.05) * 1.1], width=750, height=480)
    return fig
