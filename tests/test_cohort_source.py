"""Unit tests of prrt_utils.data.cohort_source: a cohort description names every bad field in one error (issue 18)."""

from __future__ import annotations

import pytest

from prrt_utils.data import cohort_source
from prrt_utils.data.cohort_source import CohortSource, IntakeError


def test_two_bad_fields_are_both_named_in_one_error() -> None:
    with pytest.raises(IntakeError) as err:
        CohortSource(link="move", units={"ast_u_l": "mmol/l"})
    text = str(err.value)
    assert "2 problems" in text
    assert "link must be one of ['auto', 'hardlink', 'symlink', 'copy'], got 'move'" in text
    assert "units: ast_u_l in 'mmol/l' is not a unit we can convert" in text


def test_every_kind_of_problem_is_listed_together() -> None:
    with pytest.raises(IntakeError) as err:
        CohortSource(
            name="a b",
            image_format="dcm",
            decimal=";",
            pfs_threshold_months=0,
            columns={"cgA": "CgA"},
            dates={"therapy_start": "a"},
            nifti_files={"mask": "m.nii"},
            imaging_folder="PETCT",
            ct_labels="labels.nii.gz",
        )
    text = str(err.value)
    for words in (
        "name must be a short folder name",
        "image_format must be one of",
        "decimal must be one of ['.', ',']",
        "pfs_threshold_months must be a positive number",
        "columns: ['cgA'] are not columns of ours",
        "dates: needs",
        "nifti_files: unknown key(s) ['mask']",
        "imaging_folder must name the patient's folder with {id}",
        "ct_labels needs {id}",
    ):
        assert words in text, words
    assert "9 problems" in text


def test_field_types_are_checked_from_the_annotations() -> None:
    with pytest.raises(IntakeError, match="pfs_threshold_months must be a number, got '12'"):
        CohortSource(pfs_threshold_months="12")
    with pytest.raises(IntakeError, match="nifti_pet_units must be one of \\['', 'SUVbw'\\]"):
        CohortSource(nifti_pet_units="Bq/ml")
    with pytest.raises(IntakeError, match="columns must be a mapping"):
        CohortSource(columns=["patient_id"])
    assert CohortSource(pfs_threshold_months=6).pfs_threshold_months == 6


def test_one_problem_reads_as_itself() -> None:
    with pytest.raises(IntakeError) as err:
        CohortSource(link="move")
    assert str(err.value) == "link must be one of ['auto', 'hardlink', 'symlink', 'copy'], got 'move'"


def test_mappings_become_plain_text() -> None:
    source = CohortSource(
        values={"event": {"ja": 1, 0.0: None}}, columns={"event": 5}, registered_pet_ct="all"
    )
    assert source.values == {"event": {"ja": "1", "0": ""}}
    assert source.columns == {"event": "5"}
    assert source.registered_pet_ct == ("all",)


def test_unit_problem_refuses_by_reason_and_passes_known_units() -> None:
    assert cohort_source._unit_problem("ast_u_l", "µkat/l") == ""
    assert "assay units" in cohort_source._unit_problem("cga_ug_l", "U / l")
    assert "no unit conversion" in cohort_source._unit_problem("age_years", "months")
    assert cohort_source._unit_problem("not_ours", "x") == ""  # reported once, by the column check
