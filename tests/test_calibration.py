"""Calibration, decision curves, bootstrap and DeLong: known answers (chapter 07)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score

from prrt_utils.analysis import calibration as cal


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _draw(n=20000, a=0.0, b=1.0, seed=0):
    """p uniform-ish; y ~ Bernoulli(sigmoid(a + b logit p)): true intercept a (for b=1) and slope b."""
    rng = np.random.default_rng(seed)
    p = _sigmoid(rng.normal(0, 1.5, n))
    y = rng.binomial(1, _sigmoid(a + b * np.log(p / (1 - p))))
    return y, p


def test_calibrated_predictions_have_intercept_zero_and_slope_one():
    y, p = _draw()
    res = cal.calibration_stats(y, p)
    assert abs(res.intercept) < 0.05 and abs(res.slope - 1) < 0.05
    assert res.intercept_ci[0] < 0 < res.intercept_ci[1]
    assert res.brier == pytest.approx(np.mean((p - y) ** 2))


def test_overconfident_predictions_have_slope_below_one_and_shift_gives_intercept():
    y, p = _draw(b=0.5)
    assert cal.calibration_stats(y, p).slope == pytest.approx(0.5, abs=0.05)
    y, p = _draw(a=-1.0)
    assert cal.calibration_stats(y, p).intercept == pytest.approx(-1.0, abs=0.06)


def test_reliability_curve_equals_sklearn_and_counts_every_patient():
    y, p = _draw(n=500, seed=3)
    pts = cal.reliability_curve(y, p, n_bins=5)
    obs, pred = calibration_curve(y, p, n_bins=5, strategy="quantile")
    np.testing.assert_allclose(pts["observed"], obs)
    np.testing.assert_allclose(pts["mean_predicted"], pred)
    assert pts["n"].sum() == 500


def _net_benefit(y, p, thresholds):
    """Vickers & Elkin (2006): act when p >= pt; TP/n - FP/n * pt / (1 - pt). The reference for dcurves."""
    pt = np.asarray(thresholds, dtype=float)
    act = np.asarray(p)[None, :] >= pt[:, None]
    tp = (act & (np.asarray(y)[None, :] == 1)).sum(axis=1) / len(y)
    fp = (act & (np.asarray(y)[None, :] == 0)).sum(axis=1) / len(y)
    return tp - fp * pt / (1 - pt)


def test_decision_curve_equals_the_net_benefit_formula_by_hand():
    y = np.array([1, 1, 0, 0])
    p = np.array([0.9, 0.4, 0.6, 0.1])
    # pt = 0.5: treat 0.9 (TP) and 0.6 (FP): 1/4 - 1/4 * 1 = 0; pt = 0.2: TP 2, FP 1: 2/4 - 1/4 * 0.25
    np.testing.assert_allclose(_net_benefit(y, p, [0.5, 0.2]), [0.0, 0.4375])
    yy, pp = _draw(n=300, seed=1)
    th = np.round(np.arange(0.05, 0.8, 0.05), 2)
    dc = cal.decision_curve(pd.DataFrame({"y_true": yy, "m": pp}), ["m"], th)
    for name, probs in (("m", pp), ("all", np.ones_like(pp))):
        got = dc[dc["model"] == name].sort_values("threshold")["net_benefit"].to_numpy()
        np.testing.assert_allclose(got, _net_benefit(yy, probs, th), atol=1e-12)
    assert (dc.loc[dc["model"] == "none", "net_benefit"] == 0).all()


def test_bootstrap_ci_is_reproducible_and_covers_the_binormal_auroc():
    rng = np.random.default_rng(0)
    n = 1500
    y = np.r_[np.ones(n), np.zeros(n)].astype(int)
    s = np.r_[rng.normal(1, 1, n), rng.normal(0, 1, n)]
    p = _sigmoid(s)
    a = cal.bootstrap_ci(y, p, "auroc", n_boot=300, seed=5)
    b = cal.bootstrap_ci(y, p, "auroc", n_boot=300, seed=5)
    assert a == b
    truth = sps.norm.cdf(1 / math.sqrt(2))  # binormal AUROC with d' = 1: 0.760
    assert a.lower < truth < a.upper and a.upper - a.lower < 0.05
    assert a.lower < a.estimate < a.upper
    # the vectorised AUROC path gives exactly the interval of scikit-learn's roc_auc_score per replicate
    c = cal.bootstrap_ci(y[::10], p[::10], roc_auc_score, n_boot=200, seed=1)
    d = cal.bootstrap_ci(y[::10], p[::10], "auroc", n_boot=200, seed=1)
    assert (c.lower, c.upper, c.n_valid) == pytest.approx((d.lower, d.upper, d.n_valid))


def test_vectorised_average_precision_equals_scikit_learn_row_by_row_with_ties():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=(200, 40))
    y[:, 0] = 1  # every row has a positive
    s = np.round(rng.random((200, 40)) + 0.3 * y, 1)  # rounded: many tied scores
    got = cal.average_precision_rows(y, s)
    want = [average_precision_score(a, b) for a, b in zip(y, s, strict=True)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    # and so the bootstrap interval of AUPRC is the one scikit-learn gives per replicate
    yy, pp = y[0], s[0] / 1.3  # probabilities, ties kept
    c = cal.bootstrap_ci(yy, pp, average_precision_score, n_boot=200, seed=1)
    d = cal.bootstrap_ci(yy, pp, "auprc", n_boot=200, seed=1)
    assert (c.lower, c.upper, c.n_valid) == pytest.approx((d.lower, d.upper, d.n_valid))


def _delong_bruteforce(y, scores):
    """DeLong et al. (1988) by the definition: placement values by double loops, then sample covariances."""
    pos = [i for i in range(len(y)) if y[i] == 1]
    neg = [j for j in range(len(y)) if y[j] == 0]

    def psi(a, b):
        return 1.0 if a > b else 0.5 if a == b else 0.0

    k = len(scores)
    v10 = np.array([[np.mean([psi(s[i], s[j]) for j in neg]) for i in pos] for s in scores])
    v01 = np.array([[np.mean([psi(s[i], s[j]) for i in pos]) for j in neg] for s in scores])
    aucs = v10.mean(axis=1)
    s10 = np.array([[np.sum((v10[r] - aucs[r]) * (v10[c] - aucs[c])) / (len(pos) - 1) for c in range(k)] for r in range(k)])
    s01 = np.array([[np.sum((v01[r] - aucs[r]) * (v01[c] - aucs[c])) / (len(neg) - 1) for c in range(k)] for r in range(k)])
    return aucs, s10 / len(pos) + s01 / len(neg)


def test_fast_delong_equals_the_1988_definition_and_sklearn_with_ties():
    rng = np.random.default_rng(2)
    y = rng.binomial(1, 0.4, 40)
    a = np.round(rng.normal(y, 1.0), 1)  # rounded: ties inside and across classes
    b = np.round(rng.normal(0.5 * y, 1.0), 1)
    aucs, cov = cal.delong_covariance(y, np.vstack([a, b]))
    ref_aucs, ref_cov = _delong_bruteforce(y, [a, b])
    np.testing.assert_allclose(aucs, ref_aucs)
    np.testing.assert_allclose(cov, ref_cov)
    res = cal.delong_test(y, _sigmoid(a), _sigmoid(b))
    assert res.auc1 == pytest.approx(roc_auc_score(y, a)) and res.auc2 == pytest.approx(roc_auc_score(y, b))
    se = math.sqrt(ref_cov[0, 0] + ref_cov[1, 1] - 2 * ref_cov[0, 1])
    assert res.p_value == pytest.approx(2 * sps.norm.sf(abs(ref_aucs[0] - ref_aucs[1]) / se))


def test_delong_reproduces_the_published_worked_example_of_hanley_and_mcneil_ct_ratings():
    """Hanley & McNeil (1982, Radiology 143:29), Table 1: 109 CT images rated 1 (definitely normal) to 5.

    Published answers for these data: area 0.893 (Hanley & McNeil); with DeLong's standard error
    0.0307 and asymptotic 95 % interval 0.83295-0.95339 (Stata Base Reference Manual, ``roctab``,
    example 1, ``webuse hanley``, whose standard error is DeLong et al. 1988's).
    """
    normal, abnormal = [33, 6, 6, 11, 2], [3, 2, 2, 11, 33]
    y = np.array([0] * sum(normal) + [1] * sum(abnormal))
    rating = np.concatenate([np.repeat(np.arange(1, 6), normal), np.repeat(np.arange(1, 6), abnormal)]).astype(float)
    aucs, cov = cal.delong_covariance(y, rating[None, :])
    se = math.sqrt(cov[0, 0])
    assert round(float(aucs[0]), 4) == 0.8932 and round(se, 4) == 0.0307
    assert (round(float(aucs[0]) - 1.959964 * se, 5), round(float(aucs[0]) + 1.959964 * se, 5)) == (0.83295, 0.95339)


def test_delong_by_hand_on_three_by_three():
    # positives 0.9, 0.8, 0.3; negatives 0.7, 0.2, 0.1 -> placements of positives 1, 1, 2/3 (AUROC 8/9)
    y = np.array([1, 1, 1, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1])
    aucs, cov = cal.delong_covariance(y, s[None, :])
    assert aucs[0] == pytest.approx(8 / 9)
    # V10 = (1, 1, 2/3): var 1/27; V01 = (2/3, 1, 1): var 1/27 -> 1/27/3 + 1/27/3
    assert cov[0, 0] == pytest.approx(2 / 81)


def test_delong_of_identical_scores_is_not_significant():
    y, p = _draw(n=200, seed=4)
    res = cal.delong_test(y, p, p)
    assert res.difference == 0 and res.p_value == 1.0


def _predictions(shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    ids = [f"P{i:03d}" for i in range(90)]
    y = rng.binomial(1, 0.4, 90)
    for r in range(2):
        fold = rng.permutation(np.arange(90) % 3)
        for m, noise in (("good", 0.6), ("weak", 2.0)):
            p = _sigmoid(2 * (y - 0.5) + noise * rng.normal(size=90) + shift)
            rows.append(pd.DataFrame({"model": m, "repeat": r, "fold": fold, "patient_id": ids, "y_true": y, "prob": p}))
    return pd.concat(rows, ignore_index=True)


def _inner(pred, shift=0.0, seed=1):
    """Inner predictions of every fold: a third of the fold's TRAINING patients, predicted afresh."""
    rng = np.random.default_rng(seed)
    parts = []
    for m, r, f in pred[["model", "repeat", "fold"]].drop_duplicates().itertuples(index=False):
        train = pred[(pred["model"] == m) & (pred["repeat"] == r) & (pred["fold"] != f)]
        pick = train.sample(frac=0.5, random_state=int(rng.integers(1 << 30)))
        noise = 0.6 if m == "good" else 2.0
        prob = _sigmoid(2 * (pick["y_true"].to_numpy() - 0.5) + noise * rng.normal(size=len(pick)) + shift)
        parts.append(pick.assign(fold=f, prob=prob, source="validation"))
    return pd.concat(parts, ignore_index=True)


def test_recalibration_of_a_fold_reads_only_that_folds_inner_predictions_and_removes_a_shift():
    pred = _predictions(shift=1.5)
    inner = _inner(pred, shift=1.5)
    rec = cal.recalibrate_within_folds(pred, inner)
    assert rec["prob"].mean() < pred["prob"].mean() - 0.1
    assert abs(rec["prob"].mean() - pred["y_true"].mean()) < abs(pred["prob"].mean() - pred["y_true"].mean())
    fold = (pred["model"] == "good") & (pred["repeat"] == 0) & (pred["fold"] == 0)
    # Every other fold's out-of-fold rows come from models trained on this fold's test patients:
    # scrambling them (and the other folds' inner rows) must leave this fold's recalibration unchanged.
    other = pred.copy()
    other.loc[~fold, "prob"] = np.random.default_rng(7).random((~fold).sum())
    other.loc[~fold, "y_true"] = 1 - other.loc[~fold, "y_true"]
    own = (inner["model"] == "good") & (inner["repeat"] == 0) & (inner["fold"] == 0)
    inner_other = inner.copy()
    inner_other.loc[~own, "prob"] = np.random.default_rng(8).random((~own).sum())
    again = cal.recalibrate_within_folds(other, inner_other)
    np.testing.assert_allclose(again.loc[fold, "prob"], rec.loc[fold, "prob"], rtol=1e-12)
    # nor do the fold's own test labels; its own inner predictions do
    flipped = pred.copy()
    flipped.loc[fold, "y_true"] = 1 - flipped.loc[fold, "y_true"]
    np.testing.assert_allclose(cal.recalibrate_within_folds(flipped, inner).loc[fold, "prob"], rec.loc[fold, "prob"])
    moved = inner.copy()
    moved.loc[own, "prob"] = _sigmoid(np.log(moved.loc[own, "prob"] / (1 - moved.loc[own, "prob"])) - 1.0)
    assert not np.allclose(cal.recalibrate_within_folds(pred, moved).loc[fold, "prob"], rec.loc[fold, "prob"])


def test_recalibration_refuses_inner_predictions_that_hold_a_test_patient_or_are_missing():
    pred = _predictions()
    inner = _inner(pred)
    test_patient = pred.loc[(pred["model"] == "weak") & (pred["repeat"] == 1) & (pred["fold"] == 2), "patient_id"].iloc[0]
    leaky = pd.concat([inner, pd.DataFrame([{"model": "weak", "repeat": 1, "fold": 2, "patient_id": test_patient,
                                             "y_true": 1, "prob": 0.9, "source": "validation"}])])
    with pytest.raises(cal.CalibrationError, match=f"model 'weak', repeat 1, fold 2: .*test patient {test_patient}"):
        cal.recalibrate_within_folds(pred, leaky)
    missing = inner[~((inner["model"] == "good") & (inner["repeat"] == 1) & (inner["fold"] == 0))]
    with pytest.raises(cal.CalibrationError, match="model 'good', repeat 1, fold 0: no inner predictions"):
        cal.recalibrate_within_folds(pred, missing)
    # inner predictions of one class cannot carry a slope: that fold is left as it is, and counted
    one = (inner["model"] == "good") & (inner["repeat"] == 1) & (inner["fold"] == 0)
    single = inner[~one | (inner["y_true"] == 1)]
    rec = cal.recalibrate_within_folds(pred, single)
    fold = (pred["model"] == "good") & (pred["repeat"] == 1) & (pred["fold"] == 0)
    np.testing.assert_array_equal(rec.loc[fold, "prob"], pred.loc[fold, "prob"])
    assert not rec.loc[fold, "recalibrated"].any() and rec.loc[~fold, "recalibrated"].all()
    basis = cal.recalibration_basis(single).set_index("model")["folds left as they are (one class)"]
    assert basis.to_dict() == {"good": 1, "weak": 0}


def test_platt_fit_maximises_the_likelihood_of_platts_smoothed_targets_and_stays_finite_when_separated():
    from scipy.optimize import minimize

    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.9])  # perfectly separated: an unsmoothed fit has no finite optimum
    a, b = cal.platt_fit(y, p)
    t = np.where(y == 1, 3 / 4, 1 / 5)  # (N+ + 1) / (N+ + 2), 1 / (N- + 2)
    x = np.log(p / (1 - p))

    def nll(theta):
        q = _sigmoid(theta[0] + theta[1] * x)
        return -np.sum(t * np.log(q) + (1 - t) * np.log(1 - q))

    ref = minimize(nll, [0.0, 1.0], method="BFGS", options={"gtol": 1e-10}).x
    assert (a, b) == pytest.approx(tuple(ref), abs=1e-4)
    assert 0 < b < 10
    # on a large calibrated set the targets barely differ from 0/1: intercept ~0, slope ~1
    yy, pp = _draw(n=20000, seed=3)
    a2, b2 = cal.platt_fit(yy, pp)
    assert abs(a2) < 0.05 and abs(b2 - 1) < 0.05


def test_tables_have_one_row_per_model_and_repeat():
    pred = _predictions()
    assert len(cal.calibration_table(pred)) == 4
    boot = cal.bootstrap_table(pred, n_boot=50)
    assert len(boot) == 4 and (boot["lower"] <= boot["estimate"]).all()  # one row per model and metric
    dl = cal.delong_table(pred, "good", ["weak"])
    assert len(dl) == 2 and (dl["auc_reference"] > dl["auc_model"]).all()
    assert (dl["p_holm"] == dl["p_value"]).all()  # one comparison: Holm changes nothing


def test_bootstrap_table_estimates_the_auroc_of_the_repeat_averaged_prediction():
    from sklearn.metrics import average_precision_score

    # two repeats whose noise differs: each repeat's AUROC is well below that of the average
    rng = np.random.default_rng(11)
    n = 300
    ids = [f"P{i:03d}" for i in range(n)]
    y = rng.binomial(1, 0.4, n)
    rows = []
    for r in range(2):
        p = _sigmoid(0.8 * (y - 0.5) + 1.2 * rng.normal(size=n))
        rows.append(pd.DataFrame({"model": "m", "repeat": r, "fold": np.arange(n) % 3, "patient_id": ids,
                                  "y_true": y, "prob": p}))
    pred = pd.concat(rows, ignore_index=True).sample(frac=1.0, random_state=0)  # row order must not matter
    boot = cal.bootstrap_table(pred, n_boot=400, seed=2).set_index("metric")
    avg = pred.groupby("patient_id")["prob"].mean().sort_index()
    yy = pred.groupby("patient_id")["y_true"].first().sort_index()
    assert boot.loc["auroc", "estimate"] == pytest.approx(roc_auc_score(yy, avg), abs=1e-12)
    assert boot.loc["auprc", "estimate"] == pytest.approx(average_precision_score(yy, avg), abs=1e-12)
    assert (boot["n_patients"] == n).all() and (boot["n_repeats"] == 2).all()
    assert (boot["lower"] < boot["estimate"]).all() and (boot["estimate"] < boot["upper"]).all()
    # the interval is that of bootstrap_ci on the averaged prediction, exactly
    ci = cal.bootstrap_ci(yy, avg, "auroc", n_boot=400, seed=2)
    assert (boot.loc["auroc", "lower"], boot.loc["auroc", "upper"]) == pytest.approx((ci.lower, ci.upper))
    # and it is not the mean of the per-repeat intervals (which belong to no defined quantity)
    per_repeat = [cal.bootstrap_ci(g.sort_values("patient_id")["y_true"], g.sort_values("patient_id")["prob"],
                                   "auroc", n_boot=400, seed=2) for _, g in pred.groupby("repeat")]
    mean_estimate = np.mean([c.estimate for c in per_repeat])
    assert boot.loc["auroc", "estimate"] > mean_estimate + 0.02
    assert boot.loc["auroc", "lower"] > np.mean([c.lower for c in per_repeat]) + 0.01


def test_averaged_predictions_refuse_a_patient_missing_from_a_repeat():
    pred = _predictions()
    gone = pred.drop(pred.index[(pred["model"] == "good") & (pred["repeat"] == 1)][:1])
    with pytest.raises(cal.CalibrationError, match="lack an out-of-fold prediction"):
        cal.averaged_predictions(gone, "good")
    twice = pd.concat([pred, pred.iloc[:1]])
    with pytest.raises(cal.CalibrationError, match="two test folds"):
        cal.averaged_predictions(twice, "good")
    avg = cal.averaged_predictions(pred, "weak")
    assert len(avg) == 90 and (avg["n_repeats"] == 2).all()
