"""Cohort stage: validate the clinical table against the imaging folders (paper 2.1, 2.4).

Entry point :func:`build_cohort` reads ``DATA/clinical.csv`` and the folder
names under ``DATA/imaging/`` and writes, atomically, to ``WORK/cohort/``:

* ``cohort.csv``: the validated clinical columns (DESIGN "Raw export") plus
  ``de_ritis`` (AST/ALT), ``pfs_short`` (1 if ``pfs_months <= threshold``, 0
  otherwise, empty where the class is undefined), ``has_imaging`` and
  ``note`` (why a kept patient is not modelled, or empty);
* ``exclusions.csv`` (``patient_id, stage, reason``): every patient who will
  not reach the models, and why;
* ``config.yaml`` (the :class:`CohortConfig`) and ``done.json`` (config hash
  and input hashes, written last; the stage is skipped when they match).

Decisions (stated here so a clinician can check them):

* A row with a problem in its outcome, its laboratory values or its
  identifier (text in a numeric column, an implausible value, an unknown
  category, a duplicated ``patient_id``, a missing lab value) is left out of
  ``cohort.csv`` entirely, Table 1 included, and listed in ``exclusions.csv``
  with a message naming the patient, the column and the value. Keeping it in
  Table 1 but not in the models would make the table describe other patients
  than the models see. Missing *descriptive* values (age, Ki-67, grade, ...)
  are allowed: they are not model inputs.
* Patients without an imaging folder stay in ``cohort.csv`` with
  ``has_imaging = False`` (they describe the clinical cohort) and are listed in
  ``exclusions.csv``; an imaging folder without a clinical row is listed too.
* Censoring: the paper classifies only patients with a progression event
  (2.4, 3.2). With ``require_event=True`` every censored patient keeps
  ``pfs_short`` empty; with ``False`` a patient censored after the threshold is
  known to be long-PFS (0) and only one censored before it stays undefined.
* ``prrt_cycles`` is a consequence of progression (therapy stops at
  progression, paper 2.3): it is described in Table 1 and never a model input
  (:data:`FORBIDDEN_INPUTS`).

Table 1 and the Kaplan-Meier estimate of the cohort are :mod:`prrt_utils.data.cohort_stats`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prrt_utils.data.paper import PAPER_KM
from prrt_utils.io import store
from prrt_utils.io.config import Config
from prrt_utils.io.log import get_logger

__all__ = [
    "CLINICAL_COLUMNS",
    "FORBIDDEN_INPUTS",
    "LAB_COLUMNS",
    "PFS_THRESHOLD_MONTHS",
    "LAB_LABELS",
    "CohortConfig",
    "CohortError",
    "build_cohort",
    "load_clinical",
    "patient_id_problem",
    "read_clinical_text",
    "read_cohort",
    "read_exclusions",
]

PFS_THRESHOLD_MONTHS: float = PAPER_KM["threshold_months"]
"""The paper's split: short PFS is progression within 12 months (12.0 included); every default says it once, here."""

LAB_COLUMNS: tuple[str, ...] = ("ast_u_l", "alt_u_l", "cga_ug_l", "ggt_u_l")
"""Laboratory inputs of every model (paper 2.5: AST, ALT, CgA, GGT), units in the names."""

LAB_LABELS: dict[str, str] = {"ast_u_l": "AST (U/l)", "alt_u_l": "ALT (U/l)", "cga_ug_l": "CgA (µg/l)",
                              "ggt_u_l": "gamma-GT (U/l)"}
"""Each laboratory column in a clinician's words, with its unit (pages and reports)."""

FORBIDDEN_INPUTS: tuple[str, ...] = ("prrt_cycles", "pfs_months", "event", "pfs_short")
"""Columns measured after baseline or derived from the outcome: never a model input."""

MET_COLUMNS: tuple[str, ...] = (
    "met_hepatic",
    "met_lymphonodal",
    "met_osseous",
    "met_peritoneal",
    "met_pulmonal",
)

CLINICAL_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "age_years",
    "sex",
    "primary_site",
    *MET_COLUMNS,
    "functional",
    "grade",
    "ki67_pct",
    "prrt_cycles",
    "pfs_months",
    "event",
    *LAB_COLUMNS,
)
"""Required columns of ``clinical.csv`` (DESIGN "Raw export"); other columns are ignored, never copied."""

DERIVED_COLUMNS: tuple[str, ...] = ("de_ritis", "pfs_short", "has_imaging", "note")

CATEGORIES: dict[str, tuple[str, ...]] = {
    "sex": ("M", "F"),
    "primary_site": ("small_intestine", "pancreas", "colon_rectum", "stomach", "cup"),
    "functional": ("yes", "no", "unknown"),
    "grade": ("G1", "G2", "G3", "unknown"),
}
"""Allowed values of the categorical columns (matched case-insensitively, stored as here)."""

# Plausible ranges: (low, high, low is exclusive). Values outside are typing or
# unit errors (e.g. CgA in ng/ml vs ug/l is the same number, but AST of 28000
# U/l is not a liver). The paper's ranges (Table 1) lie far inside.
RANGES: dict[str, tuple[float, float, bool, str]] = {
    "age_years": (0.0, 120.0, True, "years"),
    "ki67_pct": (0.0, 100.0, False, "%"),
    "prrt_cycles": (0.0, 20.0, False, "cycles"),
    "pfs_months": (0.0, 600.0, False, "months"),
    "ast_u_l": (0.0, 10_000.0, True, "U/l"),
    "alt_u_l": (0.0, 10_000.0, True, "U/l"),
    "cga_ug_l": (0.0, 1_000_000.0, True, "ug/l"),
    "ggt_u_l": (0.0, 10_000.0, True, "U/l"),
}
BINARY_COLUMNS: tuple[str, ...] = (*MET_COLUMNS, "event")
INTEGER_COLUMNS: tuple[str, ...] = ("prrt_cycles", *BINARY_COLUMNS)
NUMERIC_COLUMNS: tuple[str, ...] = (*RANGES, *BINARY_COLUMNS)
MUST_HAVE: tuple[str, ...] = ("pfs_months", "event", *LAB_COLUMNS)
"""Columns that may not be empty: the outcome and every model input."""

STAGE = "cohort"
_STAGE_VERSION = 2  # bump when the stage's logic changes, so cached outputs are redone


class CohortError(ValueError):
    """A clinical table or imaging folder the cohort stage cannot accept (the message says which and why)."""


@dataclasses.dataclass(frozen=True)
class CohortConfig(Config):
    """Settings of the cohort stage.

    Attributes
    ----------
    pfs_threshold_months : float
        PFS split in months; ``pfs_short = 1`` if ``pfs_months <= threshold``
        (paper 2.4: 1 year, the boundary belongs to the short group).
    on_error : {"skip", "stop"}
        ``"skip"``: a bad row or folder is listed in ``exclusions.csv`` and
        the others go on; ``"stop"``: raise :class:`CohortError` at the first.
    require_event : bool
        ``True`` (paper 2.4, 3.2): only patients with a progression event are
        classified; censored patients keep ``pfs_short`` empty.
    imaging_subdir : str
        Folder under the data folder that holds ``<patient_id>/`` image folders.
    """

    pfs_threshold_months: float = PFS_THRESHOLD_MONTHS
    on_error: str = "skip"
    require_event: bool = True
    imaging_subdir: str = "imaging"

    def __post_init__(self) -> None:
        if self.on_error not in ("skip", "stop"):
            raise CohortError(f"on_error must be 'skip' or 'stop', got {self.on_error!r}")
        if not (isinstance(self.pfs_threshold_months, int | float) and self.pfs_threshold_months > 0):
            raise CohortError(
                f"pfs_threshold_months must be a positive number, got {self.pfs_threshold_months!r}"
            )


# --------------------------------------------------------------------------- validation


_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,63}")


def patient_id_problem(pid: str) -> str:
    """``""`` if ``pid`` can name the patient's folder and files on any disk, else why not.

    A study id is letters, digits, ``-``, ``_``, ``.`` and inner spaces, at
    most 64 characters, starting with a letter or digit (no leading dot: a
    hidden file; no path separator: ``../victim`` would leave the folder) and
    not ending in a space or dot (Windows drops those).
    """
    if not _SAFE_ID.fullmatch(pid) or pid.endswith((" ", ".")):
        return (
            "the patient id cannot name a folder safely (allowed: letters, digits, - _ . and inner spaces, "
            "at most 64, starting with a letter or digit; no path separator)"
        )
    return ""


def _who(pid: str, line: int) -> str:
    return f"patient {pid}" if pid else f"row at line {line} (no patient_id)"


def _format_value(value: float) -> str:
    return f"{value:g}"


def read_clinical_text(path: str | Path) -> pd.DataFrame:
    """Every cell of a clinical CSV as text, whatever its encoding; ``attrs["encoding"]`` says which was used.

    UTF-8 (with or without byte-order mark) first; a table that is not UTF-8
    (spreadsheets on Windows save Windows-1252 or Latin-1) is read as
    Windows-1252, or Latin-1 where Windows-1252 leaves a byte undefined, and a
    warning on the ``prrt`` logger says so (a byte-exact guess is impossible;
    only our columns are kept, and they are numbers, codes and study ids).
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        text, encoding = data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        try:
            text, encoding = data.decode("cp1252"), "cp1252"
        except UnicodeDecodeError:
            text, encoding = data.decode("latin-1"), "latin-1"
        get_logger("cohort").warning(
            "%s is not UTF-8: read as %s; save it as UTF-8 (CSV UTF-8) to be sure", path.name, encoding
        )
    frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
    frame.attrs["encoding"] = encoding
    return frame


def _read_clinical_columns(path: Path) -> pd.DataFrame:
    """Our columns of the clinical table, every cell as stripped text (parsing is ours and strict).

    Raises
    ------
    CohortError
        The file is missing or lacks one of :data:`CLINICAL_COLUMNS` (with a hint when it looks
        semicolon-separated).
    """
    if not path.is_file():
        raise CohortError(f"clinical table {path} not found")
    # Every cell as text so that parsing is ours and strict ("12,5" must not become 125 or NaN silently).
    raw = read_clinical_text(path)
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in CLINICAL_COLUMNS if c not in raw.columns]
    if missing:
        hint = ""
        if len(raw.columns) == 1 and ";" in raw.columns[0]:
            hint = " (the file looks semicolon-separated; save it with commas)"
        raise CohortError(f"{path.name} lacks required column(s) {missing}{hint}; it has {list(raw.columns)}")
    return raw[list(CLINICAL_COLUMNS)].apply(lambda s: s.str.strip())


RowProblems = list[tuple[Any, str]]
"""``(row index, message)`` per problem of a row; a row with any problem is excluded."""


def _id_problems(ids: pd.Series, lines: pd.Series, table_name: str) -> RowProblems:
    """Rows whose id is missing, cannot name a folder, differs from another only in case, or repeats.

    Parameters
    ----------
    ids : pandas.Series
        ``patient_id`` as stripped text ("" where missing).
    lines : pandas.Series
        Line number in the file of each row (same index).
    table_name : str
        File name shown in the message about repeated ids.

    Returns
    -------
    list of (index, message)
        Grouped by kind (missing, unsafe, case clash, repeated), each kind in row order.
    """
    out: RowProblems = [(i, f"row at line {lines[i]} has no patient_id") for i in ids.index if not ids[i]]
    for i in ids.index:
        why = patient_id_problem(ids[i]) if ids[i] else ""
        if why:
            out.append((i, f"patient {ids[i]}: {why}"))
    folded = ids.str.casefold()
    for key in folded[(ids != "") & folded.duplicated(keep=False)].unique():
        same = folded == key
        if ids[same].nunique() < 2:
            continue  # the same spelling twice: the duplicate check below
        where = lines[same].tolist()
        out += [
            (
                i,
                f"patient {ids[i]}: ids {' and '.join(sorted(set(ids[same])))} differ only in case "
                f"(lines {', '.join(map(str, where))}) and are one folder on a case-insensitive disk; "
                "keep one row per patient",
            )
            for i in ids.index[same]
        ]
    counts = ids[ids != ""].value_counts()
    for pid in counts[counts > 1].index:
        where = lines[ids == pid].tolist()
        out += [
            (
                i,
                f"patient {pid} appears {len(where)} times in {table_name} (lines {', '.join(map(str, where))}); "
                "keep one row per patient",
            )
            for i in ids.index[ids == pid]
        ]
    return out


def _number_problem(col: str, text: str, value: float) -> str:
    """Why one non-empty cell of a numeric column is refused ("" when it is fine).

    Checked in order: a number at all, 0/1 for :data:`BINARY_COLUMNS`, whole for
    :data:`INTEGER_COLUMNS`, not negative and within :data:`RANGES`. The message starts with
    ``"column <col>"``.
    """
    if not math.isfinite(value):
        return f"column {col} has {text!r} where a number is expected"
    if col in BINARY_COLUMNS and value not in (0.0, 1.0):
        return f"column {col} is {text!r}; expected 0 or 1"
    if col in INTEGER_COLUMNS and value != round(value):
        return f"column {col} is {text!r}; expected a whole number"
    if col not in RANGES:
        return ""
    lo, hi, lo_open, unit = RANGES[col]
    if value < 0:
        return f"column {col} is negative ({text})"
    if (value <= lo if lo_open else value < lo) or value > hi:
        rng = f"{'>' if lo_open else '>='} {_format_value(lo)} and <= {_format_value(hi)} {unit}"
        return f"column {col} = {text} is implausible (expected {rng})"
    return ""


def _parse_numbers(raw: pd.DataFrame, lines: pd.Series) -> tuple[dict[str, pd.Series], RowProblems]:
    """Every column of :data:`NUMERIC_COLUMNS` as float, and the problems of its cells.

    An empty cell is a problem only in :data:`MUST_HAVE` columns (``missing lab value`` for the labs);
    elsewhere it stays NaN.

    Returns
    -------
    parsed : dict of pandas.Series
        Float values per column (NaN where empty or not a number).
    problems : list of (index, message)
        By column, then row.
    """
    ids = raw["patient_id"]
    parsed: dict[str, pd.Series] = {}
    out: RowProblems = []
    for col in NUMERIC_COLUMNS:
        text = raw[col]
        values = pd.to_numeric(text.where(text != ""), errors="coerce").astype(float)
        parsed[col] = values
        for i in raw.index:
            who = _who(ids[i], lines[i])
            if text[i] == "":
                if col in MUST_HAVE:
                    what = "missing lab value" if col in LAB_COLUMNS else "missing value in"
                    out.append((i, f"{who}: {what} {col}"))
                continue
            why = _number_problem(col, text[i], values[i])
            if why:
                out.append((i, f"{who}: {why}"))
    return parsed, out


def _parse_categories(raw: pd.DataFrame, lines: pd.Series) -> tuple[dict[str, pd.Series], RowProblems]:
    """Every column of :data:`CATEGORIES` in its canonical spelling (matched case-insensitively).

    Returns
    -------
    cats : dict of pandas.Series
        Canonical values (NaN where empty or unknown).
    problems : list of (index, message)
        Non-empty values that are none of the allowed ones.
    """
    ids = raw["patient_id"]
    cats: dict[str, pd.Series] = {}
    out: RowProblems = []
    for col, allowed in CATEGORIES.items():
        lookup = {a.lower(): a for a in allowed}
        text = raw[col]
        cats[col] = text.str.lower().map(lookup)
        out += [
            (i, f"{_who(ids[i], lines[i])}: column {col} is {text[i]!r}; expected one of {list(allowed)}")
            for i in raw.index
            if text[i] and text[i].lower() not in lookup
        ]
    return cats, out


def _clinical_frame(ids: pd.Series, parsed: dict[str, pd.Series], cats: dict[str, pd.Series]) -> pd.DataFrame:
    """The parsed table in :data:`CLINICAL_COLUMNS` order: categories, Int64 for integer columns, floats."""
    df = pd.DataFrame({"patient_id": ids})
    for col in CLINICAL_COLUMNS[1:]:
        if col in cats:
            df[col] = cats[col]
        elif col in INTEGER_COLUMNS:
            df[col] = parsed[col].round().astype("Int64")
        else:
            df[col] = parsed[col]
    return df


def load_clinical(path: str | Path, cfg: CohortConfig | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read and validate ``clinical.csv``.

    The steps: :func:`_read_clinical_columns`, then the problems of ids (:func:`_id_problems`),
    numbers (:func:`_parse_numbers`, :func:`_number_problem`) and categories
    (:func:`_parse_categories`), then the table of the rows without any (:func:`_clinical_frame`).

    Parameters
    ----------
    path : path
        The clinical table (DESIGN "Raw export"), one row per patient.
    cfg : CohortConfig, optional
        Only ``on_error`` is used here.

    Returns
    -------
    df : DataFrame
        The rows without any problem, columns :data:`CLINICAL_COLUMNS` only,
        parsed (numbers as float, 0/1 flags and cycles as nullable Int64,
        categories normalised to :data:`CATEGORIES`). Extra columns of the
        file are dropped.
    problems : DataFrame
        ``patient_id, stage, reason``, one row per problem, in file order;
        ``reason`` names the patient (or the line), the column and the value.

    Raises
    ------
    CohortError
        If the file is missing or lacks required columns (always), or with
        ``on_error="stop"`` at the first problem of a row.
    """
    cfg = cfg or CohortConfig()
    path = Path(path)
    raw = _read_clinical_columns(path)
    lines = pd.Series(np.arange(len(raw)) + 2, index=raw.index)  # line 1 is the header
    ids = raw["patient_id"]
    parsed, number_problems = _parse_numbers(raw, lines)
    cats, category_problems = _parse_categories(raw, lines)
    found = [*_id_problems(ids, lines, path.name), *number_problems, *category_problems]
    problems = [(lines[i], ids[i], message) for i, message in found]
    problems.sort(key=lambda p: p[0])  # file order: with on_error="stop" the first line's problem is raised
    if problems and cfg.on_error == "stop":
        raise CohortError(problems[0][2])
    bad = pd.Series(False, index=raw.index)
    bad[[i for i, _ in found]] = True
    df = _clinical_frame(ids, parsed, cats)[~bad].reset_index(drop=True)
    table = pd.DataFrame(
        [(pid if pid else f"(line {line})", STAGE, msg) for line, pid, msg in problems],
        columns=["patient_id", "stage", "reason"],
    ).drop_duplicates(ignore_index=True)
    return df, table


# --------------------------------------------------------------------------- stage entry point


def _imaging_listing(imaging: Path) -> dict[str, bool]:
    """``folder name -> contains at least one file`` for every visible sub-folder of ``imaging``."""
    if not imaging.is_dir():
        return {}
    out = {}
    for p in sorted(imaging.iterdir()):
        if p.is_dir() and not p.name.startswith("."):
            out[p.name] = any(q.is_file() for q in p.rglob("*"))
    return out


def _input_key(cfg: CohortConfig, clinical: Path, listing: dict[str, bool]) -> dict[str, Any]:
    blob = b"\n".join(os.fsencode(f"{k}\t{int(v)}") for k, v in listing.items())
    return {
        "stage_version": _STAGE_VERSION,
        "config_hash": cfg.hash(),
        "clinical_sha256": store.sha256_file(clinical) if clinical.is_file() else None,
        "imaging_listing_sha256": hashlib.sha256(blob).hexdigest(),
    }


def _pfs_class(df: pd.DataFrame, cfg: CohortConfig) -> tuple[pd.Series, pd.Series]:
    thr = float(cfg.pfs_threshold_months)
    short = (df["pfs_months"] <= thr).astype("Int64")
    censored = df["event"].astype(int) == 0
    undefined = censored if cfg.require_event else censored & (df["pfs_months"] <= thr)
    short = short.mask(undefined, pd.NA)
    note = pd.Series("", index=df.index, dtype=object)
    for i in df.index[undefined]:
        pfs = df.at[i, "pfs_months"]
        if cfg.require_event:
            note[i] = (
                f"censored at {pfs:g} months (no progression event): not classified, "
                "as in the paper (only patients with progression, 2.4)"
            )
        else:
            note[i] = f"censored at {pfs:g} months, before the {thr:g}-month threshold: PFS class unknown"
    return short, note


def build_cohort(cfg: CohortConfig, data_dir: str | Path, work_dir: str | Path) -> pd.DataFrame:
    """Validate the clinical table against the imaging folders and write ``WORK/cohort/`` (stage entry point).

    Parameters
    ----------
    cfg : CohortConfig
        Threshold, error policy, censoring rule, imaging sub-folder.
    data_dir : path
        ``DATA``: ``clinical.csv`` and ``<imaging_subdir>/<patient_id>/``.
    work_dir : path
        ``WORK``; outputs go to ``WORK/cohort/``.

    Returns
    -------
    DataFrame
        ``cohort.csv`` as :func:`read_cohort` reads it: :data:`CLINICAL_COLUMNS`
        plus ``de_ritis`` (AST/ALT, dimensionless), ``pfs_short`` (Int64: 1
        short, 0 long, <NA> undefined), ``has_imaging`` (bool), ``note`` (str).

    Raises
    ------
    CohortError
        Unreadable table or missing columns; with ``on_error="stop"`` also the
        first bad row, patient without images or image folder without a row.

    Notes
    -----
    Idempotent: when ``done.json`` records the same configuration hash,
    ``clinical.csv`` content hash and imaging folder listing, nothing is
    recomputed and the stored table is returned.
    """
    data_dir, work_dir = Path(data_dir), Path(work_dir)
    out = work_dir / "cohort"
    clinical = data_dir / "clinical.csv"
    imaging = data_dir / cfg.imaging_subdir
    listing = _imaging_listing(imaging)
    key = _input_key(cfg, clinical, listing)
    done = out / "done.json"
    if done.is_file() and (out / "cohort.csv").is_file() and (out / "exclusions.csv").is_file():
        try:
            if json.loads(done.read_text()) == key:
                return read_cohort(work_dir)
        except ValueError:
            pass

    df, problems = load_clinical(clinical, cfg)
    stop = cfg.on_error == "stop"
    exclusions = [problems]

    # Imaging: a patient needs a folder with files; a folder needs a clinical row.
    has_imaging = df["patient_id"].map(lambda p: bool(listing.get(p, False))).astype(bool)
    img_rows = []
    for pid, ok in zip(df["patient_id"], has_imaging, strict=True):
        if not ok:
            why = "imaging folder is empty" if pid in listing else "no imaging folder"
            msg = f"patient {pid}: {why} ({cfg.imaging_subdir}/{pid}); kept in Table 1, not in the models"
            if stop:
                raise CohortError(msg)
            img_rows.append((pid, STAGE, msg))
    all_ids = set(read_clinical_text(clinical)["patient_id"].str.strip())
    for name in listing:
        if not store.is_utf8_name(name):
            shown = os.fsencode(name).decode("utf-8", "backslashreplace")
            msg = f"patient {shown}: imaging folder whose name is not UTF-8 text; rename it to the study id"
            if stop:
                raise CohortError(msg)
            img_rows.append((shown, STAGE, msg))
        elif name not in all_ids:
            msg = f"patient {name}: imaging folder without clinical row ({cfg.imaging_subdir}/{name})"
            if stop:
                raise CohortError(msg)
            img_rows.append((name, STAGE, msg))
    exclusions.append(pd.DataFrame(img_rows, columns=["patient_id", "stage", "reason"]))

    df = df.assign(de_ritis=df["ast_u_l"] / df["alt_u_l"])
    short, note = _pfs_class(df, cfg)
    df["pfs_short"] = short
    df["has_imaging"] = has_imaging.to_numpy()
    undefined = df["pfs_short"].isna()
    exclusions.append(
        pd.DataFrame(
            {
                "patient_id": df.loc[undefined, "patient_id"],
                "stage": STAGE,
                "reason": "patient " + df.loc[undefined, "patient_id"] + ": " + note[undefined],
            }
        )
    )
    for i in df.index[~df["has_imaging"]]:
        note[i] = f"{note[i]}; no imaging" if note[i] else "no imaging"
    df["note"] = note.to_numpy()
    excl = pd.concat(exclusions, ignore_index=True).drop_duplicates(ignore_index=True)

    if done.exists():
        done.unlink()  # outputs are about to change: never leave a stale done.json beside new files
    store.write_csv(out / "cohort.csv", df[list(CLINICAL_COLUMNS) + list(DERIVED_COLUMNS)])
    store.write_csv(out / "exclusions.csv", excl[["patient_id", "stage", "reason"]])
    store.write_text(out / "config.yaml", cfg.to_yaml())
    store.write_json(done, key)
    return read_cohort(work_dir)


def read_cohort(work_dir: str | Path) -> pd.DataFrame:
    """``WORK/cohort/cohort.csv`` with its dtypes (see :func:`build_cohort`)."""
    path = Path(work_dir) / "cohort" / "cohort.csv"
    if not path.is_file():
        raise CohortError(f"{path} not found: build the cohort first (prrt cohort)")
    df = pd.read_csv(
        path,
        dtype={"patient_id": str, "note": str, **{c: str for c in CATEGORIES}},
        keep_default_na=False,
        na_values={c: [""] for c in CLINICAL_COLUMNS[1:] + DERIVED_COLUMNS[:2]},
    )
    for col in (*INTEGER_COLUMNS, "pfs_short"):
        df[col] = pd.to_numeric(df[col]).astype("Int64")
    for col in CATEGORIES:
        df[col] = df[col].replace("", np.nan)
    df["has_imaging"] = df["has_imaging"].astype(str).str.lower().isin(["true", "1"])
    df["note"] = df["note"].fillna("")
    return df


def read_exclusions(work_dir: str | Path) -> pd.DataFrame:
    """``WORK/cohort/exclusions.csv`` (``patient_id, stage, reason``); empty if the file is absent."""
    path = Path(work_dir) / "cohort" / "exclusions.csv"
    if not path.is_file():
        return pd.DataFrame(columns=["patient_id", "stage", "reason"])
    return pd.read_csv(path, dtype=str, keep_default_na=False)
