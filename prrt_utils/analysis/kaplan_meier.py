"""PFS of the patients a model predicts short vs long: Kaplan-Meier, log-rank and Cox (paper 3.3, Figure 5).

Pure functions on one prediction per patient (``patient_id, prob, pfs_months, event``), used by
chapter 05 (Figure 5), chapter 07 (hazard ratio per repeat) and chapter 08 (the validation
report). Nothing here reads files or draws: :func:`prrt_utils.io.figures.km_figure` draws
:meth:`KMByPrediction.labelled_curves`.

* :func:`km_by_prediction`: Kaplan-Meier curves of the predicted-long and predicted-short groups
  (P(long PFS) >= 0.5 vs < 0.5), the log-rank test and the group medians.
* :func:`cox_hr_by_group`: the hazard ratio of predicted short against predicted long PFS.

Libraries: lifelines (``KaplanMeierFitter``, ``logrank_test``, ``CoxPHFitter``); the medians by
:func:`prrt_utils.data.cohort_stats.km_quantile` (R survival's rule).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.statistics import logrank_test
from lifelines.utils import median_survival_times

from prrt_utils.analysis.stats import StatsError, require_columns
from prrt_utils.data.cohort_stats import km_quantile
from prrt_utils.models.stored import predicted_long, prediction_rule

__all__ = [
    "GROUP_LONG",
    "GROUP_SHORT",
    "CoxHRResult",
    "KMByPrediction",
    "cox_hr_by_group",
    "km_by_prediction",
]

GROUP_LONG = "predicted long PFS"
GROUP_SHORT = "predicted short PFS"


@dataclasses.dataclass(frozen=True)
class KMByPrediction:
    """Kaplan-Meier of PFS stratified by predicted probability, with log-rank test (paper 3.3, Figure 5).

    Attributes
    ----------
    threshold : float
        Cut-off on the predicted probability of LONG PFS.
    prob_is : str
        What the input ``prob`` was: ``"long"`` (P(PFS > 12 months)) or
        ``"short"`` (P(PFS <= 12 months), then P(long) = 1 - prob).
    rule : str
        Which side of the threshold is which group, in words.
    n_long, n_short : int
        Patients predicted long PFS (P(long) >= threshold, the paper's "high
        response") and short PFS (P(long) < threshold).
    events_long, events_short : int
        Progression events in each group.
    median_long, median_short : float
        Kaplan-Meier median PFS in months (inf if the curve never reaches 0.5,
        NaN for an empty group).
    median_long_ci, median_short_ci : tuple of float
        95 % confidence interval of each median (lifelines, exponential Greenwood).
    logrank_statistic : float
        Log-rank chi-square (1 degree of freedom); NaN if a group is empty.
    p_value : float
        Its p-value; small values mean the two PFS curves differ.
    fitters : dict
        ``{group: lifelines.KaplanMeierFitter}`` for plotting (not compared).
    assignments : DataFrame
        ``patient_id, p_long, group`` (not compared).
    """

    threshold: float
    prob_is: str
    rule: str
    n_long: int
    n_short: int
    events_long: int
    events_short: int
    median_long: float
    median_short: float
    median_long_ci: tuple[float, float]
    median_short_ci: tuple[float, float]
    logrank_statistic: float
    p_value: float
    method: str
    fitters: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)
    assignments: pd.DataFrame | None = dataclasses.field(default=None, compare=False, repr=False)

    def to_frame(self) -> pd.DataFrame:
        """One row (stackable over models/folds): group sizes, medians (months), log-rank chi2 and p."""
        return pd.DataFrame(
            [
                {
                    "rule": self.rule,
                    "n_long": self.n_long,
                    "n_short": self.n_short,
                    "events_long": self.events_long,
                    "events_short": self.events_short,
                    "median_pfs_long_months": self.median_long,
                    "median_pfs_long_ci": self.median_long_ci,
                    "median_pfs_short_months": self.median_short,
                    "median_pfs_short_ci": self.median_short_ci,
                    "logrank_chi2": self.logrank_statistic,
                    "p_value": self.p_value,
                }
            ]
        )

    def curves(self) -> pd.DataFrame:
        """Tidy step curves for plotting: ``group, time_months, survival, ci_lower, ci_upper``."""
        parts = []
        for group, kmf in self.fitters.items():
            sf = kmf.survival_function_.iloc[:, 0]
            ci = kmf.confidence_interval_survival_function_
            parts.append(
                pd.DataFrame(
                    {
                        "group": group,
                        "time_months": sf.index.to_numpy(dtype=float),
                        "survival": sf.to_numpy(),
                        "ci_lower": ci.iloc[:, 0].to_numpy(),
                        "ci_upper": ci.iloc[:, 1].to_numpy(),
                    }
                )
            )
        return (
            pd.concat(parts, ignore_index=True)
            if parts
            else pd.DataFrame(columns=["group", "time_months", "survival", "ci_lower", "ci_upper"])
        )

    def labelled_curves(self) -> pd.DataFrame:
        """:meth:`curves` with each group named for a legend: ``predicted long PFS (n=12, median 20.1 months)``."""
        sizes = {GROUP_LONG: (self.n_long, self.median_long), GROUP_SHORT: (self.n_short, self.median_short)}
        label = {g: f"{g} (n={n}, median {med:.1f} months)" for g, (n, med) in sizes.items()}
        curves = self.curves()
        return curves.assign(group=curves["group"].map(label))

    def logrank_text(self) -> str:
        """``"log-rank chi2 = 4.12, p = 0.0424"``: the test in a figure title."""
        return f"log-rank chi2 = {self.logrank_statistic:.2f}, p = {self.p_value:.3g}"


def _check_survival_frame(df: pd.DataFrame) -> pd.DataFrame:
    require_columns(df, ["patient_id", "prob", "pfs_months", "event"], "km_by_prediction")
    frame = df[["patient_id", "prob", "pfs_months", "event"]].copy()
    dup = frame["patient_id"].duplicated()
    if dup.any():
        raise StatsError(
            f"km_by_prediction: patient {frame.loc[dup, 'patient_id'].iloc[0]} appears more than once; "
            "pass one prediction per patient (e.g. the test folds of a single repeat)"
        )
    for col in ("prob", "pfs_months", "event"):
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = ~np.isfinite(values)
        if bad.any():
            raise StatsError(
                f"km_by_prediction: patient {frame.loc[bad, 'patient_id'].iloc[0]} has a missing or non-numeric {col}"
            )
        frame[col] = values.astype(float)
    checks = [
        ((frame["prob"] < 0) | (frame["prob"] > 1), "prob outside [0, 1]"),
        (frame["pfs_months"] < 0, "negative pfs_months"),
        (~frame["event"].isin([0, 1]), "event not 0 or 1"),
    ]
    for bad, problem in checks:
        if bad.any():
            raise StatsError(
                f"km_by_prediction: patient {frame.loc[bad, 'patient_id'].iloc[0]} has {problem}"
            )
    frame["event"] = frame["event"].astype(int)
    return frame


def km_by_prediction(
    df: pd.DataFrame, threshold: float = 0.5, *, prob_is: Literal["short", "long"]
) -> KMByPrediction:
    """Kaplan-Meier curves of PFS for patients predicted long vs short PFS, and the log-rank test.

    Paper 3.3 / Figure 5: patients whose predicted probability of LONG PFS
    (> 12 months) is ``>= threshold`` form the "predicted long PFS" (high
    response, low risk) group; the others (``< threshold``) the "predicted
    short PFS" (low response, high risk) group. ``prob_is`` is required so
    that the direction can never be guessed wrong: with ``prob_is="short"``,
    ``P(long) = 1 - prob``, so a patient with ``prob == 1 - threshold``
    exactly is in the long group.

    Parameters
    ----------
    df : DataFrame
        Columns ``patient_id, prob, pfs_months, event`` (event 1 = progression,
        0 = censored), one row per patient (one repeat's test predictions).
    threshold : float
        Cut-off on P(long PFS), in (0, 1); 0.5 in the paper.
    prob_is : {"short", "long"}
        Whether ``prob`` is the predicted probability of short (<= 12 months) or long PFS.

    Returns
    -------
    KMByPrediction
        Group sizes, events, median PFS (months) with 95 % CI, lifelines
        ``logrank_test`` chi-square and p-value. If one group is empty, the
        statistic and p-value are NaN (the method string says so).
    """
    if prob_is not in ("short", "long"):
        raise StatsError(f"km_by_prediction: prob_is must be 'short' or 'long', got {prob_is!r}")
    if not 0.0 < threshold < 1.0:
        raise StatsError(f"km_by_prediction: threshold must lie in (0, 1), got {threshold}")
    frame = _check_survival_frame(df)
    frame["p_long"] = frame["prob"] if prob_is == "long" else 1.0 - frame["prob"]
    is_long = pd.Series(predicted_long(frame["prob"], prob_is=prob_is, threshold=threshold), index=frame.index)
    frame["group"] = np.where(is_long, GROUP_LONG, GROUP_SHORT)
    rule = prediction_rule(threshold)

    fitters: dict[str, Any] = {}
    summary: dict[str, dict[str, Any]] = {}
    for group in (GROUP_LONG, GROUP_SHORT):
        sub = frame[frame["group"] == group]
        entry: dict[str, Any] = {
            "n": len(sub),
            "events": int(sub["event"].sum()),
            "median": math.nan,
            "ci": (math.nan, math.nan),
        }
        if len(sub):
            kmf = KaplanMeierFitter(label=group).fit(sub["pfs_months"], sub["event"])
            ci = median_survival_times(kmf.confidence_interval_).iloc[0]
            entry.update(median=km_quantile(kmf, 0.5), ci=(float(ci.iloc[0]), float(ci.iloc[1])))
            fitters[group] = kmf
        summary[group] = entry

    method = "Kaplan-Meier (lifelines) per predicted group; log-rank test (lifelines.statistics.logrank_test)"
    long_, short_ = frame[is_long], frame[~is_long]
    if len(long_) and len(short_):
        lr = logrank_test(long_["pfs_months"], short_["pfs_months"], long_["event"], short_["event"])
        stat, p = float(lr.test_statistic), float(lr.p_value)
    else:
        stat, p = math.nan, math.nan
        method += "; one group is empty, so the log-rank test is undefined"

    return KMByPrediction(
        threshold=float(threshold),
        prob_is=prob_is,
        rule=rule,
        n_long=summary[GROUP_LONG]["n"],
        n_short=summary[GROUP_SHORT]["n"],
        events_long=summary[GROUP_LONG]["events"],
        events_short=summary[GROUP_SHORT]["events"],
        median_long=summary[GROUP_LONG]["median"],
        median_short=summary[GROUP_SHORT]["median"],
        median_long_ci=summary[GROUP_LONG]["ci"],
        median_short_ci=summary[GROUP_SHORT]["ci"],
        logrank_statistic=stat,
        p_value=p,
        method=method,
        fitters=fitters,
        assignments=frame[["patient_id", "p_long", "group"]].reset_index(drop=True),
    )


# --------------------------------------------------------------------------- Cox hazard ratio by predicted group


@dataclasses.dataclass(frozen=True)
class CoxHRResult:
    """Cox hazard ratio of the "predicted short PFS" group against the "predicted long PFS" group.

    Attributes
    ----------
    hazard_ratio : float
        > 1 means patients predicted short PFS progress faster (what a useful
        model gives); 1 = no difference.
    ci : tuple of float
        95 % confidence interval (Wald, lifelines).
    p_value : float
        Wald test of log HR = 0.
    n_short, n_long, events_short, events_long : int
    method : str
    """

    hazard_ratio: float
    ci: tuple[float, float]
    p_value: float
    n_short: int
    n_long: int
    events_short: int
    events_long: int
    method: str

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"hazard_ratio": self.hazard_ratio, "ci_low": self.ci[0], "ci_high": self.ci[1],
                              "p_value": self.p_value, "n_short": self.n_short, "n_long": self.n_long,
                              "events_short": self.events_short, "events_long": self.events_long}])


def cox_hr_by_group(df: pd.DataFrame, threshold: float = 0.5, *, prob_is: Literal["short", "long"],
                    alpha: float = 0.05) -> CoxHRResult:
    """Hazard ratio of PFS, predicted short vs predicted long, from a Cox model (lifelines ``CoxPHFitter``).

    Groups as in :func:`km_by_prediction` (paper 3.3, Figure
    5): predicted long PFS if P(long) >= ``threshold``, else predicted short.

    Parameters
    ----------
    df : DataFrame
        ``patient_id, prob, pfs_months, event``, one row per patient.
    threshold : float
        Cut-off on P(long PFS).
    prob_is : {"short", "long"}
        What ``prob`` is the probability of.
    alpha : float
        1 - confidence level.

    Returns
    -------
    CoxHRResult
        NaN hazard ratio when a group is empty or has no event.
    """
    if prob_is not in ("short", "long"):
        raise StatsError(f"prob_is must be 'short' or 'long', got {prob_is!r}")
    for col in ("prob", "pfs_months", "event"):
        if col not in df.columns:
            raise StatsError(f"cox_hr_by_group: column {col!r} is missing")
    short = (~predicted_long(df["prob"].to_numpy(float), prob_is=prob_is, threshold=threshold)).astype(int)
    t, e = df["pfs_months"].to_numpy(float), df["event"].to_numpy(int)
    counts = dict(n_short=int(short.sum()), n_long=int((1 - short).sum()), events_short=int(e[short == 1].sum()),
                  events_long=int(e[short == 0].sum()))
    method = "Cox proportional hazards (lifelines CoxPHFitter, Efron ties), covariate: predicted short PFS"
    if min(counts.values()) == 0:
        return CoxHRResult(math.nan, (math.nan, math.nan), math.nan, **counts,
                           method=method + "; a group is empty or has no event")
    cph = CoxPHFitter(alpha=alpha).fit(pd.DataFrame({"T": t, "E": e, "short": short}), "T", "E")
    s = cph.summary.loc["short"]
    lo, hi = [c for c in cph.summary.columns if c.startswith("exp(coef) lower")][0], \
        [c for c in cph.summary.columns if c.startswith("exp(coef) upper")][0]
    return CoxHRResult(float(s["exp(coef)"]), (float(s[lo]), float(s[hi])), float(s["p"]), **counts, method=method)
