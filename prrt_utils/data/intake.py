"""Own-cohort intake: turn a centre's export into the pipeline's raw-export layout.

A centre describes its export in one YAML file
(:class:`prrt_utils.data.cohort_source.CohortSource`): where
the clinical/laboratory table and the imaging studies are, how the table's
columns, values and units map to ours, whether PFS comes as months or as two
dates, the PFS threshold and whether ids are pseudonymised. :func:`intake`
reads that export and writes a normalised copy in the layout of DESIGN.md
"Raw export" (``clinical.csv`` with our columns and units,
``imaging/<patient_id>/``), which the cohort and preprocessing stages then read
unchanged. Data flows one way: centre export -> intake -> cohort stage.

:func:`prrt_utils.data.check.check` (``prrt check``) validates everything
before any training, starting with this intake into a scratch folder.

Decisions (stated so that a data manager can check them):

* **Nothing is rejected here that the cohort stage would reject.** The intake
  renames, maps values, converts units and computes PFS from dates; a cell it
  cannot convert (``"n/a"``, ``"<5"``) is passed on as it is, so that the
  cohort stage excludes the row with its usual message naming patient, column
  and value. An unusable date is passed on as a short text such as ``"no
  therapy start date"`` in ``pfs_months`` for the same reason (the date itself
  is never written: dates of care are identifying).
* **Units** are converted by fixed factors only where one exists: enzymes in
  ukat/l -> U/l x 60 (1 ukat = 1 umol/s = 60 umol/min = 60 U), nkat/l x 0.06;
  CgA ng/ml = ug/l (x 1), ng/l x 0.001, mg/l x 1000. CgA in nmol/l or in assay
  units (U/l) is refused: kits measure different CgA fragments against
  different calibrators, so no fixed factor to ug/l is defensible (re-export
  the values in ug/l from the same assay, or use one assay throughout).
* **PFS from dates**: ``pfs_months = days / (365.25 / 12)`` from the start of
  therapy (first PRRT cycle, paper 2.4) to progression or last follow-up; the
  ``event`` column says which (1 progression, 0 censored). Censored patients
  stay in the table and in survival analyses and are not classified (paper
  2.4, :class:`prrt_utils.data.cohort.CohortConfig` ``require_event``).
* **Pseudonymisation** (``pseudonymise: auto``): if any id does not look like
  a short study code (letters, then at most 4 digits, such as ``PRRT-007`` or
  ``NET12``), every id is replaced by ``"P-"`` + 10 hex digits of
  HMAC-SHA-256(salt, id). The salt is 32 random bytes in a file beside the
  YAML (never inside the outputs, never printed), created on first use; keep
  it to get the same pseudonyms next time. Rows without an id stay without one
  (the cohort stage reports them by line number).
* **Only our columns are written** (DESIGN "Raw export"); every other column of
  the centre's table (names, birth dates, ...) is dropped. Rows keep their
  order, so line ``n`` of ``clinical.csv`` is line ``n`` of the centre's table
  (when it has one header line): a message about a pseudonymised patient can
  be traced to the row by its line number.
* **Images are linked, not copied** (``link: auto``): every file of a
  patient's folder is hard-linked into ``imaging/<patient_id>/`` under a name
  that is its rank in the sorted listing of the centre's folder (``000001.dcm``,
  ...), so that neither file nor folder names (which may hold hospital ids or
  names) reach the output, and "file 17 of 340" in a loader message is the
  17th file of the centre's folder in sorted order. Where a hard link is
  impossible (another file system), ``auto`` falls back to symbolic links and
  says so in the report: a symbolic link records the original path, so do not
  pass such an intake folder on. NIfTI files are linked to ``pet.nii.gz``,
  ``ct.nii.gz`` and ``pet.json``.
* **Atomic and idempotent**: the output folder is built beside its place and
  renamed into it, with ``done.json`` written last; when the YAML, the table
  and the listing of the imaging files (names, sizes, times) are unchanged,
  nothing is redone.

Outputs of :func:`intake` (``OUT/``): ``clinical.csv``, ``imaging/<id>/``,
``intake_report.csv`` (``patient_id, line, column, problem``: what was
converted, computed or could not be), ``intake.json`` (a summary without paths
or ids) and ``done.json``.

Hand-written parts: the column/value/unit mapping and the pseudonym. pandas
reads the table and parses dates; :mod:`hmac` computes the keyed hash.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from prrt_utils.data.cohort import CLINICAL_COLUMNS, LAB_COLUMNS, NUMERIC_COLUMNS, patient_id_problem
from prrt_utils.data.cohort_source import (
    DATE_KEYS,
    DAYS_PER_MONTH,
    UNIT_FACTORS,
    CohortSource,
    IntakeError,
    unit_key,
)
from prrt_utils.io import store

__all__ = [
    "REPORT_COLUMNS",
    "intake",
    "intake_dir",
    "looks_like_study_id",
    "pseudonym",
]

REPORT_COLUMNS = ("patient_id", "line", "column", "problem")
ALL = "(all)"
_STUDY_ID = re.compile(r"^[A-Za-z][A-Za-z]{0,11}[-_ ]?\d{1,4}$")
_PSEUDONYM = re.compile(r"^P-[0-9a-f]{10}$")
_INTAKE_VERSION = 2  # bump when the written layout changes, so cached intakes are redone


def intake_dir(root: str | Path, source: CohortSource) -> Path:
    """Where the book and the CLI put a source's intake: ``ROOT/data/intake/<name>``.

    It lives with the data, not in ``WORK``: the linked image files carry their
    original (identifying) DICOM headers, which no output folder may hold.
    """
    return Path(root) / "data" / "intake" / source.name


# --------------------------------------------------------------------------- pseudonyms


def looks_like_study_id(value: str) -> bool:
    """True for short study codes (letters, optional separator, at most 4 digits) and our own pseudonyms.

    ``"PRRT-007"``, ``"NET12"`` and ``"P-3fa2c9d1e0"`` are study ids;
    ``"HOSP-99887766"``, ``"12345678"`` or ``"Mueller^Hans"`` are not.
    """
    return bool(_STUDY_ID.match(value) or _PSEUDONYM.match(value))


def pseudonym(raw_id: str, salt: bytes) -> str:
    """``"P-"`` + the first 10 hex digits of HMAC-SHA-256(salt, id) (40 bits: collisions are checked)."""
    return "P-" + hmac.new(salt, raw_id.encode("utf-8"), hashlib.sha256).hexdigest()[:10]


def _salt(path: Path, out_dir: Path) -> bytes:
    path = path.resolve()
    out = out_dir.resolve()
    if path == out or out in path.parents:
        raise IntakeError(
            "the salt file may not lie inside the intake output folder; keep it beside the YAML"
        )
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # created meanwhile by a parallel run
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
    text = path.read_text().strip()
    if len(text) < 32:
        raise IntakeError(
            f"salt file {path.name} is too short (at least 32 characters); delete it to make a new one"
        )
    return text.encode()


# --------------------------------------------------------------------------- the table


def _read_table(source: CohortSource) -> pd.DataFrame:
    path = source.table_path
    if not path.is_file():
        raise IntakeError(f"clinical table {path.name} not found (clinical_table: {source.clinical_table})")
    if path.suffix.lower() in (".xlsx", ".xls", ".ods"):
        raise IntakeError(
            f"{path.name} is a spreadsheet: save the sheet as CSV (UTF-8) and point clinical_table at it"
        )
    try:
        raw = pd.read_csv(
            path,
            sep=source.sep,
            dtype=str,
            keep_default_na=False,
            encoding=source.encoding,
            skipinitialspace=True,
        )
    except UnicodeDecodeError:
        raise IntakeError(
            f"{path.name} is not {source.encoding}: set encoding (e.g. latin-1 or cp1252)"
        ) from None
    except pd.errors.ParserError as exc:
        raise IntakeError(f"{path.name} cannot be read with sep {source.sep!r}: {exc}") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    return raw.apply(lambda s: s.str.strip())


def _their_column(raw: pd.DataFrame, name: str) -> str | None:
    if name in raw.columns:
        return name
    hits = [c for c in raw.columns if c.lower() == name.lower()]
    return hits[0] if len(hits) == 1 else None


def _number(text: str, decimal: str) -> float | None:
    t = text.replace("\u00a0", "").replace(" ", "")
    if decimal == ",":
        if re.fullmatch(r"[-+]?\d{1,3}(\.\d{3})+(,\d+)?", t):
            t = t.replace(".", "")
        t = t.replace(",", ".")
    try:
        return float(t)
    except ValueError:
        return None


def _format(value: float) -> str:
    return f"{round(value, 6):.10g}"


def _map_values(series: pd.Series, mapping: dict[str, str]) -> pd.Series:
    lookup = {k.lower(): v for k, v in mapping.items()}
    return series.map(lambda v: lookup.get(v.lower(), v) if v else v)


def _pfs_from_dates(
    raw: pd.DataFrame,
    source: CohortSource,
    notes: list[tuple[str, str, str, str]],
    ids: pd.Series,
    lines: pd.Series,
) -> pd.Series:
    fmt = source.dates.get("format") or "%Y-%m-%d"
    cols = {}
    for key in DATE_KEYS[:2]:
        their = _their_column(raw, source.dates[key])
        if their is None:
            raise IntakeError(
                f"{source.table_path.name} has no column {source.dates[key]!r} (dates: {key}); it has {list(raw.columns)}"
            )
        cols[key] = their
    start_text, end_text = raw[cols["therapy_start"]], raw[cols["progression_or_last_followup"]]
    start = pd.to_datetime(start_text, format=fmt, errors="coerce")
    end = pd.to_datetime(end_text, format=fmt, errors="coerce")
    out = pd.Series("", index=raw.index, dtype=object)
    words = {
        "therapy_start": "therapy start date",
        "progression_or_last_followup": "progression/follow-up date",
    }
    for i in raw.index:
        why = []
        for key, text, parsed in (
            ("therapy_start", start_text, start),
            ("progression_or_last_followup", end_text, end),
        ):
            if not text[i]:
                why.append(f"no {words[key]}")
            elif pd.isna(parsed[i]):
                why.append(f"{words[key]} not in the format {fmt}")
        if why:
            out[i] = "; ".join(why)
            notes.append(
                (
                    ids[i],
                    str(lines[i]),
                    "pfs_months",
                    f"PFS not computed: {out[i]} ({cols['therapy_start']} / {cols['progression_or_last_followup']})",
                )
            )
            continue
        days = (end[i] - start[i]).days
        out[i] = _format(days / DAYS_PER_MONTH)
        if days < 0:
            notes.append(
                (
                    ids[i],
                    str(lines[i]),
                    "pfs_months",
                    "progression/follow-up date lies before the therapy start",
                )
            )
    notes.append(
        (
            ALL,
            "",
            "pfs_months",
            f"computed from {cols['therapy_start']} and {cols['progression_or_last_followup']} "
            f"(format {fmt}) as days / {DAYS_PER_MONTH:g}",
        )
    )
    return out


def _locate_columns(raw: pd.DataFrame, source: CohortSource) -> dict[str, str | None]:
    """Which of the centre's columns holds each of ours (None: absent); PFS is skipped when given as dates.

    Raises
    ------
    IntakeError
        A column named under ``columns:`` is not in the table, or a required column (id, event,
        labs, PFS) cannot be found.
    """
    table = source.table_path.name
    where: dict[str, str | None] = {}
    for col in CLINICAL_COLUMNS:
        if col == "pfs_months" and source.dates:
            continue
        their = source.columns.get(col)
        if their is None:
            where[col] = _their_column(raw, col)
            continue
        found = _their_column(raw, their)
        if found is None:
            raise IntakeError(f"{table} has no column {their!r} (columns: {col}); it has {list(raw.columns)}")
        where[col] = found
    required = ["patient_id", "event", *LAB_COLUMNS] + ([] if source.dates else ["pfs_months"])
    missing = [c for c in required if where.get(c) is None]
    if missing:
        raise IntakeError(
            f"{table} lacks required column(s) {missing}: name them under columns: (ours: theirs)"
            + ("" if source.dates or "pfs_months" not in missing else " or give PFS as dates:")
            + f"; it has {list(raw.columns)}"
        )
    return where


def _renamed_columns(
    raw: pd.DataFrame, source: CohortSource, where: dict[str, str | None], notes: list[tuple[str, str, str, str]]
) -> pd.DataFrame:
    """Our columns (in :data:`CLINICAL_COLUMNS` order, without PFS when given as dates) as text, values mapped.

    An absent descriptive column is left empty, with a note.
    """
    out = pd.DataFrame(index=raw.index)
    for col, their in where.items():
        if their is None:
            out[col] = ""
            notes.append(
                (ALL, "", col, f"not in {source.table_path.name}: left empty (descriptive only, never a model input)")
            )
            continue
        s = raw[their].astype(str)
        out[col] = _map_values(s, source.values[col]) if col in source.values else s
    return out


def _converted_cell(text: str, decimal: str, factor: float | None) -> str | None:
    """One non-empty numeric cell in our unit and decimal point; None when it is not a number.

    Unchanged when there is no factor and the decimal mark is already ``"."``; otherwise rewritten
    by :func:`_format`.
    """
    value = _number(text, decimal)
    if value is None:
        return None
    if factor is not None:
        return _format(value * factor)
    return _format(value) if decimal == "," else text


def _convert_numbers(out: pd.DataFrame, source: CohortSource, notes: list[tuple[str, str, str, str]]) -> None:
    """Convert every numeric column of ``out`` in place (units, decimal mark), noting conversions.

    A cell that is not a number is passed on unchanged (the cohort stage names patient, column and
    value); the first such cell that looks like a decimal comma under ``decimal: '.'`` adds one hint.
    """
    decimal_hint = False
    for col in NUMERIC_COLUMNS:
        if col == "pfs_months" and source.dates:
            continue
        factor = UNIT_FACTORS.get(col, {}).get(unit_key(source.units[col])) if col in source.units else None
        converted = []
        for text in out[col]:
            cell = _converted_cell(text, source.decimal, factor) if text else text
            if cell is None:
                if source.decimal == "." and re.fullmatch(r"[-+]?\d+,\d+", text) and not decimal_hint:
                    decimal_hint = True
                    notes.append(
                        (ALL, "", col, f"values such as {text!r} look like decimal commas: set decimal: ','")
                    )
                cell = text  # passed on: the cohort stage names patient, column and value
            converted.append(cell)
        out[col] = converted
        if factor is not None:
            notes.append((ALL, "", col, f"converted from {source.units[col]} to our unit (x {factor:g})"))


def _normalise(
    raw: pd.DataFrame, source: CohortSource
) -> tuple[pd.DataFrame, pd.Series, list[tuple[str, str, str, str]]]:
    """Our columns as text (renamed, values mapped, units converted); the line numbers; column-level notes.

    The steps: :func:`_locate_columns`, :func:`_renamed_columns`, PFS from dates
    (:func:`_pfs_from_dates`) when asked, :func:`_convert_numbers`.
    """
    notes: list[tuple[str, str, str, str]] = []
    out = _renamed_columns(raw, source, _locate_columns(raw, source), notes)
    ids = out["patient_id"].copy()
    lines = pd.Series(raw.index.to_numpy() + 2, index=raw.index)
    if source.dates:
        out["pfs_months"] = _pfs_from_dates(raw, source, notes, ids, lines)
    _convert_numbers(out, source, notes)
    return out[list(CLINICAL_COLUMNS)], lines, notes


# --------------------------------------------------------------------------- images


def _files(folder: Path) -> list[Path]:
    """Every file under ``folder`` in the loader's order (:func:`prrt_utils.io.discovery.discover_series`)."""
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _link(src: Path, dst: Path, mode: str, used: set[str]) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if mode in ("auto", "hardlink"):
        try:
            os.link(src, dst)
            used.add("hardlink")
            return
        except OSError:
            if mode == "hardlink":
                raise IntakeError(
                    "cannot hard-link the image files into the intake folder (another file system?): "
                    "set link: symlink or link: copy"
                ) from None
    if mode == "copy":
        shutil.copy2(src, dst)
        used.add("copy")
        return
    os.symlink(src.resolve(), dst)
    used.add("symlink")


_KEPT_SUFFIXES = (".dcm", ".ima", ".dicom")


def _suffix(path: Path) -> str:
    """The DICOM file suffixes are kept for readability; any other (it could be part of a name) is dropped."""
    return path.suffix.lower() if path.suffix.lower() in _KEPT_SUFFIXES else ""


def _place_images(source: CohortSource, raw_id: str, dst: Path, used: set[str]) -> str:
    """Link one patient's images into ``dst``; return ``""`` or why there are none."""
    folder = source.imaging_path / source.imaging_folder.format(id=raw_id)
    if not folder.is_dir():
        return "no imaging folder"
    pet_name = source.nifti_name("pet", raw_id)
    nifti = source.image_format == "nifti" or (
        source.image_format == "auto" and (folder / pet_name).is_file()
    )
    if nifti:
        dst.mkdir(parents=True, exist_ok=True)
        for key, ours in (("pet", "pet.nii.gz"), ("ct", "ct.nii.gz"), ("sidecar", "pet.json")):
            src = folder / source.nifti_name(key, raw_id)
            if not src.is_file():
                if key == "sidecar" and source.nifti_pet_units:
                    store.write_json(dst / ours, {"units": source.nifti_pet_units})
                continue
            if key != "sidecar" and src.name.endswith(".nii"):  # the loader reads pet.nii.gz: compress
                store.write_bytes(dst / ours, gzip.compress(src.read_bytes(), mtime=0))
                used.add("copy")
            else:
                _link(src, dst / ours, source.link, used)
        return ""
    files = _files(folder)
    dst.mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(len(files))))
    for rank, src in enumerate(files, start=1):
        _link(src, dst / f"{rank:0{width}d}{_suffix(src)}", source.link, used)
    return "" if files else "imaging folder is empty"


def _folder_ids(source: CohortSource) -> list[str]:
    """Raw ids of the patient folders under ``imaging_dir`` (the first component of ``imaging_folder``)."""
    root = source.imaging_path
    if not root.is_dir():
        return []
    first = source.imaging_folder.split("/")[0]
    pattern = re.compile("^" + re.escape(first).replace(re.escape("{id}"), "(?P<id>.+)") + "$")
    out = []
    for p in sorted(root.iterdir()):
        m = pattern.match(p.name)
        if p.is_dir() and not p.name.startswith(".") and m:
            out.append(m.group("id"))
    return out


def _listing_key(source: CohortSource) -> str:
    h = hashlib.sha256()
    roots = [source.imaging_path]
    if source.ct_labels:  # the folder above the first {id}
        prefix = source.ct_labels.split("{id}")[0]
        roots.append(source.path(prefix.rsplit("/", 1)[0] if "/" in prefix else "."))
    for root in roots:
        if root.is_dir():
            for p in _files(root):
                st = p.stat()
                h.update(os.fsencode(f"{p.relative_to(root).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n"))
    return h.hexdigest()


def _place_label_map(source: CohortSource, raw_id: str, dst: Path, used: set[str]) -> str:
    """Link one patient's CT label map to ``dst``; return ``""`` or why there is none."""
    src = source.path(source.ct_labels.format(id=raw_id))
    if not src.is_file():
        return "no CT label map (no organ masks for this patient's PET)"
    if src.name.endswith(".nii"):  # pretraining reads <patient>.nii.gz: compress
        store.write_bytes(dst, gzip.compress(src.read_bytes(), mtime=0))
        used.add("copy")
    else:
        _link(src, dst, source.link, used)
    return ""


# --------------------------------------------------------------------------- the entry point


def _hides_ids(raw_ids: pd.Series, mode: str) -> tuple[bool, bool]:
    """Whether ids are replaced by pseudonyms, and whether any looks like a hospital id.

    Parameters
    ----------
    raw_ids : pandas.Series
        The table's ids as text (empty for rows without one).
    mode : {"auto", "always", "never"}
        ``pseudonymise`` of the description.

    Returns
    -------
    hide : bool
        ``always``, or ``auto`` with an id that is not a short study code (:func:`looks_like_study_id`).
    hospital_like : bool
        Some id is not a short study code.
    """
    hospital_like = not all(looks_like_study_id(v) for v in raw_ids if v)
    return mode == "always" or (mode == "auto" and hospital_like), hospital_like


def _intake_key(source: CohortSource, salt: bytes, hide: bool) -> dict[str, Any]:
    """The cache key of an intake (``done.json``): layout version, description, table, image listing, salt check.

    The salt enters only as a keyed hash of a fixed text, so a new salt redoes the intake without the
    key revealing the salt.
    """
    return {
        "intake_version": _INTAKE_VERSION,
        "source_hash": source.hash(),
        "table_sha256": store.sha256_file(source.table_path),
        "imaging_listing_sha256": _listing_key(source),
        "salt_check": hmac.new(salt, b"salt-check", hashlib.sha256).hexdigest()[:16] if hide else None,
    }


def _intake_is_current(out_dir: Path, key: dict[str, Any]) -> bool:
    """True when ``out_dir`` holds a finished intake of the same key.

    Raises
    ------
    IntakeError
        ``out_dir`` is a non-empty folder that is not an intake (it is never overwritten).
    """
    done = out_dir / "done.json"
    if done.is_file() and (out_dir / "clinical.csv").is_file():
        try:
            if json.loads(done.read_text()) == key:
                return True
        except ValueError:
            pass
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "intake.json").is_file():
        raise IntakeError(f"{out_dir} exists and is not an intake folder: it is never overwritten")
    return False


def _pseudonym_map(source: CohortSource, raw_ids: pd.Series, salt: bytes) -> dict[str, str]:
    """``{raw id: pseudonym}`` for every id of the table and every (UTF-8-named) imaging folder.

    Raises
    ------
    IntakeError
        Two ids give the same pseudonym.
    """
    distinct = sorted({v for v in raw_ids if v} | {v for v in _folder_ids(source) if store.is_utf8_name(v)})
    mapping = {v: pseudonym(v, salt) for v in distinct}
    if len(set(mapping.values())) != len(mapping):
        raise IntakeError("two ids give the same pseudonym: delete the salt file to draw a new salt")
    return mapping


def _id_note(mode: str, hide: bool, hospital_like: bool) -> tuple[str, str, str, str] | None:
    """The report's cohort-wide line about ids: pseudonymised, or hospital-like ids shown; else None."""
    if hide:
        return (
            ALL,
            "",
            "patient_id",
            f"ids pseudonymised (pseudonymise: {mode}): P- + 10 hex digits "
            "of HMAC-SHA-256 with the salt beside the YAML; line numbers are those of the centre's table",
        )
    if hospital_like:
        return (
            ALL,
            "",
            "patient_id",
            "ids look like hospital ids but pseudonymise is 'never': they will appear on every page",
        )
    return None


def _link_patients(
    source: CohortSource, raw_ids: pd.Series, pids: pd.Series, lines: Any, partial: Path, used: set[str]
) -> tuple[list[tuple[str, str, str, str]], set[str]]:
    """Link each table patient's images (and CT label map) into ``partial`` under the patient's id.

    Rows without an id, repeated ids and ids that cannot be a folder name are not linked.

    Returns
    -------
    rows : list of (patient_id, line, column, problem)
        Report lines of patients whose files could not be placed.
    seen : set of str
        The ids handled (linked or not).
    """
    rows: list[tuple[str, str, str, str]] = []
    seen: set[str] = set()
    for raw_id, pid, line in zip(raw_ids, pids, lines, strict=True):
        if not raw_id or pid in seen:
            continue
        seen.add(pid)
        if patient_id_problem(pid):  # the cohort stage refuses the row with its own message
            rows.append((pid, str(line), "imaging", "the id cannot be a folder name: images not linked"))
            continue
        why = _place_images(source, raw_id, store.child(partial / "imaging", pid), used)
        if why:
            rows.append((pid, str(line), "imaging", why))
        if source.ct_labels:
            why = _place_label_map(source, raw_id, store.child(partial / "ct_labels", f"{pid}.nii.gz"), used)
            if why:
                rows.append((pid, str(line), "ct_labels", why))
    return rows, seen


def _mark_orphan_folders(
    source: CohortSource, mapping: dict[str, str], seen: set[str], partial: Path
) -> list[tuple[str, str, str, str]]:
    """Create an empty ``imaging/<id>/`` for each imaging folder without a table row, so the cohort stage lists it.

    A folder whose name is not UTF-8 text gets its escaped name; neither kind is linked.

    Returns
    -------
    list of (patient_id, line, column, problem)
        One report line per such folder.
    """
    rows = []
    for raw_id in _folder_ids(source):
        if not store.is_utf8_name(raw_id):  # listed by the cohort stage as a folder without a row, never linked
            shown = os.fsencode(raw_id).decode("utf-8", "backslashreplace")
            # the escaped name ('\\xe9') keeps its backslash, a plain character of a POSIX name: no store.child here
            (partial / "imaging" / shown.replace("/", "_")).mkdir(parents=True, exist_ok=True)
            rows.append((shown, "", "imaging", "imaging folder whose name is not UTF-8 text (not linked)"))
            continue
        pid = mapping.get(raw_id, raw_id)
        if pid not in seen:
            # an empty folder: the cohort stage lists it as "imaging folder without clinical row"
            store.child(partial / "imaging", pid).mkdir(parents=True, exist_ok=True)
            rows.append((pid, "", "imaging", "imaging folder without clinical row (its images are not linked)"))
    return rows


_SYMLINK_NOTE = (
    ALL,
    "",
    "imaging",
    "hard links impossible (another file system?): symbolic links "
    "used, which record the original paths; do not pass this folder on",
)


def _registered_ids(source: CohortSource, raw_ids: pd.Series, mapping: dict[str, str]) -> list[str]:
    """Ids (pseudonyms where pseudonymised) of ``registered_pet_ct``, in table order, each once; ``all``: every id."""
    wanted = set(source.registered_pet_ct)
    return [mapping.get(r, r) for r in dict.fromkeys(raw_ids) if r and ("all" in wanted or r in wanted)]


def _replace_folder(partial: Path, out_dir: Path) -> None:
    """Rename ``partial`` into ``out_dir``, moving an existing ``out_dir`` aside first and deleting it after."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / "x")
    os.replace(partial, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def intake(source: CohortSource, out_dir: str | Path) -> Path:
    """Write a centre's export in the pipeline's raw-export layout (module docstring); return ``out_dir``.

    The steps: normalise the table (:func:`_normalise`), decide on pseudonyms (:func:`_hides_ids`,
    :func:`_pseudonym_map`), skip when nothing changed (:func:`_intake_key`, :func:`_intake_is_current`),
    link the images (:func:`_link_patients`, :func:`_mark_orphan_folders`), write the files into a
    scratch folder and rename it into place (:func:`_replace_folder`).

    Parameters
    ----------
    source : CohortSource
        The centre's export, usually :meth:`CohortSource.load` of its YAML.
    out_dir : path
        The normalised export: ``clinical.csv`` (DESIGN "Raw export" columns,
        our units, pseudonymised ids), ``imaging/<patient_id>/``,
        ``intake_report.csv``, ``intake.json``, ``done.json``.

    Returns
    -------
    Path
        ``out_dir``, to be passed as ``data_dir`` to the cohort and preprocessing stages.

    Raises
    ------
    IntakeError
        The table is missing or unreadable, a named column does not exist, a
        required column is absent, or the salt file is unusable. Problems of
        single rows or patients never raise: they are reported and passed on.
    """
    out_dir = Path(out_dir)
    table, lines, notes = _normalise(_read_table(source), source)
    raw_ids = table["patient_id"].copy()
    hide, hospital_like = _hides_ids(raw_ids, source.pseudonymise)
    salt = _salt(source.salt_path, out_dir) if hide else b""
    key = _intake_key(source, salt, hide)
    if _intake_is_current(out_dir, key):
        return out_dir

    mapping = _pseudonym_map(source, raw_ids, salt) if hide else {}
    if hide:
        table["patient_id"] = raw_ids.map(lambda v: mapping.get(v, v))
    note = _id_note(source.pseudonymise, hide, hospital_like)
    if note:
        notes.insert(0, note)
    # ids in messages: the pseudonym, never the raw id
    notes = [(mapping.get(p, p), line, col, prob) for p, line, col, prob in notes]

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        used: set[str] = set()
        linked, seen = _link_patients(source, raw_ids, table["patient_id"], lines, partial, used)
        rows = [*notes, *linked, *_mark_orphan_folders(source, mapping, seen, partial)]
        (partial / "imaging").mkdir(exist_ok=True)
        if source.ct_labels:
            store.write_json(partial / "ct_labels" / "codes.json", list(source.ct_label_codes))
        if "symlink" in used and source.link == "auto":
            rows.insert(0, _SYMLINK_NOTE)
        if source.registered_pet_ct:
            allowed = _registered_ids(source, raw_ids, mapping)
            store.write_csv(partial / "registered_pet_ct.csv", pd.DataFrame({"patient_id": allowed}))
        store.write_csv(partial / "clinical.csv", table)
        store.write_csv(partial / "intake_report.csv", pd.DataFrame(rows, columns=list(REPORT_COLUMNS)))
        store.write_json(
            partial / "intake.json",
            {
                "name": source.name,
                "rows": len(table),
                "pseudonymised": hide,
                "units": source.units,
                "pfs_from_dates": bool(source.dates),
                "pfs_threshold_months": source.pfs_threshold_months,
                "image_links": sorted(used),
            },
        )
        store.write_json(partial / "done.json", key)
        _replace_folder(partial, out_dir)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return out_dir


def read_report(out_dir: str | Path) -> pd.DataFrame:
    """``intake_report.csv`` of an intake folder (``patient_id, line, column, problem``)."""
    return pd.read_csv(Path(out_dir) / "intake_report.csv", dtype=str, keep_default_na=False)
