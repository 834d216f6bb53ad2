"""Repeated stratified cross-validation splits shared by every model (paper 2.6).

The paper divides the cohort into three parts of equal size, trains on two and
tests on the third until every part has been the test set once, and repeats the
whole rotation five times with a reshuffle. Every model sees the same splits, so
that per-fold differences between models are paired.

This module makes those splits with scikit-learn's
:class:`~sklearn.model_selection.RepeatedStratifiedKFold` (stratified on the
binary label ``pfs_short``, one row per patient, so a patient never sits on
both sides of a fold), writes them once to ``WORK/folds.csv`` and, on every
later call, reuses them only if they were made with the same configuration and
for the same set of patients. Anything else is refused with a message instead
of silently mixing two different sets of splits in one results folder.

Files
-----
``WORK/folds.csv``
    ``repeat, fold, patient_id, split`` with ``split`` in ``{"train", "test"}``;
    one row per (repeat, fold, patient).
``WORK/folds.json``
    The :class:`CVConfig` that made them, its hash, the number of patients and a
    SHA-256 of the sorted patient ids (no identifying data: the ids are study
    pseudonyms, and only their hash is stored here).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import RepeatedStratifiedKFold

from prrt_utils.io import store
from prrt_utils.io.config import SEED, Config

__all__ = [
    "FOLD_COLUMNS",
    "CVConfig",
    "FoldsError",
    "check_folds",
    "ensure_folds",
    "fold_ids",
    "folds_path",
    "make_folds",
    "patient_set_hash",
]

FOLD_COLUMNS = ("repeat", "fold", "patient_id", "split")
"""Columns of ``WORK/folds.csv`` (DESIGN "Folds and results")."""


class FoldsError(ValueError):
    """Splits that cannot be made, or stored splits that do not match the request."""


@dataclasses.dataclass(frozen=True)
class CVConfig(Config):
    """Repeated stratified k-fold cross-validation (paper 2.6: 3 folds, 5 repeats).

    Attributes
    ----------
    n_splits : int
        Folds per repeat (k); each patient is tested once per repeat.
    n_repeats : int
        Number of reshuffled repetitions of the k-fold rotation.
    seed : int
        ``random_state`` of :class:`~sklearn.model_selection.RepeatedStratifiedKFold`.
    label : str
        Binary cohort column to stratify on (1 = PFS <= 12 months).
    """

    n_splits: int = 3
    n_repeats: int = 5
    seed: int = SEED
    label: str = "pfs_short"

    def __post_init__(self) -> None:
        if self.n_splits < 2:
            raise FoldsError(f"n_splits must be >= 2, got {self.n_splits}")
        if self.n_repeats < 1:
            raise FoldsError(f"n_repeats must be >= 1, got {self.n_repeats}")
        if self.seed < 0:
            raise FoldsError(f"seed must be a non-negative integer, got {self.seed}")


def folds_path(work_dir: str | Path) -> Path:
    """``WORK/folds.csv``."""
    return Path(work_dir) / "folds.csv"


def patient_set_hash(patient_ids: pd.Series | list[str]) -> str:
    """SHA-256 of the sorted, newline-joined patient ids (identifies the patient set)."""
    ids = sorted(str(p) for p in patient_ids)
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def _labels(cohort_df: pd.DataFrame, label: str) -> pd.DataFrame:
    missing = [c for c in ("patient_id", label) if c not in cohort_df.columns]
    if missing:
        raise FoldsError(f"cohort table lacks column(s) {missing}; have {list(cohort_df.columns)}")
    frame = cohort_df[["patient_id", label]].copy()
    frame["patient_id"] = frame["patient_id"].astype(str)
    dup = frame["patient_id"].duplicated()
    if dup.any():
        raise FoldsError(f"patient {frame.loc[dup, 'patient_id'].iloc[0]} appears more than once in the cohort table")
    y = pd.to_numeric(frame[label], errors="coerce")
    bad = ~y.isin([0, 1])
    if bad.any():
        pid = frame.loc[bad, "patient_id"].iloc[0]
        raise FoldsError(
            f"patient {pid}: {label} is {frame.loc[bad, label].iloc[0]!r}; it must be 0 or 1 "
            f"({int(bad.sum())} patient(s) affected; exclude them in the cohort stage)"
        )
    frame[label] = y.astype(int)
    return frame.sort_values("patient_id", kind="stable").reset_index(drop=True)


def make_folds(
    cohort_df: pd.DataFrame, n_splits: int = 3, n_repeats: int = 5, seed: int = SEED, label: str = "pfs_short"
) -> pd.DataFrame:
    """Repeated stratified k-fold splits by patient (paper 2.6).

    Parameters
    ----------
    cohort_df : DataFrame
        One row per patient with ``patient_id`` and the binary ``label`` column.
        Row order does not matter: patients are sorted by id first, so the same
        patient set and seed always give the same splits.
    n_splits, n_repeats, seed, label
        As in :class:`CVConfig`.

    Returns
    -------
    DataFrame
        ``repeat, fold, patient_id, split``; ``repeat`` and ``fold`` count from 0;
        ``n_repeats * n_splits * n_patients`` rows.

    Raises
    ------
    FoldsError
        Duplicate patients, a label that is not 0/1, or fewer patients of a class
        than folds (stratification impossible).
    """
    cfg = CVConfig(n_splits=n_splits, n_repeats=n_repeats, seed=seed, label=label)
    frame = _labels(cohort_df, cfg.label)
    counts = frame[cfg.label].value_counts()
    for cls in (0, 1):
        if counts.get(cls, 0) < cfg.n_splits:
            raise FoldsError(
                f"{cfg.label} = {cls} has {counts.get(cls, 0)} patient(s); stratified {cfg.n_splits}-fold "
                f"cross-validation needs at least {cfg.n_splits} of each class"
            )
    splitter = RepeatedStratifiedKFold(n_splits=cfg.n_splits, n_repeats=cfg.n_repeats, random_state=cfg.seed)
    ids = frame["patient_id"].to_numpy()
    y = frame[cfg.label].to_numpy()
    parts = []
    for i, (train, test) in enumerate(splitter.split(np.zeros(len(ids)), y)):
        repeat, fold = divmod(i, cfg.n_splits)
        split = np.empty(len(ids), dtype=object)
        split[train] = "train"
        split[test] = "test"
        parts.append(pd.DataFrame({"repeat": repeat, "fold": fold, "patient_id": ids, "split": split}))
    out = pd.concat(parts, ignore_index=True)
    check_folds(out)
    return out


def check_folds(folds: pd.DataFrame) -> None:
    """Raise :class:`FoldsError` unless the splits are a valid repeated k-fold partition.

    Checks that every (repeat, fold) lists every patient exactly once, on one
    side only, and that within a repeat every patient is tested exactly once.
    """
    missing = [c for c in FOLD_COLUMNS if c not in folds.columns]
    if missing:
        raise FoldsError(f"folds table lacks column(s) {missing}")
    if not folds["split"].isin(["train", "test"]).all():
        raise FoldsError(f"split must be 'train' or 'test'; found {sorted(set(folds['split']) - {'train', 'test'})}")
    dup = folds.duplicated(["repeat", "fold", "patient_id"])
    if dup.any():
        r = folds[dup].iloc[0]
        raise FoldsError(f"patient {r['patient_id']} is listed twice in repeat {r['repeat']}, fold {r['fold']}")
    patients = set(folds["patient_id"])
    for (repeat, fold), g in folds.groupby(["repeat", "fold"]):
        if set(g["patient_id"]) != patients:
            absent = sorted(patients - set(g["patient_id"]))[:3]
            raise FoldsError(f"repeat {repeat}, fold {fold} lacks patient(s) {absent}")
    for repeat, g in folds.groupby("repeat"):
        tested = g.loc[g["split"] == "test", "patient_id"].value_counts()
        untested = sorted(set(g["patient_id"]) - set(tested.index))[:3]
        if untested:
            raise FoldsError(f"repeat {repeat}: patient(s) {untested} are never in a test fold")
        twice = tested[tested != 1]
        if len(twice):
            raise FoldsError(f"repeat {repeat}: patient {twice.index[0]} is tested {int(twice.iloc[0])} times")


def fold_ids(folds: pd.DataFrame, repeat: int, fold: int) -> tuple[list[str], list[str]]:
    """``(train_ids, test_ids)`` of one fold, each sorted by patient id."""
    g = folds[(folds["repeat"] == repeat) & (folds["fold"] == fold)]
    if g.empty:
        raise FoldsError(f"no split for repeat {repeat}, fold {fold}")
    train = sorted(g.loc[g["split"] == "train", "patient_id"].astype(str))
    test = sorted(g.loc[g["split"] == "test", "patient_id"].astype(str))
    return train, test


def ensure_folds(cohort_df: pd.DataFrame, work_dir: str | Path, cfg: CVConfig | None = None) -> pd.DataFrame:
    """Write ``WORK/folds.csv`` once; afterwards return it if it still fits, refuse otherwise.

    The stored splits are reused when ``WORK/folds.json`` records the same
    config hash and the same patient set as the request. A mismatch (another
    seed, another number of repeats, a patient added or excluded) raises
    :class:`FoldsError` naming the difference: results already in
    ``WORK/results/`` were computed on the old splits and must not be mixed
    with new ones.

    Parameters
    ----------
    cohort_df : DataFrame
        ``patient_id`` and ``cfg.label`` for every patient that every model can use.
    work_dir : path
        ``WORK``.
    cfg : CVConfig, optional
        Defaults to the paper's 5 x 3-fold.

    Returns
    -------
    DataFrame
        ``repeat, fold, patient_id, split``.
    """
    cfg = cfg or CVConfig()
    work_dir = Path(work_dir)
    frame = _labels(cohort_df, cfg.label)
    ids_hash = patient_set_hash(frame["patient_id"])
    csv, meta_path = folds_path(work_dir), work_dir / "folds.json"
    if csv.exists():
        if not meta_path.exists():
            raise FoldsError(
                f"{csv} exists without {meta_path.name}: its origin is unknown. Delete {csv} and "
                f"{work_dir / 'results'} to start the cross-validation over."
            )
        meta = json.loads(meta_path.read_text())
        problems = []
        if meta.get("config_hash") != cfg.hash():
            problems.append(f"they were made with {meta.get('config')}, this run asks for {cfg.to_dict()}")
        if meta.get("patients_sha256") != ids_hash:
            problems.append(
                f"they cover {meta.get('n_patients')} patients, this run has {len(frame)} "
                "(or the same number but different patients)"
            )
        if problems:
            raise FoldsError(
                f"{csv} does not match this run: " + "; ".join(problems) + ". Every model must use the same "
                f"splits, so they are not remade silently. Use another work directory, or delete {csv}, "
                f"{meta_path.name} and {work_dir / 'results'} to start over."
            )
        folds = pd.read_csv(csv, dtype={"patient_id": str})
        check_folds(folds)
        return folds
    folds = make_folds(frame, cfg.n_splits, cfg.n_repeats, cfg.seed, cfg.label)
    store.write_csv(csv, folds)
    store.write_json(
        meta_path,
        {
            "config": cfg.to_dict(),
            "config_hash": cfg.hash(),
            "n_patients": len(frame),
            "patients_sha256": ids_hash,
            "folds_sha256": store.sha256_file(csv),
        },
    )
    return folds
