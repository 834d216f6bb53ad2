"""The description of a centre's export (:class:`CohortSource`, one YAML file) and its validation.

A centre describes its export in one YAML file: where the clinical/laboratory
table and the imaging studies are, how the table's columns, values and units
map to ours, whether PFS comes as months or as two dates, the PFS threshold
and whether ids are pseudonymised. :meth:`CohortSource.load` reads it;
:func:`source_problems` lists every reason it cannot work, and the description
refuses itself with all of them at once (:class:`IntakeError`). What is done
with a valid description, and the decisions behind it (unit factors,
pseudonyms, links), is :mod:`prrt_utils.data.intake`; ``prrt check`` is
:mod:`prrt_utils.data.check`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Literal

import yaml

from prrt_utils.data.anatomy import AnatomyError, label_lookup
from prrt_utils.data.cohort import CLINICAL_COLUMNS, PFS_THRESHOLD_MONTHS
from prrt_utils.io.config import Config, choices, field_problems, problems_message

__all__ = [
    "DATE_KEYS",
    "DAYS_PER_MONTH",
    "UNIT_FACTORS",
    "CohortSource",
    "IntakeError",
    "source_problems",
    "unit_key",
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

ImageFormat = Literal["auto", "dicom", "nifti"]
Pseudonymise = Literal["auto", "always", "never"]
LinkMode = Literal["auto", "hardlink", "symlink", "copy"]
DecimalMark = Literal[".", ","]
NiftiPetUnits = Literal["", "SUVbw"]
_IMAGE_FORMATS = choices(ImageFormat)
_PSEUDONYMISE = choices(Pseudonymise)
_LINKS = choices(LinkMode)
DATE_KEYS = ("therapy_start", "progression_or_last_followup", "format")
"""Keys of ``dates``: the two date columns PFS is computed from, then the optional date format."""
_NIFTI_KEYS = ("pet", "ct", "sidecar")


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


def unit_key(unit: str) -> str:
    """A unit as :data:`UNIT_FACTORS` spells it: no white space, lower case, ``u`` for micro."""
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
        Replace ids by salted-hash pseudonyms (:mod:`prrt_utils.data.intake`).
    salt_file : str
        Salt of the pseudonyms, relative to the YAML's folder; default
        ``<yaml name>.salt`` beside the YAML. Never inside an output folder.
    link : {"auto", "hardlink", "symlink", "copy"}
        How image files reach the intake folder (:mod:`prrt_utils.data.intake`).
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
    key = unit_key(unit)
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
    unknown = sorted(set(source.dates) - set(DATE_KEYS))
    missing = [k for k in DATE_KEYS[:2] if not source.dates.get(k)]
    if unknown or missing:
        out.append(f"dates: needs {list(DATE_KEYS[:2])} (and optionally format); got {sorted(source.dates)}")
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
