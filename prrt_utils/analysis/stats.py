"""Statistics of chapter 05: comparing models over cross-validation folds (paper 2.6, Table 2).

Pure functions on plain arrays and DataFrames: nothing here reads or writes
files, so the module does not depend on how predictions are stored. Every
test returns a small frozen result object (estimate or statistic, p-value,
method) with ``to_frame()`` for the book. The Kaplan-Meier and Cox analyses of
the predicted groups are in :mod:`prrt_utils.analysis.kaplan_meier`, the
statistics of saliency maps (chapter 06) in :mod:`prrt_utils.analysis.saliency_stats`.

Paper sections implemented
--------------------------
* 2.6 and Table 2: mean +- standard error over repeats (:func:`mean_se`); models
  grouped into families, two-sided Mann-Whitney U between consecutive families,
  Bonferroni adjustment, Cliff's delta with its magnitude label
  (:func:`compare_families`). Beside it, the corrected resampled t-test of
  Nadeau and Bengio (2003), which accounts for the overlap of training sets
  between folds that the Mann-Whitney test ignores (:func:`paired_model_test`,
  :func:`paired_table`).

Libraries used: scipy.stats (Mann-Whitney U, Student t), statsmodels (``multipletests``
for the Bonferroni adjustment, wrapped to keep a NaN p-value as a test). Written by hand
because no installed maintained library provides them: Cliff's delta (from the
Mann-Whitney U) and the corrected resampled t-test.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats as sstats
from statsmodels.stats.multitest import multipletests

__all__ = [
    "CLIFFS_THRESHOLDS",
    "FAMILY_ORDER",
    "CliffsDeltaResult",
    "CorrectedTTestResult",
    "FamilyComparison",
    "FamilyPairResult",
    "MeanSE",
    "StatsError",
    "bonferroni",
    "cliffs_delta",
    "cliffs_magnitude",
    "compare_families",
    "corrected_resampled_ttest",
    "disagreements",
    "finite_1d",
    "mean_se",
    "paired_model_test",
    "paired_table",
    "require_columns",
    "verdict",
]

CLIFFS_THRESHOLDS: tuple[tuple[float, str], ...] = ((0.147, "negligible"), (0.33, "small"), (0.474, "medium"))
"""Upper bounds (exclusive) of ``|delta|`` for each label; ``|delta| >= 0.474`` is "large" (paper 2.6)."""

FAMILY_ORDER: tuple[str, ...] = ("unimodal", "one_image_fusion", "dual_fusion")
"""Model families from least to most modalities; consecutive ones are compared (paper 2.6)."""


class StatsError(ValueError):
    """Input that a statistic cannot be computed from (the message names what and where)."""


# --------------------------------------------------------------------------- helpers


def finite_1d(values: ArrayLike, name: str, *, min_size: int = 1) -> np.ndarray:
    """``values`` flattened to floats; :class:`StatsError` naming ``name`` if too few or any is NaN or inf."""
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size < min_size:
        raise StatsError(f"{name}: needs at least {min_size} value(s), got {arr.size}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise StatsError(
            f"{name}: {int(bad.sum())} non-finite value(s) (NaN or inf) at positions {np.flatnonzero(bad)[:5].tolist()}"
        )
    return arr


def require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """:class:`StatsError` naming ``what`` if ``frame`` lacks any of ``columns``."""
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
    arr = finite_1d(values_by_repeat, "mean_se")
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
    xa = finite_1d(x, "cliffs_delta x")
    ya = finite_1d(y, "cliffs_delta y")
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
    d = finite_1d(diffs, "corrected_resampled_ttest diffs", min_size=2)
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
    require_columns(fold_metrics, ["model", "repeat", "fold", metric], "paired_model_test")
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
    require_columns(fold_metrics, ["model", "repeat", "fold", metric], "compare_families fold_metrics")
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
