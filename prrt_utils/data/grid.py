"""The common grid of the preprocessing stage: body mask, anchoring of the box, and resampling.

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

Hand-written parts (no maintained library does them on LPS affines): the
anchoring rule and the box-overlap weights; scipy does the labelling,
filtering, sparse products and interpolation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from prrt_utils.io.images import InputError, Volume, reorient

if TYPE_CHECKING:  # the stage's configuration, read for its fields only (no import cycle)
    from prrt_utils.data.preprocess import PreprocessConfig

__all__ = [
    "TargetGrid",
    "body_mask",
    "resample",
    "target_grid",
]


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


# ---------------------------------------------------------------------------
# Masks, anchoring, resampling
# ---------------------------------------------------------------------------



def largest_component(mask: np.ndarray) -> np.ndarray | None:
    """The largest connected component of a boolean volume (scipy's face connectivity), or None if empty."""
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


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

    m = largest_component(ct_hu > threshold_hu)
    if m is None:
        return np.zeros(ct_hu.shape, dtype=bool)
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


def coarse_ct(ct: Volume) -> tuple[Volume, int]:
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

    air = mask & (ct.array < cfg.lung_threshold_hu)
    lung = largest_component(air)
    if lung is None:
        return None
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


def sample_volume(
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


    src, src_affine = reorient(np.asarray(array, dtype=np.float32), np.asarray(affine, dtype=float))
    if _axis_aligned(src_affine) and _axis_aligned(grid.affine):
        return _resample_separable(src, src_affine, grid, fill, antialias)
    index_map = np.linalg.inv(src_affine) @ grid.affine
    if antialias:
        footprint = np.abs(index_map[:3, :3]).sum(axis=1)
        sigma = np.sqrt(np.clip(footprint**2 - 1.0, 0.0, None) / 12.0)
        if np.any(sigma > 0):
            src = gaussian_filter(src, sigma, mode="nearest", truncate=3.0)
    return sample_volume(src, index_map, grid.shape, 1, fill)


def coverage(vol: Volume, grid: TargetGrid) -> float:
    """Fraction of target voxel centres that fall inside the series' field of view."""
    index_map = np.linalg.inv(vol.affine) @ grid.affine
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in grid.shape], indexing="ij"), 0).reshape(
        3, -1
    )
    src = index_map[:3, :3] @ idx + index_map[:3, 3:4]
    upper = np.asarray(vol.shape, dtype=float)[:, None] - 0.5
    return float(np.all((src >= -0.5) & (src <= upper), axis=0).mean())
