"""Cohort stage (prrt_utils.data.cohort): validation, outputs, the Kaplan-Meier figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prrt_utils.data import cohort as C
from prrt_utils.data.cohort import CohortConfig, CohortError, build_cohort, load_clinical
from prrt_utils.io import store

PFS = [6.0, 12.0, 18.0, 24.0, 9.0, 30.0]  # PRRT-002 sits exactly on the 12-month threshold


def clinical(n: int = 6) -> pd.DataFrame:
    """A valid clinical table of ``n`` patients, every cell as text (as a CSV holds it)."""
    df = pd.DataFrame(
        {
            "patient_id": [f"PRRT-{i:03d}" for i in range(1, n + 1)],
            "age_years": [str(50 + i) for i in range(n)],
            "sex": ["M", "F"] * (n // 2) + ["M"] * (n % 2),
            "primary_site": "pancreas",
            "met_hepatic": "1",
            "met_lymphonodal": "0",
            "met_osseous": "0",
            "met_peritoneal": "0",
            "met_pulmonal": "0",
            "functional": "no",
            "grade": "G2",
            "ki67_pct": "5",
            "prrt_cycles": "4",
            "pfs_months": [str(PFS[i % len(PFS)]) for i in range(n)],
            "event": "1",
            "ast_u_l": "30",
            "alt_u_l": "20",
            "cga_ug_l": "100",
            "ggt_u_l": "50",
        }
    )
    return df.astype(object)


def write_data(root: Path, df: pd.DataFrame, images: list[str] | None = None) -> Path:
    data = root / "data"
    (data / "imaging").mkdir(parents=True, exist_ok=True)
    df.to_csv(data / "clinical.csv", index=False)
    for pid in df["patient_id"] if images is None else images:
        (data / "imaging" / pid / "ct").mkdir(parents=True, exist_ok=True)
        (data / "imaging" / pid / "ct" / "1.dcm").write_bytes(b"x")
    return data


def run(tmp_path: Path, df: pd.DataFrame, images=None, **cfg) -> tuple[pd.DataFrame, pd.DataFrame]:
    data = write_data(tmp_path, df, images)
    out = build_cohort(CohortConfig(**cfg), data, tmp_path / "work")
    return out, C.read_exclusions(tmp_path / "work")


# --------------------------------------------------------------------------- valid input


def test_a_valid_table_gives_the_derived_columns_and_no_exclusions(tmp_path):
    out, excl = run(tmp_path, clinical())
    assert list(out["patient_id"]) == [f"PRRT-{i:03d}" for i in range(1, 7)]
    assert out["de_ritis"].tolist() == pytest.approx([1.5] * 6)  # AST 30 / ALT 20
    assert out["pfs_short"].tolist() == [1, 1, 0, 0, 1, 0]  # 12.0 months is short (<= threshold)
    assert out["has_imaging"].all() and excl.empty
    assert set(out.columns) == set(C.CLINICAL_COLUMNS) | set(C.DERIVED_COLUMNS)
    written = tmp_path / "work" / "cohort"
    assert CohortConfig.from_yaml(written / "config.yaml") == CohortConfig()
    assert json.loads((written / "done.json").read_text())["config_hash"] == CohortConfig().hash()


def test_threshold_boundary_belongs_to_the_short_group_for_any_threshold(tmp_path):
    out, _ = run(tmp_path, clinical(), pfs_threshold_months=18.0)
    assert out["pfs_short"].tolist() == [1, 1, 1, 0, 1, 0]


def test_extra_columns_of_the_export_are_never_copied(tmp_path):
    df = clinical().assign(name="Doe^Jane", birth_date="19500101")
    run(tmp_path, df)
    text = (tmp_path / "work" / "cohort" / "cohort.csv").read_text()
    assert "Doe" not in text and "19500101" not in text and "birth" not in text


def test_categories_are_matched_case_insensitively_and_stored_canonically(tmp_path):
    df = clinical()
    df.loc[0, ["sex", "grade", "functional", "primary_site"]] = ["f", "g1", "Yes", "CUP"]
    out, excl = run(tmp_path, df)
    assert excl.empty
    assert out.loc[0, ["sex", "grade", "functional", "primary_site"]].tolist() == ["F", "G1", "yes", "cup"]


def test_missing_descriptive_values_are_allowed(tmp_path):
    df = clinical()
    df.loc[1, ["ki67_pct", "grade"]] = ["", ""]
    out, excl = run(tmp_path, df)
    assert excl.empty and np.isnan(out.loc[1, "ki67_pct"]) and pd.isna(out.loc[1, "grade"])


# --------------------------------------------------------------------------- bad input

BAD_CELLS = [
    ("ast_u_l", "n/a", ["PRRT-003", "ast_u_l", "'n/a'", "number"]),
    ("alt_u_l", "12,5", ["PRRT-003", "alt_u_l", "'12,5'"]),
    ("cga_ug_l", "<5", ["PRRT-003", "cga_ug_l", "'<5'"]),
    ("age_years", "sixty", ["PRRT-003", "age_years", "'sixty'"]),
    ("ggt_u_l", "-5", ["PRRT-003", "ggt_u_l", "negative"]),
    ("ast_u_l", "28000", ["PRRT-003", "ast_u_l", "28000", "implausible"]),
    ("age_years", "130", ["PRRT-003", "age_years", "130", "implausible"]),
    ("alt_u_l", "0", ["PRRT-003", "alt_u_l", "implausible"]),  # De Ritis would divide by zero
    ("ggt_u_l", "", ["PRRT-003", "missing lab value ggt_u_l"]),
    ("pfs_months", "", ["PRRT-003", "missing", "pfs_months"]),
    ("event", "2", ["PRRT-003", "event", "0 or 1"]),
    ("prrt_cycles", "3.5", ["PRRT-003", "prrt_cycles", "whole number"]),
    ("sex", "X", ["PRRT-003", "sex", "'X'", "expected one of"]),
    ("grade", "G4", ["PRRT-003", "grade", "'G4'"]),
]


@pytest.mark.parametrize(("column", "value", "words"), BAD_CELLS)
def test_a_bad_cell_excludes_only_its_patient_and_names_patient_column_and_value(
    tmp_path, column, value, words
):
    df = clinical()
    df.loc[2, column] = value
    out, excl = run(tmp_path, df)
    assert "PRRT-003" not in set(out["patient_id"]) and len(out) == 5
    assert excl["patient_id"].tolist() == ["PRRT-003"] and excl["stage"].tolist() == ["cohort"]
    for word in words:
        assert word in excl["reason"].iloc[0]


@pytest.mark.parametrize(("column", "value", "words"), BAD_CELLS[:3] + BAD_CELLS[8:9])
def test_with_on_error_stop_a_bad_cell_raises_naming_the_patient(tmp_path, column, value, words):
    df = clinical()
    df.loc[2, column] = value
    with pytest.raises(CohortError) as err:
        run(tmp_path, df, on_error="stop")
    for word in words:
        assert word in str(err.value)
    assert not (tmp_path / "work" / "cohort" / "cohort.csv").exists()


def test_stop_raises_the_first_problem_in_file_order(tmp_path):
    df = clinical()
    df.loc[4, "ast_u_l"] = "n/a"
    df.loc[1, "cga_ug_l"] = "-1"
    data = write_data(tmp_path, df)
    with pytest.raises(CohortError, match="PRRT-002"):
        load_clinical(data / "clinical.csv", CohortConfig(on_error="stop"))
    kept, problems = load_clinical(data / "clinical.csv", CohortConfig())
    assert problems["patient_id"].tolist() == ["PRRT-002", "PRRT-005"] and len(kept) == 4


def test_duplicate_ids_exclude_every_copy_and_name_the_lines(tmp_path):
    df = clinical()
    df.loc[3, "patient_id"] = "PRRT-002"
    out, excl = run(tmp_path, df, images=[f"PRRT-{i:03d}" for i in (1, 2, 3, 5, 6)])
    assert "PRRT-002" not in set(out["patient_id"]) and len(out) == 4
    reason = excl.loc[excl["patient_id"] == "PRRT-002", "reason"].iloc[0]
    assert "appears 2 times" in reason and "lines 3, 5" in reason
    with pytest.raises(CohortError, match="PRRT-002 appears 2 times"):
        run(tmp_path, df, on_error="stop")


def test_a_missing_column_is_named_whatever_the_error_policy(tmp_path):
    df = clinical().drop(columns=["ggt_u_l", "event"])
    for policy in ("skip", "stop"):
        with pytest.raises(CohortError, match=r"lacks required column\(s\) \['event', 'ggt_u_l'\]"):
            run(tmp_path, df, on_error=policy)


def test_a_semicolon_separated_export_gets_a_hint(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    clinical().to_csv(data / "clinical.csv", index=False, sep=";")
    with pytest.raises(CohortError, match="semicolon"):
        load_clinical(data / "clinical.csv")


def test_patients_without_images_stay_in_the_table_but_are_listed(tmp_path):
    images = [f"PRRT-{i:03d}" for i in (1, 2, 3, 4)]
    data = write_data(tmp_path, clinical(), images)
    (data / "imaging" / "PRRT-006").mkdir()  # a folder with no file counts as no images
    out = build_cohort(CohortConfig(), data, tmp_path / "work")
    excl = C.read_exclusions(tmp_path / "work").set_index("patient_id")
    assert len(out) == 6
    assert out.set_index("patient_id")["has_imaging"].to_dict() == {
        "PRRT-001": True,
        "PRRT-002": True,
        "PRRT-003": True,
        "PRRT-004": True,
        "PRRT-005": False,
        "PRRT-006": False,
    }
    assert "no imaging folder" in excl.loc["PRRT-005", "reason"]
    assert "imaging folder is empty" in excl.loc["PRRT-006", "reason"]
    assert out.set_index("patient_id").loc["PRRT-005", "note"] == "no imaging"
    with pytest.raises(CohortError, match="PRRT-005: no imaging folder"):
        build_cohort(CohortConfig(on_error="stop"), data, tmp_path / "work2")


def test_image_folders_without_a_clinical_row_are_listed(tmp_path):
    images = [f"PRRT-{i:03d}" for i in range(1, 7)] + ["PRRT-099"]
    out, excl = run(tmp_path, clinical(), images)
    assert len(out) == 6
    assert excl["patient_id"].tolist() == ["PRRT-099"]
    assert "imaging folder without clinical row" in excl["reason"].iloc[0]
    with pytest.raises(CohortError, match="PRRT-099: imaging folder without clinical row"):
        build_cohort(CohortConfig(on_error="stop"), tmp_path / "data", tmp_path / "work2")


def test_a_patient_with_a_bad_row_is_not_an_orphan_image_folder(tmp_path):
    df = clinical()
    df.loc[0, "ast_u_l"] = "n/a"
    _, excl = run(tmp_path, df)
    assert excl["patient_id"].tolist() == ["PRRT-001"]
    assert "without clinical row" not in excl["reason"].iloc[0]


def test_censored_patients_are_not_classified_as_in_the_paper(tmp_path):
    df = clinical()
    df.loc[[0, 5], "event"] = "0"  # censored at 6 and at 30 months
    out, excl = run(tmp_path, df)
    assert out["pfs_short"].isna().tolist() == [True, False, False, False, False, True]
    assert "censored at 6 months" in out["note"].iloc[0]
    assert set(excl["patient_id"]) == {"PRRT-001", "PRRT-006"}
    # Censored after the threshold is known to be long PFS when events are not required.
    out2 = build_cohort(CohortConfig(require_event=False), tmp_path / "data", tmp_path / "work")
    assert pd.isna(out2["pfs_short"].iloc[0]) and out2["pfs_short"].iloc[5] == 0
    # Censoring is a property of the data, not an error: "stop" does not raise.
    build_cohort(CohortConfig(on_error="stop"), tmp_path / "data", tmp_path / "work3")


# --------------------------------------------------------------------------- idempotence, atomicity


def test_a_second_run_with_the_same_inputs_does_nothing(tmp_path, monkeypatch):
    first, _ = run(tmp_path, clinical())
    monkeypatch.setattr(C, "load_clinical", lambda *a, **k: pytest.fail("recomputed"))
    again = build_cohort(CohortConfig(), tmp_path / "data", tmp_path / "work")
    pd.testing.assert_frame_equal(first, again)


@pytest.mark.parametrize("change", ["config", "clinical", "imaging"])
def test_a_changed_input_or_config_is_recomputed(tmp_path, change):
    run(tmp_path, clinical())
    data, cfg = tmp_path / "data", CohortConfig()
    if change == "config":
        cfg = cfg.replace(pfs_threshold_months=20.0)
    elif change == "clinical":
        clinical().assign(ast_u_l="40").to_csv(data / "clinical.csv", index=False)
    else:
        (data / "imaging" / "PRRT-099").mkdir()
        (data / "imaging" / "PRRT-099" / "a").write_bytes(b"x")
    out = build_cohort(cfg, data, tmp_path / "work")
    excl = C.read_exclusions(tmp_path / "work")
    if change == "config":
        assert out["pfs_short"].tolist() == [1, 1, 1, 0, 1, 0]
    elif change == "clinical":
        assert out["de_ritis"].tolist() == pytest.approx([2.0] * 6)
    else:
        assert excl["patient_id"].tolist() == ["PRRT-099"]


def test_an_interrupted_write_leaves_no_partial_file_and_is_redone(tmp_path, monkeypatch):
    run(tmp_path, clinical())
    data, cohort_dir = tmp_path / "data", tmp_path / "work" / "cohort"
    clinical().assign(ast_u_l="40").to_csv(data / "clinical.csv", index=False)
    real = store.write_csv

    def crash(path, frame, **kw):
        if Path(path).name == "exclusions.csv":
            raise OSError("disk full")
        real(path, frame, **kw)

    monkeypatch.setattr(store, "write_csv", crash)
    with pytest.raises(OSError):
        build_cohort(CohortConfig(), data, tmp_path / "work")
    assert not list(cohort_dir.glob("*.part")) and not list(cohort_dir.glob(".*"))
    assert not (cohort_dir / "done.json").exists()  # the half-done run is never taken as complete
    monkeypatch.setattr(store, "write_csv", real)
    out = build_cohort(CohortConfig(), data, tmp_path / "work")
    assert out["de_ritis"].tolist() == pytest.approx([2.0] * 6)


# --------------------------------------------------------------------------- model inputs


def test_lab_inputs_never_include_post_baseline_or_outcome_columns():
    from prrt_utils.models import networks

    assert not set(C.LAB_COLUMNS) & set(C.FORBIDDEN_INPUTS)
    assert networks.LAB_COLUMNS == C.LAB_COLUMNS  # every model's "labs" input is this list
    for key, spec in networks.load_registry().items():
        assert set(spec.inputs) <= {"labs", "pet", "ct"}, key
        text = (networks.models_dir() / f"{key}.yaml").read_text()
        assert not [c for c in C.FORBIDDEN_INPUTS if c in text], key


# --------------------------------------------------------------------------- Kaplan-Meier figure
