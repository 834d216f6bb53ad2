"""``prrt check``: validate a centre's export before any training, one row per patient.

:func:`check` runs the intake (:func:`prrt_utils.data.intake.intake`) into a
scratch folder, the cohort stage's row checks and the loader (and, by default,
the preprocessing of every patient, without writing), and returns one row per
patient: what is usable and, if not, why. :func:`format_check` prints it for a
terminal.

The checks are those of :mod:`prrt_utils.data.cohort`,
:mod:`prrt_utils.io.loading` and :mod:`prrt_utils.data.preprocess`, so that a
patient ``prrt check`` calls usable is not excluded later.
"""

from __future__ import annotations

import re
import tempfile
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from prrt_utils.data.anatomy import SYNTHETIC_LABEL_MAP, find_labels, label_map_path
from prrt_utils.data.cohort import CohortConfig, load_clinical, patient_id_problem
from prrt_utils.data.cohort_source import CohortSource
from prrt_utils.data.intake import ALL, intake, read_report
from prrt_utils.data.preprocess import PreprocessConfig, prepare_patient, registered_pairs
from prrt_utils.io import store
from prrt_utils.io.discovery import check_pairing, choose_series, discover_series
from prrt_utils.io.images import InputError
from prrt_utils.io.log import DEBUG_LOG, get_logger, pydicom_messages, scrub, write_debug
from prrt_utils.io.suv import suv_factor

__all__ = ["CHECK_COLUMNS", "check", "format_check"]

CHECK_COLUMNS = ("patient_id", "line", "clinical", "pet", "ct", "usable", "reason")


def _describe(vol: Any) -> str:
    """``"ok: 30 slices, 40x40, SUVbw from BQML"``: what was loaded (no identifying data)."""
    d, h, w = vol.shape
    stored = vol.meta.get("pet_units_stored")
    return f"ok: {d} slices, {h}x{w}, {vol.units}" + (f" from {stored}" if stored else "")


def _ct_header_problem(ds: Any) -> str:
    if "ModalityLUTSequence" in ds or {"RescaleSlope", "RescaleIntercept"} <= set(ds.dir()):
        return ""
    return "CT has no RescaleSlope/RescaleIntercept: stored values cannot be converted to HU"


def _series_status(problem: str) -> tuple[str, str]:
    """``(pet, ct)`` status words for a refused patient: which series the reason is about."""
    ct = bool(re.search(r"\bCT\b|ct\.nii", problem))
    pet = bool(re.search(r"\bPET\b|pet\.(nii|json)|SUV|Radio|Patient|Decay|Units|half-life|injection|dose", problem))
    if pet == ct:  # both, or neither named: the pair as a whole
        return "problem", "problem"
    return ("problem", "—") if pet else ("—", "problem")


def _check_quick(folder: Path, pid: str, registered: bool) -> tuple[str, str, str]:
    """Headers only: series found and chosen, PET and CT one acquisition, SUV computable, CT rescale tags."""
    import pydicom  # lazy, as in prrt_utils.io.loading: only the quick check reads headers itself

    series = discover_series(folder, pid)
    if not series:
        raise InputError(pid, f"no PET series found (no PET or CT DICOM series; {series.n_non_dicom} non-DICOM files)")
    pet_s, ct_s, _ = choose_series(series, pid)
    check_pairing(pet_s, ct_s, pid, registered)
    head = pydicom.dcmread(pet_s.files[0][1], stop_before_pixels=True, force=True)
    suv_factor(head, pid)
    ct_head = pydicom.dcmread(ct_s.files[0][1], stop_before_pixels=True, force=True)
    if _ct_header_problem(ct_head):
        raise InputError(pid, _ct_header_problem(ct_head))
    pet = f"ok (headers): {pet_s.n_slices} slices" + (f", {pet_s.units}" if pet_s.units else "")
    return pet, f"ok (headers): {ct_s.n_slices} slices", ""


def _check_images(job: tuple[str, str, bool, str, bool, Any, str]) -> tuple[str, str, str, str]:
    """``(patient_id, pet, ct, problem)`` of one patient folder, writing nothing but a debug log.

    The verdict is :func:`prrt_utils.data.preprocess.prepare_patient`'s, the very
    function the preprocessing stage applies (``quick``: the header checks
    only), so that a patient ``prrt check`` calls usable is not excluded later.
    An unexpected error's scrubbed traceback is appended to
    ``<work>/logs/debug.log`` when the job names a work folder (as the
    preprocessing stage does), and logged at debug level (``-v``) either way.
    """
    folder_s, pid, quick, centre_root, registered, labels, work = job
    folder = Path(folder_s)
    try:
        with pydicom_messages():
            if quick and not ((folder / "pet.nii.gz").exists() or (folder / "ct.nii.gz").exists()):
                return (pid, *_check_quick(folder, pid, registered))
            prepared = prepare_patient(folder, pid, PreprocessConfig(), registered=registered, labels=labels)
        return pid, _describe(prepared.images.pet), _describe(prepared.images.ct), ""
    except InputError as exc:
        return (pid, *_series_status(exc.problem), exc.problem)
    except Exception as exc:  # a bug or a resource problem: reported, never silent
        message = scrub(f"unexpected {type(exc).__name__}: {exc}", [folder, centre_root])
        trace = scrub("".join(traceback.format_exception(exc)), [folder, centre_root])
        get_logger("check").debug("patient %s: %s", pid, trace)
        if work:
            write_debug(work, f"check patient {pid}", exc, [folder, folder.parent, centre_root])
            where = f"traceback in {DEBUG_LOG.as_posix()} of the work folder; prrt check -v shows it too"
        else:
            where = "prrt check -v shows the traceback"
        return pid, "problem", "problem", f"{message} ({where})"


def check(
    source: CohortSource,
    *,
    quick: bool = False,
    n_jobs: int = 1,
    out_dir: str | Path | None = None,
    work_dir: str | Path | None = None,
) -> pd.DataFrame:
    """Validate a centre's export before any training: one row per patient, usable or not, and why.

    Parameters
    ----------
    source : CohortSource
    quick : bool
        ``False`` (default): every patient's images are loaded and preprocessed
        in memory, exactly as the preprocessing stage will (nothing is
        written). ``True``: DICOM headers only (series found and chosen, SUV
        computable, CT rescale tags), no voxel read; slice geometry (missing
        or duplicated slices, tilt) and coverage are then not checked.
    n_jobs : int
        Worker processes for the image checks.
    out_dir : path, optional
        Where the intake is written (reused if unchanged); default a scratch
        folder that is removed afterwards.
    work_dir : path, optional
        A work folder for the debug log: an unexpected error's scrubbed
        traceback is appended to ``<work_dir>/logs/debug.log``
        (:func:`prrt_utils.io.log.write_debug`, as preprocessing does). Nothing
        else is written there.

    Returns
    -------
    DataFrame
        :data:`CHECK_COLUMNS`: ``patient_id`` (pseudonym if pseudonymised),
        ``line`` (row of the centre's table; empty for an image folder without
        a row), ``clinical`` (``ok``, ``censored``, ``problem``, ``no row``),
        ``pet`` and ``ct`` (what was found, or ``problem``/``—``), ``usable``
        (bool: the patient reaches the models), ``reason`` (every problem,
        ``;``-separated). ``attrs["notes"]`` holds the column-level notes of
        the intake (conversions, columns left empty, pseudonymisation).

    Raises
    ------
    IntakeError
        When the export cannot be read at all (see :func:`prrt_utils.data.intake.intake`).
    """
    if out_dir is None:
        with tempfile.TemporaryDirectory(prefix="prrt-check-") as tmp:
            scratch = source.replace(link="symlink")  # a scratch copy: no hard links needed
            return check(scratch, quick=quick, n_jobs=n_jobs, out_dir=Path(tmp) / source.name, work_dir=work_dir)
    data = intake(source, out_dir)
    report = read_report(data)
    cohort_cfg = CohortConfig(pfs_threshold_months=float(source.pfs_threshold_months))
    table = pd.read_csv(data / "clinical.csv", dtype=str, keep_default_na=False)
    kept, problems = load_clinical(data / "clinical.csv", cohort_cfg)
    lines = [str(i + 2) for i in range(len(table))]

    imaging = data / "imaging"
    folders = {p.name for p in imaging.iterdir() if p.is_dir()} if imaging.is_dir() else set()
    folders = {f for f in folders if store.is_utf8_name(f)}
    with_files = {name for name in folders if any(q.is_file() for q in (imaging / name).rglob("*"))}
    ids = [pid for pid in dict.fromkeys(table["patient_id"]) if pid and pid in with_files and not patient_id_problem(pid)]
    registered = registered_pairs(data)
    labels_dir, codes = find_labels(data)
    label_map = tuple(codes or SYNTHETIC_LABEL_MAP)

    def labels(pid: str) -> tuple[str, tuple[str, ...]] | None:
        found = label_map_path(labels_dir, pid) if labels_dir is not None else None
        return None if found is None else (str(found), label_map)

    jobs = [
        (str(store.child(imaging, pid)), pid, quick, str(source.imaging_path.resolve()), pid in registered, labels(pid),
         str(work_dir) if work_dir is not None else "")
        for pid in ids
    ]
    if n_jobs > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=n_jobs) as pool:
            results = list(pool.map(_check_images, jobs))
    else:
        results = [_check_images(job) for job in jobs]
    images = {r[0]: r[1:] for r in results}

    by_pid: dict[str, list[str]] = {}
    for pid, reason in zip(problems["patient_id"], problems["reason"], strict=True):
        text = (
            reason.split(": ", 1)[1]
            if reason.startswith(("patient ", "row at line")) and ": " in reason
            else reason
        )
        by_pid.setdefault(pid, []).append(text.replace("clinical.csv", source.table_path.name))
    intake_notes: dict[tuple[str, str], list[str]] = {}
    for r in report.itertuples():
        if r.patient_id != ALL and r.column != "imaging":
            intake_notes.setdefault((r.patient_id, r.line), []).append(r.problem)
    kept_ids = set(kept["patient_id"])
    kept_rows = kept.set_index("patient_id")
    thr = cohort_cfg.pfs_threshold_months
    rows = []
    for line, pid in zip(lines, table["patient_id"], strict=True):
        reasons = list(intake_notes.get((pid, line), []))
        key = pid if pid else f"(line {line})"
        if pid in kept_ids:
            if int(kept_rows.at[pid, "event"]) == 0:
                clinical = "censored"
                reasons.append(
                    f"censored at {kept_rows.at[pid, 'pfs_months']:g} months: kept for survival analysis, "
                    f"not classified (PFS <= {thr:g} months needs a progression event, as in the paper)"
                )
            else:
                clinical = "ok"
        else:
            clinical = "problem"
            reasons += [r for r in by_pid.get(key, []) if r not in reasons]
        if not pid:
            pet = ct = "—"
        elif pid not in folders:
            pet = ct = "—"
            reasons.append("no imaging folder")
        elif pid not in with_files:
            pet = ct = "—"
            reasons.append("imaging folder is empty")
        else:
            pet, ct, problem = images[pid]
            if problem:
                reasons.append(problem)
        usable = clinical == "ok" and pet.startswith("ok") and ct.startswith("ok")
        rows.append((key, line, clinical, pet, ct, usable, "; ".join(reasons)))
    listed = set(table["patient_id"])
    folder_notes = {r.patient_id: r.problem for r in report.itertuples() if r.column == "imaging" and not r.line}
    for pid in sorted(folders - listed):
        why = folder_notes.get(pid, "imaging folder without clinical row")
        rows.append((pid, "", "no row", "—", "—", False, why))
    out = pd.DataFrame(rows, columns=list(CHECK_COLUMNS))
    notes = report[report["patient_id"] == ALL]
    out.attrs["notes"] = [f"{r.column}: {r.problem}" for r in notes.itertuples()]
    return out


def format_check(result: pd.DataFrame) -> str:
    """The check as plain text for a terminal: the intake's notes, the table, why each patient is out, a count."""
    lines = [f"note: {n}" for n in result.attrs.get("notes", [])]
    table = result.drop(columns=["reason"]).assign(usable=result["usable"].map({True: "yes", False: "no"}))
    with pd.option_context(
        "display.max_rows",
        None,
        "display.max_columns",
        None,
        "display.width",
        250,
        "display.max_colwidth",
        80,
    ):
        lines.append(table.to_string(index=False))
    why = result[result["reason"] != ""]
    if len(why):
        lines.append("")
        lines += [
            f"{r.patient_id}"
            + (f" (line {r.line})" if r.line and not r.patient_id.startswith("(line") else "")
            + f": {r.reason}"
            for r in why.itertuples()
        ]
    n_ok = int(result["usable"].sum())
    n_cens = int((result["clinical"] == "censored").sum())
    lines.append("")
    lines.append(
        f"{n_ok} of {len(result)} patients usable for the models"
        + (f"; {n_cens} censored (kept for survival analysis, not classified)" if n_cens else "")
    )
    return "\n".join(lines)
