"""Own-cohort intake: turn a centre's export into the pipeline's raw-export layout, and check it.

A centre describes its export in one YAML file (:class:`CohortSource`): where
the clinical/laboratory table and the imaging studies are, how the table's
columns, values and units map to ours, whether PFS comes as months or as two
dates, the PFS threshold and whether ids are pseudonymised. :func:`intake`
reads that export and writes a normalised copy in the layout of DESIGN.md
"Raw export" (``clinical.csv`` with our columns and units,
``imaging/<patient_id>/``), which the cohort and preprocessing stages then read
unchanged. Data flows one way: centre export -> intake -> cohort stage.

:func:`check` validates everything before any training: it runs the intake
into a scratch folder, the cohort stage's row checks and the loader (and, by
default, the preprocessing of every patient, without writing), and returns one
row per patient: what is usable and, if not, why.

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
reads the table and parses dates; :mod:`hmac` computes the keyed hash; the
checks are those of :mod:`prrt_utils.data.cohort`, :mod:`prrt_utils.io.loading` and
:mod:`prrt_utils.data.preprocess`.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml

from prrt_utils.data.cohort import (
    CLINICAL_COLUMNS,
    LAB_COLUMNS,
    NUMERIC_COLUMNS,
    PFS_THRESHOLD_MONTHS,
    CohortConfig,
    load_clinical,
    patient_id_problem,
)
from prrt_utils.io import store
from prrt_utils.io.config import Config, choices, field_problems, problems_message

__all__ = [
    "CHECK_COLUMNS",
    "DAYS_PER_MONTH",
    "REPORT_COLUMNS",
    "UNIT_FACTORS",
    "CohortSource",
    "IntakeError",
    "check",
    "format_check",
    "intake",
    "intake_dir",
    "looks_like_study_id",
    "pseudonym",
]

DAYS_PER_MONTH = 365.25 / 12.0
"""Days per month for PFS computed from dates (30.4375: the mean Julian month)."""

_ENZYME = {"u/l": 1.0, "iu/l": 1.0, "ukat/l": 60.0, "nkat/l": 0.06}
UNIT_FACTORS: dict[str, dict[str, float]] = {
    "ast_u_l": _ENZYME,
    "alt_u_l": _ENZYME,
    "ggt_u_l": _ENZYME,
    "cga_ug_l": {"ug/l": 1.0, "ng/ml": 1.0, "ng/l": 0.001, "mg/l": 1000.0},
    "pfs_months": {"months": 1.0, "days": 1.0 / DAYS_PER_MONTH, "weeks": 7.0 / DAYS_PER_MONTH, "years": 12.0},
}
"""Factor from a centre's unit (normalised: lower case, ``u`` for micro) to ours, per column."""

_REFUSED_UNITS: dict[str, dict[str, str]] = {
    "cga_ug_l": {
        "nmol/l": "CgA in nmol/l cannot be converted to ug/l by a fixed factor (assays measure different "
        "CgA fragments against different calibrators); export CgA in ug/l (= ng/ml)",
        "u/l": "CgA in assay units (U/l) cannot be converted to ug/l; export CgA in ug/l (= ng/ml)",
    },
}

REPORT_COLUMNS = ("patient_id", "line", "column", "problem")
CHECK_COLUMNS = ("patient_id", "line", "clinical", "pet", "ct", "usable", "reason")
ALL = "(all)"
ImageFormat = Literal["auto", "dicom", "nifti"]
Pseudonymise = Literal["auto", "always", "never"]
LinkMode = Literal["auto", "hardlink", "symlink", "copy"]
DecimalMark = Literal[".", ","]
NiftiPetUnits = Literal["", "SUVbw"]
_IMAGE_FORMATS = choices(ImageFormat)
_PSEUDONYMISE = choices(Pseudonymise)
_LINKS = choices(LinkMode)
_DATE_KEYS = ("therapy_start", "progression_or_last_followup", "format")
_NIFTI_KEYS = ("pet", "ct", "sidecar")
_STUDY_ID = re.compile(r"^[A-Za-z][A-Za-z]{0,11}[-_ ]?\d{1,4}$")
_PSEUDONYM = re.compile(r"^P-[0-9a-f]{10}$")
_INTAKE_VERSION = 2  # bump when the written layout changes, so cached intakes are redone


class IntakeError(ValueError):
    """The cohort description or the centre's table cannot be used as a whole (the message says why)."""


# --------------------------------------------------------------------------- YAML 1.2 booleans


class _Loader(yaml.SafeLoader):
    """SafeLoader where only true/false are booleans: ``yes``, ``no``, ``on``, ``off`` stay text.

    A value map such as ``{ja: yes, nein: no}`` must give the strings ``"yes"``
    and ``"no"`` (our ``functional`` categories), not Python booleans.
    """


_Loader.yaml_implicit_resolvers = {
    key: [r for r in resolvers if r[0] != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _text(value: Any) -> str:
    if value is None:  # YAML ~ or an empty value: an empty cell
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _unit_key(unit: str) -> str:
    return re.sub(r"\s+", "", str(unit)).lower().replace("µ", "u").replace("μ", "u").replace("mc", "u")


# --------------------------------------------------------------------------- the description


@dataclasses.dataclass(frozen=True)
class CohortSource(Config):
    """One centre's export, described in a YAML file (``examples/cohort.example.yaml``).

    Attributes
    ----------
    name : str
        Short name of the cohort (folder name of the intake, shown on every page).
    clinical_table : str
        The clinical/laboratory CSV, relative to the YAML's folder (or absolute).
    imaging_dir : str
        Folder holding one folder per patient, relative to the YAML's folder.
    imaging_folder : str
        Each patient's folder under ``imaging_dir``; ``{id}`` is the patient's
        id as in the table (e.g. ``"{id}"``, ``"Pat_{id}/PETCT"``).
    image_format : {"auto", "dicom", "nifti"}
        ``auto``: NIfTI where the folder holds ``nifti_files["pet"]``, else DICOM.
    nifti_files : dict
        ``{"pet": ..., "ct": ..., "sidecar": ...}`` file names inside a patient
        folder (``{id}`` allowed); defaults ``pet.nii.gz``, ``ct.nii.gz``, ``pet.json``.
    nifti_pet_units : str
        ``"SUVbw"`` writes the ``pet.json`` sidecar for patients that have none
        (PET already in SUVbw); empty: a missing sidecar excludes the patient.
    sep, decimal, encoding : str
        CSV field separator, decimal mark (``"."`` or ``","``) and encoding.
    columns : dict
        ``{our_column: their_column}``; our columns not named here are looked
        up under their own name (DESIGN "Raw export"). Descriptive columns that
        are absent are left empty; ``patient_id``, ``event``, the laboratory
        values and PFS (or ``dates``) must exist.
    units : dict
        ``{our_column: their_unit}`` (:data:`UNIT_FACTORS`); unnamed columns are
        taken to be in our units.
    values : dict
        ``{our_column: {their_value: our_value}}``, matched case-insensitively,
        e.g. ``{"sex": {"m": "M", "w": "F"}, "event": {"ja": 1, "nein": 0}}``.
        Values not listed pass unchanged (and are checked by the cohort stage).
    dates : dict
        ``{"therapy_start": col, "progression_or_last_followup": col, "format":
        "%d.%m.%Y"}``: PFS in months from two dates instead of a PFS column.
    pfs_threshold_months : float
        Short PFS is ``pfs_months <= threshold`` (paper 2.4: 12).
    pseudonymise : {"auto", "always", "never"}
        Replace ids by salted-hash pseudonyms (module docstring).
    salt_file : str
        Salt of the pseudonyms, relative to the YAML's folder; default
        ``<yaml name>.salt`` beside the YAML. Never inside an output folder.
    link : {"auto", "hardlink", "symlink", "copy"}
        How image files reach the intake folder (module docstring).
    ct_labels : str
        Optional CT label maps of the study's patients, for the organ masks of
        the PET models (:mod:`prrt_utils.data.anatomy`; never for CT pretraining,
        which needs patients outside the study), one NIfTI per patient, e.g. a centre's TotalSegmentator outputs: the
        file relative to the YAML's folder with ``{id}`` for the table's id
        (``"export/TotalSegmentator/{id}.nii.gz"``). They are linked as
        ``ct_labels/<patient_id>.nii.gz`` under the intake's pseudonyms.
    ct_label_codes : list of str
        With ``ct_labels``: ``"code:class"`` for every code in the maps, class
        one of :data:`prrt_utils.models.pretrain.ANATOMY_CLASSES` (body, lung, liver,
        spleen, kidney, bladder, bone, lesion, background).
    registered_pet_ct : list of str
        Ids (as in the table) whose CT comes from another study and was
        registered to the PET, or ``["all"]``: for them StudyInstanceUID and
        FrameOfReferenceUID of PET and CT may differ (PatientID must still
        agree). Every other PET/CT must be one acquisition
        (:func:`prrt_utils.io.discovery.check_pairing`). Written to
        ``registered_pet_ct.csv`` under the intake's pseudonyms.
    base_dir : str
        Folder relative paths are resolved against (set by :meth:`load` to the
        YAML's folder; empty: the working directory).
    """

    name: str = "own-cohort"
    clinical_table: str = "clinical.csv"
    imaging_dir: str = "imaging"
    imaging_folder: str = "{id}"
    image_format: ImageFormat = "auto"
    nifti_files: dict[str, str] = dataclasses.field(default_factory=dict)
    nifti_pet_units: NiftiPetUnits = ""
    sep: str = ","
    decimal: DecimalMark = "."
    encoding: str = "utf-8-sig"
    columns: dict[str, str] = dataclasses.field(default_factory=dict)
    units: dict[str, str] = dataclasses.field(default_factory=dict)
    values: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    dates: dict[str, str] = dataclasses.field(default_factory=dict)
    pfs_threshold_months: float = PFS_THRESHOLD_MONTHS
    pseudonymise: Pseudonymise = "auto"
    salt_file: str = ""
    link: LinkMode = "auto"
    ct_labels: str = ""
    ct_label_codes: tuple[str, ...] = ()
    registered_pet_ct: tuple[str, ...] = ()
    base_dir: str = ""

    def __post_init__(self) -> None:
        """Normalise the mappings to plain text, then refuse the description with every problem at once.

        Raises
        ------
        IntakeError
            One message naming every bad field (:func:`source_problems`).
        """
        for key, value in _plain_text_fields(self).items():
            object.__setattr__(self, key, value)
        problems = source_problems(self)
        if problems:
            raise IntakeError(problems_message(problems, "the cohort description"))

    # ------------------------------------------------------------------ loading and paths

    @classmethod
    def load(cls, path: str | Path) -> CohortSource:
        """Read a cohort YAML; relative paths in it are relative to its folder.

        Raises
        ------
        IntakeError
            The file is missing, not YAML, or has unknown or invalid entries.
        """
        path = Path(path)
        if not path.is_file():
            raise IntakeError(f"cohort description {path} not found")
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}  # noqa: S506 (safe loader)
        except yaml.YAMLError as exc:
            raise IntakeError(f"{path.name} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise IntakeError(f"{path.name} must be a mapping of settings (see examples/cohort.example.yaml)")
        data.setdefault("salt_file", f"{path.stem}.salt")
        data["base_dir"] = str(path.resolve().parent)
        try:
            return cls.from_dict(data)
        except IntakeError as exc:
            raise IntakeError(f"{path.name}: {exc}") from None
        except (ValueError, TypeError) as exc:
            raise IntakeError(f"{path.name}: {exc}") from None

    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else Path(self.base_dir or ".").resolve() / p

    @property
    def table_path(self) -> Path:
        return self.path(self.clinical_table)

    @property
    def imaging_path(self) -> Path:
        return self.path(self.imaging_dir)

    @property
    def salt_path(self) -> Path:
        return self.path(self.salt_file or f"{self.name}.salt")

    def nifti_name(self, key: str, raw_id: str) -> str:
        default = {"pet": "pet.nii.gz", "ct": "ct.nii.gz", "sidecar": "pet.json"}[key]
        return self.nifti_files.get(key, default).format(id=raw_id)


def _text_map(value: Any, field: str, key: Any = str) -> dict[str, Any]:
    """A YAML mapping (``None``: empty) with text keys (``key`` converts them) and plain-text values.

    Raises
    ------
    IntakeError
        ``value`` is not a mapping.
    """
    if not isinstance(value or {}, dict):
        raise IntakeError(f"{field} must be a mapping ({{key: value}}), got {value!r}")
    return {key(k): _text(v) for k, v in (value or {}).items()}


def _plain_text_fields(source: CohortSource) -> dict[str, Any]:
    """The description's mappings and id list as plain text (YAML may give numbers, e.g. event codes).

    Returns
    -------
    dict
        New values of ``columns``, ``units``, ``dates``, ``nifti_files`` (``None`` becomes empty),
        ``values`` (``{column: {theirs: ours}}``, both sides through :func:`_text`) and
        ``registered_pet_ct`` (a tuple; one string becomes a one-element tuple).

    Raises
    ------
    IntakeError
        A mapping field holds something other than a mapping.
    """
    out: dict[str, Any] = {
        key: _text_map(getattr(source, key), key) for key in ("columns", "units", "dates", "nifti_files")
    }
    if not isinstance(source.values or {}, dict):
        raise IntakeError(f"values must be a mapping ({{column: {{theirs: ours}}}}), got {source.values!r}")
    out["values"] = {str(k): _text_map(m, f"values: {k}", key=_text) for k, m in (source.values or {}).items()}
    reg = source.registered_pet_ct
    out["registered_pet_ct"] = tuple(_text(v) for v in ([reg] if isinstance(reg, str) else reg or ()))
    return out


def _column_problems(source: CohortSource) -> list[str]:
    """``columns``, ``units`` and ``values`` may only name our columns (:data:`CLINICAL_COLUMNS`)."""
    ours = set(CLINICAL_COLUMNS)
    out = []
    for field in ("columns", "units", "values"):
        unknown = sorted(set(getattr(source, field)) - ours)
        if unknown:
            out.append(f"{field}: {unknown} are not columns of ours; ours are {list(CLINICAL_COLUMNS)}")
    return out


def _unit_problem(column: str, unit: str) -> str:
    """Why a centre's unit of one of our columns cannot be converted ("" when it can, or the column is not ours).

    Refused units (CgA in nmol/l or assay units) say why; a column without conversions and an unknown
    unit list what is known.
    """
    key = _unit_key(unit)
    if column not in CLINICAL_COLUMNS:
        return ""  # reported by _column_problems
    if key in _REFUSED_UNITS.get(column, {}):
        return f"units: {column} in {unit!r}: {_REFUSED_UNITS[column][key]}"
    if column not in UNIT_FACTORS:
        return f"units: {column} has no unit conversion (only {sorted(UNIT_FACTORS)})"
    if key not in UNIT_FACTORS[column]:
        return f"units: {column} in {unit!r} is not a unit we can convert; known: {sorted(UNIT_FACTORS[column])}"
    return ""


def _date_problems(source: CohortSource) -> list[str]:
    """``dates`` needs both date columns (``format`` optional) and excludes a PFS column."""
    if not source.dates:
        return []
    out = []
    unknown = sorted(set(source.dates) - set(_DATE_KEYS))
    missing = [k for k in _DATE_KEYS[:2] if not source.dates.get(k)]
    if unknown or missing:
        out.append(f"dates: needs {list(_DATE_KEYS[:2])} (and optionally format); got {sorted(source.dates)}")
    if "pfs_months" in source.columns or "pfs_months" in source.units:
        out.append("give PFS either as a column (columns/units: pfs_months) or as dates, not both")
    return out


def _layout_problems(source: CohortSource) -> list[str]:
    """NIfTI file keys, the CSV separator, the imaging folder pattern, the threshold and the cohort's name."""
    out = []
    unknown = sorted(set(source.nifti_files) - set(_NIFTI_KEYS))
    if unknown:
        out.append(f"nifti_files: unknown key(s) {unknown}; known: {list(_NIFTI_KEYS)}")
    if not isinstance(source.sep, str) or len(source.sep) != 1 or source.sep == source.decimal:
        out.append(f"sep must be one character other than the decimal mark, got {source.sep!r}")
    if isinstance(source.imaging_folder, str) and "{id}" not in source.imaging_folder.split("/")[0]:
        out.append(f"imaging_folder must name the patient's folder with {{id}}, got {source.imaging_folder!r}")
    threshold = source.pfs_threshold_months
    if isinstance(threshold, int | float) and not isinstance(threshold, bool) and not threshold > 0:
        out.append(f"pfs_threshold_months must be a positive number, got {threshold!r}")
    if isinstance(source.name, str) and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", source.name):
        out.append(f"name must be a short folder name (letters, digits, . _ -), got {source.name!r}")
    return out


def _ct_label_problems(source: CohortSource) -> list[str]:
    """``ct_labels`` needs ``{id}`` and ``ct_label_codes`` that :func:`prrt_utils.data.anatomy.label_lookup` accepts
    (the check CT pretraining applies to its ``label_map``)."""
    if not source.ct_labels:
        return []
    from prrt_utils.data.anatomy import AnatomyError, label_lookup

    if "{id}" not in source.ct_labels or not source.ct_label_codes:
        return ["ct_labels needs {id} in its file pattern and ct_label_codes ('code:class' per code)"]
    try:
        label_lookup(tuple(source.ct_label_codes))
    except AnatomyError as exc:
        return [f"ct_label_codes: {exc}"]
    return []


def source_problems(source: CohortSource) -> list[str]:
    """Every reason a cohort description cannot work, one line each (empty: it can).

    Field types and choices come from the annotations (:func:`prrt_utils.io.config.field_problems`);
    then our columns, units, dates, layout and CT label maps.
    """
    return [
        *field_problems(source),
        *_column_problems(source),
        *[p for col, unit in source.units.items() if (p := _unit_problem(col, unit))],
        *_date_problems(source),
        *_layout_problems(source),
        *_ct_label_problems(source),
    ]


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
    for key in _DATE_KEYS[:2]:
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
        factor = UNIT_FACTORS.get(col, {}).get(_unit_key(source.units[col])) if col in source.units else None
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


# --------------------------------------------------------------------------- check


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
    import pydicom

    from prrt_utils.io.discovery import check_pairing, choose_series, discover_series
    from prrt_utils.io.images import InputError
    from prrt_utils.io.suv import suv_factor

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
    from prrt_utils.data.preprocess import PreprocessConfig, prepare_patient
    from prrt_utils.io.images import InputError
    from prrt_utils.io.log import DEBUG_LOG, get_logger, pydicom_messages, scrub, write_debug

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
        import traceback

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
        When the export cannot be read at all (see :func:`intake`).
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
    from prrt_utils.data.anatomy import SYNTHETIC_LABEL_MAP, find_labels, label_map_path
    from prrt_utils.data.preprocess import registered_pairs

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
