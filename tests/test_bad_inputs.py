"""The bad-input corpus (tests/make_bad_inputs.py) through the real stages: every case caught, the rest runs.

One corpus is written per session and run through the cohort stage and the
preprocessing stage (``on_error="skip"``), as ``prrt cohort`` and ``prrt
preprocess`` run them, and through ``prrt check``. For each case the test asserts
the stage that catches it and the words of its message; that the good patients
and the inputs with documented handling complete beside the broken ones; and
that nothing is written for a failed patient that looks like a whole result.
The loader's unit tests (tests/test_loading.py) check each message in detail;
here the point is the corpus as a whole.
"""

from __future__ import annotations

from pathlib import Path

import dicom_factory as fac
import numpy as np
import pandas as pd
import pytest
from make_bad_inputs import CASES, Case, main

from prrt_utils import cohort as C
from prrt_utils.cohort import CohortConfig, build_cohort
from prrt_utils.intake import CohortSource, check
from prrt_utils.loading import InputError, load_patient
from prrt_utils.preprocess import PreprocessConfig, load_volumes, run_preprocessing

BY_ID = {c.patient_id: c for c in CASES}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad") / "export"
    assert main([str(root)]) == 0  # the script, as a user runs it
    return root


@pytest.fixture(scope="module")
def stages(corpus: Path) -> dict[str, pd.DataFrame]:
    work = corpus.parent / "work"
    table = build_cohort(CohortConfig(), corpus, work)
    index = run_preprocessing(
        PreprocessConfig(on_error="skip"),
        work / "cohort" / "cohort.csv",
        corpus / "imaging",
        work,
        progress=False,
        n_jobs=2,
    )
    return {
        "work": work,
        "cohort": table,
        "cohort_exclusions": C.read_exclusions(work),
        "index": index,
        "preprocess_exclusions": pd.read_csv(work / "preprocessed" / "exclusions.csv", dtype=str),
    }


def _reasons(frame: pd.DataFrame, pid: str) -> list[str]:
    return frame.loc[frame["patient_id"] == pid, "reason"].tolist()


def test_the_corpus_lists_every_case_once_with_its_expected_outcome(corpus: Path) -> None:
    listed = pd.read_csv(corpus / "cases.csv", dtype=str, keep_default_na=False)
    assert listed["patient_id"].tolist() == [c.patient_id for c in CASES]
    assert len(set(listed["patient_id"])) == len(CASES) >= 30
    assert all(c.expect for c in CASES if c.stage) and not any(c.expect for c in CASES if not c.stage)
    assert main([str(corpus)]) == 2  # never written over an existing corpus


@pytest.mark.parametrize("case", [c for c in CASES if c.stage == "cohort"], ids=lambda c: c.patient_id)
def test_each_bad_row_or_folder_is_excluded_by_the_cohort_stage_naming_patient_and_problem(
    stages: dict, case: Case
) -> None:
    reasons = _reasons(stages["cohort_exclusions"], case.patient_id)
    assert any(case.expect in r for r in reasons), reasons
    name = case.patient_id.strip("()") if case.patient_id.startswith("(") else f"patient {case.patient_id}"
    assert all(name in r for r in reasons), reasons
    assert (
        stages["cohort_exclusions"].loc[stages["cohort_exclusions"]["patient_id"] == case.patient_id, "stage"]
        == "cohort"
    ).all()


@pytest.mark.parametrize("case", [c for c in CASES if c.stage == "preprocess"], ids=lambda c: c.patient_id)
def test_each_broken_image_is_excluded_by_preprocessing_with_its_reason(
    stages: dict, corpus: Path, case: Case
) -> None:
    reasons = _reasons(stages["preprocess_exclusions"], case.patient_id)
    assert len(reasons) == 1 and case.expect in reasons[0], reasons
    # the same problem as an error naming the patient (what on_error="stop" raises)
    with pytest.raises(InputError) as err:
        load_patient(corpus / "imaging" / case.patient_id, case.patient_id)
    assert str(err.value).startswith(f"patient {case.patient_id}: ") and case.expect in str(err.value)
    assert str(corpus) not in str(err.value) and not any(s in str(err.value) for s in fac.FAKE_PHI.values())


def test_good_patients_and_documented_handling_complete_beside_the_broken_ones(stages: dict) -> None:
    index = stages["index"].set_index("patient_id")
    done = [c.patient_id for c in CASES if c.preprocessed]
    assert done == ["PRRT-001", "PRRT-002", "PRRT-003", "PRRT-004", "PRRT-005"]
    assert (index.loc[done, "status"] == "ok").all()
    vols = load_volumes(stages["work"], done)
    assert vols["pet"].shape == (5, 1, 75, 50, 50)
    # the same body and lesion however it was stored: plain DICOM, NIfTI, with junk files, in one flat folder
    for k in range(1, 5):
        np.testing.assert_allclose(vols["ct"][k], vols["ct"][0], atol=1.0)
        np.testing.assert_allclose(vols["pet"][k], vols["pet"][0], atol=0.05)
    assert 8.0 < float(vols["pet"][0].max()) < 12.5  # the hot ball (SUV 12) survives, box-averaged


def test_the_censored_patient_is_kept_for_survival_but_not_classified(stages: dict) -> None:
    row = stages["cohort"].set_index("patient_id").loc["PRRT-005"]
    assert row["event"] == 0 and pd.isna(row["pfs_short"]) and row["has_imaging"]
    assert "censored" in row["note"] and "not classified" in row["note"]


def test_nothing_that_looks_whole_is_written_for_a_failed_patient(stages: dict) -> None:
    import json

    work = stages["work"]
    cohort = stages["cohort"].set_index("patient_id")
    index = stages["index"].set_index("patient_id")
    npz = {p.stem for p in (work / "preprocessed").glob("*.npz")}
    assert npz == {c.patient_id for c in CASES if c.preprocessed}
    for case in CASES:
        pid = case.patient_id
        if case.stage == "cohort" and pid in cohort.index:
            # kept in Table 1 (no images, or censored), but without a class or without images
            assert pd.isna(cohort.at[pid, "pfs_short"]) or not cohort.at[pid, "has_imaging"]
            assert case.preprocessed or index.at[pid, "status"] == "excluded"
        elif case.stage == "cohort":
            assert pid not in index.index  # a bad row never reaches preprocessing
        if case.stage == "preprocess":
            row = index.loc[pid]
            assert (row["status"], row["file"], row["sha256"]) == ("excluded", "", "")
            cached = json.loads((work / "preprocessed" / "cache" / f"{pid}.json").read_text())
            assert cached["status"] == "excluded" and cached["reason"] == row["reason"]
    on_disk = pd.read_csv(work / "preprocessed" / "index.csv", dtype=str, keep_default_na=False)
    assert set(on_disk.loc[on_disk["status"] == "ok", "patient_id"]) == npz
    classified = set(cohort.index[cohort["pfs_short"].notna() & cohort["has_imaging"]])
    models_see = classified & set(index.index[index["status"] == "ok"])
    assert models_see == {c.patient_id for c in CASES if c.classified}
    text = "".join(p.read_text() for p in work.rglob("*.csv"))
    assert not any(s in text for s in fac.FAKE_PHI.values())


def test_prrt_check_agrees_with_the_stages_patient_by_patient(corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "cohort.yaml").write_text(
        f"name: corpus\nclinical_table: {corpus / 'clinical.csv'}\nimaging_dir: {corpus / 'imaging'}\n"
        "pseudonymise: never\n"
    )
    result = check(CohortSource.load(tmp_path / "cohort.yaml"), n_jobs=2)
    usable = set(result.loc[result["usable"], "patient_id"])
    assert usable == {c.patient_id for c in CASES if c.classified}
    by_id = result.groupby("patient_id")["reason"].apply(" | ".join)
    for case in CASES:
        if case.stage:
            assert case.expect.split(" (")[0] in by_id[case.patient_id], (case, by_id[case.patient_id])
    assert any("decimal comma" in n for n in result.attrs["notes"])  # the hint for PRRT-028's '12,5'
