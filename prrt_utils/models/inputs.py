"""What a model sees: the cohort's labs and volumes (:class:`CohortData`) and the scaling of labs and images
fitted on each fold's training part (:class:`LabScaler`, :class:`FoldNormaliser`). Training uses it to fit,
the analyses to apply a stored model; it trains nothing itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.preprocessing import StandardScaler

from prrt_utils.data.anatomy import AnatomyError, pet_relative
from prrt_utils.data.preprocess import load_volumes
from prrt_utils.models.networks import (
    LAB_COLUMNS,
    ModelSpec,
)
from prrt_utils.models.radiomics import RadiomicsError, radiomics_table


class TrainingError(ValueError):
    """Input that cannot be trained on (names the patient or the fold), or a results folder that does not match."""


@dataclasses.dataclass(frozen=True)
class CohortData:
    """Model inputs of the cohort, aligned by row.

    Attributes
    ----------
    patient_ids : tuple of str
        Study pseudonyms, one per row.
    y : ndarray, shape (N,)
        1 = short PFS (``pfs_short``), 0 = long.
    labs : ndarray, shape (N, L)
        Raw laboratory values in :data:`~prrt_utils.models.networks.LAB_COLUMNS` order
        (U/l, U/l, ug/l, U/l).
    volumes : mapping str -> ndarray, shape (N, 1, D, H, W)
        ``"pet"`` (SUVbw) and/or ``"ct"`` (HU), float32; may be memory-mapped.
        Only the modalities a model needs must be present. ``"organs"``
        (:data:`prrt_utils.data.anatomy.ORGAN_CODES`) when the cohort has organ
        masks: PET models referenced to the liver need them.
    lab_columns : tuple of str
        Names of the columns of ``labs``.
    """

    patient_ids: tuple[str, ...]
    y: np.ndarray
    labs: np.ndarray
    volumes: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    lab_columns: tuple[str, ...] = LAB_COLUMNS
    _cache: dict[tuple[Any, ...], np.ndarray] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.patient_ids)
        if len(set(self.patient_ids)) != n:
            raise TrainingError("CohortData: patient ids are not unique")
        if np.shape(self.y) != (n,) or np.shape(self.labs) != (n, len(self.lab_columns)):
            raise TrainingError(
                f"CohortData: y {np.shape(self.y)} and labs {np.shape(self.labs)} must have {n} rows "
                f"({len(self.lab_columns)} lab columns)"
            )
        if not np.isin(self.y, (0, 1)).all():
            raise TrainingError(f"CohortData: patient {self.patient_ids[int(np.flatnonzero(~np.isin(self.y, (0, 1)))[0])]} has a label that is not 0/1")
        for name, vol in self.volumes.items():
            if vol.ndim != 5 or vol.shape[0] != n or vol.shape[1] != 1:
                raise TrainingError(f"CohortData: {name} volumes must be (N={n}, 1, D, H, W), got {vol.shape}")
        labs = np.asarray(self.labs, dtype=float)
        bad = ~np.isfinite(labs) | (labs < 0)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise TrainingError(
                f"patient {self.patient_ids[i]}: {self.lab_columns[j]} is {labs[i, j]}; laboratory values must be "
                f"present and non-negative ({int(bad.any(axis=1).sum())} patient(s) affected)"
            )

    def clipped(self, modality: str, normaliser: FoldNormaliser) -> np.ndarray:
        """Every patient's ``modality`` volume after the fold-independent step of ``normaliser`` (clip, log1p).

        Computed once per :class:`CohortData` and clip setting: the folds of a
        worker share it (it was a quarter of a CNN fold's time, recomputed three
        times per fold), and the standardisation fitted per fold starts from it.
        """
        if modality not in self.volumes:
            raise TrainingError(f"{modality} volumes were not loaded")
        key = (modality, normaliser.pet_clip_suv, tuple(normaliser.ct_window_hu), normaliser.pet_reference)
        if key not in self._cache:
            self._cache[key] = normaliser.clip(modality, self.volumes[modality], self.volumes.get("organs"))
        return self._cache[key]

    def radiomics(self) -> np.ndarray:
        """``(N, F)`` PET radiomics features (:mod:`prrt_utils.models.radiomics`) of every patient, computed once.

        Nothing in them is fitted, so computing them over the whole cohort leaks nothing across folds.
        """

        key = ("radiomics",)
        if key not in self._cache:
            if "pet" not in self.volumes:
                raise TrainingError("PET volumes were not loaded (the radiomics features need them)")
            try:
                table = radiomics_table(np.asarray(self.volumes["pet"]),
                                        np.asarray(self.volumes["organs"]) if "organs" in self.volumes else None,
                                        self.patient_ids)
            except RadiomicsError as exc:
                raise TrainingError(str(exc)) from None
            self._cache[key] = table.to_numpy(dtype=float)
        return self._cache[key]

    def features(self, spec: ModelSpec, rows: np.ndarray, lab_scaler: LabScaler) -> np.ndarray:
        """Inputs of a tabular model (forest, logistic): standardised log-labs and/or PET radiomics, ``(n, F)``."""
        parts = []
        if "pet" in spec.inputs:
            parts.append(self.radiomics()[rows])
        if spec.uses_labs:
            parts.append(lab_scaler.transform(self.labs[rows]))
        return np.concatenate(parts, axis=1).astype(np.float32)

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Row positions of ``ids`` (raises naming the first unknown patient)."""
        pos = {p: i for i, p in enumerate(self.patient_ids)}
        missing = [p for p in ids if p not in pos]
        if missing:
            raise TrainingError(f"patient {missing[0]} is in the folds but not in the model inputs ({len(missing)} missing)")
        return np.array([pos[p] for p in ids], dtype=int)

    @classmethod
    def from_frame(cls, cohort: pd.DataFrame, volumes: Mapping[str, np.ndarray] | None = None,
                   label: str = "pfs_short", lab_columns: Sequence[str] = LAB_COLUMNS) -> CohortData:
        """Build from a cohort table (``patient_id``, ``label``, lab columns); volumes in the same row order."""
        missing = [c for c in ("patient_id", label, *lab_columns) if c not in cohort.columns]
        if missing:
            raise TrainingError(f"cohort table lacks column(s) {missing}")
        return cls(
            patient_ids=tuple(cohort["patient_id"].astype(str)),
            y=cohort[label].to_numpy().astype(int),
            labs=cohort[list(lab_columns)].to_numpy(dtype=float),
            volumes=dict(volumes or {}),
            lab_columns=tuple(lab_columns),
        )


class LabScaler:
    """``log1p`` then standardisation of the laboratory values, fitted on a training part.

    AST, ALT, CgA and GGT are right-skewed (CgA spans orders of magnitude), so
    they are log-transformed (``log1p``, defined at 0) before a
    :class:`~sklearn.preprocessing.StandardScaler` learns their mean and
    standard deviation from the training patients only. The fitted state is two
    plain arrays: it is saved as them (:meth:`to_dict`) and restored from them
    (:meth:`from_dict`) without touching any estimator's attributes; the transform
    is ``(log1p(lab) - mean_) / scale_``, the arithmetic of ``StandardScaler.transform``.
    No imputation: the cohort stage excludes a patient with a missing lab value.

    Attributes
    ----------
    mean_, scale_ : ndarray, shape (L,)
        Mean and standard deviation of ``log1p(lab)`` over the training patients
        (a constant column gets scale 1, as in scikit-learn).
    """

    def __init__(self, columns: Sequence[str] = LAB_COLUMNS) -> None:
        self.columns = tuple(columns)

    def _log_labs(self, labs: np.ndarray) -> np.ndarray:
        """``log1p`` of ``(N, L)`` labs as float64; refuses a wrong width or infinite results (as scikit-learn)."""
        x = np.log1p(np.asarray(labs, dtype=float))
        if x.ndim != 2 or x.shape[1] != len(self.columns):
            raise ValueError(f"labs must have shape (N, {len(self.columns)}) for {list(self.columns)}, got {x.shape}")
        if np.isinf(x).any():
            raise ValueError("labs give infinite log1p values (a value of -1 or an infinite value)")
        return x

    def fit(self, labs: np.ndarray) -> LabScaler:
        scaler = StandardScaler().fit(self._log_labs(labs))
        self.mean_ = np.asarray(scaler.mean_, dtype=float)
        self.scale_ = np.asarray(scaler.scale_, dtype=float)
        return self

    def transform(self, labs: np.ndarray) -> np.ndarray:
        """``(N, L)`` raw labs -> ``(N, L)`` float32 standardised log-labs."""
        return ((self._log_labs(labs) - self.mean_) / self.scale_).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """The fitted state as plain lists: ``columns``, ``transform`` (``"log1p"``), ``mean``, ``scale``."""
        return {"columns": list(self.columns), "transform": "log1p", "mean": self.mean_.tolist(), "scale": self.scale_.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LabScaler:
        """Restore a scaler saved by :meth:`to_dict`.

        Raises
        ------
        ValueError
            Another transform than ``log1p``, or ``mean``/``scale`` whose length is not the number of columns.
        """
        self = cls(d["columns"])
        if d.get("transform", "log1p") != "log1p":
            raise ValueError(f"lab scaler transform {d.get('transform')!r} is not 'log1p'")
        self.mean_ = np.asarray(d["mean"], dtype=float)
        self.scale_ = np.asarray(d["scale"], dtype=float)
        if self.mean_.shape != (len(self.columns),) or self.scale_.shape != (len(self.columns),):
            raise ValueError(f"lab scaler: mean and scale need {len(self.columns)} values, one per column")
        return self


class FoldNormaliser:
    """Intensity normalisation of PET (SUV) and CT (HU) fitted on a fold's training part (paper 2.5).

    PET: with ``pet_reference="liver"`` first divided by each patient's median
    liver SUV with spleen, kidneys and bladder set to 0
    (:func:`prrt_utils.data.anatomy.pet_relative`, a per-patient step that needs
    the organ masks), clipped to ``[0, pet_clip_suv]`` and ``log1p``, and not
    standardised further (multiples of the liver are a common scale, the one
    the PET stem's thresholds are set in); with ``pet_reference="none"``
    SUVs clipped, ``log1p`` and standardised with the mean and standard
    deviation of all training voxels.
    CT: HU clipped to ``ct_window_hu``, then standardised the same way. The
    paper normalises "across training data"; fitting per fold keeps the test
    part out of it. Written by hand: a mean and a standard deviation over many
    volumes; MONAI's intensity transforms work on one image at a time.

    Attributes
    ----------
    mean_, std_ : dict str -> float
        Per modality, over every training voxel after clipping (and ``log1p`` for PET).
    n_train_ : int
        Number of training volumes the statistics came from.
    """

    def __init__(self, pet_clip_suv: float = 100.0, ct_window_hu: tuple[float, float] = (-1000.0, 1000.0),
                 pet_reference: str = "none") -> None:
        self.pet_clip_suv = pet_clip_suv
        self.ct_window_hu = ct_window_hu
        self.pet_reference = pet_reference

    def clip(self, modality: str, x: np.ndarray, organs: np.ndarray | None = None) -> np.ndarray:
        """The fixed step, the same in every fold: PET referenced (``organs`` ``(N, 1, D, H, W)``), clipped and
        ``log1p``; CT clipped to the window (float32)."""
        x = np.asarray(x, dtype=np.float32)
        if modality == "pet":
            if self.pet_reference == "liver":
                if organs is None:
                    raise TrainingError("this model's PET is referenced to the liver, which needs organ masks "
                                        "(CT label maps of the cohort, see prrt_utils.data.anatomy); none were loaded")

                try:
                    x = pet_relative(x, np.asarray(organs))
                except AnatomyError as exc:
                    raise TrainingError(f"PET liver reference: {exc}") from None
            return np.log1p(np.clip(x, 0.0, self.pet_clip_suv))
        if modality == "ct":
            return np.clip(x, *self.ct_window_hu)
        raise TrainingError(f"FoldNormaliser: unknown modality {modality!r}")

    def fit(self, volumes: Mapping[str, np.ndarray], clipped: bool = False) -> FoldNormaliser:
        """Learn mean and sd per modality from training volumes ``(N, 1, D, H, W)`` (already :meth:`clip` ped if ``clipped``)."""
        self.mean_, self.std_ = {}, {}
        self.n_train_ = 0
        for modality, vol in volumes.items():
            self.n_train_ = int(vol.shape[0])
            if modality == "pet" and self.pet_reference == "liver":
                # multiples of the liver are a common scale already, the one the PET stem's thresholds are in
                self.mean_[modality], self.std_[modality] = 0.0, 1.0
                continue
            x = vol if clipped else self.clip(modality, vol)
            self.mean_[modality] = float(x.mean(dtype=np.float64))
            self.std_[modality] = float(max(x.std(dtype=np.float64), 1e-6))
        return self

    def transform(self, volumes: Mapping[str, np.ndarray], clipped: bool = False) -> dict[str, np.ndarray]:
        """Normalised float32 copies of ``volumes`` (any patients; statistics stay those of ``fit``)."""
        out = {}
        for modality, vol in volumes.items():
            if modality not in self.mean_:
                raise TrainingError(f"FoldNormaliser was not fitted on {modality!r}")
            x = vol if clipped else self.clip(modality, vol)
            out[modality] = ((x - self.mean_[modality]) / self.std_[modality]).astype(np.float32)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "pet": {"clip_suv": [0.0, self.pet_clip_suv], "transform": "log1p", "reference": self.pet_reference},
            "ct": {"window_hu": list(self.ct_window_hu)},
            "mean": self.mean_,
            "std": self.std_,
            "n_train": self.n_train_,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FoldNormaliser:
        self = cls(float(d["pet"]["clip_suv"][1]), tuple(d["ct"]["window_hu"]), d["pet"].get("reference", "none"))
        self.mean_, self.std_, self.n_train_ = dict(d["mean"]), dict(d["std"]), int(d["n_train"])
        return self


def model_volumes(spec: ModelSpec, volumes: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The volumes ``spec`` reads out of :func:`prrt_utils.data.preprocess.load_volumes`'s: its images, and the
    organ masks beside PET when there are any (the liver reference and the radiomics need them)."""
    out = {m: volumes[m] for m in spec.image_inputs}
    if "pet" in out and "organs" in volumes:
        out["organs"] = volumes["organs"]
    return out


def model_inputs(spec: ModelSpec, data: CohortData, rows: np.ndarray, normaliser: FoldNormaliser | None,
                 lab_scaler: LabScaler | None) -> list[np.ndarray]:
    """Normalised inputs of ``rows`` in :data:`~prrt_utils.models.networks.INPUT_ORDER` order.

    Returns a list of arrays: PET/CT ``(n, 1, D, H, W)`` float32, labs ``(n, L)`` float32.
    """
    out = []
    for name in spec.ordered_inputs:
        if name == "labs":
            out.append(lab_scaler.transform(data.labs[rows]))
        else:
            if name not in data.volumes:
                raise TrainingError(f"model {spec.name!r} needs {name} volumes, which were not loaded")
            out.append(normaliser.transform({name: data.clipped(name, normaliser)[rows]}, clipped=True)[name])
    return out


def cohort_data(work_dir: str | Path, patient_ids: Sequence[str] | None = None, modalities: Sequence[str] = ("pet", "ct"),
                label: str = "pfs_short") -> Any:
    """Model inputs of the patients in ``WORK/folds.csv`` (or ``patient_ids``), read-only.

    Labs and labels come from ``WORK/cohort/cohort.csv``, volumes from
    :func:`prrt_utils.data.preprocess.load_volumes` (SUVbw, HU; ``(N, 1, D, H, W)``).
    Nothing is written.

    Returns
    -------
    prrt_utils.models.inputs.CohortData
    """

    work_dir = Path(work_dir)
    if patient_ids is None:
        folds = pd.read_csv(work_dir / "folds.csv", dtype={"patient_id": str})
        patient_ids = sorted(folds["patient_id"].unique())
    cohort = pd.read_csv(work_dir / "cohort" / "cohort.csv", dtype={"patient_id": str}).set_index("patient_id")
    missing = [p for p in patient_ids if p not in cohort.index]
    if missing:
        raise TrainingError(f"patient {missing[0]} is in the folds but not in cohort.csv ({len(missing)} missing)")
    cohort = cohort.loc[list(patient_ids)].reset_index()
    vols = load_volumes(work_dir, list(patient_ids)) if modalities else {}
    if vols and "organs" in vols and "pet" in modalities:  # PET referenced to the liver needs the organ masks
        modalities = (*modalities, "organs")
    return CohortData.from_frame(cohort, {m: vols[m] for m in modalities}, label=label)
