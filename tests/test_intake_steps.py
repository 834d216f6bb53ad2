"""Unit tests of the named steps of prrt_utils.data.intake (issue 18: short functions, one error for every bad field)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from prrt_utils.data import intake
from prrt_utils.data.intake import CohortSource, IntakeError


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
    assert intake._unit_problem("ast_u_l", "µkat/l") == ""
    assert "assay units" in intake._unit_problem("cga_ug_l", "U / l")
    assert "no unit conversion" in intake._unit_problem("age_years", "months")
    assert intake._unit_problem("not_ours", "x") == ""  # reported once, by the column check


@pytest.mark.parametrize(
    ("ids", "mode", "expected"),
    [
        (["PRRT-001", "NET12", ""], "auto", (False, False)),
        (["PRRT-001", "12345678"], "auto", (True, True)),
        (["PRRT-001"], "always", (True, False)),
        (["12345678"], "never", (False, True)),
    ],
)
def test_ids_are_hidden_when_asked_or_when_any_looks_like_a_hospital_id(
    ids: list[str], mode: str, expected: tuple[bool, bool]
) -> None:
    assert intake._hides_ids(pd.Series(ids), mode) == expected


def test_id_note_says_what_happened_to_ids() -> None:
    assert "pseudonymised (pseudonymise: auto)" in intake._id_note("auto", True, True)[3]
    assert "look like hospital ids" in intake._id_note("never", False, True)[3]
    assert intake._id_note("auto", False, False) is None


def test_registered_ids_keep_table_order_once_each_under_pseudonyms() -> None:
    source = CohortSource(registered_pet_ct=("B", "C"))
    raw = pd.Series(["C", "A", "B", "C", ""])
    assert intake._registered_ids(source, raw, {"B": "P-b"}) == ["C", "P-b"]
    every = CohortSource(registered_pet_ct="all")
    assert intake._registered_ids(every, raw, {}) == ["C", "A", "B"]


def test_an_intake_is_current_only_with_the_same_key_and_a_foreign_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert not intake._intake_is_current(out, {"k": 1})
    out.mkdir()
    (out / "clinical.csv").write_text("x\n")
    (out / "intake.json").write_text("{}")
    (out / "done.json").write_text('{"k": 1}')
    assert intake._intake_is_current(out, {"k": 1})
    assert not intake._intake_is_current(out, {"k": 2})
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("x")
    with pytest.raises(IntakeError, match="is not an intake folder"):
        intake._intake_is_current(foreign, {"k": 1})


def test_replace_folder_swaps_contents(tmp_path: Path) -> None:
    out, new = tmp_path / "out", tmp_path / "new"
    out.mkdir()
    (out / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    intake._replace_folder(new, out)
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize(
    ("text", "decimal", "factor", "expected"),
    [
        ("12.50", ".", None, "12.50"),  # unchanged: already ours
        ("12,5", ",", None, "12.5"),
        ("0,5", ",", 60.0, "30"),
        ("2", ".", 0.001, "0.002"),
        ("n/a", ".", None, None),
        ("12,5", ".", None, None),
    ],
)
def test_converted_cell(text: str, decimal: str, factor: float | None, expected: str | None) -> None:
    assert intake._converted_cell(text, decimal, factor) == expected


def test_locate_columns_by_name_or_mapping_and_refuse_missing_ones(tmp_path: Path) -> None:
    raw = pd.DataFrame(columns=["ID", "event", "ast_u_l", "alt_u_l", "cga_ug_l", "ggt_u_l", "PFS"])
    source = CohortSource(base_dir=str(tmp_path), columns={"patient_id": "ID", "pfs_months": "PFS"})
    where = intake._locate_columns(raw, source)
    assert where["patient_id"] == "ID" and where["pfs_months"] == "PFS" and where["age_years"] is None
    with pytest.raises(IntakeError, match="has no column 'Pat' \\(columns: patient_id\\)"):
        intake._locate_columns(raw, CohortSource(base_dir=str(tmp_path), columns={"patient_id": "Pat"}))
    with pytest.raises(IntakeError, match="lacks required column\\(s\\) \\['patient_id', 'pfs_months'\\]"):
        intake._locate_columns(raw, CohortSource(base_dir=str(tmp_path)))
