"""Per-fold metrics, mean +- SE over repeats, curves and the Bayes ceiling (prrt_utils.analysis.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from prrt_utils.analysis import metrics
from prrt_utils.analysis.metrics import (
    MetricsError,
    bayes_ceiling,
    curves_figure,
    evaluate,
    fold_metrics,
    loss_figure,
    metrics_figure,
    pr_curves,
    roc_curves,
    side_by_side,
)


def predictions(n_repeats: int = 3, n_folds: int = 3, n: int = 30, seed: int = 0, model: str = "m") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_repeats):
        for f in range(n_folds):
            y = rng.integers(0, 2, n)
            y[:2] = [0, 1]
            p = np.round(np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1), 2)  # ties on purpose
            rows.append(pd.DataFrame({"model": model, "repeat": r, "fold": f,
                                      "patient_id": [f"P{i:02d}" for i in range(n)], "y_true": y, "prob": p}))
    return pd.concat(rows, ignore_index=True)


def test_fold_metrics_match_known_answers():
    # y = 0 0 1 1 with scores .1 .4 .35 .8: 3 of 4 positive-negative pairs ordered -> AUROC 0.75;
    # average precision = 0.5 * 1 (at .8) + 0.5 * 2/3 (at .35) = 0.8333; accuracy at 0.5: 3 of 4
    p = pd.DataFrame({"model": "m", "repeat": 0, "fold": 0, "patient_id": list("abcd"),
                      "y_true": [0, 0, 1, 1], "prob": [0.1, 0.4, 0.35, 0.8]})
    row = fold_metrics(p).iloc[0]
    assert row["auroc"] == pytest.approx(0.75)
    assert row["auprc"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert row["accuracy"] == pytest.approx(0.75)
    assert (row["n"], row["n_pos"]) == (4, 2)


def test_mean_and_se_are_over_repeats_of_the_per_repeat_fold_means():
    pred = predictions(n_repeats=4)
    res = evaluate(pred)
    fm = res.fold_metrics
    per_repeat = fm.groupby("repeat")["auroc"].mean().to_numpy()
    s = res.get("m", "auroc")
    assert s.mean == pytest.approx(per_repeat.mean())
    assert s.se == pytest.approx(per_repeat.std(ddof=1) / math.sqrt(4))
    assert (s.n_repeats, s.n_folds) == (4, 12)
    assert s.format() == f"{s.mean:.2f} ± {s.se:.2f}"
    row = res.to_frame().iloc[0]
    assert row["auprc_mean"] == pytest.approx(fm.groupby("repeat")["auprc"].mean().mean())


def test_area_under_the_mean_pr_curve_equals_the_mean_average_precision():
    pred = predictions()
    curve = pr_curves(pred, grid_points=20001).mean
    assert np.trapezoid(curve["y"], curve["x"]) == pytest.approx(evaluate(pred).get("m", "auprc").mean, abs=2e-4)


def test_area_under_the_mean_roc_curve_equals_the_mean_auroc():
    pred = predictions()
    curve = roc_curves(pred, grid_points=20001).mean
    assert np.trapezoid(curve["y"], curve["x"]) == pytest.approx(evaluate(pred).get("m", "auroc").mean, abs=2e-4)


def test_the_curve_band_is_one_standard_error_over_repeats_and_chance_lines_are_right():
    pred = predictions()
    roc, pr = roc_curves(pred, grid_points=11), pr_curves(pred, grid_points=11)
    m = roc.mean
    assert np.allclose(m["upper"] - m["y"], m["se"].clip(upper=1 - m["y"]))
    assert roc.chance["m"] == 0.5 and pr.chance["m"] == pytest.approx(pred["y_true"].mean())
    assert set(roc.points.groupby(["repeat", "fold"]).size().index) == {(r, f) for r in range(3) for f in range(3)}


def test_the_bayes_ceiling_scores_the_true_probability_on_the_same_test_folds():
    pred = pd.concat([predictions(model="a"), predictions(model="b", seed=1)])
    truth = pd.DataFrame({"patient_id": [f"P{i:02d}" for i in range(30)], "p_short_bayes": np.linspace(0, 1, 30)})
    ceiling = bayes_ceiling(pred, truth, model="a")
    a = pred[pred["model"] == "a"]
    expect = a.assign(prob=a["patient_id"].map(truth.set_index("patient_id")["p_short_bayes"]))
    np.testing.assert_allclose(ceiling.fold_metrics["auroc"], fold_metrics(expect)["auroc"])
    assert ceiling.models == ["bayes_ceiling"]


def test_a_patient_missing_from_the_truth_table_is_named():
    truth = pd.DataFrame({"patient_id": [f"P{i:02d}" for i in range(1, 30)], "p_short_bayes": 0.5})
    with pytest.raises(MetricsError, match="P00"):
        bayes_ceiling(predictions(), truth)


def test_a_missing_probability_names_model_fold_and_patient():
    pred = predictions()
    pred.loc[5, "prob"] = np.nan
    with pytest.raises(MetricsError, match="repeat 0, fold 0: patient P05"):
        evaluate(pred)


def test_the_paper_and_our_numbers_sit_side_by_side_with_their_cohorts_named():
    ours = evaluate(predictions(model="rf_labs"))
    paper = pd.DataFrame({"model": ["rf_labs"], "auroc_mean": [0.59], "auroc_se": [0.02], "auprc_mean": [0.67], "auprc_se": [0.01]})
    table = side_by_side(ours, paper, names={"rf_labs": "RF (labs only)"})
    assert table.loc[0, "model"] == "RF (labs only)"
    assert table.loc[0, "AUROC: paper (real cohort)"] == "0.59 ± 0.02"
    assert table.loc[0, "AUROC: ours (this cohort)"] == ours.get("rf_labs", "auroc").format()
    # The paper's AUPRC (long PFS positive) sits beside ours with the same positive class, not the other one.
    assert table.loc[0, "AUPRC, long PFS positive: paper (real cohort)"] == "0.67 ± 0.01"
    assert table.loc[0, "AUPRC, long PFS positive: ours (this cohort)"] == ours.get("rf_labs", "auprc_long").format()
    assert (table.loc[0, "AUPRC, short PFS positive: ours (paper: not reported)"]
            == ours.get("rf_labs", "auprc").format())


def test_auprc_is_given_for_either_positive_class_with_known_answers():
    # short PFS positive: scores .8 P, .5 N, .4 P, .3 N, .1 N -> AP = 1/2 * 1 + 1/2 * 2/3 = 0.8333
    # long PFS positive (1 - p): .9 P, .7 P, .6 N, .5 P, .2 N -> AP = 1/3 + 1/3 + 1/3 * 3/4 = 0.9167
    p = pd.DataFrame({"model": "m", "repeat": 0, "fold": 0, "patient_id": list("abcde"),
                      "y_true": [0, 0, 0, 1, 1], "prob": [0.1, 0.5, 0.3, 0.4, 0.8]})
    row = fold_metrics(p).iloc[0]
    assert row["auprc"] == pytest.approx(5 / 6)
    assert row["auprc_long"] == pytest.approx(11 / 12)


def test_figures_are_built_from_the_result_objects():
    pred = pd.concat([predictions(model="a"), predictions(model="b", seed=1)])
    res = evaluate(pred)
    fig = curves_figure(roc_curves(pred), pr_curves(pred))
    assert {t.name for t in fig.data} >= {"a", "b", "chance"}
    assert len(metrics_figure(res).data) == 2
    hist = pd.DataFrame({"model": "a", "repeat": 0, "fold": 0, "epoch": [1, 2], "train_loss": [0.7, 0.6]})
    assert len(loss_figure(hist).data) == 2


def test_a_model_that_gives_everyone_the_same_probability_is_flagged_and_scores_one_half():
    p = pd.DataFrame({"model": "m", "repeat": 0, "fold": 0, "patient_id": list("abcd"),
                      "y_true": [0, 1, 0, 1], "prob": [0.37] * 4})
    row = fold_metrics(p).iloc[0]
    assert row["prob_sd"] == 0.0 and row["auroc"] == 0.5 and row["auprc"] == 0.5


def test_models_keep_the_order_asked_for():
    pred = pd.concat([predictions(model="z"), predictions(model="a", seed=1)])
    res = evaluate(pred, order=["z", "a"])
    assert res.models == ["z", "a"] and list(res.fold_metrics["model"].unique()) == ["z", "a"]


def test_truth_ceilings_fit_on_each_training_part_and_score_the_true_probability_like_a_model():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from prrt_utils.data.folds import make_folds
    from prrt_utils.synthetic import CEILING_FAMILIES, SynthConfig, ceiling_features, sample_cohort

    c = sample_cohort(SynthConfig(n_patients=90, seed=4))
    cohort = c.clinical.assign(pfs_short=(c.clinical["pfs_months"] <= 12).astype(int))
    folds = make_folds(cohort, n_repeats=2)
    test = folds[folds["split"] == "test"].merge(cohort[["patient_id", "pfs_short"]], on="patient_id")
    preds = test.assign(model="m", y_true=test["pfs_short"], prob=0.5)[["model", "repeat", "fold", "patient_id", "y_true", "prob"]]
    out = metrics.truth_ceilings(preds, c.truth, c.clinical)
    assert out.models == ["ceiling_labs", "ceiling_image", "ceiling_labs_image", "bayes_ceiling"]
    assert out.get("bayes_ceiling").mean == pytest.approx(metrics.bayes_ceiling(preds, c.truth).get("bayes_ceiling").mean)
    # one fold by hand: fitted on the other two folds of its repeat, never on its own patients
    feats = ceiling_features(c.clinical, c.truth)
    y = cohort.set_index("patient_id")["pfs_short"]
    te = test[(test["repeat"] == 1) & (test["fold"] == 2)]["patient_id"]
    tr = test[(test["repeat"] == 1) & (test["fold"] != 2)]["patient_id"]
    cols = list(CEILING_FAMILIES["image"])
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(feats.loc[tr, cols], y[tr])
    expect = roc_auc_score(y[te], lr.predict_proba(feats.loc[te, cols])[:, 1])
    got = out.fold_metrics.query("model == 'ceiling_image' and repeat == 1 and fold == 2")["auroc"].item()
    assert got == pytest.approx(expect)


def test_each_model_is_set_beside_the_ceiling_of_the_inputs_it_sees():
    from prrt_utils.data.folds import make_folds
    from prrt_utils.synthetic import SynthConfig, sample_cohort

    c = sample_cohort(SynthConfig(n_patients=60, seed=2))
    cohort = c.clinical.assign(pfs_short=(c.clinical["pfs_months"] <= 12).astype(int))
    folds = make_folds(cohort, n_repeats=2)
    test = folds[folds["split"] == "test"].merge(cohort[["patient_id", "pfs_short"]], on="patient_id")
    base = test.assign(y_true=test["pfs_short"], prob=np.linspace(0, 1, len(test)))
    preds = pd.concat([base.assign(model=m) for m in ("rf_labs", "pet_only", "pet_fusion")])
    cols = ["model", "repeat", "fold", "patient_id", "y_true", "prob"]
    ceiling = metrics.truth_ceilings(preds[cols], c.truth, c.clinical)
    table = metrics.versus_ceiling(evaluate(preds[cols]), ceiling).set_index("model")["ceiling of what it sees (true values)"]
    for model, name, family in (("rf_labs", "ceiling_labs", "labs"), ("pet_only", "ceiling_image", "image"),
                                ("pet_fusion", "ceiling_labs_image", "labs+image")):
        assert table[model] == f"{ceiling.get(name).format(2)} ({family})"


def test_accuracy_uses_the_same_rule_as_the_kaplan_meier_split():
    from prrt_utils.models.stored import predicted_long

    # P(short) = 0.5 exactly is P(long) = 0.5 >= 0.5: predicted long, in the accuracy as in km_by_prediction.
    p = pd.DataFrame({"model": "m", "repeat": 0, "fold": 0, "patient_id": ["a", "b", "c", "d"],
                      "y_true": [0, 0, 1, 1], "prob": [0.5, 0.2, 0.5, 0.8]})
    assert fold_metrics(p)["accuracy"].iloc[0] == pytest.approx(0.75)
    assert predicted_long([0.9], prob_is="short", threshold=0.1).tolist() == [True]
    assert predicted_long([0.9 + 1e-6], prob_is="short", threshold=0.1).tolist() == [False]
    with pytest.raises(ValueError, match="prob_is"):
        predicted_long([0.5], prob_is="long PFS")


def test_comparison_power_detects_an_image_only_signal_and_not_a_missing_one():
    """Labs that carry nothing about the outcome: the truth beats labs nearly always and image rarely."""
    from prrt_utils.synthetic import SynthConfig

    blind_labs = SynthConfig(n_patients=116, cga_per_log_burden=0.0, cga_per_biology=0.0, ggt_per_log_hepatic=0.0,
                             ast_per_log_hepatic=0.0, beta_burden=0.6, beta_sstr=0.6, beta_biology=0.0)
    power = metrics.comparison_power(blind_labs, seeds=range(4))
    table = power.table().set_index("comparison")[power.share_column]
    assert "p" not in power.share_column.split()  # a percentage, not formatted as a p-value
    assert table["labs + image against labs"] == 100.0
    assert table["labs + image against image"] <= 25.0
    assert table["labs + image against labs and against image"] <= min(table.iloc[0], table.iloc[1])
    d = power.per_seed
    assert list(d["seed"]) == [0, 1, 2, 3] and (d["labs"] < 0.62).all() and (d["image"] > 0.7).all()


def test_read_synth_config_is_none_for_a_real_cohort(tmp_path):
    assert metrics.read_synth_config(tmp_path) is None


def test_comparison_power_leaves_out_a_draw_that_cannot_be_split():
    from prrt_utils.synthetic import SynthConfig

    tiny = SynthConfig(n_patients=7)
    kept = [s for s in range(12) if metrics.generator_ceilings(tiny.replace(seed=s)) is not None]
    power = metrics.comparison_power(tiny, seeds=range(12))
    assert 0 < len(kept) < 12  # some 7-patient draws have fewer than 3 of a class
    assert list(power.per_seed["seed"]) == kept and (power.table()["cohorts"] == len(kept)).all()
