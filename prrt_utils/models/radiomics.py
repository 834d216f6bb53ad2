"""PET burden and uptake features: the radiomics baseline a nuclear-medicine reader asks for (issue 14).

Computed from the preprocessed PET (SUVbw) and the organ masks
(:mod:`prrt_utils.data.anatomy`), per patient, with nothing fitted: so they can be
computed once for the whole cohort without leaking anything across folds (the
logistic regression on them is fitted per fold, :mod:`prrt_utils.models.training`).

SSTR-positive tumour = voxels whose uptake exceeds ``threshold`` times the
patient's liver reference (a Krenning-style reading: uptake above the liver),
outside spleen, kidneys and bladder and the voxel around them
(:func:`prrt_utils.data.anatomy.physiological_mask`). Features (:data:`FEATURES`):

* ``log_volume``: ``log(1 + n)``, ``n`` SSTR-positive voxels (tumour burden);
* ``log_uptake``: ``log(1 + sum of their SUV)`` (total lesion uptake);
* ``suv_max``, ``suv_mean``: of the SSTR-positive voxels (0 when there are none);
* ``tumour_to_liver``: their mean SUV over the liver reference (receptor expression);
* ``hepatic_fraction``: share of them inside the liver outline (holes filled,
  so hepatic metastases count as hepatic);
* ``heterogeneity``: coefficient of variation of their SUV.

Written by hand: a threshold, counts and means on a small grid; pyradiomics
would add a C extension and a dependency for seven numbers. Volumes are in
voxels of the preprocessed grid (all patients share it), not ml.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from prrt_utils.data.anatomy import ORGAN_CODES, liver_reference, physiological_mask

__all__ = ["FEATURES", "RadiomicsError", "radiomics_features", "radiomics_table"]

FEATURES: tuple[str, ...] = (
    "log_volume", "log_uptake", "suv_max", "suv_mean", "tumour_to_liver", "hepatic_fraction", "heterogeneity",
)
"""Feature columns of :func:`radiomics_table`, in order."""

THRESHOLD = 1.5
"""SSTR-positive: uptake above 1.5 times the liver reference."""


class RadiomicsError(ValueError):
    """Features that cannot be computed (no organ masks, no liver reference); names the patient."""


def radiomics_features(pet: np.ndarray, organs: np.ndarray, threshold: float = THRESHOLD,
                       patient_id: str = "") -> dict[str, float]:
    """The :data:`FEATURES` of one patient.

    Parameters
    ----------
    pet : ndarray, shape (D, H, W)
        SUVbw on the preprocessed grid.
    organs : ndarray, shape (D, H, W)
        :data:`prrt_utils.data.anatomy.ORGAN_CODES`.
    threshold : float
        Multiple of the liver reference above which a voxel counts as tumour.
    """
    from scipy.ndimage import binary_fill_holes

    pet = np.asarray(pet, dtype=np.float64)
    organs = np.asarray(organs)
    if pet.shape != organs.shape:
        raise RadiomicsError(f"patient {patient_id}: PET {pet.shape} and organ masks {organs.shape} differ in shape")
    ref = liver_reference(pet, organs)
    if ref is None:
        raise RadiomicsError(f"patient {patient_id}: no liver reference (too few liver voxels in the organ masks)")
    allowed = ~physiological_mask(organs)
    tumour = (pet > threshold * ref) & allowed
    values = pet[tumour]
    n = int(tumour.sum())
    liver = binary_fill_holes(organs == ORGAN_CODES["liver"])
    mean = float(values.mean()) if n else 0.0
    return {
        "log_volume": float(np.log1p(n)),
        "log_uptake": float(np.log1p(values.sum())),
        "suv_max": float(values.max()) if n else 0.0,
        "suv_mean": mean,
        "tumour_to_liver": mean / ref,
        "hepatic_fraction": float((tumour & liver).sum() / n) if n else 0.0,
        "heterogeneity": float(values.std() / mean) if n > 1 else 0.0,
    }


def radiomics_table(pet: np.ndarray, organs: np.ndarray | None, patient_ids: Sequence[str]) -> pd.DataFrame:
    """:func:`radiomics_features` of every patient: ``pet`` and ``organs`` ``(N, 1, D, H, W)``; index ``patient_id``."""
    if organs is None:
        raise RadiomicsError("the radiomics baseline needs organ masks (CT label maps of the cohort, see "
                             "prrt_utils.data.anatomy); none were loaded")
    rows = [radiomics_features(pet[i, 0], organs[i, 0], patient_id=pid) for i, pid in enumerate(patient_ids)]
    return pd.DataFrame(rows, columns=list(FEATURES), index=pd.Index(list(patient_ids), name="patient_id"))
