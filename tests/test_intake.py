"""Own-cohort mode (prrt_utils.data.intake): a centre's export laid out unlike ours, run as book/own_cohort.md says.

The export of these tests is the one the how-to describes and
``examples/cohort.example.yaml`` reads: a semicolon-separated cp1252 table with
German column names, decimal commas, enzymes in ukat/l, CgA in ng/ml, dates
instead of PFS months, ja/nein flags, 8-digit hospital ids, names and birth
dates, and DICOM folders named ``Pat_<hospital id>`` with sub-folders.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import dicom_factory as fac
import numpy as np
import pandas as pd
import pytest

from prrt_utils import cli
from prrt_utils.data import intake
from prrt_utils.data.check import CHECK_COLUMNS, check
from prrt_utils.data.cohort import CLINICAL_COLUMNS, CohortConfig, build_cohort
from prrt_utils.data.cohort_source import CohortSource, IntakeError
from prrt_utils.data.intake import looks_like_study_id, pseudonym
from prrt_utils.io.loading import load_patient
from prrt_utils.report.book import BookConfig, resolve_cohort

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "cohort.example.yaml"

HEADER = [
    "Fallnummer",
    "Name",
    "Geburtsdatum",
    "Alter",
    "Geschlecht",
    "Primarius",
    "Leber-Met",
    "LK-Met",
    "Knochen-Met",
    "Peritoneal-Met",
    "Lungen-Met",
    "Funktionell",
    "Grading",
    "Ki-67 (%)",
    "Zyklen",
    "Datum 1. Zyklus",
    "Datum Progress/letzte Kontrolle",
    "Progress",
    "GOT (ukat/l)",
    "GPT (ukat/l)",
    "GGT (ukat/l)",
    "CgA (ng/ml)",
]
#: id, name, birth date, start, end, event, AST, CgA; every other cell is the same valid value
ROWS = [
    ("12345678", "Quackenbush^Walpurga", "03.02.1951", "15.01.2020", "15.01.2021", "ja", "0,5", "1.234,5"),
    ("87654321", "Zwiebelfinger^Hubert", "11.11.1948", "01.03.2021", "01.09.2021", "ja", "0,6", "88"),
    ("55501234", "Pfefferkorn^Agathe", "24.12.1960", "01.06.2020", "01.06.2022", "nein", "0,5", "120"),
    ("44401234", "Kesselring^Oswin", "01.01.1955", "31.02.2021", "01.09.2021", "ja", "0,5", "120"),
    ("33301234", "Brombeerweg^Ida", "07.07.1957", "01.09.2021", "01.03.2021", "ja", "0,5", "120"),
    ("22201234", "Haselnuss^Egon", "09.09.1959", "01.03.2021", "01.03.2022", "ja", "0,5", "<5"),
]
WITH_IMAGES = ("12345678", "87654321", "44401234")
ORPHAN = "99901234"
SECRETS = (
    [r[0] for r in ROWS]
    + [ORPHAN]
    + [r[1] for r in ROWS]
    + [r[2] for r in ROWS]
    + list(fac.FAKE_PHI.values())
)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("template") / "patient"
    fac.write_patient(folder / "Studie_1", key="centre")
    return folder


def write_centre(root: Path, template: Path, yaml_text: str | None = None) -> Path:
    """The export of the how-to under ``root``; returns the path of its cohort YAML."""
    export = root / "export"
    (export / "PETCT").mkdir(parents=True)
    lines = [";".join(HEADER)]
    for pid, name, born, start, end, event, ast, cga in ROWS:
        cells = [
            pid,
            name,
            born,
            "63",
            "w",
            "Dünndarm",
            "ja",
            "nein",
            "nein",
            "nein",
            "nein",
            "nein",
            "2",
            "3,5",
            "4",
            start,
            end,
            event,
            ast,
            "0,4",
            "0,75",
            cga,
        ]
        lines.append(";".join(cells))
    (export / "Labor_Klinik_PRRT.csv").write_bytes(("\r\n".join(lines) + "\r\n").encode("cp1252"))
    for pid in (*WITH_IMAGES, ORPHAN):
        shutil.copytree(template, export / "PETCT" / f"Pat_{pid}", copy_function=os.link)
    yaml_path = root / "cohort.yaml"
    yaml_path.write_text(
        yaml_text if yaml_text is not None else EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8"
    )
    return yaml_path


@pytest.fixture()
def centre(tmp_path: Path, template: Path) -> Path:
    return write_centre(tmp_path / "centre", template)


def _hmac_by_hand(key: bytes, msg: bytes) -> str:
    """HMAC-SHA-256 from its definition (RFC 2104), to check the pseudonym without the hmac module."""
    block = 64
    key = key.ljust(block, b"\0") if len(key) <= block else hashlib.sha256(key).digest().ljust(block, b"\0")
    inner = hashlib.sha256(bytes(k ^ 0x36 for k in key) + msg).digest()
    return hashlib.sha256(bytes(k ^ 0x5C for k in key) + inner).hexdigest()


def _every_byte(folder: Path) -> bytes:
    """Every file and folder name, link target and file content under ``folder``.

    Image files are left out: they are the centre's own files, hard-linked, with
    their DICOM headers as they are (the loader never reads the identifying
    tags; that is why the intake lives under data/, not in the work folder).
    """
    out = b""
    for p in sorted(folder.rglob("*")):
        out += p.name.encode() + b"\n"
        if p.is_symlink():
            out += os.readlink(p).encode()
        elif p.is_file() and "imaging" not in p.relative_to(folder).parts:
            out += p.read_bytes()
    return out


# --------------------------------------------------------------------------- the how-to's export


def test_a_centre_export_laid_out_differently_becomes_our_raw_export(centre: Path, tmp_path: Path) -> None:
    source = CohortSource.load(centre)
    out = intake.intake(source, tmp_path / "data")
    table = pd.read_csv(out / "clinical.csv", dtype=str, keep_default_na=False)
    assert list(table.columns) == list(CLINICAL_COLUMNS)  # names, birth dates and dates are not copied
    first = table.iloc[0]
    assert first["ast_u_l"] == "30" and first["alt_u_l"] == "24" and first["ggt_u_l"] == "45"  # ukat/l x 60
    assert first["cga_ug_l"] == "1234.5"  # "1.234,5" ng/ml
    assert first["sex"] == "F" and first["primary_site"] == "small_intestine" and first["grade"] == "G2"
    assert first["functional"] == "no" and first["met_hepatic"] == "1" and first["ki67_pct"] == "3.5"
    # 15.01.2020 -> 15.01.2021 is 366 days (2020 is a leap year): 366 / 30.4375 months
    assert float(first["pfs_months"]) == pytest.approx(366 / 30.4375, abs=1e-6)
    assert float(table.iloc[1]["pfs_months"]) == pytest.approx(184 / 30.4375, abs=1e-6)
    assert table["event"].tolist() == ["1", "1", "0", "1", "1", "1"]

    cohort = build_cohort(CohortConfig(), out, tmp_path / "work").set_index("patient_id")
    p1, p2, p3 = (pseudonym(r[0], source.salt_path.read_text().strip().encode()) for r in ROWS[:3])
    assert cohort.at[p1, "pfs_short"] == 0 and cohort.at[p2, "pfs_short"] == 1  # 12.02 > 12 >= 6.05 months
    assert cohort.at[p1, "de_ritis"] == pytest.approx(30 / 24)
    assert pd.isna(cohort.at[p3, "pfs_short"]) and "censored" in cohort.at[p3, "note"]  # kept, not classified
    assert not cohort.at[p3, "has_imaging"]
    excl = pd.read_csv(tmp_path / "work" / "cohort" / "exclusions.csv", dtype=str)
    reasons = " | ".join(excl["reason"])
    assert "therapy start date not in the format %d.%m.%Y" in reasons  # 31.02.2021
    assert "pfs_months is negative" in reasons  # progression before the first cycle
    assert "cga_ug_l has '<5'" in reasons
    assert "imaging folder without clinical row" in reasons and len(cohort) == 3
    notes = intake.read_report(out)
    assert "progression/follow-up date lies before the therapy start" in notes["problem"].tolist()


def test_hospital_ids_become_salted_pseudonyms_and_nothing_identifying_reaches_an_output(
    centre: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source = CohortSource.load(centre)
    out = intake.intake(source, tmp_path / "data")
    salt_file = centre.parent / "cohort.salt"
    assert salt_file.is_file() and stat.S_IMODE(salt_file.stat().st_mode) == 0o600
    salt = salt_file.read_text().strip().encode()
    ids = pd.read_csv(out / "clinical.csv", dtype=str)["patient_id"].tolist()
    assert ids == ["P-" + _hmac_by_hand(salt, r[0].encode())[:10] for r in ROWS]
    assert all(looks_like_study_id(p) for p in ids)
    build_cohort(CohortConfig(), out, tmp_path / "work")
    assert cli.main(["check", str(centre), "--jobs", "1"]) == 0
    printed = capsys.readouterr().out
    assert ids[0] in printed and f"{ids[2]} (line 4): censored" in printed
    blob = _every_byte(out) + _every_byte(tmp_path / "work") + printed.encode()
    leaked = [s for s in SECRETS if s.encode() in blob]
    assert leaked == []
    assert salt not in blob and not (out / "cohort.salt").exists()


def test_the_same_salt_gives_the_same_pseudonyms_and_another_salt_other_ones(
    centre: Path, tmp_path: Path
) -> None:
    first = pd.read_csv(intake.intake(CohortSource.load(centre), tmp_path / "a") / "clinical.csv", dtype=str)
    again = pd.read_csv(intake.intake(CohortSource.load(centre), tmp_path / "b") / "clinical.csv", dtype=str)
    assert first["patient_id"].tolist() == again["patient_id"].tolist()
    (centre.parent / "cohort.salt").unlink()
    other = pd.read_csv(intake.intake(CohortSource.load(centre), tmp_path / "c") / "clinical.csv", dtype=str)
    assert set(other["patient_id"]).isdisjoint(first["patient_id"])


@pytest.mark.parametrize(
    ("value", "study"),
    [
        ("PRRT-007", True),
        ("NET12", True),
        ("pat_0042", True),
        ("P-3fa2c9d1e0", True),
        ("HOSP-99887766", False),
        ("12345678", False),
        ("0042", False),
        ("Mueller^Hans", False),
        ("Pat 12345", False),
    ],
)
def test_study_codes_are_told_from_hospital_ids(value: str, study: bool) -> None:
    assert looks_like_study_id(value) is study


def test_study_ids_are_kept_unless_pseudonymisation_is_forced(tmp_path: Path) -> None:
    table = pd.DataFrame({c: ["1"] * 2 for c in CLINICAL_COLUMNS}).assign(patient_id=["PRRT-001", "PRRT-002"])
    table.to_csv(tmp_path / "clinical.csv", index=False)
    kept = intake.intake(CohortSource(base_dir=str(tmp_path)), tmp_path / "kept")
    assert pd.read_csv(kept / "clinical.csv")["patient_id"].tolist() == ["PRRT-001", "PRRT-002"]
    forced = intake.intake(CohortSource(base_dir=str(tmp_path), pseudonymise="always"), tmp_path / "forced")
    assert pd.read_csv(forced / "clinical.csv")["patient_id"].str.match(r"^P-[0-9a-f]{10}$").all()
    table.assign(patient_id=["12345678", "87654321"]).to_csv(tmp_path / "clinical.csv", index=False)
    shown = intake.intake(CohortSource(base_dir=str(tmp_path), pseudonymise="never"), tmp_path / "shown")
    assert "look like hospital ids" in " ".join(intake.read_report(shown)["problem"])


# --------------------------------------------------------------------------- units, values, refusals


@pytest.mark.parametrize(
    ("column", "unit", "text", "expected"),
    [
        ("ast_u_l", "ukat/l", "0.5", 30.0),
        ("alt_u_l", "µkat/L", "1", 60.0),
        ("ggt_u_l", "nkat/l", "500", 30.0),
        ("ggt_u_l", "IU/L", "41", 41.0),
        ("cga_ug_l", "ng/mL", "250", 250.0),
        ("cga_ug_l", "ng/l", "250000", 250.0),
        ("cga_ug_l", "mg/l", "0.25", 250.0),
        ("pfs_months", "days", "365.25", 12.0),
        ("pfs_months", "weeks", "52", 52 * 7 / 30.4375),
        ("pfs_months", "years", "1.5", 18.0),
    ],
)
def test_units_are_converted_by_their_documented_factor(
    tmp_path: Path, column: str, unit: str, text: str, expected: float
) -> None:
    table = pd.DataFrame({c: ["1"] for c in CLINICAL_COLUMNS}).assign(patient_id=["PRRT-001"])
    table[column] = text
    table.to_csv(tmp_path / "clinical.csv", index=False)
    out = intake.intake(CohortSource(base_dir=str(tmp_path), units={column: unit}), tmp_path / "out")
    assert float(pd.read_csv(out / "clinical.csv")[column].iloc[0]) == pytest.approx(expected, abs=1e-6)
    assert f"converted from {unit}" in " ".join(intake.read_report(out)["problem"])


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"units": {"cga_ug_l": "nmol/l"}}, "cannot be converted to ug/l by a fixed factor"),
        ({"units": {"cga_ug_l": "U/l"}}, "assay units"),
        ({"units": {"ast_u_l": "mmol/l"}}, "not a unit we can convert"),
        ({"units": {"age_years": "months"}}, "no unit conversion"),
        ({"columns": {"cgA": "CgA"}}, "not columns of ours"),
        ({"image_format": "dcm"}, "image_format must be one of"),
        ({"dates": {"therapy_start": "a"}}, "dates: needs"),
        (
            {
                "dates": {"therapy_start": "a", "progression_or_last_followup": "b"},
                "columns": {"pfs_months": "PFS"},
            },
            "not both",
        ),
        ({"imaging_folder": "PETCT"}, "{id}"),
        ({"name": "centre a/b"}, "short folder name"),
    ],
)
def test_a_description_that_cannot_work_is_refused_with_its_reason(settings: dict, words: str) -> None:
    with pytest.raises(IntakeError, match=None) as err:
        CohortSource(**settings)
    assert words in str(err.value)


def test_table_level_problems_name_the_table_and_the_column(centre: Path, tmp_path: Path) -> None:
    text = centre.read_text(encoding="utf-8")
    cases = [
        (text.replace("GPT (ukat/l)", "ALAT"), "has no column 'ALAT' (columns: alt_u_l)"),
        (text.replace("  event: Progress\n", ""), "lacks required column(s) ['event']"),
        (text.replace("Labor_Klinik_PRRT.csv", "Labor.xls"), "not found"),
        (text.replace("Labor_Klinik_PRRT.csv", "Labor.xlsx"), "save the sheet as CSV"),
        (text + "colour: blue\n", "unknown field(s) ['colour']"),
        (text.replace("encoding: cp1252", "encoding: utf-8"), "is not utf-8"),
    ]
    (centre.parent / "export" / "Labor.xlsx").write_bytes(b"PK\x03\x04")
    for yaml_text, words in cases:
        centre.write_text(yaml_text, encoding="utf-8")
        with pytest.raises(IntakeError) as err:
            intake.intake(CohortSource.load(centre), tmp_path / "out")
        assert words in str(err.value), str(err.value)
        assert cli.main(["check", str(centre), "--quick"]) == 2
    assert not (tmp_path / "out").exists()


def test_yes_and_no_in_the_yaml_stay_text_and_numbers_become_codes(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "values:\n  functional: {ja: yes, nein: no}\n  event: {ja: 1, nein: 0}\n"
    )
    source = CohortSource.load(tmp_path / "c.yaml")
    assert source.values == {"functional": {"ja": "yes", "nein": "no"}, "event": {"ja": "1", "nein": "0"}}
    assert CohortSource.from_yaml(source.to_yaml()).values == source.values


# --------------------------------------------------------------------------- images, atomicity


def test_images_are_linked_under_neutral_names_in_the_loaders_order(centre: Path, tmp_path: Path) -> None:
    source = CohortSource.load(centre)
    out = intake.intake(source, tmp_path / "data")
    pid = pd.read_csv(out / "clinical.csv", dtype=str)["patient_id"].iloc[0]
    theirs = sorted(
        p for p in (centre.parent / "export" / "PETCT" / "Pat_12345678").rglob("*") if p.is_file()
    )
    ours = sorted((out / "imaging" / pid).iterdir())
    assert [p.name for p in ours] == [f"{k:06d}" for k in range(1, len(theirs) + 1)]  # no name is kept
    assert [p.stat().st_ino for p in ours] == [p.stat().st_ino for p in theirs]  # hard links, same order
    a, b = load_patient(out / "imaging" / pid, pid), load_patient(theirs[0].parent.parent.parent, pid)
    np.testing.assert_array_equal(a.pet.array, b.pet.array)
    names = {p.name for p in (out / "imaging").iterdir()}
    assert len(names) == 4 and all(n.startswith("P-") for n in names)  # 3 patients and the orphan (empty)


def test_without_hard_links_symbolic_links_are_used_and_the_report_says_so(
    centre: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(intake.os, "link", no_link)
    out = intake.intake(CohortSource.load(centre), tmp_path / "data")
    files = [p for p in (out / "imaging").rglob("*") if p.is_symlink()]
    assert files and all(p.is_file() for p in files)
    assert "symbolic links used" in " ".join(intake.read_report(out)["problem"])
    with pytest.raises(IntakeError, match="cannot hard-link"):
        intake.intake(CohortSource.load(centre).replace(link="hardlink"), tmp_path / "strict")


def test_nifti_with_other_file_names_and_without_a_sidecar(tmp_path: Path) -> None:
    folder = tmp_path / "nifti" / "NET7"
    affine = fac.PET_GEOM.affine()
    fac.write_nifti(folder / "NET7_suv.nii.gz", fac.patient_values(fac.PET_GEOM, "PT"), affine)
    fac.write_nifti(folder / "NET7_ct.nii.gz", fac.patient_values(fac.PET_GEOM, "CT"), affine)
    table = pd.DataFrame({c: ["1"] for c in CLINICAL_COLUMNS}).assign(patient_id=["NET7"])
    table.to_csv(tmp_path / "clinical.csv", index=False)
    source = CohortSource(
        base_dir=str(tmp_path),
        imaging_dir="nifti",
        image_format="nifti",
        nifti_files={"pet": "{id}_suv.nii.gz", "ct": "{id}_ct.nii.gz"},
        nifti_pet_units="SUVbw",
    )
    out = intake.intake(source, tmp_path / "out")
    images = load_patient(out / "imaging" / "NET7", "NET7")
    assert images.pet.units == "SUVbw" and float(images.pet.array.max()) == pytest.approx(12.0)
    without = intake.intake(source.replace(nifti_pet_units=""), tmp_path / "out2")
    result = check(source.replace(nifti_pet_units=""), quick=True)
    assert not (without / "imaging" / "NET7" / "pet.json").exists()
    assert "pet.json sidecar missing" in result["reason"].iloc[0]


def test_the_intake_is_skipped_when_nothing_changed_and_replaced_whole_when_something_did(
    centre: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = CohortSource.load(centre)
    out = intake.intake(source, tmp_path / "x" / "data")
    stamp = (out / "clinical.csv").stat().st_mtime_ns
    assert intake.intake(source, out) == out and (out / "clinical.csv").stat().st_mtime_ns == stamp
    table = centre.parent / "export" / "Labor_Klinik_PRRT.csv"
    table.write_bytes(table.read_bytes().replace(b";0,6;", b";0,7;"))
    before = (out / "clinical.csv").read_text()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(intake.store, "write_json", crash)
    with pytest.raises(OSError, match="disk full"):
        intake.intake(source, out)
    assert (out / "clinical.csv").read_text() == before  # the old intake is still whole
    assert [p.name for p in out.parent.iterdir()] == ["data"]  # no partial folder left behind
    monkeypatch.undo()
    intake.intake(source, out)
    assert pd.read_csv(out / "clinical.csv")["ast_u_l"].iloc[1] == pytest.approx(42.0)


def test_a_folder_that_is_not_an_intake_is_never_overwritten(centre: Path, tmp_path: Path) -> None:
    other = tmp_path / "synthetic"
    other.mkdir()
    (other / "clinical.csv").write_text("patient_id\n")
    with pytest.raises(IntakeError, match="is not an intake folder"):
        intake.intake(CohortSource.load(centre), other)
    assert (other / "clinical.csv").read_text() == "patient_id\n"


# --------------------------------------------------------------------------- check and the commands


def test_prrt_check_tells_each_patient_usable_or_why_not(centre: Path) -> None:
    result = check(CohortSource.load(centre), n_jobs=1)
    assert list(result.columns) == list(CHECK_COLUMNS)
    assert result["line"].tolist() == ["2", "3", "4", "5", "6", "7", ""]
    assert result["usable"].tolist() == [True, True, False, False, False, False, False]
    assert result["clinical"].tolist() == ["ok", "ok", "censored", "problem", "problem", "problem", "no row"]
    reasons = result["reason"].tolist()
    assert "kept for survival analysis" in reasons[2] and "no imaging folder" in reasons[2]
    assert "therapy start date not in the format" in reasons[3]
    assert "negative" in reasons[4] and "no imaging folder" in reasons[4]
    assert "'<5'" in reasons[5] and "without clinical row" in reasons[6]
    assert result.loc[0, "pet"].startswith("ok: 30 slices") and result.loc[0, "ct"].endswith("HU")
    assert any("converted from ukat/l" in n for n in result.attrs["notes"])


def test_prrt_check_exits_1_when_no_patient_is_usable(centre: Path, capsys: pytest.CaptureFixture) -> None:
    centre.write_text(
        centre.read_text(encoding="utf-8").replace('"Pat_{id}"', '"Patient_{id}"'), encoding="utf-8"
    )
    assert cli.main(["check", str(centre), "--quick"]) == 1
    assert "0 of 6 patients usable" in capsys.readouterr().out


def test_prrt_cohort_with_cohort_reads_the_intake_and_the_yamls_threshold(
    centre: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    centre.write_text(
        centre.read_text(encoding="utf-8").replace("pfs_threshold_months: 12", "pfs_threshold_months: 6"),
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    assert cli.main(["cohort", "--cohort", str(centre), "--work", "w", "--quiet"]) == 0
    assert (tmp_path / "data" / "intake" / "centre-a" / "clinical.csv").is_file()
    cohort = pd.read_csv(tmp_path / "w" / "cohort" / "cohort.csv", dtype={"patient_id": str})
    assert cohort["pfs_short"].tolist()[:2] == [0, 0]  # 12.0 and 6.05 months are both > 6


def test_the_book_reads_an_own_cohort_through_the_intake(centre: Path, tmp_path: Path) -> None:
    cfg = resolve_cohort(BookConfig(cohort_yaml=str(centre)), tmp_path)
    assert Path(cfg.data_dir) == tmp_path / "data" / "intake" / "centre-a"
    assert (Path(cfg.data_dir) / "clinical.csv").is_file()
    assert cfg.parameters()["pfs_threshold_months"] == 12.0 and cfg.parameters()["data_dir"] == cfg.data_dir
    assert resolve_cohort(BookConfig(), tmp_path) == BookConfig()


def test_the_how_to_shows_the_example_yaml_and_every_command_it_names() -> None:
    how_to = (ROOT / "book" / "own_cohort.md").read_text(encoding="utf-8")
    assert EXAMPLE.read_text(encoding="utf-8").strip() in how_to
    for command in ("prrt check", "make book COHORT=", "prrt cohort --cohort", "intake_report.csv"):
        assert command in how_to
    parser = cli.build_parser()
    for argv in (
        ["check", "c.yaml", "--quick"],
        ["cohort", "--cohort", "c.yaml"],
        ["book", "--cohort", "c.yaml"],
        ["run", "--cohort", "c.yaml"],
        ["preprocess", "--cohort", "c.yaml"],
    ):
        parser.parse_args(argv)


def test_ct_label_maps_follow_the_pseudonyms_with_their_codes(centre: Path, tmp_path: Path) -> None:
    from prrt_utils.models.pretrain import ANATOMY_CLASSES, find_labels, save_label_map

    seg = centre.parent / "export" / "TotalSeg"
    for raw in WITH_IMAGES[:2]:  # the third patient has images but no label map
        save_label_map(seg / f"{raw}_seg.nii.gz", np.full((4, 4, 4), 5, dtype=np.uint8), np.eye(4))
    text = centre.read_text(encoding="utf-8")
    centre.write_text(text + '\nct_labels: export/TotalSeg/{id}_seg.nii.gz\nct_label_codes: ["0:background", "5:liver"]\n',
                      encoding="utf-8")
    out = intake.intake(CohortSource.load(centre), tmp_path / "data")
    ids = pd.read_csv(out / "clinical.csv", dtype=str).set_index("patient_id")
    salt = (centre.parent / "cohort.salt").read_text().strip().encode()
    pid = {raw: "P-" + _hmac_by_hand(salt, raw.encode())[:10] for raw in WITH_IMAGES}
    assert set(ids.index) >= set(pid.values())
    linked = sorted(p.name for p in (out / "ct_labels").glob("*.nii.gz"))
    assert linked == sorted(f"{pid[r]}.nii.gz" for r in WITH_IMAGES[:2])  # under pseudonyms, never hospital ids
    report = intake.read_report(out)
    missing = report[(report["column"] == "ct_labels")]
    assert pid[WITH_IMAGES[2]] in set(missing["patient_id"])
    assert not set(missing["patient_id"]) & {pid[r] for r in WITH_IMAGES[:2]}
    assert missing["problem"].str.contains("no CT label map").all()
    folder, codes = find_labels(out)
    assert folder == out / "ct_labels" and codes == ("0:background", "5:liver")
    assert ANATOMY_CLASSES[3] == "liver"
    # a class that does not exist is refused when the YAML is read
    centre.write_text(text + '\nct_labels: export/TotalSeg/{id}_seg.nii.gz\nct_label_codes: ["5:brain"]\n',
                      encoding="utf-8")
    with pytest.raises(IntakeError, match="ct_label_codes"):
        CohortSource.load(centre)
