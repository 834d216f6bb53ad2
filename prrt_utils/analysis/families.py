"""Chapter 05: the models of the book, their families, and the numbers that pick one (paper 2.6, 3.2-3.3).

Downstream of the grid: everything here READS what the grid stored (through
:mod:`prrt_utils.models.stored` and ``WORK/cohort/cohort.csv``) and never trains.
The statistics themselves are in :mod:`prrt_utils.analysis.stats` (comparisons over
folds) and :mod:`prrt_utils.analysis.kaplan_meier` (PFS of the predicted groups); the
Kaplan-Meier figure is :func:`prrt_utils.io.figures.km_figure`.

Paper sections implemented
--------------------------
* 2.6, 3.2 and Figure 4: the models of the book and their display names
  (:func:`model_keys`, :func:`available_models`, :func:`display_names`), model
  families (:func:`families`, :func:`fusion_models`), the pre-specified model of the
  single-model analyses (:func:`primary_model`), a representative cross-validation
  fold (:func:`representative_fold`), the best fusion model (:func:`best_model`),
  Table 2 beside the paper's (:func:`table2`) and each family against the next
  (:func:`compare_model_families`, :class:`FamilyComparisons`).
* 3.3 and Figure 5: one model's test predictions joined to PFS
  (:func:`survival_frame`) and its Kaplan-Meier split in every repeat
  (:func:`km_over_repeats`); chapter 06 uses the model names of this module too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prrt_utils.analysis import stats
from prrt_utils.analysis.kaplan_meier import km_by_prediction
from prrt_utils.analysis.metrics import paper_reference, side_by_side
from prrt_utils.data import paper
from prrt_utils.models.networks import ModelSpec, get_spec, load_registry

__all__ = [
    "FamilyComparisons",
    "ResultsError",
    "available_models",
    "best_model",
    "compare_model_families",
    "display_names",
    "families",
    "family_order",
    "family_table",
    "fusion_models",
    "image_models",
    "km_note",
    "km_over_repeats",
    "model_keys",
    "primary_model",
    "read_survival",
    "representative_fold",
    "representative_repeat",
    "survival_frame",
    "table2",
]

_RULE_FAMILIES = ("unimodal", "one_image_fusion", "dual_fusion")


class ResultsError(ValueError):
    """No model given, no fold metrics for a model, no predictions of a repeat, no cohort table or no PFS."""


# --------------------------------------------------------------------------- names and families


def display_names() -> dict[str, str]:
    """Model key -> display name (the paper's seven and the baselines)."""
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
    models = list(models)
    if not models:
        raise ResultsError("primary_model: no model given")
    if paper.PRIMARY_MODEL in models:
        return paper.PRIMARY_MODEL
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
        raise ResultsError(f"none of {list(candidates)} has fold metrics")
    means = fm.groupby(["model", "repeat"])[metric].mean().groupby("model").mean()
    return str(means.idxmax())


def representative_fold(fold_metrics: pd.DataFrame, model: str, metric: str = "auroc") -> tuple[int, int]:
    """The (repeat, fold) whose ``metric`` is closest to the model's median over all folds.

    The paper's Figure 4 shows "an exemplary fold"; taking the median one (not
    the best) keeps the example honest. Ties go to the earliest (repeat, fold).
    """
    fm = fold_metrics[fold_metrics["model"] == model].dropna(subset=[metric]).sort_values(["repeat", "fold"])
    if fm.empty:
        raise ResultsError(f"model {model!r} has no fold with a finite {metric}")
    gap = (fm[metric] - fm[metric].median()).abs().to_numpy()
    row = fm.iloc[int(np.argmin(gap))]
    return int(row["repeat"]), int(row["fold"])


def representative_repeat(fold_metrics: pd.DataFrame, model: str, metric: str = "auroc") -> int:
    """The repeat whose mean ``metric`` over its folds is closest to the median of the repeat means."""
    fm = fold_metrics[fold_metrics["model"] == model]
    if fm.empty:
        raise ResultsError(f"model {model!r} has no fold metrics")
    per = fm.groupby("repeat")[metric].mean().sort_index()
    return int(per.index[int(np.argmin((per - per.median()).abs().to_numpy()))])


def table2(results: Any, reference: pd.DataFrame | None, names: Mapping[str, str] | None = None,
           digits: int = 2) -> pd.DataFrame:
    """Our Table 2 (AUROC, AUPRC, accuracy as mean ± SE over repeats) beside the paper's (real cohort).

    ``results`` is a :class:`prrt_utils.analysis.metrics.ModelResults`; ``reference`` the
    frame of :func:`prrt_utils.analysis.metrics.paper_reference` (or ``None``, then only
    our columns are shown). The paper's accuracy is given for two models only.
    """
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


# --------------------------------------------------------------------------- PFS of one model's predicted groups (Figure 5)


def read_survival(work_dir: str | Path) -> pd.DataFrame:
    """``patient_id, pfs_months, event`` (and ``pfs_short``) from ``WORK/cohort/cohort.csv``."""
    path = Path(work_dir) / "cohort" / "cohort.csv"
    if not path.is_file():
        raise ResultsError(f"{path} not found: build the cohort first")
    cohort = pd.read_csv(path, dtype={"patient_id": str})
    need = ["patient_id", "pfs_months", "event"]
    missing = [c for c in need if c not in cohort.columns]
    if missing:
        raise ResultsError(f"{path} lacks column(s) {missing}")
    return cohort[[c for c in (*need, "pfs_short") if c in cohort.columns]].copy()


def survival_frame(predictions: pd.DataFrame, survival: pd.DataFrame, model: str, repeat: int) -> pd.DataFrame:
    """One repeat's test predictions of ``model`` joined to PFS: ``patient_id, prob, y_true, pfs_months, event``.

    Every patient is in exactly one test fold of a repeat, so each appears once
    and each probability comes from a model that did not see the patient.
    ``prob`` is the predicted probability of SHORT PFS (as stored).
    """
    p = predictions[(predictions["model"] == model) & (predictions["repeat"] == repeat)]
    if p.empty:
        raise ResultsError(f"no predictions of model {model!r} in repeat {repeat}")
    out = p[["patient_id", "prob", "y_true"]].merge(survival, on="patient_id", how="left", validate="one_to_one")
    if out["pfs_months"].isna().any():
        pid = out.loc[out["pfs_months"].isna(), "patient_id"].iloc[0]
        raise ResultsError(f"patient {pid} has a prediction but no PFS in the cohort table")
    return out.reset_index(drop=True)


def km_over_repeats(predictions: pd.DataFrame, survival: pd.DataFrame, model: str, threshold: float = 0.5) -> pd.DataFrame:
    """:func:`prrt_utils.analysis.kaplan_meier.km_by_prediction` for every repeat of ``model``, one row each (not cherry-picked)."""
    rows = []
    for r in sorted(predictions.loc[predictions["model"] == model, "repeat"].unique()):
        km = km_by_prediction(survival_frame(predictions, survival, model, int(r)), threshold, prob_is="short")
        rows.append(km.to_frame().drop(columns=["rule"]).assign(model=model, repeat=int(r)))
    out = pd.concat(rows, ignore_index=True)
    return out[["model", "repeat", *[c for c in out.columns if c not in ("model", "repeat")]]]


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
