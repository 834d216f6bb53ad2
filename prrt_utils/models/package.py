"""Model packages: one model fitted on the whole development cohort, to be used elsewhere (issue 9).

:func:`train_final` fits a model on every eligible patient of a work folder and
writes a *package*, a folder that holds everything needed to apply it to new
patients without the development data:

* ``final/``: the model fitted on all development patients (``weights.pt`` or
  ``forest.joblib``) and its ``normalisation.json`` (laboratory scaling and image
  intensity statistics of those patients);
* ``folds/r<repeat>_f<fold>/``: the cross-validation models of the same
  declaration (copied from ``WORK/results``), whose spread over one patient is
  the prediction's uncertainty (an ensemble);
* ``model.yaml``, ``train.yaml``, ``preprocess.yaml``: the declaration, the
  training settings and the preprocessing configuration the volumes must be
  made with;
* ``development.parquet``: the out-of-fold probability of every development
  patient (mean over repeats) and outcome, no id, to place a new patient;
* ``summary.json``: the development cohort in numbers (size, share of short
  PFS, laboratory quantiles, image intensities) for shift checks;
* ``manifest.json``, written last: format, feature order, package versions and
  the SHA-256 of every file above.

:func:`load_package` refuses a package whose files changed, whose format is
another, or whose versions differ from the installed ones (major.minor of
prrt-pfs, torch, MONAI, scikit-learn), and :meth:`ModelPackage.check_preprocessing`
one whose preprocessing differs from the configuration about to be used, each
with a message that says what differs.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from prrt_utils import __version__
from prrt_utils.io import store
from prrt_utils.io.config import Config
from prrt_utils.models.inputs import CohortData, FoldNormaliser, LabScaler, model_inputs
from prrt_utils.models.networks import FusionNet, ModelSpec
from prrt_utils.models.training import TrainConfig

__all__ = [
    "PACKAGE_FORMAT",
    "ModelPackage",
    "PackageError",
    "cohort_summary",
    "installed_versions",
    "load_package",
]

PACKAGE_FORMAT = "prrt-pfs model package, version 1"
FINAL_REPEAT = 1000
"""Seed identity of the final fit (:func:`~prrt_utils.models.training.fold_seed` of repeat 1000, fold 0): no CV fold has it."""
_VERSIONED = ("prrt_pfs", "torch", "monai", "scikit-learn")


class PackageError(ValueError):
    """A package that cannot be written or used as it is; the message says what differs."""


def installed_versions() -> dict[str, str]:
    """Versions of the packages a model package depends on, as installed now."""
    import monai
    import sklearn


    return {"prrt_pfs": __version__, "torch": str(torch.__version__).split("+")[0], "monai": monai.__version__,
            "scikit-learn": sklearn.__version__, "python": platform.python_version()}


def _major_minor(v: str) -> str:
    return ".".join(v.split(".")[:2])


def cohort_summary(cohort: pd.DataFrame, volumes: dict[str, np.ndarray], lab_columns: Sequence[str],
                   label: str = "pfs_short") -> dict[str, Any]:
    """Non-identifying numbers of a cohort: size, outcome share, lab quantiles, image intensities per patient."""
    q = (0.05, 0.25, 0.5, 0.75, 0.95)
    out: dict[str, Any] = {"n_patients": int(len(cohort))}
    if label in cohort:
        out["share_short_pfs"] = float(cohort[label].mean())
    out["labs"] = {c: {f"q{int(p * 100):02d}": float(np.nanquantile(cohort[c].astype(float), p)) for p in q}
                   for c in lab_columns}
    per_patient = image_features(volumes)
    out["images"] = {k: {f"q{int(p * 100):02d}": float(np.quantile(v, p)) for p in q} for k, v in per_patient.items()}
    return out


def image_features(volumes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per patient: mean SUV in the body, 99th-percentile SUV, mean HU in the body (body = CT > -500 HU)."""
    out: dict[str, np.ndarray] = {}
    if "ct" not in volumes or not len(volumes["ct"]):
        return out
    ct = volumes["ct"][:, 0]
    body = ct > -500
    out["ct_mean_hu_body"] = np.array([c[b].mean() if b.any() else np.nan for c, b in zip(ct, body, strict=True)])
    if "pet" in volumes:
        pet = volumes["pet"][:, 0]
        out["pet_mean_suv_body"] = np.array([p[b].mean() if b.any() else np.nan for p, b in zip(pet, body, strict=True)])
        out["pet_p99_suv"] = np.array([np.percentile(p, 99) for p in pet])
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class _Member:
    model: Any
    normaliser: FoldNormaliser
    lab_scaler: LabScaler


@dataclasses.dataclass(frozen=True, eq=False)
class ModelPackage:
    """A loaded model package (:func:`load_package`)."""

    path: Path
    manifest: dict[str, Any]
    spec: ModelSpec
    train: TrainConfig
    final: _Member
    folds: tuple[_Member, ...]
    development: pd.DataFrame
    summary: dict[str, Any]

    def check_preprocessing(self, cfg: Config) -> None:
        """Refuse volumes made with another preprocessing configuration (``PreprocessConfig``), naming the fields."""
        import yaml

        ours = yaml.safe_load((self.path / "preprocess.yaml").read_text()) or {}
        theirs = cfg.to_dict()
        differ = sorted(k for k in set(ours) | set(theirs) if k != "on_error" and ours.get(k) != theirs.get(k))
        if differ:
            details = "; ".join(f"{k}: package {ours.get(k)!r}, here {theirs.get(k)!r}" for k in differ[:5])
            raise PackageError(f"{self.path.name} was trained on volumes preprocessed differently ({details}); "
                               "preprocess the new patients with the package's preprocess.yaml")

    def _probs(self, member: _Member, data: CohortData) -> np.ndarray:
        rows = np.arange(len(data.patient_ids))
        if self.spec.kind != "cnn":
            return member.model.predict_proba(data.features(self.spec, rows, member.lab_scaler))[:, 1]
        xs = [torch.from_numpy(x) for x in model_inputs(self.spec, data, rows, member.normaliser, member.lab_scaler)]
        with torch.no_grad():
            return torch.sigmoid(member.model(*xs)).double().numpy()

    def predict(self, data: CohortData) -> pd.DataFrame:
        """Probability of short PFS per patient: the final model's, and the spread of the fold models'.

        Returns ``patient_id, prob`` (final model), ``prob_folds_mean, prob_folds_q05, prob_folds_q95``.
        """
        if tuple(data.lab_columns) != tuple(self.manifest["lab_columns"]):
            raise PackageError(f"laboratory columns {data.lab_columns} differ from the package's "
                               f"{tuple(self.manifest['lab_columns'])} (order matters)")
        final = self._probs(self.final, data)
        folds = np.stack([self._probs(m, data) for m in self.folds], axis=1)
        return pd.DataFrame({
            "patient_id": list(data.patient_ids),
            "prob": final,
            "prob_folds_mean": folds.mean(axis=1),
            "prob_folds_q05": np.quantile(folds, 0.05, axis=1),
            "prob_folds_q95": np.quantile(folds, 0.95, axis=1),
        })


def _member(path: Path, spec: ModelSpec, n_labs: int, img_size: Sequence[int] | None) -> _Member:
    norm = json.loads((path / "normalisation.json").read_text())
    if spec.kind != "cnn":
        import joblib

        model = joblib.load(path / "forest.joblib" if (path / "forest.joblib").exists() else path / "weights.joblib")
    else:
        model = FusionNet(spec, n_labs=n_labs, img_size=img_size or (75, 50, 50))
        model.load_state_dict(torch.load(path / "weights.pt", map_location="cpu", weights_only=True))
        model.eval()
    return _Member(model, FoldNormaliser.from_dict(norm["images"]), LabScaler.from_dict(norm["labs"]))


def load_package(path: str | Path, check_versions: bool = True) -> ModelPackage:
    """Read a package; refuse it when a file changed, the format is another or versions differ.

    Versions are compared by major.minor for prrt-pfs, torch, MONAI and
    scikit-learn (a pickled forest or a state_dict of another minor version may
    not load, or load and predict differently).
    """
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise PackageError(f"{path} is not a model package (no manifest.json; made by `prrt train-final`)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != PACKAGE_FORMAT:
        raise PackageError(f"{path.name}: format {manifest.get('format')!r}, this version reads {PACKAGE_FORMAT!r}")
    changed = [f for f, sha in manifest["sha256"].items() if not (path / f).is_file() or store.sha256_file(path / f) != sha]
    if changed:
        raise PackageError(f"{path.name}: {len(changed)} file(s) missing or changed since packaging, e.g. {changed[:3]}")
    if check_versions:
        here = installed_versions()
        differ = [f"{k} {manifest['versions'].get(k)} (package) vs {here[k]} (installed)" for k in _VERSIONED
                  if _major_minor(str(manifest["versions"].get(k))) != _major_minor(here[k])]
        if differ:
            raise PackageError(f"{path.name} was made with other versions: {'; '.join(differ)}. Install those "
                               "versions, or retrain the package with these (prrt train-final)")
    spec = ModelSpec.from_yaml((path / "model.yaml").read_text())
    n_labs = len(manifest["lab_columns"])
    img = manifest.get("img_size")
    final = _member(path / "final", spec, n_labs, img)
    folds = tuple(_member(d, spec, n_labs, img) for d in sorted((path / "folds").iterdir()) if d.is_dir())
    return ModelPackage(path, manifest, spec, TrainConfig.from_yaml((path / "train.yaml").read_text()), final, folds,
                        pd.read_parquet(path / "development.parquet"), json.loads((path / "summary.json").read_text()))
