"""Unit tests of the named steps of prrt_utils.data.intake (issue 18: short functions, one error for every bad field)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from prrt_utils.data import intake
from prrt_utils.data.cohort_source import CohortSource, IntakeError


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
