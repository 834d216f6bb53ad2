"""Synthetic digital-twin cohort: clinical table, whole-body PET/CT and ground truth.

The real PRRT cohort is private, so the project ships a generator that writes a
cohort in exactly the form a hospital export has (SPEC "The embedded default";
DESIGN "Raw export"): ``clinical.csv``, one PET and one CT DICOM series per
patient in uninformatively named folders (or NIfTI with a JSON sidecar), and,
apart from every model input, the ground truth (``ground_truth/``).

Generative model (documented with its equations in ``book/synthetic_cohort.md``)
-------------------------------------------------------------------------------
* Every patient has a latent log tumour volume ``B``; lesions (primary, liver,
  lymph nodes, bone, peritoneum, lung) of 1.5-6 cm share that volume and are
  rendered into the PET and CT volumes.
* Lesion uptake relative to the liver (SSTR expression, ``sstr_ratio``) is
  visible on PET; the hepatic share of the burden (``hepatic_fraction``) is
  visible on PET and CT.
* A biology factor ``u`` (dedifferentiation) is visible in no image; CgA
  tracks both the burden and ``u``, gamma-GT the hepatic tumour volume.
* Risk, additive as the NET literature has it (scenario ``"twin"``):
  ``r = b_B (B - B0)/s_B - b_s log(sstr_ratio / s0)/s_s + b_h (f_hep - f0) + b_u u``
  and ``PFS = lambda exp(-r) E^(1/k)``, ``E ~ Exp(1)`` (Weibull accelerated failure
  time), so ``P(PFS <= t | covariates)`` is analytic (:func:`bayes_probability`).
  Labs see ``B`` (through CgA), part of ``u`` and ``f_hep`` (through GGT); the
  image sees ``B``, ``sstr_ratio`` and ``f_hep``; fusion sees the most.
* Scenario ``"positive-control"``: the risk is the burden alone with a strong
  effect and a small noise (Bayes AUROC >= 0.95), so that a pipeline that
  cannot learn it from PET is shown to be broken.
* PRRT cycles follow from PFS (therapy stops at progression) and never enter
  the risk.

Everything is a pure function of :class:`SynthConfig` (its ``seed`` included):
the same configuration gives byte-identical files.

Paper: the marginals follow section 3.1 and Table 1 (clinical characteristics
stratified by PFS <= 1 year), the outcome section 2.4 (PFS threshold of 1 year,
no censoring) and 3.2 (median PFS and IQR).

Hand-written parts (no maintained library does them): the phantom renderer
(ellipsoids on an axis-aligned grid) and the DICOM header layout; pydicom
encodes and writes the files, nibabel the NIfTI files, scipy blurs the PET.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import gzip
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prrt_utils import store
from prrt_utils.cohort import CLINICAL_COLUMNS, PFS_THRESHOLD_MONTHS  # the cohort stage owns the schema
from prrt_utils.config import SEED, Config
from prrt_utils.log import get_logger

__all__ = [
    "CLINICAL_COLUMNS",
    "CT_HU",
    "CT_RESCALE_VARIANTS",
    "GA68_HALF_LIFE_S",
    "LABELS",
    "LESION_LABELS",
    "ORGAN_SUV",
    "SCANNERS",
    "Grid",
    "Phantom",
    "SCENARIOS",
    "SynthConfig",
    "SynthError",
    "SyntheticCohort",
    "bayes_probability",
    "CEILING_FAMILIES",
    "bqml_to_suv",
    "ceiling_features",
    "pfs_shape",
    "build_phantom",
    "ct_measurement",
    "cycles_from_pfs",
    "decay_factor",
    "generate_cohort",
    "modality_ceilings",
    "patient_ids",
    "pet_measurement",
    "render",
    "risk_linear_predictor",
    "sample_clinical",
    "sample_cohort",
    "sample_phi",
    "scanner_grids",
    "suv_to_bqml",
    "to_nifti_array",
]

GA68_HALF_LIFE_S = 4062.6
"""Half-life of gallium-68 in seconds (DICOM RadionuclideHalfLife of Ga-68 DOTATOC)."""

RADIOPHARMACEUTICAL = "Ga-68 DOTATOC"

LABELS: dict[int, str] = {
    0: "background",
    1: "body",
    2: "lung",
    3: "liver",
    4: "spleen",
    5: "kidney",
    6: "bladder",
    7: "bone",
    8: "heart",
    9: "aorta",
    10: "primary_tumour",
    11: "lesion_liver",
    12: "lesion_lymph_node",
    13: "lesion_bone",
    14: "lesion_peritoneal",
    15: "lesion_lung",
    16: "table",
}
"""Codes of the ground-truth label maps (``ground_truth/labels/<pid>.nii.gz``)."""

LESION_LABELS = {"primary": 10, "hepatic": 11, "nodal": 12, "osseous": 13, "peritoneal": 14, "pulmonary": 15}
"""Label code of the lesions of each tumour site."""

PRIMARY_SITES = ("small_intestine", "pancreas", "colon_rectum", "stomach", "cup")
METASTATIC_SITES = ("hepatic", "lymphonodal", "osseous", "peritoneal", "pulmonal")


# Lesion site of each clinical metastasis flag (the tumour sites rendered into the images).
_MET_TO_SITE = {
    "hepatic": "hepatic",
    "lymphonodal": "nodal",
    "osseous": "osseous",
    "peritoneal": "peritoneal",
    "pulmonal": "pulmonary",
}


CT_RESCALE_VARIANTS: tuple[tuple[float, float, int, int, bool], ...] = (
    (1.0, -1024.0, 0, 12, False),
    (1.0, -1024.0, 1, 16, True),
    (0.5, -1024.0, 0, 16, False),
    (1.0, 0.0, 1, 16, False),
    (1.0, -1000.0, 0, 16, False),
)
"""CT storage variants ``(RescaleSlope, RescaleIntercept, PixelRepresentation, BitsStored,
padded)``: HU = stored * slope + intercept. ``padded``: voxels outside the circular
reconstruction field of view hold -3024 HU (PixelPaddingValue), as some scanners write."""


SCENARIOS = ("twin", "positive-control")
"""Outcome models of :class:`SynthConfig`: the digital twin (labs and images carry prognosis
additively) and the positive control (outcome fixed by the visible tumour burden)."""


class SynthError(ValueError):
    """A synthetic-cohort request that cannot be fulfilled (bad config, foreign output folder)."""


@dataclasses.dataclass(frozen=True)
class SynthConfig(Config):
    """Parameters of the synthetic cohort; every number of the generative model is a field.

    Defaults reproduce the marginals of the paper's Table 1 (n = 116) and give a
    Bayes AUROC of about 0.8 for ``PFS <= 12`` months; see
    ``book/synthetic_cohort.md`` for the equations.

    Attributes
    ----------
    n_patients, seed
        Cohort size and the one seed every random draw derives from.
    scenario : {"twin", "positive-control"}
        Outcome model (:data:`SCENARIOS`); images, labs and everything else are
        drawn the same way in both.
    censor_fraction
        Fraction of patients censored administratively (``event = 0``; their
        ``pfs_months`` is the censoring time, a uniform fraction of the true PFS).
    clinical_size
        Write clinical matrices (CT 512 x 512, PET 200 x 200, 3 mm slices) instead
        of the small defaults; for benchmarks.
    image_format
        ``"dicom"`` (one file per slice) or ``"nifti"`` (``pet.nii.gz`` + ``pet.json``, ``ct.nii.gz``).
    pet_matrix, ct_matrix, slice_mm, axial_extent_mm
        Image grid: in-plane matrix of PET and CT (the field of view is the
        scanner profile's), slice spacing and cranio-caudal extent in mm.
    id_prefix
        Study pseudonyms are ``<id_prefix>-001`` ...
    scanner_probs
        Share of patients scanned on each profile of :data:`SCANNERS` (A, B, C).
    lab_assay_factors
        How this centre's assays report AST, ALT, CgA and GGT relative to the
        development centre's (1 = the same). The risk depends on the biology
        (the values an assay of factor 1 would report); the table holds what
        this centre's laboratory reports: a model trained elsewhere sees shifted
        values. :meth:`second_centre` uses it for external validation.
    """

    n_patients: int = 116
    seed: int = SEED
    scenario: str = "twin"
    censor_fraction: float = 0.0
    clinical_size: bool = False
    image_format: str = "dicom"
    id_prefix: str = "PRRT"
    scanner_probs: tuple[float, float, float] = (0.5, 0.5, 0.0)
    lab_assay_factors: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    # --- image grid
    pet_matrix: int = 96
    ct_matrix: int = 128
    slice_mm: float = 5.0
    axial_extent_mm: float = 850.0
    # --- demographics and disease (Table 1 marginals)
    age_mean_years: float = 65.5
    age_sd_years: float = 10.5
    age_range_years: tuple[int, int] = (35, 88)
    female_fraction: float = 0.41
    primary_site_probs: tuple[float, ...] = (0.42, 0.29, 0.10, 0.01, 0.18)
    metastasis_probs: tuple[float, ...] = (0.73, 0.65, 0.30, 0.16, 0.04)
    functional_probs: tuple[float, float, float] = (0.34, 0.65, 0.01)
    grade_probs: tuple[float, float, float, float] = (0.20, 0.71, 0.05, 0.04)
    ki67_median_pct: float = 6.0
    # --- tumour burden and lesions
    burden_median_ml: float = 60.0
    burden_log_sd: float = 1.3
    ml_per_extra_lesion: float = 30.0
    max_lesions: int = 30
    lesion_diameter_mm: tuple[float, float] = (15.0, 60.0)
    # --- SSTR expression (lesion SUV relative to liver SUV)
    liver_suv_range: tuple[float, float] = (6.0, 10.0)
    sstr_ratio_median: float = 2.8
    sstr_log_sd: float = 0.35
    lesion_log_sd: float = 0.15
    lesion_suv_range: tuple[float, float] = (8.0, 80.0)
    # --- laboratory values
    cga_median_ug_l: float = 400.0
    # CgA's and GGT's signal and noise are scaled together (x1.39, x2.5 from 0.6/0.55/0.6 and 0.4/0.4):
    # the ratio of group medians then matches Table 1 (CgA about 3x, GGT about 1.9x) while what the
    # labs say about risk is unchanged (the same factor on a log value's signal and noise is a
    # monotone transform), and the spread matches the paper's ranges (CgA 24-99590, GGT 9-691).
    cga_per_log_burden: float = 0.834
    cga_per_biology: float = 0.765
    cga_log_sd: float = 0.834
    ggt_median_u_l: float = 58.0
    ggt_per_log_hepatic: float = 1.0
    ggt_log_sd: float = 1.0
    ast_median_u_l: float = 29.0
    alt_median_u_l: float = 26.0
    ast_per_log_hepatic: float = 0.06
    transaminase_log_sd: float = 0.38
    # --- PFS model: additive log-risk (per SD of log burden and log SSTR ratio, per unit of
    # hepatic fraction and of the hidden biology) and Weibull
    beta_burden: float = 0.22
    beta_sstr: float = 0.32
    beta_hepatic: float = 0.5
    beta_biology: float = 0.45
    hepatic_fraction_centre: float = 0.35
    positive_control_beta: float = 1.6
    positive_control_shape: float = 6.0
    pfs_scale_months: float = 20.4
    pfs_shape: float = 2.1
    pfs_threshold_months: float = PFS_THRESHOLD_MONTHS
    # --- PRRT cycles (a consequence of PFS, never a risk factor)
    planned_cycle_probs: tuple[float, ...] = (0.02, 0.04, 0.10, 0.60, 0.12, 0.07, 0.05)
    cycle_interval_months: tuple[float, float] = (2.2, 2.8)
    cycle_lag_months: tuple[float, float] = (3.0, 4.5)
    # --- acquisition
    injected_dose_mbq: tuple[float, float] = (100.0, 200.0)
    uptake_minutes: tuple[float, float] = (50.0, 70.0)
    contrast_fraction: float = 0.6

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise SynthError(f"seed must be a non-negative integer, got {self.seed}")
        if self.n_patients < 1:
            raise SynthError(f"n_patients must be >= 1, got {self.n_patients}")
        if self.n_patients > 999:
            raise SynthError(f"n_patients must be <= 999 (ids PRRT-001..PRRT-999), got {self.n_patients}")
        if not 0.0 <= self.censor_fraction < 1.0:
            raise SynthError(f"censor_fraction must lie in [0, 1), got {self.censor_fraction}")
        if self.scenario not in SCENARIOS:
            raise SynthError(f"scenario must be one of {SCENARIOS}, got {self.scenario!r}")
        if self.image_format not in ("dicom", "nifti"):
            raise SynthError(f"image_format must be 'dicom' or 'nifti', got {self.image_format!r}")
        if not self.id_prefix.isalnum():
            raise SynthError(f"id_prefix must be letters and digits, got {self.id_prefix!r}")
        if len(self.scanner_probs) != len(SCANNERS) or min(self.scanner_probs) < 0 or sum(self.scanner_probs) <= 0:
            raise SynthError(f"scanner_probs needs {len(SCANNERS)} non-negative shares, got {self.scanner_probs}")
        if len(self.lab_assay_factors) != 4 or min(self.lab_assay_factors) <= 0:
            raise SynthError(f"lab_assay_factors needs 4 positive factors (AST, ALT, CgA, GGT), got {self.lab_assay_factors}")
        for name, k in (
            ("primary_site_probs", len(PRIMARY_SITES)),
            ("metastasis_probs", len(METASTATIC_SITES)),
            ("planned_cycle_probs", 7),
        ):
            if len(getattr(self, name)) != k:
                raise SynthError(f"{name} needs {k} entries, got {len(getattr(self, name))}")

    @classmethod
    def second_centre(cls, n_patients: int = 32, seed: int = 1) -> SynthConfig:
        """An external validation centre: another scanner, other assays, another case mix.

        Scanner C (another vendor, sharper PET, less CT noise) for 70 % of the
        patients and B for the rest; a CgA kit that reads 1.6 times higher and a
        GGT method 0.8 times lower; more pancreatic primaries and G2/G3 tumours,
        and a larger tumour burden (shorter PFS on average). The PFS model
        itself is the development centre's: a model that learned it should
        still discriminate, while its calibration may suffer from the shifts.
        """
        return cls(
            n_patients=n_patients, seed=seed, id_prefix="EXT", scanner_probs=(0.0, 0.3, 0.7),
            lab_assay_factors=(1.0, 1.0, 1.6, 0.8),
            primary_site_probs=(0.30, 0.45, 0.08, 0.02, 0.15), grade_probs=(0.10, 0.70, 0.15, 0.05),
            burden_median_ml=90.0,
        )

    @property
    def grid(self) -> tuple[int, int, float]:
        """Effective ``(pet_matrix, ct_matrix, slice_mm)`` after ``clinical_size``."""
        if self.clinical_size:
            return 200, 512, 3.0
        return self.pet_matrix, self.ct_matrix, self.slice_mm


# ---------------------------------------------------------------------------
# Small pure functions (decay, SUV, risk, Bayes probability, cycles)
# ---------------------------------------------------------------------------


def decay_factor(elapsed_s: float | np.ndarray, half_life_s: float = GA68_HALF_LIFE_S) -> float | np.ndarray:
    """Fraction of activity left after ``elapsed_s`` seconds: ``2 ** (-elapsed_s / half_life_s)``."""
    return np.exp2(-np.asarray(elapsed_s, dtype=float) / half_life_s)


def suv_to_bqml(
    suv: float | np.ndarray,
    weight_kg: float,
    injected_dose_bq: float,
    injection_to_scan_s: float,
    half_life_s: float = GA68_HALF_LIFE_S,
) -> np.ndarray:
    """Activity concentration (Bq/ml) of a body-weight SUV, decay-corrected to the scan start.

    ``C = SUVbw * D * 2^(-dt / T_half) / (1000 * weight_kg)`` with ``D`` the
    injected dose (Bq) and ``dt`` the time from injection to the series start
    (DICOM DecayCorrection START); tissue density 1 g/ml.
    """
    dose_at_scan = injected_dose_bq * decay_factor(injection_to_scan_s, half_life_s)
    return np.asarray(suv, dtype=float) * dose_at_scan / (weight_kg * 1000.0)


def bqml_to_suv(
    bqml: float | np.ndarray,
    weight_kg: float,
    injected_dose_bq: float,
    injection_to_scan_s: float,
    half_life_s: float = GA68_HALF_LIFE_S,
) -> np.ndarray:
    """Inverse of :func:`suv_to_bqml`: SUVbw of an activity concentration in Bq/ml."""
    dose_at_scan = injected_dose_bq * decay_factor(injection_to_scan_s, half_life_s)
    return np.asarray(bqml, dtype=float) * (weight_kg * 1000.0) / dose_at_scan


def risk_linear_predictor(
    tumour_volume_ml: Any, sstr_ratio: Any, hepatic_fraction: Any, biology: Any, cfg: SynthConfig
) -> np.ndarray:
    """Log-risk ``r`` of the PFS model (higher = earlier progression).

    Twin: ``r = b_B (log V - log V0) / s_B - b_s log(rho / s0) / s_s + b_h (f_hep - f0) + b_u u``,
    each term a known prognostic factor of NET under PRRT: tumour burden
    (higher: shorter PFS), receptor expression relative to the liver (higher:
    longer), hepatic tumour fraction (higher: shorter) and a biology factor
    ``u ~ N(0, 1)`` that no input shows fully. ``s_B`` and ``s_s`` are
    ``burden_log_sd`` and ``sstr_log_sd``, so ``b_B`` and ``b_s`` are per SD.
    Positive control: ``r = b_pc (log V - log V0) / s_B`` (burden alone).
    Laboratory values are not arguments: they are markers of the same
    biology, not causes; PRRT cycles are a consequence of PFS.
    """
    z_burden = (np.log(np.asarray(tumour_volume_ml, dtype=float)) - math.log(cfg.burden_median_ml)) / cfg.burden_log_sd
    if cfg.scenario == "positive-control":
        return cfg.positive_control_beta * z_burden
    z_sstr = (np.log(np.asarray(sstr_ratio, dtype=float)) - math.log(cfg.sstr_ratio_median)) / cfg.sstr_log_sd
    return (
        cfg.beta_burden * z_burden
        - cfg.beta_sstr * z_sstr
        + cfg.beta_hepatic * (np.asarray(hepatic_fraction, dtype=float) - cfg.hepatic_fraction_centre)
        + cfg.beta_biology * np.asarray(biology, dtype=float)
    )


def pfs_shape(cfg: SynthConfig) -> float:
    """Weibull shape of the scenario (the positive control's is larger: less noise around the risk)."""
    return cfg.positive_control_shape if cfg.scenario == "positive-control" else cfg.pfs_shape


def bayes_probability(
    risk_lp: Any, cfg: SynthConfig | None = None, *, threshold_months: float | None = None
) -> np.ndarray:
    """``P(PFS <= t | all generative covariates)`` under the Weibull model.

    ``PFS = lambda exp(-r) E^(1/k)`` with ``E ~ Exp(1)`` gives
    ``P(PFS <= t) = 1 - exp(-(t exp(r) / lambda)^k)``, increasing in ``r``.
    This is the best any model can do on the synthetic cohort (its AUROC is
    the Bayes ceiling).
    """
    cfg = cfg or SynthConfig()
    t = cfg.pfs_threshold_months if threshold_months is None else threshold_months
    z = (t * np.exp(np.asarray(risk_lp, dtype=float)) / cfg.pfs_scale_months) ** pfs_shape(cfg)
    return -np.expm1(-z)


def cycles_from_pfs(pfs_months: Any, planned: Any, interval_months: Any, lag_months: Any) -> np.ndarray:
    """PRRT cycles received: cycle ``j`` (at ``j * interval``) is given while ``j * interval + lag < PFS``.

    The first cycle is always given and never more than ``planned``: therapy
    stops once the interim restaging ``lag`` months after a cycle would fall
    after progression. Shapes broadcast; returns integers.
    """
    # #{j >= 0 : j * interval < pfs - lag} = ceil((pfs - lag) / interval) when pfs > lag, else 0
    slack = np.maximum(np.asarray(pfs_months, dtype=float) - np.asarray(lag_months, dtype=float), 0.0)
    possible = np.ceil(slack / np.asarray(interval_months, dtype=float))
    return np.clip(np.minimum(possible, planned), 1, None).astype(int)


# ---------------------------------------------------------------------------
# Cohort-level sampling (clinical table, latent tumour, ground truth)
# ---------------------------------------------------------------------------

# Independent random streams, so that changing one block (e.g. cycles) leaves the others untouched.
_STREAMS = {
    "demographics": 1,
    "tumour": 2,
    "labs": 3,
    "outcome": 4,
    "cycles": 5,
    "censoring": 6,
    "acquisition": 7,
    "phi": 8,
    "phantom": 9,
    "biology": 10,
}


def _rng(cfg: SynthConfig, stream: str, *extra: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([cfg.seed, _STREAMS[stream], *extra]))


def patient_ids(n: int, prefix: str = "PRRT") -> list[str]:
    """Study pseudonyms ``PRRT-001`` ... in cohort order."""
    return [f"{prefix}-{i + 1:03d}" for i in range(n)]


@dataclasses.dataclass(frozen=True)
class SyntheticCohort:
    """Everything sampled at cohort level, before any image is rendered.

    Attributes
    ----------
    clinical : DataFrame
        ``clinical.csv`` (:data:`CLINICAL_COLUMNS`).
    truth : DataFrame
        ``ground_truth/truth.csv``: ``patient_id, risk_lp, p_short_bayes`` and
        the latent image features (volumes in ml, SUVs, lesion count).
    lesions : DataFrame
        One row per lesion: ``patient_id, lesion, site, label, axes_mm_{x,y,z}, volume_ml, suv``.
    acquisition : DataFrame
        Non-identifying acquisition facts per patient (scanner, contrast, CT
        rescale, weight, dose, uptake time, layout of files).
    """

    clinical: pd.DataFrame
    truth: pd.DataFrame
    lesions: pd.DataFrame
    acquisition: pd.DataFrame


def _categorical(
    rng: np.random.Generator, labels: Sequence[Any], probs: Sequence[float], n: int
) -> np.ndarray:
    p = np.asarray(probs, dtype=float)
    return np.asarray(labels, dtype=object)[rng.choice(len(labels), size=n, p=p / p.sum())]


def _sample_demographics(cfg: SynthConfig, n: int) -> pd.DataFrame:
    rng = _rng(cfg, "demographics")
    lo, hi = cfg.age_range_years
    age = np.clip(np.rint(rng.normal(cfg.age_mean_years, cfg.age_sd_years, n)), lo, hi).astype(int)
    female = rng.random(n) < cfg.female_fraction
    primary = _categorical(rng, PRIMARY_SITES, cfg.primary_site_probs, n)
    mets = rng.random((n, len(METASTATIC_SITES))) < np.asarray(cfg.metastasis_probs)
    # A cancer of unknown primary is known only through its metastases: give it one.
    empty = (primary == "cup") & ~mets[:, :3].any(axis=1)
    mets[empty, 1] = True
    functional = _categorical(rng, ("yes", "no", "unknown"), cfg.functional_probs, n)
    grade = _categorical(rng, ("G1", "G2", "G3", "unknown"), cfg.grade_probs, n)
    # Ki-67 follows the WHO grade: G1 < 3 %, G2 3-20 %, G3 > 20 %.
    ki = np.exp(rng.normal(math.log(cfg.ki67_median_pct), 0.45, n))
    ki67 = np.where(
        grade == "G1",
        rng.integers(1, 3, n),
        np.where(
            grade == "G2",
            np.clip(np.rint(ki), 3, 20),
            np.where(grade == "G3", rng.integers(21, 41, n), np.clip(np.rint(ki), 1, 40)),
        ),
    ).astype(int)
    frame = pd.DataFrame(
        {
            "patient_id": patient_ids(n, cfg.id_prefix),
            "age_years": age,
            "sex": np.where(female, "F", "M"),
            "primary_site": primary,
        }
    )
    for j, name in enumerate(METASTATIC_SITES):
        frame[f"met_{name}"] = mets[:, j].astype(int)
    frame["functional"] = functional
    frame["grade"] = grade
    frame["ki67_pct"] = ki67
    return frame


def _sample_lesions(cfg: SynthConfig, demo: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Lesion sizes and SUVs per patient; returns (lesions, per-patient tumour features)."""
    rng = _rng(cfg, "tumour")
    n = len(demo)
    z_burden = rng.normal(size=n)
    z_sstr = rng.normal(size=n)
    liver_suv = rng.uniform(*cfg.liver_suv_range, n)
    dmin, dmax = cfg.lesion_diameter_mm
    rows: list[dict[str, Any]] = []
    feats: list[dict[str, Any]] = []
    site_weight = {"hepatic": 4.0, "nodal": 2.0, "osseous": 1.5, "peritoneal": 1.0, "pulmonary": 0.5}
    for i, rec in enumerate(demo.itertuples(index=False)):
        target_ml = cfg.burden_median_ml * math.exp(cfg.burden_log_sd * z_burden[i])
        sites = [_MET_TO_SITE[m] for m in METASTATIC_SITES if getattr(rec, f"met_{m}")]
        first = (["primary"] if rec.primary_site != "cup" else []) + sites
        extra_n = min(
            int(rng.poisson(target_ml / cfg.ml_per_extra_lesion)), max(cfg.max_lesions - len(first), 0)
        )
        w = np.array([site_weight[s] for s in sites])
        extra = (
            list(np.asarray(sites, dtype=object)[rng.choice(len(sites), extra_n, p=w / w.sum())])
            if sites
            else []
        )
        lesion_sites = first + extra
        share = rng.dirichlet(np.full(len(lesion_sites), 2.0))
        diam = np.cbrt(6.0 * target_ml * 1000.0 * share / math.pi)  # mm
        axes = diam[:, None] * np.exp(rng.normal(0.0, 0.08, (len(lesion_sites), 3)))
        small = np.isin(lesion_sites, ["peritoneal", "pulmonary"])
        axes = np.clip(axes, dmin, np.where(small, min(dmax, 30.0), dmax)[:, None])
        axes[np.asarray(lesion_sites) == "primary"] = np.clip(
            axes[np.asarray(lesion_sites) == "primary"], 20.0, dmax
        )
        vol_ml = math.pi / 6.0 * axes.prod(axis=1) / 1000.0
        ratio = np.exp(
            math.log(cfg.sstr_ratio_median)
            + cfg.sstr_log_sd * z_sstr[i]
            + cfg.lesion_log_sd * rng.normal(size=len(lesion_sites))
        )
        suv = np.clip(liver_suv[i] * ratio, *cfg.lesion_suv_range)
        for j, site in enumerate(lesion_sites):
            rows.append(
                {
                    "patient_id": rec.patient_id,
                    "lesion": j,
                    "site": site,
                    "label": LESION_LABELS[site],
                    "axis_mm_x": axes[j, 0],
                    "axis_mm_y": axes[j, 1],
                    "axis_mm_z": axes[j, 2],
                    "volume_ml": vol_ml[j],
                    "suv": suv[j],
                }
            )
        total = float(vol_ml.sum())
        by_site = {s: float(vol_ml[np.asarray(lesion_sites) == s].sum()) for s in LESION_LABELS}
        feats.append(
            {
                "patient_id": rec.patient_id,
                "tumour_volume_ml": total,
                "log_burden": math.log(total),
                "lesion_count": len(lesion_sites),
                "lesion_suv_mean": float((vol_ml * suv).sum() / total),
                "liver_suv": float(liver_suv[i]),
                "sstr_ratio": float((vol_ml * suv).sum() / total / liver_suv[i]),
                "total_lesion_activity": float((vol_ml * suv).sum()),
                "hepatic_fraction": by_site["hepatic"] / total,
                **{f"{s}_volume_ml": v for s, v in by_site.items()},
            }
        )
    return pd.DataFrame(rows), pd.DataFrame(feats)


def _sample_labs(cfg: SynthConfig, feats: pd.DataFrame, biology: np.ndarray) -> pd.DataFrame:
    """Laboratory values: CgA follows burden and biology, GGT and AST the hepatic tumour volume."""
    rng = _rng(cfg, "labs")
    n = len(feats)
    log_hep = np.log1p(feats["hepatic_volume_ml"].to_numpy() / 10.0)
    cga = np.exp(
        math.log(cfg.cga_median_ug_l)
        + cfg.cga_per_log_burden * (feats["log_burden"].to_numpy() - math.log(cfg.burden_median_ml))
        + cfg.cga_per_biology * biology
        + cfg.cga_log_sd * rng.normal(size=n)
    )
    ggt = np.exp(
        math.log(cfg.ggt_median_u_l)
        + cfg.ggt_per_log_hepatic * (log_hep - 1.0)
        + cfg.ggt_log_sd * rng.normal(size=n)
    )
    liver_injury = rng.normal(size=n)
    ast = np.exp(
        math.log(cfg.ast_median_u_l)
        + cfg.ast_per_log_hepatic * log_hep
        + cfg.transaminase_log_sd * (0.75 * liver_injury + 0.66 * rng.normal(size=n))
    )
    alt = np.exp(
        math.log(cfg.alt_median_u_l)
        + cfg.transaminase_log_sd * 1.1 * (0.75 * liver_injury + 0.66 * rng.normal(size=n))
    )
    # Recorded as the laboratory reports them: whole units.
    return pd.DataFrame(
        {
            "ast_u_l": np.maximum(np.rint(ast), 8).astype(int),
            "alt_u_l": np.maximum(np.rint(alt), 5).astype(int),
            "cga_ug_l": np.maximum(np.rint(cga), 5).astype(int),
            "ggt_u_l": np.maximum(np.rint(ggt), 5).astype(int),
        }
    )


def _scanners(cfg: SynthConfig, u: np.ndarray) -> np.ndarray:
    """Scanner of each patient from one uniform draw each (A below 0.5, B above, for the default shares)."""
    edges = np.cumsum(cfg.scanner_probs) / sum(cfg.scanner_probs)
    return np.asarray(list(SCANNERS))[np.minimum(np.searchsorted(edges, u, side="right"), len(SCANNERS) - 1)]


def _sample_acquisition(cfg: SynthConfig, demo: pd.DataFrame) -> pd.DataFrame:
    rng = _rng(cfg, "acquisition")
    n = len(demo)
    female = (demo["sex"] == "F").to_numpy()
    height_cm = np.where(female, rng.normal(165.0, 6.5, n), rng.normal(178.0, 7.0, n)).clip(148, 200)
    bmi = np.exp(rng.normal(math.log(25.5), 0.16, n)).clip(17, 40)
    weight = np.round(bmi * (height_cm / 100.0) ** 2, 1).clip(40, 150)
    start = dt.date(2014, 1, 1).toordinal()
    days = rng.integers(0, dt.date(2022, 12, 31).toordinal() - start, n)
    dates = [dt.date.fromordinal(start + int(d)) for d in days]
    # PET/CT runs on weekdays
    dates = [d + dt.timedelta(days=(7 - d.weekday()) % 7 if d.weekday() >= 5 else 0) for d in dates]
    inj_s = rng.integers(7 * 3600 + 30 * 60, 14 * 3600, n)
    uptake_s = np.rint(rng.uniform(*cfg.uptake_minutes, n) * 60.0).astype(int)
    dose = np.rint(rng.uniform(*cfg.injected_dose_mbq, n) * 1e4) * 100.0  # Bq, 100 Bq resolution
    return pd.DataFrame(
        {
            "patient_id": demo["patient_id"],
            "scanner": _scanners(cfg, rng.random(n)),
            "ct_contrast": rng.random(n) < cfg.contrast_fraction,
            "ct_rescale": rng.integers(0, len(CT_RESCALE_VARIANTS), n),
            "instance_order": _categorical(rng, ("head_first", "feet_first", "shuffled"), (0.5, 0.3, 0.2), n),
            "layout": _categorical(rng, ("nested", "flat", "mixed"), (0.5, 0.3, 0.2), n),
            "file_naming": _categorical(rng, ("hex", "dcm", "ima"), (0.4, 0.4, 0.2), n),
            "height_cm": np.round(height_cm, 0),
            "weight_kg": weight,
            "study_date": [d.strftime("%Y%m%d") for d in dates],
            "injection_s": inj_s,
            "injection_to_scan_s": uptake_s,
            "injected_dose_bq": dose,
        }
    )


def sample_cohort(cfg: SynthConfig) -> SyntheticCohort:
    """Sample the whole cohort at table level (no images): clinical, truth, lesions, acquisition.

    Deterministic in ``cfg``; cheap (vectorised except for the per-patient lesion list).
    """
    n = cfg.n_patients
    demo = _sample_demographics(cfg, n)
    lesions, feats = _sample_lesions(cfg, demo)
    biology = _rng(cfg, "biology").normal(size=n)
    labs = _sample_labs(cfg, feats, biology)
    risk = risk_linear_predictor(
        feats["tumour_volume_ml"], feats["sstr_ratio"], feats["hepatic_fraction"], biology, cfg
    )
    rng_out = _rng(cfg, "outcome")
    pfs_true = cfg.pfs_scale_months * np.exp(-risk) * rng_out.exponential(size=n) ** (1.0 / pfs_shape(cfg))
    # censoring: a fixed fraction, censored at a uniform fraction of their true PFS
    rng_c = _rng(cfg, "censoring")
    n_cens = int(round(cfg.censor_fraction * n))
    censored = np.zeros(n, dtype=bool)
    censored[rng_c.permutation(n)[:n_cens]] = True
    observed = np.where(censored, pfs_true * rng_c.uniform(0.2, 0.95, n), pfs_true)
    pfs = np.maximum(np.round(observed, 2), 0.1)
    rng_cy = _rng(cfg, "cycles")
    planned = rng_cy.choice(
        np.arange(1, 8), size=n, p=np.asarray(cfg.planned_cycle_probs) / sum(cfg.planned_cycle_probs)
    )
    cycles = cycles_from_pfs(
        pfs, planned, rng_cy.uniform(*cfg.cycle_interval_months, n), rng_cy.uniform(*cfg.cycle_lag_months, n)
    )
    clinical = demo.assign(prrt_cycles=cycles, pfs_months=pfs, event=(~censored).astype(int))
    reported = labs.copy()  # what this centre's assays report (the risk above used the biology)
    for col, factor in zip(("ast_u_l", "alt_u_l", "cga_ug_l", "ggt_u_l"), cfg.lab_assay_factors, strict=True):
        if factor != 1.0:
            reported[col] = np.maximum(np.rint(labs[col] * factor), 1).astype(int)
    clinical = pd.concat([clinical, reported], axis=1)[list(CLINICAL_COLUMNS)]
    truth = pd.DataFrame(
        {
            "patient_id": demo["patient_id"],
            "risk_lp": risk,
            "p_short_bayes": bayes_probability(risk, cfg),
            "pfs_true_months": pfs_true,
            "biology": biology,
        }
    )
    truth = truth.merge(feats, on="patient_id")
    return SyntheticCohort(
        clinical=clinical, truth=truth, lesions=lesions, acquisition=_sample_acquisition(cfg, demo)
    )


def sample_clinical(cfg: SynthConfig) -> pd.DataFrame:
    """The ``clinical.csv`` table alone (fast: no image is rendered)."""
    return sample_cohort(cfg).clinical


CEILING_FAMILIES: dict[str, tuple[str, ...]] = {
    "labs": ("log_ast", "log_alt", "log_cga", "log_ggt"),
    "image": ("log_burden", "log_sstr_ratio", "hepatic_fraction"),
    "labs+image": ("log_ast", "log_alt", "log_cga", "log_ggt", "log_burden", "log_sstr_ratio", "hepatic_fraction"),
}
"""Inputs of each truth-based ceiling: the recorded labs (log), the image truth (what an ideal
reader of the PET/CT measures: log tumour volume, log lesion-to-liver ratio, hepatic fraction),
and both (everything a model observes). The Bayes ceiling adds the hidden biology."""


def ceiling_features(clinical: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """The columns of :data:`CEILING_FAMILIES` per patient (``patient_id`` index), from ``clinical.csv`` and ``truth.csv``."""
    df = clinical[["patient_id", "ast_u_l", "alt_u_l", "cga_ug_l", "ggt_u_l"]].merge(truth, on="patient_id")
    out = pd.DataFrame(
        {
            "log_ast": np.log(df["ast_u_l"].to_numpy(float)),
            "log_alt": np.log(df["alt_u_l"].to_numpy(float)),
            "log_cga": np.log(df["cga_ug_l"].to_numpy(float)),
            "log_ggt": np.log(df["ggt_u_l"].to_numpy(float)),
            "log_burden": np.log(df["tumour_volume_ml"].to_numpy(float)),
            "log_sstr_ratio": np.log(df["sstr_ratio"].to_numpy(float)),
            "hepatic_fraction": df["hepatic_fraction"].to_numpy(float),
        },
        index=pd.Index(df["patient_id"].astype(str), name="patient_id"),
    )
    return out


def modality_ceilings(cfg: SynthConfig | None = None, n_samples: int = 20000, cv: int = 3) -> pd.DataFrame:
    """What each input family can reach at best on this generative model, with unlimited patients.

    Samples ``n_samples`` patients from ``cfg`` and fits a cross-validated
    logistic regression (scikit-learn) on each family of :data:`CEILING_FAMILIES`;
    the Bayes row is :func:`bayes_probability`. Returns one row per family with
    its AUROC for ``PFS <= threshold`` (events only, i.e. the true PFS). The
    ceilings a model on the cohort's own 116 patients can reach are lower (less
    data to fit even a logistic regression): :func:`prrt_utils.metrics.truth_ceilings`
    computes those on the cohort's folds.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cfg = (cfg or SynthConfig()).replace(n_patients=min(n_samples, 999), censor_fraction=0.0)
    parts = []
    for k in range(max(1, math.ceil(n_samples / 999))):
        c = sample_cohort(cfg.replace(seed=cfg.seed * 1000 + k))
        parts.append((ceiling_features(c.clinical, c.truth), c.truth))
    feats = pd.concat([f for f, _ in parts], ignore_index=True).iloc[:n_samples]
    truth = pd.concat([t for _, t in parts], ignore_index=True).iloc[:n_samples]
    y = (truth["pfs_true_months"] <= cfg.pfs_threshold_months).to_numpy().astype(int)

    def auc(columns: Sequence[str]) -> float:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        p = cross_val_predict(model, feats[list(columns)].to_numpy(), y, cv=cv, method="predict_proba")[:, 1]
        return float(roc_auc_score(y, p))

    rows = [(name, auc(cols)) for name, cols in CEILING_FAMILIES.items()]
    rows.append(("bayes", float(roc_auc_score(y, truth["p_short_bayes"]))))
    return pd.DataFrame(rows, columns=["inputs", "auroc"]).assign(n=len(feats), short_fraction=float(y.mean()))


# ---------------------------------------------------------------------------
# Whole-body phantom
# ---------------------------------------------------------------------------

SCANNERS: dict[str, dict[str, Any]] = {
    "A": {
        "manufacturer": "SIEMENS",
        "model": "Biograph mCT Flow",
        "pet_fov_mm": 480.0,
        "ct_fov_mm": 500.0,
        "psf_fwhm_mm": 6.5,
        "counts_per_suv": 30.0,
        "ct_noise_hu": 12.0,
        "bed_mm": 216.0,
        "bed_s": 150,
        "reconstruction": "PSF+TOF 3i21s",
        "kernel": "B30f",
    },
    "B": {
        "manufacturer": "GE MEDICAL SYSTEMS",
        "model": "Discovery 690",
        "pet_fov_mm": 600.0,
        "ct_fov_mm": 550.0,
        "psf_fwhm_mm": 9.0,
        "counts_per_suv": 12.0,
        "ct_noise_hu": 20.0,
        "bed_mm": 157.0,
        "bed_s": 120,
        "reconstruction": "VPFX 2i16s",
        "kernel": "STANDARD",
    },
    "C": {  # the second centre's (SynthConfig.second_centre)
        "manufacturer": "Philips",
        "model": "Vereos",
        "pet_fov_mm": 576.0,
        "ct_fov_mm": 500.0,
        "psf_fwhm_mm": 5.0,
        "counts_per_suv": 40.0,
        "ct_noise_hu": 9.0,
        "bed_mm": 164.0,
        "bed_s": 90,
        "reconstruction": "BLOB-OS-TF 3i15s",
        "kernel": "B",
    },
}
"""Three PET/CT scanner profiles (C only at the synthetic second centre): field of view (hence pixel size), PET resolution
(Gaussian PSF FWHM), PET noise (Poisson counts per SUV unit in a (5 mm)^3 voxel, scaled
with the voxel volume), CT noise (HU) and the PET bed length and duration."""

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
    rng = _rng(cfg, "phantom", index)
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
    rng = _rng(cfg, "phantom", index, 1)
    return rng.poisson(blurred * kappa) / kappa


def ct_measurement(cfg: SynthConfig, index: int, hu_true: np.ndarray, grid: Grid, scanner: str) -> np.ndarray:
    """Reconstructed CT in HU: truth plus Gaussian noise, clipped to [-1024, 3071], ``(D, H, W)`` float32."""
    rng = _rng(cfg, "phantom", index, 2)
    noise = rng.standard_normal(hu_true.shape, dtype=np.float32) * np.float32(
        SCANNERS[scanner]["ct_noise_hu"]
    )
    return np.clip(hu_true + noise, -1024.0, 3071.0)


# ---------------------------------------------------------------------------
# Fake identifying data (planted so that de-identification can be tested)
# ---------------------------------------------------------------------------

# Long, rare names: none is a substring of an English word or of this project's
# vocabulary, so a privacy scan that finds one has found a leak, not a false hit.
_FAMILY_NAMES = (
    "Hofstetter",
    "Brandtner",
    "Scharnagl",
    "Pfisterer",
    "Eichhorst",
    "Lindemayr",
    "Oberhuber",
    "Reisinger",
    "Tiefenbacher",
    "Ziegelmeier",
    "Grubmueller",
    "Kornblum",
    "Stadelmann",
    "Wimmersberger",
    "Haberkorn",
    "Rottenkolber",
    "Kirchleitner",
    "Pemberton",
    "Thistlewood",
    "Ashcombe",
    "Fairbrother",
    "Wetherall",
    "Cholmondeley",
    "Hollingsworth",
    "Pettigrew",
    "Ravenscroft",
    "Tillingham",
    "Wolstenholme",
)
_GIVEN_NAMES = {
    "F": (
        "Walburga",
        "Hannelore",
        "Wilhelmine",
        "Liselotte",
        "Mechthild",
        "Hildegard",
        "Adelheid",
        "Gerlinde",
        "Waltraud",
        "Irmgard",
        "Winifred",
        "Evangeline",
        "Rosamund",
        "Millicent",
        "Philippa",
        "Gwendolyn",
        "Clementine",
        "Henrietta",
    ),
    "M": (
        "Friedhelm",
        "Gottlieb",
        "Theobald",
        "Ottokar",
        "Siegfried",
        "Reinhold",
        "Bartholomew",
        "Cuthbert",
        "Reginald",
        "Percival",
        "Algernon",
        "Ethelbert",
        "Leopold",
        "Hieronymus",
        "Wolfram",
        "Ferdinand",
        "Archibald",
        "Lancelot",
    ),
}
_PHYSICIANS = (
    "Auffenberg^Korbinian^^Dr.",
    "Moosbrugger^Ottilie^^Dr.",
    "Vilsmeier^Kunigunde^^Dr.",
    "Marchbanks^Peregrine^^Dr.",
    "Southerden^Araminta^^Dr.",
)
_OPERATORS = ("Quarrington^Jocelyn", "Umbleby^Tarquin", "Blankenheim^Roswitha", "Eisenreich^Gundula")
_INSTITUTIONS = {
    "A": ("Klinikum Tiefenbrunn", "TFBPETCT01", "TFB"),
    "B": ("St Aldhelm Hospital Wexcombe", "ALDHPET2", "ALW"),
    "C": ("Ospedale San Bertoldo Valfonda", "SBVPETCT", "SBV"),
}


@functools.lru_cache(maxsize=16)
def _cfg_hash(cfg: SynthConfig) -> str:
    return cfg.hash()


def _uid(cfg: SynthConfig, *parts: Any) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["prrt-synth", _cfg_hash(cfg), *(str(p) for p in parts)])


def sample_phi(cfg: SynthConfig, index: int, cohort: SyntheticCohort) -> dict[str, Any]:
    """The fake identifying data of patient ``index`` (0-based): names, dates, hospital ids, UIDs.

    Deterministic in ``cfg``; the birth date agrees with ``age_years`` at the study date.
    """
    rng = _rng(cfg, "phi", index)
    clin = cohort.clinical.iloc[index]
    acq = cohort.acquisition.iloc[index]
    pid = clin["patient_id"]
    family = _FAMILY_NAMES[rng.integers(len(_FAMILY_NAMES))]
    given = _GIVEN_NAMES[clin["sex"]][rng.integers(len(_GIVEN_NAMES[clin["sex"]]))]
    study = dt.datetime.strptime(acq["study_date"], "%Y%m%d").date()
    year = study.year - int(clin["age_years"])
    anniversary = study.replace(year=year, day=min(study.day, 28))
    birth = anniversary - dt.timedelta(days=int(rng.integers(0, 360)))
    institution, station, code = _INSTITUTIONS[acq["scanner"]]
    mrn = f"{code}{int(rng.integers(10**6, 10**7))}{'ABCDEFGHKMNPRSTX'[rng.integers(16)]}"
    accession = f"{code}A{study:%y}{int(rng.integers(10**6, 10**7))}"
    physician = _PHYSICIANS[rng.integers(len(_PHYSICIANS))]
    operator = _OPERATORS[rng.integers(len(_OPERATORS))]
    return {
        "patient_name": f"{family}^{given}",
        "family_name": family,
        "given_name": given,
        "birth_date": birth.strftime("%Y%m%d"),
        "hospital_id": mrn,
        "accession_number": accession,
        "institution": institution,
        "station": station,
        "referring_physician": physician,
        "operator": operator,
        "study_description": f"PET/CT Ganzkoerper {RADIOPHARMACEUTICAL} {family}, {given}",
        "pet_series_description": f"WB {RADIOPHARMACEUTICAL} AC {family} {given[0]}.",
        "ct_series_description": f"CT WB {'KM' if acq['ct_contrast'] else 'nativ'} {family}",
        "study_uid": _uid(cfg, pid, "study"),
        "pet_series_uid": _uid(cfg, pid, "pet"),
        "ct_series_uid": _uid(cfg, pid, "ct"),
        "frame_of_reference_uid": _uid(cfg, pid, "for"),
    }


def _phi_strings(phi: dict[str, Any], image_format: str) -> list[str]:
    """Every identifying string actually planted in a patient's files."""
    keys = [
        "patient_name",
        "family_name",
        "given_name",
        "birth_date",
        "hospital_id",
        "accession_number",
        "institution",
        "station",
    ]
    if image_format == "dicom":
        keys += [
            "referring_physician",
            "operator",
            "study_uid",
            "pet_series_uid",
            "ct_series_uid",
            "frame_of_reference_uid",
        ]
    out = [phi[k] for k in keys]
    if image_format == "dicom":
        out += [p for k in ("referring_physician", "operator") for p in phi[k].split("^") if len(p) > 3]
    return out


# ---------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------


def _tm(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600:02d}{s % 3600 // 60:02d}{s % 60:02d}"


def _ds(value: float) -> str:
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def _hexname(*parts: Any, n: int = 12) -> str:
    return hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()[:n]


def _nifti_bytes(
    data: np.ndarray, affine: np.ndarray, slope_inter: tuple[float, float] | None = None
) -> bytes:
    """A gzip-compressed NIfTI-1 image as bytes, with no time stamp or file name in the gzip header."""
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    if slope_inter is not None:
        img.header.set_slope_inter(*slope_inter)
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def _instance_numbers(order: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if order == "head_first":
        return np.arange(1, n + 1)
    if order == "feet_first":
        return np.arange(n, 0, -1)
    return rng.permutation(n) + 1


def _common_header(
    ds: Any, phi: dict[str, Any], clin: pd.Series, acq: pd.Series, prof: dict[str, Any]
) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = phi["patient_name"]
    ds.PatientID = phi["hospital_id"]
    ds.PatientBirthDate = phi["birth_date"]
    ds.PatientSex = clin["sex"]
    ds.PatientAge = f"{int(clin['age_years']):03d}Y"
    ds.PatientWeight = _ds(acq["weight_kg"])
    ds.PatientSize = _ds(round(acq["height_cm"] / 100.0, 2))
    ds.StudyInstanceUID = phi["study_uid"]
    ds.StudyDate = acq["study_date"]
    ds.StudyTime = _tm(acq["injection_s"] + acq["injection_to_scan_s"] - 300)
    ds.StudyID = "1"
    ds.AccessionNumber = phi["accession_number"]
    ds.StudyDescription = phi["study_description"]
    ds.ReferringPhysicianName = phi["referring_physician"]
    ds.OperatorsName = phi["operator"]
    ds.InstitutionName = phi["institution"]
    ds.StationName = phi["station"]
    ds.Manufacturer = prof["manufacturer"]
    ds.ManufacturerModelName = prof["model"]
    ds.FrameOfReferenceUID = phi["frame_of_reference_uid"]
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16


def _file_meta(sop_class: str, sop_uid: str) -> Any:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


_PET_SOP = "1.2.840.10008.5.1.4.1.1.128"
_CT_SOP = "1.2.840.10008.5.1.4.1.1.2"


class _SeriesWriter:
    """Writes a series' slice files with pydicom's element encoder, encoding the shared header once.

    ``Dataset.save_as`` re-encodes the ~70 header elements every slice of a
    series shares, for every slice: that was two thirds of the generation time.
    This encodes each element of ``base`` once (after the same ambiguous-VR
    correction ``dcmwrite`` applies), and per slice only the elements that
    change, then joins them in tag order behind the preamble and the file meta
    information written by :func:`pydicom.filewriter.write_file_meta_info`. The
    files are byte-identical to ``Dataset.save_as(..., enforce_file_format=True)``
    (``tests/test_synth.py`` compares them); nothing here encodes a value by hand.
    """

    def __init__(self, base: Any, sop_class: str) -> None:
        from pydicom.filewriter import correct_ambiguous_vr

        self.base = correct_ambiguous_vr(base, True)
        self.sop_class = sop_class
        self.encoding = base.get("SpecificCharacterSet", "iso8859")
        self.header = {elem.tag: self._encode(elem) for elem in self.base}

    def _encode(self, elem: Any) -> bytes:
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_data_element

        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = False, True
        write_data_element(fp, elem, self.encoding)
        return fp.getvalue()

    def write(self, path: Path, sop_uid: str, ds: Any) -> None:
        """Write one slice: ``base`` with the elements of ``ds`` (its slice values) added or replacing."""
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import correct_ambiguous_vr_element, write_file_meta_info

        ds.SOPInstanceUID = sop_uid
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = False, True
        fp.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fp, _file_meta(self.sop_class, sop_uid), enforce_standard=True)
        own = {e.tag: self._encode(correct_ambiguous_vr_element(e, self.base, True)) for e in ds}
        parts = {**self.header, **own}
        fp.write(b"".join(parts[tag] for tag in sorted(parts)))
        path.write_bytes(fp.getvalue())


def _write_pet_dicom(
    cfg: SynthConfig,
    folder: Path,
    grid: Grid,
    bqml: np.ndarray,
    phi: dict[str, Any],
    clin: pd.Series,
    acq: pd.Series,
    naming: str,
    rng: np.random.Generator,
) -> np.ndarray:
    """Write the PET series, one file per slice; returns the Bq/ml the files decode to, ``(D, H, W)``.

    Stored values are int16 with a RescaleSlope per slice (slice maximum / 32767),
    as scanners write them; activity is decay-corrected to the series start.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    prof = SCANNERS[acq["scanner"]]
    pid = clin["patient_id"]
    t_inj = float(acq["injection_s"])
    t_start = t_inj + float(acq["injection_to_scan_s"])
    dz, dy, dx = grid.spacing
    n = grid.shape[0]
    instance = _instance_numbers(acq["instance_order"], n, rng)
    decoded = np.empty(bqml.shape, dtype=np.float64)
    radio = Dataset()
    radio.Radiopharmaceutical = RADIOPHARMACEUTICAL
    radio.RadiopharmaceuticalRoute = "Intravenous"
    radio.RadiopharmaceuticalStartTime = _tm(t_inj)
    radio.RadiopharmaceuticalStartDateTime = acq["study_date"] + _tm(t_inj)
    radio.RadionuclideTotalDose = _ds(acq["injected_dose_bq"])
    radio.RadionuclideHalfLife = _ds(GA68_HALF_LIFE_S)
    radio.RadionuclidePositronFraction = "0.891"
    code = Dataset()
    code.CodeValue = "C-131A3"
    code.CodingSchemeDesignator = "SRT"
    code.CodeMeaning = "^68^Gallium"
    radio.RadionuclideCodeSequence = DicomSequence([code])
    base = Dataset()
    _common_header(base, phi, clin, acq, prof)
    base.SOPClassUID = _PET_SOP
    base.Modality = "PT"
    base.ImageType = ["ORIGINAL", "PRIMARY"]
    base.SeriesInstanceUID = phi["pet_series_uid"]
    base.SeriesNumber = 4
    base.SeriesDescription = phi["pet_series_description"]
    base.SeriesDate = acq["study_date"]
    base.SeriesTime = _tm(t_start)
    base.AcquisitionDate = acq["study_date"]
    base.ContentDate = acq["study_date"]
    base.NumberOfSlices = n
    base.SeriesType = ["WHOLE BODY", "IMAGE"]
    base.Units = "BQML"
    base.CountsSource = "EMISSION"
    base.DecayCorrection = "START"
    base.CorrectedImage = ["NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN"]
    base.AttenuationCorrectionMethod = "CTAC"
    base.ReconstructionMethod = prof["reconstruction"]
    base.ActualFrameDuration = int(prof["bed_s"] * 1000)
    base.RadiopharmaceuticalInformationSequence = DicomSequence([radio])
    base.SliceThickness = _ds(dz)
    base.PixelSpacing = [_ds(dy), _ds(dx)]
    base.Rows, base.Columns = grid.shape[1:]
    base.BitsStored = 16
    base.HighBit = 15
    base.PixelRepresentation = 1
    base.RescaleIntercept = "0"
    x0, y0 = _ds(grid.x[0]), _ds(grid.y[0])
    writer = _SeriesWriter(base, _PET_SOP)
    for k in range(n):
        bed = int((grid.z[0] - grid.z[k]) // prof["bed_mm"])
        t_acq = t_start + bed * prof["bed_s"]
        slope_s = _ds(max(float(bqml[k].max()), 1.0) / 32767.0)
        slope = float(slope_s)
        stored = np.clip(np.rint(bqml[k] / slope), 0, 32767).astype(np.int16)
        decoded[k] = stored * slope
        ds = Dataset()
        ds.AcquisitionTime = _tm(t_acq)
        ds.ContentTime = _tm(t_acq + prof["bed_s"])
        ds.InstanceNumber = int(instance[k])
        ds.ImageIndex = int(instance[k])
        ds.DecayFactor = _ds(2.0 ** ((t_acq - t_start) / GA68_HALF_LIFE_S))
        ds.FrameReferenceTime = _ds((t_acq - t_start) * 1000.0)
        ds.ImagePositionPatient = [x0, y0, _ds(grid.z[k])]
        ds.SliceLocation = _ds(grid.z[k])
        ds.RescaleSlope = slope_s
        ds.PixelData = stored.tobytes()
        writer.write(folder / _slice_name(cfg, naming, pid, "pet", k), _uid(cfg, pid, "pet", k), ds)
    return decoded


def _slice_name(cfg: SynthConfig, naming: str, pid: str, series: str, k: int) -> str:
    stem = _hexname(_cfg_hash(cfg), pid, series, k)
    if naming == "dcm":
        return f"{stem}.dcm"
    if naming == "ima":
        return f"{stem.upper()}.IMA"
    return stem


def _write_ct_dicom(
    cfg: SynthConfig,
    folder: Path,
    grid: Grid,
    hu: np.ndarray,
    phi: dict[str, Any],
    clin: pd.Series,
    acq: pd.Series,
    naming: str,
    rng: np.random.Generator,
) -> None:
    """Write the CT series: stored values with the patient's RescaleSlope/Intercept variant."""
    from pydicom.dataset import Dataset

    prof = SCANNERS[acq["scanner"]]
    pid = clin["patient_id"]
    slope, intercept, signed, bits, padded = CT_RESCALE_VARIANTS[int(acq["ct_rescale"])]
    t_ct = float(acq["injection_s"]) + float(acq["injection_to_scan_s"]) - 150.0
    dz, dy, dx = grid.spacing
    n = grid.shape[0]
    instance = _instance_numbers(acq["instance_order"], n, rng)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    stored_all = np.clip(np.rint((hu - intercept) / slope), lo, hi)
    pad_value = None
    if padded:
        pad_value = int(round((-3024.0 - intercept) / slope))
        r = grid.x[None, :] ** 2 + grid.y[:, None] ** 2
        stored_all[:, r > (prof["ct_fov_mm"] / 2.0) ** 2] = pad_value
    stored_all = stored_all.astype(np.int16 if signed else np.uint16)
    base = Dataset()
    _common_header(base, phi, clin, acq, prof)
    base.SOPClassUID = _CT_SOP
    base.Modality = "CT"
    base.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    base.SeriesInstanceUID = phi["ct_series_uid"]
    base.SeriesNumber = 2
    base.SeriesDescription = phi["ct_series_description"]
    base.SeriesDate = acq["study_date"]
    base.SeriesTime = _tm(t_ct)
    base.AcquisitionDate = acq["study_date"]
    base.ContentDate = acq["study_date"]
    base.ContentTime = _tm(t_ct + 30)
    base.KVP = "120"
    base.XRayTubeCurrent = 160 if acq["ct_contrast"] else 80
    base.ConvolutionKernel = prof["kernel"]
    base.ReconstructionDiameter = _ds(prof["ct_fov_mm"])
    base.GantryDetectorTilt = "0"
    if acq["ct_contrast"]:
        base.ContrastBolusAgent = "Iomeprol 350"
        base.ContrastBolusRoute = "IV"
    base.SliceThickness = _ds(dz)
    base.PixelSpacing = [_ds(dy), _ds(dx)]
    base.Rows, base.Columns = stored_all.shape[1:]
    base.BitsStored = bits
    base.HighBit = bits - 1
    base.PixelRepresentation = int(signed)
    if pad_value is not None:
        base.PixelPaddingValue = pad_value
    base.RescaleIntercept = _ds(intercept)
    base.RescaleSlope = _ds(slope)
    base.RescaleType = "HU"
    base.WindowCenter = "40"
    base.WindowWidth = "400"
    x0, y0 = _ds(grid.x[0]), _ds(grid.y[0])
    writer = _SeriesWriter(base, _CT_SOP)
    for k in range(n):
        ds = Dataset()
        ds.AcquisitionTime = _tm(t_ct + 1 + k * 0.05)
        ds.InstanceNumber = int(instance[k])
        ds.ImagePositionPatient = [x0, y0, _ds(grid.z[k])]
        ds.SliceLocation = _ds(grid.z[k])
        ds.PixelData = stored_all[k].tobytes()
        writer.write(folder / _slice_name(cfg, naming, pid, "ct", k), _uid(cfg, pid, "ct", k), ds)


def _series_folders(root: Path, cfg: SynthConfig, pid: str, layout: str) -> tuple[Path, Path]:
    a, b, c = (_hexname(_cfg_hash(cfg), pid, s, n=8).upper() for s in ("study", "pet-dir", "ct-dir"))
    if layout == "nested":
        return root / a / b, root / a / c
    if layout == "flat":
        return root / b, root / c
    return root / a, root / a  # mixed: both series in one folder


def _build_patient(cfg: SynthConfig, index: int, cohort: SyntheticCohort, out: Path) -> None:
    """Render and write one patient: ground truth first, then its imaging folder renamed into place."""
    clin = cohort.clinical.iloc[index]
    acq = cohort.acquisition.iloc[index]
    pid = clin["patient_id"]
    scanner = acq["scanner"]
    phantom = build_phantom(cfg, index, cohort)
    pet_grid, ct_grid = scanner_grids(cfg, phantom, scanner)
    labels, suv_true, _ = render(phantom, pet_grid)
    suv_meas = pet_measurement(cfg, index, suv_true, pet_grid, scanner)
    del suv_true
    weight, dose, uptake = (
        float(acq["weight_kg"]),
        float(acq["injected_dose_bq"]),
        float(acq["injection_to_scan_s"]),
    )
    bqml = suv_to_bqml(suv_meas, weight, dose, uptake)
    del suv_meas
    ct_hu = np.concatenate(
        [
            ct_measurement(
                cfg, index, render(phantom, ct_grid.subset(k, k + 32))[2], ct_grid.subset(k, k + 32), scanner
            )
            for k in range(0, ct_grid.shape[0], 32)
        ]
    )
    phi = sample_phi(cfg, index, cohort)
    rng = _rng(cfg, "phantom", index, 3)
    tmp_root = out / ".partial"
    tmp_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{store.child(tmp_root, pid).name}-", dir=tmp_root))
    try:
        if cfg.image_format == "dicom":
            pet_dir, ct_dir = _series_folders(tmp, cfg, pid, acq["layout"])
            pet_dir.mkdir(parents=True, exist_ok=True)
            ct_dir.mkdir(parents=True, exist_ok=True)
            decoded = _write_pet_dicom(cfg, pet_dir, pet_grid, bqml, phi, clin, acq, acq["file_naming"], rng)
            _write_ct_dicom(cfg, ct_dir, ct_grid, ct_hu, phi, clin, acq, acq["file_naming"], rng)
        else:
            decoded = bqml.astype(np.float32).astype(np.float64)
            (tmp / "pet.nii.gz").write_bytes(
                _nifti_bytes(to_nifti_array(decoded.astype(np.float32)), pet_grid.nifti_affine())
            )
            slope, intercept, signed, _, _ = CT_RESCALE_VARIANTS[int(acq["ct_rescale"])]
            dtype = np.int16 if signed else np.uint16
            info = np.iinfo(dtype)
            stored = np.clip(np.rint((ct_hu - intercept) / slope), info.min, info.max).astype(dtype)
            (tmp / "ct.nii.gz").write_bytes(
                _nifti_bytes(to_nifti_array(stored), ct_grid.nifti_affine(), (slope, intercept))
            )
            sidecar = {
                "units": "Bq/ml",
                "patient_weight_kg": weight,
                "injected_dose_bq": dose,
                "injection_to_scan_s": uptake,
                "decay_corrected_to": "scan_start",
                "half_life_s": GA68_HALF_LIFE_S,
                "radiopharmaceutical": RADIOPHARMACEUTICAL,
                "scanner": f"{SCANNERS[scanner]['manufacturer']} {SCANNERS[scanner]['model']}",
                "PatientName": phi["patient_name"],
                "PatientID": phi["hospital_id"],
                "PatientBirthDate": phi["birth_date"],
                "AccessionNumber": phi["accession_number"],
                "InstitutionName": phi["institution"],
                "StationName": phi["station"],
                "SeriesDescription": phi["pet_series_description"],
            }
            (tmp / "pet.json").write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
        suv_decoded = bqml_to_suv(decoded, weight, dose, uptake).astype(np.float32)
        affine = pet_grid.nifti_affine()
        store.write_bytes(
            store.child(out / "ground_truth" / "labels", f"{pid}.nii.gz"), _nifti_bytes(to_nifti_array(labels), affine)
        )
        store.write_bytes(
            store.child(out / "ground_truth" / "suv", f"{pid}.nii.gz"), _nifti_bytes(to_nifti_array(suv_decoded), affine)
        )
        final = store.child(out / "imaging", pid)
        if final.exists():
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _patient_done(out: Path, pid: str) -> bool:
    return (
        store.child(out / "imaging", pid).is_dir()
        and store.child(out / "ground_truth" / "labels", f"{pid}.nii.gz").is_file()
        and store.child(out / "ground_truth" / "suv", f"{pid}.nii.gz").is_file()
    )


_OWN_ENTRIES = ("clinical.csv", "imaging", "ground_truth", "config.yaml", "complete.json", ".partial")


def _build_patient_checked(cfg: SynthConfig, index: int, cohort: SyntheticCohort, out: Path) -> int:
    """:func:`_build_patient`, with any failure reported as a :class:`SynthError` naming the patient."""
    try:
        _build_patient(cfg, index, cohort, out)
    except Exception as exc:
        pid = cohort.clinical["patient_id"].iloc[index]
        raise SynthError(f"patient {pid}: {type(exc).__name__}: {exc}") from exc
    return index


def _build_patient_job(args: tuple[SynthConfig, int, SyntheticCohort, Path]) -> int:
    return _build_patient_checked(*args)


def generate_cohort(
    cfg: SynthConfig, out_dir: str | Path, progress: bool = True, *, n_jobs: int = 1, overwrite: bool = False
) -> Path:
    """Write the synthetic cohort (DESIGN "Raw export") into ``out_dir``; return ``out_dir``.

    Layout: ``clinical.csv``; ``imaging/<patient_id>/**`` (DICOM PET + CT in
    uninformatively named sub-folders, or ``pet.nii.gz`` + ``pet.json`` +
    ``ct.nii.gz``); ``ground_truth/`` with ``truth.csv``, ``lesions.csv``,
    ``acquisition.csv``, ``labels.json``, ``phi.json`` (every fake identifying
    string planted), ``labels/<pid>.nii.gz`` and ``suv/<pid>.nii.gz`` (the SUVbw
    the PET files decode to, on the PET grid); ``config.yaml``; and
    ``complete.json``, written last.

    A folder already holding a complete cohort of the same configuration is
    left as it is. An interrupted run resumes: each patient is built in
    ``.partial/`` and renamed into ``imaging/`` only when whole.

    Parameters
    ----------
    cfg : SynthConfig
    out_dir : path
    progress : bool
        Show a tqdm progress bar over patients.
    n_jobs : int
        Worker processes (output does not depend on it).
    overwrite : bool
        If ``out_dir`` holds a cohort of another configuration, delete the
        generator's own entries and regenerate (otherwise :class:`SynthError`).
    """
    out = Path(out_dir)
    marker = out / "complete.json"
    cfg_path = out / "config.yaml"
    if marker.exists():
        done = json.loads(marker.read_text())
        if done.get("config_hash") == cfg.hash() and cfg_path.exists():
            get_logger("synth").debug(f"synthetic cohort of the same configuration found complete in {out}: reused")
            return out
    if (
        cfg_path.exists()
        and SynthConfig.from_yaml(cfg_path).hash() != cfg.hash()
        or (marker.exists() and json.loads(marker.read_text()).get("config_hash") != cfg.hash())
    ):
        if not overwrite:
            raise SynthError(
                f"{out} holds a synthetic cohort of another configuration; choose another folder or pass overwrite=True"
            )
        for name in _OWN_ENTRIES:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    elif out.exists() and not cfg_path.exists():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _OWN_ENTRIES)
        if foreign:
            raise SynthError(f"{out} is not empty and was not written by the generator (holds {foreign[:3]})")
    out.mkdir(parents=True, exist_ok=True)
    if marker.exists():
        marker.unlink()
    store.write_text(cfg_path, cfg.to_yaml())
    if (out / ".partial").exists():
        shutil.rmtree(out / ".partial")
    cohort = sample_cohort(cfg)
    ids = list(cohort.clinical["patient_id"])
    todo = [i for i, pid in enumerate(ids) if not _patient_done(out, pid)]
    from tqdm.auto import tqdm

    log = get_logger("synth")
    log.debug(f"{len(ids) - len(todo)} of {len(ids)} synthetic patients already written; writing {len(todo)} "
              f"({cfg.image_format}, {n_jobs} worker(s))")
    bar = tqdm(total=len(ids), initial=len(ids) - len(todo), desc="synthetic patients", disable=not progress)
    if n_jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=n_jobs) as pool:
            for i, _ in zip(todo, pool.map(_build_patient_job, [(cfg, i, cohort, out) for i in todo]), strict=True):
                log.debug(f"patient {ids[i]} written")
                bar.update()
    else:
        for i in todo:
            _build_patient_checked(cfg, i, cohort, out)
            log.debug(f"patient {ids[i]} written")
            bar.update()
    bar.close()
    if (out / ".partial").exists():
        shutil.rmtree(out / ".partial")
    gt = out / "ground_truth"
    store.write_csv(out / "clinical.csv", cohort.clinical)
    store.write_csv(gt / "truth.csv", cohort.truth)
    store.write_csv(gt / "lesions.csv", cohort.lesions)
    store.write_csv(gt / "acquisition.csv", cohort.acquisition)
    store.write_json(gt / "labels.json", {str(k): v for k, v in LABELS.items()})
    phi = sorted(
        {s for i in range(len(ids)) for s in _phi_strings(sample_phi(cfg, i, cohort), cfg.image_format)}
    )
    store.write_json(gt / "phi.json", phi)
    store.write_json(
        marker,
        {
            "config_hash": cfg.hash(),
            "generator": "prrt_utils.synth",
            "n_patients": len(ids),
            "image_format": cfg.image_format,
        },
    )
    return out
