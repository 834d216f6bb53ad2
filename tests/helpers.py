"""Helpers shared by the test modules (import them as ``from helpers import ...``: tests/ is on sys.path).

Small builders of test inputs that several modules need in the same form; fixtures stay in conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from prrt_utils.data.folds import make_folds
from prrt_utils.io import store
from prrt_utils.models.inputs import CohortData


def write_toy_work(work: Path, data: CohortData, drop_images: tuple[str, ...] = ()) -> Path:
    """WORK/cohort/cohort.csv and WORK/preprocessed/ in the DESIGN.md layout, from toy inputs."""
    cohort = pd.DataFrame({"patient_id": data.patient_ids, "pfs_short": data.y, "has_imaging": True})
    for j, c in enumerate(data.lab_columns):
        cohort[c] = data.labs[:, j]
    store.write_csv(work / "cohort" / "cohort.csv", cohort)
    rows = []
    for i, pid in enumerate(data.patient_ids):
        if pid in drop_images:
            rows.append({"patient_id": pid, "status": "excluded", "reason": "no CT", "file": "", "sha256": ""})
            continue
        f = work / "preprocessed" / f"{pid}.npz"
        f.parent.mkdir(parents=True, exist_ok=True)
        np.savez(f, pet=data.volumes["pet"][i, 0], ct=data.volumes["ct"][i, 0])
        rows.append({"patient_id": pid, "status": "ok", "reason": "", "file": f.name, "sha256": store.sha256_file(f)})
    store.write_csv(work / "preprocessed" / "index.csv", pd.DataFrame(rows))
    return work


def folds_of(data: CohortData, n_repeats: int = 1, n_splits: int = 3, seed: int = 0) -> pd.DataFrame:
    """Stratified folds of toy inputs (``prrt_utils.data.folds.make_folds`` on their ids and labels)."""
    return make_folds(pd.DataFrame({"patient_id": data.patient_ids, "pfs_short": data.y}), n_splits, n_repeats, seed)


def fold_predictions(signals: dict[str, float], n: int = 60, repeats: int = 3, folds: int = 3) -> pd.DataFrame:
    """Out-of-fold predictions of several models: the stronger a model's signal, the higher its AUROC.

    One random draw (seed 0) of ``n`` labels; each repeat deals the patients into ``folds`` folds anew.
    """
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    rows = []
    for r in range(repeats):
        fold_of = rng.permutation(np.arange(n) % folds)
        for model, signal in signals.items():
            prob = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(0, 1, n))))
            rows += [{"model": model, "repeat": r, "fold": int(fold_of[i]), "patient_id": f"P{i:03d}",
                      "y_true": int(y[i]), "prob": float(prob[i])} for i in range(n)]
    return pd.DataFrame(rows)


def train_folds(spec, cfg, data: CohortData, folds: pd.DataFrame, n_splits: int = 3, repeat: int = 0) -> list:
    """``train_fold`` on each fold of one repeat, in fold order: the fold results (predictions, history)."""
    from prrt_utils.data.folds import fold_ids
    from prrt_utils.models.training import train_fold

    return [train_fold(spec, cfg, data, *fold_ids(folds, repeat, fold), repeat, fold) for fold in range(n_splits)]


def auroc(out) -> float:
    """AUROC of one fold result's test predictions."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(out.predictions["y_true"], out.predictions["prob"]))
