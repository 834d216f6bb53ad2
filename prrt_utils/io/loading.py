"""Load one patient's PET and CT from a DICOM or NIfTI export, in SUVbw and HU.

Paper sections 2.2 (PET/CT acquired together, so the CT is aligned with the
PET) and 2.5 (preprocessing: slopes harmonised from the DICOM metadata): PET
activity concentrations are converted to body-weight SUV from the DICOM
header (injected dose, time of injection, half-life, decay correction,
patient weight) and CT stored values to Hounsfield units through
RescaleSlope/RescaleIntercept. This module reads and
converts; resampling to the common grid is :mod:`prrt_utils.data.preprocess`.

Coordinate convention
---------------------
Every :class:`Volume` holds ``array`` of shape ``(D, H, W)`` and a 4 x 4
``affine`` that maps a voxel index, written as the column ``(d, h, w, 1)``
(slice, row, column; the voxel *centre*), to DICOM patient coordinates LPS in
millimetres (x towards the patient's left, y towards posterior, z towards the
head)::

    [x, y, z, 1]^T = affine @ [d, h, w, 1]^T

Arrays are re-ordered (flips and axis permutations only, never interpolation)
so that ``d`` runs head to feet, ``h`` anterior to posterior and ``w`` from
the patient's right to left, whatever order the files were stored in; the
affine is updated with them, so the geometry is exact for oblique series too.
NIfTI files carry a RAS affine (nibabel); it is converted to LPS by negating
x and y (``diag(-1, -1, 1, 1) @ affine``).

DICOM series
------------
Series are found by ``(Modality, SeriesInstanceUID)``, never by file or folder
names. Slices are ordered by the projection of ImagePositionPatient on the
slice normal (the cross product of the two ImageOrientationPatient direction
cosines), never by InstanceNumber or file name. A series is refused (see
:class:`InputError`) for a gap larger than 1.5 x the median slice spacing
(missing slices), other uneven spacing (more than 10 % from the median),
duplicated positions, slices of different orientation, pixel spacing or
matrix, or a gantry tilt (GantryDetectorTilt or slice positions that drift
sideways). RescaleSlope/RescaleIntercept are applied per slice
(:func:`pydicom.pixels.apply_modality_lut`); a CT without them is refused
rather than guessed.

Choice of series when a patient folder holds several
----------------------------------------------------
PET: attenuation-corrected first (CorrectedImage contains ``ATTN``), then
Units that give SUV (``BQML``, ``GML``), then the most slices. CT: the same
FrameOfReferenceUID as the chosen PET first, then ORIGINAL/AXIAL ImageType,
then the most slices. If the best two candidates are still equal on every
criterion (for example two PET reconstructions of the same kind mixed in one
folder), the patient is refused: there is no defensible way to pick one. The
choice made is recorded in ``Volume.meta["series_choice"]``.

SUVbw
-----
``SUVbw = C * W / D_ref`` with ``C`` the activity concentration (Bq/ml),
``W`` the patient weight in g (PatientWeight in kg x 1000; tissue density
1 g/ml) and ``D_ref`` the injected dose (RadionuclideTotalDose, Bq) decayed to
the time the image is decay-corrected to: with ``DecayCorrection == "START"``
``D_ref = D * 2 ** (-t / T_half)`` with ``t`` from the injection
(RadiopharmaceuticalStartDateTime when it holds a time of day; else
RadiopharmaceuticalStartTime on StartDateTime's date, else on the scan's date)
to the scan start (:func:`scan_start`, QIBA's vendor-neutral rule:
SeriesDate/SeriesTime unless it lies after the earliest
AcquisitionDate/AcquisitionTime, as after a re-reconstruction, then that) and
``T_half`` from RadionuclideHalfLife; with ``"ADMIN"`` the image is already
corrected to the injection and ``D_ref = D``. Units ``GML`` are taken as SUVbw
already. Units ``CNTS`` (or anything else), DecayCorrection ``NONE``, a
missing weight, dose, half-life or injection time are refused, and so are
implausible values, with the number and the rule: a weight outside
:data:`WEIGHT_RANGE_KG`, a half-life that is not the nuclide's within 1 % (the
nuclide named by RadionuclideCodeSequence or Radiopharmaceutical, else the one
whose half-life it is: :data:`NUCLIDES`), a dose outside the nuclide's range, a
time from injection to scan outside 0-12 h. Time zones in
RadiopharmaceuticalStartDateTime are ignored (the scanner's local time is
assumed throughout). The whole-body SUVmax is checked after loading
(:func:`prrt_utils.data.preprocess.check_suv_max`).

Pairing: PET and CT must agree on PatientID, StudyInstanceUID and
FrameOfReferenceUID (:func:`check_pairing`; a CT registered from another
study may be allowed per patient). Non-axial series, compressed pixel data
without a decoder and non-finite values are refused by name; DICOM files
without preamble are read (``force=True``).

NIfTI
-----
``pet.nii.gz`` with a ``pet.json`` sidecar: ``{"units": "SUVbw"}`` (optionally
with ``"patient_weight_kg"``, for the body-mass rule of preprocessing) or
``{"units": "Bq/ml", "patient_weight_kg", "injected_dose_bq",
"injection_to_scan_s", "decay_corrected_to" ("scan_start" | "injection",
default "scan_start"), "half_life_s" and/or "nuclide" (no default)}``, checked
as a DICOM header is; ``ct.nii.gz`` in HU
(the NIfTI scl_slope/scl_inter are applied by nibabel). A NIfTI without a
qform/sform or with a singular affine is refused.

Privacy: nothing identifying is read into a :class:`Volume` (names, birth
dates, ids, UIDs, accession numbers, free-text descriptions); error messages
name the patient by study id and a file by its position in the sorted folder
listing, never by its path.

Hand-written parts (no maintained library does them): grouping files into
series, slice ordering and geometry checks, the SUV formula and the DICOM
affine. pydicom reads the files and applies the modality LUT, nibabel reads
NIfTI and re-orders axes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "GA68_HALF_LIFE_S",
    "NUCLIDES",
    "WEIGHT_RANGE_KG",
    "InputError",
    "Nuclide",
    "PatientImages",
    "SeriesInfo",
    "SeriesList",
    "Volume",
    "choose_series",
    "decay_factor",
    "discover_series",
    "load_label_map",
    "load_nifti",
    "load_patient",
    "load_series",
    "check_pairing",
    "identify_nuclide",
    "reorient",
    "scan_start",
    "suv_factor",
]

GA68_HALF_LIFE_S = 4062.6
"""Half-life of gallium-68 in seconds (67.71 min)."""


@dataclasses.dataclass(frozen=True)
class Nuclide:
    """A PET radionuclide: its half-life and the injected activities that are plausible for it.

    Attributes
    ----------
    name : str
        ``"Ga-68"``, ``"F-18"``, ...
    half_life_s : float
        Physical half-life in seconds (DDEP/NUBASE values, as scanners write them).
    dose_mbq : (float, float)
        Plausible injected activity in MBq for a diagnostic PET of a child of
        20 kg up to an adult of 300 kg; far outside it a unit was confused
        (MBq or kBq written where Bq are due).
    """

    name: str
    half_life_s: float
    dose_mbq: tuple[float, float]


NUCLIDES: dict[str, Nuclide] = {
    n.name: n
    for n in (
        Nuclide("Ga-68", GA68_HALF_LIFE_S, (20.0, 500.0)),
        Nuclide("F-18", 6586.2, (20.0, 1000.0)),
        Nuclide("Cu-64", 45721.1, (20.0, 500.0)),
        Nuclide("Sc-44", 14292.0, (20.0, 500.0)),
        Nuclide("C-11", 1221.84, (50.0, 1500.0)),
        Nuclide("Zr-89", 282276.0, (10.0, 200.0)),
    )
}
"""The PET nuclides a header may name; SR-PET uses Ga-68, Cu-64, F-18 (SiFAlin) or Sc-44."""

_NUCLIDE_WORDS = {
    "Ga-68": ("ga", "68", "gallium"),
    "F-18": ("f", "18", "fluorine"),
    "Cu-64": ("cu", "64", "copper"),
    "Sc-44": ("sc", "44", "scandium"),
    "C-11": ("c", "11", "carbon"),
    "Zr-89": ("zr", "89", "zirconium"),
}

WEIGHT_RANGE_KG = (20.0, 300.0)
"""Plausible PatientWeight (kg); outside it the weight is in grams or pounds, or mistyped."""

HALF_LIFE_TOLERANCE = 0.01
"""The header's half-life must equal its nuclide's within 1 %."""

MAX_UPTAKE_S = 12 * 3600.0
"""Longest plausible time from injection to scan (12 h: even Cu-64 is imaged within hours)."""

CANONICAL_ORIENTATION = np.array([[2, -1], [1, 1], [0, 1]])
"""nibabel orientation of the canonical array axes in LPS: d along -z, h along +y, w along +x."""

_DICOMDIR_SOP = "1.2.840.10008.1.3.10"
_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
_PIXEL_DATA = 0x7FE00010
_ON_ERROR = ("stop", "skip")


class InputError(Exception):
    """A patient's images cannot be used as they are; the message names patient and problem.

    Attributes
    ----------
    patient_id : str
        Study pseudonym, e.g. ``"PRRT-007"``.
    problem : str
        What is wrong, in words a clinician or data manager can act on.
    """

    def __init__(self, patient_id: str, problem: str) -> None:
        self.patient_id = str(patient_id)
        self.problem = str(problem)
        super().__init__(f"patient {self.patient_id}: {self.problem}")

    def __reduce__(self) -> tuple[Any, ...]:  # survive process pools
        return (type(self), (self.patient_id, self.problem))


@dataclasses.dataclass(frozen=True, eq=False)
class Volume:
    """One image volume in physical units on its own grid.

    Attributes
    ----------
    array : np.ndarray
        float32 ``(D, H, W)`` = (slice, row, column), canonical order (head to
        feet, anterior to posterior, patient right to left).
    affine : np.ndarray
        float64 ``(4, 4)``: voxel index ``(d, h, w, 1)`` -> LPS mm (module docstring).
    modality : str
        ``"PT"`` or ``"CT"``.
    units : str
        ``"SUVbw"`` (PET) or ``"HU"`` (CT).
    meta : dict
        Non-identifying acquisition facts only (spacing, scanner model,
        convolution kernel, contrast flag, SUV factor, series choice, ...).
    raw : np.ndarray or None
        Only with ``keep_raw=True``: the values before harmonisation on the same
        grid (CT stored pixel values, PET activity in Bq/ml), for QC histograms.
    """

    array: np.ndarray
    affine: np.ndarray
    modality: str
    units: str
    meta: dict[str, Any]
    raw: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along ``(D, H, W)`` in mm (lengths of the affine's columns)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True, eq=False)
class PatientImages:
    """The PET (SUVbw) and CT (HU) of one patient, each on its own grid."""

    patient_id: str
    pet: Volume
    ct: Volume


@dataclasses.dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series found in a patient folder (no identifying data).

    Attributes
    ----------
    modality : str
        DICOM Modality (``"PT"``, ``"CT"``).
    key : str
        12 hex digits of SHA-256 of the SeriesInstanceUID: tells series apart
        without carrying the UID itself.
    files : tuple of (int, Path)
        ``(position, path)`` of every file; ``position`` is the 1-based rank
        in the sorted listing of the patient folder (what messages name).
    n_files_in_folder : int
        Number of files under the patient folder (for "file 3 of 340").
    image_type, corrected_image : tuple of str
        ImageType and CorrectedImage values (PET: ``ATTN`` = attenuation-corrected).
    units : str
        PET Units (``BQML``, ``CNTS``, ...), ``""`` for CT.
    frame_of_reference : str
        12 hex digits of SHA-256 of the FrameOfReferenceUID (``""`` if absent).
    patient, study : str
        The same for PatientID and StudyInstanceUID (:func:`check_pairing`).
    datasets : tuple of pydicom.Dataset
        The files as read, pixel data included, aligned with ``files``, when
        :func:`discover_series` was asked to keep them (``read_pixels=True``)
        so that :func:`load_series` does not parse each file a second time;
        empty otherwise.
    """

    modality: str
    key: str
    files: tuple[tuple[int, Path], ...]
    n_files_in_folder: int
    image_type: tuple[str, ...] = ()
    corrected_image: tuple[str, ...] = ()
    units: str = ""
    frame_of_reference: str = ""
    patient: str = ""
    study: str = ""
    datasets: tuple[Any, ...] = dataclasses.field(default=(), repr=False, compare=False)

    @property
    def n_slices(self) -> int:
        return len(self.files)

    @property
    def attenuation_corrected(self) -> bool:
        return "ATTN" in self.corrected_image


class SeriesList(list):
    """``list[SeriesInfo]`` with counts of the files that are not part of any image series.

    Attributes
    ----------
    n_non_dicom : int
        Files that are not DICOM, skipped silently.
    n_no_preamble : int
        DICOM files without the 128-byte preamble and ``DICM`` prefix, read anyway.
    n_other : int
        DICOM files of other kinds (DICOMDIR, other modalities), ignored.
    n_unreadable : int
        Truncated or empty files skipped with ``on_error="skip"``.
    """

    n_non_dicom: int = 0
    n_no_preamble: int = 0
    n_other: int = 0
    n_unreadable: int = 0


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def _short_hash(value: Any) -> str:
    return hashlib.sha256(str(value).encode()).hexdigest()[:12] if value else ""


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip().upper() for v in value.split("\\") if v.strip())
    try:
        return tuple(str(v).strip().upper() for v in value)
    except TypeError:
        return (str(value).strip().upper(),)


def _file_label(position: int, n_files: int) -> str:
    return f"file {position} of {n_files} in the patient folder (sorted listing)"


def decay_factor(elapsed_s: float, half_life_s: float = GA68_HALF_LIFE_S) -> float:
    """Fraction of activity left after ``elapsed_s`` seconds: ``2 ** (-elapsed_s / half_life_s)``."""
    return float(2.0 ** (-float(elapsed_s) / float(half_life_s)))


def reorient(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip/permute ``array`` to the canonical (head->feet, ant->post, right->left) order.

    Parameters
    ----------
    array : np.ndarray
        Any 3-D array whose voxel ``(a, b, c)`` lies at ``affine @ (a, b, c, 1)`` (LPS mm).
    affine : np.ndarray
        ``(4, 4)`` voxel -> LPS.

    Returns
    -------
    array, affine
        The re-ordered array ``(D, H, W)`` and its affine; every voxel keeps its
        LPS position (no interpolation). Uses :mod:`nibabel.orientations`.
    """
    from nibabel import orientations as ornt_

    current = ornt_.io_orientation(affine)
    xform = ornt_.ornt_transform(current, CANONICAL_ORIENTATION)
    out = ornt_.apply_orientation(array, xform)
    new_affine = affine @ ornt_.inv_ornt_aff(xform, array.shape)
    return np.ascontiguousarray(out), new_affine


# ---------------------------------------------------------------------------
# Discovery
# ---------------------------------------------------------------------------

_BARE_START = (b"\x02\x00", b"\x08\x00")
"""First bytes of a DICOM data set written without preamble: a group 0002 or 0008 element tag."""


def _read_dicom(path: Path, read_pixels: bool) -> tuple[Any, int, bool]:
    """``(dataset, bytes read, without preamble)`` of one file; :class:`InvalidDicomError` if it is not DICOM.

    A file without the 128-byte preamble and ``DICM`` prefix (older exports,
    some PACS) is read with ``force=True`` when its first bytes are a group
    0002 or 0008 element tag and it holds a Modality; its transfer syntax is
    then the one pydicom found while parsing.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    with open(path, "rb") as fh:
        try:
            ds = pydicom.dcmread(fh, stop_before_pixels=not read_pixels, force=False)
            return ds, fh.tell(), False
        except InvalidDicomError:
            fh.seek(0)
            if fh.read(2) not in _BARE_START:
                raise
        fh.seek(0)
        ds = pydicom.dcmread(fh, stop_before_pixels=not read_pixels, force=True)
        end = fh.tell()
    if "Modality" not in ds:
        raise InvalidDicomError("no DICOM data set")
    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:
        implicit, little = getattr(ds, "original_encoding", (True, True))
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    return ds, end, True



def _truncation(ds: Any, size: int, header_end: int, read_pixels: bool) -> str:
    """Why a PT/CT file is cut short ("" when its pixel data fit in the file).

    Parameters
    ----------
    ds : pydicom.Dataset
        The file's dataset (with ``file_meta``).
    size : int
        File size in bytes.
    header_end : int
        Byte offset where the header read stopped (:func:`_read_dicom`); with ``read_pixels`` it is
        recomputed from where the pixel data element starts.
    """
    if read_pixels:
        # where the pixel values start; a whole read leaves the file's end in header_end
        pixels = ds.get_item(_PIXEL_DATA) if _PIXEL_DATA in ds else None
        header_end = size if pixels is None else int(getattr(pixels, "value_tell", header_end)) - 8
    if not all(k in ds for k in ("SeriesInstanceUID", "Rows", "Columns")) or header_end >= size:
        return "is truncated (no pixel data after the header)"
    if str(ds.file_meta.TransferSyntaxUID) in _UNCOMPRESSED:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames
        expected *= int(ds.get("BitsAllocated", 16)) // 8
        if size < header_end + 8 + expected:
            return f"is truncated (pixel data needs {expected} bytes, file ends early)"
    return ""


def _examine_file(path: Path, read_pixels: bool) -> tuple[str, Any, bool]:
    """What one file of a patient folder is.

    Returns
    -------
    kind : {"series", "unreadable", "non_dicom", "other"}
        A usable PT/CT image; an empty, damaged or truncated DICOM file; not DICOM at all; or DICOM
        of another kind (DICOMDIR, another modality).
    found : Dataset or str or None
        The dataset (``"series"``), the reason (``"unreadable"``), else None.
    bare : bool
        The file is DICOM without the 128-byte preamble.
    """
    from pydicom.errors import InvalidDicomError

    size = path.stat().st_size
    if size == 0:
        return "unreadable", "is empty (0 bytes)", False
    try:
        ds, header_end, bare = _read_dicom(path, read_pixels)
    except InvalidDicomError:
        return "non_dicom", None, False
    except Exception as exc:  # pydicom raises many kinds on damaged headers
        return "unreadable", f"has a damaged DICOM header ({type(exc).__name__})", False
    meta = getattr(ds, "file_meta", None)
    sop = str(getattr(meta, "MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
    if sop == _DICOMDIR_SOP:
        return "other", None, bare
    modality = str(ds.get("Modality", "") or "")
    if not modality or "TransferSyntaxUID" not in (meta or {}):
        return "unreadable", "is truncated (DICOM header incomplete)", bare
    if modality not in ("PT", "CT"):
        return "other", None, bare
    why = _truncation(ds, size, header_end, read_pixels)
    return ("unreadable", why, bare) if why else ("series", ds, bare)


def _series_facts(ds: Any, modality: str) -> dict[str, Any]:
    """What a series' first file says about it (image type, units, hashed frame of reference, patient, study)."""
    return {
        "files": [],
        "image_type": _strings(ds.get("ImageType")),
        "corrected": _strings(ds.get("CorrectedImage")),
        "units": str(ds.get("Units", "") or "").upper() if modality == "PT" else "",
        "for": _short_hash(ds.get("FrameOfReferenceUID", "")),
        "patient": _short_hash(str(ds.get("PatientID", "") or "").strip()),
        "study": _short_hash(ds.get("StudyInstanceUID", "")),
        "datasets": [],
    }


def discover_series(
    folder: str | Path, patient_id: str = "?", on_error: str = "stop", *, read_pixels: bool = False
) -> SeriesList:
    """Find the image series under a patient folder, grouped by (Modality, SeriesInstanceUID).

    Every file under ``folder`` (any depth, any name) is opened with
    ``pydicom.dcmread(stop_before_pixels=True, force=False)`` (without
    ``stop_before_pixels`` when ``read_pixels``). Files that are
    not DICOM are skipped and counted; DICOM files that are empty or cut short
    (header incomplete, or fewer bytes left than the pixel data needs) raise
    :class:`InputError` naming the file by its position (``on_error="stop"``)
    or are skipped and counted (``on_error="skip"``). Each file is judged by
    :func:`_examine_file` (:func:`_truncation`); a series is described by its
    first file (:func:`_series_facts`).

    Parameters
    ----------
    folder : path
        The patient's imaging folder (``DATA/imaging/<patient_id>``).
    patient_id : str
        Study id, for messages.
    on_error : {"stop", "skip"}
    read_pixels : bool
        Read each PT/CT file whole and keep the datasets in
        :attr:`SeriesInfo.datasets` (:func:`load_patient` does: parsing every
        header twice was a third of the loading time).

    Returns
    -------
    SeriesList
        One :class:`SeriesInfo` per series, sorted by modality then key.
    """
    if on_error not in _ON_ERROR:
        raise ValueError(f"on_error must be one of {_ON_ERROR}, got {on_error!r}")
    root = Path(folder)
    if not root.is_dir():
        raise InputError(patient_id, "imaging folder not found")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    n = len(files)
    out = SeriesList()
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for pos, path in enumerate(files, start=1):
        kind, found, bare = _examine_file(path, read_pixels)
        out.n_no_preamble += int(bare)
        if kind == "unreadable":
            if on_error == "stop":
                raise InputError(patient_id, f"{_file_label(pos, n)} {found}")
            out.n_unreadable += 1
        elif kind == "non_dicom":
            out.n_non_dicom += 1
        elif kind == "other":
            out.n_other += 1
        else:
            modality = str(found.get("Modality", "") or "")
            g = groups.setdefault((modality, str(found.SeriesInstanceUID)), _series_facts(found, modality))
            g["files"].append((pos, path))
            if read_pixels:
                g["datasets"].append(found)
    for (modality, uid), g in sorted(groups.items(), key=lambda kv: (kv[0][0], _short_hash(kv[0][1]))):
        out.append(
            SeriesInfo(
                modality=modality,
                key=_short_hash(uid),
                files=tuple(g["files"]),
                n_files_in_folder=n,
                image_type=g["image_type"],
                corrected_image=g["corrected"],
                units=g["units"],
                frame_of_reference=g["for"],
                patient=g["patient"],
                study=g["study"],
                datasets=tuple(g["datasets"]),
            )
        )
    return out


def check_pairing(pet: SeriesInfo, ct: SeriesInfo, patient_id: str, registered: bool = False) -> None:
    """Refuse a PET and a CT that are not one PET/CT acquisition of one patient.

    PatientID, StudyInstanceUID and FrameOfReferenceUID must agree where both
    series carry them (compared by hash: no value enters a message). With
    ``registered`` (the cohort YAML's ``registered_pet_ct``: a CT registered to
    the PET from another study) only PatientID must agree.

    Raises
    ------
    InputError
        Naming the tags that disagree, never their values.
    """
    tags = [("PatientID", pet.patient, ct.patient)]
    if not registered:
        tags += [
            ("StudyInstanceUID", pet.study, ct.study),
            ("FrameOfReferenceUID", pet.frame_of_reference, ct.frame_of_reference),
        ]
    differ = [tag for tag, a, b in tags if a and b and a != b]
    if not differ:
        return
    if "PatientID" in differ:
        raise InputError(
            patient_id,
            f"PET and CT disagree on {', '.join(differ)}: they may be of different patients; "
            "put one patient's PET/CT in the folder",
        )
    raise InputError(
        patient_id,
        f"PET and CT disagree on {', '.join(differ)}: not one PET/CT acquisition, so the CT need not lie "
        "where the PET does; if the CT was registered to the PET, list the patient under "
        "registered_pet_ct in the cohort YAML",
    )


def _pet_rank(s: SeriesInfo) -> tuple[int, int, int]:
    return (int(s.attenuation_corrected), int(s.units in ("BQML", "GML")), s.n_slices)


def _ct_rank(s: SeriesInfo, pet: SeriesInfo | None) -> tuple[int, int, int]:
    same_for = int(
        pet is not None and bool(s.frame_of_reference) and s.frame_of_reference == pet.frame_of_reference
    )
    original_axial = int("ORIGINAL" in s.image_type and ("AXIAL" in s.image_type or len(s.image_type) < 3))
    return (same_for, original_axial, s.n_slices)


def choose_series(
    series: Sequence[SeriesInfo], patient_id: str
) -> tuple[SeriesInfo, SeriesInfo, dict[str, str]]:
    """Pick the PET and the CT series of a patient by the documented rule (module docstring).

    Returns
    -------
    pet, ct : SeriesInfo
    choice : dict
        ``{"pet": "...", "ct": "..."}``: how many candidates there were and why this one.
    """
    summary = ", ".join(f"{s.modality} ({s.n_slices} slices)" for s in series) or "no PET or CT series"
    pets = [s for s in series if s.modality == "PT"]
    cts = [s for s in series if s.modality == "CT"]
    if not pets:
        raise InputError(patient_id, f"no PET series found (found: {summary})")
    if not cts:
        raise InputError(patient_id, f"no CT series found (found: {summary})")
    pets.sort(key=_pet_rank, reverse=True)
    if len(pets) > 1 and _pet_rank(pets[0]) == _pet_rank(pets[1]):
        raise InputError(
            patient_id,
            f"{len(pets)} PET series of the same kind ({'AC' if pets[0].attenuation_corrected else 'non-AC'}, "
            f"units {pets[0].units or '?'}, {pets[0].n_slices} slices) are mixed in the folder; "
            "cannot choose one: remove the extra series",
        )
    pet = pets[0]
    cts.sort(key=lambda s: _ct_rank(s, pet), reverse=True)
    if len(cts) > 1 and _ct_rank(cts[0], pet) == _ct_rank(cts[1], pet):
        raise InputError(
            patient_id,
            f"{len(cts)} CT series of the same kind ({cts[0].n_slices} slices) are mixed in the folder; "
            "cannot choose one: remove the extra series",
        )
    ct = cts[0]
    choice = {
        "pet": (
            f"1 of {len(pets)} PET series: {'attenuation-corrected' if pet.attenuation_corrected else 'not attenuation-corrected'}, "
            f"units {pet.units or '?'}, {pet.n_slices} slices"
        ),
        "ct": (
            f"1 of {len(cts)} CT series: {'same' if _ct_rank(ct, pet)[0] else 'other'} frame of reference as the PET, "
            f"{ct.n_slices} slices"
        ),
    }
    return pet, ct, choice


# ---------------------------------------------------------------------------
# Reading one DICOM series
# ---------------------------------------------------------------------------


def _floats(value: Any, n: int) -> np.ndarray | None:
    try:
        arr = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def _num(value: Any) -> float | None:
    """A finite float, or None (JSON-friendly) for missing or malformed values."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _parse_dt(date: Any, time: Any) -> dt.datetime | None:
    from pydicom.valuerep import DA, TM

    try:
        if not date or not time:
            return None
        d, t = DA(str(date).strip()), TM(str(time).strip())
        return dt.datetime.combine(d, t.replace(tzinfo=None))
    except (ValueError, TypeError):
        return None


def _parse_datetime(value: Any) -> dt.datetime | None:
    from pydicom.valuerep import DT

    try:
        return DT(str(value).strip()).replace(tzinfo=None) if value else None
    except (ValueError, TypeError):
        return None


def _nuclide_in_text(text: str) -> str | None:
    """The nuclide a free text names (``"Ga-68 DOTATOC"``, ``"^68^Gallium"``, ``"Fludeoxyglucose F^18^"``), or None."""
    t = re.sub(r"[\^\s_]+", " ", str(text or "").lower())
    for name, (sym, mass, element) in _NUCLIDE_WORDS.items():
        patterns = (
            rf"(?<![a-z]){sym} ?-? ?{mass}(?!\d)",
            rf"(?<!\d){mass} ?-? ?(?:{sym}|{element})(?![a-z])",
            rf"{element} ?-? ?{mass}(?!\d)",
        )
        if any(re.search(p, t) for p in patterns):
            return name
    return None


def identify_nuclide(
    texts: Sequence[tuple[str, Any]],
    half_life_s: float | None,
    patient_id: str,
    where: str = "RadionuclideHalfLife",
) -> tuple[Nuclide, str]:
    """The nuclide of a PET and where it was read from; the half-life must be the nuclide's within 1 %.

    Parameters
    ----------
    texts : sequence of (tag, text)
        Places that may name the nuclide, in order of trust (RadionuclideCodeSequence's
        CodeMeaning, Radiopharmaceutical, ...).
    half_life_s : float or None
        The half-life the header gives (seconds), if any.
    patient_id : str
    where : str
        The half-life's tag or key, for messages.

    Returns
    -------
    nuclide : Nuclide
    source : str
        The tag that named it, or ``"half-life"`` when only the half-life did.

    Raises
    ------
    InputError
        No nuclide named and no half-life, a half-life that is no known nuclide's
        (e.g. minutes written as seconds), or one that differs from the named nuclide's.
    """
    named = next(((tag, n) for tag, text in texts if (n := _nuclide_in_text(text))), None)
    known = ", ".join(f"{n.name} {n.half_life_s:g} s" for n in NUCLIDES.values())
    if named is not None:
        tag, name = named
        nuc = NUCLIDES[name]
        if half_life_s is not None and abs(half_life_s / nuc.half_life_s - 1.0) > HALF_LIFE_TOLERANCE:
            raise InputError(
                patient_id,
                f"{where} {half_life_s:g} s is not {name}'s {nuc.half_life_s:g} s "
                f"(rule: within {100 * HALF_LIFE_TOLERANCE:g}%; minutes written as seconds?)",
            )
        return nuc, tag
    if half_life_s is None:
        raise InputError(
            patient_id, f"no radionuclide named and no half-life ({where}): the decay cannot be computed"
        )
    for nuc in NUCLIDES.values():
        if abs(half_life_s / nuc.half_life_s - 1.0) <= HALF_LIFE_TOLERANCE:
            return nuc, "half-life"
    raise InputError(
        patient_id,
        f"{where} {half_life_s:g} s is no PET nuclide's (rule: within {100 * HALF_LIFE_TOLERANCE:g}% "
        f"of {known}; minutes written as seconds?)",
    )


def _plausible_weight(weight_kg: float) -> bool:
    lo, hi = WEIGHT_RANGE_KG
    return math.isfinite(weight_kg) and lo <= weight_kg <= hi


def check_weight(weight_kg: float, patient_id: str, tag: str = "PatientWeight") -> float:
    """``weight_kg`` if it lies in :data:`WEIGHT_RANGE_KG`, else :class:`InputError` with the number and the rule."""
    lo, hi = WEIGHT_RANGE_KG
    if not (math.isfinite(weight_kg) and weight_kg > 0):
        raise InputError(patient_id, f"{tag} is missing or zero; SUVbw needs the body weight")
    if not lo <= weight_kg <= hi:
        hint = " (grams instead of kilograms?)" if weight_kg > 1000 else ""
        raise InputError(
            patient_id, f"{tag} = {weight_kg:g} kg is implausible (rule: {lo:g} to {hi:g} kg){hint}"
        )
    return weight_kg


def check_dose(dose_bq: float, nuclide: Nuclide, patient_id: str, tag: str = "RadionuclideTotalDose") -> float:
    """``dose_bq`` if it lies in the nuclide's plausible range (:attr:`Nuclide.dose_mbq`), else :class:`InputError`."""
    lo, hi = nuclide.dose_mbq
    if not (math.isfinite(dose_bq) and dose_bq > 0):
        raise InputError(patient_id, f"{tag} (injected dose) is missing or zero")
    mbq = dose_bq / 1e6
    if not lo <= mbq <= hi:
        hint = " (MBq written where Bq are due?)" if mbq < lo / 1e3 else ""
        raise InputError(
            patient_id,
            f"{tag} = {dose_bq:g} Bq ({mbq:.4g} MBq) is implausible for {nuclide.name} "
            f"(rule: {lo:g} to {hi:g} MBq){hint}",
        )
    return dose_bq


def check_uptake(elapsed_s: float, patient_id: str, what: str) -> float:
    """``elapsed_s`` if it lies in 0 to :data:`MAX_UPTAKE_S`, else :class:`InputError` with the number and the rule."""
    if not (math.isfinite(elapsed_s) and 0.0 <= elapsed_s <= MAX_UPTAKE_S):
        raise InputError(
            patient_id,
            f"implausible time from injection to scan: {what} = {elapsed_s:g} s ({elapsed_s / 60.0:.1f} min; "
            f"rule: 0 to {MAX_UPTAKE_S / 3600:g} h); check the header times",
        )
    return elapsed_s


def scan_start(ds: Any, acquisition_start: dt.datetime | None) -> tuple[dt.datetime | None, str]:
    """The time the PET is decay-corrected to (DecayCorrection START) and the tag it came from.

    The vendor-neutral rule of QIBA's SUV pseudo-code: SeriesDate/SeriesTime,
    unless it lies after the earliest AcquisitionDate/AcquisitionTime of the
    series (a re-reconstruction or a post-processed copy resets the series
    time): then that earliest acquisition time.

    Returns
    -------
    start : datetime or None
        None when neither is in the header.
    tag : str
        ``"SeriesDate/SeriesTime"`` or ``"AcquisitionDate/AcquisitionTime (earliest)"``, for the QC table.
    """
    series = _parse_dt(ds.get("SeriesDate"), ds.get("SeriesTime"))
    acq = "AcquisitionDate/AcquisitionTime (earliest)"
    if series is None:
        return acquisition_start, acq if acquisition_start is not None else ""
    if acquisition_start is not None and series > acquisition_start:
        return acquisition_start, acq + ", SeriesTime later"
    return series, "SeriesDate/SeriesTime"


def _injection_time(radio: Any, scan_date: Any) -> tuple[dt.datetime | None, str, bool]:
    """``(injection, tag, date guessed)``: RadiopharmaceuticalStartDateTime when it holds a time of day.

    A StartDateTime with a date only (or hours only) would be midnight (or the
    full hour): the full RadiopharmaceuticalStartTime is then combined with its
    date, or with the scan's date when StartDateTime is absent (``date guessed``:
    an injection before midnight and a scan after it are one day apart).
    """
    text = str(radio.get("RadiopharmaceuticalStartDateTime", "") or "").strip()
    clock = re.sub(r"[+-]\d{4}$", "", text)  # a UTC offset is no time of day
    if len(clock) >= 12:  # YYYYMMDDHHMM at least
        inj = _parse_datetime(text)
        if inj is not None:
            return inj, "RadiopharmaceuticalStartDateTime", False
    start_time = radio.get("RadiopharmaceuticalStartTime")
    if len(clock) >= 8 and start_time:
        inj = _parse_dt(clock[:8], start_time)
        if inj is not None:
            return inj, "RadiopharmaceuticalStartTime (date from StartDateTime)", False
    inj = _parse_dt(scan_date, start_time)
    return inj, "RadiopharmaceuticalStartTime (date of the scan)", True


def suv_factor(
    ds: Any, patient_id: str, acquisition_start: dt.datetime | None = None
) -> tuple[float, dict[str, Any]]:
    """Factor that turns the PET's activity concentration into SUVbw (module docstring).

    Parameters
    ----------
    ds : pydicom.Dataset
        A PET slice header (series-level tags are read).
    patient_id : str
    acquisition_start : datetime, optional
        Earliest AcquisitionDate/Time of the series (:func:`scan_start`).

    Returns
    -------
    factor : float
        ``SUVbw = factor * value`` (``factor = 1`` for Units ``GML``), in g/Bq (ml units cancel).
    facts : dict
        Non-identifying facts: units, decay correction, nuclide, half-life (s),
        injection-to-reference time (s) and the tags it came from, injected dose (MBq), factor.

    Raises
    ------
    InputError
        A tag missing, or a value outside its plausible range (weight, dose,
        half-life, time from injection to scan): the message gives the number and the rule.
    """
    units = str(ds.get("Units", "") or "").strip().upper()
    if units == "GML":
        weight = _num(ds.get("PatientWeight"))  # not needed for SUV; kept for the body-mass rule if plausible
        known = {"patient_weight_kg": weight} if weight is not None and _plausible_weight(weight) else {}
        return 1.0, {"pet_units_stored": "GML", "suv_factor": 1.0, **known}
    if units != "BQML":
        what = "counts (Units CNTS)" if units == "CNTS" else f"units {units or 'missing'}"
        raise InputError(
            patient_id,
            f"PET is stored in {what}; SUV needs activity concentration in Bq/ml (Units BQML) "
            "or SUVbw (GML): export the PET in Bq/ml",
        )
    weight_kg = _num(ds.get("PatientWeight"))
    if weight_kg is None or weight_kg <= 0:
        raise InputError(
            patient_id, "PatientWeight is missing or zero in the PET header; SUVbw needs the body weight"
        )
    check_weight(weight_kg, patient_id)
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    if not seq:
        raise InputError(
            patient_id, "PET header has no RadiopharmaceuticalInformationSequence (dose and injection time)"
        )
    radio = seq[0]
    dose_bq = _num(radio.get("RadionuclideTotalDose"))
    if dose_bq is None or dose_bq <= 0:
        raise InputError(
            patient_id, "RadionuclideTotalDose (injected dose) is missing or zero in the PET header"
        )
    half_life = _num(radio.get("RadionuclideHalfLife"))
    if half_life is None or half_life <= 0:
        raise InputError(patient_id, "RadionuclideHalfLife is missing or zero in the PET header")
    texts = [
        ("RadionuclideCodeSequence", _code_meaning(radio.get("RadionuclideCodeSequence"))),
        ("Radiopharmaceutical", radio.get("Radiopharmaceutical", "")),
        ("RadiopharmaceuticalCodeSequence", _code_meaning(radio.get("RadiopharmaceuticalCodeSequence"))),
    ]
    nuclide, nuclide_from = identify_nuclide(texts, half_life, patient_id)
    check_dose(dose_bq, nuclide, patient_id)
    decay = str(ds.get("DecayCorrection", "") or "").strip().upper()
    facts: dict[str, Any] = {
        "pet_units_stored": units,
        "decay_correction": decay,
        "nuclide": nuclide.name,
        "nuclide_from": nuclide_from,
        "half_life_s": half_life,
        "injected_dose_mbq": round(dose_bq / 1e6, 3),
        "patient_weight_kg": weight_kg,
    }
    if decay == "ADMIN":
        facts["injection_to_reference_s"] = 0.0
        factor = weight_kg * 1000.0 / dose_bq
    elif decay == "START":
        ref, ref_tag = scan_start(ds, acquisition_start)
        if ref is None:
            raise InputError(
                patient_id, "PET header has no SeriesDate/SeriesTime or AcquisitionTime to decay the dose to"
            )
        inj, inj_tag, guessed_date = _injection_time(radio, ref.strftime("%Y%m%d"))
        if inj is None:
            raise InputError(
                patient_id, "injection time (RadiopharmaceuticalStartDateTime/StartTime) is missing"
            )
        elapsed = (ref - inj).total_seconds()
        if guessed_date and elapsed < 0:  # injection before midnight, scan after
            elapsed += 86400.0
        check_uptake(elapsed, patient_id, f"{ref_tag} minus {inj_tag}")
        facts.update(injection_to_reference_s=elapsed, scan_start_from=ref_tag, injection_from=inj_tag)
        factor = weight_kg * 1000.0 / (dose_bq * decay_factor(elapsed, half_life))
    else:
        raise InputError(
            patient_id,
            f"PET DecayCorrection {decay or 'missing'} is not supported (needs START or ADMIN) for SUV conversion",
        )
    facts["suv_factor"] = factor
    return factor, facts


def _code_meaning(seq: Any) -> str:
    try:
        return str(seq[0].get("CodeMeaning", "") or "") if seq else ""
    except (IndexError, TypeError, AttributeError):
        return ""


def _compressed(ds: Any) -> bool:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return ts is not None and str(ts) not in _UNCOMPRESSED and bool(getattr(ts, "is_compressed", False))


def _pixel_problem(ds: Any, exc: Exception) -> str:
    """Why pixel data could not be read: a compressed transfer syntax without its decoder is named as such."""
    if ds is None or not _compressed(ds):
        return f"pixel data cannot be read ({type(exc).__name__}; truncated?)"
    from pydicom.pixels import get_decoder

    ts = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        return f"pixel data are compressed as {ts.name} ({ts}), which pydicom cannot decode: export uncompressed"
    if not decoder.is_available:
        options = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        return (
            f"pixel data are compressed as {ts.name} ({ts}) and no decoder for it is installed "
            f"(install one of: {options}); or export uncompressed"
        )
    return f"compressed pixel data ({ts.name}) cannot be decoded ({type(exc).__name__}; damaged or truncated?)"


_PLANES = ("sagittal", "coronal", "axial")


def _require_axial(normal: np.ndarray, name: str, patient_id: str) -> None:
    """Whole-body PET/CT is reconstructed in axial slices; other planes are refused by name.

    A sagittal or coronal ImageOrientationPatient whose positions still advance
    along the body axis (a header written wrongly) would otherwise surface as
    "duplicated slice positions".
    """
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[2]) < math.cos(math.radians(45.0)):
        raise InputError(
            patient_id,
            f"{name} orientation not supported: ImageOrientationPatient describes {_PLANES[axis]} slices "
            "(only axial series are read): export the axial series",
        )


def _require_same_series_values(slices: Sequence[tuple[int, Any, np.ndarray]], name: str, patient_id: str) -> None:
    """The SUV tags must agree on every slice; numbers are compared as numbers ("71.0000" equals "71.0")."""
    for key in ("Units", "DecayCorrection"):
        if len({str(ds.get(key, "") or "").strip().upper() for _, ds, _ in slices}) > 1:
            raise InputError(patient_id, f"{name} slices disagree on {key}: cannot convert to SUV")
    weights = {_num(ds.get("PatientWeight")) for _, ds, _ in slices}
    if len(weights) > 1:
        raise InputError(patient_id, f"{name} slices disagree on PatientWeight: cannot convert to SUV")


def _require_finite(values: np.ndarray, what: str, patient_id: str) -> None:
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise InputError(patient_id, f"{what}: {bad} voxels are not finite (NaN or infinite)")


def _dicom_affine(iop: np.ndarray, spacing_rc: np.ndarray, first: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Affine of (slice, row, column) -> LPS from DICOM geometry."""
    row_dir, col_dir = iop[:3], iop[3:]
    aff = np.eye(4)
    aff[:3, 0] = step
    aff[:3, 1] = col_dir * spacing_rc[0]  # rows advance along the column direction cosine
    aff[:3, 2] = row_dir * spacing_rc[1]
    aff[:3, 3] = first
    return aff


def _modality_name(modality: str) -> str:
    """The name a message gives a series: ``"PET"`` for ``PT``, the modality itself otherwise."""
    return "PET" if modality == "PT" else modality


def _read_slices(
    series: SeriesInfo, patient_id: str, on_error: str
) -> list[tuple[int, Any, np.ndarray]]:
    """Read every file of a series with its stored pixel values.

    Parameters
    ----------
    series : SeriesInfo
        From :func:`discover_series` (datasets already read are reused).
    patient_id : str
    on_error : {"stop", "skip"}
        An undecodable, uncompressed slice raises (``"stop"``) or is dropped (``"skip"``).
        A compressed slice whose decoder fails always raises.

    Returns
    -------
    list of (int, Dataset, numpy.ndarray)
        ``(position in the folder, dataset, stored 2-D pixel array)`` per readable file, in file order.

    Raises
    ------
    InputError
        A slice that cannot be decoded (under ``"stop"``), a multi-frame image, or no readable slice.
    """
    import pydicom

    n_all = series.n_files_in_folder
    slices: list[tuple[int, Any, np.ndarray]] = []
    read = series.datasets or (None,) * len(series.files)
    for (pos, path), ds in zip(series.files, read, strict=True):
        try:
            if ds is None:
                ds = pydicom.dcmread(path, force=False)
            stored = ds.pixel_array
        except Exception as exc:
            if on_error == "skip" and not _compressed(ds):
                continue
            name = _modality_name(series.modality)
            raise InputError(patient_id, f"{name} {_file_label(pos, n_all)}: {_pixel_problem(ds, exc)}") from None
        if stored.ndim != 2:
            raise InputError(
                patient_id,
                f"{series.modality} series has multi-frame images; one slice per file is supported",
            )
        slices.append((pos, ds, stored))
    if not slices:
        raise InputError(patient_id, f"{series.modality} series has no readable slice")
    return slices


def _slice_geometry(
    slices: Sequence[tuple[int, Any, np.ndarray]], name: str, patient_id: str, n_all: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...]]]:
    """Orientation, position, pixel spacing and matrix size of every slice.

    Returns
    -------
    list of (iop, ipp, pixel_spacing, shape)
        ``iop`` (6,), ``ipp`` (3,), ``pixel_spacing`` (2,) as floats, ``shape`` the stored array's.

    Raises
    ------
    InputError
        A slice lacks ImagePositionPatient, ImageOrientationPatient or PixelSpacing.
    """
    geo = []
    for pos, ds, stored in slices:
        iop = _floats(ds.get("ImageOrientationPatient"), 6)
        ipp = _floats(ds.get("ImagePositionPatient"), 3)
        ps = _floats(ds.get("PixelSpacing"), 2)
        if iop is None or ipp is None or ps is None:
            raise InputError(
                patient_id,
                f"{name} {_file_label(pos, n_all)} lacks ImagePositionPatient, ImageOrientationPatient or PixelSpacing",
            )
        geo.append((iop, ipp, ps, stored.shape))
    return geo


def _require_same_geometry(
    geo: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...]]], name: str, patient_id: str
) -> None:
    """Every slice must share the first slice's matrix size, pixel spacing and orientation.

    Raises
    ------
    InputError
        Naming the first property that differs (matrix size, then spacing, then orientation).
    """
    iop0, _, ps0, shape0 = geo[0]
    for iop, _, ps, shape in geo[1:]:
        if shape != shape0:
            raise InputError(patient_id, f"{name} slices have different matrix sizes ({shape0} and {shape})")
        if not np.allclose(ps, ps0, rtol=1e-3, atol=1e-4):
            raise InputError(
                patient_id,
                f"{name} slices have inconsistent pixel spacing ({ps0.tolist()} and {ps.tolist()} mm)",
            )
        if not np.allclose(iop, iop0, atol=1e-4):
            raise InputError(
                patient_id, f"{name} slices have inconsistent orientation (ImageOrientationPatient)"
            )


def _slice_normal(iop: np.ndarray, name: str, patient_id: str) -> np.ndarray:
    """The slice normal (row x column direction) of an axial ImageOrientationPatient.

    Parameters
    ----------
    iop : numpy.ndarray
        ImageOrientationPatient, six direction cosines (row direction, then column direction).

    Returns
    -------
    numpy.ndarray
        Unit normal, shape (3,).

    Raises
    ------
    InputError
        The two directions are not orthogonal unit vectors, or the slices are not axial.
    """
    row_dir, col_dir = iop[:3], iop[3:]
    if (
        abs(np.linalg.norm(row_dir) - 1) > 1e-3
        or abs(np.linalg.norm(col_dir) - 1) > 1e-3
        or abs(row_dir @ col_dir) > 1e-3
    ):
        raise InputError(patient_id, f"{name} ImageOrientationPatient is not two orthogonal unit vectors")
    normal = np.cross(row_dir, col_dir)
    _require_axial(normal, name, patient_id)
    return normal


def _require_no_gantry_tilt(slices: Sequence[tuple[int, Any, np.ndarray]], name: str, patient_id: str) -> None:
    """Refuse a series acquired with a gantry tilt above 0.01 degrees on any slice (GantryDetectorTilt)."""
    tilt = max(abs(_num(ds.get("GantryDetectorTilt")) or 0.0) for _, ds, _ in slices)
    if tilt > 0.01:
        raise InputError(
            patient_id,
            f"{name} was acquired with a gantry tilt of {tilt:g} degrees; re-slice it without tilt",
        )


def _require_even_steps(steps: np.ndarray, name: str, patient_id: str) -> None:
    """Distances between consecutive slices must be positive, without gaps and even.

    Parameters
    ----------
    steps : numpy.ndarray
        ``n - 1`` distances (mm) along the normal between consecutive slices in head-first order.

    Raises
    ------
    InputError
        Duplicated positions (a step under 1e-3 mm), a gap (a step over 1.5 times the median),
        or uneven spacing (a step more than 10 % off the median).
    """
    n = len(steps) + 1
    if np.any(steps < 1e-3):
        k = int(np.argmax(steps < 1e-3))
        raise InputError(
            patient_id,
            f"{name} has duplicated slice positions ({int((steps < 1e-3).sum())} duplicates, first at slice {k + 1} of {n})",
        )
    med = float(np.median(steps))
    if np.any(steps > 1.5 * med):
        k = int(np.argmax(steps > 1.5 * med))
        raise InputError(
            patient_id,
            f"{name} has missing slices: a gap of {steps[k]:.2f} mm after slice {k + 1} of {n} "
            f"(median spacing {med:.2f} mm)",
        )
    if np.any(np.abs(steps - med) > 0.1 * med):
        raise InputError(
            patient_id, f"{name} slice spacing is uneven ({steps.min():.2f} to {steps.max():.2f} mm)"
        )


def _require_straight_stack(ipps: np.ndarray, normal: np.ndarray, name: str, patient_id: str) -> None:
    """Slice positions must advance along the normal; sideways drift beyond 0.5 mm + 0.5 degrees is refused.

    Parameters
    ----------
    ipps : numpy.ndarray
        ImagePositionPatient of the ordered slices, shape (n, 3).
    normal : numpy.ndarray
        Unit slice normal, shape (3,).

    Raises
    ------
    InputError
        A gantry tilt or sheared stack, with the drift and its angle.
    """
    rel = ipps - ipps[0]
    along = rel @ normal
    sideways = np.linalg.norm(rel - along[:, None] * normal[None, :], axis=1)
    allowed = 0.5 + math.tan(math.radians(0.5)) * np.abs(along)
    if np.any(sideways > allowed):
        k = int(np.argmax(sideways - allowed))
        angle = math.degrees(math.atan2(sideways[k], abs(along[k]) or 1.0))
        raise InputError(
            patient_id,
            f"{name} slice positions drift sideways ({sideways[k]:.1f} mm over {abs(along[k]):.1f} mm, "
            f"about {angle:.1f} degrees): gantry tilt or sheared stack",
        )


def _order_slices(
    slices: Sequence[tuple[int, Any, np.ndarray]],
    geo: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...]]],
    normal: np.ndarray,
    name: str,
    patient_id: str,
) -> tuple[list[tuple[int, Any, np.ndarray]], np.ndarray, np.ndarray]:
    """Order slices head first (by the projection of their position on the normal) and find the slice step.

    Returns
    -------
    slices : list
        The slices, ordered by decreasing projection (stable for ties).
    ipps : numpy.ndarray
        Their ImagePositionPatient, shape (n, 3).
    step : numpy.ndarray
        Vector (mm, LPS) from one slice to the next: the mean step for several slices; for one,
        ``-normal`` times SpacingBetweenSlices, SliceThickness or 1.

    Raises
    ------
    InputError
        From :func:`_require_even_steps` and :func:`_require_straight_stack`.
    """
    proj = np.array([g[1] @ normal for g in geo])
    order = np.argsort(-proj, kind="stable")
    ordered = [slices[i] for i in order]
    ipps = np.array([geo[i][1] for i in order])
    proj = proj[order]
    n = len(ordered)
    if n > 1:
        _require_even_steps(-np.diff(proj), name, patient_id)
        _require_straight_stack(ipps, normal, name, patient_id)
        step = (ipps[-1] - ipps[0]) / (n - 1)
    else:
        ds = ordered[0][1]
        thick = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0
        step = -normal * abs(float(thick))
    return ordered, ipps, step


def _require_rescale(ds: Any, modality: str, label: str, patient_id: str) -> None:
    """A CT slice needs a Modality LUT or RescaleSlope and RescaleIntercept; a PET slice needs RescaleSlope."""
    if modality == "CT":
        has_lut = "ModalityLUTSequence" in ds
        if not has_lut and ("RescaleSlope" not in ds or "RescaleIntercept" not in ds):
            raise InputError(
                patient_id,
                f"CT {label} has no RescaleSlope/RescaleIntercept: stored values cannot be "
                "converted to HU",
            )
    elif "RescaleSlope" not in ds:
        raise InputError(patient_id, f"PET {label} has no RescaleSlope: activity unknown")


def _slice_values(
    slices: Sequence[tuple[int, Any, np.ndarray]],
    modality: str,
    patient_id: str,
    n_all: int,
    keep_raw: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Stored pixel values through the Modality LUT (rescale), stacked in the given slice order.

    CT voxels equal to PixelPaddingValue become -1024 HU (air outside the reconstruction).

    Returns
    -------
    values : numpy.ndarray
        float32 ``(n, rows, columns)``: HU for CT, activity for PET (before SUV conversion).
    raw : numpy.ndarray or None
        With ``keep_raw``: the stored values for CT, the rescaled values for PET.
    """
    from pydicom.pixels import apply_modality_lut

    shape = slices[0][2].shape
    values = np.empty((len(slices), *shape), dtype=np.float32)
    raw = np.empty((len(slices), *shape), dtype=np.float32) if keep_raw else None
    for k, (pos, ds, stored) in enumerate(slices):
        _require_rescale(ds, modality, _file_label(pos, n_all), patient_id)
        val = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
        if modality == "CT" and "PixelPaddingValue" in ds:
            val[stored == int(ds.PixelPaddingValue)] = -1024.0  # outside the reconstruction: air
        values[k] = val
        if raw is not None:
            raw[k] = stored if modality == "CT" else val
    return values, raw


def _series_meta(
    series: SeriesInfo, slices: Sequence[tuple[int, Any, np.ndarray]], step: np.ndarray, pixel_spacing: np.ndarray
) -> dict[str, Any]:
    """Acquisition facts every series reports (scanner, spacings, rescale ranges; CT kernel, kVp, contrast)."""
    first = slices[0][1]
    meta: dict[str, Any] = {
        "format": "dicom",
        "n_slices": len(slices),
        "manufacturer": str(first.get("Manufacturer", "") or ""),
        "scanner_model": str(first.get("ManufacturerModelName", "") or ""),
        "slice_spacing_mm": round(float(np.linalg.norm(step)), 4),
        "pixel_spacing_mm": [round(float(pixel_spacing[0]), 4), round(float(pixel_spacing[1]), 4)],
        "slice_thickness_mm": _num(first.get("SliceThickness")),
        "frame_of_reference": series.frame_of_reference,
    }
    slopes = sorted({float(ds.get("RescaleSlope", 1) or 1) for _, ds, _ in slices})
    intercepts = sorted({float(ds.get("RescaleIntercept", 0) or 0) for _, ds, _ in slices})
    meta["rescale_slope_range"] = [slopes[0], slopes[-1]]
    meta["rescale_intercept_range"] = [intercepts[0], intercepts[-1]]
    if series.modality == "CT":
        meta["convolution_kernel"] = "\\".join(_strings(first.get("ConvolutionKernel"))) or ""
        meta["kvp"] = _num(first.get("KVP"))
        meta["contrast"] = bool(first.get("ContrastBolusAgent"))
    return meta


def _pet_suv_factor(
    series: SeriesInfo, slices: Sequence[tuple[int, Any, np.ndarray]], patient_id: str
) -> tuple[float, dict[str, Any]]:
    """The SUVbw factor of a PET series and the facts it rests on (see :func:`suv_factor`).

    The SUV tags must agree on every slice; the scan starts at the earliest AcquisitionDate/Time.
    The returned facts also name ``attenuation_corrected`` and ``reconstruction``.
    """
    first = slices[0][1]
    acq = [_parse_dt(ds.get("AcquisitionDate"), ds.get("AcquisitionTime")) for _, ds, _ in slices]
    acq = [a for a in acq if a is not None]
    _require_same_series_values(slices, "PET", patient_id)
    factor, facts = suv_factor(first, patient_id, min(acq) if acq else None)
    facts = dict(facts)
    facts["attenuation_corrected"] = series.attenuation_corrected
    facts["reconstruction"] = str(first.get("ReconstructionMethod", "") or "")
    return factor, facts


def load_series(
    series: SeriesInfo, patient_id: str, *, keep_raw: bool = False, on_error: str = "stop"
) -> Volume:
    """Read one PT or CT series into a :class:`Volume` in SUVbw or HU.

    The steps: read the slices (:func:`_read_slices`), check their geometry
    (:func:`_slice_geometry`, :func:`_require_same_geometry`, :func:`_slice_normal`,
    :func:`_require_no_gantry_tilt`), order them head first and find the slice step
    (:func:`_order_slices`), convert stored values (:func:`_slice_values`, and for PET
    :func:`_pet_suv_factor`), then reorient to the canonical order (:func:`reorient`).

    Parameters
    ----------
    series : SeriesInfo
        From :func:`discover_series`.
    patient_id : str
    keep_raw : bool
        Also keep the values before harmonisation (``Volume.raw``).
    on_error : {"stop", "skip"}
        A slice whose pixel data cannot be decoded raises (``"stop"``) or is
        dropped (``"skip"``; the slice checks then report the gap).

    Returns
    -------
    Volume
        ``array`` float32 ``(D, H, W)`` canonical order; ``affine`` voxel -> LPS mm.
    """
    n_all = series.n_files_in_folder
    slices = _read_slices(series, patient_id, on_error)
    mod = series.modality
    name = "PET" if mod == "PT" else "CT"
    geo = _slice_geometry(slices, name, patient_id, n_all)
    _require_same_geometry(geo, name, patient_id)
    iop0, ps0 = geo[0][0], geo[0][2]
    normal = _slice_normal(iop0, name, patient_id)
    _require_no_gantry_tilt(slices, name, patient_id)
    slices, ipps, step = _order_slices(slices, geo, normal, name, patient_id)
    affine = _dicom_affine(iop0, ps0, ipps[0], step)
    values, raw = _slice_values(slices, mod, patient_id, n_all, keep_raw)
    meta = _series_meta(series, slices, step, ps0)
    if mod == "CT":
        units = "HU"
    else:
        factor, facts = _pet_suv_factor(series, slices, patient_id)
        meta.update(facts)
        values *= np.float32(factor)
        units = "SUVbw"
    _require_finite(values, f"{name} pixel values", patient_id)
    array, affine = reorient(values, affine)
    if raw is not None:
        raw, _ = reorient(raw, _dicom_affine(iop0, ps0, ipps[0], step))
    meta["spacing_mm"] = [round(v, 4) for v in np.linalg.norm(affine[:3, :3], axis=0).tolist()]
    meta["shape"] = list(array.shape)
    return Volume(array=array, affine=affine, modality=mod, units=units, meta=meta, raw=raw)


# ---------------------------------------------------------------------------
# NIfTI
# ---------------------------------------------------------------------------


def _nifti(path: Path, patient_id: str) -> tuple[Any, np.ndarray]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        _ = img.shape
    except Exception as exc:
        raise InputError(patient_id, f"{path.name} cannot be read as NIfTI ({type(exc).__name__})") from None
    if img.ndim != 3 and not (img.ndim == 4 and img.shape[3] == 1):
        raise InputError(patient_id, f"{path.name} is not a 3-D volume (shape {img.shape})")
    hdr = img.header
    if int(hdr["sform_code"]) == 0 and int(hdr["qform_code"]) == 0:
        raise InputError(patient_id, f"{path.name} has no orientation (qform and sform codes are 0)")
    ras = np.asarray(img.affine, dtype=float)
    det = np.linalg.det(ras[:3, :3]) if np.all(np.isfinite(ras)) else 0.0
    if not np.isfinite(det) or abs(det) < 1e-6:
        raise InputError(patient_id, f"{path.name} has a singular or broken affine (determinant {det:.3g})")
    return img, np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras


def _nifti_volume(
    path: Path, patient_id: str, modality: str, factor: float, keep_raw: bool, meta: dict[str, Any]
) -> Volume:
    img, lps = _nifti(path, patient_id)
    data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(img.shape[:3])
    _require_finite(data, path.name, patient_id)
    raw = None
    if keep_raw:
        raw = (
            np.asarray(img.dataobj.get_unscaled(), dtype=np.float32).reshape(img.shape[:3])
            if modality == "CT"
            else data
        )
    # NIfTI voxel (i, j, k) -> array (k, j, i) so that the last axis is the fastest (columns)
    perm = np.zeros((4, 4))
    perm[0, 2] = perm[1, 1] = perm[2, 0] = perm[3, 3] = 1.0
    affine = lps @ perm
    array, affine = reorient(np.transpose(data, (2, 1, 0)) * np.float32(factor), affine)
    if raw is not None:
        raw, _ = reorient(np.transpose(raw, (2, 1, 0)), lps @ perm)
    meta = {
        **meta,
        "format": "nifti",
        "spacing_mm": [round(v, 4) for v in np.linalg.norm(affine[:3, :3], axis=0).tolist()],
        "shape": list(array.shape),
    }
    return Volume(
        array=array.astype(np.float32),
        affine=affine,
        modality=modality,
        units="SUVbw" if modality == "PT" else "HU",
        meta=meta,
        raw=None if raw is None else raw.astype(np.float32),
    )


def load_label_map(path: str | Path, patient_id: str) -> tuple[np.ndarray, np.ndarray]:
    """A label map (NIfTI of integer codes, e.g. a TotalSegmentator output) in canonical order.

    Returns
    -------
    labels, affine
        int32 ``(D, H, W)`` (head to feet, anterior to posterior, right to left)
        and its ``(4, 4)`` voxel -> LPS affine, as for :class:`Volume`.

    Raises
    ------
    InputError
        Unreadable file, no orientation, broken affine, or values that are not
        non-negative integers.
    """
    path = Path(path)
    img, lps = _nifti(path, patient_id)
    data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(img.shape[:3])
    if not np.all(np.isfinite(data)) or np.any(data < 0) or np.any(data != np.round(data)):
        raise InputError(patient_id, f"{path.name} is not a label map (values must be non-negative integers)")
    perm = np.zeros((4, 4))
    perm[0, 2] = perm[1, 1] = perm[2, 0] = perm[3, 3] = 1.0
    array, affine = reorient(np.transpose(data.astype(np.int32), (2, 1, 0)), lps @ perm)
    return array, affine


def _sidecar_number(side: dict[str, Any], key: str) -> float | None:
    value = side.get(key)
    if value is None or value == "" or isinstance(value, bool):
        return None
    return _num(value)


def _sidecar_suv_factor(side: dict[str, Any], patient_id: str) -> tuple[float, dict[str, Any]]:
    """SUVbw factor of a NIfTI PET in Bq/ml from its ``pet.json`` (module docstring, "NIfTI").

    The same plausibility rules as a DICOM header: weight, dose for the
    nuclide, half-life equal to the nuclide's, time from injection to scan.
    There is no default nuclide: a sidecar without ``half_life_s``, ``nuclide``
    or a ``radiopharmaceutical`` naming one is refused.
    """
    weight = _sidecar_number(side, "patient_weight_kg")
    if weight is None or weight <= 0:
        raise InputError(patient_id, "patient weight (patient_weight_kg) missing in pet.json; SUVbw needs it")
    check_weight(weight, patient_id, "pet.json patient_weight_kg")
    dose = _sidecar_number(side, "injected_dose_bq")
    if dose is None or dose <= 0:
        raise InputError(patient_id, "injected dose (injected_dose_bq) missing in pet.json")
    half_life = _sidecar_number(side, "half_life_s")
    texts = [("nuclide", side.get("nuclide", "")), ("radiopharmaceutical", side.get("radiopharmaceutical", ""))]
    if half_life is None and not any(_nuclide_in_text(t) for _, t in texts):
        raise InputError(
            patient_id,
            "pet.json gives neither half_life_s nor nuclide (e.g. \"Ga-68\", \"F-18\"): "
            "the decay cannot be computed, and no nuclide is assumed",
        )
    nuclide, nuclide_from = identify_nuclide(texts, half_life, patient_id, "pet.json half_life_s")
    half_life = nuclide.half_life_s if half_life is None else half_life
    check_dose(dose, nuclide, patient_id, "pet.json injected_dose_bq")
    ref = str(side.get("decay_corrected_to", "scan_start")).strip().lower()
    if ref == "injection":
        elapsed = 0.0
    elif ref == "scan_start":
        elapsed = _sidecar_number(side, "injection_to_scan_s")
        if elapsed is None:
            raise InputError(patient_id, "injection_to_scan_s missing in pet.json")
        check_uptake(elapsed, patient_id, "pet.json injection_to_scan_s")
    else:
        raise InputError(patient_id, f"pet.json decay_corrected_to {ref!r} not supported (scan_start|injection)")
    factor = weight * 1000.0 / (dose * decay_factor(elapsed, half_life))
    return factor, {
        "nuclide": nuclide.name,
        "nuclide_from": f"pet.json {nuclide_from}",
        "half_life_s": half_life,
        "injection_to_reference_s": elapsed,
        "scan_start_from": "pet.json injection_to_scan_s" if ref == "scan_start" else "",
        "decay_correction": "START" if ref == "scan_start" else "ADMIN",
        "injected_dose_mbq": round(dose / 1e6, 3),
        "patient_weight_kg": weight,
    }


def load_nifti(folder: str | Path, patient_id: str, *, keep_raw: bool = False) -> PatientImages:
    """Read ``pet.nii.gz`` + ``pet.json`` and ``ct.nii.gz`` (module docstring, "NIfTI").

    Returns
    -------
    PatientImages
        PET in SUVbw, CT in HU, each ``(D, H, W)`` with an LPS affine.
    """
    root = Path(folder)
    pet_path, ct_path, side_path = root / "pet.nii.gz", root / "ct.nii.gz", root / "pet.json"
    for p, what in ((pet_path, "PET"), (ct_path, "CT")):
        if not p.is_file():
            raise InputError(patient_id, f"no {what} image ({p.name} missing)")
    if not side_path.is_file():
        raise InputError(patient_id, "pet.json sidecar missing: the PET units are unknown")
    try:
        side = json.loads(side_path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise InputError(patient_id, "pet.json is not valid JSON") from None
    if not isinstance(side, dict):
        raise InputError(patient_id, "pet.json must hold one JSON object ({\"units\": ...})")
    units = str(side.get("units", "")).strip()
    facts: dict[str, Any] = {"pet_units_stored": units}
    if units.lower() == "suvbw":
        factor = 1.0
        weight = _sidecar_number(side, "patient_weight_kg")  # optional here: the body-mass rule uses it
        if weight is not None and _plausible_weight(weight):
            facts["patient_weight_kg"] = weight
    elif units.lower() in ("bq/ml", "bqml"):
        factor, more = _sidecar_suv_factor(side, patient_id)
        facts.update(more)
    else:
        raise InputError(
            patient_id, f"pet.json units {units or 'missing'!r} cannot give SUV (needs 'SUVbw' or 'Bq/ml')"
        )
    facts["suv_factor"] = factor
    if isinstance(side.get("scanner"), str):
        facts["scanner_model"] = side["scanner"]
    pet = _nifti_volume(pet_path, patient_id, "PT", factor, keep_raw, facts)
    ct = _nifti_volume(ct_path, patient_id, "CT", 1.0, keep_raw, {})
    return PatientImages(patient_id=patient_id, pet=pet, ct=ct)


# ---------------------------------------------------------------------------
# One patient
# ---------------------------------------------------------------------------


def load_patient(
    folder: str | Path,
    patient_id: str,
    *,
    on_error: str = "stop",
    keep_raw: bool = False,
    registered: bool = False,
) -> PatientImages:
    """Load a patient's PET (SUVbw) and CT (HU) from DICOM or NIfTI.

    Parameters
    ----------
    folder : path
        ``DATA/imaging/<patient_id>``. NIfTI is used when ``pet.nii.gz`` or
        ``ct.nii.gz`` is at its top level, DICOM otherwise.
    patient_id : str
        Study pseudonym, used in messages only.
    on_error : {"stop", "skip"}
        Unreadable files: raise, or skip them (a skipped slice then shows up as
        a missing slice).
    keep_raw : bool
        Keep the values before harmonisation in ``Volume.raw`` (for QC).
    registered : bool
        The CT was registered to the PET from another study (cohort YAML
        ``registered_pet_ct``): StudyInstanceUID and FrameOfReferenceUID may
        differ (:func:`check_pairing`).

    Returns
    -------
    PatientImages
        ``meta["header_messages"]`` counts pydicom's complaints about the
        headers by kind (no values: :func:`prrt_utils.io.log.pydicom_messages`).

    Raises
    ------
    InputError
        Whenever the images cannot be used as they are (message names patient and problem).
    """
    from prrt_utils.io.log import get_logger, pydicom_messages

    root = Path(folder)
    if not root.is_dir():
        raise InputError(patient_id, "imaging folder not found")
    if (root / "pet.nii.gz").exists() or (root / "ct.nii.gz").exists():
        return load_nifti(root, patient_id, keep_raw=keep_raw)
    with pydicom_messages() as heard:
        images = _load_dicom_patient(root, patient_id, on_error, keep_raw, registered)
    if heard:
        kinds = ", ".join(f"{k} ({n}x)" for k, n in sorted(heard.items()))
        get_logger("loading").info(
            "patient %s: header values that do not follow the DICOM standard, read anyway: %s", patient_id, kinds
        )
        images.pet.meta["header_messages"] = dict(heard)
    return images


def _load_dicom_patient(
    root: Path, patient_id: str, on_error: str, keep_raw: bool, registered: bool
) -> PatientImages:
    series = discover_series(root, patient_id, on_error=on_error, read_pixels=True)
    if not series:
        raise InputError(
            patient_id,
            f"no PET series found (no PET or CT DICOM series; {series.n_non_dicom} non-DICOM files)",
        )
    pet_s, ct_s, choice = choose_series(series, patient_id)
    check_pairing(pet_s, ct_s, patient_id, registered)
    pet = load_series(pet_s, patient_id, keep_raw=keep_raw, on_error=on_error)
    ct = load_series(ct_s, patient_id, keep_raw=keep_raw, on_error=on_error)
    same_for = bool(pet_s.frame_of_reference) and pet_s.frame_of_reference == ct_s.frame_of_reference
    for vol, key in ((pet, "pet"), (ct, "ct")):
        vol.meta["series_choice"] = choice[key]
        vol.meta["same_frame_of_reference"] = same_for
        vol.meta["registered_pair"] = registered
        vol.meta["files_without_preamble"] = series.n_no_preamble
        vol.meta["files_skipped"] = {
            "non_dicom": series.n_non_dicom,
            "other": series.n_other,
            "unreadable": series.n_unreadable,
        }
        vol.meta.pop("frame_of_reference", None)
    return PatientImages(patient_id=patient_id, pet=pet, ct=ct)
