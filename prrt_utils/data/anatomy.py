"""Organ masks on the preprocessed grid and the liver reference of PET (issue 14).

Why: somatostatin-receptor PET shows physiological uptake in spleen, kidneys
and bladder in the same SUV range as the tumours and with many times their
volume, and the liver's own uptake varies from patient to patient. A reader
judges lesions against the liver (Krenning score, tumour-to-liver ratio) and
looks past the physiological organs; the PET models are given the same help:
PET divided by the patient's median liver SUV (PERCIST-style reference
region), with spleen, kidneys and bladder set to zero
(:func:`pet_relative`, applied by :class:`prrt_utils.models.inputs.FoldNormaliser`).

Where the masks come from: one CT label map per patient, found as CT
pretraining finds its population's (:func:`find_labels`): a centre's own, e.g. TotalSegmentator
outputs in ``DATA/ct_labels/`` with their ``codes.json``, or, for the synthetic
cohort, the phantom's organ labels. Only liver, spleen, kidney and bladder are
taken; lesion labels are never read (a model must find the tumours itself).
No outcome is involved, so computing the masks for every patient leaks nothing.

This module sits between loading and preprocessing in the data flow: the
preprocessing stage resamples each map onto its grid (:func:`organs_on_grid`)
and stores it beside PET and CT. CT pretraining reads maps of the same form, but of a separate
population, never the study's (:mod:`prrt_utils.models.pretrain`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from prrt_utils.io import store
from prrt_utils.io.nifti import load_label_map

__all__ = [
    "ANATOMY_CLASSES",
    "MASKED_ORGANS",
    "ORGAN_CODES",
    "SYNTHETIC_LABEL_MAP",
    "AnatomyError",
    "find_labels",
    "label_lookup",
    "label_map_path",
    "labels_on_grid",
    "load_organs",
    "liver_reference",
    "organs_on_grid",
    "pet_relative",
    "physiological_mask",
]

ANATOMY_CLASSES: tuple[str, ...] = (
    "background", "body", "lung", "liver", "spleen", "kidney", "bladder", "bone", "lesion",
)
"""Classes of CT label maps as the pipeline names them (CT pretraining's proxy task uses all of them)."""

SYNTHETIC_LABEL_MAP: tuple[str, ...] = (
    "0:background", "1:body", "2:lung", "3:liver", "4:spleen", "5:kidney", "6:bladder", "7:bone",
    "8:body", "9:body", "10:lesion", "11:lesion", "12:lesion", "13:lesion", "14:lesion", "15:lesion",
    "16:background",
)
"""Codes of the generator's label maps (:data:`prrt_utils.synthetic.LABELS`) -> classes
(heart and aorta count as body; the scanner table as background)."""

ORGAN_CODES: dict[str, int] = {"liver": 1, "spleen": 2, "kidney": 3, "bladder": 4}
"""Codes of the ``organs`` array stored with the preprocessed volumes (0: anything else, lesions included)."""

MASKED_ORGANS: tuple[str, ...] = ("spleen", "kidney", "bladder")
"""Organs of high physiological SSTR uptake, set to zero in the PET models' input."""

SPILL_VOXELS = 1
"""The physiological organs are masked with a margin of this many voxels: at a 10 mm grid and a PET
resolution of 5-9 mm, a spleen of SUV 25 spills some 1.5 times the liver's uptake into the voxel
around it, which would otherwise count as tumour (on the synthetic twin the correlation of the
SSTR-positive volume with the true tumour volume rises from 0.63 to 0.82 with the margin)."""

MIN_LIVER_VOXELS = 20
"""Fewer liver voxels on the grid than this and the liver reference is not trusted (None)."""


class AnatomyError(ValueError):
    """A label map or label description that cannot be used (names the patient or the entry)."""


def label_lookup(label_map: Sequence[str]) -> dict[int, int]:
    """``["code:class", ...]`` -> ``{code: index in ANATOMY_CLASSES}``; rejects unknown classes and repeated codes."""
    out: dict[int, int] = {}
    for item in label_map:
        code, _, name = str(item).partition(":")
        if not code.strip().isdigit() or name.strip() not in ANATOMY_CLASSES:
            raise AnatomyError(f"label_map entry {item!r} must be 'code:class' with class one of {ANATOMY_CLASSES}")
        if int(code) in out:
            raise AnatomyError(f"label_map lists code {code} twice")
        out[int(code)] = ANATOMY_CLASSES.index(name.strip())
    return out


def find_labels(data_dir: str | Path, labels_dir: str | Path = "") -> tuple[Path | None, tuple[str, ...] | None]:
    """Where the label maps of a cohort are, and their codes if the cohort says them.

    In order: ``labels_dir`` if given; ``DATA/ct_labels/`` (an own cohort's maps,
    linked by the intake with their ``codes.json``); ``DATA/ground_truth/labels/``
    (the synthetic cohort's, :data:`SYNTHETIC_LABEL_MAP`). ``(None, None)`` when
    there are none.
    """
    if labels_dir:
        return Path(labels_dir), None
    own = Path(data_dir) / "ct_labels"
    if own.is_dir():
        codes = own / "codes.json"
        return own, tuple(json.loads(codes.read_text())) if codes.is_file() else None
    synthetic = Path(data_dir) / "ground_truth" / "labels"
    return (synthetic, None) if synthetic.is_dir() else (None, None)


def label_map_path(labels_dir: str | Path, patient_id: str) -> Path | None:
    """``<labels_dir>/<patient_id>.nii.gz`` (or ``.nii``) if it exists, else ``None``."""
    found = [p for p in (store.child(labels_dir, f"{patient_id}.nii.gz"), store.child(labels_dir, f"{patient_id}.nii"))
             if p.is_file()]
    return found[0] if found else None


def load_organs(path: str | Path, label_map: Sequence[str], grid_affine: np.ndarray, shape: Sequence[int],
                patient_id: str) -> np.ndarray:
    """The ``organs`` array of the label map at ``path`` on a preprocessed grid (:func:`organs_on_grid`)."""

    labels, affine = load_label_map(path, patient_id)
    return organs_on_grid(labels, affine, grid_affine, shape, label_lookup(label_map), patient_id)


def labels_on_grid(labels: np.ndarray, affine: np.ndarray, grid_affine: np.ndarray,
                   shape: Sequence[int]) -> np.ndarray:
    """Resample a label map onto a preprocessed grid by nearest neighbour (in LPS millimetres).

    Both affines map voxel index ``(d, h, w, 1)`` to LPS mm. Target voxels whose
    centre falls outside the label map are background (0).
    """
    from scipy.ndimage import map_coordinates

    d, h, w = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    target = np.stack([d.ravel(), h.ravel(), w.ravel(), np.ones(d.size)])
    source = (np.linalg.inv(affine) @ np.asarray(grid_affine, dtype=float) @ target)[:3]
    out = map_coordinates(labels.astype(np.float32), source, order=0, mode="constant", cval=0.0)
    return np.rint(out).astype(np.int32).reshape(tuple(shape))


def organs_on_grid(labels: np.ndarray, affine: np.ndarray, grid_affine: np.ndarray, shape: Sequence[int],
                   lookup: Mapping[int, int], patient_id: str = "") -> np.ndarray:
    """The ``organs`` array (:data:`ORGAN_CODES`, uint8 ``(D, H, W)``) of one label map on a grid.

    ``lookup`` is :func:`label_lookup` of the cohort's label description; a
    code it does not list stops with the patient named (an unlisted organ
    would silently count as tissue).
    """
    codes = np.unique(labels)
    unknown = [int(c) for c in codes if int(c) not in lookup]
    if unknown:
        raise AnatomyError(f"patient {patient_id}: label map has code(s) {unknown} that the label description does not list")
    table = np.zeros(int(max(max(lookup), int(codes.max()))) + 1, dtype=np.uint8)
    for code, cls in lookup.items():
        name = ANATOMY_CLASSES[cls]
        table[code] = ORGAN_CODES.get(name, 0)
    return table[labels_on_grid(labels, affine, grid_affine, shape)]


def liver_reference(pet: np.ndarray, organs: np.ndarray) -> float | None:
    """Median PET over the liver voxels of ``organs`` (same shape), or ``None`` with too few of them.

    The median, not the mean: hepatic metastases inside the liver outline
    (a TotalSegmentator liver includes them) must not raise the reference.
    """
    liver = organs == ORGAN_CODES["liver"]
    if int(liver.sum()) < MIN_LIVER_VOXELS:
        return None
    ref = float(np.median(pet[liver]))
    return ref if ref > 0 else None


def physiological_mask(organs: np.ndarray) -> np.ndarray:
    """Voxels of spleen, kidneys and bladder, dilated by :data:`SPILL_VOXELS` (boolean, the shape of ``organs``)."""
    from scipy.ndimage import binary_dilation

    mask = np.isin(organs, [ORGAN_CODES[o] for o in MASKED_ORGANS])
    return binary_dilation(mask, iterations=SPILL_VOXELS) if SPILL_VOXELS and mask.any() else mask


def pet_relative(pet: np.ndarray, organs: np.ndarray) -> np.ndarray:
    """PET over each patient's liver reference, physiological organs set to zero.

    Parameters
    ----------
    pet : ndarray, shape (N, 1, D, H, W)
        SUVbw.
    organs : ndarray, shape (N, 1, D, H, W)
        :data:`ORGAN_CODES` of each patient.

    Returns
    -------
    ndarray, float32, same shape
        Liver-relative uptake (1 = the patient's median liver), 0 in spleen,
        kidneys and bladder and the voxel around them (:func:`physiological_mask`). A patient whose liver reference cannot be found
        raises :class:`AnatomyError` naming the row.
    """
    if pet.shape != organs.shape:
        raise AnatomyError(f"PET {pet.shape} and organ masks {organs.shape} differ in shape")
    out = np.empty(pet.shape, np.float32)
    for i in range(len(pet)):
        ref = liver_reference(pet[i], organs[i])
        if ref is None:
            raise AnatomyError(f"row {i}: fewer than {MIN_LIVER_VOXELS} liver voxels (or a liver of SUV 0) on the grid; "
                               "no liver reference for PET")
        out[i] = np.where(physiological_mask(organs[i]), np.float32(0.0), pet[i] / np.float32(ref))
    return out
