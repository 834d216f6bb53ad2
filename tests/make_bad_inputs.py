"""Write the bad-input corpus: a raw export (DESIGN "Raw export") full of deliberately broken inputs.

Usage::

    python tests/make_bad_inputs.py OUT      # writes OUT/clinical.csv, OUT/imaging/, OUT/cases.csv

or ``make_bad_inputs(folder)`` from a test. Nothing here is a committed binary:
one valid DICOM patient is written by :mod:`dicom_factory` (straight from the
DICOM standard, independent of the code under test), and every broken case is
a copy of it with one thing broken by pydicom, or a small NIfTI, or a row of
the clinical table. ``cases.csv`` lists every case with the stage that must
catch it and words its message must contain; :data:`CASES` is the same list.

The corpus mixes patients who must pass (a good DICOM and a good NIfTI patient,
and inputs whose handling is documented: stray non-DICOM files, other
modalities in the folder, a censored patient) with patients each broken in
one way, so a test can assert that the good ones still complete beside them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dicom_factory as fac  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Case:
    """One patient of the corpus.

    Attributes
    ----------
    patient_id : str
        Study id (``"(line N)"`` for the row without an id).
    what : str
        What is broken (or special), in words.
    stage : str
        ``"cohort"`` or ``"preprocess"``: the stage that excludes the patient
        with a message; ``""``: nobody excludes it (documented handling).
    expect : str
        Words the stage's message must contain (``""`` if none is expected).
    classified : bool
        The patient reaches the models (a PFS class and preprocessed images).
    preprocessed : bool
        The preprocessing stage writes a volume for it.
    """

    patient_id: str
    what: str
    stage: str
    expect: str
    classified: bool = False
    preprocessed: bool = False


def _ok(pid: str, what: str) -> Case:
    return Case(pid, what, "", "", classified=True, preprocessed=True)


def _img(pid: str, what: str, expect: str) -> Case:
    return Case(pid, what, "preprocess", expect)


def _row(pid: str, what: str, expect: str) -> Case:
    return Case(pid, what, "cohort", expect)


CASES: tuple[Case, ...] = (
    _ok("PRRT-001", "good DICOM patient"),
    _ok("PRRT-002", "good NIfTI patient (SUVbw with pet.json)"),
    _ok(
        "PRRT-003",
        "non-DICOM files (text, PDF, thumbnail database, .DS_Store) in the series folders: skipped",
    ),
    _ok(
        "PRRT-004", "mixed modalities in one flat folder (PET, CT, an MR series, a DICOMDIR): others ignored"
    ),
    Case(
        "PRRT-005",
        "censored (no progression event): kept, not classified",
        "cohort",
        "censored",
        preprocessed=True,
    ),
    _img("PRRT-006", "zero-byte DICOM file in the PET series", "is empty (0 bytes)"),
    _img("PRRT-007", "DICOM file cut inside its pixel data", "is truncated (pixel data needs"),
    _img("PRRT-008", "DICOM file cut inside its header", "truncated"),
    _img("PRRT-009", "CT series with a missing slice", "CT has missing slices"),
    _img("PRRT-010", "CT series with two slices at the same position", "CT has duplicated slice positions"),
    _img("PRRT-011", "CT acquired with gantry tilt (GantryDetectorTilt 15)", "gantry tilt of 15 degrees"),
    _img("PRRT-012", "CT with tilted geometry but no tilt tag", "gantry tilt"),
    _img("PRRT-013", "PET without DecayCorrection", "DecayCorrection missing is not supported"),
    _img("PRRT-014", "PET without the radionuclide half-life", "RadionuclideHalfLife is missing"),
    _img("PRRT-015", "PET without the injection time", "injection time"),
    _img("PRRT-016", "PET in counts (Units CNTS): no SUV possible", "counts (Units CNTS)"),
    _img("PRRT-017", "CT without RescaleSlope/RescaleIntercept", "no RescaleSlope/RescaleIntercept"),
    _img("PRRT-018", "NIfTI PET with a singular affine", "singular or broken affine"),
    _img("PRRT-019", "NIfTI PET without orientation (qform and sform codes 0)", "has no orientation"),
    _img("PRRT-020", "NIfTI CT with NaN in its affine", "broken affine"),
    _img("PRRT-021", "PET only, no CT series", "no CT series found"),
    _img("PRRT-022", "folder of non-DICOM files only", "no PET series found"),
    _row(
        "PRRT-023", "text in a laboratory value (CgA 'n/a')", "cga_ug_l has 'n/a' where a number is expected"
    ),
    _row("PRRT-024", "negative laboratory value (ALT -12)", "alt_u_l is negative"),
    _row("PRRT-025", "absurd laboratory value (AST 28000 U/l)", "ast_u_l = 28000 is implausible"),
    _row("PRRT-026", "patient id twice in the table", "appears 2 times"),
    _row("(line 29)", "row without a patient id", "row at line 29 has no patient_id"),
    _row("PRRT-027", "missing laboratory value (GGT empty)", "missing lab value ggt_u_l"),
    _row("PRRT-028", "decimal comma in our layout (ALT '12,5')", "alt_u_l has '12,5'"),
    _row("PRRT-029", "event flag not 0/1 ('yes')", "column event has 'yes' where a number is expected"),
    _row("PRRT-030", "clinical row without an imaging folder", "no imaging folder"),
    _row("PRRT-031", "empty imaging folder", "imaging folder is empty"),
    _row("PRRT-032", "imaging folder without a clinical row", "imaging folder without clinical row"),
    # issue 16: what a real export holds, each broken in one way (or handled, and checked to be)
    _img("PRRT-033", "CT of another patient (PatientID differs)", "PET and CT disagree on PatientID"),
    _img(
        "PRRT-034",
        "CT of another study and frame of reference",
        "PET and CT disagree on StudyInstanceUID, FrameOfReferenceUID",
    ),
    _img("PRRT-035", "CT of another frame of reference only", "PET and CT disagree on FrameOfReferenceUID"),
    _ok("PRRT-036", "CT of another study, registered to the PET and allowed in registered_pet_ct.csv"),
    _img("PRRT-037", "PatientWeight in grams (70000)", "PatientWeight = 70000 kg is implausible (rule: 20 to 300 kg)"),
    _img(
        "PRRT-038",
        "RadionuclideTotalDose in MBq (150)",
        "RadionuclideTotalDose = 150 Bq (0.00015 MBq) is implausible for Ga-68 (rule: 20 to 500 MBq)",
    ),
    _img(
        "PRRT-039",
        "RadionuclideHalfLife in minutes (67.71)",
        "RadionuclideHalfLife 67.71 s is not Ga-68's 4062.6 s (rule: within 1%",
    ),
    _img("PRRT-040", "Units GML on values still in Bq/ml", "is implausible (rule: 1 to 500); the PET is declared GML"),
    _img("PRRT-041", "NIfTI declared SUVbw holding Bq/ml", "is implausible (rule: 1 to 500); the PET is declared SUVbw"),
    _ok("PRRT-042", "date-only RadiopharmaceuticalStartDateTime beside a full StartTime: the StartTime counts"),
    _ok("PRRT-043", "SeriesTime 2 h after the acquisition (a re-reconstruction): the acquisition time counts"),
    _img("PRRT-044", "NIfTI in Bq/ml without half-life or nuclide", "pet.json gives neither half_life_s nor nuclide"),
    _img(
        "PRRT-045",
        "NIfTI in Bq/ml with a negative injection_to_scan_s",
        "pet.json injection_to_scan_s = -600 s (-10.0 min; rule: 0 to 12 h)",
    ),
    _img("PRRT-046", "NIfTI PET with NaN voxels", "pet.nii.gz: 5 voxels are not finite (NaN or infinite)"),
    _ok("PRRT-047", "CT compressed as JPEG 2000 lossless and PET as RLE (real encodings; the shipped decoders read them)"),
    _ok("PRRT-048", "DICOM files without preamble: PET with its meta group, CT a bare implicit-VR data set"),
    _img(
        "PRRT-049",
        "CT declared sagittal (ImageOrientationPatient) with axial positions",
        "CT orientation not supported: ImageOrientationPatient describes sagittal slices",
    ),
    _ok("PRRT-050", "PatientWeight written '70.0000' on one slice and '70' on the others"),
    _ok("PRRT-051", "UIDs with a leading-zero component (pydicom warns 'Invalid value for VR UI')"),
    _ok("PRRT-052", "a sub-folder whose name is not UTF-8"),
    _row("../victim", "patient id that leaves the folder ('../victim')", "the patient id cannot name a folder safely"),
    _row("PRRT-054", "ids that differ only in case (PRRT-054 and prrt-054)", "differ only in case"),
    _row("prrt-054", "ids that differ only in case (PRRT-054 and prrt-054)", "differ only in case"),
    _row("PRRT-056-\\xe9", "imaging folder whose name is not UTF-8", "imaging folder whose name is not UTF-8"),
    _img(
        "PRRT-057",
        "PatientWeight 20 kg for a 70 kg patient (each tag plausible, SUV x0.29): SUVmax passes, the body mass does not",
        "the body in the CT weighs about 29.1 kg, 1.46 times the patient weight the SUV was computed with "
        "(rule: at most 1.3)",
    ),
    _img(
        "PRRT-058",
        "CT declared in a transfer syntax no decoder exists for (MPEG2 video)",
        "pixel data are compressed as MPEG2 Main Profile / Main Level (1.2.840.10008.1.2.4.100), which pydicom "
        "cannot decode: export uncompressed",
    ),
    _img(
        "PRRT-059",
        "NIfTI declared SUVbw holding a quarter of the SUV, no weight: only the liver (label map) catches it",
        "median liver SUV 0.25 is implausible (rule: 0.3 to 40)",
    ),
)
"""Every case of the corpus, in the order of the clinical table."""

OTHER_PATIENT_ID = "HOSP-11223344"
"""The PatientID of the other patient's CT (PRRT-033); like :data:`dicom_factory.FAKE_PHI`, it may never leak."""

LEADING_ZERO_UID = "1.2.826.0.1.3680043.8.498.0123.77"
"""A StudyInstanceUID with a leading-zero component (PRRT-051); pydicom's warning would print it."""

REGISTERED = ("PRRT-036",)
WITH_LABEL_MAP = ("PRRT-001", "PRRT-057", "PRRT-059")
"""Patients with a CT label map in ``ct_labels/`` (body and a liver block): the liver SUV rule runs for them only."""
LABEL_CODES = ("0:background", "1:body", "3:liver")
LIVER_BOX_MM = ((-100.0, -20.0), (-60.0, 40.0), (-400.0, -280.0))
"""LPS x, y, z ranges of the label maps' liver: inside the body, below the lungs, away from the hot ball."""
NON_UTF8_FOLDER = b"PRRT-056-\xe9"
LATIN1_NOTE = "Überweisung aus Zürich"
"""A free-text cell of the clinical table, which is written in Latin-1 (not UTF-8) as spreadsheets on Windows do."""


def _row_values(i: int) -> dict[str, str]:
    """A valid clinical row (every cell as text); PFS alternates between the short and long class."""
    return {
        "patient_id": f"PRRT-{i:03d}",
        "age_years": str(50 + i % 20),
        "sex": "MF"[i % 2],
        "primary_site": ("small_intestine", "pancreas", "cup")[i % 3],
        "met_hepatic": "1",
        "met_lymphonodal": str(i % 2),
        "met_osseous": "0",
        "met_peritoneal": "0",
        "met_pulmonal": "0",
        "functional": "no",
        "grade": "G2",
        "ki67_pct": "5",
        "prrt_cycles": "4",
        "pfs_months": ("8.5", "20.25")[i % 2],
        "event": "1",
        "ast_u_l": "30",
        "alt_u_l": "24",
        "cga_ug_l": "180",
        "ggt_u_l": "45",
    }


def _clinical() -> pd.DataFrame:
    rows = []
    for case in CASES:
        if case.patient_id in ("PRRT-032", "PRRT-056-\\xe9"):  # images without a row
            continue
        if case.patient_id.startswith("(line"):
            row = _row_values(99)
            row["patient_id"] = ""
            rows.append(row)
            continue
        digits = "".join(c for c in case.patient_id if c.isdigit())
        row = _row_values(int(digits) if digits else 53)
        row["patient_id"] = case.patient_id
        edits = {
            "PRRT-005": ("event", "0"),
            "PRRT-023": ("cga_ug_l", "n/a"),
            "PRRT-024": ("alt_u_l", "-12"),
            "PRRT-025": ("ast_u_l", "28000"),
            "PRRT-027": ("ggt_u_l", ""),
            "PRRT-028": ("alt_u_l", "12,5"),
            "PRRT-029": ("event", "yes"),
        }
        if case.patient_id in edits:
            col, value = edits[case.patient_id]
            row[col] = value
        rows.append(row)
        if case.patient_id == "PRRT-026":
            rows.append(dict(row, pfs_months="30"))  # the same id again, another row
    table = pd.DataFrame(rows)
    table["remarks"] = ""  # a column we do not read, with text that is not ASCII
    table.loc[0, "remarks"] = LATIN1_NOTE
    return table


# ---------------------------------------------------------------------------
# Breaking a copy of the good patient
# ---------------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> None:
    """A copy of a patient folder (hard links where possible: the files are never edited in place)."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def _by_position(files: list[Path]) -> list[tuple[Path, Any]]:
    import pydicom

    items = [(p, pydicom.dcmread(p)) for p in files]
    return sorted(items, key=lambda item: -float(item[1].ImagePositionPatient[2]))


def _edit(folder: Path, edit: Callable[[Any, int], None]) -> None:
    """Apply ``edit(ds, d)`` to every slice of the series in ``folder`` (``d``: rank head to feet), rewriting files."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    for d, (path, ds) in enumerate(_by_position(files)):
        edit(ds, d)
        path.unlink()  # break the hard link before writing
        ds.save_as(path, enforce_file_format=True)


def _truncate(folder: Path, n_bytes: int) -> None:
    path = sorted(folder.iterdir())[3]
    data = path.read_bytes()[:n_bytes]
    path.unlink()
    path.write_bytes(data)


def _nifti(
    folder: Path,
    *,
    pet_affine: np.ndarray | None = None,
    ct_affine: np.ndarray | None = None,
    header_codes: int = 1,
) -> None:
    """A NIfTI patient (SUVbw PET, HU CT) on the factory's grids, optionally with a broken affine."""
    import gzip

    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    for name, geom, modality, affine in (
        ("pet.nii.gz", fac.PET_GEOM, "PT", pet_affine),
        ("ct.nii.gz", fac.CT_GEOM, "CT", ct_affine),
    ):
        values = fac.patient_values(geom, modality).astype(np.float32)
        fac.write_nifti(folder / name, values, geom.affine() if affine is None else affine)
        if header_codes == 0 and modality == "PT":
            img = nib.load(str(folder / name))
            img = nib.Nifti1Image(np.asarray(img.dataobj), None, img.header)
            img.header.set_qform(None, code=0)
            img.header.set_sform(None, code=0)
            (folder / name).write_bytes(gzip.compress(img.to_bytes(), mtime=0))
    (folder / "pet.json").write_text(json.dumps({"units": "SUVbw"}))


def _nan_affine(folder: Path) -> None:
    """Give the CT a NaN in its sform (some converters write that for an unknown geometry), no qform."""
    import gzip

    import nibabel as nib

    path = folder / "ct.nii.gz"
    img = nib.load(str(path))
    hdr = img.header.copy()
    hdr["srow_x"] = [np.nan, 0.0, 0.0, 0.0]
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    path.write_bytes(gzip.compress(nib.Nifti1Image(np.asarray(img.dataobj), None, hdr).to_bytes(), mtime=0))


def _bq_per_ml() -> float:
    """Bq/ml of SUV 1 in the factory's patient (70 kg, 150 MBq, scanned 1 h after injection)."""
    return 150e6 * 2.0 ** (-3600.0 / fac.GA68) / 70000.0


def _nifti_bqml(folder: Path, side: dict[str, Any], nan_voxels: int = 0) -> None:
    """A NIfTI patient whose PET is in Bq/ml with the given ``pet.json``."""
    _nifti(folder)
    values = fac.patient_values(fac.PET_GEOM, "PT") * _bq_per_ml()
    values.reshape(-1)[:nan_voxels] = np.nan
    fac.write_nifti(folder / "pet.nii.gz", values.astype(np.float32), fac.PET_GEOM.affine())
    (folder / "pet.json").write_text(json.dumps({"units": "Bq/ml", **side}))


def _write_bare(path: Path, ds: Any) -> None:
    """Save a data set as old exports do: no preamble, no DICM, no meta group, implicit VR little endian."""
    import pydicom

    path.unlink()
    del ds.file_meta
    ds.preamble = None
    pydicom.filewriter.dcmwrite(path, ds, enforce_file_format=False, implicit_vr=True, little_endian=True)


def _label_maps(root: Path) -> None:
    """``ct_labels/<id>.nii.gz`` (on the CT grid) and ``codes.json`` for :data:`WITH_LABEL_MAP`: body and a liver box."""
    c = fac.CT_GEOM.centres()
    labels = np.where(fac.patient_values(fac.CT_GEOM, "CT") > -500.0, 1, 0).astype(np.uint8)
    box = np.ones(fac.CT_GEOM.shape, bool)
    for axis, (lo, hi) in enumerate(LIVER_BOX_MM):
        box &= (c[..., axis] >= lo) & (c[..., axis] <= hi)
    labels[box] = 3
    for pid in WITH_LABEL_MAP:
        fac.write_nifti(root / "ct_labels" / f"{pid}.nii.gz", labels, fac.CT_GEOM.affine())
    (root / "ct_labels" / "codes.json").write_text(json.dumps(list(LABEL_CODES)))


def _issue16_cases(img: Path, good: Path, copy: Callable[[str], Path]) -> None:
    """PRRT-033 to PRRT-059 (issue 16)."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG2MPML, JPEG2000Lossless, RLELossless

    pet, ct = "pet", "ct"

    def setter(**tags: Any) -> Callable[[Any, int], None]:
        def edit(ds: Any, d: int) -> None:
            for k, v in tags.items():
                setattr(ds, k, v)

        return edit

    _edit(copy("PRRT-033") / ct, setter(PatientID=OTHER_PATIENT_ID))
    other_study = setter(StudyInstanceUID=fac._uid("other-study"), FrameOfReferenceUID=fac._uid("other-for"))
    _edit(copy("PRRT-034") / ct, other_study)
    _edit(copy("PRRT-035") / ct, setter(FrameOfReferenceUID=fac._uid("other-for")))
    _edit(copy("PRRT-036") / ct, other_study)
    _edit(copy("PRRT-037") / pet, setter(PatientWeight="70000"))

    def radio(**tags: Any) -> Callable[[Any, int], None]:
        def edit(ds: Any, d: int) -> None:
            for k, v in tags.items():
                setattr(ds.RadiopharmaceuticalInformationSequence[0], k, v)

        return edit

    _edit(copy("PRRT-038") / pet, radio(RadionuclideTotalDose="150"))
    _edit(copy("PRRT-039") / pet, radio(RadionuclideHalfLife="67.71"))
    _edit(copy("PRRT-040") / pet, setter(Units="GML"))
    _nifti(img / "PRRT-041")
    fac.write_nifti(
        img / "PRRT-041" / "pet.nii.gz",
        (fac.patient_values(fac.PET_GEOM, "PT") * _bq_per_ml()).astype(np.float32),
        fac.PET_GEOM.affine(),
    )
    _edit(copy("PRRT-042") / pet, radio(RadiopharmaceuticalStartDateTime="20200305"))
    _edit(copy("PRRT-043") / pet, setter(SeriesTime="131500"))
    full = {"patient_weight_kg": 70.0, "injected_dose_bq": 150e6, "injection_to_scan_s": 3600.0}
    _nifti_bqml(img / "PRRT-044", full)
    _nifti_bqml(img / "PRRT-045", {**full, "nuclide": "Ga-68", "injection_to_scan_s": -600.0})
    _nifti(img / "PRRT-046")
    values = fac.patient_values(fac.PET_GEOM, "PT").astype(np.float32)
    values.reshape(-1)[:5] = np.nan
    fac.write_nifti(img / "PRRT-046" / "pet.nii.gz", values, fac.PET_GEOM.affine())

    _edit(copy("PRRT-047") / ct, lambda ds, d: ds.compress(JPEG2000Lossless))
    _edit(img / "PRRT-047" / pet, lambda ds, d: ds.compress(RLELossless))
    f = copy("PRRT-048")
    for path in sorted((f / pet).iterdir()):  # the meta group stays, preamble and DICM go
        data = path.read_bytes()
        path.unlink()
        path.write_bytes(data[132:])
    for path in sorted((f / ct).iterdir()):
        _write_bare(path, pydicom.dcmread(path))
    _edit(copy("PRRT-049") / ct, setter(ImageOrientationPatient=["0", "1", "0", "0", "0", "-1"]))

    def weight_text(ds: Any, d: int) -> None:
        if d == 0:
            ds.PatientWeight = "70.0000"

    _edit(copy("PRRT-050") / pet, weight_text)
    old = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    f = copy("PRRT-051")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's warning about the very UID planted here
            for sub in (pet, ct):
                _edit(f / sub, setter(StudyInstanceUID=LEADING_ZERO_UID))
    finally:
        pydicom.config.settings.writing_validation_mode = old
    f = copy("PRRT-052")
    os.rename(f / pet, os.fsdecode(os.fsencode(f) + b"/PET \xe9t\xe9 (Gr\xfc\xdfe)"))
    (img / "PRRT-054").mkdir()
    (img / "PRRT-054" / "not-read.txt").write_text("the clinical row of this patient is broken\n")
    odd = Path(os.fsdecode(os.fsencode(img) + b"/" + NON_UTF8_FOLDER))
    _copy(good, odd)
    _edit(copy("PRRT-057") / pet, setter(PatientWeight="20"))

    def mpeg2(ds: Any, d: int) -> None:
        ds.file_meta.TransferSyntaxUID = MPEG2MPML
        ds.PixelData = encapsulate([bytes(64)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True

    _edit(copy("PRRT-058") / ct, mpeg2)
    _nifti(img / "PRRT-059")
    quarter = (fac.patient_values(fac.PET_GEOM, "PT") / 4.0).astype(np.float32)
    fac.write_nifti(img / "PRRT-059" / "pet.nii.gz", quarter, fac.PET_GEOM.affine())
    _label_maps(img.parent)


def _flat_folder_with_mr_and_dicomdir(good: Path, f: Path) -> None:
    """PET and CT files of ``good`` in one flat folder (hard links), beside an MR localiser and a DICOMDIR."""
    import pydicom

    f.mkdir()
    for sub in ("pet", "ct"):
        for p in sorted((good / sub).iterdir()):
            os.link(p, f / f"{sub}_{p.name}")
    for k, p in enumerate(sorted((good / "ct").iterdir())[:5]):  # an MR localiser: a modality we do not use
        ds = pydicom.dcmread(p)
        ds.Modality = "MR"
        ds.SeriesInstanceUID = fac._uid("mr-localiser")
        ds.SOPInstanceUID = fac._uid("mr-localiser", k)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(f / f"mr_{k:02d}", enforce_file_format=True)
    dicomdir = pydicom.Dataset()
    dicomdir.file_meta = pydicom.dataset.FileMetaDataset()
    dicomdir.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    dicomdir.file_meta.MediaStorageSOPInstanceUID = fac._uid("dicomdir")
    dicomdir.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    dicomdir.FileSetID = "EXPORT"
    dicomdir.save_as(f / "DICOMDIR", enforce_file_format=True)


def make_bad_inputs(root: str | Path) -> tuple[Case, ...]:
    """Write the corpus into ``root`` (``clinical.csv``, ``imaging/``, ``cases.csv``); return :data:`CASES`.

    Parameters
    ----------
    root : path
        An empty or absent folder; it becomes a raw export (DESIGN "Raw export").

    Returns
    -------
    tuple of Case
    """
    root = Path(root)
    img = root / "imaging"
    img.mkdir(parents=True, exist_ok=True)
    good = img / "PRRT-001"
    fac.write_patient(good, key="corpus")
    pet, ct = "pet", "ct"

    def copy(pid: str) -> Path:
        _copy(good, img / pid)
        return img / pid

    _nifti(img / "PRRT-002")

    f = copy("PRRT-003")
    (f / pet / "README.txt").write_text("PET/CT export of the department of nuclear medicine\n")
    (f / ct / "Thumbs.db").write_bytes(bytes(range(256)) * 8)
    (f / ct / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    (f / "report.pdf").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n%%EOF\n")

    _flat_folder_with_mr_and_dicomdir(good, img / "PRRT-004")

    copy("PRRT-005")

    f = copy("PRRT-006")
    (f / pet / "IM0000.dcm").write_bytes(b"")
    _truncate(copy("PRRT-007") / pet, 3000)
    _truncate(copy("PRRT-008") / pet, 400)

    f = copy("PRRT-009")
    _by_position(sorted((f / ct).iterdir()))[10][0].unlink()

    positions = fac.CT_GEOM.positions()

    def duplicate(ds: Any, d: int) -> None:
        if d == 7:
            ds.ImagePositionPatient = [f"{v:.6f}" for v in positions[6]]

    _edit(copy("PRRT-010") / ct, duplicate)

    def tilt_tag(ds: Any, d: int) -> None:
        ds.GantryDetectorTilt = "15"

    _edit(copy("PRRT-011") / ct, tilt_tag)

    def tilt_geometry(ds: Any, d: int) -> None:
        p = positions[d]
        ds.ImagePositionPatient = [
            f"{p[0]:.6f}",
            f"{p[1] + d * 20.0 * np.tan(np.radians(12)):.6f}",
            f"{p[2]:.6f}",
        ]

    _edit(copy("PRRT-012") / ct, tilt_geometry)

    def no_decay(ds: Any, d: int) -> None:
        del ds.DecayCorrection

    _edit(copy("PRRT-013") / pet, no_decay)

    def no_half_life(ds: Any, d: int) -> None:
        del ds.RadiopharmaceuticalInformationSequence[0].RadionuclideHalfLife

    _edit(copy("PRRT-014") / pet, no_half_life)

    def no_injection_time(ds: Any, d: int) -> None:
        radio = ds.RadiopharmaceuticalInformationSequence[0]
        del radio.RadiopharmaceuticalStartTime
        del radio.RadiopharmaceuticalStartDateTime

    _edit(copy("PRRT-015") / pet, no_injection_time)

    def counts(ds: Any, d: int) -> None:
        ds.Units = "CNTS"

    _edit(copy("PRRT-016") / pet, counts)

    def no_rescale(ds: Any, d: int) -> None:
        del ds.RescaleSlope
        del ds.RescaleIntercept

    _edit(copy("PRRT-017") / ct, no_rescale)

    singular = fac.PET_GEOM.affine()
    singular[:3, 2] = singular[:3, 1]  # two equal columns
    _nifti(img / "PRRT-018", pet_affine=singular)
    _nifti(img / "PRRT-019", header_codes=0)
    _nifti(img / "PRRT-020")
    _nan_affine(img / "PRRT-020")

    shutil.rmtree(copy("PRRT-021") / ct)

    f = img / "PRRT-022" / "export"
    f.mkdir(parents=True)
    for k in range(3):
        (f / f"slice{k}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(100))

    for pid in ("PRRT-023", "PRRT-032"):
        copy(pid)  # good images: only the clinical row is wrong (or missing)
    for pid in ("PRRT-024", "PRRT-025", "PRRT-026", "PRRT-027", "PRRT-028", "PRRT-029"):
        (img / pid).mkdir()  # a bad row is excluded before its images are looked at: a token file is enough
        (img / pid / "not-read.txt").write_text("the clinical row of this patient is broken\n")
    (img / "PRRT-031").mkdir()

    _issue16_cases(img, good, copy)
    _clinical().to_csv(root / "clinical.csv", index=False, encoding="latin-1")
    pd.DataFrame({"patient_id": list(REGISTERED)}).to_csv(root / "registered_pet_ct.csv", index=False)
    pd.DataFrame([dataclasses.asdict(c) for c in CASES]).to_csv(root / "cases.csv", index=False)
    return CASES


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python tests/make_bad_inputs.py OUT_FOLDER", file=sys.stderr)
        return 2
    out = Path(args[0])
    if out.exists() and any(out.iterdir()):
        print(f"{out} is not empty", file=sys.stderr)
        return 2
    cases = make_bad_inputs(out)
    print(f"{len(cases)} cases written to {out} (list: {out / 'cases.csv'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
