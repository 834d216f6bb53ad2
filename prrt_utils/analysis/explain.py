"""Chapters 05 and 06: read stored results, compare models, and explain them (paper 2.6, 3.3-3.4).

Downstream of the grid: everything here READS ``WORK/results`` (predictions,
embeddings, weights, ``done.json``) and never trains. The statistics
themselves are in :mod:`prrt_utils.analysis.stats` (pure functions) and
:mod:`prrt_utils.analysis.metrics`; this module finds the inputs, calls them, caches
what is expensive and draws the figures.

Paper sections implemented
--------------------------
* 2.6, 3.2 and Figure 4: model families, a representative cross-validation
  fold (:func:`representative_fold`), the best fusion model (:func:`best_model`).
* 3.3 and Figure 5: Kaplan-Meier of PFS by predicted probability for one model
  and repeat (:func:`survival_frame`, :func:`km_figure`, :func:`km_over_repeats`).
* 2.7, 3.4 and Figure 6: UMAP of the embeddings of each image and fusion model
  (:meth:`Explainer.umap`).
* 2.7, 3.4 and Figure 7: permutation importance of each laboratory value, single and
  grouped (AST with ALT), for the Random Forest and every fusion model
  (:meth:`Explainer.permutation_importance`), and the gradient of the output
  with respect to the laboratory inputs of the fusion layer
  (:meth:`Explainer.lab_gradients`).
* 2.7, 3.4, Figures 8-9: PET saliency maps (gradients of the prediction with
  respect to the PET input), their overlays in three planes, the distribution
  of normalised gradient magnitudes of PET-only vs PET-fusion with six
  distances (:meth:`Explainer.gradient_distributions`) and, on the synthetic
  cohort, the share of saliency on lesions vs physiological uptake
  (:meth:`Explainer.saliency_mass`).

Libraries: captum (``Saliency``: gradients of the output with respect to the
inputs), umap-learn (``UMAP``), scikit-learn (``roc_auc_score``,
``silhouette_score``), scipy and lifelines through :mod:`prrt_utils.analysis.stats`,
nibabel for the ground-truth label maps and
:func:`prrt_utils.data.grid.resample` to put them on the model's grid with the
geometry the preprocessing used. Written by hand (reasons at each place): the
batched permutation loop (it replays scikit-learn's permutations exactly and a
test proves equality), the region grouping of the label maps and the cache.

Caching
-------
Expensive products (UMAP, permutation importance, gradients, saliency
statistics, label maps) are written atomically to ``WORK/explain/`` (or a
``cache_dir`` of the caller's choice), keyed by the SHA-256 of the
``done.json`` of every fold used, the :class:`ExplainConfig` and the call's
arguments: a retrained fold or a changed setting gives a new file, never a
stale result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from prrt_utils.data import paper
from prrt_utils.data.cohort import PFS_THRESHOLD_MONTHS
from prrt_utils.io import store
from prrt_utils.io.config import SEED, Config
from prrt_utils.models.inputs import cohort_data
from prrt_utils.models.networks import IMG_SIZE, ModelSpec, get_spec, load_registry

__all__ = [
    "LAB_NAMES",
    "ExplainConfig",
    "ExplainError",
    "Explainer",
    "available_models",
    "best_model",
    "compare_model_families",
    "FamilyComparisons",
    "gradient_comparison",
    "km_note",
    "lab_gradient_table",
    "SaliencyPanel",
    "saliency_panels",
    "saliency_title",
    "primary_model",
    "display_names",
    "families",
    "family_table",
    "family_order",
    "fusion_models",
    "gradient_histogram_figure",
    "group_vs_singles",
    "image_models",
    "importance_figure",
    "importance_summary",
    "km_figure",
    "km_over_repeats",
    "lab_gradient_summary",
    "load_label_map",
    "model_keys",
    "normalised_magnitude",
    "PAPER_GRADIENT_DISTANCES",
    "REGIONS",
    "distance_table",
    "permutation_drops",
    "pet_saliency",
    "read_survival",
    "region_codes",
    "region_fractions",
    "representative_fold",
    "representative_repeat",
    "saliency_figure",
    "saliency_viewer",
    "slice_viewer",
    "survival_frame",
    "table2",
    "umap_figure",
]

EXPLAIN_VERSION = 1
"""Bump when a cached product of the same inputs would change."""

LAB_NAMES: dict[str, str] = {"ast_u_l": "AST", "alt_u_l": "ALT", "cga_ug_l": "CgA", "ggt_u_l": "gamma-GT"}
"""Display names of the laboratory inputs (:data:`prrt_utils.models.networks.LAB_COLUMNS`)."""

DEFAULT_GROUPS: dict[str, tuple[str, ...]] = {"AST+ALT": ("ast_u_l", "alt_u_l")}
"""Laboratory values permuted together: AST and ALT are correlated liver enzymes."""

REGIONS: tuple[str, ...] = ("lesion", "kidney", "spleen", "bladder", "liver", "other body", "outside body")
"""Regions of the saliency-mass table (:func:`region_codes`); the last is the remainder."""

IMAGE_FEATURE = "image embedding"
"""Name of the group of all image features of a fusion model in the permutation importance."""

_RULE_FAMILIES = ("unimodal", "one_image_fusion", "dual_fusion")


class ExplainError(ValueError):
    """Missing results, a patient not in the folds, or stored outputs that do not reproduce."""


# --------------------------------------------------------------------------- names and families


def display_names() -> dict[str, str]:
    """Model key -> display name (the paper's seven and the baselines)."""
    from prrt_utils.analysis.metrics import paper_reference

    return dict(paper_reference()[0])


def model_keys() -> list[str]:
    """The models of the book: the paper's seven (``prrt_utils.data.paper.MODEL_KEYS``), then the registry's others."""
    return list(dict.fromkeys([*paper.MODEL_KEYS, *load_registry()]))


def available_models(work_dir: str | Path) -> list[str]:
    """Models whose every fold of ``WORK/folds.csv`` is finished, in :func:`model_keys` order, then others.

    Chapters default to these, so a run of a subset of the models still renders.
    """
    work_dir = Path(work_dir)
    folds = pd.read_csv(work_dir / "folds.csv", dtype={"patient_id": str})
    pairs = set(zip(folds["repeat"].astype(int), folds["fold"].astype(int), strict=True))
    root = work_dir / "results"
    present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    keys = model_keys()
    ordered = [m for m in keys if m in present] + [m for m in present if m not in keys]
    out = []
    for m in ordered:
        done = {(int(d.parent.name[1:].split("_f")[0]), int(d.parent.name.split("_f")[1]))
                for d in (root / m).glob("r*_f*/done.json")}
        if pairs and pairs <= done:
            out.append(m)
    return out


def family_order() -> tuple[str, ...]:
    """Families from fewest to most modalities (``paper.FAMILY_ORDER``)."""
    return tuple(paper.FAMILY_ORDER)


def _rule_family(spec: ModelSpec, order: Sequence[str]) -> str:
    """Family from the inputs (paper 2.6): one modality; one image + labs; two images + labs."""
    if spec.kind == "logistic":
        return "other"  # the baselines stand beside the paper's families, not in them
    n_img = len(spec.image_inputs) if spec.kind == "cnn" else 0
    n_modalities = n_img + int(spec.uses_labs)
    if n_modalities == 1:
        level = 0
    elif spec.uses_labs and n_img in (1, 2):
        level = n_img
    else:
        return "other"  # e.g. PET + CT without labs: no family of the paper
    return order[level] if level < len(order) else _RULE_FAMILIES[level]


def families(models: Sequence[str]) -> dict[str, str]:
    """Model key -> family (unimodal / one-image fusion / dual fusion, paper 2.6).

    ``prrt_utils.data.paper.FAMILIES`` decides for the models it lists; any other
    model is placed by its inputs (one modality -> the first family, one image
    plus labs -> the second, two images plus labs -> the third, else ``"other"``,
    which no comparison uses).
    """
    order = family_order()
    known = {m: family for family, members in paper.FAMILIES.items() for m in members}
    return {m: known[m] if m in known else _rule_family(get_spec(m), order) for m in models}


def fusion_models(models: Sequence[str]) -> list[str]:
    """Models that fuse at least one image with the laboratory values (the paper's fusion models)."""
    out = []
    for m in models:
        s = get_spec(m)
        if s.kind == "cnn" and s.uses_labs and s.image_inputs:
            out.append(m)
    return out


def image_models(models: Sequence[str], modality: str | None = None) -> list[str]:
    """CNN models (every model with an image input), or those whose inputs include ``modality``."""
    specs = [get_spec(m) for m in models]
    return [s.name for s in specs if s.kind == "cnn" and (modality is None or modality in s.image_inputs)]


def primary_model(models: Sequence[str]) -> str:
    """The pre-specified model of the single-model analyses, chosen without looking at any result.

    :data:`prrt_utils.data.paper.PRIMARY_MODEL` (the paper's best, PET/CT fusion
    with a pretrained CT branch) when it was trained; otherwise the last
    fusion model in registry order (the one with the most inputs), else the
    last model given. Never the best scorer on the same predictions (winner's curse).
    """
    from prrt_utils.data.paper import PRIMARY_MODEL

    models = list(models)
    if not models:
        raise ExplainError("primary_model: no model given")
    if PRIMARY_MODEL in models:
        return PRIMARY_MODEL
    fusion = fusion_models(models)
    return fusion[-1] if fusion else models[-1]


def best_model(fold_metrics: pd.DataFrame, candidates: Sequence[str], metric: str = "auroc") -> str:
    """The candidate with the highest mean ``metric`` over repeats (each repeat = mean of its folds).

    Parameters
    ----------
    fold_metrics : DataFrame
        ``model, repeat, fold, <metric>`` (:func:`prrt_utils.analysis.metrics.fold_metrics`).
    candidates : sequence of str
        Models to choose from (e.g. :func:`fusion_models`).
    """
    fm = fold_metrics[fold_metrics["model"].isin(list(candidates))]
    if fm.empty:
        raise ExplainError(f"none of {list(candidates)} has fold metrics")
    means = fm.groupby(["model", "repeat"])[metric].mean().groupby("model").mean()
    return str(means.idxmax())


def representative_fold(fold_metrics: pd.DataFrame, model: str, metric: str = "auroc") -> tuple[int, int]:
    """The (repeat, fold) whose ``metric`` is closest to the model's median over all folds.

    The paper's Figure 4 shows "an exemplary fold"; taking the median one (not
    the best) keeps the example honest. Ties go to the earliest (repeat, fold).
    """
    fm = fold_metrics[fold_metrics["model"] == model].dropna(subset=[metric]).sort_values(["repeat", "fold"])
    if fm.empty:
        raise ExplainError(f"model {model!r} has no fold with a finite {metric}")
    gap = (fm[metric] - fm[metric].median()).abs().to_numpy()
    row = fm.iloc[int(np.argmin(gap))]
    return int(row["repeat"]), int(row["fold"])


def representative_repeat(fold_metrics: pd.DataFrame, model: str, metric: str = "auroc") -> int:
    """The repeat whose mean ``metric`` over its folds is closest to the median of the repeat means."""
    fm = fold_metrics[fold_metrics["model"] == model]
    if fm.empty:
        raise ExplainError(f"model {model!r} has no fold metrics")
    per = fm.groupby("repeat")[metric].mean().sort_index()
    return int(per.index[int(np.argmin((per - per.median()).abs().to_numpy()))])


def table2(results: Any, reference: pd.DataFrame | None, names: Mapping[str, str] | None = None,
           digits: int = 2) -> pd.DataFrame:
    """Our Table 2 (AUROC, AUPRC, accuracy as mean ± SE over repeats) beside the paper's (real cohort).

    ``results`` is a :class:`prrt_utils.analysis.metrics.ModelResults`; ``reference`` the
    frame of :func:`prrt_utils.analysis.metrics.paper_reference` (or ``None``, then only
    our columns are shown). The paper's accuracy is given for two models only.
    """
    from prrt_utils.analysis.metrics import side_by_side

    if reference is None:
        return results.table(digits=digits, names=dict(names or {}))
    out = side_by_side(results, reference, names=dict(names or {}), digits=digits)
    acc = {r.model: f"{r.accuracy_mean:.{digits}f} ± {r.accuracy_se:.{digits}f}"
           for r in paper.paper_table2().itertuples() if np.isfinite(r.accuracy_mean)}
    out["Accuracy paper (real cohort)"] = [acc.get(m, "not reported") for m in results.models]
    out["Accuracy ours (this cohort)"] = [results.get(m, "accuracy").format(digits) for m in results.models]
    return out


def family_table(*comparisons: Any, digits: int = 3) -> pd.DataFrame:
    """Compact table of :class:`prrt_utils.analysis.stats.FamilyComparison` results, one row per comparison and sample unit.

    Columns: the comparison, which samples the Mann-Whitney test used, their
    sizes and medians, U, p (raw, Bonferroni), Cliff's delta and its label, the
    mean per-fold difference of the family means and the corrected resampled
    t-test (t, p raw and Bonferroni-adjusted).
    """
    rows = []
    for fc in comparisons:
        for c in fc.comparisons:
            rows.append({
                "comparison": c.label,
                "Mann-Whitney samples": c.samples,
                "n (group / reference)": f"{c.n_group} / {c.n_reference}",
                "median (group / reference)": f"{c.median_group:.{digits}f} / {c.median_reference:.{digits}f}",
                "U": c.u_statistic,
                "p": c.p_value,
                "p Bonferroni": c.p_adjusted,
                "Cliff's delta": round(c.cliffs_delta, digits),
                "magnitude": c.magnitude,
                "mean fold difference": round(c.ttest.mean_difference, digits),
                "corrected t": round(c.ttest.t_statistic, digits),
                "corrected t p": c.ttest.p_value,
                "corrected t p Bonferroni": c.ttest_p_adjusted,
            })
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- survival (chapter 05)


def read_survival(work_dir: str | Path) -> pd.DataFrame:
    """``patient_id, pfs_months, event`` (and ``pfs_short``) from ``WORK/cohort/cohort.csv``."""
    path = Path(work_dir) / "cohort" / "cohort.csv"
    if not path.is_file():
        raise ExplainError(f"{path} not found: build the cohort first")
    cohort = pd.read_csv(path, dtype={"patient_id": str})
    need = ["patient_id", "pfs_months", "event"]
    missing = [c for c in need if c not in cohort.columns]
    if missing:
        raise ExplainError(f"{path} lacks column(s) {missing}")
    return cohort[[c for c in (*need, "pfs_short") if c in cohort.columns]].copy()


def survival_frame(predictions: pd.DataFrame, survival: pd.DataFrame, model: str, repeat: int) -> pd.DataFrame:
    """One repeat's test predictions of ``model`` joined to PFS: ``patient_id, prob, y_true, pfs_months, event``.

    Every patient is in exactly one test fold of a repeat, so each appears once
    and each probability comes from a model that did not see the patient.
    ``prob`` is the predicted probability of SHORT PFS (as stored).
    """
    p = predictions[(predictions["model"] == model) & (predictions["repeat"] == repeat)]
    if p.empty:
        raise ExplainError(f"no predictions of model {model!r} in repeat {repeat}")
    out = p[["patient_id", "prob", "y_true"]].merge(survival, on="patient_id", how="left", validate="one_to_one")
    if out["pfs_months"].isna().any():
        pid = out.loc[out["pfs_months"].isna(), "patient_id"].iloc[0]
        raise ExplainError(f"patient {pid} has a prediction but no PFS in the cohort table")
    return out.reset_index(drop=True)


def km_over_repeats(predictions: pd.DataFrame, survival: pd.DataFrame, model: str, threshold: float = 0.5) -> pd.DataFrame:
    """:func:`prrt_utils.analysis.stats.km_by_prediction` for every repeat of ``model``, one row each (not cherry-picked)."""
    from prrt_utils.analysis.stats import km_by_prediction

    rows = []
    for r in sorted(predictions.loc[predictions["model"] == model, "repeat"].unique()):
        km = km_by_prediction(survival_frame(predictions, survival, model, int(r)), threshold, prob_is="short")
        rows.append(km.to_frame().drop(columns=["rule"]).assign(model=model, repeat=int(r)))
    out = pd.concat(rows, ignore_index=True)
    return out[["model", "repeat", *[c for c in out.columns if c not in ("model", "repeat")]]]


def km_figure(km: Any, title: str = "", threshold_months: float = PFS_THRESHOLD_MONTHS) -> Any:
    """Kaplan-Meier curves of a :class:`prrt_utils.analysis.stats.KMByPrediction` with 95 % bands (plotly)."""
    import plotly.graph_objects as go

    from prrt_utils.analysis.metrics import rgba

    colours = {"predicted long PFS": "#1f77b4", "predicted short PFS": "#d62728"}
    fig = go.Figure()
    curves = km.curves()
    for group, g in curves.groupby("group", sort=False):
        c = colours.get(group, "#7f7f7f")
        t = g["time_months"].to_numpy()
        fig.add_trace(go.Scatter(x=np.r_[t, t[::-1]], y=np.r_[g["ci_upper"], g["ci_lower"].to_numpy()[::-1]],
                                 fill="toself", fillcolor=rgba(c, 0.15), line={"width": 0, "shape": "hv"},
                                 hoverinfo="skip", showlegend=False))
        n = km.n_long if group == "predicted long PFS" else km.n_short
        med = km.median_long if group == "predicted long PFS" else km.median_short
        fig.add_trace(go.Scatter(x=t, y=g["survival"], mode="lines", line={"color": c, "width": 2, "shape": "hv"},
                                 name=f"{group} (n={n}, median {med:.1f} months)"))
    fig.add_vline(x=threshold_months, line_dash="dash", line_color="grey", annotation_text=f"{threshold_months:g} months")
    fig.update_layout(
        title={"text": f"{title} log-rank chi2 = {km.logrank_statistic:.2f}, p = {km.p_value:.3g}", "font": {"size": 13}},
        xaxis_title="Months since start of PRRT", yaxis_title="Progression-free (Kaplan-Meier)",
        yaxis={"range": [0, 1.02]}, height=420, legend={"orientation": "h", "y": -0.2}, margin={"t": 50},
    )
    return fig


# --------------------------------------------------------------------------- configuration and cache


@dataclasses.dataclass(frozen=True)
class ExplainConfig(Config):
    """Settings of the explainability chapter (paper 3.4).

    Attributes
    ----------
    repeat : int
        Repeat whose three test sets give the saliency maps, the gradient
        distributions and the saliency mass (each patient once, always scored by
        a model that did not train on them).
    umap_repeat, umap_fold : int
        Fold whose embeddings (training and test patients of ONE network) are
        projected by UMAP.
    umap_neighbors : int
        UMAP ``n_neighbors`` (lowered to ``n - 1`` for tiny inputs).
    umap_min_dist : float
        UMAP ``min_dist``.
    n_permutations : int
        Permutations per feature and fold (scikit-learn's ``n_repeats``).
    seed : int
        Seed of UMAP, of the permutations and of the subsample of gradients.
    max_values : int
        Gradient magnitudes per model entering the sample-based distances
        (a seeded uniform draw with replacement when there are more; histograms use all).
    bins : int
        Histogram bins on [0, 1] for the gradient distributions.
    vmin : float
        Normalised gradients below this are not drawn on the overlays (paper Fig. 9: 0.3).
    """

    repeat: int = 0
    umap_repeat: int = 0
    umap_fold: int = 0
    umap_neighbors: int = 15
    umap_min_dist: float = 0.1
    n_permutations: int = 10
    seed: int = SEED
    max_values: int = 1_000_000
    bins: int = 100
    vmin: float = 0.3


def _done_text(work_dir: Path, model: str, repeat: int, fold: int) -> str:
    from prrt_utils.models.stored import fold_dir

    path = fold_dir(work_dir, model, repeat, fold) / "done.json"
    if not path.is_file():
        raise ExplainError(f"{path.parent} is not finished (no done.json): run the grid for {model} first")
    return path.read_text()


class _Cache:
    """Atomic files under ``root`` keyed by a SHA-256 of what they were computed from (hand-written: a few lines)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def _path(self, name: str, key: str, ext: str) -> Path | None:
        return None if self.root is None else self.root / f"{name}-{key[:16]}.{ext}"

    def frame(self, name: str, key: str, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        path = self._path(name, key, "parquet")
        if path is not None and path.is_file():
            return pd.read_parquet(path)
        out = compute()
        if path is not None:
            store.write_parquet(path, out)
        return out

    def arrays(self, name: str, key: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        path = self._path(name, key, "npz")
        if path is not None and path.is_file():
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        out = compute()
        if path is not None:
            buf = io.BytesIO()
            np.savez_compressed(buf, **out)
            store.write_bytes(path, buf.getvalue())
        return out


# --------------------------------------------------------------------------- model inputs


# --------------------------------------------------------------------------- permutation importance


def permutation_drops(
    predict_proba: Callable[[np.ndarray], np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    features: Mapping[str, Sequence[int]],
    n_repeats: int = 10,
    random_state: int = SEED,
) -> tuple[float, dict[str, np.ndarray]]:
    """Drop in AUROC when a feature, or a group of features, is permuted across patients.

    Same definition and the same permutations as
    :func:`sklearn.inspection.permutation_importance` with
    ``scoring="roc_auc"`` (for single columns the numbers are identical; a test
    checks it), written by hand for two reasons: a GROUP of columns (AST with
    ALT) must be shuffled with one row permutation, which scikit-learn cannot
    do; and scikit-learn calls the model once per permutation, while here all
    permuted copies of all features go through the model in ONE call (a
    500-tree Random Forest costs 55-250 ms per call almost whatever the number
    of rows, so the chapter's ~1000 calls would take minutes).

    Parameters
    ----------
    predict_proba : callable
        ``(n, p) -> (n,)`` probability of the positive class (short PFS).
    X : ndarray, shape (n, p)
        Inputs of the held-out patients.
    y : ndarray, shape (n,)
        Labels 0/1; both classes must be present.
    features : mapping name -> column indices
        One entry per feature or group; a group's columns share each permutation.
    n_repeats : int
        Permutations per feature.
    random_state : int
        Seed; as in scikit-learn, every feature sees the same sequence of permutations.

    Returns
    -------
    baseline : float
        AUROC of the unpermuted data (0.5 = chance).
    drops : dict name -> ndarray, shape (n_repeats,)
        ``baseline - AUROC(permuted)``; 0 = the model does not use the feature,
        positive = it relies on it, negative = permuting helped (noise).
    """
    from sklearn.metrics import roc_auc_score

    X = np.asarray(X, dtype=float)
    y = np.asarray(y).astype(int)
    n = len(y)
    if len(np.unique(y)) < 2:
        raise ExplainError("permutation importance needs both classes among the held-out patients")
    seed = np.random.RandomState(random_state).randint(np.iinfo(np.int32).max + 1)
    blocks = [X[None]]
    for cols in features.values():
        cols = list(cols)
        rs = np.random.RandomState(seed)  # as scikit-learn: the same permutations for every feature
        shuffling, rows = np.arange(n), np.arange(n)
        stacked = np.repeat(X[None], n_repeats, axis=0)
        for k in range(n_repeats):
            rs.shuffle(shuffling)
            rows = rows[shuffling]  # scikit-learn re-shuffles the already permuted column: compose the same way
            stacked[k][:, cols] = X[rows][:, cols]
        blocks.append(stacked)
    everything = np.concatenate(blocks)  # (1 + F * R, n, p): one call of the model for all of it
    prob = np.asarray(predict_proba(everything.reshape(-1, X.shape[1])), dtype=float).reshape(len(everything), n)
    baseline = float(roc_auc_score(y, prob[0]))
    drops = {}
    for i, name in enumerate(features):
        part = prob[1 + i * n_repeats : 1 + (i + 1) * n_repeats]
        drops[name] = np.array([baseline - roc_auc_score(y, part[k]) for k in range(n_repeats)])
    return baseline, drops


def importance_summary(tidy: pd.DataFrame) -> pd.DataFrame:
    """Mean drop in AUROC per model and feature, with its spreads.

    Returns
    -------
    DataFrame
        ``model, feature, kind, mean_drop, sd_permutations, se_folds, n_folds``:
        ``sd_permutations`` is the standard deviation over the permutations
        within a fold, averaged over folds (how much one permutation moves the
        number); ``se_folds`` the standard error over folds of the per-fold mean
        drop (how much it depends on the training set).
    """
    per_fold = tidy.groupby(["model", "feature", "kind", "repeat", "fold"], sort=False)["drop"].agg(["mean", "std"])
    g = per_fold.groupby(level=["model", "feature", "kind"], sort=False)
    out = pd.DataFrame({
        "mean_drop": g["mean"].mean(),
        "sd_permutations": g["std"].mean(),
        "se_folds": g["mean"].std(ddof=1) / np.sqrt(g["mean"].count()),
        "n_folds": g["mean"].count(),
    }).reset_index()
    return out


def group_vs_singles(summary: pd.DataFrame, groups: Mapping[str, Sequence[str]] = DEFAULT_GROUPS) -> pd.DataFrame:
    """Drop of each group beside the drops of its members and their sum.

    ``group - sum of singles > 0``: the members stand in for each other
    (correlated), so permuting one alone understates what they carry together.
    """
    rows = []
    names = {k: LAB_NAMES.get(k, k) for g in groups.values() for k in g}
    for model, s in summary.groupby("model", sort=False):
        drop = dict(zip(s["feature"], s["mean_drop"], strict=True))
        for group, members in groups.items():
            if group not in drop:
                continue
            singles = [drop.get(names[m], math.nan) for m in members]
            row = {"model": model, "group": group}
            row.update({f"drop {names[m]}": v for m, v in zip(members, singles, strict=True)})
            row["sum of singles"] = float(np.sum(singles))
            row["drop of group"] = drop[group]
            row["group - sum"] = drop[group] - float(np.sum(singles))
            rows.append(row)
    return pd.DataFrame(rows)


def importance_figure(summary: pd.DataFrame, names: Mapping[str, str] | None = None) -> Any:
    """Grouped bars: mean drop in AUROC per feature and model, error bars = SE over folds (plotly)."""
    import plotly.graph_objects as go

    from prrt_utils.analysis.metrics import PALETTE

    fig = go.Figure()
    for i, (model, s) in enumerate(summary.groupby("model", sort=False)):
        fig.add_trace(go.Bar(x=s["feature"], y=s["mean_drop"], error_y={"type": "data", "array": s["se_folds"]},
                             name=(names or {}).get(model, model), marker_color=PALETTE[i % len(PALETTE)]))
    fig.add_hline(y=0, line_color="grey")
    fig.update_layout(barmode="group", yaxis_title="Drop in AUROC when permuted (mean over folds ± SE)",
                      height=430, legend={"orientation": "h", "y": -0.2}, margin={"t": 30})
    return fig


def lab_gradient_summary(tidy: pd.DataFrame) -> pd.DataFrame:
    """Per model and lab: mean |d logit / d lab| and mean signed gradient over all held-out patients.

    Units: change of the logit of short PFS per standard deviation of the
    (log-transformed) laboratory value; positive = a higher value pushes
    towards short PFS.
    """
    g = tidy.groupby(["model", "feature"], sort=False)["gradient"]
    return pd.DataFrame({"mean_abs_gradient": g.apply(lambda v: float(np.abs(v).mean())),
                         "mean_gradient": g.mean(), "n": g.count()}).reset_index()


# --------------------------------------------------------------------------- saliency


def pet_saliency(model: torch.nn.Module, inputs: Sequence[torch.Tensor], index: int = 0,
                 batch_size: int = 8) -> np.ndarray:
    """Gradient of the model output with respect to one input, per voxel (captum ``Saliency``).

    Parameters
    ----------
    model : torch.nn.Module
        Returns one logit per patient ``(B,)`` (:class:`prrt_utils.models.networks.FusionNet`), in eval mode.
    inputs : sequence of tensors
        The model's inputs in :data:`~prrt_utils.models.networks.INPUT_ORDER`, e.g. PET
        ``(B, 1, D, H, W)`` and labs ``(B, L)``, normalised as in training.
    index : int
        Which input to attribute (0 = PET for every PET model).
    batch_size : int
        Patients per backward pass (memory).

    Returns
    -------
    ndarray, shape (B, D, H, W), float32
        Signed ``d logit / d input`` (captum ``abs=False``). The gradient of the
        probability differs by the factor ``p (1 - p)`` per patient, which the
        per-patient normalisation of :func:`normalised_magnitude` removes.
    """
    from captum.attr import Saliency

    model = model.eval()
    sal = Saliency(model)
    out = []
    n = int(inputs[0].shape[0])
    for start in range(0, n, batch_size):
        part = tuple(x[start : start + batch_size].detach().clone().float().requires_grad_(True) for x in inputs)
        attr = sal.attribute(part, abs=False)
        a = attr[index] if isinstance(attr, tuple) else attr
        out.append(a.detach().cpu().numpy().astype(np.float32))
    arr = np.concatenate(out)
    return arr[:, 0] if arr.ndim == 5 else arr


def normalised_magnitude(saliency: np.ndarray) -> np.ndarray:
    """``|g| / max |g|`` per patient: magnitudes in [0, 1] (paper Fig. 8 works on this scale)."""
    mag = np.abs(saliency).astype(np.float32)
    peak = mag.reshape(len(mag), -1).max(axis=1).reshape(-1, *([1] * (mag.ndim - 1)))
    return np.divide(mag, peak, out=np.zeros_like(mag), where=peak > 0)


PAPER_GRADIENT_DISTANCES: dict[str, tuple[float, str]] = {
    "Wasserstein distance": (0.090, "9% of range"),
    "Kolmogorov-Smirnov statistic": (0.241, "moderate, p < 0.001"),
    "Jensen-Shannon distance": (0.418, "moderate (a distance: as a divergence it exceeds the 0.27 its Bhattacharyya allows)"),
    "Energy distance": (0.183, "18% of range"),
    "Bhattacharyya distance": (0.207, "moderate"),
    "Histogram overlap": (0.518, "52% overlap"),
}
"""Paper Figure 8(b): PET only vs PET fusion on the real cohort (value, the paper's reading)."""


def distance_table(comparison: Any) -> pd.DataFrame:
    """:meth:`prrt_utils.analysis.stats.DistributionComparison.to_frame` with the paper's Figure 8(b) values beside.

    Returns
    -------
    DataFrame
        ``metric, value (this cohort), p_value, range, reading, paper (real cohort), paper's reading``.
    """
    out = comparison.to_frame().rename(columns={"value": "value (this cohort)"})
    paper = [next((v for k, v in PAPER_GRADIENT_DISTANCES.items() if m.startswith(k)), (math.nan, "")) for m in out["metric"]]
    out["paper (real cohort)"] = [p[0] for p in paper]
    out["paper's reading"] = [p[1] for p in paper]
    return out


# --------------------------------------------------------------------------- ground-truth labels on the model grid


def region_codes(label_names: Mapping[int, str]) -> dict[str, tuple[int, ...]]:
    """Group the synthetic label codes into the regions the chapter reports.

    ``lesion`` (every code named ``lesion_*`` or ``primary_tumour``), the organs
    of physiological somatostatin-receptor uptake ``kidney``, ``spleen``,
    ``bladder`` and ``liver``, ``other body`` (every other code inside the body)
    and, not listed (the remainder), ``outside body`` (background, table and
    anything outside the PET field of view).
    """
    groups: dict[str, list[int]] = {r: [] for r in REGIONS if r != "outside body"}
    for code, name in sorted(label_names.items()):
        name = str(name).lower()
        if name in ("background", "table"):
            continue
        if name.startswith("lesion") or name == "primary_tumour":
            groups["lesion"].append(int(code))
        elif name in groups:
            groups[name].append(int(code))
        else:
            groups["other body"].append(int(code))
    return {k: tuple(v) for k, v in groups.items()}


def load_label_map(data_dir: str | Path, patient_id: str) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Ground-truth label map of one synthetic patient on its ORIGINAL PET grid.

    Returns
    -------
    labels : ndarray of int, canonical ``(D, H, W)`` (:func:`prrt_utils.io.nifti.load_label_map`)
    affine : ndarray (4, 4)
        Voxel index -> LPS mm.
    names : dict code -> name (``labels.json``)
    """
    from prrt_utils.io.nifti import load_label_map as read_label_map

    gt = Path(data_dir) / "ground_truth"
    path = store.child(gt / "labels", f"{patient_id}.nii.gz")
    if not path.is_file():
        raise ExplainError(f"{path} not found: no ground-truth labels for {patient_id} (only the synthetic cohort has them)")
    names = {int(k): v for k, v in json.loads((gt / "labels.json").read_text()).items()}
    labels, lps = read_label_map(path, patient_id)
    return labels, lps, names


def region_fractions(labels: np.ndarray, affine: np.ndarray, grid_affine: np.ndarray, shape: Sequence[int],
                     regions: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Fraction of every target voxel occupied by each region (fractional-occupancy resampling).

    Each region's indicator is resampled with :func:`prrt_utils.data.grid.resample`
    (exact box average over each target voxel for axis-aligned grids), the
    function and geometry the preprocessing used for the PET; so a region's
    volume is preserved: ``sum(fraction) * target voxel volume`` equals its
    volume on the source grid wherever the target box covers it. Each indicator
    is first cropped to the region's bounding box (the affine shifted
    accordingly), which changes nothing but the cost.

    Parameters
    ----------
    labels : ndarray of int, any axis order described by ``affine``
    affine : ndarray (4, 4)
        Source voxel index -> LPS mm.
    grid_affine : ndarray (4, 4)
        Target voxel index -> LPS mm (the ``affine`` stored in ``WORK/preprocessed/<pid>.npz``).
    shape : (D, H, W)
        Target shape.
    regions : mapping name -> codes

    Returns
    -------
    dict name -> ndarray (D, H, W) float32 in [0, 1]
        One map per region plus ``"outside body"`` = 1 - the sum of the others.
    """
    from prrt_utils.data.grid import TargetGrid, resample

    grid = TargetGrid(affine=np.asarray(grid_affine, dtype=float), shape=tuple(int(s) for s in shape), anchor="stored")
    out: dict[str, np.ndarray] = {}
    total = np.zeros(grid.shape, dtype=np.float64)
    labels = np.asarray(labels)
    lut = np.full(int(labels.max()) + 1 if labels.size else 1, -1, dtype=np.int16)  # code -> region, one pass
    for r, codes in enumerate(regions.values()):
        lut[[c for c in codes if 0 <= c < lut.size]] = r
    region_of = lut[np.clip(labels, 0, lut.size - 1)]
    for r, name in enumerate(regions):
        mask = region_of == r
        along = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != k))) for k in range(3)]
        if along[0].size == 0:
            out[name] = np.zeros(grid.shape, dtype=np.float32)
            continue
        lo = np.array([a[0] for a in along])
        hi = np.array([a[-1] + 1 for a in along])
        crop = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.float32)
        shift = np.eye(4)
        shift[:3, 3] = lo
        frac = np.clip(resample(crop, affine @ shift, grid, fill=0.0, antialias=True), 0.0, 1.0)
        out[name] = frac.astype(np.float32)
        total += frac
    out["outside body"] = np.clip(1.0 - total, 0.0, 1.0).astype(np.float32)
    return out


# --------------------------------------------------------------------------- figures of chapter 06


def umap_figure(frame: pd.DataFrame, names: Mapping[str, str] | None = None, cols: int = 2) -> Any:
    """One UMAP panel per model, points coloured by class, test patients as crosses (plotly).

    Two panels a row, each title on two lines (name, silhouette): on a book page of about
    700 pixels, three long model names a row ran into each other.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    models = list(dict.fromkeys(frame["model"]))
    rows = max(1, math.ceil(len(models) / cols))
    titles = []
    for m in models:
        sub = frame[frame["model"] == m]
        sil = sub["silhouette"].iloc[0] if "silhouette" in sub else math.nan
        titles.append(f"{(names or {}).get(m, m)}<br>silhouette {sil:.2f}")
    fig = make_subplots(rows=rows, cols=min(cols, len(models)), subplot_titles=titles, vertical_spacing=0.3 / rows,
                        horizontal_spacing=0.06)
    fig.update_annotations(font_size=12)
    style = {0: ("#1f77b4", "PFS > 12 months"), 1: ("#d62728", "PFS <= 12 months")}
    for i, m in enumerate(models):
        r, c = i // cols + 1, i % cols + 1
        sub = frame[frame["model"] == m]
        for (y, split), g in sub.groupby(["y_true", "split"]):
            colour, label = style[int(y)]
            fig.add_trace(go.Scatter(x=g["umap_1"], y=g["umap_2"], mode="markers", text=g["patient_id"],
                                     marker={"color": colour, "symbol": "x" if split == "test" else "circle",
                                             "size": 7 if split == "test" else 6, "opacity": 0.8},
                                     name=f"{label}, {split}", legendgroup=f"{y}{split}", showlegend=i == 0,
                                     hovertemplate="%{text}<extra></extra>"), row=r, col=c)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_layout(height=340 * rows, legend={"orientation": "h", "y": -0.08}, margin={"t": 60})
    return fig


def gradient_histogram_figure(hist: pd.DataFrame, names: Mapping[str, str] | None = None) -> Any:
    """Density of normalised gradient magnitudes per model (paper Fig. 8a), log-scaled y (plotly)."""
    import plotly.graph_objects as go

    from prrt_utils.analysis.metrics import PALETTE

    fig = go.Figure()
    for i, (model, g) in enumerate(hist.groupby("model", sort=False)):
        centre = (g["bin_left"] + g["bin_right"]) / 2
        fig.add_trace(go.Scatter(x=centre, y=g["density"], mode="lines", line={"shape": "hvh", "color": PALETTE[i % 9]},
                                 name=(names or {}).get(model, model)))
    fig.update_layout(xaxis_title="Normalised gradient magnitude |g| / max|g| (per patient)",
                      yaxis_title="Density", yaxis_type="log", height=400, legend={"orientation": "h", "y": -0.2},
                      margin={"t": 30})
    return fig


def _slices(vol: np.ndarray, at: Sequence[int]) -> list[np.ndarray]:
    d, h, w = at
    # axial (rows anterior->posterior, columns patient right->left: radiological view), coronal, sagittal
    return [vol[d], vol[:, h, :], vol[:, :, w]]


def saliency_figure(pet: np.ndarray, maps: Mapping[str, np.ndarray], at: Sequence[int] | None = None,
                    vmin: float = 0.3, lesions: np.ndarray | None = None, title: str = "") -> Any:
    """PET and saliency overlays in axial, coronal and sagittal planes (paper Fig. 9), matplotlib.

    Parameters
    ----------
    pet : ndarray (D, H, W)
        SUVbw on the model grid (``D`` head -> feet, ``H`` anterior -> posterior,
        ``W`` patient right -> left; 10 mm voxels).
    maps : mapping label -> ndarray (D, H, W)
        Normalised gradient magnitudes in [0, 1], one per model.
    at : (d, h, w), optional
        Slice positions; default the voxel with the largest summed saliency.
    vmin : float
        Saliency below this is transparent (the paper filters at 0.3).
    lesions : ndarray (D, H, W) of bool, optional
        Ground-truth lesion mask, drawn as a cyan outline.

    Returns
    -------
    matplotlib.figure.Figure
        Rows: PET, then one overlay per model; columns: axial, coronal, sagittal.
    """

    import matplotlib.pyplot as plt

    if at is None:
        at = np.unravel_index(int(np.argmax(sum(np.asarray(m) for m in maps.values()))), pet.shape)
    hi = float(np.percentile(pet[pet > 0], 99.5)) if (pet > 0).any() else 1.0
    rows = 1 + len(maps)
    fig, axes = plt.subplots(rows, 3, figsize=(9.5, 3.1 * rows), squeeze=False,
                             gridspec_kw={"width_ratios": [pet.shape[2], pet.shape[2], pet.shape[1]]})
    planes = [f"axial (slice {at[0]})", f"coronal (row {at[1]})", f"sagittal (column {at[2]})"]
    pet_sl = _slices(pet, at)
    les_sl = _slices(lesions.astype(float), at) if lesions is not None else [None] * 3
    for j in range(3):
        axes[0, j].imshow(pet_sl[j], cmap="gray_r", vmin=0, vmax=hi, interpolation="nearest")
        axes[0, j].set_title(f"PET SUVbw, {planes[j]}", fontsize=9)
    for i, (label, m) in enumerate(maps.items(), start=1):
        for j, sl in enumerate(_slices(np.asarray(m), at)):
            ax = axes[i, j]
            # PET dimmed (its maximum shows mid-grey) so that the red-to-yellow saliency stands out
            ax.imshow(pet_sl[j], cmap="gray", vmin=0, vmax=2.0 * hi, interpolation="nearest")
            shown = np.ma.masked_less(sl, vmin)
            im = ax.imshow(shown, cmap="autumn", vmin=vmin, vmax=1.0, alpha=0.85, interpolation="nearest")
            if les_sl[j] is not None and les_sl[j].max() > 0:
                ax.contour(les_sl[j], levels=[0.5], colors="cyan", linewidths=0.8)
            ax.set_title(f"{label}, {planes[j].split(' ')[0]}", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[1:, :].ravel().tolist(), shrink=0.6, label="|gradient| / max (>= vmin)")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


#: PET window of the kernel-free saliency viewer: SUVbw 0-10, dark uptake on white, as a
#: nuclear-medicine reader sets it (the static figure above uses each patient's 99.5th percentile).
VIEWER_PET_WINDOW = (0.0, 10.0)


def saliency_viewer(pet: np.ndarray, maps: Mapping[str, np.ndarray], vmin: float = 0.3,
                    lesions: np.ndarray | None = None, title: str = "") -> Any:
    """PET with each model's saliency, to scroll through in the static book (paper Fig. 9, interactive).

    A plotly figure (:func:`prrt_utils.io.viewer.slice_viewer`) that needs no kernel: a slice slider,
    axial / coronal / sagittal buttons and a menu that lays the saliency of one model (or none)
    over the PET, with the true lesions outlined in cyan when ``lesions`` is given.

    Parameters
    ----------
    pet : ndarray (D, H, W)
        SUVbw on the model grid; shown in :data:`VIEWER_PET_WINDOW`.
    maps : mapping label -> ndarray (D, H, W)
        Normalised gradient magnitudes in [0, 1] (:func:`normalised_magnitude`), one per model.
    vmin : float
        Saliency below it is not drawn (0.3 as in the paper).
    lesions : ndarray (D, H, W) of bool, optional
        Ground-truth lesion mask (synthetic cohort only).
    """
    from prrt_utils.io.viewer import slice_viewer

    lo, hi = VIEWER_PET_WINDOW
    note = (f"PET SUVbw {lo:g}-{hi:g} (dark = high uptake); colour: saliency >= {vmin:g} of the patient's maximum"
            + ("; cyan: true lesions" if lesions is not None else ""))
    text = f"{title}<br><sup>{note}</sup>" if title else note
    return slice_viewer(pet, maps, window=VIEWER_PET_WINDOW, invert=True, vmin=vmin, outlines=lesions,
                        volume_label="PET (SUVbw)", overlay_label="saliency", title=text)


def slice_viewer(pet: np.ndarray, maps: Mapping[str, np.ndarray], vmin: float = 0.3) -> Any:
    """Interactive slice viewer (ipywidgets): one slider per axis over :func:`saliency_figure`.

    Needs a live kernel; the book shows :func:`saliency_viewer`, which does not.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    d, h, w = pet.shape

    def draw(axial: int, coronal: int, sagittal: int, threshold: float) -> None:
        fig = saliency_figure(pet, maps, (axial, coronal, sagittal), threshold)
        plt.show()
        plt.close(fig)

    peak = np.unravel_index(int(np.argmax(sum(np.asarray(m) for m in maps.values()))), pet.shape)
    return widgets.interactive(
        draw,
        axial=widgets.IntSlider(int(peak[0]), 0, d - 1, description="axial"),
        coronal=widgets.IntSlider(int(peak[1]), 0, h - 1, description="coronal"),
        sagittal=widgets.IntSlider(int(peak[2]), 0, w - 1, description="sagittal"),
        threshold=widgets.FloatSlider(vmin, min=0.0, max=0.95, step=0.05, description="vmin"),
    )


# --------------------------------------------------------------------------- the chapter's computations


class Explainer:
    """Explanations of the stored models of one work directory (paper 3.4); reads, never trains.

    Parameters
    ----------
    work_dir : path
        ``WORK`` with ``folds.csv``, ``cohort/cohort.csv`` and ``results/``.
    data_dir : path, optional
        ``DATA``; its ``ground_truth/`` (synthetic cohort only) gives the label maps.
    config : ExplainConfig, optional
    cache_dir : path, optional
        Where cached products go; default ``WORK/explain``. ``False`` disables caching.
    data : CohortData, optional
        Model inputs; by default read lazily with :func:`cohort_data` when a
        computation needs images.
    """

    def __init__(self, work_dir: str | Path, data_dir: str | Path | None = None, config: ExplainConfig | None = None,
                 cache_dir: str | Path | bool | None = None, data: Any = None) -> None:
        self.work_dir = Path(work_dir)
        self.data_dir = Path(data_dir) if data_dir else None
        self.config = config or ExplainConfig()
        if cache_dir is False:
            root = None
        else:
            root = Path(cache_dir) if cache_dir else self.work_dir / "explain"
        self.cache = _Cache(root)
        self._data = data
        self._memo: dict[tuple[Any, ...], np.ndarray] = {}
        self.folds = pd.read_csv(self.work_dir / "folds.csv", dtype={"patient_id": str})
        self.pairs = sorted(set(zip(self.folds["repeat"].astype(int), self.folds["fold"].astype(int), strict=True)))

    # ---------------------------------------------------------------- helpers

    @property
    def data(self) -> Any:
        if self._data is None:
            self._data = cohort_data(self.work_dir)
        return self._data

    def _key(self, product: str, models: Sequence[str], pairs: Sequence[tuple[int, int]], images: bool = False,
             **extra: Any) -> str:
        """SHA-256 of the product, config, arguments and the ``done.json`` of every fold used.

        ``images``: the product also reads the preprocessed volumes, so the
        preprocessing index (one SHA-256 per volume file) enters the key too.
        """
        h = hashlib.sha256()
        h.update(json.dumps({"product": product, "version": EXPLAIN_VERSION, "config": self.config.to_dict(),
                             "models": list(models), "extra": extra}, sort_keys=True, default=str).encode())
        for m in models:
            for r, f in pairs:
                h.update(_done_text(self.work_dir, m, r, f).encode())
        index = self.work_dir / "preprocessed" / "index.csv"
        if images and index.is_file():
            h.update(index.read_bytes())
        return h.hexdigest()

    def test_fold_of(self, patient_id: str, repeat: int | None = None) -> int:
        """The fold of ``repeat`` in which ``patient_id`` is a test patient."""
        repeat = self.config.repeat if repeat is None else repeat
        f = self.folds
        hit = f[(f["repeat"] == repeat) & (f["patient_id"] == patient_id) & (f["split"] == "test")]
        if hit.empty:
            raise ExplainError(f"patient {patient_id} is not a test patient of repeat {repeat} in folds.csv")
        return int(hit["fold"].iloc[0])

    def _img_size(self) -> tuple[int, ...]:
        if self._data is not None and self._data.volumes:
            return tuple(next(iter(self._data.volumes.values())).shape[2:])
        return IMG_SIZE

    def _load(self, model: str, repeat: int, fold: int) -> Any:
        from prrt_utils.models.stored import load_fold

        return load_fold(self.work_dir, get_spec(model), repeat, fold, img_size=self._img_size())

    def _embeddings(self, model: str, repeat: int, fold: int) -> tuple[pd.DataFrame, np.ndarray]:
        from prrt_utils.models.stored import load_embeddings

        frame = load_embeddings(self.work_dir, model, repeat, fold)
        cols = [c for c in frame.columns if c.startswith("e") and c[1:].isdigit()]
        return frame[["patient_id", "split"]], frame[cols].to_numpy(dtype=np.float32)

    def _labels_of(self, ids: Sequence[str]) -> np.ndarray:
        data = self._data
        if data is not None:
            return data.y[data.rows(ids)]
        y = pd.read_csv(self.work_dir / "cohort" / "cohort.csv", dtype={"patient_id": str}).set_index("patient_id")
        return y.loc[list(ids), "pfs_short"].to_numpy(dtype=int)

    # ---------------------------------------------------------------- UMAP (Figure 6)

    def umap(self, models: Sequence[str]) -> pd.DataFrame:
        """2-D UMAP of the embeddings of one fold per model (training and test patients of one network).

        The embeddings are the fusion layer's input (image features, then the
        standardised labs for fusion models), stored by the grid. All patients of
        ONE fold are projected together because they share one network; test
        sets of different folds come from three networks whose feature axes do
        not correspond, so they cannot share a map.

        Returns
        -------
        DataFrame
            ``model, patient_id, split, y_true, umap_1, umap_2, silhouette``;
            ``silhouette`` (scikit-learn, on the standardised embedding, by
            class; -1 to 1, 0 = classes not separated) is one number per model.
        """
        cfg = self.config
        pair = [(cfg.umap_repeat, cfg.umap_fold)]

        def compute() -> pd.DataFrame:
            import umap as umap_
            from sklearn.metrics import silhouette_score
            from sklearn.preprocessing import StandardScaler

            parts = []
            for m in models:
                meta, emb = self._embeddings(m, cfg.umap_repeat, cfg.umap_fold)
                z = StandardScaler().fit_transform(emb)
                n = len(z)
                reducer = umap_.UMAP(n_neighbors=max(2, min(cfg.umap_neighbors, n - 1)), min_dist=cfg.umap_min_dist,
                                     random_state=cfg.seed, n_jobs=1, init="spectral" if n > 10 else "random")
                with warnings.catch_warnings():  # a seed makes UMAP single-threaded; it says so on every call
                    warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
                    xy = reducer.fit_transform(z)
                y = self._labels_of(meta["patient_id"].tolist())
                sil = float(silhouette_score(z, y)) if len(np.unique(y)) == 2 else math.nan
                parts.append(meta.assign(model=m, y_true=y, umap_1=xy[:, 0], umap_2=xy[:, 1], silhouette=sil))
            out = pd.concat(parts, ignore_index=True)
            return out[["model", "patient_id", "split", "y_true", "umap_1", "umap_2", "silhouette"]]

        return self.cache.frame("umap", self._key("umap", models, pair), compute)

    # ---------------------------------------------------------------- permutation importance (Figure 7)

    def _held_out(self, model: str, repeat: int, fold: int) -> dict[str, Any]:
        """A fold's test patients as the fusion layer sees them, and a predictor from that layer on.

        Returns ``ids``, ``x`` (stored embeddings ``(n, E)``), ``y``, ``predict``
        (``(n, E) -> (n,)`` probability of short PFS: the forest, or the CNN's
        head), ``head`` (CNN only), ``labs`` (lab column names) and ``offset``
        (index of the first lab column in ``x``: image features come first).
        """
        from prrt_utils.models.stored import fold_dir

        spec = get_spec(model)
        meta, emb = self._embeddings(model, repeat, fold)
        test = (meta["split"] == "test").to_numpy()
        ids = meta.loc[test, "patient_id"].tolist()
        x = emb[test]
        loaded = self._load(model, repeat, fold)
        labs = list(loaded.lab_scaler.columns) if spec.uses_labs else []
        head = None
        if spec.kind != "cnn":  # forest or logistic: the embedding is its input (radiomics first, labs last)
            forest, offset = loaded.model, emb.shape[1] - len(labs)

            def predict(v: np.ndarray) -> np.ndarray:
                return forest.predict_proba(v)[:, 1]
        else:
            head, offset = loaded.model.head.eval(), loaded.model.embedding_dim - len(labs)

            def predict(v: np.ndarray) -> np.ndarray:
                with torch.no_grad():
                    t = torch.from_numpy(np.asarray(v, dtype=np.float32))
                    return torch.sigmoid(head(t).squeeze(1)).double().numpy()
        stored = pd.read_parquet(fold_dir(self.work_dir, model, repeat, fold) / "predictions.parquet")
        stored = stored.set_index("patient_id").loc[ids]
        gap = float(np.max(np.abs(predict(x) - stored["prob"].to_numpy()))) if len(ids) else 0.0
        if gap > 1e-4:
            raise ExplainError(
                f"{model} r{repeat} f{fold}: the stored embeddings do not reproduce the stored predictions "
                f"(largest difference {gap:.2g}); the fold's files are inconsistent, retrain it"
            )
        return {"ids": ids, "x": x, "y": stored["y_true"].to_numpy(dtype=int), "predict": predict, "head": head,
                "labs": labs, "offset": offset}

    def permutation_importance(self, models: Sequence[str], groups: Mapping[str, Sequence[str]] = DEFAULT_GROUPS,
                               pairs: Sequence[tuple[int, int]] | None = None) -> pd.DataFrame:
        """Drop in AUROC when each laboratory value (or group) is permuted among held-out patients.

        For every fold, the test patients' stored fusion-layer inputs (image
        features and standardised labs, ``embeddings.npz``) go through the
        fold's head (CNN) or forest (Random Forest); a lab column is permuted
        across patients while each patient's image features stay in place, which
        is exactly permuting that lab value at the model's input, without
        recomputing the CNN. For fusion models the whole image-feature block is
        also permuted as one group (:data:`IMAGE_FEATURE`): how much the model
        relies on the image at all. Before use, the head must reproduce the
        stored predictions (else :class:`ExplainError`).

        Parameters
        ----------
        models : sequence of str
            The Random Forest and/or fusion models (models without labs are skipped).
        groups : mapping name -> lab columns
            Permuted together with one row permutation (default AST with ALT).
        pairs : sequence of (repeat, fold), optional
            Default: every fold of ``folds.csv``.

        Returns
        -------
        DataFrame
            ``model, repeat, fold, feature, kind (single|group), permutation,
            baseline_auroc, drop`` (tidy; :func:`importance_summary` aggregates).
        """
        pairs = list(pairs) if pairs is not None else self.pairs
        models = [m for m in models if get_spec(m).uses_labs]
        cfg = self.config

        def compute() -> pd.DataFrame:
            rows = []
            for m in models:
                for r, f in pairs:
                    h = self._held_out(m, r, f)
                    labs, offset = h["labs"], h["offset"]
                    features: dict[str, list[int]] = {LAB_NAMES.get(c, c): [offset + i] for i, c in enumerate(labs)}
                    kinds = dict.fromkeys(features, "single")
                    for g, members in groups.items():
                        if all(c in labs for c in members):
                            features[g] = [offset + labs.index(c) for c in members]
                            kinds[g] = "group"
                    if offset > 0:
                        features[IMAGE_FEATURE] = list(range(offset))
                        kinds[IMAGE_FEATURE] = "group"
                    base, drops = permutation_drops(h["predict"], h["x"], h["y"], features, cfg.n_permutations, cfg.seed)
                    for name, d in drops.items():
                        for k, v in enumerate(d):
                            rows.append({"model": m, "repeat": r, "fold": f, "feature": name, "kind": kinds[name],
                                         "permutation": k, "baseline_auroc": base, "drop": float(v)})
            return pd.DataFrame(rows)

        key = self._key("permutation", models, pairs, groups={k: list(v) for k, v in groups.items()})
        return self.cache.frame("permutation", key, compute)

    def lab_gradients(self, models: Sequence[str], pairs: Sequence[tuple[int, int]] | None = None) -> pd.DataFrame:
        """Gradient of the output logit with respect to each lab input of the fusion layer (paper 2.7).

        captum ``Saliency`` on the fusion head, the patient's image features
        held fixed; one value per held-out patient, fold, model and lab.

        Returns
        -------
        DataFrame
            ``model, repeat, fold, patient_id, feature, gradient`` (logit per SD
            of the log-lab; :func:`lab_gradient_summary` aggregates).
        """
        from captum.attr import Saliency

        pairs = list(pairs) if pairs is not None else self.pairs
        models = fusion_models(models)

        def compute() -> pd.DataFrame:
            rows = []
            for m in models:
                for r, f in pairs:
                    h = self._held_out(m, r, f)
                    ids, x, labs, offset, head = h["ids"], h["x"], h["labs"], h["offset"], h["head"]
                    image = torch.from_numpy(x[:, :offset])

                    def forward(lab: torch.Tensor, img: torch.Tensor, head: torch.nn.Module = head) -> torch.Tensor:
                        return head(torch.cat([img, lab], dim=1)).squeeze(1)

                    lab = torch.from_numpy(np.ascontiguousarray(x[:, offset:])).requires_grad_(True)
                    grad = Saliency(forward).attribute(lab, additional_forward_args=(image,), abs=False)
                    g = grad.detach().numpy()
                    for j, c in enumerate(labs):
                        rows.extend({"model": m, "repeat": r, "fold": f, "patient_id": pid,
                                     "feature": LAB_NAMES.get(c, c), "gradient": float(g[i, j])}
                                    for i, pid in enumerate(ids))
            return pd.DataFrame(rows)

        return self.cache.frame("lab_gradients", self._key("lab_gradients", models, pairs), compute)

    # ---------------------------------------------------------------- PET saliency (Figures 8-9)

    def saliency(self, model: str, patient_ids: Sequence[str], repeat: int | None = None) -> np.ndarray:
        """PET saliency of ``patient_ids``, each from the fold of ``repeat`` where the patient was held out.

        Returns
        -------
        ndarray, shape (N, D, H, W), float32
            Signed gradients ``d logit / d PET`` (PET as the network sees it: log1p
            SUV, standardised), see :func:`pet_saliency`.
        """
        repeat = self.config.repeat if repeat is None else repeat
        spec = get_spec(model)
        if "pet" not in spec.image_inputs:
            raise ExplainError(f"model {model!r} has no PET input")
        memo_key = (model, repeat, tuple(patient_ids))
        if memo_key in self._memo:  # whole-repeat maps are used twice (distributions, saliency mass)
            return self._memo[memo_key]
        data = self.data
        out: dict[str, np.ndarray] = {}
        by_fold: dict[int, list[str]] = {}
        for pid in patient_ids:
            by_fold.setdefault(self.test_fold_of(pid, repeat), []).append(pid)
        for fold, ids in sorted(by_fold.items()):
            loaded = self._load(model, repeat, fold)
            sal = pet_saliency(loaded.model, loaded.inputs(data, ids), index=spec.ordered_inputs.index("pet"))
            out.update(zip(ids, sal, strict=True))
        result = np.stack([out[p] for p in patient_ids])
        if len(patient_ids) > 8:
            self._memo = {memo_key: result, **{k: v for k, v in self._memo.items() if k[0] != model}}
        return result

    def gradient_distributions(self, models: Sequence[str], repeat: int | None = None) -> dict[str, Any]:
        """Normalised PET gradient magnitudes of every test patient of one repeat, per model (paper Fig. 8).

        Each patient's ``|g|`` is divided by its maximum (values in [0, 1]);
        the histogram (``config.bins`` bins on [0, 1]) uses every voxel of every
        patient; the sample for the distances is a seeded uniform random draw
        (with replacement) of ``config.max_values`` voxels per model.

        Returns
        -------
        dict
            ``hist``: DataFrame ``model, bin_left, bin_right, count, density``;
            ``samples``: dict model -> ndarray of magnitudes; ``n_patients``: int.
        """
        repeat = self.config.repeat if repeat is None else repeat
        cfg = self.config
        pairs = [(repeat, f) for r, f in self.pairs if r == repeat]
        ids = sorted(self.folds.loc[self.folds["repeat"] == repeat, "patient_id"].unique())

        def compute() -> dict[str, np.ndarray]:
            edges = np.linspace(0.0, 1.0, cfg.bins + 1)
            out: dict[str, np.ndarray] = {"edges": edges}
            rng = np.random.default_rng(cfg.seed)
            for m in models:
                mag = normalised_magnitude(self.saliency(m, ids, repeat)).ravel()
                out[f"count::{m}"] = np.histogram(mag, bins=edges)[0]
                # uniform draw WITH replacement: as good for the distances and O(max_values), not O(all voxels)
                take = rng.integers(0, mag.size, cfg.max_values) if mag.size > cfg.max_values else slice(None)
                out[f"sample::{m}"] = mag[take].astype(np.float32)
            return out

        arr = self.cache.arrays("gradients", self._key("gradients", models, pairs, images=True), compute)
        edges = arr["edges"]
        rows = []
        for m in models:
            count = arr[f"count::{m}"]
            density = count / count.sum() / np.diff(edges)
            rows.append(pd.DataFrame({"model": m, "bin_left": edges[:-1], "bin_right": edges[1:], "count": count,
                                      "density": density}))
        return {"hist": pd.concat(rows, ignore_index=True), "samples": {m: arr[f"sample::{m}"] for m in models},
                "n_patients": len(ids)}

    def _labels_key(self, ids: Sequence[str]) -> str:
        """SHA-256 of the patients' label files and preprocessed volumes (what the label maps on the grid depend on)."""
        index = pd.read_csv(self.work_dir / "preprocessed" / "index.csv", dtype={"patient_id": str},
                            keep_default_na=False).set_index("patient_id")
        h = hashlib.sha256(json.dumps({"ids": list(ids), "v": EXPLAIN_VERSION}).encode())
        for pid in ids:
            h.update(str(index.loc[pid, "sha256"]).encode())
            h.update(store.sha256_file(store.child(self.data_dir / "ground_truth" / "labels", f"{pid}.nii.gz")).encode())
        return h.hexdigest()

    def labels_on_grid(self, patient_ids: Sequence[str]) -> dict[str, Any]:
        """Ground-truth regions of ``patient_ids`` on each patient's model grid (synthetic cohort only).

        The label map (original PET grid) is resampled onto the grid stored with
        the patient's preprocessed volumes (``affine`` in ``WORK/preprocessed/<pid>.npz``)
        by fractional occupancy (:func:`region_fractions`); every voxel is then
        given the region occupying most of it (majority).

        Returns
        -------
        dict
            ``labels``: int8 ndarray ``(N, D, H, W)`` of region codes (index into
            :data:`REGIONS`); ``names``: dict code -> region; ``volumes``: DataFrame
            ``patient_id, region, volume_ml_fractional, volume_ml_majority``: each
            region's volume from the occupancy fractions (exact) and from the
            majority labels (what the saliency statistics use), so the cost of
            majority labelling for small lesions can be read off.
        """
        if self.data_dir is None:
            raise ExplainError("no data_dir: the ground-truth label maps are unknown")
        ids = list(patient_ids)
        index = pd.read_csv(self.work_dir / "preprocessed" / "index.csv", dtype={"patient_id": str},
                            keep_default_na=False).set_index("patient_id")

        def compute() -> dict[str, np.ndarray]:
            out, frac_vox, major_vox, voxel_ml = [], [], [], []
            for pid in ids:
                labels, affine, names = load_label_map(self.data_dir, pid)
                with np.load(self.work_dir / "preprocessed" / index.loc[pid, "file"]) as z:
                    grid_affine, shape = z["affine"], z["pet"].shape
                fr = region_fractions(labels, affine, grid_affine, shape, region_codes(names))
                stack = np.stack([fr[n] for n in REGIONS])  # (R, D, H, W), only for this patient
                major = np.argmax(stack, axis=0).astype(np.int8)
                out.append(major)
                frac_vox.append(stack.reshape(len(REGIONS), -1).sum(axis=1))
                major_vox.append(np.bincount(major.ravel(), minlength=len(REGIONS)))
                voxel_ml.append(abs(np.linalg.det(np.asarray(grid_affine, dtype=float)[:3, :3])) / 1000.0)
            return {"labels": np.stack(out), "fractional_voxels": np.array(frac_vox),
                    "majority_voxels": np.array(major_vox), "voxel_ml": np.array(voxel_ml)}

        arr = self.cache.arrays("labels", self._labels_key(ids), compute)
        ml = arr["voxel_ml"][:, None]
        volumes = pd.DataFrame({
            "patient_id": np.repeat(ids, len(REGIONS)),
            "region": np.tile(REGIONS, len(ids)),
            "volume_ml_fractional": (arr["fractional_voxels"] * ml).ravel(),
            "volume_ml_majority": (arr["majority_voxels"] * ml).ravel(),
        })
        return {"labels": arr["labels"], "names": dict(enumerate(REGIONS)), "volumes": volumes}

    def saliency_mass(self, models: Sequence[str], repeat: int | None = None) -> pd.DataFrame:
        """Share of PET saliency on lesions, kidneys, spleen, bladder, liver, other body, outside (paper 3.4, 4).

        Every test patient of ``repeat``; each patient's ``|g|`` is scaled to
        sum 1 first so that every patient weighs the same, then
        :func:`prrt_utils.analysis.stats.saliency_mass_fraction` pools them.

        Returns
        -------
        DataFrame
            ``model, region, n_voxels, voxel_fraction, saliency_mass, mass_fraction, enrichment``.
        """
        from prrt_utils.analysis.stats import saliency_mass_fraction

        repeat = self.config.repeat if repeat is None else repeat
        ids = sorted(self.folds.loc[self.folds["repeat"] == repeat, "patient_id"].unique())
        pairs = [(repeat, f) for r, f in self.pairs if r == repeat]

        def compute() -> pd.DataFrame:
            lab = self.labels_on_grid(ids)
            parts = []
            for m in models:
                mag = np.abs(self.saliency(m, ids, repeat))
                total = mag.reshape(len(mag), -1).sum(axis=1)
                # a network whose output does not depend on the PET of a patient (dead units, a constant
                # output) has no saliency to distribute: such patients are counted, not divided by zero
                keep = total > 0
                if not keep.any():
                    continue
                mag = mag[keep] / total[keep].reshape(-1, 1, 1, 1)
                parts.append(saliency_mass_fraction(mag, np.asarray(lab["labels"])[keep], lab["names"])
                             .assign(model=m, n_patients=int(keep.sum()), n_without_saliency=int((~keep).sum())))
            if not parts:
                raise ExplainError(f"no model of {list(models)} has any PET saliency in repeat {repeat}")
            out = pd.concat(parts, ignore_index=True)
            out = out[out["region"].isin(REGIONS)]  # stats adds "other" for unlisted codes: there are none
            return out[["model", *[c for c in out.columns if c != "model"]]].reset_index(drop=True)

        frame = self.cache.frame("saliency_mass", self._key("saliency_mass", models, pairs, images=True,
                                                                  labels=self._labels_key(ids)), compute)
        return frame.assign(region=pd.Categorical(frame["region"], categories=list(REGIONS), ordered=True))

    def pick_patients(self, predictions: pd.DataFrame, model: str, repeat: int | None = None) -> list[str]:
        """Two typical test patients of ``repeat``: the short-PFS and the long-PFS patient whose
        predicted probability (by ``model``) is the median of their class (typical, not best-case)."""
        repeat = self.config.repeat if repeat is None else repeat
        p = predictions[(predictions["model"] == model) & (predictions["repeat"] == repeat)].sort_values("patient_id")
        out = []
        for y in (1, 0):
            g = p[p["y_true"] == y]
            if g.empty:
                continue
            out.append(str(g.iloc[int(np.argmin((g["prob"] - g["prob"].median()).abs().to_numpy()))]["patient_id"]))
        return out

    def alignment_check(self, patient_id: str) -> float:
        """Pearson r between the preprocessed PET and the ground-truth SUV resampled like the labels.

        Close to 1 means the label maps land where the preprocessing put the
        PET (same geometry); a shift or flip would drop it sharply.
        """
        import nibabel as nib

        from prrt_utils.data.grid import TargetGrid, resample

        if self.data_dir is None:
            raise ExplainError("no data_dir: no ground truth to check against")
        index = pd.read_csv(self.work_dir / "preprocessed" / "index.csv", dtype={"patient_id": str},
                            keep_default_na=False).set_index("patient_id")
        with np.load(self.work_dir / "preprocessed" / index.loc[patient_id, "file"]) as z:
            pet, grid_affine = z["pet"], z["affine"]
        img = nib.load(str(store.child(self.data_dir / "ground_truth" / "suv", f"{patient_id}.nii.gz")))
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(img.affine, dtype=float)
        suv = resample(np.asarray(img.get_fdata(dtype=np.float32)), lps, TargetGrid(grid_affine, pet.shape, "stored"))
        inside = pet > 0
        return float(np.corrcoef(pet[inside], suv[inside])[0, 1])


# --------------------------------------------------------------------------- chapter 05: what its cells show


@dataclasses.dataclass(frozen=True)
class FamilyComparisons:
    """Chapter 05's model families and their comparisons, per fold and per repeat.

    Attributes
    ----------
    families : dict
        Model key -> family (:func:`families`).
    order : tuple of str
        The families that have results, from fewest to most modalities.
    comparisons : dict
        ``{"fold": FamilyComparison, "repeat": FamilyComparison}`` of
        :func:`prrt_utils.analysis.stats.compare_families`; empty with fewer than two families.
    """

    families: dict[str, str]
    order: tuple[str, ...]
    comparisons: dict[str, Any]

    def members(self, names: Mapping[str, str] | None = None) -> dict[str, list[str]]:
        """Family -> its models' display names, families in :attr:`order`."""
        names = names or {}
        return {f: [names.get(m, m) for m, fam in self.families.items() if fam == f] for f in self.order}

    def table(self) -> pd.DataFrame | str:
        """:func:`family_table` of both sample units, or the sentence saying there is nothing to compare."""
        if not self.comparisons:
            return "Fewer than two model families have results: nothing to compare."
        return family_table(*self.comparisons.values())

    def disagreements(self, alpha: float = 0.05) -> tuple[Any, ...]:
        """Per sample unit, the sentence whether Mann-Whitney and the corrected t-test agree and, if not, where.

        Returns
        -------
        tuple
            Strings and DataFrames (:func:`prrt_utils.analysis.stats.disagreements`) in display order.
        """
        from prrt_utils.analysis import stats

        out: list[Any] = []
        for unit, comparison in self.comparisons.items():
            dis = stats.disagreements(comparison, alpha=alpha)
            if dis.empty:
                out.append(f"Mann-Whitney on per-{unit} AUROCs and the corrected t-test agree for every comparison "
                           f"at alpha = {alpha}.")
            else:
                out += [f"Mann-Whitney on per-{unit} AUROCs and the corrected t-test disagree:", dis]
        return tuple(out)


def compare_model_families(fold_metrics: pd.DataFrame, models: Sequence[str]) -> FamilyComparisons:
    """Each model family against the next lower one, per fold and per repeat (paper 2.6; chapter 05).

    Parameters
    ----------
    fold_metrics : DataFrame
        ``model, repeat, fold, auroc`` (:func:`prrt_utils.analysis.metrics.fold_metrics`).
    models : sequence of str
        The models with results.

    Returns
    -------
    FamilyComparisons
        ``comparisons`` is empty when fewer than two families have a model.
    """
    from prrt_utils.analysis import stats

    fam = families(models)
    order = tuple(f for f in family_order() if f in fam.values())
    comparisons = ({unit: stats.compare_families(fold_metrics, fam, list(order), unit=unit) for unit in ("fold", "repeat")}
                   if len(order) >= 2 else {})
    return FamilyComparisons(families=dict(fam), order=order, comparisons=comparisons)


def km_note(km: Any) -> str | None:
    """Why a Kaplan-Meier split by prediction has nothing to compare (one group empty), else ``None``."""
    if min(km.n_long, km.n_short) > 0:
        return None
    return (f"Every patient falls in one group at threshold {km.threshold}: the model's probabilities do not cross "
            "it, so there is nothing to compare (log-rank undefined).")


# --------------------------------------------------------------------------- chapter 06: what its cells show


def lab_gradient_table(explainer: Any, fusion: Sequence[str]) -> pd.DataFrame | None:
    """Mean absolute and mean signed fusion-layer gradient per laboratory value (rows) and model (columns).

    Parameters
    ----------
    explainer : Explainer
        Anything with :meth:`Explainer.lab_gradients`.
    fusion : sequence of str
        The fusion models; none gives ``None`` (nothing to show).

    Returns
    -------
    DataFrame or None
        :func:`lab_gradient_summary` pivoted to ``feature`` x (``mean_abs_gradient`` / ``mean_gradient``, model).
    """
    if not fusion:
        return None
    gradients = lab_gradient_summary(explainer.lab_gradients(list(fusion)))
    return gradients.pivot(index="feature", columns="model", values=["mean_abs_gradient", "mean_gradient"]).round(3)


@dataclasses.dataclass(frozen=True)
class SaliencyPanel:
    """One patient's PET and each compared model's normalised saliency, ready to draw (chapter 06).

    Attributes
    ----------
    patient_id : str
    pet : ndarray
        ``(D, H, W)`` PET as the networks see it.
    maps : dict
        Display name -> :func:`normalised_magnitude` of that model's saliency, ``(D, H, W)``.
    lesions : ndarray or None
        Boolean lesion mask on the same grid (synthetic cohort), else ``None``.
    title : str
        Patient, true class and each model's predicted probability of short PFS.
    vmin : float
        Saliency below this is not drawn.
    """

    patient_id: str
    pet: np.ndarray
    maps: dict[str, np.ndarray]
    lesions: np.ndarray | None
    title: str
    vmin: float = 0.3

    def show(self) -> None:
        """The static three-plane figure (matplotlib) and, below it, the page's slice-by-slice viewer."""
        import matplotlib.pyplot as plt

        fig = saliency_figure(self.pet, self.maps, vmin=self.vmin, lesions=self.lesions, title=self.title)
        plt.show()
        plt.close(fig)
        saliency_viewer(self.pet, self.maps, vmin=self.vmin, lesions=self.lesions, title=self.title).show()

    def live_viewer(self) -> Any:
        """The ipywidgets viewer moving all three planes at once (needs a live kernel)."""
        return slice_viewer(self.pet, self.maps, self.vmin)


def saliency_title(patient_id: str, y: int, probs: Mapping[str, float], names: Mapping[str, str] | None = None) -> str:
    """``"P001: short PFS; P(short) PET only 0.71, PET fusion 0.64"``: the heading of a saliency panel."""
    names = names or {}
    return (f"{patient_id}: {'short' if y else 'long'} PFS; P(short) "
            + ", ".join(f"{names.get(m, m)} {p:.2f}" for m, p in probs.items()))


def saliency_panels(explainer: Any, predictions: pd.DataFrame, compare: Sequence[str], patients: Sequence[str],
                    repeat: int, names: Mapping[str, str] | None = None,
                    with_lesions: bool = False) -> tuple[list[SaliencyPanel], list[str]]:
    """The saliency panels of chapter 06 and, with lesion outlines, the label-geometry check of each patient.

    Parameters
    ----------
    explainer : Explainer
        Supplies ``data``, ``saliency``, ``labels_on_grid``, ``alignment_check`` and ``config.vmin``.
    predictions : DataFrame
        Stored out-of-fold predictions (``model, repeat, patient_id, prob``).
    compare : sequence of str
        PET models whose saliency is drawn; none gives no panel.
    patients : sequence of str
        Patients to draw.
    repeat : int
        The repeat whose predictions the titles quote.
    names : mapping, optional
        Display names.
    with_lesions : bool
        Outline the true lesions (synthetic cohort: ground-truth label maps exist).

    Returns
    -------
    panels : list of SaliencyPanel
        One per patient, in the order given.
    checks : list of str
        ``"<id>: PET vs resampled true SUV, Pearson r = ..."`` per patient when ``with_lesions``.
    """
    names = names or {}
    patients = list(patients) if compare else []
    lesion_maps: dict[str, np.ndarray] = {}
    checks: list[str] = []
    if with_lesions and patients:
        lab = explainer.labels_on_grid(patients)
        lesion_code = {v: k for k, v in lab["names"].items()}["lesion"]
        lesion_maps = {p: lab["labels"][i] == lesion_code for i, p in enumerate(patients)}
        checks = [f"{p}: PET vs resampled true SUV, Pearson r = {explainer.alignment_check(p):.3f} "
                  "(label geometry check)" for p in patients]
    volumes = explainer.data
    panels = []
    for pid in patients:
        row = volumes.rows([pid])[0]
        prob = predictions[(predictions["repeat"] == repeat) & (predictions["patient_id"] == pid)].set_index("model")["prob"]
        panels.append(SaliencyPanel(
            patient_id=pid, pet=volumes.volumes["pet"][row, 0],
            maps={names.get(m, m): normalised_magnitude(explainer.saliency(m, [pid]))[0] for m in compare},
            lesions=lesion_maps.get(pid), vmin=explainer.config.vmin,
            title=saliency_title(pid, int(volumes.y[row]), {m: float(prob[m]) for m in compare}, names)))
    return panels, checks


def gradient_comparison(explainer: Any, compare: Sequence[str], names: Mapping[str, str] | None = None) -> tuple[Any, ...]:
    """Chapter 06's gradient-magnitude section: histogram, sizes and the six distances of two PET models.

    Returns
    -------
    tuple
        ``(figure, sentence, distance table)`` for exactly two models in ``compare``; otherwise one
        sentence saying two are needed.
    """
    from prrt_utils.analysis import stats

    if len(compare) != 2:
        return ("Two PET models are needed for this comparison (parameter `compare`).",)
    names = names or {}
    cfg = explainer.config
    gd = explainer.gradient_distributions(list(compare))
    a, b = compare
    comparison = stats.distribution_distances(gd["samples"][a], gd["samples"][b], bins=cfg.bins, range=(0.0, 1.0))
    return (gradient_histogram_figure(gd["hist"], names),
            f"{names.get(a, a)} vs {names.get(b, b)}, {gd['n_patients']} test patients of repeat {cfg.repeat}; "
            f"{comparison.n_a:,} and {comparison.n_b:,} voxels in the distances",
            distance_table(comparison))


