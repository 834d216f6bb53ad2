"""The book's one Kaplan-Meier figure and its palette (prrt_utils.io.figures): traces, names and values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from prrt_utils.analysis.kaplan_meier import km_by_prediction
from prrt_utils.data import cohort_stats
from prrt_utils.io.figures import PALETTE, km_figure, rgba


def _shapes(fig):
    return fig.to_dict()["layout"].get("shapes", [])


def test_rgba_makes_a_palette_colour_transparent():
    assert rgba(PALETTE[0], 0.2) == "rgba(31,119,180,0.2)"
    assert len(set(PALETTE)) == len(PALETTE) and PALETTE[-1] == "#7f7f7f"


def test_a_cohort_curve_with_its_band_quartiles_reference_and_patients_at_risk():
    km = cohort_stats.kaplan_meier(pd.DataFrame({"pfs_months": [3.0, 8, 13, 20, 25, 31], "event": 1}))
    curve = km.curve()
    fig = km_figure(curve.assign(group="ours (n=6)"), threshold=12.0, title="PFS",
                    quartiles={"ours": (km.q1, km.median, km.q3), "paper (real cohort)": (9.1, 15.7, 26.7)},
                    at_risk=km.at_risk(range(0, 31, 6)))
    band, line, ours, paper, risk = fig.data
    assert band.fill == "toself" and band.showlegend is False and band.fillcolor == rgba(PALETTE[0], 0.15)
    np.testing.assert_allclose(band.x, np.r_[curve["time_months"], curve["time_months"][::-1]])
    np.testing.assert_allclose(band.y, np.r_[curve["ci_upper"], curve["ci_lower"][::-1]])
    assert line.name == "ours (n=6)" and line.line.color == PALETTE[0] and line.line.shape == "hv"
    np.testing.assert_allclose(line.x, curve["time_months"])
    np.testing.assert_allclose(line.y, curve["survival"])
    assert ours.name == "ours" and list(ours.x) == [km.q1, km.median, km.q3] and list(ours.y) == [0.75, 0.5, 0.25]
    assert paper.name == "paper (real cohort)" and list(paper.x) == [9.1, 15.7, 26.7]
    assert paper.marker.symbol == "x" and paper.marker.color == PALETTE[-1]
    assert risk.mode == "text" and list(risk.text) == ["6", "5", "4", "3", "2", "1"]
    assert list(risk.x) == [0, 6, 12, 18, 24, 30] and risk.yaxis == "y2"
    assert [s["x0"] for s in _shapes(fig)] == [12.0]
    assert fig.layout.title.text == "PFS"


def test_two_predicted_groups_each_get_a_band_and_a_curve_in_palette_order():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"patient_id": [f"P{i}" for i in range(40)], "prob": np.r_[np.full(20, 0.2), np.full(20, 0.8)],
                       "pfs_months": np.r_[rng.uniform(10, 40, 20), rng.uniform(1, 15, 20)], "event": 1})
    km = km_by_prediction(df, prob_is="short")
    fig = km_figure(km.labelled_curves(), threshold=12.0, title=km.logrank_text())
    assert len(fig.data) == 4 and [t.fill for t in fig.data] == ["toself", None, "toself", None]
    curves = fig.data[1::2]
    assert [t.name for t in curves] == list(dict.fromkeys(km.labelled_curves()["group"]))
    assert "n=20" in curves[0].name and "n=20" in curves[1].name
    assert [t.line.color for t in curves] == list(PALETTE[:2])
    short = km.curves()[lambda c: c["group"] == "predicted short PFS"]
    np.testing.assert_allclose(curves[1].y, short["survival"])
    assert fig.layout.title.text.startswith("log-rank chi2 = ")


def test_curves_without_a_band_draw_one_line_each_and_no_threshold_when_none_is_given():
    curves = pd.DataFrame({"group": ["truth"] * 3 + ["censored"] * 3, "time_months": [0.0, 5, 10] * 2,
                           "survival": [1.0, 0.6, 0.2, 1.0, 0.7, 0.4]})
    fig = km_figure(curves)
    assert [t.name for t in fig.data] == ["truth", "censored"]
    assert [list(t.y) for t in fig.data] == [[1.0, 0.6, 0.2], [1.0, 0.7, 0.4]]
    assert _shapes(fig) == [] and fig.layout.yaxis.range == (0, 1.02)


@pytest.mark.parametrize("n_groups", [1, 3])
def test_every_group_is_drawn_once(n_groups):
    curves = pd.concat([pd.DataFrame({"group": f"g{i}", "time_months": [0.0, 1.0], "survival": [1.0, 0.5]})
                        for i in range(n_groups)])
    assert [t.name for t in km_figure(curves, threshold=0.5).data] == [f"g{i}" for i in range(n_groups)]
