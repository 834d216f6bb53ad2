"""Run every fold of every chosen model, in parallel, resumably (paper 2.5-2.6).

:func:`run_grid` is the entry point of the models stage. It

1. reads the cohort (``WORK/cohort/cohort.csv``) and keeps the patients every
   model can use (imaging present and preprocessed, see :func:`eligible_cohort`);
2. makes or reuses the shared splits (``WORK/folds.csv``, :mod:`prrt_utils.data.folds`);
3. caches the preprocessed volumes of those patients once as ``.npy`` files
   (``WORK/cache/``) that every worker memory-maps, so volumes are read from
   disk once per worker and shared through the page cache, not once per fold;
4. runs the unfinished folds: in this process (``n_jobs=1``), in local
   processes (``concurrent.futures.ProcessPoolExecutor``, spawn context, torch
   threads = cores // n_jobs per process) or on a Dask cluster
   (``scheduler="tcp://host:8786"``; the work directory must then be on a
   file system the workers see under the same path);
5. concatenates every finished fold into ``WORK/results/predictions.parquet``
   (:func:`collect_results`).

A fold is finished when its ``done.json`` exists; rerunning skips finished
folds, so an interrupted grid resumes where it stopped, and because each fold
is seeded from (seed, repeat, fold, model) alone the result equals that of an
uninterrupted run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prrt_utils.data.folds import CVConfig, ensure_folds
from prrt_utils.data.preprocess import load_volumes
from prrt_utils.io import store
from prrt_utils.models.inputs import CohortData
from prrt_utils.models.networks import LAB_COLUMNS, ModelSpec, get_spec, resolve_ct_init
from prrt_utils.models.stored import (
    GridError,
    collect_results,
    fold_dir,
)
from prrt_utils.models.training import TrainConfig, fold_status, run_fold

__all__ = [
    "eligible_cohort",
    "plan_grid",
    "prepare_inputs",
    "run_grid",
    "run_tasks",
]


# --------------------------------------------------------------------------- inputs


def eligible_cohort(work_dir: str | Path, label: str = "pfs_short", require_images: bool = True) -> pd.DataFrame:
    """Patients every model can use: in the cohort, with a label, imaging and preprocessed volumes.

    The same patients enter the splits of every model (the paper compares models
    on the same folds), so a patient without usable images is left out of the
    laboratory-only Random Forest too.

    Parameters
    ----------
    work_dir : path
        ``WORK``; reads ``cohort/cohort.csv`` and ``preprocessed/index.csv``.
    label : str
        Binary outcome column.
    require_images : bool
        If false and no preprocessing index exists, every labelled cohort
        patient is eligible (a laboratory-only run).

    Returns
    -------
    DataFrame
        The cohort rows kept, sorted by ``patient_id``.
    """
    work_dir = Path(work_dir)
    path = work_dir / "cohort" / "cohort.csv"
    if not path.exists():
        raise GridError(f"{path} not found: build the cohort first (prrt cohort)")
    cohort = pd.read_csv(path, dtype={"patient_id": str})
    if label not in cohort.columns:
        raise GridError(f"{path} has no {label!r} column")
    cohort = cohort[cohort[label].notna()]
    if "has_imaging" in cohort.columns:
        cohort = cohort[cohort["has_imaging"].astype(str).str.lower().isin(["1", "true", "yes"])]
    index_path = work_dir / "preprocessed" / "index.csv"
    if index_path.exists():
        index = pd.read_csv(index_path, dtype={"patient_id": str})
        ok = set(index.loc[index["status"] == "ok", "patient_id"])
        cohort = cohort[cohort["patient_id"].isin(ok)]
    elif require_images:
        raise GridError(f"{index_path} not found: preprocess the images first (prrt preprocess)")
    if cohort.empty:
        raise GridError("no patient is eligible (labelled, with imaging, preprocessed)")
    cohort = cohort.assign(**{label: cohort[label].astype(int)})
    return cohort.sort_values("patient_id", kind="stable").reset_index(drop=True)


def _volumes_from_index(work_dir: Path, ids: list[str]) -> dict[str, np.ndarray]:
    """Read ``WORK/preprocessed/<file>.npz`` (``pet``, ``ct``: ``(D, H, W)``) as DESIGN.md specifies."""
    index = pd.read_csv(work_dir / "preprocessed" / "index.csv", dtype={"patient_id": str}).set_index("patient_id")
    out: dict[str, list[np.ndarray]] = {"pet": [], "ct": []}
    for pid in ids:
        with np.load(store.child(work_dir / "preprocessed", index.loc[pid, "file"])) as z:
            for m in out:
                out[m].append(z[m].astype(np.float32)[None])
    return {m: np.stack(v) for m, v in out.items()}


def _load_volumes(work_dir: Path, ids: list[str]) -> dict[str, np.ndarray]:
    """The preprocessing stage's reader (tests swap in :func:`_volumes_from_index` for toy folders)."""
    return load_volumes(work_dir, ids)


def prepare_inputs(work_dir: str | Path, cohort: pd.DataFrame, modalities: Sequence[str],
                   label: str = "pfs_short") -> Path:
    """Write the model inputs of ``cohort`` once and return the manifest path.

    Volumes go to ``WORK/cache/volumes/<modality>_<key>.npy`` (float32,
    ``(N, 1, D, H, W)``; the organ masks as ``organs``, beside PET), keyed by the patient ids and the SHA-256 of their
    preprocessed files, so a changed preprocessing gives a new cache. The
    manifest (``WORK/cache/inputs_<key>.json``) lists ids, labels, labs and the
    ``.npy`` files; workers open it with :func:`_worker_data`.
    """
    work_dir = Path(work_dir).resolve()
    ids = cohort["patient_id"].astype(str).tolist()
    index_path = work_dir / "preprocessed" / "index.csv"
    h = hashlib.sha256("\n".join(ids).encode())
    if index_path.exists():
        index = pd.read_csv(index_path, dtype={"patient_id": str}).set_index("patient_id")
        if "sha256" in index.columns:
            h.update("\n".join(str(index.loc[p, "sha256"]) for p in ids if p in index.index).encode())
    key = h.hexdigest()[:16]
    cache = work_dir / "cache"
    files = {m: cache / "volumes" / f"{m}_{key}.npy" for m in sorted(modalities)}
    organs = cache / "volumes" / f"organs_{key}.npy"
    if any(not f.exists() for f in files.values()):
        vols = _load_volumes(work_dir, ids)
        for m in vols:  # every modality read is cached, so that a later model needing it reads nothing
            target = cache / "volumes" / f"{m}_{key}.npy"
            if target.exists():
                continue
            arr = np.ascontiguousarray(vols[m], dtype=np.uint8 if m == "organs" else np.float32)
            if arr.shape[0] != len(ids) or arr.ndim != 5:
                raise GridError(f"load_volumes returned {m} of shape {arr.shape} for {len(ids)} patients")
            with store.atomic_path(target) as tmp, open(tmp, "wb") as fh:
                np.save(fh, arr)
    if "pet" in files and organs.exists():  # the PET models' liver reference and organ masking need them
        files["organs"] = organs
    manifest = {
        "patient_id": ids,
        "y": cohort[label].astype(int).tolist(),
        "labs": cohort[list(LAB_COLUMNS)].to_numpy(dtype=float).tolist(),
        "lab_columns": list(LAB_COLUMNS),
        "volumes": {m: str(f) for m, f in files.items()},
    }
    # what a fold's results depend on besides the splits: the patients' preprocessed files, labs and labels
    # (independent of which modalities this run loads, so models run separately share it)
    manifest["inputs_sha256"] = hashlib.sha256(
        json.dumps([key, manifest["y"], manifest["labs"]], sort_keys=True).encode()
    ).hexdigest()
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"inputs_{digest}.json"  # keyed on content: changed labs or labels give a new manifest
    if not path.exists():
        store.write_json(path, manifest)
    return path


@functools.lru_cache(maxsize=4)
def _worker_data(manifest: str) -> CohortData:
    """Model inputs of a manifest, memory-mapped; cached per process (one read per worker)."""
    m = json.loads(Path(manifest).read_text())
    vols = {k: np.load(v, mmap_mode="r") for k, v in m["volumes"].items()}
    return CohortData(
        patient_ids=tuple(m["patient_id"]),
        y=np.asarray(m["y"], dtype=int),
        labs=np.asarray(m["labs"], dtype=float),
        volumes=vols,
        lab_columns=tuple(m["lab_columns"]),
    )


@functools.lru_cache(maxsize=4)
def _worker_folds(path: str) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"patient_id": str})


# --------------------------------------------------------------------------- tasks


def _run_task(task: dict[str, Any]) -> dict[str, Any]:
    """Run one fold (in any process); the task holds plain values only, so it pickles cheaply."""
    import torch

    if task["threads"]:
        torch.set_num_threads(int(task["threads"]))
    spec = ModelSpec.from_dict(task["spec"])
    cfg = TrainConfig.from_dict(task["train"])
    t0 = time.perf_counter()
    try:
        status = run_fold(
            spec,
            cfg,
            _worker_data(task["manifest"]),
            _worker_folds(task["folds"]),
            task["repeat"],
            task["fold"],
            task["work_dir"],
            folds_sha256=task["folds_sha256"],
            force=task["force"],
        )
    except Exception as exc:
        raise GridError(f"model {spec.name}, repeat {task['repeat']}, fold {task['fold']}: {exc}") from exc
    return {"model": spec.name, "repeat": task["repeat"], "fold": task["fold"], "status": status,
            "seconds": time.perf_counter() - t0}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _execute(tasks: list[dict[str, Any]], n_jobs: int, scheduler: Any, bar: Any) -> list[dict[str, Any]]:
    done: list[dict[str, Any]] = []

    def tick(r: dict[str, Any]) -> None:
        done.append(r)
        if bar is not None:
            bar.set_postfix_str(f"{r['model']} r{r['repeat']}f{r['fold']} {r['seconds']:.0f}s")
            bar.update(1)

    if scheduler:
        from dask.distributed import Client
        from dask.distributed import as_completed as dask_completed

        client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
        try:
            futures = [client.submit(_run_task, t, pure=False, key=f"fold-{t['spec']['name']}-r{t['repeat']}f{t['fold']}-{time.time_ns()}") for t in tasks]
            for fut in dask_completed(futures):
                tick(fut.result())
        finally:
            if client is not scheduler:
                client.close()
    elif n_jobs <= 1:
        for t in tasks:
            tick(_run_task(t))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_run_task, t) for t in tasks]
            try:
                for fut in as_completed(futures):
                    tick(fut.result())
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    return done


def run_grid(
    models: Iterable[str | ModelSpec],
    work_dir: str | Path,
    cv: CVConfig | None = None,
    train_cfg: TrainConfig | None = None,
    n_jobs: int = 2,
    scheduler: Any = None,
    progress: bool = True,
    *,
    torch_threads: int | None = None,
    force: bool = False,
    label: str = "pfs_short",
) -> pd.DataFrame:
    """Train and evaluate ``models`` on every fold of the repeated cross-validation (paper 2.6).

    Parameters
    ----------
    models : iterable of str or ModelSpec
        Registry keys (``models/*.yaml``) or declarations.
    work_dir : path
        ``WORK``: reads ``cohort/``, ``preprocessed/``; writes ``folds.csv``,
        ``cache/``, ``results/``.
    cv : CVConfig, optional
        Splits (default: 5 repeats of stratified 3-fold, seed 0).
    train_cfg : TrainConfig, optional
        Training settings (default: the paper's).
    n_jobs : int
        Folds run at once as local processes (ignored with ``scheduler``).
        ``1`` runs them in this process.
    scheduler : str or dask.distributed.Client, optional
        Dask scheduler address (or a client): folds run on its workers.
    progress : bool
        Show a tqdm bar (folds done of all folds, time left).
    torch_threads : int, optional
        Intra-op threads per fold: default ``cores // n_jobs`` locally, 1 on Dask.
    force : bool
        Retrain finished folds whose configuration differs instead of refusing.
    label : str
        Outcome column of the cohort.

    Returns
    -------
    DataFrame
        The predictions of ``models`` over all their folds (``WORK/results/predictions.parquet``
        holds those of every model in the work directory).
    """
    work_dir, models = Path(work_dir).resolve(), list(models)
    tasks, n_done = plan_grid(models, work_dir, cv, train_cfg, n_jobs, scheduler, torch_threads=torch_threads,
                              force=force, label=label)
    run_tasks(tasks, n_jobs, scheduler, progress, n_done=n_done)
    return collect_results(work_dir, [get_spec(m).name for m in models])


def plan_grid(
    models: Iterable[str | ModelSpec],
    work_dir: str | Path,
    cv: CVConfig | None = None,
    train_cfg: TrainConfig | None = None,
    n_jobs: int = 2,
    scheduler: Any = None,
    *,
    torch_threads: int | None = None,
    force: bool = False,
    label: str = "pfs_short",
) -> tuple[list[dict[str, Any]], int]:
    """The unfinished folds of :func:`run_grid` as tasks (plain values), and how many folds are done already.

    Everything :func:`run_grid` does before training: the eligible cohort, the splits, the cached
    inputs, the stale check, and each model's ``model.yaml`` and ``train.yaml``. Tasks of several
    work folders (say, runs on differently labelled copies of one cohort) can then be trained in ONE
    pool of workers by :func:`run_tasks`. Same parameters as :func:`run_grid`.
    """
    work_dir = Path(work_dir).resolve()
    cv = cv or CVConfig(label=label)
    train_cfg = train_cfg or TrainConfig()
    specs = [resolve_ct_init(get_spec(m), work_dir) for m in models]
    if len({s.name for s in specs}) != len(specs):
        raise GridError(f"model names must be unique, got {[s.name for s in specs]}")
    cohort = eligible_cohort(work_dir, cv.label, require_images=any(s.image_inputs for s in specs))
    folds = ensure_folds(cohort, work_dir, cv)
    folds_csv = work_dir / "folds.csv"
    modalities = sorted({m for s in specs if s.kind != "random_forest" for m in s.image_inputs})
    manifest = prepare_inputs(work_dir, cohort, modalities, cv.label)
    # a finished fold is reused only for the same splits AND the same inputs (re-preprocessed volumes or
    # corrected labs make it stale instead of silently reused)
    inputs_sha = json.loads(manifest.read_text())["inputs_sha256"]
    folds_sha = hashlib.sha256(f"{store.sha256_file(folds_csv)}:{inputs_sha}".encode()).hexdigest()
    if torch_threads is None:
        torch_threads = 1 if scheduler else max(1, _cores() // max(1, n_jobs))
    pairs = sorted(set(zip(folds["repeat"], folds["fold"], strict=True)))
    tasks, n_done = [], 0
    for s in specs:
        for repeat, fold in pairs:
            status, differs = fold_status(s, train_cfg, work_dir, repeat, fold, folds_sha)
            if status == "done":
                n_done += 1
                continue
            if status == "stale" and not force:
                raise GridError(
                    f"{fold_dir(work_dir, s.name, repeat, fold)} was finished with a different "
                    f"{', '.join(differs)}{_profile_hint(work_dir, s.name, train_cfg, differs)}; delete "
                    f"{work_dir / 'results' / s.name} or pass force=True"
                )
            tasks.append(
                {
                    "spec": s.to_dict(),
                    "train": train_cfg.to_dict(),
                    "repeat": int(repeat),
                    "fold": int(fold),
                    "manifest": str(manifest),
                    "folds": str(folds_csv),
                    "folds_sha256": folds_sha,
                    "work_dir": str(work_dir),
                    "threads": torch_threads,
                    "force": force,
                }
            )
    for s in specs:  # after the stale check: never relabel folds trained with other settings
        store.write_text(work_dir / "results" / s.name / "model.yaml", s.to_yaml())
        store.write_text(work_dir / "results" / s.name / "train.yaml", train_cfg.to_yaml())
    return tasks, n_done


def run_tasks(tasks: list[dict[str, Any]], n_jobs: int = 2, scheduler: Any = None, progress: bool = True,
              n_done: int = 0) -> list[dict[str, Any]]:
    """Train the tasks of :func:`plan_grid` (of one or several work folders) in one pool; one result per fold."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        threads = tasks[0]["threads"] if tasks else "-"
        bar = tqdm(total=n_done + len(tasks), initial=n_done, unit="fold", desc="folds",
                   postfix=f"{n_jobs if not scheduler else 'dask'} x {threads} thread(s)")
    try:
        return _execute(tasks, n_jobs, scheduler, bar)
    finally:
        if bar is not None:
            bar.close()


def _profile_hint(work_dir: Path, model: str, train_cfg: TrainConfig, differs: Sequence[str]) -> str:
    """When the training settings differ: which profile the stored folds and this run have (else nothing)."""
    path = work_dir / "results" / model / "train.yaml"
    if "train_hash" not in differs or not path.is_file():
        return ""
    import yaml

    stored = (yaml.safe_load(path.read_text()) or {}).get("profile_name", "default")
    if stored == train_cfg.profile_name:
        return ""
    return (f" (they were trained with the training profile {stored!r}, this run asks for "
            f"{train_cfg.profile_name!r}: use another --work folder to keep both)")


# --------------------------------------------------------------------------- reading results


