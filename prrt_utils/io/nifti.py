"""Reading a NIfTI patient (``pet.nii.gz`` + ``pet.json``, ``ct.nii.gz``) and CT label maps, with the
same rules as a DICOM header (:mod:`prrt_utils.io.loading`, "NIfTI").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from prrt_utils.io.images import InputError, PatientImages, Volume, reorient, require_finite
from prrt_utils.io.suv import (
    check_dose,
    check_uptake,
    check_weight,
    decay_factor,
    header_number,
    identify_nuclide,
    nuclide_in_text,
    plausible_weight,
)

__all__ = [
    "load_label_map",
    "load_nifti",
]


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
    require_finite(data, path.name, patient_id)
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
    return header_number(value)


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
    if half_life is None and not any(nuclide_in_text(t) for _, t in texts):
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
        if weight is not None and plausible_weight(weight):
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
