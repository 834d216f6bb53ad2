"""SUVbw from the PET header: the nuclides, the plausibility rules for weight, dose, half-life and
uptake time, and the QIBA reference time (the formula and the rules: :mod:`prrt_utils.io.loading`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from collections.abc import Sequence
from typing import Any

from prrt_utils.io.images import InputError

__all__ = [
    "GA68_HALF_LIFE_S",
    "NUCLIDES",
    "WEIGHT_RANGE_KG",
    "Nuclide",
    "decay_factor",
    "identify_nuclide",
    "scan_start",
    "suv_factor",
]


GA68_HALF_LIFE_S = 4062.6
"""Half-life of gallium-68 in seconds (67.71 min)."""


@dataclasses.dataclass(frozen=True)
class Nuclide:
    """A PET radionuclide: its half-life and the injected activities that are plausible for it.

    Attributes
    ----------
    name : str
        ``"Ga-68"``, ``"F-18"``, ...
    half_life_s : float
        Physical half-life in seconds (DDEP/NUBASE values, as scanners write them).
    dose_mbq : (float, float)
        Plausible injected activity in MBq for a diagnostic PET of a child of
        20 kg up to an adult of 300 kg; far outside it a unit was confused
        (MBq or kBq written where Bq are due).
    """

    name: str
    half_life_s: float
    dose_mbq: tuple[float, float]


NUCLIDES: dict[str, Nuclide] = {
    n.name: n
    for n in (
        Nuclide("Ga-68", GA68_HALF_LIFE_S, (20.0, 500.0)),
        Nuclide("F-18", 6586.2, (20.0, 1000.0)),
        Nuclide("Cu-64", 45721.1, (20.0, 500.0)),
        Nuclide("Sc-44", 14292.0, (20.0, 500.0)),
        Nuclide("C-11", 1221.84, (50.0, 1500.0)),
        Nuclide("Zr-89", 282276.0, (10.0, 200.0)),
    )
}
"""The PET nuclides a header may name; SR-PET uses Ga-68, Cu-64, F-18 (SiFAlin) or Sc-44."""

_NUCLIDE_WORDS = {
    "Ga-68": ("ga", "68", "gallium"),
    "F-18": ("f", "18", "fluorine"),
    "Cu-64": ("cu", "64", "copper"),
    "Sc-44": ("sc", "44", "scandium"),
    "C-11": ("c", "11", "carbon"),
    "Zr-89": ("zr", "89", "zirconium"),
}

WEIGHT_RANGE_KG = (20.0, 300.0)
"""Plausible PatientWeight (kg); outside it the weight is in grams or pounds, or mistyped."""

HALF_LIFE_TOLERANCE = 0.01
"""The header's half-life must equal its nuclide's within 1 %."""

MAX_UPTAKE_S = 12 * 3600.0
"""Longest plausible time from injection to scan (12 h: even Cu-64 is imaged within hours)."""


def decay_factor(elapsed_s: float, half_life_s: float = GA68_HALF_LIFE_S) -> float:
    """Fraction of activity left after ``elapsed_s`` seconds: ``2 ** (-elapsed_s / half_life_s)``."""
    return float(2.0 ** (-float(elapsed_s) / float(half_life_s)))


def header_number(value: Any) -> float | None:
    """A finite float, or None (JSON-friendly) for missing or malformed values."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def parse_date_time(date: Any, time: Any) -> dt.datetime | None:
    from pydicom.valuerep import DA, TM

    try:
        if not date or not time:
            return None
        d, t = DA(str(date).strip()), TM(str(time).strip())
        return dt.datetime.combine(d, t.replace(tzinfo=None))
    except (ValueError, TypeError):
        return None


def _parse_datetime(value: Any) -> dt.datetime | None:
    from pydicom.valuerep import DT

    try:
        return DT(str(value).strip()).replace(tzinfo=None) if value else None
    except (ValueError, TypeError):
        return None


def nuclide_in_text(text: str) -> str | None:
    """The nuclide a free text names (``"Ga-68 DOTATOC"``, ``"^68^Gallium"``, ``"Fludeoxyglucose F^18^"``), or None."""
    t = re.sub(r"[\^\s_]+", " ", str(text or "").lower())
    for name, (sym, mass, element) in _NUCLIDE_WORDS.items():
        patterns = (
            rf"(?<![a-z]){sym} ?-? ?{mass}(?!\d)",
            rf"(?<!\d){mass} ?-? ?(?:{sym}|{element})(?![a-z])",
            rf"{element} ?-? ?{mass}(?!\d)",
        )
        if any(re.search(p, t) for p in patterns):
            return name
    return None


def identify_nuclide(
    texts: Sequence[tuple[str, Any]],
    half_life_s: float | None,
    patient_id: str,
    where: str = "RadionuclideHalfLife",
) -> tuple[Nuclide, str]:
    """The nuclide of a PET and where it was read from; the half-life must be the nuclide's within 1 %.

    Parameters
    ----------
    texts : sequence of (tag, text)
        Places that may name the nuclide, in order of trust (RadionuclideCodeSequence's
        CodeMeaning, Radiopharmaceutical, ...).
    half_life_s : float or None
        The half-life the header gives (seconds), if any.
    patient_id : str
    where : str
        The half-life's tag or key, for messages.

    Returns
    -------
    nuclide : Nuclide
    source : str
        The tag that named it, or ``"half-life"`` when only the half-life did.

    Raises
    ------
    InputError
        No nuclide named and no half-life, a half-life that is no known nuclide's
        (e.g. minutes written as seconds), or one that differs from the named nuclide's.
    """
    named = next(((tag, n) for tag, text in texts if (n := nuclide_in_text(text))), None)
    known = ", ".join(f"{n.name} {n.half_life_s:g} s" for n in NUCLIDES.values())
    if named is not None:
        tag, name = named
        nuc = NUCLIDES[name]
        if half_life_s is not None and abs(half_life_s / nuc.half_life_s - 1.0) > HALF_LIFE_TOLERANCE:
            raise InputError(
                patient_id,
                f"{where} {half_life_s:g} s is not {name}'s {nuc.half_life_s:g} s "
                f"(rule: within {100 * HALF_LIFE_TOLERANCE:g}%; minutes written as seconds?)",
            )
        return nuc, tag
    if half_life_s is None:
        raise InputError(
            patient_id, f"no radionuclide named and no half-life ({where}): the decay cannot be computed"
        )
    for nuc in NUCLIDES.values():
        if abs(half_life_s / nuc.half_life_s - 1.0) <= HALF_LIFE_TOLERANCE:
            return nuc, "half-life"
    raise InputError(
        patient_id,
        f"{where} {half_life_s:g} s is no PET nuclide's (rule: within {100 * HALF_LIFE_TOLERANCE:g}% "
        f"of {known}; minutes written as seconds?)",
    )


def plausible_weight(weight_kg: float) -> bool:
    lo, hi = WEIGHT_RANGE_KG
    return math.isfinite(weight_kg) and lo <= weight_kg <= hi


def check_weight(weight_kg: float, patient_id: str, tag: str = "PatientWeight") -> float:
    """``weight_kg`` if it lies in :data:`WEIGHT_RANGE_KG`, else :class:`InputError` with the number and the rule."""
    lo, hi = WEIGHT_RANGE_KG
    if not (math.isfinite(weight_kg) and weight_kg > 0):
        raise InputError(patient_id, f"{tag} is missing or zero; SUVbw needs the body weight")
    if not lo <= weight_kg <= hi:
        hint = " (grams instead of kilograms?)" if weight_kg > 1000 else ""
        raise InputError(
            patient_id, f"{tag} = {weight_kg:g} kg is implausible (rule: {lo:g} to {hi:g} kg){hint}"
        )
    return weight_kg


def check_dose(dose_bq: float, nuclide: Nuclide, patient_id: str, tag: str = "RadionuclideTotalDose") -> float:
    """``dose_bq`` if it lies in the nuclide's plausible range (:attr:`Nuclide.dose_mbq`), else :class:`InputError`."""
    lo, hi = nuclide.dose_mbq
    if not (math.isfinite(dose_bq) and dose_bq > 0):
        raise InputError(patient_id, f"{tag} (injected dose) is missing or zero")
    mbq = dose_bq / 1e6
    if not lo <= mbq <= hi:
        hint = " (MBq written where Bq are due?)" if mbq < lo / 1e3 else ""
        raise InputError(
            patient_id,
            f"{tag} = {dose_bq:g} Bq ({mbq:.4g} MBq) is implausible for {nuclide.name} "
            f"(rule: {lo:g} to {hi:g} MBq){hint}",
        )
    return dose_bq


def check_uptake(elapsed_s: float, patient_id: str, what: str) -> float:
    """``elapsed_s`` if it lies in 0 to :data:`MAX_UPTAKE_S`, else :class:`InputError` with the number and the rule."""
    if not (math.isfinite(elapsed_s) and 0.0 <= elapsed_s <= MAX_UPTAKE_S):
        raise InputError(
            patient_id,
            f"implausible time from injection to scan: {what} = {elapsed_s:g} s ({elapsed_s / 60.0:.1f} min; "
            f"rule: 0 to {MAX_UPTAKE_S / 3600:g} h); check the header times",
        )
    return elapsed_s


def scan_start(ds: Any, acquisition_start: dt.datetime | None) -> tuple[dt.datetime | None, str]:
    """The time the PET is decay-corrected to (DecayCorrection START) and the tag it came from.

    The vendor-neutral rule of QIBA's SUV pseudo-code: SeriesDate/SeriesTime,
    unless it lies after the earliest AcquisitionDate/AcquisitionTime of the
    series (a re-reconstruction or a post-processed copy resets the series
    time): then that earliest acquisition time.

    Returns
    -------
    start : datetime or None
        None when neither is in the header.
    tag : str
        ``"SeriesDate/SeriesTime"`` or ``"AcquisitionDate/AcquisitionTime (earliest)"``, for the QC table.
    """
    series = parse_date_time(ds.get("SeriesDate"), ds.get("SeriesTime"))
    acq = "AcquisitionDate/AcquisitionTime (earliest)"
    if series is None:
        return acquisition_start, acq if acquisition_start is not None else ""
    if acquisition_start is not None and series > acquisition_start:
        return acquisition_start, acq + ", SeriesTime later"
    return series, "SeriesDate/SeriesTime"


def _injection_time(radio: Any, scan_date: Any) -> tuple[dt.datetime | None, str, bool]:
    """``(injection, tag, date guessed)``: RadiopharmaceuticalStartDateTime when it holds a time of day.

    A StartDateTime with a date only (or hours only) would be midnight (or the
    full hour): the full RadiopharmaceuticalStartTime is then combined with its
    date, or with the scan's date when StartDateTime is absent (``date guessed``:
    an injection before midnight and a scan after it are one day apart).
    """
    text = str(radio.get("RadiopharmaceuticalStartDateTime", "") or "").strip()
    clock = re.sub(r"[+-]\d{4}$", "", text)  # a UTC offset is no time of day
    if len(clock) >= 12:  # YYYYMMDDHHMM at least
        inj = _parse_datetime(text)
        if inj is not None:
            return inj, "RadiopharmaceuticalStartDateTime", False
    start_time = radio.get("RadiopharmaceuticalStartTime")
    if len(clock) >= 8 and start_time:
        inj = parse_date_time(clock[:8], start_time)
        if inj is not None:
            return inj, "RadiopharmaceuticalStartTime (date from StartDateTime)", False
    inj = parse_date_time(scan_date, start_time)
    return inj, "RadiopharmaceuticalStartTime (date of the scan)", True


def suv_factor(
    ds: Any, patient_id: str, acquisition_start: dt.datetime | None = None
) -> tuple[float, dict[str, Any]]:
    """Factor that turns the PET's activity concentration into SUVbw (module docstring).

    Parameters
    ----------
    ds : pydicom.Dataset
        A PET slice header (series-level tags are read).
    patient_id : str
    acquisition_start : datetime, optional
        Earliest AcquisitionDate/Time of the series (:func:`scan_start`).

    Returns
    -------
    factor : float
        ``SUVbw = factor * value`` (``factor = 1`` for Units ``GML``), in g/Bq (ml units cancel).
    facts : dict
        Non-identifying facts: units, decay correction, nuclide, half-life (s),
        injection-to-reference time (s) and the tags it came from, injected dose (MBq), factor.

    Raises
    ------
    InputError
        A tag missing, or a value outside its plausible range (weight, dose,
        half-life, time from injection to scan): the message gives the number and the rule.
    """
    units = str(ds.get("Units", "") or "").strip().upper()
    if units == "GML":
        weight = header_number(ds.get("PatientWeight"))  # not needed for SUV; kept for the body-mass rule if plausible
        known = {"patient_weight_kg": weight} if weight is not None and plausible_weight(weight) else {}
        return 1.0, {"pet_units_stored": "GML", "suv_factor": 1.0, **known}
    if units != "BQML":
        what = "counts (Units CNTS)" if units == "CNTS" else f"units {units or 'missing'}"
        raise InputError(
            patient_id,
            f"PET is stored in {what}; SUV needs activity concentration in Bq/ml (Units BQML) "
            "or SUVbw (GML): export the PET in Bq/ml",
        )
    weight_kg = header_number(ds.get("PatientWeight"))
    if weight_kg is None or weight_kg <= 0:
        raise InputError(
            patient_id, "PatientWeight is missing or zero in the PET header; SUVbw needs the body weight"
        )
    check_weight(weight_kg, patient_id)
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    if not seq:
        raise InputError(
            patient_id, "PET header has no RadiopharmaceuticalInformationSequence (dose and injection time)"
        )
    radio = seq[0]
    dose_bq = header_number(radio.get("RadionuclideTotalDose"))
    if dose_bq is None or dose_bq <= 0:
        raise InputError(
            patient_id, "RadionuclideTotalDose (injected dose) is missing or zero in the PET header"
        )
    half_life = header_number(radio.get("RadionuclideHalfLife"))
    if half_life is None or half_life <= 0:
        raise InputError(patient_id, "RadionuclideHalfLife is missing or zero in the PET header")
    texts = [
        ("RadionuclideCodeSequence", _code_meaning(radio.get("RadionuclideCodeSequence"))),
        ("Radiopharmaceutical", radio.get("Radiopharmaceutical", "")),
        ("RadiopharmaceuticalCodeSequence", _code_meaning(radio.get("RadiopharmaceuticalCodeSequence"))),
    ]
    nuclide, nuclide_from = identify_nuclide(texts, half_life, patient_id)
    check_dose(dose_bq, nuclide, patient_id)
    decay = str(ds.get("DecayCorrection", "") or "").strip().upper()
    facts: dict[str, Any] = {
        "pet_units_stored": units,
        "decay_correction": decay,
        "nuclide": nuclide.name,
        "nuclide_from": nuclide_from,
        "half_life_s": half_life,
        "injected_dose_mbq": round(dose_bq / 1e6, 3),
        "patient_weight_kg": weight_kg,
    }
    if decay == "ADMIN":
        facts["injection_to_reference_s"] = 0.0
        factor = weight_kg * 1000.0 / dose_bq
    elif decay == "START":
        ref, ref_tag = scan_start(ds, acquisition_start)
        if ref is None:
            raise InputError(
                patient_id, "PET header has no SeriesDate/SeriesTime or AcquisitionTime to decay the dose to"
            )
        inj, inj_tag, guessed_date = _injection_time(radio, ref.strftime("%Y%m%d"))
        if inj is None:
            raise InputError(
                patient_id, "injection time (RadiopharmaceuticalStartDateTime/StartTime) is missing"
            )
        elapsed = (ref - inj).total_seconds()
        if guessed_date and elapsed < 0:  # injection before midnight, scan after
            elapsed += 86400.0
        check_uptake(elapsed, patient_id, f"{ref_tag} minus {inj_tag}")
        facts.update(injection_to_reference_s=elapsed, scan_start_from=ref_tag, injection_from=inj_tag)
        factor = weight_kg * 1000.0 / (dose_bq * decay_factor(elapsed, half_life))
    else:
        raise InputError(
            patient_id,
            f"PET DecayCorrection {decay or 'missing'} is not supported (needs START or ADMIN) for SUV conversion",
        )
    facts["suv_factor"] = factor
    return factor, facts


def _code_meaning(seq: Any) -> str:
    try:
        return str(seq[0].get("CodeMeaning", "") or "") if seq else ""
    except (IndexError, TypeError, AttributeError):
        return ""
