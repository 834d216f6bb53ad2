"""External validation and the patient report on the synthetic second centre, as the README shows them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from prrt_utils import cli
from prrt_utils.data.cohort import LAB_LABELS


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


def test_validation_cohort_defaults_to_the_second_centre_beside_the_data():
    from prrt_utils.analysis import validation as v

    assert v.validation_cohort("data/synthetic") == Path("data/synthetic-b")
    assert v.validation_cohort("data/synthetic", "/elsewhere/centre-b") == Path("/elsewhere/centre-b")


def test_shift_sentence_names_the_flagged_features_and_the_expected_ones_missed():
    from prrt_utils.analysis import validation as v

    shift = pd.DataFrame({"feature": ["cga_ug_l", "ggt_u_l", "ast_u_l"], "shifted": [True, False, True]})
    assert v.shift_sentence(shift) == "Flagged: **cga_ug_l, ast_u_l**."
    missed = v.shift_sentence(shift, v.EXPECTED_SHIFT)
    assert "Expected on the synthetic second centre: cga_ug_l, ggt_u_l; not flagged: ggt_u_l" in missed
    assert v.shift_sentence(shift.assign(shifted=True), v.EXPECTED_SHIFT).endswith("all of them flagged.")
    assert v.shift_sentence(shift.assign(shifted=False)) == "Flagged: **none**."


def test_hazard_ratio_sentence_gives_the_ratio_or_says_one_group_is_empty():
    from types import SimpleNamespace

    from prrt_utils.analysis import validation as v

    hr = SimpleNamespace(n_short=12, n_long=30, hazard_ratio=2.345, ci=(1.1, 4.9), p_value=0.0123)
    assert v.hazard_ratio_sentence(hr) == ("Hazard ratio, predicted short vs predicted long: **2.35** (95 % CI 1.10 to "
                                           "4.90, p = 0.0123; 12 vs 30 patients).")
    assert "every patient falls into one group (0 predicted short, 42 predicted long)" in v.hazard_ratio_sentence(
        SimpleNamespace(n_short=0, n_long=42))


def test_the_validation_chapter_without_another_cohort_shows_only_why(tmp_path):
    from prrt_utils.report import chapters

    chapter = chapters.validation_chapter(tmp_path / "work", tmp_path / "data", "pet_fusion", names={"pet_fusion": "PET fusion"})
    assert not chapter.ready and chapter.other == tmp_path / "synthetic-b" and chapter.name == "PET fusion"
    (intro,) = chapter.intro()
    assert "No validation cohort" in intro.data and str(tmp_path / "synthetic-b") in intro.data
    assert chapter.manifest_section() == chapter.shift_section() == chapter.survival_section() == ()
    assert chapter.report_section() == ()
    assert chapter.findings().sentences == ("No validation cohort: nothing to report.",)


def test_the_book_static_folder_and_its_link():
    from prrt_utils.report import book

    assert book.static_dir("/repo") == Path("/repo/book/executed/_static")
    assert book.static_href("patient_report.html") == "../../_static/patient_report.html"


def test_the_shift_section_names_each_feature_in_words(tmp_path):
    from prrt_utils.report import chapters

    shift = pd.DataFrame({"feature": ["cga_ug_l", "ast_u_l"], "kind": ["labs", "labs"], "shift_iqr": [2.0, 0.1],
                          "shifted": [True, False]})
    chapter = chapters.ValidationChapter(other=tmp_path, model="pet_fusion", name="PET fusion", package=object(),
                                         shift=shift, expected_shift=frozenset({"cga_ug_l"}))
    sentence, table = chapter.shift_section()
    assert table["feature"].tolist() == [LAB_LABELS["cga_ug_l"], LAB_LABELS["ast_u_l"]]
    assert "cga_ug_l" not in sentence.data and f"**{LAB_LABELS['cga_ug_l']}**" in sentence.data
    assert sentence.data.endswith("all of them flagged.")
