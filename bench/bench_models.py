"""Benchmark: time CT pretraining, one fold of each model and the whole protocol (7 models x 15 folds).

Usage (from the repository root)::

    .venv/bin/python bench/bench_models.py                 # one fold per model, extrapolated
    .venv/bin/python bench/bench_models.py --protocol      # also run all 7 x 15 folds with run_grid
    .venv/bin/python bench/bench_models.py --ref-epochs 1  # epochs of the MONAI resnet10 reference

Inputs are toy volumes of the paper's size (116 patients, 75 x 50 x 50 voxels,
``prrt_utils.models.toy.toy_cohort_data``): timing depends on shapes, not on
content. One fold is timed in this process with the thread count a worker of
``run_grid(n_jobs=...)`` gets (cores // n_jobs); the protocol estimate is
``sum over models of 15 x fold time / n_jobs``. The reference encoder,
MONAI's ``resnet10`` (``monai.networks.nets.resnet10(spatial_dims=3,
n_input_channels=1, num_classes=1)``, the MedicalNet family), is timed per
epoch on the same fold, and the ratio of epoch times is printed. CT pretraining
(:func:`prrt_utils.models.pretrain.pretrain_ct`, default settings) runs first on the same
volumes with label maps made from the toy CT (body, and the sphere as lesion),
because the seventh model starts from its checkpoint.

Numbers are wall-clock seconds on whatever else the machine is doing: say so
when quoting them. Results are printed and written to ``bench/results/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from prrt_utils.data.folds import CVConfig, fold_ids, make_folds
from prrt_utils.io import store
from prrt_utils.models.networks import load_registry, resolve_ct_init
from prrt_utils.models.pretrain import PretrainConfig, pretrain_on
from prrt_utils.models.toy import toy_cohort_data
from prrt_utils.models.training import TrainConfig, train_fold


def profile(threads: int, n_jobs: int) -> dict:
    return {
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "n_jobs (processes)": n_jobs,
        "torch threads per process": threads,
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "python": platform.python_version(),
        "load average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


GRID = np.array([[0.0, 0.0, 10.0, -250.0], [0.0, 10.0, 0.0, -250.0], [-10.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def write_work(work: Path, data) -> None:
    """Cohort, preprocessed volumes (DESIGN.md layout) and label maps for CT pretraining."""
    from prrt_utils.models.pretrain import save_label_map

    cohort = pd.DataFrame({"patient_id": data.patient_ids, "pfs_short": data.y, "has_imaging": True})
    for j, c in enumerate(data.lab_columns):
        cohort[c] = data.labs[:, j]
    store.write_csv(work / "cohort" / "cohort.csv", cohort)
    rows = []
    for i, pid in enumerate(data.patient_ids):
        f = work / "preprocessed" / f"{pid}.npz"
        f.parent.mkdir(parents=True, exist_ok=True)
        ct = data.volumes["ct"][i, 0]
        np.savez(f, pet=data.volumes["pet"][i, 0], ct=ct, affine=GRID)
        save_label_map(work / "labels" / f"{pid}.nii.gz", np.where(ct > 100, 10, np.where(ct > -500, 1, 0)), GRID)
        rows.append({"patient_id": pid, "status": "ok", "reason": "", "file": f.name, "sha256": ""})
    store.write_csv(work / "preprocessed" / "index.csv", pd.DataFrame(rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=116)
    ap.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--ref-epochs", type=int, default=1, help="epochs of the resnet10 reference (0: skip)")
    ap.add_argument("--protocol", action="store_true", help="run all 7 models x 15 folds with run_grid and time it")
    args = ap.parse_args(argv)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // args.n_jobs)
    torch.set_num_threads(threads)
    prof = profile(threads, args.n_jobs)
    print("profile:", json.dumps(prof, default=str))

    data = toy_cohort_data(args.patients, (75, 50, 50), seed=0)
    folds = make_folds(pd.DataFrame({"patient_id": data.patient_ids, "pfs_short": data.y}), 3, 5, 0)
    train, test = fold_ids(folds, 0, 0)
    cfg = TrainConfig(epochs=args.epochs, device="cpu")  # the defaults (AdamW, lr 0.01, decay 0.2, batch 16)
    print("training:", json.dumps({k: cfg.to_dict()[k] for k in ("optimizer", "lr", "weight_decay", "epochs", "batch_size")}))
    registry = load_registry()
    bench_dir = tempfile.TemporaryDirectory(prefix="bench_work_")
    work = Path(bench_dir.name)
    write_work(work, data)
    t0 = time.perf_counter()
    # timing only: the toy volumes stand in for a pretraining population outside the study (the book's
    # pretraining never uses study patients), pretrained from a work folder of no study, then put in place
    pre_work = work / "pretrain_only"
    card = pretrain_on(pre_work, work, work / "labels", PretrainConfig(device="cpu"), threads=cores).card
    shutil.copytree(pre_work / "pretrained", work / "pretrained")
    pretrain_s = time.perf_counter() - t0
    print(f"CT pretraining: {pretrain_s:.1f} s ({card['config']['epochs']} epochs, {card['n_train']} patients, "
          f"{cores} thread(s))", flush=True)
    rows = []
    for key, spec in registry.items():
        spec = resolve_ct_init(spec, work)
        t0 = time.perf_counter()
        out = train_fold(spec, cfg, data, train, test, 0, 0)
        sec = time.perf_counter() - t0
        rows.append({"model": key, "epochs": args.epochs if spec.kind == "cnn" else 0, "fold_s": sec,
                     "per_epoch_s": sec / args.epochs if spec.kind == "cnn" else float("nan")})
        print(f"  {key:<26s} one fold {sec:7.2f} s  (train {out.info['n_train']}, test {out.info['n_test']})", flush=True)
    table = pd.DataFrame(rows)
    serial = 15 * table["fold_s"].sum()
    estimate = serial / args.n_jobs
    print(f"protocol estimate: 7 models x 15 folds = {serial:.0f} s serial, {estimate:.0f} s "
          f"= {estimate / 60:.1f} min with {args.n_jobs} processes x {threads} thread(s) (target < 8 min)")

    result = {"profile": prof, "pretrain_ct_s": pretrain_s, "folds": rows, "protocol_estimate_s": estimate}
    if args.ref_epochs > 0:
        ref = registry["pet_only"].replace(name="pet_only_resnet10", encoder="resnet10")
        t0 = time.perf_counter()
        train_fold(ref, cfg.replace(epochs=args.ref_epochs), data, train, test, 0, 0)
        ref_epoch = (time.perf_counter() - t0) / args.ref_epochs
        ours = float(table.loc[table["model"] == "pet_only", "per_epoch_s"].iloc[0])
        print(f"reference MONAI resnet10 encoder (pet_only): {ref_epoch:.1f} s per epoch vs ours {ours:.2f} s "
              f"-> ratio {ref_epoch / ours:.0f}x; the protocol with it would take about "
              f"{estimate * ref_epoch / ours / 3600:.1f} h")
        result.update({"resnet10_per_epoch_s": ref_epoch, "ours_per_epoch_s": ours, "ratio": ref_epoch / ours})

    if args.protocol:
        from prrt_utils.models import crossval

        crossval._load_volumes = crossval._volumes_from_index  # DESIGN.md layout, no preprocessing module needed
        t0 = time.perf_counter()
        crossval.run_grid(list(registry), work, CVConfig(), cfg, n_jobs=args.n_jobs, progress=True)
        wall = time.perf_counter() - t0
        print(f"protocol measured: {wall:.0f} s = {wall / 60:.1f} min for 7 models x 15 folds "
              f"({args.n_jobs} processes x {threads} thread(s))")
        result["protocol_measured_s"] = wall

    bench_dir.cleanup()
    out = Path(__file__).resolve().parent / "results" / "bench_models.json"
    store.write_json(out, result)
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
