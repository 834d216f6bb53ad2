"""Statistics of PET saliency maps (chapter 06; paper 3.4, 4 and Figure 8b).

Pure functions on arrays: nothing here reads files, trains or draws (chapter 06's
:class:`prrt_utils.analysis.explain.Explainer` reads the label maps and the saliency).

* :func:`distribution_distances`: six distances between the normalised gradient magnitudes of two
  models (PET only vs PET fusion in the paper's Figure 8b).
* :func:`saliency_mass_fraction`: the share of the saliency that falls on each labelled region
  (lesions, kidneys, spleen, bladder, ...), which the paper describes in words; the regions
  (:data:`REGIONS`, :func:`region_codes`) and their share of each voxel of the model grid
  (:func:`region_fractions`, synthetic cohort: from its ground-truth label maps).

Libraries: scipy.stats (Kolmogorov-Smirnov, Wasserstein, energy distance), scipy.spatial.distance
(Jensen-Shannon). Written by hand because no installed maintained library provides them: the
Bhattacharyya distance and the histogram overlap; the region grouping of the label codes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats as sstats
from scipy.spatial.distance import jensenshannon

from prrt_utils.analysis.stats import StatsError, finite_1d
from prrt_utils.data.grid import TargetGrid, resample

__all__ = [
    "REGIONS",
    "DistributionComparison",
    "distribution_distances",
    "region_codes",
    "region_fractions",
    "saliency_mass_fraction",
]

REGIONS: tuple[str, ...] = ("lesion", "kidney", "spleen", "bladder", "liver", "other body", "outside body")
"""Regions of the saliency-mass table (:func:`region_codes`); the last is the remainder."""


# --------------------------------------------------------------------------- distribution distances


@dataclasses.dataclass(frozen=True)
class DistributionComparison:
    """Distances between two samples, e.g. gradient magnitudes of two models (paper 3.4, Figure 8b).

    Attributes
    ----------
    wasserstein : float
        1-D earth mover's distance, in data units; 0 = identical.
    ks_statistic, ks_p_value : float
        Two-sample Kolmogorov-Smirnov statistic (largest gap between the two
        empirical CDFs, in [0, 1]) and its two-sided p-value.
    js_distance : float
        Jensen-Shannon DISTANCE of the two histograms
        (:func:`scipy.spatial.distance.jensenshannon`, logarithm base
        ``js_base``): the square root of the divergence, a metric; in [0, 1]
        for base 2. The paper's 0.418 (Figure 8b) is this quantity: read as a
        divergence it would be impossible beside its Bhattacharyya distance
        of 0.207, since the divergence in bits is at most ``(1 - BC) / ln 2``
        with ``BC = exp(-0.207)``, about 0.27.
    js_divergence : float
        Jensen-Shannon DIVERGENCE, ``js_distance ** 2``; in [0, log_base 2] (= [0, 1] for base 2).
    js_base : float
        Logarithm base of the JS divergence.
    energy_distance : float
        scipy's energy distance ``sqrt(2E|X-Y| - E|X-X'| - E|Y-Y'|)``, data units; 0 = identical.
    bhattacharyya : float
        ``-ln sum sqrt(p q)`` over the common histogram; 0 = identical, inf = disjoint.
    overlap : float
        ``sum min(p, q)`` over the common histogram; 1 = identical, 0 = disjoint.
    n_a, n_b : int
        Sample sizes.
    bins : int
        Number of histogram bins (shared edges over the pooled range).
    """

    wasserstein: float
    ks_statistic: float
    ks_p_value: float
    js_distance: float
    js_divergence: float
    js_base: float
    energy_distance: float
    bhattacharyya: float
    overlap: float
    n_a: int
    n_b: int
    bins: int
    method: str = (
        "scipy.stats.wasserstein_distance, ks_2samp, energy_distance; scipy.spatial.distance.jensenshannon "
        "(distance; squared: divergence), "
        "Bhattacharyya and overlap on a common histogram"
    )

    def to_frame(self) -> pd.DataFrame:
        """One row per metric: ``metric, value, p_value, range, reading``."""
        js_max = math.log(2.0) / math.log(self.js_base)
        js_range = "[0, 1]" if math.isclose(js_max, 1.0) else f"[0, {js_max:.4g}]"
        rows = [
            (
                "Wasserstein distance",
                self.wasserstein,
                math.nan,
                "[0, inf), data units",
                "0 = identical; mean distance the mass must move to turn one distribution into the other",
            ),
            (
                "Kolmogorov-Smirnov statistic",
                self.ks_statistic,
                self.ks_p_value,
                "[0, 1]",
                "0 = identical; largest gap between the two cumulative distributions",
            ),
            (
                f"Jensen-Shannon distance (log base {self.js_base:g})",
                self.js_distance,
                math.nan,
                js_range if math.isclose(js_max, 1.0) else f"[0, {math.sqrt(js_max):.4g}]",
                "0 = identical; the square root of the divergence (scipy's jensenshannon), a metric",
            ),
            (
                f"Jensen-Shannon divergence (log base {self.js_base:g})",
                self.js_divergence,
                math.nan,
                js_range,
                f"0 = identical, {js_max:.4g} = no common support; the distance squared",
            ),
            (
                "Energy distance",
                self.energy_distance,
                math.nan,
                "[0, inf), data units",
                "0 = identical; scipy's square-root form",
            ),
            (
                "Bhattacharyya distance",
                self.bhattacharyya,
                math.nan,
                "[0, inf)",
                "0 = identical, inf = no common support",
            ),
            (
                "Histogram overlap",
                self.overlap,
                math.nan,
                "[0, 1]",
                "1 = identical, 0 = disjoint; shared histogram mass",
            ),
        ]
        return pd.DataFrame(rows, columns=["metric", "value", "p_value", "range", "reading"])


def distribution_distances(
    a: ArrayLike,
    b: ArrayLike,
    bins: int | str | Sequence[float] = 100,
    *,
    range: tuple[float, float] | None = None,  # noqa: A002 (numpy's name)
    js_base: float = 2.0,
) -> DistributionComparison:
    """Six distances between two 1-D samples (paper 3.4, Figure 8b).

    Sample-based (no binning): Wasserstein, Kolmogorov-Smirnov, energy distance.
    Histogram-based, on common edges over the pooled range
    (``numpy.histogram_bin_edges(concat(a, b), bins, range)``), each histogram
    normalised to sum 1: Jensen-Shannon divergence, Bhattacharyya distance
    ``-ln sum sqrt(p q)`` and overlap ``sum min(p, q)`` (both written by hand;
    no installed library provides them). Histogram metrics depend on ``bins``
    and are biased for small samples (two samples of the same distribution
    give overlap < 1).

    Parameters
    ----------
    a, b : array-like, any shape
        Samples (flattened), e.g. absolute gradient magnitudes of all PET voxels
        of all test patients for two models.
    bins : int, str or sequence of float
        Passed to ``numpy.histogram_bin_edges`` (default 100 equal-width bins).
    range : (float, float), optional
        Histogram range; every value must lie inside it.
    js_base : float
        Logarithm base of the JS divergence: 2 (default) gives [0, 1], as the
        paper reports; ``math.e`` gives [0, ln 2].

    Returns
    -------
    DistributionComparison
    """
    xa = finite_1d(a, "distribution_distances a")
    xb = finite_1d(b, "distribution_distances b")
    if not js_base > 1.0:
        raise StatsError(f"distribution_distances: js_base must be > 1, got {js_base}")
    pooled = np.concatenate([xa, xb])
    if range is not None and (pooled.min() < range[0] or pooled.max() > range[1]):
        raise StatsError(
            f"distribution_distances: values span [{pooled.min():g}, {pooled.max():g}], outside range {tuple(range)}"
        )
    edges = np.histogram_bin_edges(pooled, bins=bins, range=range)
    p = np.histogram(xa, bins=edges)[0].astype(float)
    q = np.histogram(xb, bins=edges)[0].astype(float)
    p /= p.sum()
    q /= q.sum()
    js = float(jensenshannon(p, q, base=js_base))
    bc = float(np.sqrt(p * q).sum())
    bhat = math.inf if bc <= 0.0 else max(0.0, -math.log(min(bc, 1.0)))
    ks = sstats.ks_2samp(xa, xb)
    return DistributionComparison(
        wasserstein=float(sstats.wasserstein_distance(xa, xb)),
        ks_statistic=float(ks.statistic),
        ks_p_value=float(ks.pvalue),
        js_distance=js,
        js_divergence=js**2,
        js_base=float(js_base),
        energy_distance=float(sstats.energy_distance(xa, xb)),
        bhattacharyya=bhat,
        overlap=float(np.minimum(p, q).sum()),
        n_a=int(xa.size),
        n_b=int(xb.size),
        bins=int(edges.size - 1),
    )


# --------------------------------------------------------------------------- saliency mass


def saliency_mass_fraction(
    saliency: ArrayLike, labels: ArrayLike, label_names: Mapping[int, str], *, other: str = "other"
) -> pd.DataFrame:
    """Fraction of the absolute saliency mass that falls in each labelled region (paper 3.4, 4).

    The paper observes that PET gradients concentrate on tumour lesions but
    also on kidneys, spleen and bladder; this function puts a number on it.

    Parameters
    ----------
    saliency : array-like, shape (D, H, W)
        Gradient map on the model's input grid (any sign; its absolute value is used).
        A stack (N, D, H, W) of several patients with matching labels also works.
    labels : array-like of int, same shape as ``saliency``
        Label map on the SAME grid (e.g. the ground-truth organ/lesion labels
        resampled like the PET).
    label_names : mapping code -> name
        Names may repeat to merge codes (e.g. all lesion codes -> "lesion").
        Codes not listed are counted under ``other``.
    other : str
        Name for unlisted codes.

    Returns
    -------
    DataFrame
        One row per name (in first-appearance order of ``label_names``, then
        ``other``): ``region, n_voxels, voxel_fraction, saliency_mass,
        mass_fraction, enrichment``; ``mass_fraction`` sums to 1;
        ``enrichment = mass_fraction / voxel_fraction`` (> 1: the region draws
        more saliency than its size alone would).
    """
    s = np.abs(np.asarray(saliency, dtype=float))
    lab = np.asarray(labels)
    if s.shape != lab.shape:
        raise StatsError(
            f"saliency_mass_fraction: saliency shape {s.shape} differs from labels shape {lab.shape}"
        )
    if not np.isfinite(s).all():
        raise StatsError("saliency_mass_fraction: saliency has non-finite values")
    if not np.issubdtype(lab.dtype, np.integer):
        if not np.all(np.mod(lab, 1) == 0):
            raise StatsError("saliency_mass_fraction: labels must be integer codes")
        lab = lab.astype(np.int64)
    total = s.sum()
    if total <= 0:
        raise StatsError("saliency_mass_fraction: saliency is zero everywhere; no mass to distribute")

    codes, inverse = np.unique(lab.ravel(), return_inverse=True)
    mass_by_code = np.bincount(inverse, weights=s.ravel(), minlength=codes.size)
    count_by_code = np.bincount(inverse, minlength=codes.size)
    names = list(dict.fromkeys(label_names.values()))
    if other not in names:
        names.append(other)
    mass = dict.fromkeys(names, 0.0)
    count = dict.fromkeys(names, 0)
    for code, m, c in zip(codes.tolist(), mass_by_code, count_by_code, strict=True):
        name = label_names.get(code, other)
        mass[name] += float(m)
        count[name] += int(c)
    out = pd.DataFrame(
        {
            "region": names,
            "n_voxels": [count[n] for n in names],
            "saliency_mass": [mass[n] for n in names],
        }
    )
    out["voxel_fraction"] = out["n_voxels"] / lab.size
    out["mass_fraction"] = out["saliency_mass"] / total
    with np.errstate(divide="ignore", invalid="ignore"):
        out["enrichment"] = out["mass_fraction"] / out["voxel_fraction"]
    return out[["region", "n_voxels", "voxel_fraction", "saliency_mass", "mass_fraction", "enrichment"]]


# --------------------------------------------------------------------------- ground-truth regions on the model grid


def region_codes(label_names: Mapping[int, str]) -> dict[str, tuple[int, ...]]:
    """Group the synthetic label codes into the regions the chapter reports.

    ``lesion`` (every code named ``lesion_*`` or ``primary_tumour``), the organs
    of physiological somatostatin-receptor uptake ``kidney``, ``spleen``,
    ``bladder`` and ``liver``, ``other body`` (every other code inside the body)
    and, not listed (the remainder), ``outside body`` (background, table and
    anything outside the PET field of view).
    """
    groups: dict[str, list[int]] = {r: [] for r in REGIONS if r != "outside body"}
    for code, name in sorted(label_names.items()):
        name = str(name).lower()
        if name in ("background", "table"):
            continue
        if name.startswith("lesion") or name == "primary_tumour":
            groups["lesion"].append(int(code))
        elif name in groups:
            groups[name].append(int(code))
        else:
            groups["other body"].append(int(code))
    return {k: tuple(v) for k, v in groups.items()}


def region_fractions(labels: np.ndarray, affine: np.ndarray, grid_affine: np.ndarray, shape: Sequence[int],
                     regions: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Fraction of every target voxel occupied by each region (fractional-occupancy resampling).

    Each region's indicator is resampled with :func:`prrt_utils.data.grid.resample`
    (exact box average over each target voxel for axis-aligned grids), the
    function and geometry the preprocessing used for the PET; so a region's
    volume is preserved: ``sum(fraction) * target voxel volume`` equals its
    volume on the source grid wherever the target box covers it. Each indicator
    is first cropped to the region's bounding box (the affine shifted
    accordingly), which changes nothing but the cost.

    Parameters
    ----------
    labels : ndarray of int, any axis order described by ``affine``
    affine : ndarray (4, 4)
        Source voxel index -> LPS mm.
    grid_affine : ndarray (4, 4)
        Target voxel index -> LPS mm (the ``affine`` stored in ``WORK/preprocessed/<pid>.npz``).
    shape : (D, H, W)
        Target shape.
    regions : mapping name -> codes

    Returns
    -------
    dict name -> ndarray (D, H, W) float32 in [0, 1]
        One map per region plus ``"outside body"`` = 1 - the sum of the others.
    """
    grid = TargetGrid(affine=np.asarray(grid_affine, dtype=float), shape=tuple(int(s) for s in shape), anchor="stored")
    out: dict[str, np.ndarray] = {}
    total = np.zeros(grid.shape, dtype=np.float64)
    labels = np.asarray(labels)
    lut = np.full(int(labels.max()) + 1 if labels.size else 1, -1, dtype=np.int16)  # code -> region, one pass
    for r, codes in enumerate(regions.values()):
        lut[[c for c in codes if 0 <= c < lut.size]] = r
    region_of = lut[np.clip(labels, 0, lut.size - 1)]
    for r, name in enumerate(regions):
        mask = region_of == r
        along = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != k))) for k in range(3)]
        if along[0].size == 0:
            out[name] = np.zeros(grid.shape, dtype=np.float32)
            continue
        lo = np.array([a[0] for a in along])
        hi = np.array([a[-1] + 1 for a in along])
        crop = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.float32)
        shift = np.eye(4)
        shift[:3, 3] = lo
        frac = np.clip(resample(crop, affine @ shift, grid, fill=0.0, antialias=True), 0.0, 1.0)
        out[name] = frac.astype(np.float32)
        total += frac
    out["outside body"] = np.clip(1.0 - total, 0.0, 1.0).astype(np.float32)
    return out
