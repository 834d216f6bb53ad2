"""Metrics of the cross-validated predictions: per fold, mean +- SE over repeats, curves (paper 2.6, Table 2).

Per fold (scikit-learn):

* AUROC, :func:`sklearn.metrics.roc_auc_score`; 0.5 is what random
  predictions give, 1.0 a perfect ranking.
* AUPRC as **average precision**, :func:`sklearn.metrics.average_precision_score`:
  ``sum_n (R_n - R_(n-1)) P_n``, the step-wise area under the precision-recall
  curve (no trapezoidal interpolation, which is optimistic). It depends on
  which class is "positive", so both are given and labelled: ``auprc`` with
  short PFS positive (random predictions give its prevalence, about 0.36)
  and ``auprc_long`` with long PFS positive (chance about 0.64). The paper's
  Table 2 can only be read as the latter (its PET-only model has AUROC 0.42
  but AUPRC 0.58, above the short-PFS chance level of 0.36), so
  :func:`side_by_side` sets the paper's AUPRC beside ``auprc_long``.
* Accuracy, :func:`sklearn.metrics.accuracy_score`, with the one rule of the
  whole project for turning a probability into a predicted group
  (:func:`predicted_long`, paper 3.3): predicted long PFS when P(long PFS) >=
  0.5, predicted short otherwise; a patient at exactly 0.5 is predicted long,
  in the accuracy as in the Kaplan-Meier split and the hazard ratio.

Mean +- standard error (paper 2.6: "the average performance across all 5
repetitions, along with the standard error"): each repeat's value is the mean
over its k folds; the table reports the mean of the repeat values and
``SE = sd / sqrt(n_repeats)`` with the sample standard deviation (``ddof=1``).
The SE is therefore over the 5 repeats, not over the 15 folds. It describes
how much the estimate moves when the data are reshuffled; the repeats share
patients, so it is not the uncertainty of a new cohort.

Curves: ROC and precision-recall points of every fold, and a mean curve on a
common grid with a band of +-1 SE over repeats (each repeat's curve being the
mean of its folds' curves), matching the table. ROC curves are interpolated
linearly in the false-positive rate; precision is read as the step function
that average precision integrates (precision at the first threshold reaching
each recall), so the area under the mean PR curve equals the mean AUPRC up to
the grid resolution. Written by hand: curve averaging on a grid (scikit-learn
gives the per-fold curves only).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from prrt_utils.analysis.stats import paired_model_test
from prrt_utils.data import paper
from prrt_utils.data.folds import make_folds
from prrt_utils.io.figures import PALETTE, rgba
from prrt_utils.models.networks import BASELINE_NAMES, ModelError, get_spec
from prrt_utils.models.stored import predicted_long
from prrt_utils.synthetic import CEILING_FAMILIES, SynthConfig, ceiling_features, sample_cohort

__all__ = [
    "METRICS",
    "METRIC_LABELS",
    "ComparisonPower",
    "CurveSet",
    "MetricSummary",
    "MetricsError",
    "ModelResults",
    "bayes_ceiling",
    "comparison_power",
    "curves_figure",
    "evaluate",
    "fold_metrics",
    "generator_ceilings",
    "loss_figure",
    "metrics_figure",
    "input_family",
    "paper_reference",
    "pr_curves",
    "read_synth_config",
    "read_truth",
    "truth_ceilings",
    "roc_curves",
    "side_by_side",
    "versus_ceiling",
]

METRICS: tuple[str, ...] = ("auroc", "auprc", "auprc_long", "accuracy")
METRIC_LABELS = {"auroc": "AUROC", "auprc": "AUPRC, short PFS positive", "auprc_long": "AUPRC, long PFS positive",
                 "accuracy": "Accuracy (predicted long PFS when P(long) >= 0.5)"}
_NEEDED = ("model", "repeat", "fold", "patient_id", "y_true", "prob")


class MetricsError(ValueError):
    """Predictions that cannot be scored (names the model and fold)."""


def _check(predictions: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in _NEEDED if c not in predictions.columns]
    if missing:
        raise MetricsError(f"predictions lack column(s) {missing}; have {list(predictions.columns)}")
    if predictions.empty:
        raise MetricsError("no predictions to score")
    bad = ~np.isfinite(predictions["prob"].to_numpy(dtype=float))
    if bad.any():
        r = predictions[bad].iloc[0]
        raise MetricsError(f"model {r['model']}, repeat {r['repeat']}, fold {r['fold']}: patient {r['patient_id']} has no finite probability")
    return predictions


# --------------------------------------------------------------------------- the prediction rule


# --------------------------------------------------------------------------- per fold


def fold_metrics(predictions: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """AUROC, AUPRC (average precision) and accuracy of every (model, repeat, fold).

    Parameters
    ----------
    predictions : DataFrame
        ``model, repeat, fold, patient_id, y_true, prob`` (test patients).
    threshold : float
        Cut-off on P(long PFS) of :func:`predicted_long` (accuracy); ``prob``
        is P(short PFS).

    Returns
    -------
    DataFrame
        ``model, repeat, fold, n, n_pos, auroc, auprc, auprc_long, accuracy,
        prob_sd``; ``auprc`` scores short PFS as the positive class, ``auprc_long``
        long PFS (the paper's). AUROC and AUPRC are NaN for a fold whose test
        part holds one class only.
        ``prob_sd`` is the spread of the predicted probabilities: 0 means the
        model gave everyone the same probability (AUROC then is exactly 0.5).
    """
    _check(predictions)
    rows = []
    for (model, repeat, fold), g in predictions.groupby(["model", "repeat", "fold"], sort=True):
        y, p = g["y_true"].to_numpy(dtype=int), g["prob"].to_numpy(dtype=float)
        two = len(np.unique(y)) == 2
        rows.append(
            {
                "model": model,
                "repeat": int(repeat),
                "fold": int(fold),
                "n": len(y),
                "n_pos": int(y.sum()),
                "auroc": float(roc_auc_score(y, p)) if two else math.nan,
                "auprc": float(average_precision_score(y, p)) if two else math.nan,
                "auprc_long": float(average_precision_score(1 - y, 1.0 - p)) if two else math.nan,
                "accuracy": float(accuracy_score(y, (~predicted_long(p, prob_is="short", threshold=threshold)).astype(int))),
                "prob_sd": float(p.std()),
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- mean +- SE


@dataclasses.dataclass(frozen=True)
class MetricSummary:
    """One metric of one model: mean and standard error over repeats.

    Attributes
    ----------
    model, metric : str
    mean : float
        Mean over repeats of the per-repeat mean over folds.
    se : float
        ``sd / sqrt(n_repeats)`` (``ddof=1``); NaN with one repeat.
    sd : float
        Sample standard deviation of the per-repeat means.
    n_repeats, n_folds : int
        Repeats, and folds in all.
    per_repeat : tuple of float
        The per-repeat means.
    """

    model: str
    metric: str
    mean: float
    se: float
    sd: float
    n_repeats: int
    n_folds: int
    per_repeat: tuple[float, ...]
    method: str = "mean over repeats of the per-repeat fold mean; SE = sd(ddof=1)/sqrt(n_repeats)"

    def format(self, digits: int = 2) -> str:
        """``"0.59 ± 0.02"`` as in the paper's Table 2."""
        return f"{self.mean:.{digits}f} ± {self.se:.{digits}f}"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [{"model": self.model, "metric": self.metric, "mean": self.mean, "se": self.se, "sd": self.sd,
              "n_repeats": self.n_repeats, "n_folds": self.n_folds}]
        )


def _summary(model: str, metric: str, folds: pd.DataFrame) -> MetricSummary:
    per_repeat = folds.groupby("repeat")[metric].mean().dropna()
    n = len(per_repeat)
    mean = float(per_repeat.mean()) if n else math.nan
    sd = float(per_repeat.std(ddof=1)) if n > 1 else math.nan
    se = sd / math.sqrt(n) if n > 1 else math.nan
    return MetricSummary(model, metric, mean, se, sd, n, int(folds[metric].notna().sum()),
                         tuple(float(v) for v in per_repeat))


@dataclasses.dataclass(frozen=True)
class ModelResults:
    """Per-fold metrics and their mean +- SE for one or more models.

    Attributes
    ----------
    fold_metrics : DataFrame
        See :func:`fold_metrics`.
    summaries : tuple of MetricSummary
        One per (model, metric).
    """

    fold_metrics: pd.DataFrame
    summaries: tuple[MetricSummary, ...]

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(s.model for s in self.summaries))

    def get(self, model: str, metric: str = "auroc") -> MetricSummary:
        for s in self.summaries:
            if s.model == model and s.metric == metric:
                return s
        raise MetricsError(f"no {metric} summary for model {model!r}; have {self.models}")

    def to_frame(self) -> pd.DataFrame:
        """One row per model: ``<metric>_mean``, ``<metric>_se`` for each metric, ``n_repeats``, ``n_folds``."""
        rows = []
        for model in self.models:
            row: dict[str, Any] = {"model": model}
            for s in (s for s in self.summaries if s.model == model):
                row[f"{s.metric}_mean"], row[f"{s.metric}_se"] = s.mean, s.se
                row["n_repeats"], row["n_folds"] = s.n_repeats, s.n_folds
            rows.append(row)
        return pd.DataFrame(rows)

    def table(self, digits: int = 2, names: dict[str, str] | None = None) -> pd.DataFrame:
        """Table-2 style strings ``mean ± SE`` per model and metric (``names`` maps keys to display names)."""
        rows = []
        for model in self.models:
            row = {"model": (names or {}).get(model, model)}
            for s in (s for s in self.summaries if s.model == model):
                row[METRIC_LABELS.get(s.metric, s.metric)] = s.format(digits)
            rows.append(row)
        return pd.DataFrame(rows)


def evaluate(predictions: pd.DataFrame, threshold: float = 0.5, metrics: Sequence[str] = METRICS,
             order: Sequence[str] | None = None) -> ModelResults:
    """Per-fold metrics and mean +- SE over repeats of every model in ``predictions`` (paper Table 2).

    ``order`` fixes the order of models (e.g. the registry's); by default models appear sorted.
    """
    fm = fold_metrics(predictions, threshold)
    models = list(order) if order is not None else sorted(fm["model"].unique())
    models = [m for m in models if m in set(fm["model"])]
    rank = {m: i for i, m in enumerate(models)}
    fm = fm[fm["model"].isin(models)].sort_values(["model", "repeat", "fold"], key=lambda c: c.map(rank) if c.name == "model" else c)
    fm = fm.reset_index(drop=True)
    summaries = tuple(_summary(m, k, fm[fm["model"] == m]) for m in models for k in metrics)
    return ModelResults(fm, summaries)


# --------------------------------------------------------------------------- curves


@dataclasses.dataclass(frozen=True)
class CurveSet:
    """ROC or precision-recall curves of every fold and their mean with a band.

    Attributes
    ----------
    kind : {"roc", "pr"}
    points : DataFrame
        ``model, repeat, fold, x, y`` (ROC: x = false-positive rate, y = true-positive
        rate; PR: x = recall, y = precision), as returned by scikit-learn.
    mean : DataFrame
        ``model, x, y, se, lower, upper`` on the common grid: the mean over
        repeats of per-repeat mean curves, and the band ``mean ± SE`` (over repeats).
    chance : dict model -> float
        The curve of random predictions: ROC the diagonal (recorded as 0.5,
        its area), PR the prevalence of short PFS among tested patients.
    """

    kind: str
    points: pd.DataFrame
    mean: pd.DataFrame
    chance: dict[str, float]
    band: str = "mean ± 1 SE over repeats (each repeat's curve = mean of its folds' curves)"

    def to_frame(self) -> pd.DataFrame:
        return self.mean.copy()


def _pr_step(recall: np.ndarray, precision: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Precision at the first threshold whose recall reaches each grid value (what average precision sums)."""
    frame = pd.DataFrame({"r": recall, "p": precision}).groupby("r")["p"].max()
    levels, prec = frame.index.to_numpy(), frame.to_numpy()
    k = np.clip(np.searchsorted(levels, grid, side="left"), 0, len(levels) - 1)
    return prec[k]


def _curves(predictions: pd.DataFrame, kind: str, grid_points: int) -> CurveSet:
    _check(predictions)
    grid = np.linspace(0.0, 1.0, grid_points)
    pts, on_grid, chance = [], [], {}
    for model, gm in predictions.groupby("model", sort=True):
        chance[model] = 0.5 if kind == "roc" else float(gm["y_true"].mean())
        for (repeat, fold), g in gm.groupby(["repeat", "fold"], sort=True):
            y, p = g["y_true"].to_numpy(dtype=int), g["prob"].to_numpy(dtype=float)
            if len(np.unique(y)) < 2:
                continue
            if kind == "roc":
                x, yy, _ = roc_curve(y, p, drop_intermediate=False)
                ig = np.interp(grid, x, yy)
                ig[0] = 0.0
            else:
                yy, x, _ = precision_recall_curve(y, p, drop_intermediate=False)
                ig = _pr_step(x, yy, grid)
            pts.append(pd.DataFrame({"model": model, "repeat": int(repeat), "fold": int(fold), "x": x, "y": yy}))
            on_grid.append(pd.DataFrame({"model": model, "repeat": int(repeat), "fold": int(fold), "x": grid, "y": ig}))
    if not pts:
        raise MetricsError("no fold with both classes in its test part: no curve can be drawn")
    g = pd.concat(on_grid, ignore_index=True)
    per_repeat = g.groupby(["model", "repeat", "x"], as_index=False)["y"].mean()
    agg = per_repeat.groupby(["model", "x"])["y"].agg(["mean", "std", "count"]).reset_index()
    se = agg["std"] / np.sqrt(agg["count"])
    mean = pd.DataFrame({"model": agg["model"], "x": agg["x"], "y": agg["mean"], "se": se,
                         "lower": (agg["mean"] - se).clip(0, 1), "upper": (agg["mean"] + se).clip(0, 1)})
    return CurveSet(kind, pd.concat(pts, ignore_index=True), mean, chance)


def roc_curves(predictions: pd.DataFrame, grid_points: int = 101) -> CurveSet:
    """ROC curves per fold and their mean ± SE band over repeats (FPR grid of ``grid_points``)."""
    return _curves(predictions, "roc", grid_points)


def pr_curves(predictions: pd.DataFrame, grid_points: int = 101) -> CurveSet:
    """Precision-recall curves per fold and their mean ± SE band over repeats (recall grid)."""
    return _curves(predictions, "pr", grid_points)


# --------------------------------------------------------------------------- Bayes ceiling, paper


def read_truth(data_dir: str | Path) -> pd.DataFrame | None:
    """``DATA/ground_truth/truth.csv`` of a synthetic cohort (``patient_id, p_short_bayes, ...``), or ``None``."""
    path = Path(data_dir) / "ground_truth" / "truth.csv"
    return pd.read_csv(path, dtype={"patient_id": str}) if path.exists() else None


def bayes_ceiling(predictions: pd.DataFrame, truth: pd.DataFrame, model: str | None = None,
                  threshold: float = 0.5) -> ModelResults:
    """Scores of the true probability ``p_short_bayes`` on the same test folds as the models.

    On the synthetic cohort the generator knows ``P(PFS <= 12 months)`` of every
    patient; scoring it like a model, fold by fold, gives the best AUROC any
    model could reach on these folds (the Bayes ceiling). The result is named
    ``"bayes_ceiling"``.

    Parameters
    ----------
    predictions : DataFrame
        Predictions of any model (only its folds and labels are used); with
        ``model`` given, that model's.
    truth : DataFrame
        ``patient_id, p_short_bayes``.
    """
    _check(predictions)
    if not {"patient_id", "p_short_bayes"} <= set(truth.columns):
        raise MetricsError("truth table needs columns patient_id and p_short_bayes")
    src = predictions if model is None else predictions[predictions["model"] == model]
    first = src["model"].iloc[0]
    src = src[src["model"] == first][["repeat", "fold", "patient_id", "y_true"]]
    p = truth.set_index(truth["patient_id"].astype(str))["p_short_bayes"]
    missing = sorted(set(src["patient_id"]) - set(p.index))
    if missing:
        raise MetricsError(f"patient {missing[0]} has no p_short_bayes in the truth table ({len(missing)} missing)")
    ceiling = src.assign(model="bayes_ceiling", prob=src["patient_id"].map(p).to_numpy(dtype=float))
    return evaluate(ceiling, threshold)


CEILING_MODELS = {"labs": "ceiling_labs", "image": "ceiling_image", "labs+image": "ceiling_labs_image"}
"""Names of the truth-based ceilings of :func:`truth_ceilings`, by input family."""


def truth_ceilings(predictions: pd.DataFrame, truth: pd.DataFrame, clinical: pd.DataFrame,
                   threshold: float = 0.5) -> ModelResults:
    """What each input family can reach on THIS cohort and these folds, and the Bayes ceiling.

    For every fold, a logistic regression (scikit-learn, standardised inputs) is
    fitted on the fold's training patients and scored on its test patients, on
    the recorded labs, on the image truth (log tumour volume, log receptor
    ratio, hepatic fraction: what an ideal reader of the PET/CT measures), and
    on both (:data:`prrt_utils.synthetic.CEILING_FAMILIES`); plus the true
    probability (:func:`bayes_ceiling`). A model is read against the ceiling of
    the inputs it sees: 116 patients limit even a model given the truth.
    Results are named by :data:`CEILING_MODELS` and ``"bayes_ceiling"``.
    """
    _check(predictions)
    first = predictions["model"].iloc[0]
    src = predictions[predictions["model"] == first][["repeat", "fold", "patient_id", "y_true"]]
    feats = ceiling_features(clinical.assign(patient_id=clinical["patient_id"].astype(str)),
                             truth.assign(patient_id=truth["patient_id"].astype(str)))
    missing = sorted(set(src["patient_id"]) - set(feats.index))
    if missing:
        raise MetricsError(f"patient {missing[0]} has no ground truth ({len(missing)} missing)")
    parts = []
    for (repeat, fold), test in src.groupby(["repeat", "fold"]):
        train = src[(src["repeat"] == repeat) & (src["fold"] != fold)]
        for family, name in CEILING_MODELS.items():
            cols = list(CEILING_FAMILIES[family])
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
            model.fit(feats.loc[train["patient_id"], cols].to_numpy(), train["y_true"].to_numpy())
            prob = model.predict_proba(feats.loc[test["patient_id"], cols].to_numpy())[:, 1]
            parts.append(test.assign(model=name, prob=prob))
    p = truth.set_index(truth["patient_id"].astype(str))["p_short_bayes"]
    parts.append(src.assign(model="bayes_ceiling", prob=src["patient_id"].map(p).to_numpy(dtype=float)))
    return evaluate(pd.concat(parts, ignore_index=True), threshold, order=[*CEILING_MODELS.values(), "bayes_ceiling"])


@dataclasses.dataclass(frozen=True)
class ComparisonPower:
    """How often the truth itself would show fusion better than one modality alone, at this size.

    Attributes
    ----------
    per_seed : DataFrame
        One row per generator seed: the ceilings' mean AUROC (``labs``,
        ``image``, ``labs+image``) and the corrected resampled t-test p of
        labs + image against each single family, on that cohort's folds.
    n_patients, alpha : int, float
        Cohort size and significance level; seeds whose draw has fewer patients of
        a class than folds are left out (``cohorts`` in :meth:`table` counts the rest).
    """

    per_seed: pd.DataFrame
    n_patients: int
    alpha: float

    @property
    def share_column(self) -> str:
        """Name of :meth:`table`'s column of percentages (no "p" in it: the reader tables format p-values)."""
        return f"cohorts where the truth is significantly better, {100 * self.alpha:g} % level (%)"

    def table(self) -> pd.DataFrame:
        """One row per comparison: mean ceiling difference and the percentage of seeds with p < alpha."""
        d = self.per_seed
        rows = [{"comparison": f"labs + image against {other}",
                 "mean AUROC difference of the ceilings": float((d["labs+image"] - d[other]).mean()),
                 self.share_column: 100.0 * float((d[f"p vs {other}"] < self.alpha).mean())}
                for other in ("labs", "image")]
        both = (d["p vs labs"] < self.alpha) & (d["p vs image"] < self.alpha)
        rows.append({"comparison": "labs + image against labs and against image",
                     "mean AUROC difference of the ceilings": math.nan,
                     self.share_column: 100.0 * float(both.mean())})
        return pd.DataFrame(rows).assign(cohorts=len(d), patients=self.n_patients)


def read_synth_config(data_dir: str | Path) -> Any | None:
    """The generator configuration of a synthetic cohort (``DATA/config.yaml``), or None for a real one."""
    path = Path(data_dir) / "config.yaml"
    return SynthConfig.from_yaml(path) if path.exists() and (Path(data_dir) / "ground_truth").is_dir() else None


def generator_ceilings(cfg: Any, n_splits: int = 3, n_repeats: int = 5) -> ModelResults | None:
    """:func:`truth_ceilings` of a cohort drawn at table level from ``cfg`` (no images), on the pipeline's folds.

    The cohort is split as :func:`prrt_utils.data.folds.make_folds` splits it, with
    ``cfg.seed`` for the folds as for the generator; a patient censored before
    the threshold has no class and is left out, as in the cohort stage. None
    when a class has fewer patients than folds (a small draw cannot be split).
    """
    c = sample_cohort(cfg)
    clin = c.clinical
    y = (clin["pfs_months"] <= cfg.pfs_threshold_months).astype(int)
    known = (clin["event"] == 1) | (y == 0)
    labels = pd.DataFrame({"patient_id": clin["patient_id"], "pfs_short": y})[known]
    if labels["pfs_short"].value_counts().reindex([0, 1], fill_value=0).min() < n_splits:
        return None
    folds = make_folds(labels, n_splits=n_splits, n_repeats=n_repeats, seed=int(cfg.seed))
    test = folds[folds["split"] == "test"].merge(labels, on="patient_id")
    frame = test.assign(model="labels", prob=0.5, y_true=test["pfs_short"])[
        ["model", "repeat", "fold", "patient_id", "y_true", "prob"]]
    return truth_ceilings(frame, c.truth, clin)


def comparison_power(cfg: Any, seeds: Sequence[int] = range(20), alpha: float = 0.05,
                     n_splits: int = 3, n_repeats: int = 5) -> ComparisonPower:
    """Power of the paired fusion-against-one-modality test when the models are as good as the truth.

    For each generator seed, the ceilings of the table-level cohort of ``cfg``
    (:func:`generator_ceilings`) compare labs + image with labs and with image
    by the corrected resampled t-test. No model can beat the ceiling of what it
    sees, so the share of seeds with p < ``alpha`` is an upper bound on how
    often a real fusion model could be declared better at this cohort size: it
    says how to read a non-significant comparison. Synthetic cohorts only (the
    truth is needed); a few seconds for 20 seeds.
    """
    rows = []
    for seed in seeds:
        ceil = generator_ceilings(cfg.replace(seed=int(seed)), n_splits, n_repeats)
        if ceil is None:  # this draw cannot be split; the table counts the cohorts it used
            continue
        row = {"seed": int(seed), **{f: ceil.get(CEILING_MODELS[f]).mean for f in CEILING_MODELS}}
        for other in ("labs", "image"):
            row[f"p vs {other}"] = paired_model_test(
                ceil.fold_metrics, CEILING_MODELS["labs+image"], CEILING_MODELS[other]).p_value
        rows.append(row)
    return ComparisonPower(pd.DataFrame(rows), int(cfg.n_patients), alpha)


def side_by_side(ours: ModelResults, paper: pd.DataFrame, names: dict[str, str] | None = None,
                 digits: int = 2) -> pd.DataFrame:
    """Our mean ± SE beside the paper's Table 2 (real cohort), one row per model.

    Parameters
    ----------
    ours : ModelResults
    paper : DataFrame
        One row per model with a ``model`` column of registry keys and
        ``auroc_mean, auroc_se, auprc_mean, auprc_se`` (as ``prrt_utils.data.paper.paper_table2()``).
    names : dict, optional
        Model key -> display name.

    Returns
    -------
    DataFrame
        ``model``, AUROC paper / ours, AUPRC with long PFS positive paper /
        ours (the paper's AUPRC is this one, see the module notes), and our
        AUPRC with short PFS positive (no paper value to set beside it).
    """
    need = {"model", "auroc_mean", "auroc_se", "auprc_mean", "auprc_se"}
    if not need <= set(paper.columns):
        raise MetricsError(f"paper table needs columns {sorted(need)}; has {list(paper.columns)}")
    paper = paper.set_index("model")
    rows = []
    for model in ours.models:
        row = {"model": (names or {}).get(model, model)}
        for ours_metric, paper_metric, label in (("auroc", "auroc", "AUROC"),
                                                 ("auprc_long", "auprc", "AUPRC, long PFS positive")):
            if model in paper.index:
                m, s = paper.loc[model, f"{paper_metric}_mean"], paper.loc[model, f"{paper_metric}_se"]
                row[f"{label}: paper (real cohort)"] = f"{m:.{digits}f} ± {s:.{digits}f}"
            else:
                row[f"{label}: paper (real cohort)"] = "not in paper"
            row[f"{label}: ours (this cohort)"] = ours.get(model, ours_metric).format(digits)
        row["AUPRC, short PFS positive: ours (paper: not reported)"] = ours.get(model, "auprc").format(digits)
        rows.append(row)
    return pd.DataFrame(rows)


def input_family(model: str) -> str | None:
    """The input family of a registry model (``labs``, ``image``, ``labs+image``), or None if unknown."""
    try:
        spec = get_spec(model)
    except ModelError:
        return None
    images = bool(spec.image_inputs)
    return "labs+image" if images and spec.uses_labs else ("image" if images else "labs")


def versus_ceiling(results: ModelResults, ceiling: ModelResults, metric: str = "auroc", digits: int = 2) -> pd.DataFrame:
    """Each model's AUROC beside the ceiling of the inputs it sees and the Bayes ceiling, on the same folds.

    ``share of achievable = (model - 0.5) / (ceiling - 0.5)``: 0 is chance, 1 the
    best any model could do on this cohort (AUROC; 0.5 is chance). With the
    family ceilings of :func:`truth_ceilings` in ``ceiling``, each model is also
    set beside the logistic regression on the true values of what it sees.
    """
    c = ceiling.get("bayes_ceiling", metric)
    rows = []
    for model in results.models:
        s = results.get(model, metric)
        row = {"model": model, f"{metric} (mean ± SE)": s.format(digits)}
        family = input_family(model)
        if any(name in ceiling.models for name in CEILING_MODELS.values()):  # one column, the family in words
            known = family is not None and CEILING_MODELS[family] in ceiling.models
            row["ceiling of what it sees (true values)"] = (
                f"{ceiling.get(CEILING_MODELS[family], metric).format(digits)} ({family})" if known else "")
        row[f"Bayes ceiling {metric}"] = c.format(digits)
        row["share of achievable"] = (s.mean - 0.5) / (c.mean - 0.5) if c.mean != 0.5 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_se_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Normalise a Table-2 frame to ``model, auroc_mean, auroc_se, auprc_mean, auprc_se``."""
    out = pd.DataFrame({"model": table["model"]})
    lower = {c.lower(): c for c in table.columns}
    for metric in ("auroc", "auprc"):
        if f"{metric}_mean" in lower and f"{metric}_se" in lower:
            out[f"{metric}_mean"] = table[lower[f"{metric}_mean"]].astype(float)
            out[f"{metric}_se"] = table[lower[f"{metric}_se"]].astype(float)
        elif metric in lower:  # "0.59 ± 0.02" or "0.59 +- 0.02"
            parts = table[lower[metric]].astype(str).str.replace("+-", "±", regex=False).str.split("±", expand=True)
            out[f"{metric}_mean"] = parts[0].str.strip().str.rstrip("*†").astype(float)
            out[f"{metric}_se"] = parts[1].str.strip().str.rstrip("*†").astype(float)
        else:
            raise MetricsError(f"paper table has no {metric} columns: {list(table.columns)}")
    return out


def paper_reference() -> tuple[dict[str, str], pd.DataFrame]:
    """Display names (the paper's seven and the baselines) and the paper's Table 2 (real cohort).

    Returns ``(names, table)``; ``table`` has ``model, auroc_mean, auroc_se,
    auprc_mean, auprc_se``.
    """
    return {**paper.DISPLAY_NAMES, **BASELINE_NAMES}, _mean_se_columns(paper.paper_table2())


# --------------------------------------------------------------------------- figures (plotly)

def curves_figure(roc: CurveSet, pr: CurveSet, names: dict[str, str] | None = None,
                  models: Sequence[str] | None = None, show_folds: bool = False) -> Any:
    """Mean ROC and PR curves with their ± SE band, side by side (plotly), chance lines dashed."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("ROC", "Precision-recall"))
    models = list(models) if models is not None else list(dict.fromkeys(roc.mean["model"]))
    for i, model in enumerate(models):
        colour = PALETTE[i % len(PALETTE)]
        label = (names or {}).get(model, model)
        for col, cs in ((1, roc), (2, pr)):
            m = cs.mean[cs.mean["model"] == model]
            if show_folds:
                for (_, _), g in cs.points[cs.points["model"] == model].groupby(["repeat", "fold"]):
                    fig.add_trace(go.Scatter(x=g["x"], y=g["y"], mode="lines", line={"color": rgba(colour, 0.15), "width": 1},
                                             hoverinfo="skip", showlegend=False), row=1, col=col)
            fig.add_trace(go.Scatter(x=np.r_[m["x"], m["x"][::-1]], y=np.r_[m["upper"], m["lower"][::-1]], fill="toself",
                                     fillcolor=rgba(colour, 0.2), line={"width": 0}, hoverinfo="skip",
                                     showlegend=False, legendgroup=model), row=1, col=col)
            fig.add_trace(go.Scatter(x=m["x"], y=m["y"], mode="lines", name=label, legendgroup=model,
                                     line={"color": colour, "width": 2}, showlegend=col == 1), row=1, col=col)
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dash", "color": "grey"},
                             name="chance", showlegend=True), row=1, col=1)
    prev = np.mean([pr.chance[m] for m in models if m in pr.chance]) if models else 0.0
    fig.add_trace(go.Scatter(x=[0, 1], y=[prev, prev], mode="lines", line={"dash": "dash", "color": "grey"},
                             name=f"chance (prevalence {prev:.2f})", showlegend=False), row=1, col=2)
    fig.update_xaxes(title_text="False-positive rate", range=[0, 1], row=1, col=1)
    fig.update_yaxes(title_text="True-positive rate", range=[0, 1.02], row=1, col=1)
    fig.update_xaxes(title_text="Recall", range=[0, 1], row=1, col=2)
    fig.update_yaxes(title_text="Precision", range=[0, 1.02], row=1, col=2)
    fig.update_layout(height=430, legend={"orientation": "h", "y": -0.2}, margin={"t": 40},
                      title={"text": f"Mean curves; band: {roc.band}", "font": {"size": 12}})
    return fig


def loss_figure(histories: pd.DataFrame, names: dict[str, str] | None = None) -> Any:
    """Training (and validation) loss per epoch: one thin line per fold, the mean over folds bold."""
    fig = go.Figure()
    if histories.empty:
        fig.update_layout(title="no training history (Random Forest only)")
        return fig
    for i, (model, gm) in enumerate(histories.groupby("model", sort=False)):
        colour = PALETTE[i % len(PALETTE)]
        for (r, f), g in gm.groupby(["repeat", "fold"]):
            fig.add_trace(go.Scatter(x=g["epoch"], y=g["train_loss"], mode="lines", line={"color": rgba(colour, 0.25), "width": 1},
                                     name=f"r{r} f{f}", legendgroup=model, showlegend=False))
        mean = gm.groupby("epoch")["train_loss"].mean()
        fig.add_trace(go.Scatter(x=mean.index, y=mean.to_numpy(), mode="lines", line={"color": colour, "width": 3},
                                 name=f"{(names or {}).get(model, model)}: training loss (mean)", legendgroup=model))
        if "val_loss" in gm.columns and gm["val_loss"].notna().any():
            vm = gm.groupby("epoch")["val_loss"].mean()
            fig.add_trace(go.Scatter(x=vm.index, y=vm.to_numpy(), mode="lines", line={"color": colour, "width": 3, "dash": "dot"},
                                     name=f"{(names or {}).get(model, model)}: validation loss (mean)", legendgroup=model))
    fig.add_hline(y=math.log(2), line_dash="dash", line_color="grey", annotation_text="ln 2 (constant 0.5)")
    fig.update_layout(xaxis_title="Epoch", yaxis_title="Binary cross-entropy", height=400, margin={"t": 30})
    return fig


def metrics_figure(results: ModelResults, ceiling: ModelResults | None = None, names: dict[str, str] | None = None,
                   metrics: Sequence[str] = ("auroc", "auprc")) -> Any:
    """Bar plot of mean ± SE per model and metric; the Bayes ceiling as a dashed line when given."""
    fig = go.Figure()
    labels = [(names or {}).get(m, m) for m in results.models]
    for i, metric in enumerate(metrics):
        s = [results.get(m, metric) for m in results.models]
        fig.add_trace(go.Bar(x=labels, y=[v.mean for v in s], error_y={"type": "data", "array": [v.se for v in s]},
                             name=METRIC_LABELS.get(metric, metric), marker_color=PALETTE[i]))
        if ceiling is not None:
            c = ceiling.get("bayes_ceiling", metric)
            fig.add_hline(y=c.mean, line_dash="dash", line_color=PALETTE[i],
                          annotation_text=f"Bayes ceiling {METRIC_LABELS.get(metric, metric)} {c.mean:.2f}")
    fig.add_hline(y=0.5, line_dash="dot", line_color="grey", annotation_text="AUROC of chance", annotation_position="bottom right")
    fig.update_layout(barmode="group", yaxis={"range": [0, 1.05], "title": "mean ± SE over repeats"}, height=420, margin={"t": 30})
    return fig
