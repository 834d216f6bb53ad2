"""Chapter 06's figures and sections (prrt_utils.analysis.explain_figures): traces and known answers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon

from prrt_utils.analysis import explain_figures
from prrt_utils.analysis.explain_figures import distance_table
from prrt_utils.analysis.saliency_stats import distribution_distances
from prrt_utils.io.figures import PALETTE
from prrt_utils.report import chapters


class _StubExplainer:
    """What chapter 06's functions ask of an Explainer, with known answers."""

    def __init__(self):
        self.config = SimpleNamespace(vmin=0.3, repeat=0, bins=10)
        self.folds = pd.DataFrame({"repeat": [0, 0, 1], "patient_id": ["B", "A", "C"]})
        pet = np.arange(2 * 1 * 2 * 2 * 2, dtype=np.float32).reshape(2, 1, 2, 2, 2)
        self.data = SimpleNamespace(volumes={"pet": pet}, y=np.array([1, 0]), rows=lambda ids: [["A", "B"].index(i) for i in ids])
        self.asked = []

    def lab_gradients(self, models):
        self.asked.append(list(models))
        return pd.DataFrame({"model": ["pet_fusion"] * 4, "feature": ["ast_u_l", "ast_u_l", "cga_ug_l", "cga_ug_l"],
                             "gradient": [-1.0, 3.0, 0.5, 0.5]})

    def saliency(self, model, ids):
        return np.full((1, 2, 2, 2), 2.0 if model == "pet_only" else -4.0, dtype=np.float32)

    def labels_on_grid(self, ids):
        labels = np.zeros((len(ids), 2, 2, 2), np.uint8)
        labels[:, 0, 0, 0] = 7
        vols = pd.DataFrame({"region": ["lesion", "liver", "lesion"], "volume_ml_fractional": [1.0, 4.0, 1.0],
                             "volume_ml_majority": [1.0, 4.0, 0.0]})
        return {"labels": labels, "names": {7: "lesion", 1: "liver"}, "volumes": vols}

    def alignment_check(self, pid):
        return 0.9876

    def saliency_mass(self, models):
        return pd.DataFrame({"model": ["pet_only"] * 2, "region": ["lesion", "liver"], "mass_fraction": [0.6, 0.4],
                             "enrichment": [50.0, 1.0], "n_patients": [2, 2], "n_without_saliency": [0, 0]})


def test_lab_gradient_table_is_the_mean_absolute_and_signed_gradient_per_lab_and_none_without_fusion():
    ex = _StubExplainer()
    assert explain_figures.lab_gradient_table(ex, []) is None and ex.asked == []
    table = explain_figures.lab_gradient_table(ex, ["pet_fusion"])
    assert table.loc["ast_u_l", ("mean_abs_gradient", "pet_fusion")] == 2.0
    assert table.loc["ast_u_l", ("mean_gradient", "pet_fusion")] == 1.0
    assert table.loc["cga_ug_l", ("mean_gradient", "pet_fusion")] == 0.5


def test_saliency_panels_normalise_each_map_outline_the_lesions_and_quote_the_repeats_predictions():
    ex = _StubExplainer()
    pred = pd.DataFrame({"model": ["pet_only", "pet_fusion", "pet_only", "pet_fusion", "pet_only"],
                         "repeat": [0, 0, 1, 1, 0], "patient_id": ["B"] * 4 + ["A"], "prob": [0.25, 0.75, 0.9, 0.9, 0.5]})
    panels, checks = explain_figures.saliency_panels(ex, pred, ["pet_only", "pet_fusion"], ["B"], 0,
                                             {"pet_only": "PET only"}, with_lesions=True)
    (panel,) = panels
    assert panel.title == "B: long PFS; P(short) PET only 0.25, pet_fusion 0.75"
    assert set(panel.maps) == {"PET only", "pet_fusion"} and all((m == 1.0).all() for m in panel.maps.values())
    np.testing.assert_array_equal(panel.pet, ex.data.volumes["pet"][1, 0])
    assert panel.lesions.sum() == 1 and panel.lesions[0, 0, 0]
    assert checks == ["B: PET vs resampled true SUV, Pearson r = 0.988 (label geometry check)"]
    assert explain_figures.saliency_panels(ex, pred, [], ["B"], 0) == ([], [])
    panels, checks = explain_figures.saliency_panels(ex, pred, ["pet_only"], ["A"], 0, with_lesions=False)
    assert panels[0].lesions is None and checks == [] and panels[0].title.startswith("A: short PFS")


def test_saliency_mass_section_needs_truth_and_sums_the_region_volumes_of_the_repeat():
    ex = _StubExplainer()
    none = chapters.saliency_mass_section(ex, ["pet_only"], False, "data/own")
    assert none.mass is None and none.tables() == (none.reason,) and "data/own" in none.reason
    assert "real cohort has none" in none.findings().sentences[0]
    sec = chapters.saliency_mass_section(ex, ["pet_only"], True)
    assert sec.volumes.loc["lesion", "volume_ml_fractional"] == 2.0
    assert sec.volumes.loc["lesion", "ratio"] == 0.5 and sec.volumes.loc["liver", "ratio"] == 1.0
    fraction, enrichment, _ = sec.tables()
    assert fraction.loc["lesion", "pet_only"] == 0.6 and enrichment.loc["lesion", "pet_only"] == 50.0
    assert "60 %" in sec.findings().sentences[0]
    assert explain_figures.gradient_comparison(ex, ["pet_only"]) == (
        "Two PET models are needed for this comparison (parameter `compare`).",)


def test_jensen_shannon_distance_is_scipys_and_the_paper_value_sits_beside_it():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0, 1, 3000), rng.normal(0.7, 1.2, 3000)
    r = distribution_distances(a, b, bins=20)
    edges = np.histogram_bin_edges(np.r_[a, b], bins=20)
    p, q = (np.histogram(x, edges)[0] / x.size for x in (a, b))
    assert r.js_distance == pytest.approx(jensenshannon(p, q, base=2))
    assert r.js_divergence == pytest.approx(r.js_distance**2)
    table = distance_table(r).set_index("metric")
    assert table.loc["Jensen-Shannon distance (log base 2)", "paper (real cohort)"] == 0.418
    assert math.isnan(table.loc["Jensen-Shannon divergence (log base 2)", "paper (real cohort)"])


def test_importance_figure_draws_one_bar_series_per_model_with_its_se_in_palette_order():
    summary = pd.DataFrame({"model": ["rf_labs"] * 2 + ["pet_fusion"] * 2, "feature": ["AST", "CgA"] * 2,
                            "mean_drop": [0.1, 0.02, 0.05, -0.01], "se_folds": [0.01, 0.02, 0.03, 0.04]})
    fig = explain_figures.importance_figure(summary, {"rf_labs": "Random Forest"})
    assert [(t.type, t.name) for t in fig.data] == [("bar", "Random Forest"), ("bar", "pet_fusion")]
    assert [list(t.x) for t in fig.data] == [["AST", "CgA"], ["AST", "CgA"]]
    assert [list(t.y) for t in fig.data] == [[0.1, 0.02], [0.05, -0.01]]
    assert list(fig.data[1].error_y.array) == [0.03, 0.04]
    assert [t.marker.color for t in fig.data] == list(PALETTE[:2])


def test_umap_figure_draws_every_patient_once_by_class_and_split():
    frame = pd.DataFrame({"model": ["a"] * 4 + ["b"] * 4, "patient_id": list("PQRS") * 2,
                          "split": ["train", "test"] * 4, "y_true": [0, 0, 1, 1] * 2,
                          "umap_1": np.arange(8.0), "umap_2": -np.arange(8.0), "silhouette": [0.25] * 4 + [-0.5] * 4})
    fig = explain_figures.umap_figure(frame)
    assert len(fig.data) == 8 and all(t.mode == "markers" for t in fig.data)
    assert sum(len(t.x) for t in fig.data) == len(frame)
    assert [t.name for t in fig.data[:4]] == ["PFS > 12 months, test", "PFS > 12 months, train",
                                              "PFS <= 12 months, test", "PFS <= 12 months, train"]
    assert {t.marker.color for t in fig.data} == {PALETTE[0], PALETTE[1]}
    assert list(fig.data[0].x) == [1.0] and list(fig.data[0].y) == [-1.0] and list(fig.data[0].text) == ["Q"]
    assert [a.text for a in fig.layout.annotations] == ["a<br>silhouette 0.25", "b<br>silhouette -0.50"]


def test_gradient_histogram_figure_draws_each_models_density_at_the_bin_centres():
    hist = pd.DataFrame({"model": ["pet_only"] * 2 + ["pet_fusion"] * 2, "bin_left": [0.0, 0.5] * 2,
                         "bin_right": [0.5, 1.0] * 2, "density": [1.5, 0.5, 1.0, 1.0]})
    fig = explain_figures.gradient_histogram_figure(hist, {"pet_only": "PET only"})
    assert [t.name for t in fig.data] == ["PET only", "pet_fusion"]
    assert [list(t.x) for t in fig.data] == [[0.25, 0.75], [0.25, 0.75]]
    assert [list(t.y) for t in fig.data] == [[1.5, 0.5], [1.0, 1.0]]
    assert [t.line.color for t in fig.data] == list(PALETTE[:2]) and fig.layout.yaxis.type == "log"
