"""``prrt train-final``: one model trained on every patient of the development cohort and saved as a package
(:mod:`prrt_utils.models.package` reads and applies it); with the survival models of chapter 07, the training the book runs after cross-validation.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import torch

from prrt_utils.data.preprocess import load_volumes
from prrt_utils.io import store
from prrt_utils.models import crossval, final
from prrt_utils.models.inputs import CohortData, model_volumes
from prrt_utils.models.networks import ModelSpec, get_spec, resolve_ct_init
from prrt_utils.models.package import (
    FINAL_REPEAT,
    PACKAGE_FORMAT,
    PackageError,
    cohort_summary,
    installed_versions,
)
from prrt_utils.models.training import TrainConfig, train_fold


def _development_predictions(work_dir: Path, model: str) -> pd.DataFrame:
    path = work_dir / "results" / model
    frames = [pd.read_parquet(p) for p in sorted(path.glob("r*_f*/predictions.parquet"))]
    if not frames:
        raise PackageError(f"{path} holds no finished fold: run the cross-validation of {model!r} first (prrt run)")
    pooled = pd.concat(frames).groupby("patient_id").agg(prob=("prob", "mean"), y_true=("y_true", "first"))
    return pooled.reset_index(drop=True)  # no ids in a package


def _source_key(work_dir: Path, spec: ModelSpec, cfg: TrainConfig, fold_dirs: list[Path]) -> str:
    """Hash of what a package is made from: declaration, settings, cohort, preprocessed index, finished folds."""
    import hashlib

    h = hashlib.sha256(json.dumps({"spec": spec.to_dict(), "train": cfg.to_dict()}, sort_keys=True).encode())
    for path in [work_dir / "cohort" / "cohort.csv", work_dir / "preprocessed" / "index.csv", *fold_dirs]:
        h.update(f"{path.name}:{store.sha256_file(path) if path.is_file() else '-'}".encode())
    return h.hexdigest()


def train_final(work_dir: str | Path, out_dir: str | Path, model: str, train_cfg: TrainConfig | None = None,
                label: str = "pfs_short", force: bool = False) -> Path:
    """Fit ``model`` on every eligible patient of ``work_dir`` and write its package to ``out_dir``.

    The cross-validation of the same model must be finished in ``WORK/results``
    (its fold models form the ensemble and its out-of-fold predictions the
    development distribution). The folder is written under a temporary name
    and renamed into place: a package is whole or absent.
    """

    work_dir, out_dir = Path(work_dir), Path(out_dir)
    cfg = train_cfg or TrainConfig()
    declared = get_spec(model)
    fold_dirs = sorted((work_dir / "results" / model).glob("r*_f*/done.json"))
    if not fold_dirs:
        raise PackageError(f"no finished fold of {model!r} in {work_dir / 'results'}: run its cross-validation first")
    key = _source_key(work_dir, declared, cfg, fold_dirs)
    if (out_dir / "manifest.json").is_file() and not force:
        if json.loads((out_dir / "manifest.json").read_text()).get("source_key") == key:
            return out_dir  # made from the same results, settings and cohort: reused
        raise PackageError(f"{out_dir} holds a package made from other results or settings: choose another "
                           "folder or pass force")
    if out_dir.exists() and not force:
        raise PackageError(f"{out_dir} exists and is not a package: choose another folder")
    spec = resolve_ct_init(declared, work_dir)
    cohort = crossval.eligible_cohort(work_dir, label, require_images=bool(spec.image_inputs))
    ids = cohort["patient_id"].tolist()
    volumes = load_volumes(work_dir, ids) if spec.image_inputs else {}
    data = CohortData.from_frame(cohort, model_volumes(spec, volumes), label=label)
    development = _development_predictions(work_dir, model)
    result = train_fold(spec, cfg, data, ids, [], FINAL_REPEAT, 0)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        final = tmp / "final"
        final.mkdir()
        if spec.kind != "cnn":
            import joblib

            joblib.dump(result.model, final / "forest.joblib")
        else:
            torch.save(result.model.state_dict(), final / "weights.pt")
        store.write_json(final / "normalisation.json", result.normalisation)
        for done in fold_dirs:
            src, dst = done.parent, tmp / "folds" / done.parent.name
            dst.mkdir(parents=True)
            weights = json.loads(done.read_text())["weights"]
            for name in (weights, "normalisation.json"):
                shutil.copy2(src / name, dst / name)
        # the CT branch's weights are in the fitted model: a package needs no checkpoint
        store.write_text(tmp / "model.yaml", declared.replace(ct_init=None, ct_init_prefix=None).to_yaml())
        store.write_text(tmp / "train.yaml", cfg.to_yaml())
        shutil.copy2(work_dir / "preprocessed" / "config.yaml", tmp / "preprocess.yaml")
        store.write_parquet(tmp / "development.parquet", development)
        summary = cohort_summary(cohort, volumes, data.lab_columns, label)
        summary["pretrained_ct_note"] = declared.ct_init_note
        store.write_json(tmp / "summary.json", summary)
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        store.write_json(tmp / "manifest.json", {
            "format": PACKAGE_FORMAT,
            "model": model,
            "kind": spec.kind,
            "inputs": list(spec.ordered_inputs),
            "lab_columns": list(data.lab_columns),
            "img_size": list(next(iter(volumes.values())).shape[2:]) if volumes else None,
            "label": label,
            "n_development": len(ids),
            "n_fold_models": len(fold_dirs),
            "versions": installed_versions(),
            "source_key": key,
            "sha256": {f: store.sha256_file(tmp / f) for f in files},
        })
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def final_package(work_dir: str | Path, model: str, profile: str = "default", seed: int = 0,
                  epochs: int = 0) -> Path:
    """``WORK/packages/<model>/``: the final model of chapter 08, trained, or reused when made from the same
    results and settings (:func:`prrt_utils.models.final.train_final`). The book trains it as a stage before
    the read-only pages; the page then reuses it."""

    cfg = TrainConfig.profile(profile, seed=seed, **({"epochs": int(epochs)} if epochs else {}))
    return final.train_final(work_dir, Path(work_dir) / "packages" / model, model, cfg)
