"""The synthetic twin at table level: its configuration, the generative model (risk, PFS, labs,
lesions) and the truth-based ceilings; no image is drawn here (:mod:`.phantom` renders, :mod:`.export` writes).

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
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from prrt_utils.data.cohort import CLINICAL_COLUMNS, PFS_THRESHOLD_MONTHS  # the cohort stage owns the schema
from prrt_utils.io.config import SEED, Config

__all__ = [
    "CEILING_FAMILIES",
    "CT_RESCALE_VARIANTS",
    "GA68_HALF_LIFE_S",
    "LABELS",
    "LESION_LABELS",
    "METASTATIC_SITES",
    "PRIMARY_SITES",
    "RADIOPHARMACEUTICAL",
    "SCANNERS",
    "SCENARIOS",
    "SynthConfig",
    "SynthError",
    "SyntheticCohort",
    "bayes_probability",
    "bqml_to_suv",
    "ceiling_features",
    "cycles_from_pfs",
    "decay_factor",
    "modality_ceilings",
    "patient_ids",
    "pfs_shape",
    "risk_linear_predictor",
    "sample_clinical",
    "sample_cohort",
    "stream_rng",
    "suv_to_bqml",
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


def stream_rng(cfg: SynthConfig, stream: str, *extra: int) -> np.random.Generator:
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
    rng = stream_rng(cfg, "demographics")
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
    rng = stream_rng(cfg, "tumour")
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
    rng = stream_rng(cfg, "labs")
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
    rng = stream_rng(cfg, "acquisition")
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
    biology = stream_rng(cfg, "biology").normal(size=n)
    labs = _sample_labs(cfg, feats, biology)
    risk = risk_linear_predictor(
        feats["tumour_volume_ml"], feats["sstr_ratio"], feats["hepatic_fraction"], biology, cfg
    )
    rng_out = stream_rng(cfg, "outcome")
    pfs_true = cfg.pfs_scale_months * np.exp(-risk) * rng_out.exponential(size=n) ** (1.0 / pfs_shape(cfg))
    # censoring: a fixed fraction, censored at a uniform fraction of their true PFS
    rng_c = stream_rng(cfg, "censoring")
    n_cens = int(round(cfg.censor_fraction * n))
    censored = np.zeros(n, dtype=bool)
    censored[rng_c.permutation(n)[:n_cens]] = True
    observed = np.where(censored, pfs_true * rng_c.uniform(0.2, 0.95, n), pfs_true)
    pfs = np.maximum(np.round(observed, 2), 0.1)
    rng_cy = stream_rng(cfg, "cycles")
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
    data to fit even a logistic regression): :func:`prrt_utils.analysis.metrics.truth_ceilings`
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

