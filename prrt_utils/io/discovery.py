"""Finding the PET and CT series of a patient in a messy DICOM export: reading every file (with or
without preamble), grouping by series, checking that PET and CT belong together, choosing one of each.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prrt_utils.io.images import InputError, file_label

__all__ = [
    "SeriesInfo",
    "SeriesList",
    "choose_series",
    "discover_series",
    "check_pairing",
]


_DICOMDIR_SOP = "1.2.840.10008.1.3.10"
UNCOMPRESSED_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
_PIXEL_DATA = 0x7FE00010
_ON_ERROR = ("stop", "skip")


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


def header_strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip().upper() for v in value.split("\\") if v.strip())
    try:
        return tuple(str(v).strip().upper() for v in value)
    except TypeError:
        return (str(value).strip().upper(),)


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
    if str(ds.file_meta.TransferSyntaxUID) in UNCOMPRESSED_SYNTAXES:
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
        "image_type": header_strings(ds.get("ImageType")),
        "corrected": header_strings(ds.get("CorrectedImage")),
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
                raise InputError(patient_id, f"{file_label(pos, n)} {found}")
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
