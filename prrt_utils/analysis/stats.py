"""Statistics of the book's chapters 05 (model comparison) and 06 (explainability).

Pure functions on plain arrays and DataFrames: nothing here reads or writes
files, so the module does not depend on how predictions are stored. Every
test returns a small frozen result object (estimate or statistic, p-value,
method) with ``to_frame()`` for the book.

Paper sections implemented
--------------------------
* 2.6 and Table 2: mean +- standard error over repeats (:func:`mean_se`); models
  grouped into families, two-sided Mann-Whitney U between consecutive families,
  Bonferroni adjustment, Cliff's delta with its magnitude label
  (:func:`compare_families`). Beside it, the corrected resampled t-test of
  Nadeau and Bengio (2003), which accounts for the overlap of training sets
  between folds that the Mann-Whitney test ignores.
* 3.3 and Figure 5: Kaplan-Meier curves of PFS stratified by the predicted
  probability of long PFS (>= 0.5 vs < 0.5), log-rank test and group medians
  (:func:`km_by_prediction`).
* 3.4 and Figure 8b: distances between the gradient-magnitude distributions of
  two models (:func:`distribution_distances`); where the saliency mass lies
  (:func:`saliency_mass_fraction`).

Libraries used: scipy.stats (Mann-Whitney U, Student t, KS, Wasserstein, energy
distance), scipy.spatial.distance (Jensen-Shannon), lifelines (Kaplan-Meier,
log-rank). Written by hand because no installed maintained library provides
them: the Bonferroni adjustment (one line, which keeps a NaN p-value as a test: statsmodels'
``multipletests`` does not),
Cliff's delta (from the Mann-Whitney U), the corrected resampled t-test, the
Bhattacharyya distance and the histogram overlap.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats as sstats
from scipy.spatial.distance import jensenshannon

from prrt_utils.data.cohort_stats import km_quantile
from prrt_utils.models.stored import predicted_long, prediction_rule

__all__ = [
    "CLIFFS_THRESHOLDS",
    "FAMILY_ORDER",
    "CliffsDeltaResult",
    "CorrectedTTestResult",
    "DistributionComparison",
    "FamilyComparison",
    "FamilyPairResult",
    "KMByPrediction",
    "MeanSE",
    "StatsError",
    "bonferroni",
    "cliffs_delta",
    "cliffs_magnitude",
    "compare_families",
    "corrected_resampled_ttest",
    "disagreements",
    "distribution_distances",
    "km_by_prediction",
    "mean_se",
    "paired_model_test",
    "paired_table",
    "saliency_mass_fraction",
    "verdict",
]

CLIFFS_THRESHOLDS: tuple[tuple[float, str], ...] = ((0.147, "negligible"), (0.33, "small"), (0.474, "medium"))
"""Upper bounds (exclusive) of ``|delta|`` for each label; ``|delta| >= 0.474`` is "large" (paper 2.6)."""

FAMILY_ORDER: tuple[str, ...] = ("unimodal", "one_image_fusion", "dual_fusion")
"""Model families from least to most modalities; consecutive ones are compared (paper 2.6)."""


class StatsError(ValueError):
    """Input that a statistic cannot be computed from (the message names what and where)."""


# --------------------------------------------------------------------------- helpers


def _finite_1d(values: ArrayLike, name: str, *, min_size: int = 1) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size < min_size:
        raise StatsError(f"{name}: needs at least {min_size} value(s), got {arr.size}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise StatsError(
            f"{name}: {int(bad.sum())} non-finite value(s) (NaN or inf) at positions {np.flatnonzero(bad)[:5].tolist()}"
        )
    return arr


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise StatsError(f"{what}: missing column(s) {missing}; have {list(frame.columns)}")


# --------------------------------------------------------------------------- mean +- SE


@dataclasses.dataclass(frozen=True)
class MeanSE:
    """Mean and standard error of a metric over repeats (paper 2.6, Table 2).

    Attributes
    ----------
    mean : float
        Arithmetic mean of the values.
    se : float
        Standard error of the mean, ``sd / sqrt(n)`` with the sample standard
        deviation (``ddof=1``); NaN when ``n == 1``.
    sd : float
        Sample standard deviation (``ddof=1``); NaN when ``n == 1``.
    n : int
        Number of values (repeats).
    """

    mean: float
    se: float
    sd: float
    n: int
    method: str = "mean +- standard error (sd with ddof=1 / sqrt(n))"

    def format(self, digits: int = 2) -> str:
        """``"0.59 ± 0.02"`` as in Table 2 of the paper."""
        return f"{self.mean:.{digits}f} ± {self.se:.{digits}f}"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"mean": self.mean, "se": self.se, "sd": self.sd, "n": self.n}])


def mean_se(values_by_repeat: ArrayLike) -> MeanSE:
    """Mean and standard error of one value per repeat.

    Parameters
    ----------
    values_by_repeat : array-like, shape (R,)
        One metric value per repeat (e.g. the mean AUROC over the 3 folds of
        each of the 5 repeats, paper 2.6).

    Returns
    -------
    MeanSE
        ``se = sd(ddof=1) / sqrt(R)``; ``se`` and ``sd`` are NaN for ``R == 1``.
    """
    arr = _finite_1d(values_by_repeat, "mean_se")
    n = arr.size
    sd = float(np.std(arr, ddof=1)) if n > 1 else math.nan
    return MeanSE(mean=float(arr.mean()), se=sd / math.sqrt(n) if n > 1 else math.nan, sd=sd, n=n)


# --------------------------------------------------------------------------- Cliff's delta


def cliffs_magnitude(delta: float) -> str:
    """Label of ``|delta|``: negligible < 0.147 <= small < 0.33 <= medium < 0.474 <= large (paper 2.6)."""
    if not math.isfinite(delta):
        return "undefined"
    for bound, label in CLIFFS_THRESHOLDS:
        if abs(delta) < bound:
            return label
    return "large"


@dataclasses.dataclass(frozen=True)
class CliffsDeltaResult:
    """Cliff's delta between two samples ``x`` and ``y``.

    Attributes
    ----------
    delta : float
        ``P(X > Y) - P(X < Y)`` over all pairs, in [-1, 1]. Positive means ``x``
        tends to be larger than ``y``; 1 means every ``x`` exceeds every ``y``;
        0 means no tendency either way.
    magnitude : str
        ``negligible``, ``small``, ``medium`` or ``large`` (paper 2.6 thresholds).
    n_x, n_y : int
        Sample sizes.
    """

    delta: float
    magnitude: str
    n_x: int
    n_y: int
    method: str = "Cliff's delta = 2U/(n_x n_y) - 1 (U: Mann-Whitney U of x)"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [{"delta": self.delta, "magnitude": self.magnitude, "n_x": self.n_x, "n_y": self.n_y}]
        )


def cliffs_delta(x: ArrayLike, y: ArrayLike) -> CliffsDeltaResult:
    """Cliff's delta effect size: how strongly ``x`` tends to exceed ``y``.

    Computed in ``O((n+m) log(n+m))`` from mid-ranks: with ``U`` the
    Mann-Whitney U statistic of ``x`` (ties count one half),
    ``delta = 2U / (n m) - 1``, which equals ``(#{x_i > y_j} - #{x_i < y_j}) / (n m)``.

    Parameters
    ----------
    x, y : array-like, shape (n,) and (m,)
        Samples (e.g. per-fold AUROCs of two model families).

    Returns
    -------
    CliffsDeltaResult
        ``delta > 0``: ``x`` tends to be larger than ``y``.
    """
    xa = _finite_1d(x, "cliffs_delta x")
    ya = _finite_1d(y, "cliffs_delta y")
    n, m = xa.size, ya.size
    ranks = sstats.rankdata(np.concatenate([xa, ya]))
    u_x = ranks[:n].sum() - n * (n + 1) / 2.0
    delta = float(np.clip(2.0 * u_x / (n * m) - 1.0, -1.0, 1.0))
    return CliffsDeltaResult(delta=delta, magnitude=cliffs_magnitude(delta), n_x=n, n_y=m)


# --------------------------------------------------------------------------- Bonferroni


def bonferroni(pvalues: ArrayLike) -> np.ndarray:
    """Bonferroni-adjusted p-values ``min(1, p * m)`` for ``m`` tests (paper 2.6).

    statsmodels' :func:`~statsmodels.stats.multitest.multipletests` does the
    adjustment; this wrapper checks the range and keeps a NaN (a test that could
    not be run) as NaN while still counting it among the ``m`` tests.

    Parameters
    ----------
    pvalues : array-like, shape (m,)
        Unadjusted p-values in [0, 1]; NaN is kept as NaN and still counts as a test.

    Returns
    -------
    numpy.ndarray, shape (m,)
        Adjusted p-values, capped at 1.
    """
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float).ravel()
    finite = p[np.isfinite(p)]
    if ((finite < 0) | (finite > 1)).any():
        raise StatsError(f"bonferroni: p-values must lie in [0, 1], got {p.tolist()}")
    if p.size == 0:
        return p
    return multipletests(p, method="bonferroni")[1]


# --------------------------------------------------------------------------- corrected resampled t-test


@dataclasses.dataclass(frozen=True)
class CorrectedTTestResult:
    """Corrected resampled t-test of Nadeau and Bengio (2003).

    Attributes
    ----------
    t_statistic : float
        ``mean(d) / sqrt((1/n + n_test/n_train) * var(d, ddof=1))``; positive when
        the first model (minuend of ``d``) scores higher. NaN when all
        differences are equal to zero, +-inf when they are equal and non-zero.
    df : int
        Degrees of freedom, ``n - 1`` with ``n = k r`` paired differences.
    p_value : float
        Two-sided p-value from Student's t with ``df`` degrees of freedom.
    mean_difference : float
        Mean of the paired differences (metric units, e.g. AUROC).
    sd_difference : float
        Sample standard deviation of the differences (``ddof=1``).
    n : int
        Number of paired differences (folds x repeats).
    test_train_ratio : float
        ``n_test / n_train`` used in the variance correction.
    """

    t_statistic: float
    df: int
    p_value: float
    mean_difference: float
    sd_difference: float
    n: int
    test_train_ratio: float
    method: str = "corrected resampled t-test (Nadeau & Bengio 2003), two-sided"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "mean_difference": self.mean_difference,
                    "sd_difference": self.sd_difference,
                    "n": self.n,
                    "test_train_ratio": self.test_train_ratio,
                    "t_statistic": self.t_statistic,
                    "df": self.df,
                    "p_value": self.p_value,
                    "method": self.method,
                }
            ]
        )


def corrected_resampled_ttest(diffs: ArrayLike, n_train: float, n_test: float) -> CorrectedTTestResult:
    """Corrected resampled t-test for paired differences over repeated cross-validation.

    Fold scores of repeated k-fold cross-validation are not independent (the
    training sets overlap), so the ordinary paired t-test is too liberal.
    Nadeau and Bengio (2003, Machine Learning 52:239) inflate the variance of
    the mean difference by the test/train size ratio:
    ``t = mean(d) / sqrt((1/(k r) + n_test/n_train) * var(d, ddof=1))``,
    ``df = k r - 1``, two-sided p-value from Student's t. With
    ``n_test = 0`` it is the one-sample t-test of ``d`` against 0.
    Written by hand (a few lines; no installed library provides it).

    Parameters
    ----------
    diffs : array-like, shape (k * r,)
        Paired differences of a metric (model A minus model B) on the same
        folds, one per fold of every repeat.
    n_train, n_test : float
        Number of patients in the training and in the test part of a fold
        (averages if folds differ by one patient). Only their ratio matters.

    Returns
    -------
    CorrectedTTestResult
    """
    d = _finite_1d(diffs, "corrected_resampled_ttest diffs", min_size=2)
    if not (n_train > 0) or not (n_test >= 0):
        raise StatsError(
            f"corrected_resampled_ttest: need n_train > 0 and n_test >= 0, got {n_train}, {n_test}"
        )
    n = d.size
    ratio = float(n_test) / float(n_train)
    mean = float(d.mean())
    var = float(np.var(d, ddof=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.float64(mean) / np.sqrt((1.0 / n + ratio) * var)
    t = float(t)
    p = float(2.0 * sstats.t.sf(abs(t), n - 1)) if not math.isnan(t) else math.nan
    return CorrectedTTestResult(
        t_statistic=t,
        df=n - 1,
        p_value=p,
        mean_difference=mean,
        sd_difference=math.sqrt(var),
        n=n,
        test_train_ratio=ratio,
    )


def _folds_ratio(frame: pd.DataFrame, who: str) -> tuple[float, float]:
    """``(n_train, n_test)`` in fold units from the folds per repeat: k folds give ``(k - 1, 1)``."""
    k_per_repeat = frame.groupby("repeat")["fold"].nunique()
    if k_per_repeat.nunique() != 1 or int(k_per_repeat.iloc[0]) < 2:
        raise StatsError(f"{who}: cannot infer n_test/n_train from folds per repeat {k_per_repeat.to_dict()}")
    return float(int(k_per_repeat.iloc[0]) - 1), 1.0


def paired_model_test(fold_metrics: pd.DataFrame, model: str, reference: str, metric: str = "auroc") -> CorrectedTTestResult:
    """Corrected resampled t-test of ``model`` minus ``reference``, paired by (repeat, fold).

    Both models must have been scored on the same test folds (the same
    ``folds.csv``); the difference on each fold is one sample, and the
    variance is corrected for the overlap of the training parts (k folds:
    ``n_test / n_train = 1 / (k - 1)``), see :func:`corrected_resampled_ttest`.

    Parameters
    ----------
    fold_metrics : DataFrame
        ``model, repeat, fold, <metric>`` (:func:`prrt_utils.analysis.metrics.fold_metrics`).
    model, reference : str
        The model tested and the one it is compared with.

    Returns
    -------
    CorrectedTTestResult
        Positive ``mean_difference``: ``model`` scored higher.
    """
    _require_columns(fold_metrics, ["model", "repeat", "fold", metric], "paired_model_test")
    wide = fold_metrics.pivot_table(index=["repeat", "fold"], columns="model", values=metric)
    for m in (model, reference):
        if m not in wide.columns:
            raise StatsError(f"paired_model_test: no {metric} for model {m!r}")
    both = wide[[model, reference]]
    if both.isna().any().any():
        missing = both[both.isna().any(axis=1)].index[0]
        raise StatsError(f"paired_model_test: {model} and {reference} were not both scored on (repeat, fold) {missing}")
    n_train, n_test = _folds_ratio(both.reset_index(), "paired_model_test")
    return corrected_resampled_ttest((both[model] - both[reference]).to_numpy(), n_train, n_test)


def verdict(result: CorrectedTTestResult, alpha: float = 0.05) -> str:
    """A paired comparison in words: ``"higher (p = 0.012)"``, ``"not significantly different (p = 0.31)"``."""
    p = result.p_value
    if not math.isfinite(p) or p >= alpha:
        return f"not significantly different (p = {p:.2g})"
    return f"{'higher' if result.mean_difference > 0 else 'lower'} (p = {p:.2g})"


def paired_table(fold_metrics: pd.DataFrame, models: Sequence[str], reference: str, metric: str = "auroc",
                 alpha: float = 0.05) -> pd.DataFrame:
    """Every model against one reference by :func:`paired_model_test`: one row each, unadjusted p.

    Returns
    -------
    DataFrame
        ``model, reference, mean difference, folds higher, t, df, p, verdict``
        (``folds higher``: on how many of the paired folds the model scored
        higher; the p-values are not adjusted for the number of rows).
    """
    wide = fold_metrics.pivot_table(index=["repeat", "fold"], columns="model", values=metric)
    rows = []
    for m in models:
        if m == reference:
            continue
        r = paired_model_test(fold_metrics, m, reference, metric)
        higher = int((wide[m] > wide[reference]).sum())
        rows.append({"model": m, "reference": reference, f"mean {metric} difference": r.mean_difference,
                     "folds higher": f"{higher} of {r.n}", "t": r.t_statistic, "df": r.df, "p": r.p_value,
                     "verdict": verdict(r, alpha)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- family comparison


@dataclasses.dataclass(frozen=True)
class FamilyPairResult:
    """One comparison of a model family (``group``) with the next lower one (``reference``).

    Attributes
    ----------
    group, reference : str
        Family names; ``group`` has more modalities than ``reference``.
    group_models, reference_models : tuple of str
        Models pooled into each family.
    samples : str
        What the Mann-Whitney test compared (per-fold values or per-repeat means).
    n_group, n_reference : int
        Sample sizes of the Mann-Whitney test.
    median_group, median_reference : float
        Medians of the compared samples (metric units).
    u_statistic : float
        Mann-Whitney U of ``group`` (number of pairs where ``group`` is higher,
        ties counting one half).
    p_value, p_adjusted : float
        Two-sided Mann-Whitney p-value, unadjusted and Bonferroni-adjusted over
        the comparisons made.
    cliffs_delta : float
        ``P(group > reference) - P(group < reference)``; positive: the family
        with more modalities tends to score higher.
    magnitude : str
        Label of ``|cliffs_delta|`` (paper 2.6 thresholds).
    ttest : CorrectedTTestResult
        Corrected resampled t-test on per-fold differences of the family means
        (``group - reference``), paired by (repeat, fold).
    ttest_p_adjusted : float
        Its p-value, Bonferroni-adjusted over the same comparisons.
    """

    group: str
    reference: str
    group_models: tuple[str, ...]
    reference_models: tuple[str, ...]
    samples: str
    n_group: int
    n_reference: int
    median_group: float
    median_reference: float
    u_statistic: float
    p_value: float
    p_adjusted: float
    cliffs_delta: float
    magnitude: str
    ttest: CorrectedTTestResult
    ttest_p_adjusted: float

    @property
    def label(self) -> str:
        return f"{self.group} vs {self.reference}"


@dataclasses.dataclass(frozen=True)
class FamilyComparison:
    """Comparisons of consecutive model families (paper 2.6, Table 2 markers).

    Attributes
    ----------
    comparisons : tuple of FamilyPairResult
        One per pair of consecutive families in ``order``.
    metric : str
        Compared column (e.g. ``auroc``).
    unit : str
        ``fold`` (every fold's value is one sample) or ``repeat`` (the mean over
        the folds of each repeat is one sample) for the Mann-Whitney test.
    order : tuple of str
        Families from fewest to most modalities.
    """

    comparisons: tuple[FamilyPairResult, ...]
    metric: str
    unit: str
    order: tuple[str, ...]
    method: str = (
        "two-sided Mann-Whitney U (scipy.stats.mannwhitneyu), Bonferroni-adjusted; Cliff's delta; "
        "corrected resampled t-test (Nadeau & Bengio 2003) on per-fold family-mean differences"
    )

    def to_frame(self) -> pd.DataFrame:
        """One row per comparison: sizes, medians, U, p (raw and adjusted), delta, label, t-test."""
        rows = []
        for c in self.comparisons:
            rows.append(
                {
                    "comparison": c.label,
                    "metric": self.metric,
                    "samples": c.samples,
                    "group_models": ", ".join(c.group_models),
                    "reference_models": ", ".join(c.reference_models),
                    "n_group": c.n_group,
                    "n_reference": c.n_reference,
                    "median_group": c.median_group,
                    "median_reference": c.median_reference,
                    "u_statistic": c.u_statistic,
                    "p_value": c.p_value,
                    "p_bonferroni": c.p_adjusted,
                    "cliffs_delta": c.cliffs_delta,
                    "magnitude": c.magnitude,
                    "mean_fold_difference": c.ttest.mean_difference,
                    "corrected_t": c.ttest.t_statistic,
                    "corrected_t_df": c.ttest.df,
                    "corrected_t_p": c.ttest.p_value,
                    "corrected_t_p_bonferroni": c.ttest_p_adjusted,
                }
            )
        return pd.DataFrame(rows)


def _check_fold_metrics(
    fold_metrics: pd.DataFrame, families: Mapping[str, str], order: Sequence[str], metric: str
) -> pd.DataFrame:
    _require_columns(fold_metrics, ["model", "repeat", "fold", metric], "compare_families fold_metrics")
    frame = fold_metrics[["model", "repeat", "fold", metric]].copy()
    unknown = sorted(set(frame["model"]) - set(families))
    if unknown:
        raise StatsError(f"compare_families: model(s) {unknown} have no family in `families`")
    bad = frame[~np.isfinite(pd.to_numeric(frame[metric], errors="coerce"))]
    if len(bad):
        r = bad.iloc[0]
        raise StatsError(
            f"compare_families: {len(bad)} non-finite {metric} value(s), first at model {r['model']}, "
            f"repeat {r['repeat']}, fold {r['fold']}"
        )
    dup = frame.duplicated(["model", "repeat", "fold"])
    if dup.any():
        r = frame[dup].iloc[0]
        raise StatsError(
            f"compare_families: model {r['model']} has more than one row for repeat {r['repeat']}, fold {r['fold']}"
        )
    frame[metric] = frame[metric].astype(float)
    frame["family"] = frame["model"].map(families)
    frame = frame[frame["family"].isin(order)]
    for fam in order:
        if not (frame["family"] == fam).any():
            raise StatsError(f"compare_families: family {fam!r} has no model in fold_metrics")
    folds = {m: set(zip(g["repeat"], g["fold"], strict=True)) for m, g in frame.groupby("model")}
    union = set().union(*folds.values())
    for m, have in folds.items():
        if have != union:
            missing = sorted(union - have)[:5]
            raise StatsError(
                f"compare_families: model {m} lacks (repeat, fold) {missing}; all models need the same folds"
            )
    return frame


def compare_families(
    fold_metrics: pd.DataFrame,
    families: Mapping[str, str],
    order: Sequence[str] = FAMILY_ORDER,
    unit: Literal["fold", "repeat"] = "fold",
    *,
    metric: str = "auroc",
    n_train: float | None = None,
    n_test: float | None = None,
) -> FamilyComparison:
    """Compare consecutive model families: Mann-Whitney U, Bonferroni, Cliff's delta, corrected t-test.

    Paper 2.6: models are grouped by input modality into unimodal, one-image
    fusion and dual fusion; each family is compared with the next lower one
    by a two-sided Mann-Whitney U test on the pooled scores of its models,
    p-values are Bonferroni-adjusted over the comparisons made, and the effect
    size is Cliff's delta. Caveat: fold scores of repeated cross-validation are
    not independent, which the Mann-Whitney test assumes; the corrected
    resampled t-test reported beside it (on per-fold differences of the family
    means, paired by repeat and fold) accounts for the overlap of training sets.

    Parameters
    ----------
    fold_metrics : DataFrame
        Columns ``model, repeat, fold, <metric>``, one row per model and fold;
        every model must have the same (repeat, fold) pairs.
    families : mapping model -> family
        Every model in ``fold_metrics`` must be mapped; models of families not
        in ``order`` are left out.
    order : sequence of str
        Families from fewest to most modalities; ``order[i+1]`` is compared with ``order[i]``.
    unit : {"fold", "repeat"}
        Mann-Whitney samples: every fold's value (``k r`` per model) or the mean
        over the folds of each repeat (``r`` per model).
    metric : str
        Column to compare (``auroc`` by default; AUROC 0.5 is chance).
    n_train, n_test : float, optional
        Training and test sizes of a fold for the t-test correction. By default
        inferred from the number of folds ``k`` per repeat: ``n_test/n_train = 1/(k-1)``.

    Returns
    -------
    FamilyComparison
    """
    if unit not in ("fold", "repeat"):
        raise StatsError(f"compare_families: unit must be 'fold' or 'repeat', got {unit!r}")
    order = tuple(order)
    if len(order) < 2 or len(set(order)) != len(order):
        raise StatsError(f"compare_families: order needs at least two distinct families, got {order}")
    frame = _check_fold_metrics(fold_metrics, families, order, metric)

    if n_train is None and n_test is None:
        n_train, n_test = _folds_ratio(frame, "compare_families (or pass n_train, n_test)")
    elif n_train is None or n_test is None:
        raise StatsError("compare_families: pass both n_train and n_test, or neither")

    if unit == "fold":
        samples = frame
        samples_text = f"per-fold {metric}"
    else:
        samples = frame.groupby(["family", "model", "repeat"], as_index=False)[metric].mean()
        samples_text = f"per-repeat mean {metric}"
    fam_fold = frame.groupby(["family", "repeat", "fold"])[metric].mean().unstack("family")

    models = frame.groupby("family")["model"].unique()
    pairs = list(zip(order[:-1], order[1:], strict=True))
    mw, deltas, ttests, sizes = [], [], [], []
    for reference, group in pairs:
        x = samples.loc[samples["family"] == group, metric].to_numpy()
        y = samples.loc[samples["family"] == reference, metric].to_numpy()
        mw.append(sstats.mannwhitneyu(x, y, alternative="two-sided"))
        deltas.append(cliffs_delta(x, y))
        ttests.append(
            corrected_resampled_ttest((fam_fold[group] - fam_fold[reference]).to_numpy(), n_train, n_test)
        )
        sizes.append((x.size, y.size, float(np.median(x)), float(np.median(y))))

    p_adj = bonferroni([r.pvalue for r in mw])
    t_adj = bonferroni([t.p_value for t in ttests])
    comparisons = tuple(
        FamilyPairResult(
            group=group,
            reference=reference,
            group_models=tuple(sorted(models[group])),
            reference_models=tuple(sorted(models[reference])),
            samples=samples_text,
            n_group=int(sizes[i][0]),
            n_reference=int(sizes[i][1]),
            median_group=sizes[i][2],
            median_reference=sizes[i][3],
            u_statistic=float(mw[i].statistic),
            p_value=float(mw[i].pvalue),
            p_adjusted=float(p_adj[i]),
            cliffs_delta=deltas[i].delta,
            magnitude=deltas[i].magnitude,
            ttest=ttests[i],
            ttest_p_adjusted=float(t_adj[i]),
        )
        for i, (reference, group) in enumerate(pairs)
    )
    return FamilyComparison(comparisons=comparisons, metric=metric, unit=unit, order=order)


def disagreements(
    family_comparison: FamilyComparison, alpha: float = 0.05, adjusted: bool = True
) -> pd.DataFrame:
    """Comparisons where the Mann-Whitney test and the corrected t-test disagree at ``alpha``.

    Parameters
    ----------
    family_comparison : FamilyComparison
    alpha : float
        Significance level (0.05).
    adjusted : bool
        Use the Bonferroni-adjusted p-values of both tests (default) or the raw ones.

    Returns
    -------
    DataFrame
        Columns ``comparison, mann_whitney_p, corrected_t_p, mann_whitney_significant,
        corrected_t_significant, reading``; one row per disagreement (empty when
        the two tests agree everywhere). A NaN p-value counts as not significant.
    """
    rows = []
    for c in family_comparison.comparisons:
        p_mw = c.p_adjusted if adjusted else c.p_value
        p_t = c.ttest_p_adjusted if adjusted else c.ttest.p_value
        sig_mw = bool(p_mw < alpha)
        sig_t = bool(p_t < alpha)
        if sig_mw != sig_t:
            reading = (
                "Mann-Whitney significant, corrected t-test not: the fold scores are not independent, "
                "so the Mann-Whitney p-value is likely too small"
                if sig_mw
                else "corrected t-test significant, Mann-Whitney not: the paired per-fold differences are "
                "consistent although the pooled score distributions overlap"
            )
            rows.append(
                {
                    "comparison": c.label,
                    "mann_whitney_p": p_mw,
                    "corrected_t_p": p_t,
                    "mann_whitney_significant": sig_mw,
                    "corrected_t_significant": sig_t,
                    "reading": reading,
                }
            )
    columns = [
        "comparison",
        "mann_whitney_p",
        "corrected_t_p",
        "mann_whitney_significant",
        "corrected_t_significant",
        "reading",
    ]
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------- Kaplan-Meier by prediction

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


def _check_survival_frame(df: pd.DataFrame) -> pd.DataFrame:
    _require_columns(df, ["patient_id", "prob", "pfs_months", "event"], "km_by_prediction")
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
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test
    from lifelines.utils import median_survival_times

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


# --------------------------------------------------------------------------- distribution distances


@dataclasses.dataclass(frozen=True)
class DistributionComparison:
    """Distances between two samples, e.g. gradient magnitudes of two models (paper 3.4, Figure 8b).

    Attributes
    ----------
    wasserstein : float
        1-D earth mover's distance, in data units; 0 = identical.
    ks_statistic, ks_p_value : float
        Two-sample Kolmogorov-Smirnov statistic (largest gap between the two
        empirical CDFs, in [0, 1]) and its two-sided p-value.
    js_distance : float
        Jensen-Shannon DISTANCE of the two histograms
        (:func:`scipy.spatial.distance.jensenshannon`, logarithm base
        ``js_base``): the square root of the divergence, a metric; in [0, 1]
        for base 2. The paper's 0.418 (Figure 8b) is this quantity: read as a
        divergence it would be impossible beside its Bhattacharyya distance
        of 0.207, since the divergence in bits is at most ``(1 - BC) / ln 2``
        with ``BC = exp(-0.207)``, about 0.27.
    js_divergence : float
        Jensen-Shannon DIVERGENCE, ``js_distance ** 2``; in [0, log_base 2] (= [0, 1] for base 2).
    js_base : float
        Logarithm base of the JS divergence.
    energy_distance : float
        scipy's energy distance ``sqrt(2E|X-Y| - E|X-X'| - E|Y-Y'|)``, data units; 0 = identical.
    bhattacharyya : float
        ``-ln sum sqrt(p q)`` over the common histogram; 0 = identical, inf = disjoint.
    overlap : float
        ``sum min(p, q)`` over the common histogram; 1 = identical, 0 = disjoint.
    n_a, n_b : int
        Sample sizes.
    bins : int
        Number of histogram bins (shared edges over the pooled range).
    """

    wasserstein: float
    ks_statistic: float
    ks_p_value: float
    js_distance: float
    js_divergence: float
    js_base: float
    energy_distance: float
    bhattacharyya: float
    overlap: float
    n_a: int
    n_b: int
    bins: int
    method: str = (
        "scipy.stats.wasserstein_distance, ks_2samp, energy_distance; scipy.spatial.distance.jensenshannon "
        "(distance; squared: divergence), "
        "Bhattacharyya and overlap on a common histogram"
    )

    def to_frame(self) -> pd.DataFrame:
        """One row per metric: ``metric, value, p_value, range, reading``."""
        js_max = math.log(2.0) / math.log(self.js_base)
        js_range = "[0, 1]" if math.isclose(js_max, 1.0) else f"[0, {js_max:.4g}]"
        rows = [
            (
                "Wasserstein distance",
                self.wasserstein,
                math.nan,
                "[0, inf), data units",
                "0 = identical; mean distance the mass must move to turn one distribution into the other",
            ),
            (
                "Kolmogorov-Smirnov statistic",
                self.ks_statistic,
                self.ks_p_value,
                "[0, 1]",
                "0 = identical; largest gap between the two cumulative distributions",
            ),
            (
                f"Jensen-Shannon distance (log base {self.js_base:g})",
                self.js_distance,
                math.nan,
                js_range if math.isclose(js_max, 1.0) else f"[0, {math.sqrt(js_max):.4g}]",
                "0 = identical; the square root of the divergence (scipy's jensenshannon), a metric",
            ),
            (
                f"Jensen-Shannon divergence (log base {self.js_base:g})",
                self.js_divergence,
                math.nan,
                js_range,
                f"0 = identical, {js_max:.4g} = no common support; the distance squared",
            ),
            (
                "Energy distance",
                self.energy_distance,
                math.nan,
                "[0, inf), data units",
                "0 = identical; scipy's square-root form",
            ),
            (
                "Bhattacharyya distance",
                self.bhattacharyya,
                math.nan,
                "[0, inf)",
                "0 = identical, inf = no common support",
            ),
            (
                "Histogram overlap",
                self.overlap,
                math.nan,
                "[0, 1]",
                "1 = identical, 0 = disjoint; shared histogram mass",
            ),
        ]
        return pd.DataFrame(rows, columns=["metric", "value", "p_value", "range", "reading"])


def distribution_distances(
    a: ArrayLike,
    b: ArrayLike,
    bins: int | str | Sequence[float] = 100,
    *,
    range: tuple[float, float] | None = None,  # noqa: A002 (numpy's name)
    js_base: float = 2.0,
) -> DistributionComparison:
    """Six distances between two 1-D samples (paper 3.4, Figure 8b).

    Sample-based (no binning): Wasserstein, Kolmogorov-Smirnov, energy distance.
    Histogram-based, on common edges over the pooled range
    (``numpy.histogram_bin_edges(concat(a, b), bins, range)``), each histogram
    normalised to sum 1: Jensen-Shannon divergence, Bhattacharyya distance
    ``-ln sum sqrt(p q)`` and overlap ``sum min(p, q)`` (both written by hand;
    no installed library provides them). Histogram metrics depend on ``bins``
    and are biased for small samples (two samples of the same distribution
    give overlap < 1).

    Parameters
    ----------
    a, b : array-like, any shape
        Samples (flattened), e.g. absolute gradient magnitudes of all PET voxels
        of all test patients for two models.
    bins : int, str or sequence of float
        Passed to ``numpy.histogram_bin_edges`` (default 100 equal-width bins).
    range : (float, float), optional
        Histogram range; every value must lie inside it.
    js_base : float
        Logarithm base of the JS divergence: 2 (default) gives [0, 1], as the
        paper reports; ``math.e`` gives [0, ln 2].

    Returns
    -------
    DistributionComparison
    """
    xa = _finite_1d(a, "distribution_distances a")
    xb = _finite_1d(b, "distribution_distances b")
    if not js_base > 1.0:
        raise StatsError(f"distribution_distances: js_base must be > 1, got {js_base}")
    pooled = np.concatenate([xa, xb])
    if range is not None and (pooled.min() < range[0] or pooled.max() > range[1]):
        raise StatsError(
            f"distribution_distances: values span [{pooled.min():g}, {pooled.max():g}], outside range {tuple(range)}"
        )
    edges = np.histogram_bin_edges(pooled, bins=bins, range=range)
    p = np.histogram(xa, bins=edges)[0].astype(float)
    q = np.histogram(xb, bins=edges)[0].astype(float)
    p /= p.sum()
    q /= q.sum()
    js = float(jensenshannon(p, q, base=js_base))
    bc = float(np.sqrt(p * q).sum())
    bhat = math.inf if bc <= 0.0 else max(0.0, -math.log(min(bc, 1.0)))
    ks = sstats.ks_2samp(xa, xb)
    return DistributionComparison(
        wasserstein=float(sstats.wasserstein_distance(xa, xb)),
        ks_statistic=float(ks.statistic),
        ks_p_value=float(ks.pvalue),
        js_distance=js,
        js_divergence=js**2,
        js_base=float(js_base),
        energy_distance=float(sstats.energy_distance(xa, xb)),
        bhattacharyya=bhat,
        overlap=float(np.minimum(p, q).sum()),
        n_a=int(xa.size),
        n_b=int(xb.size),
        bins=int(edges.size - 1),
    )


# --------------------------------------------------------------------------- saliency mass


def saliency_mass_fraction(
    saliency: ArrayLike, labels: ArrayLike, label_names: Mapping[int, str], *, other: str = "other"
) -> pd.DataFrame:
    """Fraction of the absolute saliency mass that falls in each labelled region (paper 3.4, 4).

    The paper observes that PET gradients concentrate on tumour lesions but
    also on kidneys, spleen and bladder; this function puts a number on it.

    Parameters
    ----------
    saliency : array-like, shape (D, H, W)
        Gradient map on the model's input grid (any sign; its absolute value is used).
        A stack (N, D, H, W) of several patients with matching labels also works.
    labels : array-like of int, same shape as ``saliency``
        Label map on the SAME grid (e.g. the ground-truth organ/lesion labels
        resampled like the PET).
    label_names : mapping code -> name
        Names may repeat to merge codes (e.g. all lesion codes -> "lesion").
        Codes not listed are counted under ``other``.
    other : str
        Name for unlisted codes.

    Returns
    -------
    DataFrame
        One row per name (in first-appearance order of ``label_names``, then
        ``other``): ``region, n_voxels, voxel_fraction, saliency_mass,
        mass_fraction, enrichment``; ``mass_fraction`` sums to 1;
        ``enrichment = mass_fraction / voxel_fraction`` (> 1: the region draws
        more saliency than its size alone would).
    """
    s = np.abs(np.asarray(saliency, dtype=float))
    lab = np.asarray(labels)
    if s.shape != lab.shape:
        raise StatsError(
            f"saliency_mass_fraction: saliency shape {s.shape} differs from labels shape {lab.shape}"
        )
    if not np.isfinite(s).all():
        raise StatsError("saliency_mass_fraction: saliency has non-finite values")
    if not np.issubdtype(lab.dtype, np.integer):
        if not np.all(np.mod(lab, 1) == 0):
            raise StatsError("saliency_mass_fraction: labels must be integer codes")
        lab = lab.astype(np.int64)
    total = s.sum()
    if total <= 0:
        raise StatsError("saliency_mass_fraction: saliency is zero everywhere; no mass to distribute")

    codes, inverse = np.unique(lab.ravel(), return_inverse=True)
    mass_by_code = np.bincount(inverse, weights=s.ravel(), minlength=codes.size)
    count_by_code = np.bincount(inverse, minlength=codes.size)
    names = list(dict.fromkeys(label_names.values()))
    if other not in names:
        names.append(other)
    mass = dict.fromkeys(names, 0.0)
    count = dict.fromkeys(names, 0)
    for code, m, c in zip(codes.tolist(), mass_by_code, count_by_code, strict=True):
        name = label_names.get(code, other)
        mass[name] += float(m)
        count[name] += int(c)
    out = pd.DataFrame(
        {
            "region": names,
            "n_voxels": [count[n] for n in names],
            "saliency_mass": [mass[n] for n in names],
        }
    )
    out["voxel_fraction"] = out["n_voxels"] / lab.size
    out["mass_fraction"] = out["saliency_mass"] / total
    with np.errstate(divide="ignore", invalid="ignore"):
        out["enrichment"] = out["mass_fraction"] / out["voxel_fraction"]
    return out[["region", "n_voxels", "voxel_fraction", "saliency_mass", "mass_fraction", "enrichment"]]


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

    Groups as in :func:`prrt_utils.analysis.stats.km_by_prediction` (paper 3.3, Figure
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
    from lifelines import CoxPHFitter

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
