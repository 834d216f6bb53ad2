"""Benchmark: the three input steps `make book` repeats per patient or per fold, each against the way it was done before.

Usage (from the repository root)::

    .venv/bin/python bench/bench_io.py            # 4 synthetic patients at the default matrix sizes
    .venv/bin/python bench/bench_io.py --n 8

1. Writing a patient's DICOM series: :class:`prrt_utils.synthetic._SeriesWriter`
   (the shared header encoded once per series) against ``Dataset.save_as`` per
   slice (what the generator did before). Both write the same bytes; the
   benchmark checks it.
2. Loading a patient (:func:`prrt_utils.io.loading.load_patient`): every file read
   once (discovery keeps the datasets) against discovery with
   ``stop_before_pixels`` then a second read of every file.
3. A fold's image normalisation for a PET + CT model (116 patients, 75 x 50 x 50):
   the clipped volumes shared by the folds of a worker
   (:meth:`prrt_utils.models.inputs.CohortData.clipped`) against clipping the
   training and the prediction volumes again in every fold.

Each step is timed ``--repeats`` times in this process, one core; the best time
is kept. Numbers are wall-clock seconds on whatever else the machine is doing:
say so when quoting them. Results are printed and written to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from prrt_utils import synthetic as synth
from prrt_utils.io import store
from prrt_utils.io.dicom import load_series
from prrt_utils.io.discovery import discover_series
from prrt_utils.io.loading import load_patient


def best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def save_as_writer(self: synth._SeriesWriter, path: Path, sop_uid: str, ds) -> None:
    """The generator's previous way: the whole dataset of every slice encoded by ``save_as``."""
    from pydicom.dataset import Dataset

    whole = Dataset({e.tag: e for e in self.base})
    whole.update(ds)
    whole.SOPInstanceUID = sop_uid
    whole.file_meta = synth._file_meta(self.sop_class, sop_uid)
    whole.save_as(path, enforce_file_format=True)


def bench_writing(tmp: Path, n: int, repeats: int) -> dict[str, float]:
    cfg = synth.SynthConfig(n_patients=n, seed=0)
    fast_write = synth._SeriesWriter.write
    out = {}
    roots = {}
    for name, writer in (("series_writer", fast_write), ("save_as", save_as_writer)):
        synth._SeriesWriter.write = writer
        try:
            def run(name: str = name) -> None:
                root = tmp / f"write_{name}"
                shutil.rmtree(root, ignore_errors=True)  # else the generator resumes: nothing left to write
                roots[name] = synth.generate_cohort(cfg, root, progress=False)
            out[name] = best(run, repeats) / n
        finally:
            synth._SeriesWriter.write = fast_write
    same = store.sha256_tree(roots["series_writer"] / "imaging") == store.sha256_tree(roots["save_as"] / "imaging")
    if not same:
        raise SystemExit("the two writers wrote different files")
    return out


def bench_loading(imaging: Path, repeats: int) -> dict[str, float]:
    folders = sorted(p for p in imaging.iterdir() if p.is_dir())

    def once() -> None:
        for f in folders:
            load_patient(f, f.name)

    def twice() -> None:
        for f in folders:
            series = discover_series(f, f.name)  # headers only, as before
            for s in series:
                load_series(s, f.name)

    return {"read_once": best(once, repeats) / len(folders), "read_twice": best(twice, repeats) / len(folders)}


def bench_normalisation(repeats: int) -> dict[str, float]:
    from prrt_utils.models.inputs import CohortData, FoldNormaliser

    rng = np.random.default_rng(0)
    n, shape = 116, (75, 50, 50)
    vols = {"pet": rng.gamma(2.0, 1.0, (n, 1, *shape)).astype(np.float32),
            "ct": rng.normal(0, 300, (n, 1, *shape)).astype(np.float32)}
    data = CohortData(tuple(f"P{i}" for i in range(n)), np.arange(n) % 2, np.ones((n, 4)), vols)
    fit, every = np.arange(77), np.arange(n)

    def again() -> None:
        norm = FoldNormaliser().fit({m: vols[m][fit] for m in vols})
        for rows in (fit, every):
            norm.transform({m: vols[m][rows] for m in vols})

    def shared() -> None:
        norm = FoldNormaliser()
        norm.fit({m: data.clipped(m, norm)[fit] for m in vols}, clipped=True)
        for rows in (fit, every):
            norm.transform({m: data.clipped(m, norm)[rows] for m in vols}, clipped=True)

    shared()  # the first fold of a worker pays the clipping once
    return {"shared_clipped": best(shared, repeats), "clip_every_fold": best(again, repeats)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4, help="synthetic patients (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=2, help="timings per step; the best is kept (default: %(default)s)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        write = bench_writing(tmp, args.n, args.repeats)
        load = bench_loading(tmp / "write_series_writer" / "imaging", args.repeats)
    norm = bench_normalisation(args.repeats)
    rows = [
        ("write one patient's DICOM (s)", write["series_writer"], write["save_as"]),
        ("load one patient (s)", load["read_once"], load["read_twice"]),
        ("normalise one PET+CT fold (s)", norm["shared_clipped"], norm["clip_every_fold"]),
    ]
    print(f"{'step':34s} {'now':>8s} {'before':>8s} {'ratio':>7s}")
    for name, now, before in rows:
        print(f"{name:34s} {now:8.3f} {before:8.3f} {before / now:6.2f}x")
    result = {"python": platform.python_version(), "n_patients": args.n,
              "rows": [{"step": r[0], "now_s": r[1], "before_s": r[2], "ratio": r[2] / r[1]} for r in rows]}
    out = Path("bench/results/bench_io.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    store.write_json(out, result)


if __name__ == "__main__":
    main()
