"""Preprocessing stage: PET (SUVbw) and CT (HU) on one common 75 x 50 x 50 grid per patient.

Paper section 2.5: artefact removal, harmonisation of rescale slopes, SUV and
HU conversion (:mod:`prrt_utils.io.loading`), resampling to a common grid and
cropping to 75 x 50 x 50 voxels. Intensity normalisation is NOT done here: it
is fitted on the training part of each cross-validation fold
(:mod:`prrt_utils.models.training`), so no test patient leaks into it.

Target grid
-----------
A box of ``box_mm = (750, 500, 500)`` mm (cranio-caudal, antero-posterior,
right-left) sampled by ``shape = (75, 50, 50)`` voxels: 10 mm voxels. Its axes
are those of LPS: array index ``(d, h, w)`` has its voxel centre at
``x = x0 + w * 10``, ``y = y0 + h * 10``, ``z = z0 - d * 10`` (mm), i.e. ``d``
runs head to feet, ``h`` anterior to posterior, ``w`` from the patient's right
to left (:attr:`TargetGrid.affine`).

Anchoring (one box per patient, placed on the CT):

* cranio-caudal: the top of the box lies ``top_margin_mm`` (50 mm) above the
  lung apex, the highest CT slice on which the largest connected region of air
  inside the body (HU < ``lung_threshold_hu``) covers at least
  ``lung_min_area_mm2`` (10 cm^2; the trachea alone stays below that). If no
  lung is found (``anchor="body_top"`` or a CT without thorax) the box starts
  at the top of the body mask.
* transaxial: the box is centred on the centroid of the body mask within the
  box's slab.

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

Resampling
----------
In physical space, never by resizing arrays: the target voxels are placed in
LPS millimetres and located in each series' own voxel space through its
affine (spacing, orientation and origin of that series). For the usual
axis-aligned series (axial DICOM, NIfTI without rotation; flips and axis
orders are undone first) every target voxel is the exact average of the source
over its 10 mm box (overlap-weighted, one axis at a time with sparse
weights), so the SUV x volume of a small lesion is kept wherever the grid cuts
it; axes where the target is finer than the source are interpolated linearly.
Voxels partly outside a series' field of view are completed with air (CT,
-1024 HU) or zero activity (PET). Oblique series fall back to a Gaussian
pre-filter (``sigma^2 = (r^2 - 1) / 12`` source voxels, the variance of the
missing box) and linear interpolation (:func:`scipy.ndimage.map_coordinates`).
MONAI's ``SpatialResample``/``ResampleToMatch`` would interpolate but not
box-average, and its MetaTensor affines default to RAS and torch's
``align_corners`` conventions, where a half-voxel or flipped axis is easy to
introduce and hard to see; the tests place balls at known LPS positions to
catch exactly that.

Outputs (DESIGN "Preprocessed volumes")
---------------------------------------
``WORK/preprocessed/<patient_id>.npz`` (``pet`` SUVbw, ``ct`` HU, float32
``(75, 50, 50)``; ``affine`` of the grid), ``index.csv``, ``exclusions.csv``,
``qc.csv`` (non-identifying acquisition facts and the box per patient),
``config.yaml`` and ``cache/<patient_id>.json`` (what each result was made
from). The cache key is the SHA-256 of every byte of the patient's input files
and the config hash: a rerun skips finished patients, an interrupted run
resumes, and each ``.npz`` is written atomically.

Hand-written parts (no maintained library does them on LPS affines): the
anchoring rule, the box-overlap weights and the cache; scipy does the
labelling, filtering, sparse products and interpolation.
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

from prrt_utils.io import store
from prrt_utils.data.anatomy import (
    SYNTHETIC_LABEL_MAP,
    AnatomyError,
    find_labels,
    label_map_path,
    liver_reference,
    load_organs,
)
from prrt_utils.data.cohort import patient_id_problem
from prrt_utils.io.config import Config
from prrt_utils.io.loading import load_patient
from prrt_utils.io.images import InputError, PatientImages, Volume
from prrt_utils.io.log import get_logger, scrub, write_debug

__all__ = [
    "BODY_MASS_TO_WEIGHT_MAX",
    "LIVER_SUV_RANGE",
    "SUV_MAX_RANGE",
    "HarmonisationSummary",
    "PreparedPatient",
    "PreprocessConfig",
    "PreprocessError",
    "Preprocessed",
    "TargetGrid",
    "body_mask",
    "body_mass_kg",
    "check_body_mass",
    "describe_grid_mm",
    "grid_table",
    "harmonisation_summary",
    "histogram_figure",
    "load_volumes",
    "check_liver_suv",
    "check_suv_max",
    "prepare_patient",
    "preprocess_patient",
    "qc_browser",
    "qc_figure",
    "qc_images",
    "registered_pairs",
    "read_table",
    "resample",
    "run_preprocessing",
    "target_grid",
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
class TargetGrid:
    """The common grid of one patient: ``shape`` ``(D, H, W)`` and ``affine`` voxel centre -> LPS mm."""

    affine: np.ndarray
    shape: tuple[int, int, int]
    anchor: str

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    def centres(self) -> np.ndarray:
        """LPS coordinates of every voxel centre, ``(D, H, W, 3)`` mm."""
        idx = np.stack(np.meshgrid(*[np.arange(n) for n in self.shape], indexing="ij"), axis=-1).astype(float)
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]


@dataclasses.dataclass(frozen=True, eq=False)
class Preprocessed:
    """One patient on the common grid: ``pet`` (SUVbw) and ``ct`` (HU), float32 ``(D, H, W)``."""

    patient_id: str
    pet: np.ndarray
    ct: np.ndarray
    grid: TargetGrid
    facts: dict[str, Any]


# ---------------------------------------------------------------------------
# Masks, anchoring, resampling
# ---------------------------------------------------------------------------


def body_mask(ct_hu: np.ndarray, threshold_hu: float = -500.0) -> np.ndarray:
    """Body mask of a CT in HU: largest 3-D component of ``CT > threshold_hu``, convex per slice.

    The largest connected component of the thresholded CT is the body (the
    scanner bed and cushions are separate components and drop out); each
    slice of it is replaced by its convex hull, so the lungs, bowel gas and
    the air of a body wall too thin or noisy to be closed count as inside.

    Parameters
    ----------
    ct_hu : np.ndarray
        ``(D, H, W)`` HU.
    threshold_hu : float

    Returns
    -------
    np.ndarray
        bool ``(D, H, W)``; all False if nothing exceeds the threshold.
    """
    from matplotlib.path import Path as PolyPath
    from scipy import ndimage
    from scipy.spatial import ConvexHull, QhullError

    m = ct_hu > threshold_hu
    lab, n = ndimage.label(m)
    if n == 0:
        return m
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    m = lab == int(np.argmax(sizes))
    del lab
    for k in np.nonzero(m.any(axis=(1, 2)))[0]:
        edge = m[k] & ~ndimage.binary_erosion(m[k])
        pts = np.argwhere(edge).astype(float)
        try:
            hull = ConvexHull(pts)
        except (QhullError, ValueError):  # fewer than 3 points or all on a line
            continue
        (r0, c0), (r1, c1) = pts.min(axis=0).astype(int), pts.max(axis=0).astype(int)
        rr, cc = np.mgrid[r0 : r1 + 1, c0 : c1 + 1]
        grid = np.column_stack([rr.ravel(), cc.ravel()]).astype(float)
        inside = PolyPath(pts[hull.vertices]).contains_points(grid, radius=1e-6)
        m[k, r0 : r1 + 1, c0 : c1 + 1] |= inside.reshape(rr.shape)
    return m


MASK_SPACING_MM = 4.0
"""The body mask and the anchoring work on the CT subsampled in-plane to at most this spacing (speed)."""


def _coarse_ct(ct: Volume) -> tuple[Volume, int]:
    """The CT taken every ``s``-th row and column (``s`` from :data:`MASK_SPACING_MM`), with its affine."""
    s = max(1, int(MASK_SPACING_MM // min(ct.spacing[1], ct.spacing[2])))
    if s == 1:
        return ct, 1
    aff = ct.affine.copy()
    aff[:3, 1:3] *= s
    return Volume(np.ascontiguousarray(ct.array[:, ::s, ::s]), aff, "CT", "HU", {}), s


def _slice_z(vol: Volume) -> np.ndarray:
    """LPS z (mm) of the centre of every slice of ``vol``."""
    h, w = (vol.shape[1] - 1) / 2.0, (vol.shape[2] - 1) / 2.0
    d = np.arange(vol.shape[0], dtype=float)
    return vol.affine[2, 0] * d + vol.affine[2, 1] * h + vol.affine[2, 2] * w + vol.affine[2, 3]


def _lung_apex_z(ct: Volume, mask: np.ndarray, cfg: PreprocessConfig) -> float | None:
    from scipy import ndimage

    air = mask & (ct.array < cfg.lung_threshold_hu)
    lab, n = ndimage.label(air)
    if n == 0:
        return None
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    lung = lab == int(np.argmax(sizes))
    voxel_area = ct.spacing[1] * ct.spacing[2]
    area = lung.sum(axis=(1, 2)) * voxel_area
    rows = np.nonzero(area >= cfg.lung_min_area_mm2)[0]
    if len(rows) == 0:
        return None
    return float(_slice_z(ct)[rows].max())


def target_grid(
    ct: Volume, cfg: PreprocessConfig, mask: np.ndarray | None = None, patient_id: str = "?"
) -> TargetGrid:
    """Place the patient's target box on the CT (module docstring, "Anchoring").

    Parameters
    ----------
    ct : Volume
        CT in HU, ``(D, H, W)``.
    cfg : PreprocessConfig
    mask : np.ndarray, optional
        Body mask of ``ct`` (computed if not given).
    patient_id : str
        For messages.

    Returns
    -------
    TargetGrid
        ``affine`` maps target index ``(d, h, w)`` to LPS with columns
        ``(0, 0, -dz)``, ``(0, dy, 0)``, ``(dx, 0, 0)``.
    """
    mask = body_mask(ct.array, cfg.body_threshold_hu) if mask is None else mask
    if not mask.any():
        raise InputError(patient_id, "CT shows no body (nothing above the body threshold)")
    dz, dy, dx = cfg.spacing_mm
    box_d, box_h, box_w = (float(b) for b in cfg.box_mm)
    zs = _slice_z(ct)
    half = ct.spacing[0] / 2.0
    anchor = "body_top"
    z_top = float(zs[mask.any(axis=(1, 2))].max()) + half
    if cfg.anchor == "lung_apex":
        apex = _lung_apex_z(ct, mask, cfg)
        if apex is not None:
            z_top, anchor = apex + cfg.top_margin_mm, "lung_apex"
    slab = (zs <= z_top) & (zs >= z_top - box_d)
    sel = mask & slab[:, None, None] if (mask & slab[:, None, None]).any() else mask
    idx = np.argwhere(sel).mean(axis=0)
    cx, cy, _ = ct.affine[:3, :3] @ idx + ct.affine[:3, 3]
    aff = np.zeros((4, 4))
    aff[0, 2], aff[1, 1], aff[2, 0], aff[3, 3] = dx, dy, -dz, 1.0
    aff[:3, 3] = (cx - box_w / 2.0 + dx / 2.0, cy - box_h / 2.0 + dy / 2.0, z_top - dz / 2.0)
    return TargetGrid(affine=aff, shape=tuple(int(n) for n in cfg.shape), anchor=anchor)  # type: ignore[arg-type]


def _sample(
    array: np.ndarray, index_map: np.ndarray, shape: Sequence[int], order: int, cval: float, slab: int = 8
) -> np.ndarray:
    """Sample ``array`` at ``index_map @ (d, h, w, 1)`` for every target index, slab by slab (bounded memory)."""
    from scipy.ndimage import map_coordinates

    D, H, W = (int(n) for n in shape)
    out = np.empty((D, H, W), dtype=np.float32)
    hh, ww = np.meshgrid(np.arange(H, dtype=float), np.arange(W, dtype=float), indexing="ij")
    for d0 in range(0, D, slab):
        d1 = min(D, d0 + slab)
        dd = np.arange(d0, d1, dtype=float)[:, None, None]
        pts = np.stack(np.broadcast_arrays(dd, hh[None], ww[None]), axis=0).reshape(3, -1)
        src = index_map[:3, :3] @ pts + index_map[:3, 3:4]
        out[d0:d1] = map_coordinates(array, src, order=order, mode="constant", cval=cval).reshape(
            d1 - d0, H, W
        )
    return out


def _axis_aligned(affine: np.ndarray, tol: float = 1e-4) -> bool:
    """True if array axes (d, h, w) run exactly along LPS (z, y, x), whatever their signs."""
    a = affine[:3, :3]
    off = a.copy()
    off[2, 0] = off[1, 1] = off[0, 2] = 0.0
    return bool(np.abs(off).max() <= tol * np.abs(a).max())


def _axis_weights(
    n_src: int,
    src_origin: float,
    src_step: float,
    n_tgt: int,
    tgt_origin: float,
    tgt_step: float,
    average: bool,
) -> Any:
    """Sparse ``(n_tgt, n_src)`` weights of one axis: box overlap (downsampling) or linear interpolation.

    Row ``j`` sums to the fraction of target voxel ``j`` that the source covers.
    """
    from scipy.sparse import csr_matrix

    u = (
        tgt_origin + tgt_step * np.arange(n_tgt) - src_origin
    ) / src_step  # target centres, source index units
    width = abs(tgt_step / src_step)  # a target voxel's length in source voxels
    rows, cols, vals = [], [], []
    for j, c in enumerate(u):
        if average and width > 1.0:
            lo, hi = c - width / 2.0, c + width / 2.0
            idx = np.arange(max(0, int(np.floor(lo + 0.5))), min(n_src - 1, int(np.ceil(hi - 0.5))) + 1)
            ov = np.minimum(hi, idx + 0.5) - np.maximum(lo, idx - 0.5)
            keep = ov > 0
            idx, w = idx[keep], ov[keep] / width
        elif -0.5 <= c <= n_src - 0.5:
            cc = min(max(c, 0.0), n_src - 1.0)  # the outer half voxel takes the edge value
            i0 = min(int(np.floor(cc)), n_src - 2) if n_src > 1 else 0
            f = cc - i0
            idx, w = (
                (np.array([i0, i0 + 1]), np.array([1.0 - f, f]))
                if n_src > 1
                else (np.array([0]), np.array([1.0]))
            )
        else:
            continue
        rows += [j] * len(idx)
        cols += idx.tolist()
        vals += w.tolist()
    return csr_matrix((vals, (rows, cols)), shape=(n_tgt, n_src))


def _resample_separable(
    array: np.ndarray, affine: np.ndarray, grid: TargetGrid, fill: float, average: bool
) -> np.ndarray:
    """Axis-aligned source and target: per-axis sparse weights, applied one axis at a time."""
    out = np.asarray(array, dtype=np.float64)
    coverage = []
    for axis, world in ((0, 2), (1, 1), (2, 0)):
        wmat = _axis_weights(
            array.shape[axis],
            affine[world, 3],
            affine[world, axis],
            grid.shape[axis],
            grid.affine[world, 3],
            grid.affine[world, axis],
            average,
        )
        moved = np.moveaxis(out, axis, 0)
        res = wmat @ moved.reshape(moved.shape[0], -1)
        out = np.moveaxis(np.asarray(res).reshape(wmat.shape[0], *moved.shape[1:]), 0, axis)
        coverage.append(np.asarray(wmat.sum(axis=1)).ravel())
    covered = coverage[0][:, None, None] * coverage[1][None, :, None] * coverage[2][None, None, :]
    return (out + fill * (1.0 - covered)).astype(np.float32)


def resample(
    array: np.ndarray,
    affine: np.ndarray,
    grid: TargetGrid,
    *,
    fill: float = 0.0,
    antialias: bool = True,
) -> np.ndarray:
    """Resample a volume onto ``grid`` in physical space (module docstring, "Resampling").

    Parameters
    ----------
    array : np.ndarray
        Source ``(D, H, W)`` in any units.
    affine : np.ndarray
        Source voxel index -> LPS mm, ``(4, 4)``.
    grid : TargetGrid
    fill : float
        Value outside the source's field of view (PET 0, CT -1024 HU).
    antialias : bool
        Average over each target voxel where the target is coarser (exact
        box overlap for axis-aligned series, a variance-matched Gaussian
        pre-filter for oblique ones); ``False``: point-sample by linear
        interpolation (for comparison only).

    Returns
    -------
    np.ndarray
        float32 ``grid.shape``.
    """
    from scipy.ndimage import gaussian_filter

    from prrt_utils.io.images import reorient

    src, src_affine = reorient(np.asarray(array, dtype=np.float32), np.asarray(affine, dtype=float))
    if _axis_aligned(src_affine) and _axis_aligned(grid.affine):
        return _resample_separable(src, src_affine, grid, fill, antialias)
    index_map = np.linalg.inv(src_affine) @ grid.affine
    if antialias:
        footprint = np.abs(index_map[:3, :3]).sum(axis=1)
        sigma = np.sqrt(np.clip(footprint**2 - 1.0, 0.0, None) / 12.0)
        if np.any(sigma > 0):
            src = gaussian_filter(src, sigma, mode="nearest", truncate=3.0)
    return _sample(src, index_map, grid.shape, 1, fill)


def _coverage(vol: Volume, grid: TargetGrid) -> float:
    """Fraction of target voxel centres that fall inside the series' field of view."""
    index_map = np.linalg.inv(vol.affine) @ grid.affine
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in grid.shape], indexing="ij"), 0).reshape(
        3, -1
    )
    src = index_map[:3, :3] @ idx + index_map[:3, 3:4]
    upper = np.asarray(vol.shape, dtype=float)[:, None] - 0.5
    return float(np.all((src >= -0.5) & (src <= upper), axis=0).mean())


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
    coarse, step = _coarse_ct(ct)
    cmask = body_mask(coarse.array, cfg.body_threshold_hu)
    mass = body_mass_kg(coarse.array, cmask, abs(float(np.linalg.det(coarse.affine[:3, :3]))) / 1000.0)
    mass_ratio = check_body_mass(mass, pet.meta.get("patient_weight_kg"), pid)
    grid = target_grid(coarse, cfg, cmask, patient_id=pid)
    cover = {"pet": _coverage(pet, grid), "ct": _coverage(ct, grid)}
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
        pm = _sample(cmask.astype(np.float32), pet_from_ct, pet.shape, 1, 0.0) > 0.5
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
    the label map), so that :func:`prrt_utils.data.intake.check` and
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


# ---------------------------------------------------------------------------
# For the book: harmonisation summaries, grid table and QC figures
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class HarmonisationSummary:
    """Intensities before and after harmonisation, per patient and modality.

    Attributes
    ----------
    histograms : pd.DataFrame
        ``patient_id, modality, stage (before|after), quantity, bin_left, bin_right, fraction``;
        bins are shared by all patients of one quantity.
    stats : pd.DataFrame
        ``patient_id, modality, stage, quantity, p01, median, p99`` (PET over voxels > 0).
    """

    histograms: pd.DataFrame
    stats: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        return self.stats


_QUANTITIES = {
    ("CT", "before"): "CT stored value",
    ("CT", "after"): "HU",
    ("PT", "before"): "PET Bq/ml",
    ("PT", "after"): "SUVbw",
}


def harmonisation_summary(
    imaging_dir: str | Path, patient_ids: Sequence[str], *, bins: int = 60
) -> HarmonisationSummary:
    """Histograms of CT stored values vs HU and PET Bq/ml vs SUVbw for a few patients.

    Before harmonisation the CT histograms of different series are shifted and
    stretched by their RescaleIntercept/Slope and the PET histograms scaled by
    dose and weight; after it they should line up. PET histograms use voxels
    > 0 only. Patients whose images cannot be read are left out.
    """
    samples: list[tuple[str, str, str, np.ndarray]] = []
    for pid in patient_ids:
        try:
            im = load_patient(store.child(imaging_dir, pid), pid, keep_raw=True)
        except InputError:
            continue
        for vol in (im.ct, im.pet):
            raw = vol.raw if vol.raw is not None else vol.array
            for stage, values in (("before", raw), ("after", vol.array)):
                v = values.ravel()
                if vol.modality == "PT":
                    v = v[v > 0]
                samples.append((pid, vol.modality, stage, v))
    hist_rows, stat_rows = [], []
    for (modality, stage), quantity in _QUANTITIES.items():
        group = [s for s in samples if s[1] == modality and s[2] == stage]
        if not group:
            continue
        pooled = np.concatenate([g[3] for g in group])
        lo, hi = np.percentile(pooled, [0.5, 99.5]) if pooled.size else (0.0, 1.0)
        edges = np.linspace(float(lo), float(hi) if hi > lo else float(lo) + 1.0, bins + 1)
        for pid, _, _, v in group:
            counts, _ = np.histogram(np.clip(v, edges[0], edges[-1]), edges)
            frac = counts / max(int(counts.sum()), 1)
            hist_rows += [
                {
                    "patient_id": pid,
                    "modality": modality,
                    "stage": stage,
                    "quantity": quantity,
                    "bin_left": edges[i],
                    "bin_right": edges[i + 1],
                    "fraction": frac[i],
                }
                for i in range(bins)
            ]
            p01, med, p99 = np.percentile(v, [1, 50, 99]) if v.size else (np.nan,) * 3
            stat_rows.append(
                {
                    "patient_id": pid,
                    "modality": modality,
                    "stage": stage,
                    "quantity": quantity,
                    "p01": float(p01),
                    "median": float(med),
                    "p99": float(p99),
                }
            )
    return HarmonisationSummary(pd.DataFrame(hist_rows), pd.DataFrame(stat_rows))


def histogram_figure(summary: HarmonisationSummary) -> Any:
    """Plotly figure: 2 x 2 histograms (CT stored / HU, PET Bq/ml / SUVbw), one line per patient."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    order = list(_QUANTITIES.items())
    fig = make_subplots(rows=2, cols=2, subplot_titles=[f"{q} ({s} harmonisation)" for (_, s), q in order])
    colours = {}
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
    h = summary.histograms
    for n, ((modality, stage), quantity) in enumerate(order):
        part = h[(h["modality"] == modality) & (h["stage"] == stage)]
        for pid, g in part.groupby("patient_id", sort=True):
            colour = colours.setdefault(pid, palette[len(colours) % len(palette)])
            fig.add_trace(
                go.Scatter(
                    x=(g["bin_left"] + g["bin_right"]) / 2,
                    y=g["fraction"],
                    mode="lines",
                    name=pid,
                    line={"color": colour},
                    legendgroup=pid,
                    showlegend=n == 0,
                ),
                row=n // 2 + 1,
                col=n % 2 + 1,
            )
        fig.update_xaxes(title_text=quantity, row=n // 2 + 1, col=n % 2 + 1)
    fig.update_yaxes(title_text="fraction of voxels")
    fig.update_layout(height=650, title="Intensities before and after harmonisation")
    return fig


def grid_table(cfg: PreprocessConfig) -> pd.DataFrame:
    """The target grid in words: one row per array axis (voxels, spacing, extent, direction)."""
    directions = ("head -> feet (LPS -z)", "anterior -> posterior (LPS +y)", "patient right -> left (LPS +x)")
    return pd.DataFrame(
        {
            "axis": ["D (cranio-caudal)", "H (antero-posterior)", "W (right-left)"],
            "voxels": list(cfg.shape),
            "spacing_mm": list(cfg.spacing_mm),
            "extent_mm": [float(b) for b in cfg.box_mm],
            "direction": list(directions),
        }
    )


def qc_figure(work_dir: str | Path, patient_id: str) -> Any:
    """Plotly QC figure of one preprocessed patient: PET coronal MIP, CT axial and coronal, fused coronal.

    Images are shown in radiological convention (patient right on the image
    left, head at the top); the axial slice is the one through the PET maximum
    outside the bottom fifth of the box (bladder), the coronal slices run through the body centre.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    vols = load_volumes(work_dir, [patient_id])
    pet, ct = vols["pet"][0, 0], vols["ct"][0, 0]
    D, H, _ = pet.shape
    upper = pet[: max(1, int(0.8 * D))]
    k_ax = int(np.unravel_index(int(np.argmax(upper)), upper.shape)[0])
    j_cor = _coronal_row(ct)
    vmax = float(np.percentile(pet[pet > 0], 99.5)) if (pet > 0).any() else 1.0
    fig = make_subplots(
        rows=1,
        cols=4,
        subplot_titles=(
            "PET MIP (coronal)",
            f"CT axial (slice {k_ax})",
            f"CT coronal (row {j_cor})",
            "PET/CT fused (coronal)",
        ),
        horizontal_spacing=0.03,
    )
    grey = dict(colorscale="Gray", zmin=-200, zmax=300, showscale=False)
    fig.add_trace(
        go.Heatmap(
            z=pet.max(axis=1),
            colorscale="Gray_r",
            zmin=0,
            zmax=vmax,
            showscale=False,
            hovertemplate="SUV %{z:.1f}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(go.Heatmap(z=ct[k_ax], hovertemplate="%{z:.0f} HU<extra></extra>", **grey), row=1, col=2)
    fig.add_trace(
        go.Heatmap(z=ct[:, j_cor], hovertemplate="%{z:.0f} HU<extra></extra>", **grey), row=1, col=3
    )
    fig.add_trace(go.Heatmap(z=ct[:, j_cor], hoverinfo="skip", **grey), row=1, col=4)
    hot = [
        [0.0, "rgba(0,0,0,0)"],
        [0.15, "rgba(128,0,0,0.5)"],
        [0.5, "rgba(255,64,0,0.8)"],
        [1.0, "rgba(255,255,0,0.95)"],
    ]
    fig.add_trace(
        go.Heatmap(
            z=pet[:, j_cor],
            colorscale=hot,
            zmin=0,
            zmax=vmax,
            colorbar={"title": "SUV"},
            hovertemplate="SUV %{z:.1f}<extra></extra>",
        ),
        row=1,
        col=4,
    )
    for c in range(1, 5):
        fig.update_yaxes(
            autorange="reversed", scaleanchor=f"x{'' if c == 1 else c}", showticklabels=False, row=1, col=c
        )
        fig.update_xaxes(showticklabels=False, row=1, col=c)
    fig.update_layout(height=420, title=f"{patient_id}: preprocessed PET/CT (10 mm voxels)", margin={"t": 70})
    return fig


def _coronal_row(ct: np.ndarray) -> int:
    """The coronal row (H index) through the body's antero-posterior centre (CT above -500 HU)."""
    rows = np.nonzero((ct > -500).any(axis=(0, 2)))[0]
    return int(rows.mean()) if len(rows) else ct.shape[1] // 2


#: Windows of the kernel-free QC views: PET SUVbw 0-10 (dark uptake on white, as nuclear medicine
#: reads a MIP) and CT in a soft-tissue window (level 40 HU, width 400 HU).
QC_PET_WINDOW = (0.0, 10.0)
QC_CT_WINDOW = (-160.0, 240.0)


def qc_images(pet: np.ndarray, ct: np.ndarray, pet_window: tuple[float, float] = QC_PET_WINDOW,
              ct_window: tuple[float, float] = QC_CT_WINDOW) -> dict[str, np.ndarray]:
    """The QC views of one preprocessed patient as uint8 images (radiological view, head at the top).

    Parameters
    ----------
    pet, ct : ndarray (D, H, W)
        SUVbw and HU on the model grid (:func:`load_volumes`).

    Returns
    -------
    dict
        ``"PET MIP (coronal)"``: maximum over H, inverted grey in ``pet_window``, ``(D, W)``;
        ``"CT coronal"``: the row through the body's centre in ``ct_window``, ``(D, W)``;
        ``"PET on CT (coronal)"``: that CT row with the PET of the same row in hot colours,
        opaque in proportion to SUV, ``(D, W, 3)``.
    """
    import matplotlib

    from prrt_utils.io.viewer import window_uint8

    j = _coronal_row(ct)
    ct_row = window_uint8(ct[:, j], *ct_window)
    heat = np.clip((pet[:, j] - pet_window[0]) / (pet_window[1] - pet_window[0]), 0.0, 1.0)
    hot = matplotlib.colormaps["hot"](heat)[..., :3] * 255
    weight = (0.9 * heat)[..., None]
    fused = np.rint(ct_row[..., None] * (1 - weight) + hot * weight).astype(np.uint8)
    return {
        "PET MIP (coronal)": window_uint8(pet.max(axis=1), *pet_window, invert=True),
        "CT coronal": ct_row,
        "PET on CT (coronal)": fused,
    }


def qc_browser(work_dir: str | Path, patient_ids: Sequence[str]) -> Any:
    """Every listed patient's PET MIP, CT and fused view, the patient chosen from a drop-down (plotly).

    Works in the static book without a kernel (:func:`prrt_utils.io.viewer.image_browser`); the
    images are 8-bit PNGs of the 75 x 50 x 50 grid, a few kB per patient.
    """
    from prrt_utils.io.viewer import image_browser

    items = {}
    for pid in patient_ids:
        vols = load_volumes(work_dir, [pid])
        items[pid] = qc_images(vols["pet"][0, 0], vols["ct"][0, 0])
    lo, hi = QC_PET_WINDOW
    return image_browser(items, title=f"Preprocessed PET/CT (PET SUVbw {lo:g}-{hi:g}, dark = high uptake)")


def read_table(work_dir: str | Path, name: str) -> pd.DataFrame:
    """One of the stage's tables (``index``, ``exclusions``, ``qc``) as a DataFrame (empty if absent)."""
    path = Path(work_dir) / "preprocessed" / f"{name}.csv"
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame()
    try:
        return pd.read_csv(path, dtype={"patient_id": str}, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def describe_grid_mm(cfg: PreprocessConfig) -> str:
    """One sentence describing the target box, for the book."""
    d, h, w = cfg.shape
    bd, bh, bw = cfg.box_mm
    sd, sh, sw = cfg.spacing_mm
    return (
        f"{d} x {h} x {w} voxels of {sd:g} x {sh:g} x {sw:g} mm covering {bd:g} x {bh:g} x {bw:g} mm "
        f"(cranio-caudal x antero-posterior x right-left), anchored {cfg.top_margin_mm:g} mm above the lung apex"
        if cfg.anchor == "lung_apex"
        else f"{d} x {h} x {w} voxels of {sd:g} mm covering {bd:g} x {bh:g} x {bw:g} mm from the top of the body"
    )
