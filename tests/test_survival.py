"""Survival helpers of chapter 07: censoring, Breslow, sksurv metrics, hazard ratio, cached fold runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from lifelines.datasets import load_rossi
from lifelines.utils import concordance_index
from sklearn.metrics import roc_auc_score

from prrt_utils.data.folds import make_folds
from prrt_utils.models import survival as sv
from prrt_utils.models.toy import toy_cohort_data
from prrt_utils.report import chapters


def _cohort(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"patient_id": [f"P{i:03d}" for i in range(n)],
                         "pfs_months": rng.exponential(20.0, n) + 0.5, "event": 1})


def test_administrative_censoring_censors_the_asked_fraction_and_never_extends_follow_up():
    c = _cohort()
    out = sv.administrative_censoring(c, 0.3, seed=1)
    assert (out["event"] == 0).sum() == 60
    assert (out["pfs_months"] <= out["pfs_true_months"] + 1e-12).all()
    # progression is seen exactly when it happens before the end of follow-up
    assert ((out["pfs_true_months"] <= out["followup_months"]) == (out["event"] == 1)).all()
    # censored patients were the longest-surviving relative to their entry: exit after the cut-off
    cutoff = out.attrs["cutoff_months"]
    exit_ = out["entry_months"] + out["pfs_true_months"]
    assert ((exit_ > cutoff) == (out["event"] == 0)).all()
    # where the label is known it equals the truth (administrative censoring never mislabels)
    known = out["label_known"]
    assert (out.loc[known, "pfs_short_observed"] == out.loc[known, "pfs_short_true"]).all()
    assert out.loc[~known, "pfs_short_observed"].isna().all()
    pd.testing.assert_frame_equal(out, sv.administrative_censoring(c, 0.3, seed=1))


def test_no_censoring_keeps_the_truth():
    c = _cohort(50)
    out = sv.administrative_censoring(c, 0.0)
    assert out["event"].all() and np.allclose(out["pfs_months"], c["pfs_months"])


def test_complete_cases_over_represent_short_pfs():
    out = sv.administrative_censoring(_cohort(2000), 0.4, seed=2)
    s = sv.complete_case_summary(out).set_index("design")["share_short"]
    assert s.iloc[1] > s.iloc[0] + 0.1  # complete cases vs truth
    assert abs(s.iloc[2] - s.iloc[0]) < 0.05  # label-known cases lose few long-PFS patients


def test_breslow_equals_lifelines_baseline_on_rossi():
    rossi = load_rossi()
    cph = CoxPHFitter(baseline_estimation_method="breslow").fit(rossi, "week", "arrest")
    eta = cph.predict_log_partial_hazard(rossi).to_numpy()
    b = sv.BreslowEstimator().fit(eta, rossi["week"].to_numpy(), rossi["arrest"].to_numpy())
    ref = cph.baseline_cumulative_hazard_.iloc[:, 0]
    np.testing.assert_allclose(b.cumulative_hazard(ref.index.to_numpy()), ref.to_numpy(), rtol=1e-8)
    times = [5.0, 20.0, 40.0, 52.0]
    np.testing.assert_allclose(b.survival_function(eta[:10], times),
                               cph.predict_survival_function(rossi.iloc[:10], times=times).to_numpy().T, rtol=1e-8)


def test_metrics_against_definitions_without_censoring():
    rng = np.random.default_rng(0)
    n = 120
    t = rng.exponential(15, n) + 0.1
    risk = -np.log(t) + rng.normal(0, 0.7, n)
    e = np.ones(n, int)
    times = np.linspace(3, 30, 10)
    s = np.exp(-np.outer(np.exp(risk - risk.mean()), times / 15))
    m = sv.survival_metrics(t, e, t, e, risk, s, times, horizon=12.0, true_time=t)
    assert m["harrell"] == pytest.approx(concordance_index(t, -risk, e))
    assert m["harrell"] == pytest.approx(m["c_true"])
    # cumulative/dynamic AUROC without censoring = AUROC of risk for T <= 12 vs T > 12
    assert m["auc_horizon"] == pytest.approx(roc_auc_score(t <= 12, risk))
    # integrated Brier score without censoring: mean squared error of S(t) vs 1[T > t], trapezoid over times
    keep = (times >= t.min()) & (times < t.max())
    bs = ((t[:, None] > times[None, keep]) - s[:, keep]) ** 2
    assert m["ibs"] == pytest.approx(np.trapezoid(bs.mean(0), times[keep]) / (times[keep][-1] - times[keep][0]))


def test_perfect_risk_scores_one_and_harrell_agrees_with_lifelines_under_censoring():
    c = sv.administrative_censoring(_cohort(300), 0.3, seed=3)
    t, e, true = c["pfs_months"].to_numpy(), c["event"].to_numpy(), c["pfs_true_months"].to_numpy()
    m = sv.survival_metrics(t, e, t, e, -true, None, sv.time_grid(t), true_time=true)
    assert m["harrell"] == pytest.approx(1.0) and m["c_true"] == pytest.approx(1.0) and m["uno"] > 0.99
    noisy = -np.log(true) + np.random.default_rng(0).normal(0, 1, len(t))
    assert sv.harrell_lifelines(t, e, noisy) == pytest.approx(
        sv.survival_metrics(t, e, t, e, noisy, None, sv.time_grid(t))["harrell"])


def _toy(n=45):
    data = toy_cohort_data(n, shape=(12, 8, 8), seed=0)
    rng = np.random.default_rng(0)
    pfs = np.where(data.y == 1, rng.uniform(2, 12, n), rng.uniform(12.5, 40, n))
    cohort = pd.DataFrame({"patient_id": data.patient_ids, "pfs_months": pfs, "event": 1, "pfs_short": data.y})
    folds = make_folds(cohort, n_splits=3, n_repeats=1)
    return data, cohort, folds


def test_run_survival_fits_caches_and_rereads(tmp_path):
    data, cohort, folds = _toy()
    folds.to_csv(tmp_path / "folds.csv", index=False)
    cens = sv.administrative_censoring(cohort, 0.2)
    cfg = sv.SurvivalConfig(cnn_model="pet_fusion", epochs=2, batch_size=8, downsample=2, device="cpu")
    first = sv.run_survival(cfg, tmp_path, cens, data, folds, threads=1)
    assert set(first["model"]) == {"cox_labs", "cox_pet_fusion"} and len(first) == 6
    assert np.allclose(first["harrell"], first["harrell_lifelines"])
    assert first.loc[first["model"] == "cox_labs", "c_true"].mean() > 0.6  # CgA and GGT carry the signal
    again = sv.run_survival(cfg, tmp_path, cens, None, folds)  # no inputs: everything from the cache
    pd.testing.assert_frame_equal(first, again)
    pred = first.attrs["predictions"]
    assert pred["p_short"].between(0, 1).all() and len(pred) == 2 * len(cohort)


def test_survival_cnn_trains_identically_twice(tmp_path):
    data, cohort, folds = _toy(30)
    one = folds[(folds["repeat"] == 0) & (folds["fold"] == 0)]
    cens = sv.administrative_censoring(cohort, 0.2)
    cfg = sv.SurvivalConfig(cnn_model="pet_fusion", epochs=2, batch_size=8, downsample=2, device="cpu")
    a = sv.run_survival(cfg, tmp_path / "a", cens, data, one, threads=1).attrs["predictions"]
    b = sv.run_survival(cfg, tmp_path / "b", cens, data, one, threads=1).attrs["predictions"]
    pd.testing.assert_frame_equal(a, b)
    assert a.loc[a["model"] == "cox_pet_fusion", "log_risk"].std() > 0  # not a constant network


def test_chapter_config_keeps_the_default_epochs_unless_asked():
    assert sv.chapter_config(0.2, 3, 12.0).epochs == sv.SurvivalConfig().epochs
    cfg = sv.chapter_config(0.2, 3, 12.0, epochs=5)
    assert (cfg.epochs, cfg.censor_fraction, cfg.seed) == (5, 0.2, 3)


def test_survival_cached_says_whether_every_fold_is_stored_and_fitting_then_loads_no_inputs(tmp_path, monkeypatch):
    data, cohort, folds = _toy()
    folds.to_csv(tmp_path / "folds.csv", index=False)
    cens = sv.administrative_censoring(cohort, 0.2)
    cfg = sv.SurvivalConfig(cnn_model="", device="cpu")
    assert sv.survival_models(cfg) == ["cox_labs"]
    assert sv.survival_models(sv.SurvivalConfig()) == ["cox_labs", "cox_pet_fusion"]
    assert not sv.survival_cached(cfg, tmp_path, cens, folds)
    loads = []
    monkeypatch.setattr(sv, "cohort_data", lambda work_dir, modalities: loads.append(modalities) or data)
    first = sv.fit_survival_models(cfg, tmp_path, cens, folds, n_jobs=2)
    assert loads == [("pet",)] and len(first) == 3
    assert sv.survival_cached(cfg, tmp_path, cens, folds)
    assert not sv.survival_cached(cfg, tmp_path, sv.administrative_censoring(cohort, 0.4), folds)  # other outcome
    assert not sv.survival_cached(cfg.replace(cnn_model="pet_fusion"), tmp_path, cens, folds)  # a CNN not fitted
    again = sv.fit_survival_models(cfg, tmp_path, cens, folds)
    assert loads == [("pet",)]  # read from the cache: no inputs loaded
    pd.testing.assert_frame_equal(first, again)


def test_concordance_against_truth_is_the_mean_over_folds_and_its_gaps():
    table = pd.DataFrame({"model": ["a", "a", "b"], "harrell": [0.6, 0.8, 0.5], "uno": [0.5, 0.7, 0.4],
                          "c_true": [0.7, 0.7, 0.6]})
    per = sv.concordance_against_truth(table)
    assert per.loc["a"].round(6).to_dict() == {"harrell": 0.7, "uno": 0.6, "c_true": 0.7, "harrell - c_true": 0.0,
                                               "uno - c_true": -0.1}
    assert per.loc["b", "uno - c_true"] == pytest.approx(-0.2)


def test_useful_thresholds_are_where_a_curve_beats_both_defaults():
    t = [0.1, 0.2, 0.3, 0.4]
    curves = pd.concat([
        pd.DataFrame({"threshold": t, "model": "all", "net_benefit": [0.3, 0.2, 0.1, 0.0]}),
        pd.DataFrame({"threshold": t, "model": "none", "net_benefit": 0.0}),
        pd.DataFrame({"threshold": t, "model": "m1", "net_benefit": [0.25, 0.22, 0.15, 0.05]}),
        pd.DataFrame({"threshold": t, "model": "m2", "net_benefit": [0.3, 0.2, 0.1, 0.0]}),
    ])
    out = sv.useful_thresholds(curves, ["m1", "m2"], {"m1": "Model one"})
    assert out["model"].tolist() == ["Model one", "m2"]
    assert out["thresholds where it beats both defaults"].tolist() == ["0.20–0.40 (3 of 4)", "none"]


def _stored(n=90, seed=0):
    """Out-of-fold predictions of two models (one informative), their inner predictions and the censored cohort."""
    rng = np.random.default_rng(seed)
    ids = [f"P{i:03d}" for i in range(n)]
    pfs = rng.exponential(18.0, n) + 0.5
    y = (pfs <= 12).astype(int)
    cohort = pd.DataFrame({"patient_id": ids, "pfs_months": pfs, "event": 1})
    rows, inner = [], []
    for r in range(2):
        fold = rng.permutation(np.arange(n) % 3)
        for m, noise in (("pet_fusion", 0.5), ("rf_labs", 3.0)):
            p = 1 / (1 + np.exp(-(2 * (y - 0.5) + noise * rng.normal(size=n))))
            frame = pd.DataFrame({"model": m, "repeat": r, "fold": fold, "patient_id": ids, "y_true": y, "prob": p})
            rows.append(frame)
            for f in range(3):
                tr = frame[frame["fold"] != f].sample(frac=0.5, random_state=f)
                inner.append(tr.assign(fold=f, source="validation"))
    return pd.concat(rows, ignore_index=True), pd.concat(inner, ignore_index=True), cohort


def test_assess_classification_summarises_evaluation_bias_delong_and_hazard_ratios_consistently():
    pred, inner, cohort = _stored()
    cens = sv.administrative_censoring(cohort, 0.3, seed=1)
    value = chapters.assess_classification(pred, inner, cens, cohort, ["pet_fusion", "rf_labs"], n_boot=20, seed=0)
    ev = sv.evaluation_bias(pred, cens)
    mean = ev.groupby(["model", "design"])["auroc"].mean()
    gap = value.evaluation_wide["complete cases - truth"]
    assert gap["rf_labs"] == pytest.approx(mean["rf_labs", "complete cases"] - mean["rf_labs", "truth"])
    assert value.lower == int((gap < 0).sum())
    # the pre-specified reference (the fusion model), not the best scorer; noise 0.5 against 3.0 on 90 patients
    assert value.reference == "pet_fusion" and value.delong["model"].tolist() == ["rf_labs"]
    assert value.survivors == ["rf_labs"]
    assert value.hazard_ratios["repeat"].tolist() == [0, 1]
    assert sorted(value.bootstrap.index) == ["pet_fusion", "rf_labs"]
    assert value.bootstrap.loc["pet_fusion", "auroc estimate"] > value.bootstrap.loc["rf_labs", "auroc estimate"]
    lines = value.summary_lines({"rf_labs": "Forest"})
    assert any(line.startswith("* **DeLong**") and "Forest" in line for line in lines) and len(lines) == 3
    table, sentence = value.evaluation_section()
    assert f"**{value.lower} of 2**" in sentence.data


def test_without_stored_models_every_section_is_empty_but_the_first_says_why():
    value = chapters.assess_classification(None, None, pd.DataFrame(), None, [])
    assert not value.available and value.survivors == [] and value.summary_lines() == []
    assert value.evaluation_section()[0].startswith("No classification model has finished results")
    assert value.calibration_section() == value.decision_section() == value.delong_section() == ()


def test_censor_uses_every_setting_of_the_config():
    cohort = _cohort(100)
    cfg = sv.SurvivalConfig(censor_fraction=0.25, seed=4, accrual_months=30.0, horizon_months=9.0)
    pd.testing.assert_frame_equal(sv.censor(cohort, cfg), sv.administrative_censoring(cohort, 0.25, 4, 30.0, 9.0))


def test_km_truth_curves_put_the_truth_beside_the_censored_and_the_complete_case_estimates():
    censored = pd.DataFrame({"pfs_true_months": [2.0, 4, 6, 8], "pfs_months": [2.0, 4, 5, 5],
                             "event": [1, 1, 0, 0], "complete_case": [True, True, False, False]})
    curves = sv.km_truth_curves(censored)
    groups = list(dict.fromkeys(curves["group"]))
    assert groups[0].startswith("true PFS") and groups[1].startswith("censored data") and groups[2].startswith("complete")
    truth, cens, cc = (curves[curves["group"] == g] for g in groups)
    assert truth["survival"].tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])  # no censoring: the empirical curve
    assert cens["survival"].tolist() == pytest.approx([1.0, 0.75, 0.5, 0.5])  # two censored at 5 months: it stays
    assert cc["time_months"].tolist() == [0.0, 2.0, 4.0] and cc["survival"].tolist() == pytest.approx([1.0, 0.5, 0.0])
