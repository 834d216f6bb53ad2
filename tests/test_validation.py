"""External validation and the patient report on the synthetic second centre, as the README shows them."""

from __future__ import annotations

import pandas as pd
import pytest

from prrt_utils import cli


@pytest.mark.slow
@pytest.mark.browser
def test_prrt_validate_on_the_second_centre_agrees_with_the_chapter_and_opens_offline(built_book, tmp_path,
                                                                                    offline_browser):
    package = built_book / "work" / "packages" / "pet_fusion"
    out = tmp_path / "validation.html"
    assert cli.main(["validate", "--model", str(package), "--data", str(built_book / "data" / "synthetic-b"),
                     "--work", str(tmp_path / "w"), "--out", str(out), "--quiet", "--jobs", "1"]) == 0
    # the chapter (book) and the command (a fresh work folder) predict the same patients identically
    book = pd.read_parquet(built_book / "work" / "validation-centre" / "validation" / "pet_fusion" / "predictions.parquet")
    cmd = pd.read_parquet(tmp_path / "w" / "validation" / "pet_fusion" / "predictions.parquet")
    pd.testing.assert_frame_equal(book, cmd)
    assert cmd["patient_id"].str.startswith("EXT-").all()
    shift = pd.read_csv(tmp_path / "w" / "validation" / "pet_fusion" / "shift.csv").set_index("feature")
    assert bool(shift.loc["cga_ug_l", "shifted"])  # the second centre's CgA assay reads 1.6 times higher
    page = offline_browser.open(out)
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=20000)
    assert page.locator(".js-plotly-plot").count() == 3  # reliability, decision curve, Kaplan-Meier
    page = offline_browser.open(built_book / "_build" / "html" / "_static" / "patient_report.html")
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=20000)
    assert "Research model" in page.content()
    offline_browser.assert_clean()
