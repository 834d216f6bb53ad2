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
Every :class:`~prrt_utils.io.images.Volume` holds ``array`` of shape ``(D, H, W)`` and a 4 x 4
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
:class:`~prrt_utils.io.images.InputError`) for a gap larger than 1.5 x the median slice spacing
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
to the scan start (:func:`~prrt_utils.io.suv.scan_start`, QIBA's vendor-neutral rule:
SeriesDate/SeriesTime unless it lies after the earliest
AcquisitionDate/AcquisitionTime, as after a re-reconstruction, then that) and
``T_half`` from RadionuclideHalfLife; with ``"ADMIN"`` the image is already
corrected to the injection and ``D_ref = D``. Units ``GML`` are taken as SUVbw
already. Units ``CNTS`` (or anything else), DecayCorrection ``NONE``, a
missing weight, dose, half-life or injection time are refused, and so are
implausible values, with the number and the rule: a weight outside
:data:`~prrt_utils.io.suv.WEIGHT_RANGE_KG`, a half-life that is not the nuclide's within 1 % (the
nuclide named by RadionuclideCodeSequence or Radiopharmaceutical, else the one
whose half-life it is: :data:`~prrt_utils.io.suv.NUCLIDES`), a dose outside the nuclide's range, a
time from injection to scan outside 0-12 h. Time zones in
RadiopharmaceuticalStartDateTime are ignored (the scanner's local time is
assumed throughout). The whole-body SUVmax is checked after loading
(:func:`prrt_utils.data.preprocess.check_suv_max`).

Pairing: PET and CT must agree on PatientID, StudyInstanceUID and
FrameOfReferenceUID (:func:`~prrt_utils.io.discovery.check_pairing`; a CT registered from another
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

Where the code is: :func:`load_patient` here; :mod:`prrt_utils.io.discovery`
finds and pairs the series of an export, :mod:`prrt_utils.io.dicom` reads one
series, :mod:`prrt_utils.io.suv` holds the SUV formula and its plausibility
rules, :mod:`prrt_utils.io.nifti` the NIfTI route, and
:mod:`prrt_utils.io.images` the :class:`Volume`, :class:`PatientImages` and
:class:`InputError` they all return or raise.

Hand-written parts (no maintained library does them): grouping files into
series, slice ordering and geometry checks, the SUV formula and the DICOM
affine. pydicom reads the files and applies the modality LUT, nibabel reads
NIfTI and re-orders axes.
"""

from __future__ import annotations

from pathlib import Path

from prrt_utils.io.dicom import load_series
from prrt_utils.io.discovery import check_pairing, choose_series, discover_series
from prrt_utils.io.images import InputError, PatientImages
from prrt_utils.io.log import get_logger, pydicom_messages
from prrt_utils.io.nifti import load_nifti

__all__ = [
    "load_patient",
]


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
        differ (:func:`prrt_utils.io.discovery.check_pairing`).

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
