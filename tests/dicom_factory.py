"""Test-only writer of small DICOM and NIfTI PET/CT series (independent of prrt_utils.synthetic).

Everything here is written from the DICOM standard directly with pydicom, so
the loader is checked against files its author did not generate with the
code under test. Values are given in physical units (HU, Bq/ml) on a
:class:`Geometry`; the writer quantises them with a RescaleSlope/Intercept per
slice and plants fake identifying data in every header.
"""

from __future__ import annotations

import dataclasses
import gzip
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

FAKE_PHI = {
    "PatientName": "Quackenbush^Walpurga",
    "PatientID": "HOSP-99887766",
    "PatientBirthDate": "19510203",
    "AccessionNumber": "ACC77665544",
    "InstitutionName": "Spital Zwiebelfingen",
    "SeriesDescription": "WB Quackenbush private",
}
"""Identifying strings planted in every header; none may reach a Volume, a message or an output."""

GA68 = 4062.6


@dataclasses.dataclass(frozen=True)
class Geometry:
    """A slice stack: ``shape`` (D, H, W), ``spacing`` (slice, row, column) mm, first voxel at ``origin`` (LPS).

    ``row_dir``/``col_dir`` are the ImageOrientationPatient cosines (``row_dir``
    = direction of increasing column index). Slice ``d`` lies at
    ``origin + d * spacing[0] * stack_dir`` with ``stack_dir`` = minus the
    normal (head first) unless ``feet_first``.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    row_dir: tuple[float, float, float] = (1.0, 0.0, 0.0)
    col_dir: tuple[float, float, float] = (0.0, 1.0, 0.0)
    feet_first: bool = False

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    @property
    def stack_dir(self) -> np.ndarray:
        return self.normal if self.feet_first else -self.normal

    def affine(self) -> np.ndarray:
        """Voxel (d, h, w) -> LPS mm."""
        a = np.eye(4)
        a[:3, 0] = self.stack_dir * self.spacing[0]
        a[:3, 1] = np.asarray(self.col_dir) * self.spacing[1]
        a[:3, 2] = np.asarray(self.row_dir) * self.spacing[2]
        a[:3, 3] = self.origin
        return a

    def positions(self) -> np.ndarray:
        return np.asarray(self.origin) + np.arange(self.shape[0])[:, None] * self.spacing[0] * self.stack_dir

    def centres(self) -> np.ndarray:
        """LPS of every voxel centre, ``(D, H, W, 3)``."""
        idx = np.stack(np.meshgrid(*[np.arange(n) for n in self.shape], indexing="ij"), -1).astype(float)
        a = self.affine()
        return idx @ a[:3, :3].T + a[:3, 3]


def ball(
    geom: Geometry, centre: Sequence[float], radius_mm: float, inside: float, outside: float
) -> np.ndarray:
    """Values of a ball on ``geom``, ``(D, H, W)``, with 4^3 sub-samples per voxel (partial volume)."""
    a = geom.affine()
    base = geom.centres()
    offsets = (np.arange(4) + 0.5) / 4 - 0.5
    frac = np.zeros(geom.shape)
    for od in offsets:
        for oh in offsets:
            for ow in offsets:
                p = base + a[:3, :3] @ np.array([od, oh, ow])
                frac += np.linalg.norm(p - np.asarray(centre), axis=-1) <= radius_mm
    frac /= 64.0
    return outside + (inside - outside) * frac


def _uid(*parts: Any) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["dicom-factory", *(str(p) for p in parts)])


def pet_header(
    weight_kg: float | None = 70.0,
    dose_bq: float = 150e6,
    date: str = "20200305",
    injection_time: str = "101500",
    series_time: str = "111500",
    half_life_s: float = GA68,
    decay: str = "START",
    units: str = "BQML",
    use_datetime: bool = True,
) -> dict[str, Any]:
    """Series-level PET tags (Units, DecayCorrection, weight, dose, times)."""
    from pydicom.dataset import Dataset

    radio = Dataset()
    radio.Radiopharmaceutical = "Ga-68 DOTATOC"
    radio.RadiopharmaceuticalStartTime = injection_time
    if use_datetime:
        radio.RadiopharmaceuticalStartDateTime = date + injection_time
    radio.RadionuclideTotalDose = f"{dose_bq:.1f}"
    radio.RadionuclideHalfLife = f"{half_life_s:g}"
    head = {
        "Units": units,
        "DecayCorrection": decay,
        "CorrectedImage": ["ATTN", "DECY", "SCAT"],
        "SeriesDate": date,
        "SeriesTime": series_time,
        "AcquisitionDate": date,
        "AcquisitionTime": series_time,
        "RadiopharmaceuticalInformationSequence": [radio],
    }
    if weight_kg is not None:
        head["PatientWeight"] = f"{weight_kg:g}"
    return head


def write_series(
    folder: str | Path,
    values: np.ndarray,
    modality: str,
    geom: Geometry,
    *,
    slopes: Sequence[float] | float | None = None,
    intercept: float = 0.0,
    header: dict[str, Any] | None = None,
    edit: Callable[[Any, int], None] | None = None,
    series_key: str = "a",
    names: str = "random",
    instance: str = "shuffled",
    seed: int = 0,
) -> list[Path]:
    """Write ``values`` (HU or Bq/ml, ``(D, H, W)``) as one file per slice; return the paths in slice order.

    Parameters
    ----------
    slopes : per-slice RescaleSlope or one value; default: slice max / 30000 (PET) or 1 (CT).
    intercept : RescaleIntercept (CT).
    header : extra series-level tags (keyword -> value).
    edit : called as ``edit(ds, d)`` before each slice is saved (to break things).
    series_key : seeds the SeriesInstanceUID.
    names : ``"random"`` (hex), ``"sequential"`` or ``"reversed"`` file names.
    instance : ``"shuffled"``, ``"ascending"`` or ``"descending"`` InstanceNumber.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DSeq
    from pydicom.uid import ExplicitVRLittleEndian

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    D, H, W = values.shape
    if slopes is None:
        if modality == "PT":
            slopes = [max(float(np.abs(values[d]).max()), 1.0) / 30000.0 for d in range(D)]
        else:
            slopes = [1.0] * D
    elif np.isscalar(slopes):
        slopes = [float(slopes)] * D
    sop_class = "1.2.840.10008.5.1.4.1.1.128" if modality == "PT" else "1.2.840.10008.5.1.4.1.1.2"
    series_uid = _uid(series_key, "series")
    inst = {
        "ascending": np.arange(1, D + 1),
        "descending": np.arange(D, 0, -1),
        "shuffled": rng.permutation(D) + 1,
    }[instance]
    order_names = {
        "random": [f"{rng.integers(16**10):010x}" for _ in range(D)],
        "sequential": [f"IM{d + 1:04d}.dcm" for d in range(D)],
        "reversed": [f"IM{D - d:04d}.dcm" for d in range(D)],
    }[names]
    pos = geom.positions()
    paths = []
    for d in range(D):
        ds = Dataset()
        sop_uid = _uid(series_key, "slice", d)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        for k, v in FAKE_PHI.items():
            setattr(ds, k, v)
        ds.StudyInstanceUID = _uid("study")
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = _uid("for")
        ds.Modality = modality
        ds.Manufacturer = "FACTORY"
        ds.ManufacturerModelName = "Unit Test Scanner"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = int(inst[d])
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos[d]]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*geom.row_dir, *geom.col_dir)]
        ds.PixelSpacing = [f"{geom.spacing[1]:g}", f"{geom.spacing[2]:g}"]
        ds.SliceThickness = f"{geom.spacing[0]:g}"
        ds.Rows, ds.Columns = H, W
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = f"{slopes[d]:.10g}"
        ds.RescaleIntercept = f"{intercept:g}"
        if modality == "CT":
            ds.KVP = "120"
            ds.ConvolutionKernel = "B30f"
        for k, v in (header or {}).items():
            setattr(ds, k, DSeq(v) if isinstance(v, list) and v and isinstance(v[0], Dataset) else v)
        slope = float(ds.RescaleSlope)
        stored = np.clip(np.rint((values[d] - intercept) / slope), -32768, 32767).astype(np.int16)
        ds.PixelData = stored.tobytes()
        if edit is not None:
            edit(ds, d)
        path = folder / order_names[d]
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def quantised(values: np.ndarray, paths: Sequence[Path]) -> np.ndarray:
    """What the files of :func:`write_series` decode to (stored * slope + intercept), ``(D, H, W)``."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    return np.stack([apply_modality_lut(pydicom.dcmread(p).pixel_array, pydicom.dcmread(p)) for p in paths])


def write_nifti(
    path: str | Path,
    array: np.ndarray,
    affine_lps: np.ndarray,
    slope_inter: tuple[float, float] | None = None,
) -> None:
    """Save ``array`` ``(D, H, W)`` whose voxel (d, h, w) lies at ``affine_lps @ (d, h, w, 1)`` as NIfTI (RAS)."""
    import nibabel as nib

    perm = np.zeros((4, 4))
    perm[0, 2] = perm[1, 1] = perm[2, 0] = perm[3, 3] = 1.0
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps @ perm
    data = np.ascontiguousarray(np.transpose(array, (2, 1, 0)))
    img = nib.Nifti1Image(data, ras)
    img.header.set_qform(ras, code=1)
    img.header.set_sform(ras, code=1)
    if slope_inter is not None:
        img.header.set_slope_inter(*slope_inter)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(gzip.compress(img.to_bytes(), mtime=0))


# ---------------------------------------------------------------------------
# A small patient: water cylinder body with lungs, a bed, a hot ball
# ---------------------------------------------------------------------------

HOT = (30.0, -20.0, -150.0)
"""LPS centre (mm) of the hot lesion of :func:`patient_values`."""


def patient_values(geom: Geometry, modality: str, apex_z: float = 0.0) -> np.ndarray:
    """A body on ``geom``: CT in HU or PET in SUV.

    Body: elliptic cylinder (semi-axes 150 x 110 mm, LPS x/y) from ``apex_z + 60``
    down; lungs: two ellipsoids (-850 HU, SUV 0.4) whose top is at ``apex_z``;
    bed: a 10 mm plate 20 mm behind the body (200 HU); hot ball of radius 15 mm
    at :data:`HOT` (CT 60 HU, SUV 12); body SUV 1, HU 20.
    """
    c = geom.centres()
    x, y, z = c[..., 0], c[..., 1], c[..., 2]
    body = ((x / 150.0) ** 2 + (y / 110.0) ** 2 <= 1.0) & (z <= apex_z + 60.0)
    lungs = np.zeros(geom.shape, bool)
    for cx in (-70.0, 70.0):
        lungs |= ((x - cx) / 50.0) ** 2 + (y / 60.0) ** 2 + ((z - (apex_z - 120.0)) / 120.0) ** 2 <= 1.0
    lungs &= body
    bed = (y >= 130.0) & (y <= 140.0) & (np.abs(x) <= 180.0)
    hot = np.linalg.norm(c - np.asarray(HOT), axis=-1) <= 15.0
    if modality == "CT":
        v = np.full(geom.shape, -1000.0)
        v[body] = 20.0
        v[lungs] = -850.0
        v[bed] = 200.0
        v[hot] = 60.0
    else:
        v = np.zeros(geom.shape)
        v[body] = 1.0
        v[lungs] = 0.4
        v[hot] = 12.0
    return v


PET_GEOM = Geometry(shape=(30, 40, 40), spacing=(20.0, 12.0, 12.0), origin=(-234.0, -234.0, 50.0))
CT_GEOM = Geometry(shape=(30, 48, 48), spacing=(20.0, 10.0, 10.0), origin=(-235.0, -235.0, 50.0))


def write_patient(
    folder: str | Path,
    *,
    weight_kg: float = 70.0,
    dose_bq: float = 150e6,
    pet_geom: Geometry = PET_GEOM,
    ct_geom: Geometry = CT_GEOM,
    ct_slope: float = 1.0,
    ct_intercept: float = -1024.0,
    pet_edit: Callable[[Any, int], None] | None = None,
    ct_edit: Callable[[Any, int], None] | None = None,
    pet_header_kw: dict[str, Any] | None = None,
    key: str = "p",
    seed: int = 0,
) -> dict[str, Any]:
    """Write a PET + CT DICOM patient into ``folder/pet`` and ``folder/ct``; return the truth.

    Returns
    -------
    dict
        ``suv`` (on ``pet_geom``), ``hu`` (on ``ct_geom``), ``suv_factor``,
        ``pet_paths``, ``ct_paths``.
    """
    folder = Path(folder)
    head = pet_header(weight_kg=weight_kg, dose_bq=dose_bq, **(pet_header_kw or {}))
    suv = patient_values(pet_geom, "PT")
    elapsed = 3600.0  # 10:15 -> 11:15
    factor = weight_kg * 1000.0 / (dose_bq * 2.0 ** (-elapsed / GA68))
    bqml = suv / factor
    pet_paths = write_series(
        folder / "pet", bqml, "PT", pet_geom, header=head, edit=pet_edit, series_key=key + "pet", seed=seed
    )
    hu = patient_values(ct_geom, "CT")
    ct_paths = write_series(
        folder / "ct",
        hu,
        "CT",
        ct_geom,
        slopes=ct_slope,
        intercept=ct_intercept,
        edit=ct_edit,
        series_key=key + "ct",
        seed=seed + 1,
    )
    return {"suv": suv, "hu": hu, "suv_factor": factor, "pet_paths": pet_paths, "ct_paths": ct_paths}
