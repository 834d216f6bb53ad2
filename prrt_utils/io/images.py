"""What the loaders return: a :class:`Volume` per series, a patient's :class:`PatientImages`, and the
:class:`InputError` every refusal raises (rules and conventions: :mod:`prrt_utils.io.loading`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = [
    "InputError",
    "PatientImages",
    "Volume",
    "reorient",
]


CANONICAL_ORIENTATION = np.array([[2, -1], [1, 1], [0, 1]])
"""nibabel orientation of the canonical array axes in LPS: d along -z, h along +y, w along +x."""


class InputError(Exception):
    """A patient's images cannot be used as they are; the message names patient and problem.

    Attributes
    ----------
    patient_id : str
        Study pseudonym, e.g. ``"PRRT-007"``.
    problem : str
        What is wrong, in words a clinician or data manager can act on.
    """

    def __init__(self, patient_id: str, problem: str) -> None:
        self.patient_id = str(patient_id)
        self.problem = str(problem)
        super().__init__(f"patient {self.patient_id}: {self.problem}")

    def __reduce__(self) -> tuple[Any, ...]:  # survive process pools
        return (type(self), (self.patient_id, self.problem))


@dataclasses.dataclass(frozen=True, eq=False)
class Volume:
    """One image volume in physical units on its own grid.

    Attributes
    ----------
    array : np.ndarray
        float32 ``(D, H, W)`` = (slice, row, column), canonical order (head to
        feet, anterior to posterior, patient right to left).
    affine : np.ndarray
        float64 ``(4, 4)``: voxel index ``(d, h, w, 1)`` -> LPS mm (module docstring).
    modality : str
        ``"PT"`` or ``"CT"``.
    units : str
        ``"SUVbw"`` (PET) or ``"HU"`` (CT).
    meta : dict
        Non-identifying acquisition facts only (spacing, scanner model,
        convolution kernel, contrast flag, SUV factor, series choice, ...).
    raw : np.ndarray or None
        Only with ``keep_raw=True``: the values before harmonisation on the same
        grid (CT stored pixel values, PET activity in Bq/ml), for QC histograms.
    """

    array: np.ndarray
    affine: np.ndarray
    modality: str
    units: str
    meta: dict[str, Any]
    raw: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along ``(D, H, W)`` in mm (lengths of the affine's columns)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True, eq=False)
class PatientImages:
    """The PET (SUVbw) and CT (HU) of one patient, each on its own grid."""

    patient_id: str
    pet: Volume
    ct: Volume


def file_label(position: int, n_files: int) -> str:
    return f"file {position} of {n_files} in the patient folder (sorted listing)"


def reorient(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip/permute ``array`` to the canonical (head->feet, ant->post, right->left) order.

    Parameters
    ----------
    array : np.ndarray
        Any 3-D array whose voxel ``(a, b, c)`` lies at ``affine @ (a, b, c, 1)`` (LPS mm).
    affine : np.ndarray
        ``(4, 4)`` voxel -> LPS.

    Returns
    -------
    array, affine
        The re-ordered array ``(D, H, W)`` and its affine; every voxel keeps its
        LPS position (no interpolation). Uses :mod:`nibabel.orientations`.
    """
    from nibabel import orientations as ornt_

    current = ornt_.io_orientation(affine)
    xform = ornt_.ornt_transform(current, CANONICAL_ORIENTATION)
    out = ornt_.apply_orientation(array, xform)
    new_affine = affine @ ornt_.inv_ornt_aff(xform, array.shape)
    return np.ascontiguousarray(out), new_affine


def require_finite(values: np.ndarray, what: str, patient_id: str) -> None:
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise InputError(patient_id, f"{what}: {bad} voxels are not finite (NaN or infinite)")
