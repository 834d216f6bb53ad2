"""Repeated stratified cross-validation splits (prrt_utils.data.folds)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import RepeatedStratifiedKFold

from prrt_utils.data.folds import CVConfig, FoldsError, check_folds, ensure_folds, fold_ids, make_folds


def cohort(n: int = 31, n_pos: int = 11, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = np.zeros(n, dtype=int)
    y[rng.choice(n, n_pos, replace=False)] = 1
    return pd.DataFrame({"patient_id": [f"PRRT-{i:03d}" for i in range(1, n + 1)], "pfs_short": y})


def test_every_patient_is_tested_exactly_once_per_repeat_and_never_on_both_sides():
    df = cohort()
    folds = make_folds(df, n_splits=3, n_repeats=5, seed=0)
    assert len(folds) == 5 * 3 * len(df)
    for repeat in range(5):
        tested = folds[(folds["repeat"] == repeat) & (folds["split"] == "test")]["patient_id"]
        assert sorted(tested) == sorted(df["patient_id"])
        for fold in range(3):
            train, test = fold_ids(folds, repeat, fold)
            assert not set(train) & set(test)
            assert set(train) | set(test) == set(df["patient_id"])


def test_each_test_fold_keeps_the_proportion_of_short_pfs():
    df = cohort(60, 22)
    folds = make_folds(df, 3, 5, 0).merge(df, on="patient_id")
    pos = folds[folds["split"] == "test"].groupby(["repeat", "fold"])["pfs_short"].sum()
    assert pos.between(7, 8).all()  # 22 positives over 3 folds: 7 or 8 each


def test_splits_equal_sklearn_repeated_stratified_kfold_on_patients_sorted_by_id():
    df = cohort()
    folds = make_folds(df.sample(frac=1, random_state=3), 3, 2, seed=7)  # row order must not matter
    ref = df.sort_values("patient_id").reset_index(drop=True)
    rskf = RepeatedStratifiedKFold(n_splits=3, n_repeats=2, random_state=7)
    for i, (_, test) in enumerate(rskf.split(np.zeros(len(ref)), ref["pfs_short"])):
        repeat, fold = divmod(i, 3)
        assert fold_ids(folds, repeat, fold)[1] == sorted(ref.loc[test, "patient_id"])


def test_another_seed_gives_other_splits():
    df = cohort()
    a, b = make_folds(df, seed=0), make_folds(df, seed=1)
    assert not a.equals(b)


def test_ensure_folds_writes_once_and_reuses_the_file(tmp_path):
    df = cohort()
    first = ensure_folds(df, tmp_path, CVConfig(n_repeats=2))
    mtime = (tmp_path / "folds.csv").stat().st_mtime_ns
    again = ensure_folds(df.iloc[::-1], tmp_path, CVConfig(n_repeats=2))
    pd.testing.assert_frame_equal(first.reset_index(drop=True), again)
    assert (tmp_path / "folds.csv").stat().st_mtime_ns == mtime


def test_ensure_folds_refuses_another_config_instead_of_mixing_splits(tmp_path):
    df = cohort()
    ensure_folds(df, tmp_path, CVConfig(n_repeats=2))
    with pytest.raises(FoldsError, match="does not match"):
        ensure_folds(df, tmp_path, CVConfig(n_repeats=2, seed=1))


def test_ensure_folds_refuses_another_patient_set(tmp_path):
    df = cohort()
    ensure_folds(df, tmp_path, CVConfig(n_repeats=2))
    with pytest.raises(FoldsError, match="patients"):
        ensure_folds(df.iloc[1:], tmp_path, CVConfig(n_repeats=2))


def test_a_label_that_is_not_binary_names_the_patient():
    df = cohort()
    df.loc[4, "pfs_short"] = np.nan
    with pytest.raises(FoldsError, match="PRRT-005"):
        make_folds(df)


def test_too_few_patients_of_a_class_for_stratification_is_refused():
    with pytest.raises(FoldsError, match="at least 3"):
        make_folds(cohort(20, 2))


def test_check_folds_catches_a_patient_tested_twice_in_a_repeat():
    folds = make_folds(cohort(), 3, 1, 0)
    pid = folds.loc[(folds["fold"] == 0) & (folds["split"] == "test"), "patient_id"].iloc[0]
    folds.loc[(folds["fold"] == 1) & (folds["patient_id"] == pid), "split"] = "test"
    with pytest.raises(FoldsError, match="tested 2 times"):
        check_folds(folds)
