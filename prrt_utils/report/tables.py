"""Tables for readers: no pandas index, rounded numbers, column names in words.

Every chapter calls :func:`prrt_utils.report.notebook.setup_notebook` first, which calls
:func:`use_reader_tables`: from then on each DataFrame a cell displays is drawn by
:func:`reader_table` (a pandas ``Styler``) instead of pandas' default HTML. A reader sees

* no ``0, 1, 2`` index column (an index that is only row numbers is hidden; a named
  index such as the model is kept, in words);
* numbers rounded for reading (:func:`format_number`: three decimals below 10, one
  below 1000, thousands separated above; p-values below 0.001 as ``< 0.001``;
  missing values as an en dash);
* column names in words with their units (:func:`words`: ``cga_ug_l`` -> ``CgA (µg/l)``,
  ``auroc_mean`` -> ``AUROC mean``, ``pet_fusion`` -> ``PET fusion``).

The data are not changed: the table a notebook holds keeps its columns and full
precision for the analyst (``df.to_csv`` or ``print(df)`` in a live notebook); only
the drawn page is rounded. pandas' Styler does the drawing; the word list and the
rounding rule are this project's own.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from html import escape
from typing import Any

import numpy as np
import pandas as pd

from prrt_utils.data.cohort import LAB_LABELS
from prrt_utils.data.paper import DISPLAY_NAMES
from prrt_utils.models.networks import BASELINE_NAMES

__all__ = ["WORDS", "format_number", "reader_table", "use_reader_tables", "words"]

#: Whole column (or index) names and their words; anything else goes through :data:`_TOKENS`.
WORDS: dict[str, str] = {
    **LAB_LABELS,
    **DISPLAY_NAMES,
    **BASELINE_NAMES,
    "cox_labs": "Cox model (labs)",
    "cox_pet_fusion": "PET fusion network, Cox loss",
    "patient_id": "Patient",
    "pfs_months": "PFS (months)",
    "pfs_short": "PFS <= 12 months",
    "event": "Progression or death observed",
    "p_value": "p",
    "prob_sd": "SD of predicted probabilities",
    "mean_prob": "mean predicted probability",
    "n_train": "n train",
    "n_test": "n test",
    "n_val": "n validation",
    "n_pos": "n short PFS",
    "hazard_ratio": "hazard ratio",
    "calibration_in_large": "calibration in the large",
    "harrell": "Harrell's C",
    "uno": "Uno's C",
    "ibs": "integrated Brier score",
    "auc_horizon": "time-dependent AUROC (12 months)",
    "c_true": "C of the true risk",
    "share_short": "share with short PFS",
    "logrank_chi2": "log-rank chi²",
    "dice_mean": "Dice mean",
    "dice_sd": "Dice SD",
    "volume_ml_fractional": "volume (ml, fractional)",
    "volume_ml_majority": "volume (ml, majority)",
    "mass_fraction": "share of saliency",
    "ceiling_labs": "Ceiling: labs (true values)",
    "ceiling_image": "Ceiling: image (true values)",
    "ceiling_labs_image": "Ceiling: labs + image (true values)",
    "bayes_ceiling": "Bayes ceiling",
}

_TOKENS: dict[str, str] = {
    "auroc": "AUROC", "auprc": "AUPRC", "se": "SE", "sd": "SD", "ci": "CI", "iqr": "IQR", "hr": "HR",
    "pet": "PET", "ct": "CT", "suv": "SUV", "suvmax": "SUVmax", "pfs": "PFS", "cga": "CgA", "ggt": "gamma-GT",
    "ast": "AST", "alt": "ALT", "lr": "LR", "rf": "RF", "umap": "UMAP", "id": "id", "n": "n",
    "mm": "(mm)", "ml": "(ml)", "kg": "(kg)", "months": "(months)", "mo": "(months)", "s": "(s)",
    "p01": "1st percentile", "p99": "99th percentile", "q1": "Q1", "q3": "Q3",
}

_ACRONYMS = {"auroc": "AUROC", "auprc": "AUPRC", "brier": "Brier"}

_P_COLUMN = re.compile(r"(^|[\s_(])p(\s|_|$)|p[-_ ]?value", re.IGNORECASE)


def words(name: Any) -> Any:
    """A column or index name in words: :data:`WORDS`, else its snake_case tokens through :data:`_TOKENS`.

    Names that are not strings, or already hold a space or a capital (chapters that
    chose their own words), are returned as they are.
    """
    if not isinstance(name, str):
        return name
    if name in WORDS:
        return WORDS[name]
    if " " in name:  # a chapter's own words: only the metric abbreviations are set in capitals
        return " ".join(_ACRONYMS.get(t, t) for t in name.split(" "))
    if name != name.lower() or "_" not in name:
        return _TOKENS.get(name, name)
    return " ".join(_TOKENS.get(t, t) for t in name.split("_") if t)


def _is_p_column(name: Any) -> bool:
    return isinstance(name, str) and bool(_P_COLUMN.search(name))


def format_number(value: Any, p_value: bool = False) -> str:
    """One number for reading.

    Integers as they are; non-finite as an en dash (or ``inf``); a p-value below 0.001
    as ``< 0.001``, else with three decimals; other floats with three decimals below 10,
    one decimal below 1000, none above (thousands separated), and three significant
    digits below 0.001 so that a small effect is not printed as 0.000.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT:
        return "–"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(value)
    v = float(value)
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if p_value and 0 <= v <= 1:
        return "< 0.001" if v < 0.001 else f"{v:.3f}"
    a = abs(v)
    if a == 0:
        return "0"
    if a < 0.001:
        return f"{v:.3g}"
    if a < 10:
        return f"{v:.3f}"
    if a < 1000:
        return f"{v:.1f}"
    return f"{v:,.0f}"


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _whole_numbers(column: pd.Series) -> bool:
    """A float column whose every finite value is a whole number (a count stored as float): shown without decimals."""
    if not pd.api.types.is_float_dtype(column.dtype):
        return False
    values = column.to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    return len(values) > 0 and bool(np.all(values == np.round(values))) and bool(np.all(np.abs(values) < 1e15))


def _row_numbers_only(index: pd.Index) -> bool:
    return index.name is None and not isinstance(index, pd.MultiIndex) and (
        isinstance(index, pd.RangeIndex) or pd.api.types.is_integer_dtype(index.dtype))


def reader_table(df: pd.DataFrame | pd.Series, names: Mapping[str, str] | None = None) -> Any:
    """``df`` as a pandas ``Styler`` for a reader: index hidden if it only numbers rows, words, rounding.

    ``names`` adds or overrides words for this table (e.g. a chapter's display names).
    The returned Styler renders with ``to_html()``; ``df`` itself is not modified.
    """
    if isinstance(df, pd.Series):
        df = df.to_frame()
    lookup = {**WORDS, **(names or {})}

    def say(name: Any) -> Any:
        return lookup[name] if isinstance(name, str) and name in lookup else words(name)

    p_columns = {c for c in df.columns if _is_p_column(c if not isinstance(c, tuple) else c[-1])}
    shown = df.rename(columns=say, index=say if df.index.dtype == object else None)
    shown.columns = shown.columns.rename([say(n) for n in shown.columns.names]) if isinstance(
        shown.columns, pd.MultiIndex) else shown.columns.rename(say(shown.columns.name))
    shown.index = shown.index.rename([say(n) for n in shown.index.names]) if isinstance(
        shown.index, pd.MultiIndex) else shown.index.rename(say(shown.index.name))
    positions = {i for i, c in enumerate(df.columns) if c in p_columns}
    counts = {i for i in range(df.shape[1]) if _whole_numbers(df.iloc[:, i])}  # e.g. patients, stored as float

    def cell(position: int):
        if position in counts:
            return lambda v: escape(format_number(int(v) if _finite(v) else v), quote=False)
        return lambda v: escape(format_number(v, p_value=position in positions), quote=False)

    for column in ("model", "models"):  # model keys in a column of models, as everywhere else, by name
        if column in shown.columns and shown[column].dtype == object:
            shown[column] = shown[column].map(lambda v: lookup.get(v, v) if isinstance(v, str) else v)
    styler = shown.style
    if shown.columns.is_unique:
        styler = styler.format({c: cell(i) for i, c in enumerate(shown.columns)})
    else:
        styler = styler.format(lambda v: escape(format_number(v), quote=False))
    styler = styler.format_index(lambda v: escape(format_number(v), quote=False), axis=0)
    styler = styler.format_index(lambda v: escape(str(v), quote=False), axis=1)
    if _row_numbers_only(df.index):
        styler = styler.hide(axis="index")
    return styler.set_table_attributes('class="dataframe reader-table"')


#: Above this many cells a table is drawn by pandas' plain HTML (no rounding or words), which is fast.
LARGE = 20_000


def _html(df: pd.DataFrame | pd.Series) -> str:
    if df.size > LARGE:
        frame = df.to_frame() if isinstance(df, pd.Series) else df
        return frame.to_html(index=not _row_numbers_only(frame.index), max_rows=200, classes="reader-table")
    return reader_table(df).to_html()


def use_reader_tables() -> bool:
    """Make every DataFrame (and Series) the running IPython kernel displays a :func:`reader_table`.

    Returns False outside IPython (nothing to configure).
    """
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with the notebook extras
        return False
    ip = get_ipython()
    if ip is None:
        return False
    html = ip.display_formatter.formatters["text/html"]
    html.for_type(pd.DataFrame, _html)
    html.for_type(pd.Series, _html)
    return True
