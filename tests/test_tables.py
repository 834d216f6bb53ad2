"""Tables for readers (prrt_utils.report.tables): rounding, words, no row-number index, the kernel's formatter."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from prrt_utils.report.tables import format_number, reader_table, use_reader_tables, words


@pytest.mark.parametrize("value, p_value, expected", [
    (0.75123, False, "0.751"),
    (16.72, False, "16.7"),
    (1234.6, False, "1,235"),
    (0.00012, False, "0.00012"),
    (-0.0532, False, "-0.053"),
    (0.0, False, "0"),
    (77, False, "77"),
    (np.int64(12), False, "12"),
    (math.nan, False, "–"),
    (None, False, "–"),
    (math.inf, False, "inf"),
    (0.0004, True, "< 0.001"),
    (0.0412, True, "0.041"),
    (1.0, True, "1.000"),
    (True, False, "True"),
    ("0.5 ± 0.1", False, "0.5 ± 0.1"),
])
def test_numbers_are_rounded_for_reading(value, p_value, expected):
    assert format_number(value, p_value=p_value) == expected


def test_column_names_are_put_in_words_with_their_units():
    assert words("cga_ug_l") == "CgA (µg/l)"
    assert words("ggt_u_l") == "gamma-GT (U/l)"
    assert words("auroc_mean") == "AUROC mean"
    assert words("ct_spacing_mm") == "CT spacing (mm)"
    assert words("pet_fusion") == "PET fusion"
    assert words("lr_labs") == "Logistic regression (labs)"
    assert words("auroc (mean ± SE)") == "AUROC (mean ± SE)"  # a chapter's own words keep all but the acronym
    assert words("Brier") == "Brier"
    assert words(3) == 3


def _cells(html: str, tag: str) -> list[str]:
    return [c.strip() for c in re.findall(rf"<{tag}[^>]*>([^<]*)</{tag}>", html)]


def test_a_row_number_index_is_hidden_and_numbers_columns_and_models_read_as_words():
    df = pd.DataFrame({"model": ["pet_fusion", "rf_labs"], "auroc": [0.75123, 0.7], "p_value": [0.0004, 0.2],
                       "cga_ug_l": [58.25, math.nan], "note": ["a<b", "x"]})
    before = df.copy()
    html = reader_table(df).to_html()
    headers = _cells(html, "th")
    assert headers == ["model", "AUROC", "p", "CgA (µg/l)", "note"]  # no index header, no 0 / 1 row headers
    assert _cells(html, "td") == ["PET fusion", "0.751", "&lt; 0.001", "58.2", "a&lt;b",
                                  "Random Forest (labs)", "0.700", "0.200", "–", "x"]
    pd.testing.assert_frame_equal(df, before)  # only the drawing is rounded: the analyst's table keeps its digits


def test_a_count_stored_as_float_is_shown_without_decimals_but_a_metric_keeps_its_own():
    df = pd.DataFrame({"n_test": [39.0, 38.0, math.nan], "auroc": [1.0, 0.75, 0.5]})
    assert _cells(reader_table(df).to_html(), "td") == ["39", "1.000", "38", "0.750", "–", "0.500"]


def test_a_named_index_is_kept_in_words_and_a_series_is_drawn_as_a_table():
    df = pd.DataFrame({"auroc": [0.7, 0.6]}, index=pd.Index(["ct_only", "pet_only"], name="model"))
    headers = _cells(reader_table(df).to_html(), "th")
    assert "CT only" in headers and "PET only" in headers and "model" in headers
    repeat = pd.DataFrame({"auroc": [0.7]}, index=pd.Index([0], name="repeat"))
    assert "repeat" in _cells(reader_table(repeat).to_html(), "th")  # a named integer index is data: kept
    series = pd.Series({"n_patients": 116, "median_pfs_months": 16.72}, name="value")
    html = reader_table(series).to_html()
    assert "16.7" in _cells(html, "td") and "n patients" in _cells(html, "th")


def test_the_kernel_draws_every_displayed_dataframe_as_a_reader_table():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        assert use_reader_tables()
        bundle, _ = shell.display_formatter.format(pd.DataFrame({"auroc_mean": [0.75123]}))
        html = bundle["text/html"]
        assert "reader-table" in html and "AUROC mean" in html and "0.751" in html
        assert not re.search(r"<th[^>]*>\s*0\s*</th>", html)
        large, _ = shell.display_formatter.format(pd.DataFrame({"x": np.arange(30_000)}))
        assert "reader-table" in large["text/html"] and not re.search(r"<th>\s*0\s*</th>", large["text/html"])
    finally:
        InteractiveShell.clear_instance()
