"""Reading one DICOM series into a :class:`~prrt_utils.io.images.Volume`: slices in order, geometry
checked, per-slice rescale applied, PET converted to SUVbw (:mod:`prrt_utils.io.suv`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from prrt_utils.io.discovery import UNCOMPRESSED_SYNTAXES, SeriesInfo, header_strings
from prrt_utils.io.images import InputError, Volume, file_label, reorient, require_finite
from prrt_utils.io.suv import header_number, parse_date_time, suv_factor

__all__ = [
    "load_series",
]


# ---------------------------------------------------------------------------
# Reading one DICOM series
# ---------------------------------------------------------------------------


def _floats(value: Any, n: int) -> np.ndarray | None:
    try:
        arr = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def _compressed(ds: Any) -> bool:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return ts is not None and str(ts) not in UNCOMPRESSED_SYNTAXES and bool(getattr(ts, "is_compressed", False))


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
    weights = {header_number(ds.get("PatientWeight")) for _, ds, _ in slices}
    if len(weights) > 1:
        raise InputError(patient_id, f"{name} slices disagree on PatientWeight: cannot convert to SUV")


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
            raise InputError(patient_id, f"{name} {file_label(pos, n_all)}: {_pixel_problem(ds, exc)}") from None
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
                f"{name} {file_label(pos, n_all)} lacks ImagePositionPatient, ImageOrientationPatient or PixelSpacing",
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
    tilt = max(abs(header_number(ds.get("GantryDetectorTilt")) or 0.0) for _, ds, _ in slices)
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
        _require_rescale(ds, modality, file_label(pos, n_all), patient_id)
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
        "slice_thickness_mm": header_number(first.get("SliceThickness")),
        "frame_of_reference": series.frame_of_reference,
    }
    slopes = sorted({float(ds.get("RescaleSlope", 1) or 1) for _, ds, _ in slices})
    intercepts = sorted({float(ds.get("RescaleIntercept", 0) or 0) for _, ds, _ in slices})
    meta["rescale_slope_range"] = [slopes[0], slopes[-1]]
    meta["rescale_intercept_range"] = [intercepts[0], intercepts[-1]]
    if series.modality == "CT":
        meta["convolution_kernel"] = "\\".join(header_strings(first.get("ConvolutionKernel"))) or ""
        meta["kvp"] = header_number(first.get("KVP"))
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
    acq = [parse_date_time(ds.get("AcquisitionDate"), ds.get("AcquisitionTime")) for _, ds, _ in slices]
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
    require_finite(values, f"{name} pixel values", patient_id)
    array, affine = reorient(values, affine)
    if raw is not None:
        raw, _ = reorient(raw, _dicom_affine(iop0, ps0, ipps[0], step))
    meta["spacing_mm"] = [round(v, 4) for v in np.linalg.norm(affine[:3, :3], axis=0).tolist()]
    meta["shape"] = list(array.shape)
    return Volume(array=array, affine=affine, modality=mod, units=units, meta=meta, raw=raw)
