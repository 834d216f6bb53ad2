"""The whole-body phantom of a synthetic patient and its PET and CT measurements (hand-written renderer)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from prrt_utils.synthetic.twin import (
    LABELS,
    SCANNERS,
    SynthConfig,
    SyntheticCohort,
    stream_rng,
)

# ---------------------------------------------------------------------------
# Whole-body phantom
# ---------------------------------------------------------------------------

# Body cross-section (semi-axes, mm) along the depth below the lung apex, mm.
_BODY_KEYS = np.array(
    [
        # depth, lateral, antero-posterior
        (-250.0, 58.0, 60.0),
        (-40.0, 62.0, 62.0),
        (10.0, 145.0, 100.0),
        (120.0, 160.0, 110.0),
        (330.0, 158.0, 115.0),
        (480.0, 155.0, 120.0),
        (620.0, 170.0, 112.0),
        (740.0, 172.0, 108.0),
    ]
)
_THIGH_DEPTH = 740.0

# (kind, label, centre (x, y, depth) in anatomical mm, semi-axes (x, y, depth) or depth range for cylinders)
_ORGANS: tuple[tuple[str, str, tuple[float, float, float], tuple[float, float, float]], ...] = (
    ("ellipsoid", "lung", (-85.0, 5.0, 150.0), (58.0, 80.0, 150.0)),
    ("ellipsoid", "lung", (85.0, 5.0, 150.0), (58.0, 80.0, 150.0)),
    ("ellipsoid", "heart", (25.0, -25.0, 215.0), (62.0, 58.0, 62.0)),
    ("cylinder", "aorta", (15.0, 45.0, 0.0), (12.0, 12.0, 0.0)),
    ("ellipsoid", "liver", (-60.0, 0.0, 335.0), (90.0, 85.0, 80.0)),
    ("ellipsoid", "spleen", (95.0, 40.0, 330.0), (38.0, 35.0, 55.0)),
    ("ellipsoid", "kidney", (-75.0, 55.0, 425.0), (30.0, 28.0, 55.0)),
    ("ellipsoid", "kidney", (75.0, 55.0, 425.0), (30.0, 28.0, 55.0)),
    ("ellipsoid", "bladder", (0.0, -35.0, 690.0), (45.0, 40.0, 35.0)),
    ("cylinder", "bone", (0.0, 78.0, 0.0), (20.0, 18.0, 0.0)),
    ("ellipsoid", "bone", (-100.0, 50.0, 625.0), (55.0, 22.0, 55.0)),
    ("ellipsoid", "bone", (100.0, 50.0, 625.0), (55.0, 22.0, 55.0)),
    ("ellipsoid", "bone", (-88.0, 15.0, 715.0), (25.0, 25.0, 25.0)),
    ("ellipsoid", "bone", (88.0, 15.0, 715.0), (25.0, 25.0, 25.0)),
    ("cylinder", "bone", (-88.0, 15.0, 0.0), (15.0, 15.0, 0.0)),
    ("cylinder", "bone", (88.0, 15.0, 0.0), (15.0, 15.0, 0.0)),
)
# depth ranges of the cylinders above, in order of appearance
_CYLINDER_DEPTHS = {3: (120.0, 600.0), 9: (-250.0, 640.0), 14: (715.0, 1100.0), 15: (715.0, 1100.0)}

# Lymph-node stations (x, y, depth) and their depth jitter; primary-tumour sites.
_NODE_STATIONS = (
    (-60.0, -10.0, -20.0),
    (60.0, -10.0, -20.0),
    (-20.0, -10.0, 160.0),
    (20.0, -10.0, 160.0),
    (0.0, 10.0, 190.0),
    (-30.0, 40.0, 450.0),
    (40.0, 40.0, 500.0),
    (-35.0, -30.0, 470.0),
    (35.0, -30.0, 520.0),
    (-65.0, 20.0, 640.0),
    (65.0, 20.0, 640.0),
    (-80.0, -50.0, 735.0),
    (80.0, -50.0, 735.0),
)
_PRIMARY_POSITIONS = {
    "pancreas": ((15.0, 20.0, 385.0),),
    "small_intestine": ((-30.0, -45.0, 520.0), (30.0, -45.0, 560.0), (0.0, -40.0, 580.0)),
    "colon_rectum": ((0.0, 70.0, 700.0), (45.0, -10.0, 630.0)),
    "stomach": ((70.0, -45.0, 320.0),),
}

ORGAN_SUV: dict[str, tuple[float, float]] = {
    "body": (0.5, 1.0),
    "lung": (0.3, 0.5),
    "heart": (1.5, 2.5),
    "spleen": (18.0, 30.0),
    "kidney": (15.0, 20.0),
    "bladder": (15.0, 80.0),
    "bone": (1.0, 2.0),
}
"""Physiological SSTR uptake (Ga-68 DOTATOC): SUVbw drawn uniformly per patient in these
ranges (the liver's range is ``SynthConfig.liver_suv_range``; the abdominal viscera take
1.3 x the body background)."""

CT_HU = {  # (non-contrast, contrast-enhanced)
    "fat": (-100.0, -100.0),
    "muscle": (45.0, 55.0),
    "viscera": (5.0, 25.0),
    "lung": (-850.0, -850.0),
    "liver": (58.0, 105.0),
    "spleen": (48.0, 115.0),
    "kidney": (32.0, 170.0),
    "bladder": (8.0, 8.0),
    "bone": (380.0, 380.0),
    "heart": (40.0, 140.0),
    "aorta": (42.0, 190.0),
    "table": (200.0, 200.0),
    "primary": (42.0, 95.0),
    "hepatic": (38.0, 135.0),
    "nodal": (42.0, 80.0),
    "osseous": (750.0, 750.0),
    "peritoneal": (42.0, 80.0),
    "pulmonary": (42.0, 70.0),
    "necrosis": (22.0, 25.0),
}
"""CT attenuation (HU) of each tissue and lesion site, without and with intravenous contrast."""


@dataclasses.dataclass(frozen=True)
class Grid:
    """An axis-aligned image grid in DICOM patient coordinates (LPS, mm).

    Arrays on it are ``(D, H, W)``: slice ``k`` at ``z[k]`` (head first, ``z``
    decreasing), row ``j`` at ``y[j]`` (anterior to posterior), column ``i`` at
    ``x[i]`` (patient right to left). ImageOrientationPatient is ``[1,0,0,0,1,0]``.
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.z), len(self.y), len(self.x)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(slice, row, column) spacing in mm, positive."""
        return abs(float(self.z[1] - self.z[0])), float(self.y[1] - self.y[0]), float(self.x[1] - self.x[0])

    def subset(self, k0: int, k1: int) -> Grid:
        return Grid(self.x, self.y, self.z[k0:k1])

    def nifti_affine(self) -> np.ndarray:
        """RAS affine of the array stored as ``vol[::-1].transpose(2, 1, 0)`` (axes x, y, z ascending)."""
        dz, dy, dx = self.spacing
        lps = np.array(
            [[dx, 0, 0, self.x[0]], [0, dy, 0, self.y[0]], [0, 0, dz, self.z[-1]], [0, 0, 0, 1.0]],
            dtype=float,
        )
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def to_nifti_array(vol: np.ndarray) -> np.ndarray:
    """``(D, H, W)`` head-first volume -> ``(W, H, D)`` with z ascending, for :meth:`Grid.nifti_affine`."""
    return np.ascontiguousarray(vol[::-1].transpose(2, 1, 0))


def _square_grid(matrix: int, fov_mm: float, z: np.ndarray) -> Grid:
    px = fov_mm / matrix
    c = (np.arange(matrix) - (matrix - 1) / 2.0) * px
    return Grid(x=c, y=c.copy(), z=z)


@dataclasses.dataclass(frozen=True)
class _Shape:
    label: int
    tissue: str
    centre: tuple[float, float, float]  # LPS mm
    semi: tuple[float, float, float]  # mm; for cylinders semi[2] is ignored
    kind: str = "ellipsoid"
    z_range: tuple[float, float] = (0.0, 0.0)  # cylinders: (z_low, z_high) LPS
    suv: float = 0.0
    # lesion heterogeneity: plane waves (k-vectors rad/mm, phases), amplitude, necrosis (core fraction, factor)
    waves: tuple[tuple[float, ...], ...] = ()
    texture: float = 0.0
    necrosis: tuple[float, float] = (0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Phantom:
    """One patient's phantom: tissue shapes in LPS mm plus body outline parameters."""

    shapes: tuple[_Shape, ...]
    centre_xy: tuple[float, float]
    z_apex: float
    height_scale: float
    width_scale: float
    fat_mm: float
    z_top: float
    background_suv: float
    contrast: bool


def _lps(anat: Sequence[float], ph: dict[str, float]) -> tuple[float, float, float]:
    x, y, depth = anat
    return (
        ph["cx"] + x * ph["s"],
        ph["cy"] + y * ph["s"],
        ph["z_apex"] - depth * ph["h"],
    )


def build_phantom(cfg: SynthConfig, index: int, cohort: SyntheticCohort) -> Phantom:
    """Place organs and lesions of patient ``index`` (0-based) in patient coordinates.

    Anatomy is fixed in an anatomical frame (mm below the lung apex) and scaled
    by the patient's height (cranio-caudal) and body-mass index (transaxial),
    shifted by a few cm; lesion sizes and SUVs come from the cohort table,
    their positions from the patient's own random stream.
    """
    rng = stream_rng(cfg, "phantom", index)
    clin = cohort.clinical.iloc[index]
    acq = cohort.acquisition.iloc[index]
    truth = cohort.truth.iloc[index]
    les = cohort.lesions[cohort.lesions["patient_id"] == clin["patient_id"]]
    bmi = acq["weight_kg"] / (acq["height_cm"] / 100.0) ** 2
    ph = {
        "cx": float(np.clip(rng.normal(0.0, 12.0), -30, 30)),
        "cy": float(np.clip(rng.normal(0.0, 10.0), -25, 25)),
        "z_apex": float(rng.uniform(-300.0, 300.0)),
        "h": float(acq["height_cm"] / 175.0),
        "s": float(np.clip(math.sqrt(bmi / 25.5), 0.85, 1.25)),
    }
    contrast = bool(acq["ct_contrast"])
    suv_of = {
        k: float(rng.uniform(*ORGAN_SUV[k])) for k in ("lung", "heart", "spleen", "kidney", "bladder", "bone")
    }
    suv_of["liver"] = float(truth["liver_suv"])
    suv_of["aorta"] = suv_of["heart"]
    bladder_scale = rng.uniform(0.7, 1.3)
    shapes: list[_Shape] = []
    for k, (kind, tissue, centre, semi) in enumerate(_ORGANS):
        label = next(c for c, n in LABELS.items() if n == tissue)
        sx, sy, sz = semi[0] * ph["s"], semi[1] * ph["s"], semi[2] * ph["h"]
        if tissue == "bladder":
            sx, sy, sz = sx * bladder_scale, sy * bladder_scale, sz * bladder_scale
        if kind == "cylinder":
            d0, d1 = _CYLINDER_DEPTHS[k]
            z_hi, z_lo = ph["z_apex"] - d0 * ph["h"], ph["z_apex"] - d1 * ph["h"]
            shapes.append(
                _Shape(
                    label, tissue, _lps(centre, ph), (sx, sy, 0.0), "cylinder", (z_lo, z_hi), suv_of[tissue]
                )
            )
        else:
            shapes.append(_Shape(label, tissue, _lps(centre, ph), (sx, sy, sz), suv=suv_of[tissue]))
    liver = next(s for s in _ORGANS if s[1] == "liver")
    for rec in les.itertuples(index=False):
        site = rec.site
        if site == "hepatic":
            u = rng.normal(size=3)
            u *= rng.uniform(0.0, 0.65) / np.linalg.norm(u)
            anat = tuple(np.asarray(liver[2]) + u * np.asarray(liver[3]))
        elif site == "nodal":
            anat = tuple(
                np.asarray(_NODE_STATIONS[rng.integers(len(_NODE_STATIONS))]) + rng.normal(0, 10.0, 3)
            )
        elif site == "osseous":
            where = rng.choice(3, p=(0.6, 0.25, 0.15))
            if where == 0:
                anat = (0.0, 78.0, rng.uniform(30.0, 620.0))
            elif where == 1:
                anat = (rng.choice((-100.0, 100.0)) + rng.normal(0, 12), 50.0, 625.0 + rng.normal(0, 15))
            else:
                anat = (rng.choice((-88.0, 88.0)), 15.0, 715.0)
        elif site == "peritoneal":
            theta = rng.uniform(1.1 * math.pi, 1.9 * math.pi)
            anat = (0.7 * 155.0 * math.cos(theta), 0.7 * 120.0 * math.sin(theta), rng.uniform(420.0, 620.0))
        elif site == "pulmonary":
            lung = _ORGANS[int(rng.integers(2))]
            u = rng.normal(size=3)
            u *= rng.uniform(0.0, 0.6) / np.linalg.norm(u)
            anat = tuple(np.asarray(lung[2]) + u * np.asarray(lung[3]))
        else:  # primary
            options = _PRIMARY_POSITIONS[clin["primary_site"]]
            anat = tuple(np.asarray(options[rng.integers(len(options))]) + rng.normal(0, 8.0, 3))
        n_waves = 3
        ks = rng.normal(size=(n_waves, 3))
        ks *= (2 * math.pi / rng.uniform(12.0, 25.0, n_waves) / np.linalg.norm(ks, axis=1))[:, None]
        waves = tuple(tuple(float(v) for v in (*ks[w], rng.uniform(0, 2 * math.pi))) for w in range(n_waves))
        big = max(rec.axis_mm_x, rec.axis_mm_y, rec.axis_mm_z) > 35.0
        necrosis = (
            (rng.uniform(0.35, 0.55), rng.uniform(0.2, 0.5)) if big and rng.random() < 0.5 else (0.0, 1.0)
        )
        shapes.append(
            _Shape(
                int(rec.label),
                site,
                _lps(anat, ph),
                (rec.axis_mm_x / 2.0, rec.axis_mm_y / 2.0, rec.axis_mm_z / 2.0),
                suv=float(rec.suv),
                waves=waves,
                texture=float(rng.uniform(0.05, 0.3)),
                necrosis=necrosis,
            )
        )
    fat = float(np.clip(8.0 + 2.2 * (bmi - 20.0), 5.0, 40.0))
    z_top = ph["z_apex"] + rng.uniform(40.0, 80.0) * ph["h"]
    return Phantom(
        shapes=tuple(shapes),
        centre_xy=(ph["cx"], ph["cy"]),
        z_apex=ph["z_apex"],
        height_scale=ph["h"],
        width_scale=ph["s"],
        fat_mm=fat,
        z_top=float(z_top),
        background_suv=float(rng.uniform(*ORGAN_SUV["body"])),
        contrast=contrast,
    )


def _block(grid: Grid, shape: _Shape) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Bounding block of a shape on the grid and the normalised squared radius inside it."""
    cx, cy, cz = shape.centre
    sx, sy, sz = shape.semi
    ix = np.nonzero(np.abs(grid.x - cx) <= sx)[0]
    iy = np.nonzero(np.abs(grid.y - cy) <= sy)[0]
    if shape.kind == "cylinder":
        iz = np.nonzero((grid.z >= shape.z_range[0]) & (grid.z <= shape.z_range[1]))[0]
    else:
        iz = np.nonzero(np.abs(grid.z - cz) <= sz)[0]
    if not (len(ix) and len(iy) and len(iz)):
        return None
    sl = (slice(iz[0], iz[-1] + 1), slice(iy[0], iy[-1] + 1), slice(ix[0], ix[-1] + 1))
    dx = ((grid.x[sl[2]] - cx) / sx)[None, None, :]
    dy = ((grid.y[sl[1]] - cy) / sy)[None, :, None]
    if shape.kind == "cylinder":
        rho2 = np.broadcast_to(dx**2 + dy**2, (len(iz), len(iy), len(ix)))
    else:
        dz = ((grid.z[sl[0]] - cz) / sz)[:, None, None]
        rho2 = dx**2 + dy**2 + dz**2
    return sl, rho2


def _waves(grid: Grid, sl: tuple[slice, slice, slice], shape: _Shape) -> np.ndarray:
    x = (grid.x[sl[2]] - shape.centre[0])[None, None, :]
    y = (grid.y[sl[1]] - shape.centre[1])[None, :, None]
    z = (grid.z[sl[0]] - shape.centre[2])[:, None, None]
    acc = 0.0
    for kx, ky, kz, phase in shape.waves:
        acc = acc + np.cos(kx * x + ky * y + kz * z + phase)
    return acc / max(len(shape.waves), 1)


def render(phantom: Phantom, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint the phantom on ``grid``: ``(labels uint8, suv float32, hu float32)``, each ``(D, H, W)``.

    Noise-free and unblurred: the true tissue SUV and HU at each voxel centre.
    """
    shape3 = grid.shape
    labels = np.zeros(shape3, dtype=np.uint8)
    suv = np.zeros(shape3, dtype=np.float32)
    hu = np.full(shape3, -1000.0, dtype=np.float32)
    con = 1 if phantom.contrast else 0
    # body outline: ellipse per slice (two below the pelvis)
    depth = (phantom.z_apex - grid.z) / phantom.height_scale
    a = np.interp(depth, _BODY_KEYS[:, 0], _BODY_KEYS[:, 1]) * phantom.width_scale
    b = np.interp(depth, _BODY_KEYS[:, 0], _BODY_KEYS[:, 2]) * phantom.width_scale
    cx, cy = phantom.centre_xy
    X = (grid.x - cx)[None, None, :]
    Y = (grid.y - cy)[None, :, None]
    thigh = (depth > _THIGH_DEPTH)[:, None, None]
    ta = 72.0 * phantom.width_scale
    tb = 75.0 * phantom.width_scale
    tx = 85.0 * phantom.width_scale

    def inside(shrink: float) -> np.ndarray:
        trunk = (X / (a[:, None, None] - shrink)) ** 2 + (Y / (b[:, None, None] - shrink)) ** 2 <= 1.0
        legs = ((np.abs(X) - tx) / (ta - shrink)) ** 2 + (Y / (tb - shrink)) ** 2 <= 1.0
        return np.where(thigh, legs, trunk)

    body = inside(0.0)
    inner = inside(phantom.fat_mm)
    labels[body] = 1
    suv[body] = phantom.background_suv
    hu[body] = CT_HU["fat"][con]
    hu[inner] = CT_HU["muscle"][con]
    visceral = inside(phantom.fat_mm + 15.0) & ((depth > 360.0) & (depth < 700.0))[:, None, None]
    texture = 25.0 * np.cos(X / 9.0 + 1.3) * np.cos(Y / 7.0) * np.cos(grid.z / 11.0)[:, None, None]
    hu[visceral] = (CT_HU["viscera"][con] + texture)[visceral]
    suv[visceral] = 1.3 * phantom.background_suv
    # scanner table, posterior to the body
    y_table = cy + float(_BODY_KEYS[:, 2].max()) * phantom.width_scale + 15.0
    rows = (grid.y >= y_table) & (grid.y <= y_table + 10.0)
    cols = np.abs(grid.x) <= 220.0
    table = rows[None, :, None] & cols[None, None, :] & np.ones(len(grid.z), bool)[:, None, None]
    labels[table] = 16
    hu[table] = CT_HU["table"][con]
    for sh in phantom.shapes:
        blk = _block(grid, sh)
        if blk is None:
            continue
        sl, rho2 = blk
        m = rho2 <= 1.0
        if not m.any():
            continue
        lab, s_val, h_val = labels[sl], suv[sl], hu[sl]
        lab[m] = sh.label
        if sh.label >= 10:  # lesion: heterogeneous uptake, necrotic core
            factor = 1.0 + sh.texture * _waves(grid, sl, sh)
            core = rho2 < sh.necrosis[0] ** 2
            factor = np.where(core, sh.necrosis[1] * factor, factor)
            s_val[m] = (sh.suv * np.broadcast_to(factor, rho2.shape))[m]
            h_core = np.where(core, CT_HU["necrosis"][con], CT_HU[sh.tissue][con])
            h_val[m] = np.broadcast_to(h_core, rho2.shape)[m]
        else:
            s_val[m] = sh.suv
            h_val[m] = CT_HU[sh.tissue][con]
    return labels, suv, hu


def scanner_grids(cfg: SynthConfig, phantom: Phantom, scanner: str) -> tuple[Grid, Grid]:
    """PET and CT grids of a patient: same slices (z), each modality its own in-plane FOV and matrix."""
    pet_n, ct_n, slice_mm = cfg.grid
    n_slices = int(round(cfg.axial_extent_mm / slice_mm))
    z = phantom.z_top - slice_mm * np.arange(n_slices)
    prof = SCANNERS[scanner]
    return _square_grid(pet_n, prof["pet_fov_mm"], z), _square_grid(ct_n, prof["ct_fov_mm"], z)


def pet_measurement(
    cfg: SynthConfig, index: int, suv_true: np.ndarray, grid: Grid, scanner: str
) -> np.ndarray:
    """What the scanner reconstructs: the true SUV blurred by a Gaussian PSF plus Poisson-like noise.

    The noise level is ``counts_per_suv`` counts per SUV unit in a
    ``(5 mm)^3`` voxel, scaled with the voxel volume. Returns float64 SUV ``(D, H, W)``, >= 0.
    """
    from scipy.ndimage import gaussian_filter

    prof = SCANNERS[scanner]
    spacing = np.asarray(grid.spacing)
    sigma = prof["psf_fwhm_mm"] / (2.0 * math.sqrt(2.0 * math.log(2.0))) / spacing
    blurred = np.clip(gaussian_filter(suv_true.astype(np.float64), sigma, mode="constant"), 0.0, None)
    kappa = prof["counts_per_suv"] * float(np.prod(spacing)) / 125.0
    rng = stream_rng(cfg, "phantom", index, 1)
    return rng.poisson(blurred * kappa) / kappa


def ct_measurement(cfg: SynthConfig, index: int, hu_true: np.ndarray, grid: Grid, scanner: str) -> np.ndarray:
    """Reconstructed CT in HU: truth plus Gaussian noise, clipped to [-1024, 3071], ``(D, H, W)`` float32."""
    rng = stream_rng(cfg, "phantom", index, 2)
    noise = rng.standard_normal(hu_true.shape, dtype=np.float32) * np.float32(
        SCANNERS[scanner]["ct_noise_hu"]
    )
    return np.clip(hu_true + noise, -1024.0, 3071.0)


