"""Unit tests of the named steps of prrt_utils.data.cohort.load_clinical (issue 18: short functions)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from prrt_utils.data import cohort


def _lines(n: int) -> pd.Series:
    return pd.Series(np.arange(n) + 2)


@pytest.mark.parametrize(
    ("col", "text", "expected"),
    [
        ("age_years", "61", ""),
        ("age_years", "0", "column age_years = 0 is implausible (expected > 0 and <= 120 years)"),
        ("ki67_pct", "0", ""),  # closed at 0
        ("ki67_pct", "-1", "column ki67_pct is negative (-1)"),
        ("ki67_pct", "100.5", "column ki67_pct = 100.5 is implausible (expected >= 0 and <= 100 %)"),
        ("event", "2", "column event is '2'; expected 0 or 1"),
        ("prrt_cycles", "3.5", "column prrt_cycles is '3.5'; expected a whole number"),
        ("met_osseous", "1", ""),
    ],
)
def test_number_problem(col: str, text: str, expected: str) -> None:
    assert cohort._number_problem(col, text, float(text)) == expected


def test_number_problem_names_text_that_is_not_a_number() -> None:
    assert cohort._number_problem("ast_u_l", "12,5", math.nan) == "column ast_u_l has '12,5' where a number is expected"


def test_id_problems_by_kind_missing_unsafe_case_and_repeated() -> None:
    ids = pd.Series(["A-1", "", "../x", "a-1", "B-2", "B-2"])
    found = cohort._id_problems(ids, _lines(6), "clinical.csv")
    assert [i for i, _ in found] == [1, 2, 0, 3, 4, 5]
    messages = [m for _, m in found]
    assert messages[0] == "row at line 3 has no patient_id"
    assert messages[1].startswith("patient ../x: the patient id cannot name a folder safely")
    assert "ids A-1 and a-1 differ only in case (lines 2, 5)" in messages[2]
    assert messages[4] == "patient B-2 appears 2 times in clinical.csv (lines 6, 7); keep one row per patient"


def test_parse_numbers_flags_missing_must_haves_only() -> None:
    raw = pd.DataFrame({c: ["1", "1"] for c in cohort.CLINICAL_COLUMNS})
    raw["patient_id"] = ["A-1", "A-2"]
    raw["ast_u_l"] = ["", "30"]
    raw["ki67_pct"] = ["", "5"]  # optional: empty is NaN without a problem
    parsed, found = cohort._parse_numbers(raw, _lines(2))
    assert found == [(0, "patient A-1: missing lab value ast_u_l")]
    assert math.isnan(parsed["ki67_pct"][0]) and parsed["ast_u_l"][1] == 30.0


def test_parse_categories_canonical_spelling_and_unknowns() -> None:
    raw = pd.DataFrame({c: [""] * 2 for c in cohort.CLINICAL_COLUMNS})
    raw["patient_id"] = ["A-1", ""]
    raw["sex"] = ["m", "x"]
    cats, found = cohort._parse_categories(raw, _lines(2))
    assert cats["sex"][0] == "M"
    assert found == [(1, "row at line 3 (no patient_id): column sex is 'x'; expected one of ['M', 'F']")]


def test_clinical_frame_types_and_order() -> None:
    ids = pd.Series(["A-1"])
    parsed = {c: pd.Series([1.0]) for c in cohort.NUMERIC_COLUMNS}
    cats = {c: pd.Series([allowed[0]]) for c, allowed in cohort.CATEGORIES.items()}
    df = cohort._clinical_frame(ids, parsed, cats)
    assert list(df.columns) == list(cohort.CLINICAL_COLUMNS)
    assert str(df["prrt_cycles"].dtype) == "Int64" and str(df["event"].dtype) == "Int64"
    assert df["ast_u_l"].dtype == float and df["sex"][0] == "M"
