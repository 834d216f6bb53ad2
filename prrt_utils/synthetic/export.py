"""Writing the synthetic cohort as a hospital export: DICOM or NIfTI series, clinical.csv, ground truth,
and the fake identifying data planted to test de-identification."""

from __future__ import annotations

import datetime as dt
import functools
import gzip
import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prrt_utils.io import store
from prrt_utils.io.log import get_logger
from prrt_utils.synthetic.phantom import (
    Grid,
    build_phantom,
    ct_measurement,
    pet_measurement,
    render,
    scanner_grids,
    to_nifti_array,
)
from prrt_utils.synthetic.twin import (
    CT_RESCALE_VARIANTS,
    GA68_HALF_LIFE_S,
    LABELS,
    RADIOPHARMACEUTICAL,
    SCANNERS,
    SynthConfig,
    SynthError,
    SyntheticCohort,
    bqml_to_suv,
    sample_cohort,
    stream_rng,
    suv_to_bqml,
)

# ---------------------------------------------------------------------------
# Fake identifying data (planted so that de-identification can be tested)
# ---------------------------------------------------------------------------

# Long, rare names: none is a substring of an English word or of this project's
# vocabulary, so a privacy scan that finds one has found a leak, not a false hit.
_FAMILY_NAMES = (
    "Hofstetter",
    "Brandtner",
    "Scharnagl",
    "Pfisterer",
    "Eichhorst",
    "Lindemayr",
    "Oberhuber",
    "Reisinger",
    "Tiefenbacher",
    "Ziegelmeier",
    "Grubmueller",
    "Kornblum",
    "Stadelmann",
    "Wimmersberger",
    "Haberkorn",
    "Rottenkolber",
    "Kirchleitner",
    "Pemberton",
    "Thistlewood",
    "Ashcombe",
    "Fairbrother",
    "Wetherall",
    "Cholmondeley",
    "Hollingsworth",
    "Pettigrew",
    "Ravenscroft",
    "Tillingham",
    "Wolstenholme",
)
_GIVEN_NAMES = {
    "F": (
        "Walburga",
        "Hannelore",
        "Wilhelmine",
        "Liselotte",
        "Mechthild",
        "Hildegard",
        "Adelheid",
        "Gerlinde",
        "Waltraud",
        "Irmgard",
        "Winifred",
        "Evangeline",
        "Rosamund",
        "Millicent",
        "Philippa",
        "Gwendolyn",
        "Clementine",
        "Henrietta",
    ),
    "M": (
        "Friedhelm",
        "Gottlieb",
        "Theobald",
        "Ottokar",
        "Siegfried",
        "Reinhold",
        "Bartholomew",
        "Cuthbert",
        "Reginald",
        "Percival",
        "Algernon",
        "Ethelbert",
        "Leopold",
        "Hieronymus",
        "Wolfram",
        "Ferdinand",
        "Archibald",
        "Lancelot",
    ),
}
_PHYSICIANS = (
    "Auffenberg^Korbinian^^Dr.",
    "Moosbrugger^Ottilie^^Dr.",
    "Vilsmeier^Kunigunde^^Dr.",
    "Marchbanks^Peregrine^^Dr.",
    "Southerden^Araminta^^Dr.",
)
_OPERATORS = ("Quarrington^Jocelyn", "Umbleby^Tarquin", "Blankenheim^Roswitha", "Eisenreich^Gundula")
_INSTITUTIONS = {
    "A": ("Klinikum Tiefenbrunn", "TFBPETCT01", "TFB"),
    "B": ("St Aldhelm Hospital Wexcombe", "ALDHPET2", "ALW"),
    "C": ("Ospedale San Bertoldo Valfonda", "SBVPETCT", "SBV"),
}


@functools.lru_cache(maxsize=16)
def _cfg_hash(cfg: SynthConfig) -> str:
    return cfg.hash()


def _uid(cfg: SynthConfig, *parts: Any) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["prrt-synth", _cfg_hash(cfg), *(str(p) for p in parts)])


def sample_phi(cfg: SynthConfig, index: int, cohort: SyntheticCohort) -> dict[str, Any]:
    """The fake identifying data of patient ``index`` (0-based): names, dates, hospital ids, UIDs.

    Deterministic in ``cfg``; the birth date agrees with ``age_years`` at the study date.
    """
    rng = stream_rng(cfg, "phi", index)
    clin = cohort.clinical.iloc[index]
    acq = cohort.acquisition.iloc[index]
    pid = clin["patient_id"]
    family = _FAMILY_NAMES[rng.integers(len(_FAMILY_NAMES))]
    given = _GIVEN_NAMES[clin["sex"]][rng.integers(len(_GIVEN_NAMES[clin["sex"]]))]
    study = dt.datetime.strptime(acq["study_date"], "%Y%m%d").date()
    year = study.year - int(clin["age_years"])
    anniversary = study.replace(year=year, day=min(study.day, 28))
    birth = anniversary - dt.timedelta(days=int(rng.integers(0, 360)))
    institution, station, code = _INSTITUTIONS[acq["scanner"]]
    mrn = f"{code}{int(rng.integers(10**6, 10**7))}{'ABCDEFGHKMNPRSTX'[rng.integers(16)]}"
    accession = f"{code}A{study:%y}{int(rng.integers(10**6, 10**7))}"
    physician = _PHYSICIANS[rng.integers(len(_PHYSICIANS))]
    operator = _OPERATORS[rng.integers(len(_OPERATORS))]
    return {
        "patient_name": f"{family}^{given}",
        "family_name": family,
        "given_name": given,
        "birth_date": birth.strftime("%Y%m%d"),
        "hospital_id": mrn,
        "accession_number": accession,
        "institution": institution,
        "station": station,
        "referring_physician": physician,
        "operator": operator,
        "study_description": f"PET/CT Ganzkoerper {RADIOPHARMACEUTICAL} {family}, {given}",
        "pet_series_description": f"WB {RADIOPHARMACEUTICAL} AC {family} {given[0]}.",
        "ct_series_description": f"CT WB {'KM' if acq['ct_contrast'] else 'nativ'} {family}",
        "study_uid": _uid(cfg, pid, "study"),
        "pet_series_uid": _uid(cfg, pid, "pet"),
        "ct_series_uid": _uid(cfg, pid, "ct"),
        "frame_of_reference_uid": _uid(cfg, pid, "for"),
    }


def _phi_strings(phi: dict[str, Any], image_format: str) -> list[str]:
    """Every identifying string actually planted in a patient's files."""
    keys = [
        "patient_name",
        "family_name",
        "given_name",
        "birth_date",
        "hospital_id",
        "accession_number",
        "institution",
        "station",
    ]
    if image_format == "dicom":
        keys += [
            "referring_physician",
            "operator",
            "study_uid",
            "pet_series_uid",
            "ct_series_uid",
            "frame_of_reference_uid",
        ]
    out = [phi[k] for k in keys]
    if image_format == "dicom":
        out += [p for k in ("referring_physician", "operator") for p in phi[k].split("^") if len(p) > 3]
    return out


# ---------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------


def _tm(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600:02d}{s % 3600 // 60:02d}{s % 60:02d}"


def _ds(value: float) -> str:
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def _hexname(*parts: Any, n: int = 12) -> str:
    return hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()[:n]


def _nifti_bytes(
    data: np.ndarray, affine: np.ndarray, slope_inter: tuple[float, float] | None = None
) -> bytes:
    """A gzip-compressed NIfTI-1 image as bytes, with no time stamp or file name in the gzip header."""
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    if slope_inter is not None:
        img.header.set_slope_inter(*slope_inter)
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def _instance_numbers(order: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if order == "head_first":
        return np.arange(1, n + 1)
    if order == "feet_first":
        return np.arange(n, 0, -1)
    return rng.permutation(n) + 1


def _common_header(
    ds: Any, phi: dict[str, Any], clin: pd.Series, acq: pd.Series, prof: dict[str, Any]
) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = phi["patient_name"]
    ds.PatientID = phi["hospital_id"]
    ds.PatientBirthDate = phi["birth_date"]
    ds.PatientSex = clin["sex"]
    ds.PatientAge = f"{int(clin['age_years']):03d}Y"
    ds.PatientWeight = _ds(acq["weight_kg"])
    ds.PatientSize = _ds(round(acq["height_cm"] / 100.0, 2))
    ds.StudyInstanceUID = phi["study_uid"]
    ds.StudyDate = acq["study_date"]
    ds.StudyTime = _tm(acq["injection_s"] + acq["injection_to_scan_s"] - 300)
    ds.StudyID = "1"
    ds.AccessionNumber = phi["accession_number"]
    ds.StudyDescription = phi["study_description"]
    ds.ReferringPhysicianName = phi["referring_physician"]
    ds.OperatorsName = phi["operator"]
    ds.InstitutionName = phi["institution"]
    ds.StationName = phi["station"]
    ds.Manufacturer = prof["manufacturer"]
    ds.ManufacturerModelName = prof["model"]
    ds.FrameOfReferenceUID = phi["frame_of_reference_uid"]
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16


def _file_meta(sop_class: str, sop_uid: str) -> Any:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


_PET_SOP = "1.2.840.10008.5.1.4.1.1.128"
_CT_SOP = "1.2.840.10008.5.1.4.1.1.2"


class _SeriesWriter:
    """Writes a series' slice files with pydicom's element encoder, encoding the shared header once.

    ``Dataset.save_as`` re-encodes the ~70 header elements every slice of a
    series shares, for every slice: that was two thirds of the generation time.
    This encodes each element of ``base`` once (after the same ambiguous-VR
    correction ``dcmwrite`` applies), and per slice only the elements that
    change, then joins them in tag order behind the preamble and the file meta
    information written by :func:`pydicom.filewriter.write_file_meta_info`. The
    files are byte-identical to ``Dataset.save_as(..., enforce_file_format=True)``
    (``tests/test_synth.py`` compares them); nothing here encodes a value by hand.
    """

    def __init__(self, base: Any, sop_class: str) -> None:
        from pydicom.filewriter import correct_ambiguous_vr

        self.base = correct_ambiguous_vr(base, True)
        self.sop_class = sop_class
        self.encoding = base.get("SpecificCharacterSet", "iso8859")
        self.header = {elem.tag: self._encode(elem) for elem in self.base}

    def _encode(self, elem: Any) -> bytes:
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_data_element

        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = False, True
        write_data_element(fp, elem, self.encoding)
        return fp.getvalue()

    def write(self, path: Path, sop_uid: str, ds: Any) -> None:
        """Write one slice: ``base`` with the elements of ``ds`` (its slice values) added or replacing."""
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import correct_ambiguous_vr_element, write_file_meta_info

        ds.SOPInstanceUID = sop_uid
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = False, True
        fp.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fp, _file_meta(self.sop_class, sop_uid), enforce_standard=True)
        own = {e.tag: self._encode(correct_ambiguous_vr_element(e, self.base, True)) for e in ds}
        parts = {**self.header, **own}
        fp.write(b"".join(parts[tag] for tag in sorted(parts)))
        path.write_bytes(fp.getvalue())


def _write_pet_dicom(
    cfg: SynthConfig,
    folder: Path,
    grid: Grid,
    bqml: np.ndarray,
    phi: dict[str, Any],
    clin: pd.Series,
    acq: pd.Series,
    naming: str,
    rng: np.random.Generator,
) -> np.ndarray:
    """Write the PET series, one file per slice; returns the Bq/ml the files decode to, ``(D, H, W)``.

    Stored values are int16 with a RescaleSlope per slice (slice maximum / 32767),
    as scanners write them; activity is decay-corrected to the series start.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    prof = SCANNERS[acq["scanner"]]
    pid = clin["patient_id"]
    t_inj = float(acq["injection_s"])
    t_start = t_inj + float(acq["injection_to_scan_s"])
    dz, dy, dx = grid.spacing
    n = grid.shape[0]
    instance = _instance_numbers(acq["instance_order"], n, rng)
    decoded = np.empty(bqml.shape, dtype=np.float64)
    radio = Dataset()
    radio.Radiopharmaceutical = RADIOPHARMACEUTICAL
    radio.RadiopharmaceuticalRoute = "Intravenous"
    radio.RadiopharmaceuticalStartTime = _tm(t_inj)
    radio.RadiopharmaceuticalStartDateTime = acq["study_date"] + _tm(t_inj)
    radio.RadionuclideTotalDose = _ds(acq["injected_dose_bq"])
    radio.RadionuclideHalfLife = _ds(GA68_HALF_LIFE_S)
    radio.RadionuclidePositronFraction = "0.891"
    code = Dataset()
    code.CodeValue = "C-131A3"
    code.CodingSchemeDesignator = "SRT"
    code.CodeMeaning = "^68^Gallium"
    radio.RadionuclideCodeSequence = DicomSequence([code])
    base = Dataset()
    _common_header(base, phi, clin, acq, prof)
    base.SOPClassUID = _PET_SOP
    base.Modality = "PT"
    base.ImageType = ["ORIGINAL", "PRIMARY"]
    base.SeriesInstanceUID = phi["pet_series_uid"]
    base.SeriesNumber = 4
    base.SeriesDescription = phi["pet_series_description"]
    base.SeriesDate = acq["study_date"]
    base.SeriesTime = _tm(t_start)
    base.AcquisitionDate = acq["study_date"]
    base.ContentDate = acq["study_date"]
    base.NumberOfSlices = n
    base.SeriesType = ["WHOLE BODY", "IMAGE"]
    base.Units = "BQML"
    base.CountsSource = "EMISSION"
    base.DecayCorrection = "START"
    base.CorrectedImage = ["NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN"]
    base.AttenuationCorrectionMethod = "CTAC"
    base.ReconstructionMethod = prof["reconstruction"]
    base.ActualFrameDuration = int(prof["bed_s"] * 1000)
    base.RadiopharmaceuticalInformationSequence = DicomSequence([radio])
    base.SliceThickness = _ds(dz)
    base.PixelSpacing = [_ds(dy), _ds(dx)]
    base.Rows, base.Columns = grid.shape[1:]
    base.BitsStored = 16
    base.HighBit = 15
    base.PixelRepresentation = 1
    base.RescaleIntercept = "0"
    x0, y0 = _ds(grid.x[0]), _ds(grid.y[0])
    writer = _SeriesWriter(base, _PET_SOP)
    for k in range(n):
        bed = int((grid.z[0] - grid.z[k]) // prof["bed_mm"])
        t_acq = t_start + bed * prof["bed_s"]
        slope_s = _ds(max(float(bqml[k].max()), 1.0) / 32767.0)
        slope = float(slope_s)
        stored = np.clip(np.rint(bqml[k] / slope), 0, 32767).astype(np.int16)
        decoded[k] = stored * slope
        ds = Dataset()
        ds.AcquisitionTime = _tm(t_acq)
        ds.ContentTime = _tm(t_acq + prof["bed_s"])
        ds.InstanceNumber = int(instance[k])
        ds.ImageIndex = int(instance[k])
        ds.DecayFactor = _ds(2.0 ** ((t_acq - t_start) / GA68_HALF_LIFE_S))
        ds.FrameReferenceTime = _ds((t_acq - t_start) * 1000.0)
        ds.ImagePositionPatient = [x0, y0, _ds(grid.z[k])]
        ds.SliceLocation = _ds(grid.z[k])
        ds.RescaleSlope = slope_s
        ds.PixelData = stored.tobytes()
        writer.write(folder / _slice_name(cfg, naming, pid, "pet", k), _uid(cfg, pid, "pet", k), ds)
    return decoded


def _slice_name(cfg: SynthConfig, naming: str, pid: str, series: str, k: int) -> str:
    stem = _hexname(_cfg_hash(cfg), pid, series, k)
    if naming == "dcm":
        return f"{stem}.dcm"
    if naming == "ima":
        return f"{stem.upper()}.IMA"
    return stem


def _write_ct_dicom(
    cfg: SynthConfig,
    folder: Path,
    grid: Grid,
    hu: np.ndarray,
    phi: dict[str, Any],
    clin: pd.Series,
    acq: pd.Series,
    naming: str,
    rng: np.random.Generator,
) -> None:
    """Write the CT series: stored values with the patient's RescaleSlope/Intercept variant."""
    from pydicom.dataset import Dataset

    prof = SCANNERS[acq["scanner"]]
    pid = clin["patient_id"]
    slope, intercept, signed, bits, padded = CT_RESCALE_VARIANTS[int(acq["ct_rescale"])]
    t_ct = float(acq["injection_s"]) + float(acq["injection_to_scan_s"]) - 150.0
    dz, dy, dx = grid.spacing
    n = grid.shape[0]
    instance = _instance_numbers(acq["instance_order"], n, rng)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    stored_all = np.clip(np.rint((hu - intercept) / slope), lo, hi)
    pad_value = None
    if padded:
        pad_value = int(round((-3024.0 - intercept) / slope))
        r = grid.x[None, :] ** 2 + grid.y[:, None] ** 2
        stored_all[:, r > (prof["ct_fov_mm"] / 2.0) ** 2] = pad_value
    stored_all = stored_all.astype(np.int16 if signed else np.uint16)
    base = Dataset()
    _common_header(base, phi, clin, acq, prof)
    base.SOPClassUID = _CT_SOP
    base.Modality = "CT"
    base.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    base.SeriesInstanceUID = phi["ct_series_uid"]
    base.SeriesNumber = 2
    base.SeriesDescription = phi["ct_series_description"]
    base.SeriesDate = acq["study_date"]
    base.SeriesTime = _tm(t_ct)
    base.AcquisitionDate = acq["study_date"]
    base.ContentDate = acq["study_date"]
    base.ContentTime = _tm(t_ct + 30)
    base.KVP = "120"
    base.XRayTubeCurrent = 160 if acq["ct_contrast"] else 80
    base.ConvolutionKernel = prof["kernel"]
    base.ReconstructionDiameter = _ds(prof["ct_fov_mm"])
    base.GantryDetectorTilt = "0"
    if acq["ct_contrast"]:
        base.ContrastBolusAgent = "Iomeprol 350"
        base.ContrastBolusRoute = "IV"
    base.SliceThickness = _ds(dz)
    base.PixelSpacing = [_ds(dy), _ds(dx)]
    base.Rows, base.Columns = stored_all.shape[1:]
    base.BitsStored = bits
    base.HighBit = bits - 1
    base.PixelRepresentation = int(signed)
    if pad_value is not None:
        base.PixelPaddingValue = pad_value
    base.RescaleIntercept = _ds(intercept)
    base.RescaleSlope = _ds(slope)
    base.RescaleType = "HU"
    base.WindowCenter = "40"
    base.WindowWidth = "400"
    x0, y0 = _ds(grid.x[0]), _ds(grid.y[0])
    writer = _SeriesWriter(base, _CT_SOP)
    for k in range(n):
        ds = Dataset()
        ds.AcquisitionTime = _tm(t_ct + 1 + k * 0.05)
        ds.InstanceNumber = int(instance[k])
        ds.ImagePositionPatient = [x0, y0, _ds(grid.z[k])]
        ds.SliceLocation = _ds(grid.z[k])
        ds.PixelData = stored_all[k].tobytes()
        writer.write(folder / _slice_name(cfg, naming, pid, "ct", k), _uid(cfg, pid, "ct", k), ds)


def _series_folders(root: Path, cfg: SynthConfig, pid: str, layout: str) -> tuple[Path, Path]:
    a, b, c = (_hexname(_cfg_hash(cfg), pid, s, n=8).upper() for s in ("study", "pet-dir", "ct-dir"))
    if layout == "nested":
        return root / a / b, root / a / c
    if layout == "flat":
        return root / b, root / c
    return root / a, root / a  # mixed: both series in one folder


def _build_patient(cfg: SynthConfig, index: int, cohort: SyntheticCohort, out: Path) -> None:
    """Render and write one patient: ground truth first, then its imaging folder renamed into place."""
    clin = cohort.clinical.iloc[index]
    acq = cohort.acquisition.iloc[index]
    pid = clin["patient_id"]
    scanner = acq["scanner"]
    phantom = build_phantom(cfg, index, cohort)
    pet_grid, ct_grid = scanner_grids(cfg, phantom, scanner)
    labels, suv_true, _ = render(phantom, pet_grid)
    suv_meas = pet_measurement(cfg, index, suv_true, pet_grid, scanner)
    del suv_true
    weight, dose, uptake = (
        float(acq["weight_kg"]),
        float(acq["injected_dose_bq"]),
        float(acq["injection_to_scan_s"]),
    )
    bqml = suv_to_bqml(suv_meas, weight, dose, uptake)
    del suv_meas
    ct_hu = np.concatenate(
        [
            ct_measurement(
                cfg, index, render(phantom, ct_grid.subset(k, k + 32))[2], ct_grid.subset(k, k + 32), scanner
            )
            for k in range(0, ct_grid.shape[0], 32)
        ]
    )
    phi = sample_phi(cfg, index, cohort)
    rng = stream_rng(cfg, "phantom", index, 3)
    tmp_root = out / ".partial"
    tmp_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{store.child(tmp_root, pid).name}-", dir=tmp_root))
    try:
        if cfg.image_format == "dicom":
            pet_dir, ct_dir = _series_folders(tmp, cfg, pid, acq["layout"])
            pet_dir.mkdir(parents=True, exist_ok=True)
            ct_dir.mkdir(parents=True, exist_ok=True)
            decoded = _write_pet_dicom(cfg, pet_dir, pet_grid, bqml, phi, clin, acq, acq["file_naming"], rng)
            _write_ct_dicom(cfg, ct_dir, ct_grid, ct_hu, phi, clin, acq, acq["file_naming"], rng)
        else:
            decoded = bqml.astype(np.float32).astype(np.float64)
            (tmp / "pet.nii.gz").write_bytes(
                _nifti_bytes(to_nifti_array(decoded.astype(np.float32)), pet_grid.nifti_affine())
            )
            slope, intercept, signed, _, _ = CT_RESCALE_VARIANTS[int(acq["ct_rescale"])]
            dtype = np.int16 if signed else np.uint16
            info = np.iinfo(dtype)
            stored = np.clip(np.rint((ct_hu - intercept) / slope), info.min, info.max).astype(dtype)
            (tmp / "ct.nii.gz").write_bytes(
                _nifti_bytes(to_nifti_array(stored), ct_grid.nifti_affine(), (slope, intercept))
            )
            sidecar = {
                "units": "Bq/ml",
                "patient_weight_kg": weight,
                "injected_dose_bq": dose,
                "injection_to_scan_s": uptake,
                "decay_corrected_to": "scan_start",
                "half_life_s": GA68_HALF_LIFE_S,
                "radiopharmaceutical": RADIOPHARMACEUTICAL,
                "scanner": f"{SCANNERS[scanner]['manufacturer']} {SCANNERS[scanner]['model']}",
                "PatientName": phi["patient_name"],
                "PatientID": phi["hospital_id"],
                "PatientBirthDate": phi["birth_date"],
                "AccessionNumber": phi["accession_number"],
                "InstitutionName": phi["institution"],
                "StationName": phi["station"],
                "SeriesDescription": phi["pet_series_description"],
            }
            (tmp / "pet.json").write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
        suv_decoded = bqml_to_suv(decoded, weight, dose, uptake).astype(np.float32)
        affine = pet_grid.nifti_affine()
        store.write_bytes(
            store.child(out / "ground_truth" / "labels", f"{pid}.nii.gz"), _nifti_bytes(to_nifti_array(labels), affine)
        )
        store.write_bytes(
            store.child(out / "ground_truth" / "suv", f"{pid}.nii.gz"), _nifti_bytes(to_nifti_array(suv_decoded), affine)
        )
        final = store.child(out / "imaging", pid)
        if final.exists():
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _patient_done(out: Path, pid: str) -> bool:
    return (
        store.child(out / "imaging", pid).is_dir()
        and store.child(out / "ground_truth" / "labels", f"{pid}.nii.gz").is_file()
        and store.child(out / "ground_truth" / "suv", f"{pid}.nii.gz").is_file()
    )


_OWN_ENTRIES = ("clinical.csv", "imaging", "ground_truth", "config.yaml", "complete.json", ".partial")


def _build_patient_checked(cfg: SynthConfig, index: int, cohort: SyntheticCohort, out: Path) -> int:
    """:func:`_build_patient`, with any failure reported as a :class:`SynthError` naming the patient."""
    try:
        _build_patient(cfg, index, cohort, out)
    except Exception as exc:
        pid = cohort.clinical["patient_id"].iloc[index]
        raise SynthError(f"patient {pid}: {type(exc).__name__}: {exc}") from exc
    return index


def _build_patient_job(args: tuple[SynthConfig, int, SyntheticCohort, Path]) -> int:
    return _build_patient_checked(*args)


def generate_cohort(
    cfg: SynthConfig, out_dir: str | Path, progress: bool = True, *, n_jobs: int = 1, overwrite: bool = False
) -> Path:
    """Write the synthetic cohort (DESIGN "Raw export") into ``out_dir``; return ``out_dir``.

    Layout: ``clinical.csv``; ``imaging/<patient_id>/**`` (DICOM PET + CT in
    uninformatively named sub-folders, or ``pet.nii.gz`` + ``pet.json`` +
    ``ct.nii.gz``); ``ground_truth/`` with ``truth.csv``, ``lesions.csv``,
    ``acquisition.csv``, ``labels.json``, ``phi.json`` (every fake identifying
    string planted), ``labels/<pid>.nii.gz`` and ``suv/<pid>.nii.gz`` (the SUVbw
    the PET files decode to, on the PET grid); ``config.yaml``; and
    ``complete.json``, written last.

    A folder already holding a complete cohort of the same configuration is
    left as it is. An interrupted run resumes: each patient is built in
    ``.partial/`` and renamed into ``imaging/`` only when whole.

    Parameters
    ----------
    cfg : SynthConfig
    out_dir : path
    progress : bool
        Show a tqdm progress bar over patients.
    n_jobs : int
        Worker processes (output does not depend on it).
    overwrite : bool
        If ``out_dir`` holds a cohort of another configuration, delete the
        generator's own entries and regenerate (otherwise :class:`SynthError`).
    """
    out = Path(out_dir)
    marker = out / "complete.json"
    cfg_path = out / "config.yaml"
    if marker.exists():
        done = json.loads(marker.read_text())
        if done.get("config_hash") == cfg.hash() and cfg_path.exists():
            get_logger("synth").debug(f"synthetic cohort of the same configuration found complete in {out}: reused")
            return out
    if (
        cfg_path.exists()
        and SynthConfig.from_yaml(cfg_path).hash() != cfg.hash()
        or (marker.exists() and json.loads(marker.read_text()).get("config_hash") != cfg.hash())
    ):
        if not overwrite:
            raise SynthError(
                f"{out} holds a synthetic cohort of another configuration; choose another folder or pass overwrite=True"
            )
        for name in _OWN_ENTRIES:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    elif out.exists() and not cfg_path.exists():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _OWN_ENTRIES)
        if foreign:
            raise SynthError(f"{out} is not empty and was not written by the generator (holds {foreign[:3]})")
    out.mkdir(parents=True, exist_ok=True)
    if marker.exists():
        marker.unlink()
    store.write_text(cfg_path, cfg.to_yaml())
    if (out / ".partial").exists():
        shutil.rmtree(out / ".partial")
    cohort = sample_cohort(cfg)
    ids = list(cohort.clinical["patient_id"])
    todo = [i for i, pid in enumerate(ids) if not _patient_done(out, pid)]
    from tqdm.auto import tqdm

    log = get_logger("synth")
    log.debug(f"{len(ids) - len(todo)} of {len(ids)} synthetic patients already written; writing {len(todo)} "
              f"({cfg.image_format}, {n_jobs} worker(s))")
    bar = tqdm(total=len(ids), initial=len(ids) - len(todo), desc="synthetic patients", disable=not progress)
    if n_jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=n_jobs) as pool:
            for i, _ in zip(todo, pool.map(_build_patient_job, [(cfg, i, cohort, out) for i in todo]), strict=True):
                log.debug(f"patient {ids[i]} written")
                bar.update()
    else:
        for i in todo:
            _build_patient_checked(cfg, i, cohort, out)
            log.debug(f"patient {ids[i]} written")
            bar.update()
    bar.close()
    if (out / ".partial").exists():
        shutil.rmtree(out / ".partial")
    gt = out / "ground_truth"
    store.write_csv(out / "clinical.csv", cohort.clinical)
    store.write_csv(gt / "truth.csv", cohort.truth)
    store.write_csv(gt / "lesions.csv", cohort.lesions)
    store.write_csv(gt / "acquisition.csv", cohort.acquisition)
    store.write_json(gt / "labels.json", {str(k): v for k, v in LABELS.items()})
    phi = sorted(
        {s for i in range(len(ids)) for s in _phi_strings(sample_phi(cfg, i, cohort), cfg.image_format)}
    )
    store.write_json(gt / "phi.json", phi)
    store.write_json(
        marker,
        {
            "config_hash": cfg.hash(),
            "generator": "prrt_utils.synthetic",
            "n_patients": len(ids),
            "image_format": cfg.image_format,
        },
    )
    return out
