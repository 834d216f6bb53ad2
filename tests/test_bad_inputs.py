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
from make_bad_inputs import (
    CASES,
    LABEL_CODES,
    LATIN1_NOTE,
    LEADING_ZERO_UID,
    NON_UTF8_FOLDER,
    OTHER_PATIENT_ID,
    WITH_LABEL_MAP,
    Case,
    main,
)

from prrt_utils import cli
from prrt_utils.data import check as check_module
from prrt_utils.data import cohort as C
from prrt_utils.data import preprocess as P
from prrt_utils.data import qc
from prrt_utils.data.check import check
from prrt_utils.data.cohort import CohortConfig, build_cohort
from prrt_utils.data.cohort_source import CohortSource
from prrt_utils.data.preprocess import PreprocessConfig, load_volumes, prepare_patient, run_preprocessing
from prrt_utils.io import store
from prrt_utils.io.images import InputError
from prrt_utils.io.loading import load_patient

PLANTED = (*fac.FAKE_PHI.values(), OTHER_PATIENT_ID, LEADING_ZERO_UID)
"""Identifying strings of the corpus: none may reach a message, a log or an output."""

BY_ID = {c.patient_id: c for c in CASES}

_LABELS_YAML = "ct_labels: {}/ct_labels/{{id}}.nii.gz\nct_label_codes: ['0:background', '1:body', '3:liver']\n"
"""The corpus's CT label maps in a cohort YAML (the liver SUV rule needs them, in prrt check as in preprocessing)."""


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
    # the same problem as an error naming the patient (what on_error="stop" raises), from the one function
    # that gives the stage's and prrt check's verdict
    pid = case.patient_id
    labels = (str(corpus / "ct_labels" / f"{pid}.nii.gz"), LABEL_CODES) if pid in WITH_LABEL_MAP else None
    with pytest.raises(InputError) as err:
        prepare_patient(corpus / "imaging" / pid, pid, PreprocessConfig(), labels=labels)
    assert str(err.value).startswith(f"patient {case.patient_id}: ") and case.expect in str(err.value)
    assert str(corpus) not in str(err.value) and not any(s in str(err.value) for s in PLANTED)


def test_good_patients_and_documented_handling_complete_beside_the_broken_ones(stages: dict) -> None:
    index = stages["index"].set_index("patient_id")
    done = [c.patient_id for c in CASES if c.preprocessed]
    assert done[:5] == ["PRRT-001", "PRRT-002", "PRRT-003", "PRRT-004", "PRRT-005"] and len(done) == 13
    assert (index.loc[done, "status"] == "ok").all()
    vols = load_volumes(stages["work"], done)
    assert vols["pet"].shape == (13, 1, 75, 50, 50)
    # the same body and lesion however it was stored: plain DICOM, NIfTI, with junk files, in one flat folder,
    # a registered CT, a date-only StartDateTime, a SeriesTime after the acquisition (taken as the scan start,
    # SUV x2.1 / x0.5), compressed (JPEG 2000, RLE), files without preamble, weights written differently,
    # odd UIDs and folder names
    for k in range(1, len(done)):
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
    text = "".join(p.read_text() for p in work.rglob("*") if p.is_file() and p.suffix in (".csv", ".json", ".log"))
    assert not any(s in text for s in PLANTED)


def test_prrt_check_agrees_with_the_stages_patient_by_patient(corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "cohort.yaml").write_text(
        f"name: corpus\nclinical_table: {corpus / 'clinical.csv'}\nimaging_dir: {corpus / 'imaging'}\n"
        "pseudonymise: never\nencoding: latin-1\nregistered_pet_ct: [PRRT-036]\n" + _LABELS_YAML.format(corpus)
    )
    result = check(CohortSource.load(tmp_path / "cohort.yaml"), n_jobs=2)
    usable = set(result.loc[result["usable"], "patient_id"])
    assert usable == {c.patient_id for c in CASES if c.classified}
    by_id = result.groupby("patient_id")["reason"].apply(" | ".join)
    for case in CASES:
        if case.stage:
            assert case.expect.split(" (")[0] in by_id[case.patient_id], (case, by_id[case.patient_id])
    assert any("decimal comma" in n for n in result.attrs["notes"])  # the hint for PRRT-028's '12,5'


def test_prrt_check_and_preprocessing_give_the_same_verdict_for_every_patient_with_images(
    corpus: Path, stages: dict, tmp_path: Path
) -> None:
    # the verdict of check --quick (headers only) may only be milder; the full check is the stage's own
    (tmp_path / "cohort.yaml").write_text(
        f"name: corpus\nclinical_table: {corpus / 'clinical.csv'}\nimaging_dir: {corpus / 'imaging'}\n"
        "pseudonymise: never\nencoding: latin-1\nregistered_pet_ct: [PRRT-036]\n" + _LABELS_YAML.format(corpus)
    )
    result = check(CohortSource.load(tmp_path / "cohort.yaml"), n_jobs=2).set_index("patient_id")
    index = stages["index"].set_index("patient_id")
    compared = 0
    for pid, row in index.iterrows():
        if row["reason"].startswith("no imaging"):
            continue
        images_ok = result.at[pid, "pet"].startswith("ok") and result.at[pid, "ct"].startswith("ok")
        assert images_ok == (row["status"] == "ok"), (pid, row["reason"], result.loc[pid].to_dict())
        if row["status"] != "ok":
            assert row["reason"] in result.at[pid, "reason"]
        compared += 1
    assert compared >= 40


def test_the_qc_table_says_which_tags_gave_the_scan_start_and_the_injection(stages: dict) -> None:
    qc = pd.read_csv(stages["work"] / "preprocessed" / "qc.csv", dtype=str, keep_default_na=False)
    qc = qc.set_index("patient_id")
    assert qc.at["PRRT-001", "pet_scan_start_from"] == "SeriesDate/SeriesTime"
    assert qc.at["PRRT-043", "pet_scan_start_from"].startswith("AcquisitionDate/AcquisitionTime (earliest)")
    assert qc.at["PRRT-001", "pet_injection_from"] == "RadiopharmaceuticalStartDateTime"
    assert qc.at["PRRT-042", "pet_injection_from"] == "RadiopharmaceuticalStartTime (date from StartDateTime)"
    assert qc.at["PRRT-036", "pet_ct_registered"] == "True" and qc.at["PRRT-001", "pet_ct_registered"] == "False"
    assert qc.at["PRRT-001", "pet_nuclide"] == "Ga-68"
    # the liver rule ran where a label map exists (the body's SUV 1 in the liver block), and only there
    assert float(qc.at["PRRT-001", "liver_suv_median"]) == pytest.approx(1.0, abs=0.02)
    assert qc.at["PRRT-002", "liver_suv_median"] == ""
    # the body-mass rule ran wherever a weight is known: 29 kg of body in the CT for 70 kg
    assert float(qc.at["PRRT-001", "ct_body_mass_to_weight"]) == pytest.approx(0.416, abs=0.01)
    assert qc.at["PRRT-002", "ct_body_mass_to_weight"] == ""  # NIfTI in SUV without a weight


def test_a_registered_pair_is_refused_unless_the_cohort_allows_it(corpus: Path) -> None:
    with pytest.raises(InputError, match="disagree on StudyInstanceUID, FrameOfReferenceUID"):
        load_patient(corpus / "imaging" / "PRRT-036", "PRRT-036")
    assert load_patient(corpus / "imaging" / "PRRT-036", "PRRT-036", registered=True).ct.meta["registered_pair"]
    # a registered pair must still be one patient
    with pytest.raises(InputError, match="disagree on PatientID"):
        load_patient(corpus / "imaging" / "PRRT-033", "PRRT-033", registered=True)


def test_pydicoms_warnings_about_header_values_never_show_the_value(
    corpus: Path, capfd: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import warnings

    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        images = load_patient(corpus / "imaging" / "PRRT-051", "PRRT-051")
    assert images.pet.meta["header_messages"]["Invalid value for VR UI"] >= 1  # counted by kind
    said = capfd.readouterr()
    text = said.out + said.err + " ".join(str(w.message) for w in seen) + caplog.text
    assert "Invalid value for VR UI" in caplog.text  # told, in the project's words
    assert LEADING_ZERO_UID not in text and "0123" not in text


def test_prrt_check_and_preprocess_print_no_header_value_even_with_v(
    corpus: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    # PRRT-051's UIDs make pydicom warn with the whole UID; PRRT-033's CT names another PatientID
    import shutil

    data = tmp_path / "data"
    for pid in ("PRRT-051", "PRRT-033"):
        shutil.copytree(corpus / "imaging" / pid, data / "imaging" / pid)
    work = tmp_path / "w"
    assert cli.main(["preprocess", "--data", str(data), "--work", str(work), "--jobs", "2", "-v"]) == 0
    (tmp_path / "cohort.yaml").write_text(
        f"name: two\nclinical_table: {corpus / 'clinical.csv'}\nimaging_dir: {data / 'imaging'}\n"
        "pseudonymise: never\nencoding: latin-1\n"
    )
    assert cli.main(["check", str(tmp_path / "cohort.yaml"), "--work", str(work), "--jobs", "2", "-v"]) == 0
    said = capfd.readouterr()
    text = said.out + said.err
    assert "PRRT-051" in text and "disagree on PatientID" in text  # the run said something, in its own words
    assert not any(s in text for s in PLANTED) and "0123" not in text
    logs = "".join(p.read_text() for p in work.rglob("*") if p.is_file() and p.suffix in (".csv", ".json", ".log"))
    assert not any(s in logs for s in PLANTED)


def test_an_id_that_leaves_its_folder_never_touches_a_file_outside_it(corpus: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "preprocessed").mkdir(parents=True)
    victim = work / "victim.npz"
    victim.write_bytes(b"somebody else's file")
    index = run_preprocessing(PreprocessConfig(), ["../victim", "PRRT-001"], corpus / "imaging", work, progress=False)
    assert victim.read_bytes() == b"somebody else's file"
    assert index["status"].tolist() == ["excluded", "ok"]
    assert "cannot name a folder safely" in index["reason"].iloc[0]
    for bad in ("../victim", "..", "a/b", "a\\b", "/etc", ""):
        with pytest.raises(store.UnsafePathError):
            store.child(work, bad)


def test_a_latin1_table_is_read_with_a_warning_by_prrt_cohort(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    raw = (corpus / "clinical.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")  # the corpus table really is Latin-1
    assert LATIN1_NOTE.encode("latin-1") in raw
    assert cli.main(["cohort", "--data", str(corpus), "--work", str(tmp_path / "w")]) == 0
    assert "clinical.csv is not UTF-8: read as cp1252" in capsys.readouterr().err
    assert C.read_clinical_text(corpus / "clinical.csv").attrs["encoding"] == "cp1252"


def test_a_folder_name_that_is_not_utf8_stops_nothing(corpus: Path, stages: dict, tmp_path: Path) -> None:
    import os

    assert (corpus / "imaging" / os.fsdecode(NON_UTF8_FOLDER)).is_dir()
    # without a cohort table every folder is processed: the odd one is excluded, the others go on
    index = run_preprocessing(PreprocessConfig(), None, corpus / "imaging", tmp_path / "w", progress=False, n_jobs=2)
    row = index.set_index("patient_id").loc["PRRT-056-\\xe9"]
    assert row["status"] == "excluded" and "not UTF-8" in row["reason"]
    good_images = {c.patient_id for c in CASES if c.preprocessed} | {"PRRT-023", "PRRT-032"}  # bad rows only
    assert set(index.loc[index["status"] == "ok", "patient_id"]) == good_images
    assert stages["index"].set_index("patient_id").at["PRRT-052", "status"] == "ok"  # its sub-folder is not UTF-8


def test_prrt_preprocess_exits_non_zero_when_nothing_is_usable(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import shutil

    data = tmp_path / "data"
    for pid in ("PRRT-016", "PRRT-037"):
        shutil.copytree(corpus / "imaging" / pid, data / "imaging" / pid)
    args = ["preprocess", "--data", str(data), "--work", str(tmp_path / "w"), "--jobs", "1", "--quiet"]
    assert cli.main(args) == 1
    assert "0 of 2 patients preprocessed" in capsys.readouterr().out


def test_an_unexpected_error_leaves_a_scrubbed_traceback_in_the_work_folder(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = corpus / "imaging" / "PRRT-001"

    def broken(images, cfg):
        raise ValueError(f"cannot use {LEADING_ZERO_UID!r} from {folder / 'pet'}")

    monkeypatch.setattr(P, "preprocess_patient", broken)
    work = tmp_path / "work"
    index = run_preprocessing(PreprocessConfig(), ["PRRT-001"], corpus / "imaging", work, progress=False)
    reason = index["reason"].iloc[0]
    assert reason.startswith("unexpected ValueError: cannot use") and "logs/debug.log" in reason
    log = (work / "logs" / "debug.log").read_text()
    assert "Traceback" in log and "preprocess patient PRRT-001" in log and "def broken" not in log
    assert "broken" in log  # the frame that raised is named
    for secret in (LEADING_ZERO_UID, str(corpus), str(tmp_path)):
        assert secret not in reason and secret not in log


def test_prrt_check_keeps_a_scrubbed_traceback_of_an_unexpected_error_in_its_work_folder(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # prrt check has no stage folder of its own: --work names where the debug log goes, as for preprocess
    folder = corpus / "imaging" / "PRRT-001"

    def broken(*args, **kwargs):
        raise ValueError(f"cannot use {LEADING_ZERO_UID!r} from {folder / 'pet'}")

    monkeypatch.setattr(check_module, "prepare_patient", broken)  # the name prrt check calls
    (tmp_path / "cohort.yaml").write_text(
        f"name: corpus\nclinical_table: {corpus / 'clinical.csv'}\nimaging_dir: {corpus / 'imaging'}\n"
        "pseudonymise: never\nencoding: latin-1\n"
    )
    work = tmp_path / "work"
    assert cli.main(["check", str(tmp_path / "cohort.yaml"), "--work", str(work), "--jobs", "1", "--quiet"]) == 1
    printed = capsys.readouterr()
    line = next(s for s in printed.out.splitlines() if s.startswith("PRRT-001 (line 2): "))
    assert "unexpected ValueError: cannot use" in line and "logs/debug.log of the work folder" in line
    log = (work / "logs" / "debug.log").read_text()
    assert "Traceback" in log and "check patient PRRT-001" in log and "broken" in log
    assert sorted(p.name for p in work.rglob("*") if p.is_file()) == ["debug.log"]  # nothing else is written
    for secret in (LEADING_ZERO_UID, str(corpus), str(tmp_path)):
        assert secret not in log and secret not in printed.out + printed.err
    # without a work folder (the library call) the reason points to -v instead, and nothing is written
    result = check(CohortSource.load(tmp_path / "cohort.yaml"), n_jobs=1)
    reason = result.set_index("patient_id").at["PRRT-001", "reason"]
    assert "prrt check -v shows the traceback" in reason


def test_every_path_named_after_a_patient_refuses_an_id_that_leaves_its_folder(tmp_path: Path) -> None:
    # the cohort stage refuses such ids first; each join must refuse them anyway (issue 16: never lose a file)
    from prrt_utils.data import anatomy
    from prrt_utils.synthetic import export as synth_export

    work = tmp_path / "work"
    out = work / "preprocessed"
    (out / "cache").mkdir(parents=True)
    (work / "victim.json").write_text("{}")
    for bad in ("../victim", "a/b", "/etc/passwd"):  # ('..' + '.json' is a plain, if odd, name)
        with pytest.raises(store.UnsafePathError):
            P._cached(out, bad, "", PreprocessConfig())  # cache/<id>.json
        with pytest.raises(store.UnsafePathError):
            anatomy.label_map_path(tmp_path, bad)  # ct_labels/<id>.nii.gz
        with pytest.raises(store.UnsafePathError):
            synth_export._patient_done(tmp_path, bad)  # imaging/<id>, ground_truth/*/<id>.nii.gz
        with pytest.raises(store.UnsafePathError):
            qc.harmonisation_summary(tmp_path / "imaging", [bad])
    # an index.csv edited by hand cannot lead a read elsewhere either
    pd.DataFrame({"patient_id": ["PRRT-001"], "status": ["ok"], "reason": [""], "file": ["../victim.json"],
                  "sha256": [""]}).to_csv(out / "index.csv", index=False)
    with pytest.raises(store.UnsafePathError):
        load_volumes(work, ["PRRT-001"])
    assert (work / "victim.json").read_text() == "{}"


@pytest.mark.parametrize(
    "pid",
    ["../victim", ".hidden", "a/b", "a\\b", "", " PRRT-1", "PRRT-1 ", "PRRT-1.", "x" * 65, "PRRT\x00", "PRRT:1"],
)
def test_the_cohort_stage_refuses_an_id_that_cannot_name_a_folder_safely(pid: str) -> None:
    assert "cannot name a folder safely" in C.patient_id_problem(pid)


@pytest.mark.parametrize("pid", ["PRRT-001", "c03", "Patient 7", "A.1_b-2", "x" * 64])
def test_plain_study_ids_pass_the_id_rule(pid: str) -> None:
    assert C.patient_id_problem(pid) == ""
