"""The chapters' shared prelude and display helper (prrt_utils.report.notebook)."""

from __future__ import annotations

import pandas as pd
from helpers import fold_predictions

from prrt_utils.analysis import metrics
from prrt_utils.models import stored
from prrt_utils.report import notebook

#: Two models' out-of-fold predictions, PET fusion the stronger (30 patients, 2 x 3 folds).
SIGNALS = {"rf_labs": 0.5, "pet_fusion": 1.5}


def test_load_results_reads_the_stored_predictions_in_the_given_order_and_no_truth_on_an_own_cohort(tmp_path,
                                                                                                  monkeypatch):
    pred = fold_predictions(SIGNALS, n=30, repeats=2)
    asked = []
    monkeypatch.setattr(stored, "read_results", lambda work_dir, models: asked.append(list(models)) or pred)
    out = notebook.load_results(tmp_path, tmp_path / "data", ["pet_fusion", "rf_labs"])
    assert asked == [["pet_fusion", "rf_labs"]]
    assert out.models == ["pet_fusion", "rf_labs"]
    assert out.results.models == ["pet_fusion", "rf_labs"]
    expected = metrics.evaluate(pred, order=["pet_fusion", "rf_labs"])
    assert out.results.get("pet_fusion").mean == expected.get("pet_fusion").mean
    pd.testing.assert_frame_equal(out.fold_metrics, expected.fold_metrics)
    assert out.truth is None and out.ceiling is None
    assert out.name("pet_fusion") == "PET fusion" and out.name("unknown") == "unknown"
    assert set(out.paper["model"]) >= {"pet_fusion"}


def test_load_results_reads_the_truth_of_a_synthetic_cohort(tmp_path, monkeypatch):
    monkeypatch.setattr(stored, "read_results", lambda work_dir, models: fold_predictions(SIGNALS, n=30, repeats=2))
    (tmp_path / "ground_truth").mkdir()
    pd.DataFrame({"patient_id": ["P000"], "p_short_bayes": [0.3]}).to_csv(tmp_path / "ground_truth" / "truth.csv",
                                                                         index=False)
    out = notebook.load_results(tmp_path, tmp_path, ["rf_labs"], ceilings=False)
    assert out.truth["patient_id"].tolist() == ["P000"] and out.ceiling is None


def test_show_displays_tables_calls_show_on_figures_prints_text_and_skips_none(monkeypatch, capsys):
    shown, displayed = [], []

    class Figure:
        def show(self):
            shown.append(self)

    import IPython.display

    monkeypatch.setattr(IPython.display, "display", lambda item: displayed.append(item))
    fig, table = Figure(), pd.DataFrame({"a": [1]})
    notebook.show(table, None, fig, "text")
    assert shown == [fig] and displayed == [table]
    assert capsys.readouterr().out == "text\n"


def test_versus_ceiling_needs_the_truth_and_defaults_to_the_chapters_results(monkeypatch):
    pred = fold_predictions(SIGNALS, n=30, repeats=2)
    results = metrics.evaluate(pred, order=["rf_labs", "pet_fusion"])
    own = notebook.ChapterResults(["rf_labs", "pet_fusion"], pred, results, None, None, {}, pd.DataFrame())
    assert own.versus_ceiling() is None
    assert own.versus_ceiling(missing="no truth") == "no truth"
    seen = []
    monkeypatch.setattr(metrics, "versus_ceiling", lambda r, c: seen.append((r, c)) or "table")
    synthetic = notebook.ChapterResults(["rf_labs", "pet_fusion"], pred, results, pd.DataFrame(), "ceiling", {},
                                      pd.DataFrame())
    assert synthetic.versus_ceiling(missing="no truth") == "table" and seen == [(results, "ceiling")]
    other = synthetic.subset(["pet_fusion"])
    assert other.models == ["pet_fusion"]
    assert other.get("pet_fusion").mean == results.get("pet_fusion").mean
    synthetic.versus_ceiling(other)
    assert seen[-1] == (other, "ceiling")
