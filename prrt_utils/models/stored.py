"""The stored folds, read side: where each fold's files live, its predictions and inner predictions, the
training histories and embeddings, and a trained fold rebuilt from its files (never retrained). The analyses
read models through this module and never import the trainers (:mod:`prrt_utils.models.training`,
:mod:`prrt_utils.models.crossval`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import torch

from prrt_utils.io import store
from prrt_utils.models.inputs import CohortData, FoldNormaliser, LabScaler, TrainingError, model_inputs
from prrt_utils.models.networks import (
    IMG_SIZE,
    FusionNet,
    ModelSpec,
)

PREDICTION_COLUMNS = ("model", "repeat", "fold", "patient_id", "y_true", "prob")
"""Columns of ``predictions.parquet``; ``prob`` is the predicted probability of short PFS."""


INNER_PREDICTION_COLUMNS = (*PREDICTION_COLUMNS, "source")
"""Columns of ``inner_predictions.parquet``: predictions of the fold's TRAINING patients that no test
patient of the fold influenced, and ``source`` (:data:`INNER_SOURCES`): how they were made."""


INNER_SOURCES = {
    "validation": "validation split: the fold's network predicting the stratified split of the training "
                  "part held out of its fitting (the same split chose the stopping epoch)",
    "inner_cv": "inner 3-fold cross-validation over the training part (the same model refitted on two "
                "thirds, predicting the third)",
}
"""What each ``source`` of the inner predictions means, in words for the book."""


INNER_FILE = "inner_predictions.parquet"
"""Name of the inner predictions' file in each fold's folder."""


def fold_dir(work_dir: str | Path, model: str, repeat: int, fold: int) -> Path:
    """``WORK/results/<model>/r<repeat>_f<fold>``."""
    return Path(work_dir) / "results" / model / f"r{repeat}_f{fold}"


def read_done(path: str | Path) -> dict[str, Any] | None:
    """The fold's ``done.json`` (``path`` is the fold folder), or ``None`` if the fold is unfinished."""
    done = Path(path) / "done.json"
    return json.loads(done.read_text()) if done.exists() else None


@dataclasses.dataclass(frozen=True)
class LoadedFold:
    """A finished fold read back for explanation (saliency, permutation importance).

    Attributes
    ----------
    spec : ModelSpec
    model : FusionNet (eval mode, CPU) or RandomForestClassifier
    normaliser : FoldNormaliser
    lab_scaler : LabScaler
    done : dict
        The fold's ``done.json``.
    """

    spec: ModelSpec
    model: Any
    normaliser: FoldNormaliser
    lab_scaler: LabScaler
    done: dict[str, Any]

    def inputs(self, data: CohortData, ids: Sequence[str]) -> list[torch.Tensor]:
        """Normalised model inputs of ``ids`` as tensors in ``INPUT_ORDER`` (for captum or ``model(*xs)``)."""
        xs = model_inputs(self.spec, data, data.rows(ids), self.normaliser, self.lab_scaler)
        return [torch.from_numpy(x) for x in xs]


def load_fold(work_dir: str | Path, spec: ModelSpec, repeat: int, fold: int, img_size: Sequence[int] | None = None,
              dropout: float = 0.1) -> LoadedFold:
    """Rebuild the trained model of one finished fold from its files (never retrains)."""
    out = fold_dir(work_dir, spec.name, repeat, fold)
    done = read_done(out)
    if done is None:
        raise TrainingError(f"{out} is not finished (no done.json); run the grid first")
    norm = json.loads((out / "normalisation.json").read_text())
    normaliser = FoldNormaliser.from_dict(norm["images"])
    lab_scaler = LabScaler.from_dict(norm["labs"])
    if spec.kind != "cnn":
        model = joblib.load(out / done["weights"])
    else:
        net = FusionNet(spec, n_labs=len(lab_scaler.columns), img_size=img_size or IMG_SIZE, dropout_prob=dropout)
        net.load_state_dict(torch.load(out / done["weights"], map_location="cpu", weights_only=True))
        model = net.eval()
    return LoadedFold(spec, model, normaliser, lab_scaler, done)


class GridError(ValueError):
    """Missing upstream files or a fold that failed (named by model, repeat and fold)."""


def _finished(work_dir: Path, models: Sequence[str] | None) -> list[tuple[str, int, int, Path]]:
    out = []
    root = work_dir / "results"
    for done in sorted(root.glob("*/r*_f*/done.json")):
        model = done.parent.parent.name
        if models is not None and model not in models:
            continue
        r, f = done.parent.name[1:].split("_f")
        out.append((model, int(r), int(f), done.parent))
    return out


def collect_results(work_dir: str | Path, models: Sequence[str] | None = None, write: bool = True) -> pd.DataFrame:
    """Concatenate the predictions of every finished fold into ``WORK/results/predictions.parquet``.

    Returns
    -------
    DataFrame
        ``model, repeat, fold, patient_id, y_true, prob``, sorted by model,
        repeat, fold, patient. With ``models`` given, only those are returned
        (the file on disk always holds every model). ``write=False`` only reads.
    """
    work_dir = Path(work_dir)
    parts = [pd.read_parquet(d / "predictions.parquet") for _, _, _, d in _finished(work_dir, None)]
    frame = (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(PREDICTION_COLUMNS, ["str", int, int, "str", int, float], strict=True)})
    )
    frame = frame.sort_values(["model", "repeat", "fold", "patient_id"], kind="stable").reset_index(drop=True)
    if parts and write:
        store.write_parquet(work_dir / "results" / "predictions.parquet", frame)
    if models is not None:
        frame = frame[frame["model"].isin(list(models))].reset_index(drop=True)
    return frame


def read_results(work_dir: str | Path, models: Sequence[str]) -> pd.DataFrame:
    """Stored predictions of ``models`` for a chapter that must not retrain; complete or an error.

    Raises
    ------
    GridError
        A model has no finished fold, or fewer finished folds than ``WORK/folds.csv`` holds
        (names the model and what to run).
    """
    work_dir = Path(work_dir)
    folds_csv = work_dir / "folds.csv"
    if not folds_csv.exists():
        raise GridError(f"{folds_csv} not found: train the models first (prrt run, or make book)")
    folds = pd.read_csv(folds_csv, dtype={"patient_id": str})
    expected = set(zip(folds["repeat"], folds["fold"], strict=True))
    pred = collect_results(work_dir, models, write=False)
    for m in models:
        have = set(zip(*(pred.loc[pred["model"] == m, c] for c in ("repeat", "fold")), strict=True))
        if have != expected:
            raise GridError(
                f"model {m}: {len(have)} of {len(expected)} folds finished in {work_dir / 'results' / m}; "
                f"run it first (prrt run --models {m})"
            )
    return pred


def read_inner_results(work_dir: str | Path, models: Sequence[str]) -> pd.DataFrame:
    """Inner predictions of ``models`` over all their finished folds (``inner_predictions.parquet``).

    Predictions of each fold's TRAINING patients that no test patient of the
    fold influenced (:data:`prrt_utils.models.stored.INNER_PREDICTION_COLUMNS`): what
    :func:`prrt_utils.analysis.calibration.recalibrate_within_folds` fits on. A finished
    fold without the file (trained before issue 15) contributes nothing; the
    recalibration then names it.

    Returns
    -------
    DataFrame
        ``model, repeat, fold, patient_id, y_true, prob, source``, sorted by model, repeat, fold, patient.
    """
    parts = [pd.read_parquet(d / INNER_FILE) for _, _, _, d in _finished(Path(work_dir), list(models))
             if (d / INNER_FILE).is_file()]
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=list(INNER_PREDICTION_COLUMNS))
    frame = pd.concat(parts, ignore_index=True)
    return frame.sort_values(["model", "repeat", "fold", "patient_id"], kind="stable").reset_index(drop=True)


def fold_table(work_dir: str | Path, models: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per finished fold from its ``done.json``: model, repeat, fold, seconds, device, threads, sizes."""
    rows = []
    for model, r, f, d in _finished(Path(work_dir), models):
        done = read_done(d) or {}
        rows.append(
            {
                "model": model,
                "repeat": r,
                "fold": f,
                "seconds": done.get("seconds"),
                "device": done.get("device"),
                "torch_threads": done.get("torch_threads"),
                "n_train": done.get("n_train"),
                "n_val": done.get("n_val"),
                "n_test": done.get("n_test"),
                "ct_init_note": done.get("ct_init_note", ""),
                "ct_tensors_loaded": _loaded(done.get("ct_load")),
            }
        )
    return pd.DataFrame(rows)


def _loaded(report: dict[str, Any] | None) -> str:
    if not report:
        return ""
    n = len(report["loaded"]) + len(report["not_loaded"])
    return f"{len(report['loaded'])} of {n} from {report['file']}"


def load_histories(work_dir: str | Path, models: Sequence[str] | None = None) -> pd.DataFrame:
    """Loss per epoch of every finished CNN fold: model, repeat, fold, epoch, train_loss (, val_loss)."""
    frames = []
    for model, r, f, d in _finished(Path(work_dir), models):
        h = json.loads((d / "history.json").read_text())
        if not h.get("epoch"):
            continue
        cols = {k: h[k] for k in ("epoch", "train_loss", "val_loss") if k in h}
        frames.append(pd.DataFrame(cols).assign(model=model, repeat=r, fold=f))
    if not frames:
        return pd.DataFrame(columns=["model", "repeat", "fold", "epoch", "train_loss"])
    out = pd.concat(frames, ignore_index=True)
    return out[["model", "repeat", "fold", *[c for c in out.columns if c not in ("model", "repeat", "fold")]]]


def load_embeddings(work_dir: str | Path, model: str, repeat: int, fold: int) -> pd.DataFrame:
    """Embeddings of one fold: ``patient_id, split`` and one column ``e0..e{E-1}`` per dimension."""
    d = fold_dir(work_dir, model, repeat, fold)
    if read_done(d) is None:
        raise GridError(f"{d} is not finished (no done.json)")
    with np.load(d / "embeddings.npz", allow_pickle=False) as z:
        emb = z["embedding"]
        frame = pd.DataFrame(emb, columns=[f"e{i}" for i in range(emb.shape[1])])
        frame.insert(0, "split", z["split"])
        frame.insert(0, "patient_id", z["patient_id"])
    return frame


_RULE_TOLERANCE = 1e-9  # 1 - 0.9 is 0.09999999999999998: a probability written on the other scale still counts


def predicted_long(prob: Any, *, prob_is: str, threshold: float = 0.5) -> np.ndarray:
    """The project's one rule: predicted long PFS when P(long PFS) >= ``threshold`` (paper 3.3).

    The models give P(short PFS); P(long) = 1 - P(short). The comparison allows
    a rounding tolerance of 1e-9, so that a patient exactly at the threshold
    on either scale lands on the side the rule names (without it, P(short) =
    0.9 at a threshold of 0.1 on P(long) fell to "short": 1 - 0.9 < 0.1 in
    floating point). Used by the accuracy (:func:`fold_metrics`), the
    Kaplan-Meier split (:func:`prrt_utils.analysis.kaplan_meier.km_by_prediction`) and the
    hazard ratio (:func:`prrt_utils.analysis.kaplan_meier.cox_hr_by_group`).

    Parameters
    ----------
    prob : array-like
        Predicted probabilities.
    prob_is : {"short", "long"}
        Whether ``prob`` is the probability of short (<= 12 months) or long PFS.
    threshold : float
        Cut-off on P(long PFS), in (0, 1).

    Returns
    -------
    ndarray of bool
        True where long PFS is predicted.
    """
    if prob_is not in ("short", "long"):
        raise ValueError(f"prob_is must be 'short' or 'long', got {prob_is!r}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    p = np.asarray(prob, dtype=float)
    p_long = p if prob_is == "long" else 1.0 - p
    return p_long >= threshold - _RULE_TOLERANCE


def prediction_rule(threshold: float = 0.5) -> str:
    """:func:`predicted_long` in words, for tables and figure captions."""
    return (f"predicted long PFS: P(long PFS) >= {threshold:g} (i.e. P(short) <= {1 - threshold:g}); "
            "predicted short PFS: otherwise")
