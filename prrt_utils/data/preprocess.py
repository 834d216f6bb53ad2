"""Preprocessing stage: PET (SUVbw) and CT (HU) on one common 75 x 50 x 50 grid per patient.

Paper section 2.5: artefact removal, harmonisation of rescale slopes, SUV and
HU conversion (:mod:`prrt_utils.io.loading`), resampling to a common grid and
cropping to 75 x 50 x 50 voxels. Intensity normalisation is NOT done here: it
is fitted on the training part of each cross-validation fold
(:mod:`prrt_utils.models.training`), so no test patient leaks into it.

Where the code is: the box, the body mask and resampling are
:mod:`prrt_utils.data.grid`; chapter 02's QC summaries and figures are
:mod:`prrt_utils.data.qc`; this module holds the configuration, the artefact
rules and result checks of one patient, and the stage (cache, run, read back).

Artefact rules
--------------
* CT is clipped to ``ct_range_hu`` ([-1024, 3071] HU; padding outside the
  reconstruction circle becomes air); PET below 0 is set to 0.
* Body mask: the largest 3-D connected component of CT > ``body_threshold_hu``
  (-500 HU), which drops the scanner bed, cushions and anything not touching
  the body (caveat: so are arms lying apart from the trunk), made convex
  slice by slice (its per-slice convex hull: lungs and bowel gas are inside
  even where a thin body wall is not closed; some air between the legs or
  beside raised arms is kept too, harmlessly). Outside it CT becomes -1024 HU; PET
  becomes 0 outside the mask grown by ``pet_mask_margin_mm`` (10 mm, keeps
  the PET's own blur at the skin).

Result checks
-------------
What the headers cannot show, checked on the images (each refuses the patient
with the number and the rule): the body in the CT may weigh at most
:data:`BODY_MASS_TO_WEIGHT_MAX` times the patient weight (a wrong weight), the
whole-body SUVmax must lie in :data:`SUV_MAX_RANGE` (wrong units) and, where a
CT label map gives the liver, its median SUV in :data:`LIVER_SUV_RANGE`.

Outputs (DESIGN "Preprocessed volumes")
---------------------------------------
``WORK/preprocessed/<patient_id>.npz`` (``pet`` SUVbw, ``ct`` HU, float32
``(75, 50, 50)``; ``affine`` of the grid), ``index.csv``, ``exclusions.csv``,
``qc.csv`` (non-identifying acquisition facts and the box per patient),
``config.yaml`` and ``cache/<patient_id>.json`` (what each result was made
from). The cache key is the SHA-256 of every byte of the patient's input files
and the config hash: a rerun skips finished patients, an interrupted run
resumes, and each ``.npz`` is written atomically.

Hand-written parts: the cache; everything on the grid is :mod:`prrt_utils.data.grid`'s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prrt_utils.data.anatomy import (
    SYNTHETIC_LABEL_MAP,
    AnatomyError,
    find_labels,
    label_map_path,
    liver_reference,
    load_organs,
)
from prrt_utils.data.cohort import patient_id_problem
from prrt_utils.data.grid import (
    TargetGrid,
    body_mask,
    coarse_ct,
    coverage,
    resample,
    sample_volume,
    target_grid,
)
from prrt_utils.io import store
from prrt_utils.io.config import Config
from prrt_utils.io.images import InputError, PatientImages
from prrt_utils.io.loading import load_patient
from prrt_utils.io.log import get_logger, scrub, write_debug

__all__ = [
    "BODY_MASS_TO_WEIGHT_MAX",
    "LIVER_SUV_RANGE",
    "SUV_MAX_RANGE",
    "PreparedPatient",
    "PreprocessConfig",
    "PreprocessError",
    "Preprocessed",
    "body_mass_kg",
    "check_body_mass",
    "load_volumes",
    "check_liver_suv",
    "check_suv_max",
    "prepare_patient",
    "preprocess_patient",
    "registered_pairs",
    "read_table",
    "run_preprocessing",
]


STAGE = "preprocess"
_CACHE_VERSION = 4  # 4: the body-mass rule; bump when the stored result of the same inputs and config changes


class PreprocessError(ValueError):
    """The preprocessing stage cannot run or its outputs cannot be read (not a patient's input problem)."""


@dataclasses.dataclass(frozen=True)
class PreprocessConfig(Config):
    """Parameters of the preprocessing stage (module docstring for the rules).

    Attributes
    ----------
    shape : (int, int, int)
        Target voxels ``(D, H, W)`` (paper: 75 x 50 x 50).
    box_mm : (float, float, float)
        Physical extent of the target box ``(D, H, W)`` in mm; spacing = box / shape.
    anchor : {"lung_apex", "body_top"}
        Cranio-caudal anchoring rule.
    top_margin_mm : float
        Distance from the lung apex to the top of the box.
    body_threshold_hu, lung_threshold_hu, lung_min_area_mm2
        Body mask threshold, air threshold and the area that marks the lung apex.
    ct_range_hu : (float, float)
        CT clipping range in HU.
    remove_outside_body : bool
        Blank CT (-1024 HU) and PET (0) outside the body mask.
    pet_mask_margin_mm : float
        Growth of the body mask applied to PET.
    antialias : bool
        Gaussian pre-filter before sampling (module docstring).
    min_coverage : float
        Fraction of the target box each series must cover, else the patient is excluded.
    on_error : {"skip", "stop"}
        A patient whose images cannot be used is listed in ``exclusions.csv``
        and the run goes on (``"skip"``), or the run stops with its message.
    """

    shape: tuple[int, int, int] = (75, 50, 50)
    box_mm: tuple[float, float, float] = (750.0, 500.0, 500.0)
    anchor: str = "lung_apex"
    top_margin_mm: float = 50.0
    body_threshold_hu: float = -500.0
    lung_threshold_hu: float = -400.0
    lung_min_area_mm2: float = 1000.0
    ct_range_hu: tuple[float, float] = (-1024.0, 3071.0)
    remove_outside_body: bool = True
    pet_mask_margin_mm: float = 10.0
    antialias: bool = True
    min_coverage: float = 0.5
    on_error: str = "skip"

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(int(n) < 1 for n in self.shape):
            raise ValueError(f"shape must be three positive integers, got {self.shape}")
        if len(self.box_mm) != 3 or any(float(b) <= 0 for b in self.box_mm):
            raise ValueError(f"box_mm must be three positive lengths, got {self.box_mm}")
        if self.anchor not in ("lung_apex", "body_top"):
            raise ValueError(f"anchor must be 'lung_apex' or 'body_top', got {self.anchor!r}")
        if self.on_error not in ("skip", "stop"):
            raise ValueError(f"on_error must be 'skip' or 'stop', got {self.on_error!r}")
        if not self.ct_range_hu[0] < self.ct_range_hu[1]:
            raise ValueError(f"ct_range_hu must be (low, high), got {self.ct_range_hu}")

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Target voxel size ``(D, H, W)`` in mm."""
        return tuple(float(b) / int(n) for b, n in zip(self.box_mm, self.shape, strict=True))  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True, eq=False)
class Preprocessed:
    """One patient on the common grid: ``pet`` (SUVbw) and ``ct`` (HU), float32 ``(D, H, W)``."""

    patient_id: str
    pet: np.ndarray
    ct: np.ndarray
    grid: TargetGrid
    facts: dict[str, Any]


SUV_MAX_RANGE = (1.0, 500.0)
"""Plausible whole-body SUVmax (inside the body, at the PET's own resolution).

Spleen, kidneys and bladder of an SR-PET, the brain and bladder of an FDG-PET
reach several SUV; no tumour reaches 500. Far outside, the units are wrong:
Bq/ml declared as SUV (``GML``, a NIfTI ``"SUVbw"``) gives thousands, SUV
declared as Bq/ml gives a thousandth.
"""

BODY_MASS_TO_WEIGHT_MAX = 1.3
"""Most the body in the CT may weigh, as a multiple of the patient weight the PET was converted with.

The CT sees part of the body (whole-body PET/CT: about 75-90 % of its mass),
never more than all of it; the density from HU (:func:`body_mass_kg`) is good
to a few per cent. Above 1.3 the weight is wrong (a weight of 20 kg typed for
a 70 kg patient passes the 20-300 kg rule and, at SUV x0.29, the SUVmax rule),
and so is every SUV computed with it. The rule needs no organ labels. A
weight too high (pounds typed as kilograms) gives a ratio that a small field
of view gives too, so there is no lower limit.
"""

LIVER_SUV_RANGE = (0.3, 40.0)
"""Plausible median SUV of the liver (SR-PET about 5-10, FDG about 2-3), checked where organ masks exist."""


def check_suv_max(suv_max: float, pet_meta: dict[str, Any], patient_id: str) -> None:
    """Refuse a PET whose whole-body SUVmax lies outside :data:`SUV_MAX_RANGE` (the number and the rule)."""
    lo, hi = SUV_MAX_RANGE
    if lo <= suv_max <= hi:
        return
    stored = pet_meta.get("pet_units_stored", "")
    hint = (
        f"; the PET is declared {stored}: " + ("Bq/ml stored as SUV?" if suv_max > hi else "SUV stored as Bq/ml?")
        if stored
        else ""
    )
    raise InputError(
        patient_id,
        f"whole-body SUVmax {suv_max:.4g} is implausible (rule: {lo:g} to {hi:g}){hint}; check units, weight and dose",
    )


def body_mass_kg(ct_hu: np.ndarray, mask: np.ndarray, voxel_ml: float) -> float:
    """Mass (kg) of the CT inside ``mask``, with density from HU on the usual two lines.

    At or below 0 HU a voxel is a mixture of air and water: ``1 + HU/1000``
    g/ml (0 for air). Above 0 HU the water-to-cortical-bone line ``1 +
    0.0006 HU`` (cortical bone about 1.9 g/ml at 1500 HU), so contrast and
    bone are not counted as if HU measured density one to one.
    """
    hu = np.clip(ct_hu[mask].astype(np.float64), -1000.0, 3071.0)
    rho = np.where(hu <= 0.0, 1.0 + hu / 1000.0, 1.0 + 0.0006 * hu)
    return float(rho.sum() * voxel_ml / 1000.0)


def check_body_mass(mass_kg: float, weight_kg: float | None, patient_id: str) -> float | None:
    """Refuse a CT body heavier than :data:`BODY_MASS_TO_WEIGHT_MAX` x the weight; return the ratio (None without a weight)."""
    if weight_kg is None:
        return None
    ratio = mass_kg / weight_kg
    if ratio > BODY_MASS_TO_WEIGHT_MAX:
        raise InputError(
            patient_id,
            f"the body in the CT weighs about {mass_kg:.1f} kg, {ratio:.2f} times the patient weight the SUV "
            f"was computed with (rule: at most {BODY_MASS_TO_WEIGHT_MAX:g}); check the weight",
        )
    return ratio


def check_liver_suv(liver_suv: float | None, patient_id: str) -> None:
    """Refuse a median liver SUV outside :data:`LIVER_SUV_RANGE` (the number and the rule); None passes."""
    lo, hi = LIVER_SUV_RANGE
    if liver_suv is not None and not lo <= liver_suv <= hi:
        raise InputError(
            patient_id,
            f"median liver SUV {liver_suv:.4g} is implausible (rule: {lo:g} to {hi:g}); check units, weight and dose",
        )


def preprocess_patient(images: PatientImages, cfg: PreprocessConfig) -> Preprocessed:
    """Artefact rules, anchoring and resampling of one patient (module docstring).

    Parameters
    ----------
    images : PatientImages
        PET in SUVbw and CT in HU on their own grids (:func:`prrt_utils.io.loading.load_patient`).
    cfg : PreprocessConfig

    Returns
    -------
    Preprocessed
        ``pet`` and ``ct`` float32 ``cfg.shape`` on the same grid.

    Raises
    ------
    InputError
        A CT body heavier than the weight allows (:data:`BODY_MASS_TO_WEIGHT_MAX`),
        too little coverage, no body on the CT, or a whole-body SUVmax outside
        :data:`SUV_MAX_RANGE`.
    """
    from scipy.ndimage import distance_transform_edt

    pid = images.patient_id
    pet, ct = images.pet, images.ct
    lo, hi = (float(v) for v in cfg.ct_range_hu)
    coarse, step = coarse_ct(ct)
    cmask = body_mask(coarse.array, cfg.body_threshold_hu)
    mass = body_mass_kg(coarse.array, cmask, abs(float(np.linalg.det(coarse.affine[:3, :3]))) / 1000.0)
    mass_ratio = check_body_mass(mass, pet.meta.get("patient_weight_kg"), pid)
    grid = target_grid(coarse, cfg, cmask, patient_id=pid)
    cover = {"pet": coverage(pet, grid), "ct": coverage(ct, grid)}
    for name, frac in cover.items():
        if frac < cfg.min_coverage:
            raise InputError(
                pid,
                f"{name.upper()} covers only {100 * frac:.0f}% of the target box (needs {100 * cfg.min_coverage:.0f}%)",
            )
    ct_arr = np.clip(ct.array, lo, hi)
    pet_arr = np.clip(pet.array, 0.0, None)
    if cfg.remove_outside_body:
        rows = np.clip(np.rint(np.arange(ct.shape[1]) / step).astype(int), 0, cmask.shape[1] - 1)
        cols = np.clip(np.rint(np.arange(ct.shape[2]) / step).astype(int), 0, cmask.shape[2] - 1)
        ct_arr = np.where(cmask[:, rows][:, :, cols], ct_arr, np.float32(lo))
        pet_from_ct = np.linalg.inv(coarse.affine) @ pet.affine
        pm = sample_volume(cmask.astype(np.float32), pet_from_ct, pet.shape, 1, 0.0) > 0.5
        if cfg.pet_mask_margin_mm > 0 and pm.any():
            pm = distance_transform_edt(~pm, sampling=pet.spacing) <= cfg.pet_mask_margin_mm
        pet_arr = np.where(pm, pet_arr, np.float32(0.0))
    suv_max_native = float(pet_arr.max()) if pet_arr.size else 0.0
    check_suv_max(suv_max_native, pet.meta, pid)
    pet_out = np.clip(resample(pet_arr, pet.affine, grid, fill=0.0, antialias=cfg.antialias), 0.0, None)
    ct_out = np.clip(resample(ct_arr, ct.affine, grid, fill=lo, antialias=cfg.antialias), lo, hi)
    origin = grid.affine[:3, 3]
    facts = {
        "anchor": grid.anchor,
        "box_first_voxel_lps_mm": [round(float(v), 2) for v in origin],
        "pet_coverage": round(cover["pet"], 4),
        "ct_coverage": round(cover["ct"], 4),
        "body_fraction": round(float((ct_out > cfg.body_threshold_hu).mean()), 4),
        "pet_suv_max": round(float(pet_out.max()), 3),
        "pet_suv_max_native": round(suv_max_native, 3),
        "ct_body_mass_to_weight": round(mass_ratio, 3) if mass_ratio is not None else None,
    }
    return Preprocessed(pid, pet_out.astype(np.float32), ct_out.astype(np.float32), grid, facts)


# ---------------------------------------------------------------------------
# The stage: cache, run, read back
# ---------------------------------------------------------------------------


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An ``.npz`` with fixed zip time stamps (same arrays -> same bytes), written atomically."""
    with store.atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def _meta_facts(images: PatientImages) -> dict[str, Any]:
    """Flat, non-identifying facts for ``qc.csv``."""
    p, c = images.pet.meta, images.ct.meta
    return {
        "format": p.get("format", ""),
        "pet_scanner_model": p.get("scanner_model", ""),
        "pet_spacing_mm": "x".join(f"{v:g}" for v in images.pet.spacing),
        "pet_shape": "x".join(str(v) for v in images.pet.shape),
        "pet_units_stored": p.get("pet_units_stored", ""),
        "pet_decay_correction": p.get("decay_correction", ""),
        "pet_injection_to_reference_min": round(p["injection_to_reference_s"] / 60.0, 2)
        if p.get("injection_to_reference_s") is not None
        else None,
        "pet_suv_factor": p.get("suv_factor"),
        "pet_nuclide": p.get("nuclide", ""),
        "pet_scan_start_from": p.get("scan_start_from", ""),
        "pet_injection_from": p.get("injection_from", ""),
        "pet_ct_registered": bool(p.get("registered_pair", False)),
        "ct_spacing_mm": "x".join(f"{v:g}" for v in images.ct.spacing),
        "ct_shape": "x".join(str(v) for v in images.ct.shape),
        "ct_kernel": c.get("convolution_kernel", ""),
        "ct_contrast": c.get("contrast"),
        "ct_rescale_slope": (c.get("rescale_slope_range") or [None])[0],
        "ct_rescale_intercept": (c.get("rescale_intercept_range") or [None])[0],
        "pet_series_choice": p.get("series_choice", ""),
        "ct_series_choice": c.get("series_choice", ""),
    }


def _organs(pid: str, labels: tuple[str, tuple[str, ...]] | None, result: Preprocessed) -> np.ndarray | None:
    """The patient's organ masks on the preprocessed grid (:mod:`prrt_utils.data.anatomy`), or None without a label map."""
    if labels is None:
        return None
    try:
        return load_organs(labels[0], labels[1], result.grid.affine, result.pet.shape, pid)
    except AnatomyError as exc:
        raise InputError(pid, str(exc).removeprefix(f"patient {pid}: ")) from None


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedPatient:
    """Everything the stage keeps of one usable patient (:func:`prepare_patient`)."""

    images: PatientImages
    result: Preprocessed
    organs: np.ndarray | None
    facts: dict[str, Any]


def prepare_patient(
    folder: str | Path,
    patient_id: str,
    cfg: PreprocessConfig,
    *,
    registered: bool = False,
    labels: tuple[str, tuple[str, ...]] | None = None,
) -> PreparedPatient:
    """Load, check and preprocess one patient, in memory: the one verdict of the stage and of ``prrt check``.

    Every check that can refuse a patient runs here (the loader's header,
    pairing and geometry checks, the body mass against the weight, coverage,
    the SUVmax and liver SUV ranges,
    the label map), so that :func:`prrt_utils.data.check.check` and
    :func:`run_preprocessing` cannot disagree.

    Raises
    ------
    InputError
        The first reason the patient cannot be used.
    """
    images = load_patient(folder, patient_id, registered=registered)
    result = preprocess_patient(images, cfg)
    organs = _organs(patient_id, labels, result)
    facts = {**_meta_facts(images), **result.facts}
    if organs is not None:
        ref = liver_reference(result.pet, organs)
        check_liver_suv(ref, patient_id)
        facts["liver_suv_median"] = round(ref, 3) if ref is not None else None
    return PreparedPatient(images, result, organs, facts)


def registered_pairs(data_dir: str | Path) -> frozenset[str]:
    """Patients whose CT was registered to the PET from another study (``DATA/registered_pet_ct.csv``).

    The intake writes the file from the cohort YAML's ``registered_pet_ct``;
    without it every PET/CT must be one acquisition
    (:func:`prrt_utils.io.discovery.check_pairing`).
    """
    path = Path(data_dir) / "registered_pet_ct.csv"
    if not path.is_file():
        return frozenset()
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return frozenset(frame.get("patient_id", pd.Series(dtype=str)).str.strip())


def _process_patient(job: tuple[PreprocessConfig, str, str, str, str, Any, bool]) -> dict[str, Any]:
    cfg, pid, folder_s, out_s, input_hash, labels, registered = job
    folder, out = Path(folder_s), Path(out_s)
    npz = store.child(out, f"{pid}.npz")
    record: dict[str, Any] = {
        "patient_id": pid,
        "status": "excluded",
        "reason": "",
        "file": "",
        "sha256": "",
        "input_sha256": input_hash,
        "config_hash": cfg.hash(),
        "cache_version": _CACHE_VERSION,
    }
    cache = store.child(out / "cache", f"{pid}.json")
    try:
        prepared = prepare_patient(folder, pid, cfg, registered=registered, labels=labels)
    except InputError as exc:
        if cfg.on_error == "stop":
            raise InputError(pid, exc.problem) from None
        record["reason"] = exc.problem
        npz.unlink(missing_ok=True)
        store.write_json(cache, record)
        return record
    except Exception as exc:  # a bug or a resource problem: report, never cache
        problem = scrub(f"unexpected {type(exc).__name__}: {exc}", [folder])
        log_file = write_debug(out.parent, f"preprocess patient {pid}", exc, [folder, folder.parent])
        problem += f" (traceback in {log_file.relative_to(out.parent).as_posix()} of the work folder)"
        if cfg.on_error == "stop":
            raise PreprocessError(f"patient {pid}: {problem}") from None
        npz.unlink(missing_ok=True)
        record["reason"] = problem
        record["cache_version"] = -1
        return record
    result = prepared.result
    arrays = {"pet": result.pet, "ct": result.ct, "affine": result.grid.affine}
    if prepared.organs is not None:
        arrays["organs"] = prepared.organs
    _write_npz(npz, arrays)
    record.update(status="ok", file=npz.name, sha256=store.sha256_file(npz), facts=prepared.facts)
    store.write_json(cache, record)
    return record


def _cached(out: Path, pid: str, input_hash: str, cfg: PreprocessConfig) -> dict[str, Any] | None:
    path = store.child(out / "cache", f"{pid}.json")
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except ValueError:
        return None
    if (
        rec.get("input_sha256") != input_hash
        or rec.get("config_hash") != cfg.hash()
        or rec.get("cache_version") != _CACHE_VERSION
    ):
        return None
    if rec.get("status") == "ok":
        npz = store.child(out, rec.get("file", ""))
        if not npz.is_file() or store.sha256_file(npz) != rec.get("sha256"):
            return None
    return rec


def _id_problem(pid: str) -> str:
    """Why ``pid`` cannot name files (not UTF-8, unsafe characters), or ``""``."""
    try:
        pid.encode("utf-8")
    except UnicodeEncodeError:
        return "the imaging folder's name is not UTF-8 text; rename it to the study id"
    return patient_id_problem(pid)


def _patient_ids(cohort_csv: str | Path | Sequence[str] | None, imaging_dir: Path) -> list[tuple[str, bool]]:
    if cohort_csv is None:
        if not imaging_dir.is_dir():
            raise PreprocessError(f"imaging folder {imaging_dir} not found")
        return [
            (p.name, True) for p in sorted(imaging_dir.iterdir()) if p.is_dir() and not p.name.startswith(".")
        ]
    if isinstance(cohort_csv, str | Path):
        path = Path(cohort_csv)
        if not path.is_file():
            raise PreprocessError(
                f"{path} not found: run the cohort stage first, or pass a list of patient ids"
            )
        cohort = pd.read_csv(path, dtype={"patient_id": str})
        if "patient_id" not in cohort.columns:
            raise PreprocessError(f"{path} has no patient_id column")
        if "has_imaging" in cohort.columns:
            flags = (
                cohort["has_imaging"].astype(str).str.strip().str.lower().isin(["1", "1.0", "true", "yes"])
            )
        else:
            flags = pd.Series(True, index=cohort.index)
        return list(zip(cohort["patient_id"].astype(str), flags.astype(bool), strict=True))
    return [(str(p), True) for p in cohort_csv]


_INDEX_COLUMNS = ["patient_id", "status", "reason", "file", "sha256", "input_sha256", "config_hash"]


def _input_hash(
    folder: Path, pid: str, registered: bool, labels_dir: Path | None, label_map: Sequence[str]
) -> tuple[str, tuple[str, tuple[str, ...]] | None]:
    """The cache key of one patient's inputs, and the patient's CT label map if there is one.

    Parameters
    ----------
    folder : Path
        The patient's imaging folder (every file's content enters the hash).
    registered : bool
        The patient's CT was registered to the PET (the pairing waiver changes the verdict).
    labels_dir : Path or None
        Folder of CT label maps (:func:`prrt_utils.data.anatomy.find_labels`).
    label_map : sequence of str
        ``"code:class"`` of the label maps.

    Returns
    -------
    input_hash : str
        SHA-256 of the folder, extended by the waiver and by the label map file and its codes.
    labels : (str, tuple of str) or None
        ``(label map path, codes)`` for :func:`_process_patient`.
    """
    input_hash = store.sha256_tree(folder)
    if registered:  # the waiver changes the verdict: part of the cache key
        input_hash = hashlib.sha256(f"{input_hash}:registered-pet-ct".encode()).hexdigest()
    found = label_map_path(labels_dir, pid) if labels_dir is not None else None
    if found is None:
        return input_hash, None
    # the label map and its description are inputs too
    input_hash = hashlib.sha256(
        f"{input_hash}:{store.sha256_file(found)}:{json.dumps(list(label_map))}".encode()).hexdigest()
    return input_hash, (str(found), tuple(label_map))


def _unusable_patient(
    cfg: PreprocessConfig, pid: str, has_imaging: bool, imaging: Path, out: Path
) -> dict[str, Any] | None:
    """The excluded-record of a patient whose id or imaging folder is unusable; None when it can be processed.

    An id that is not a plain file name never reaches a path join; a patient without imaging loses any
    stale ``<pid>.npz``.

    Raises
    ------
    InputError
        With ``on_error == "stop"``: a bad id, or a missing folder of a patient that should have imaging.
    """
    shown = os.fsencode(pid).decode("utf-8", "backslashreplace")
    base = {
        "patient_id": shown,
        "status": "excluded",
        "file": "",
        "sha256": "",
        "input_sha256": "",
        "config_hash": cfg.hash(),
    }
    why = _id_problem(pid)
    if why:  # never a path: an id such as ../victim must not reach a join
        if cfg.on_error == "stop":
            raise InputError(shown, why)
        return {**base, "reason": why}
    if has_imaging and store.child(imaging, pid).is_dir():
        return None
    reason = "no imaging (has_imaging is false in the cohort)" if not has_imaging else "imaging folder not found"
    if cfg.on_error == "stop" and has_imaging:
        raise InputError(pid, reason)
    store.child(out, f"{pid}.npz").unlink(missing_ok=True)
    return {**base, "reason": reason}


def _run_jobs(jobs: list[tuple[Any, ...]], n_jobs: int, records: dict[str, dict[str, Any]], bar: Any) -> None:
    """Run :func:`_process_patient` on every job (in ``n_jobs`` processes when > 1), storing each record.

    Records go into ``records`` under their patient id as they finish; the first error cancels the
    jobs not yet started and propagates.
    """
    if n_jobs > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=n_jobs) as pool:
            futures = [pool.submit(_process_patient, job) for job in jobs]
            try:
                for fut in as_completed(futures):
                    rec = fut.result()
                    records[rec["patient_id"]] = rec
                    bar.update()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    else:
        for job in jobs:
            rec = _process_patient(job)
            records[rec["patient_id"]] = rec
            bar.update()


def _qc_frame(records: dict[str, dict[str, Any]], patients: Sequence[tuple[str, bool]]) -> pd.DataFrame:
    """``qc.csv``: the facts of every preprocessed patient, in cohort order, ``patient_id`` then sorted columns.

    The columns are the same whether a patient's facts were computed now or read from the cache (whose
    JSON is key-sorted), so a resumed run writes the same file as an uninterrupted one; list values are
    written space-separated (``"2 2 2"``).
    """
    qc = [
        {"patient_id": pid, **records[pid].get("facts", {})}
        for pid, _ in patients
        if records[pid]["status"] == "ok"
    ]
    frame = pd.DataFrame(qc)
    frame = frame[["patient_id", *sorted(c for c in frame.columns if c != "patient_id")]] if qc else frame
    for col in frame.columns:
        if frame[col].map(lambda v: isinstance(v, list)).any():
            frame[col] = frame[col].map(lambda v: " ".join(f"{x:g}" for x in v) if isinstance(v, list) else v)
    return frame


def run_preprocessing(
    cfg: PreprocessConfig,
    cohort_csv: str | Path | Sequence[str] | None,
    imaging_dir: str | Path,
    work_dir: str | Path,
    progress: bool = True,
    *,
    n_jobs: int = 1,
) -> pd.DataFrame:
    """Preprocess every patient with imaging; write ``WORK/preprocessed/`` (module docstring).

    The steps: per patient, refuse an unusable id or folder (:func:`_unusable_patient`), key its inputs
    (:func:`_input_hash`) and reuse a cached result (:func:`_cached`); process the rest
    (:func:`_run_jobs`); write ``index.csv``, ``exclusions.csv`` and ``qc.csv`` (:func:`_qc_frame`).

    Parameters
    ----------
    cfg : PreprocessConfig
    cohort_csv : path, list of str or None
        ``WORK/cohort/cohort.csv`` (``patient_id``, ``has_imaging``); or the
        patient ids themselves; or None for every folder under ``imaging_dir``.
    imaging_dir : path
        ``DATA/imaging`` (one folder per patient id).
    work_dir : path
        ``WORK``; outputs go to ``WORK/preprocessed/``.
    progress : bool
        tqdm progress bar.
    n_jobs : int
        Worker processes (results do not depend on it).

    Returns
    -------
    pd.DataFrame
        The index: ``patient_id, status (ok|excluded), reason, file, sha256,
        input_sha256, config_hash``, in cohort order.

    Raises
    ------
    InputError
        With ``cfg.on_error == "stop"``, at the first patient whose images cannot be used.
    """
    from tqdm.auto import tqdm

    imaging = Path(imaging_dir)
    out = Path(work_dir) / "preprocessed"
    out.mkdir(parents=True, exist_ok=True)
    store.write_text(out / "config.yaml", cfg.to_yaml())
    store.write_json(out / "config_hash.json", {"config_hash": cfg.hash(), "stage": STAGE})
    patients = _patient_ids(cohort_csv, imaging)
    labels_dir, label_codes = find_labels(imaging.parent)
    label_map = label_codes or SYNTHETIC_LABEL_MAP
    registered = registered_pairs(imaging.parent)
    records: dict[str, dict[str, Any]] = {}
    jobs = []
    for pid, has_imaging in patients:
        excluded = _unusable_patient(cfg, pid, has_imaging, imaging, out)
        if excluded is not None:
            records[pid] = excluded
            continue
        folder = store.child(imaging, pid)
        input_hash, labels = _input_hash(folder, pid, pid in registered, labels_dir, label_map)
        hit = _cached(out, pid, input_hash, cfg)
        if hit is not None:
            records[pid] = hit
        else:
            jobs.append((cfg, pid, str(folder), str(out), input_hash, labels, pid in registered))
    bar = tqdm(
        total=len(patients), initial=len(patients) - len(jobs), desc="preprocess", disable=not progress
    )
    try:
        _run_jobs(jobs, n_jobs, records, bar)
    finally:
        bar.close()
    index = pd.DataFrame(
        [{c: records[pid].get(c, "") for c in _INDEX_COLUMNS} for pid, _ in patients], columns=_INDEX_COLUMNS
    )
    store.write_csv(out / "index.csv", index)
    excl = index.loc[index["status"] != "ok", ["patient_id", "reason"]].assign(stage=STAGE)
    store.write_csv(out / "exclusions.csv", excl[["patient_id", "stage", "reason"]])
    store.write_csv(out / "qc.csv", _qc_frame(records, patients))
    log = get_logger("preprocess")
    for row in index.itertuples():
        if row.status != "ok":
            log.debug("patient %s excluded: %s", row.patient_id, row.reason)
    log.info("%d of %d patients preprocessed into %s", int((index["status"] == "ok").sum()), len(index), out)
    return index


def load_volumes(work_dir: str | Path, patient_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """Read the preprocessed volumes of ``patient_ids`` in the order given.

    Returns
    -------
    dict
        ``{"pet": (N, 1, D, H, W), "ct": (N, 1, D, H, W)}`` float32 (SUVbw, HU), and
        ``"organs"`` ``(N, 1, D, H, W)`` uint8 (:data:`prrt_utils.data.anatomy.ORGAN_CODES`)
        when every one of the patients has organ masks (a CT label map was found).

    Raises
    ------
    PreprocessError
        If the index is missing or a patient was excluded or not preprocessed.
    """
    out = Path(work_dir) / "preprocessed"
    path = out / "index.csv"
    if not path.is_file():
        raise PreprocessError(f"{path} not found: run the preprocessing stage first")
    index = pd.read_csv(path, dtype={"patient_id": str}, keep_default_na=False).set_index("patient_id")
    vols: dict[str, list[np.ndarray]] = {"pet": [], "ct": []}
    organs: list[np.ndarray | None] = []
    for pid in patient_ids:
        if pid not in index.index:
            raise PreprocessError(f"patient {pid}: not in {path}")
        row = index.loc[pid]
        if row["status"] != "ok":
            raise PreprocessError(f"patient {pid}: excluded at preprocessing ({row['reason']})")
        with np.load(store.child(out, row["file"])) as z:
            for m in vols:
                vols[m].append(np.asarray(z[m], dtype=np.float32)[None])
            organs.append(np.asarray(z["organs"], dtype=np.uint8)[None] if "organs" in z.files else None)
    if not vols["pet"]:
        return {m: np.zeros((0, 1, 75, 50, 50), np.float32) for m in vols}
    result = {m: np.stack(v) for m, v in vols.items()}
    if all(o is not None for o in organs):  # only when every patient has them: never mixed referenced and raw PET
        result["organs"] = np.stack(organs)
    return result


def read_table(work_dir: str | Path, name: str) -> pd.DataFrame:
    """One of the stage's tables (``index``, ``exclusions``, ``qc``) as a DataFrame (empty if absent)."""
    path = Path(work_dir) / "preprocessed" / f"{name}.csv"
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame()
    try:
        return pd.read_csv(path, dtype={"patient_id": str}, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
