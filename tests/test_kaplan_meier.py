"""Tests of prrt_utils.analysis.kaplan_meier: the published Freireich log-rank test, its definition, lifelines, Cox."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from lifelines.statistics import logrank_test
from scipy import stats as sstats

from prrt_utils.analysis.kaplan_meier import GROUP_LONG, GROUP_SHORT, cox_hr_by_group, km_by_prediction
from prrt_utils.analysis.stats import StatsError

# --------------------------------------------------------------------------- Kaplan-Meier by prediction

# Freireich et al. (1963) remission times in weeks, 6-MP vs placebo (Kleinbaum & Klein, ch. 2):
# log-rank chi2 = 16.79, p = 4.2e-05; KM medians 23 (6-MP) and 8 (placebo).
MP_TIME = [6, 6, 6, 6, 7, 9, 10, 10, 11, 13, 16, 17, 19, 20, 22, 23, 25, 32, 32, 34, 35]
MP_EVENT = [1, 1, 1, 0, 1, 0, 1, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0]
PLACEBO_TIME = [1, 1, 2, 2, 3, 4, 4, 5, 5, 8, 8, 8, 8, 11, 11, 12, 12, 15, 17, 22, 23]


def _freireich(prob_long_6mp=0.9, prob_long_placebo=0.1):
    return pd.DataFrame(
        {
            "patient_id": [f"S{i:02d}" for i in range(42)],
            "prob": [prob_long_6mp] * 21 + [prob_long_placebo] * 21,
            "pfs_months": MP_TIME + PLACEBO_TIME,
            "event": MP_EVENT + [1] * 21,
        }
    )


def test_km_by_prediction_reproduces_the_published_freireich_log_rank_test():
    r = km_by_prediction(_freireich(), prob_is="long")
    assert r.logrank_statistic == pytest.approx(16.79, abs=0.005)
    assert r.p_value == pytest.approx(4.2e-5, rel=0.02)
    assert (r.n_long, r.n_short, r.events_long, r.events_short) == (21, 21, 9, 21)
    assert (r.median_long, r.median_short) == (23.0, 8.0)
    assert len(r.to_frame()) == 1
    assert set(r.curves()["group"]) == {"predicted long PFS", "predicted short PFS"}


def test_km_by_prediction_with_probability_of_short_pfs_flips_the_sides():
    r_long = km_by_prediction(_freireich(), prob_is="long")
    r_short = km_by_prediction(_freireich(0.1, 0.9), prob_is="short")
    frames = [r.to_frame().drop(columns="rule") for r in (r_long, r_short)]
    pd.testing.assert_frame_equal(frames[0], frames[1])
    assert "P(short) <= 0.5" in r_short.rule
    # A probability of short PFS of exactly 0.5 is P(long) = 0.5 >= 0.5: the long group.
    tie = km_by_prediction(_freireich(0.5, 0.9), prob_is="short")
    assert tie.n_long == 21 and tie.median_long == 23.0


def _logrank_by_hand(t1, e1, t2, e2):
    """Log-rank chi-square from its definition: sum over event times of O - E and hypergeometric variance."""
    t = np.r_[t1, t2]
    e = np.r_[e1, e2]
    g = np.r_[np.zeros(len(t1)), np.ones(len(t2))]
    o_minus_e, var = 0.0, 0.0
    for time in np.unique(t[e == 1]):
        at_risk = t >= time
        n, n1 = at_risk.sum(), (at_risk & (g == 0)).sum()
        d = ((t == time) & (e == 1)).sum()
        d1 = ((t == time) & (e == 1) & (g == 0)).sum()
        o_minus_e += d1 - d * n1 / n
        var += d * (n1 / n) * (1 - n1 / n) * (n - d) / (n - 1) if n > 1 else 0.0
    return o_minus_e**2 / var


def test_km_by_prediction_log_rank_matches_its_definition_and_lifelines_on_random_data():
    rng = np.random.default_rng(7)
    n = 60
    prob = rng.uniform(0, 1, n)
    pfs = np.round(rng.exponential(np.where(prob >= 0.5, 20.0, 12.0)), 1)
    event = (rng.uniform(size=n) < 0.8).astype(int)
    df = pd.DataFrame(
        {"patient_id": [f"P{i}" for i in range(n)], "prob": prob, "pfs_months": pfs, "event": event}
    )
    r = km_by_prediction(df, prob_is="long")
    hi = prob >= 0.5
    ref = logrank_test(pfs[hi], pfs[~hi], event[hi], event[~hi])
    assert r.logrank_statistic == pytest.approx(ref.test_statistic)
    assert r.logrank_statistic == pytest.approx(_logrank_by_hand(pfs[hi], event[hi], pfs[~hi], event[~hi]))
    assert r.p_value == pytest.approx(sstats.chi2.sf(r.logrank_statistic, 1))


def test_km_by_prediction_with_one_empty_group_reports_an_undefined_test():
    r = km_by_prediction(_freireich(0.9, 0.8), prob_is="long")
    assert r.n_short == 0 and math.isnan(r.p_value) and math.isnan(r.median_short)
    assert "empty" in r.method


def test_km_by_prediction_names_the_patient_with_bad_input():
    dup = pd.concat([_freireich(), _freireich().iloc[[3]]])
    with pytest.raises(StatsError, match="S03"):
        km_by_prediction(dup, prob_is="long")
    bad = _freireich()
    bad.loc[5, "prob"] = 1.2
    with pytest.raises(StatsError, match=r"S05 has prob outside \[0, 1\]"):
        km_by_prediction(bad, prob_is="long")
    with pytest.raises(TypeError):
        km_by_prediction(_freireich())  # the direction of prob must be stated


def test_km_by_prediction_puts_a_patient_on_the_side_its_printed_rule_names_at_any_threshold():
    # At a threshold of 0.1 on P(long), P(short) = 0.9 is P(long) = 0.1: the rule says "long".
    # (1 - 0.9 is 0.09999999999999998 in floating point; a bare comparison put them in "short".)
    r = km_by_prediction(_freireich(0.9, 0.95), 0.1, prob_is="short")
    assert "P(long PFS) >= 0.1" in r.rule
    assert (r.n_long, r.n_short) == (21, 21)
    long_ids = set(r.assignments.loc[r.assignments["group"] == "predicted long PFS", "patient_id"])
    assert long_ids == {f"S{i:02d}" for i in range(21)}


def test_km_by_prediction_group_median_is_the_middle_of_the_flat_stretch_at_one_half():
    # 58 patients in a group, no censoring: the curve is 0.5 exactly between the 29th and 30th time.
    times = np.arange(1.0, 59.0)
    df = pd.DataFrame({"patient_id": [f"P{i:03d}" for i in range(58)], "prob": 0.2, "pfs_months": times, "event": 1})
    r = km_by_prediction(pd.concat([df, df.assign(patient_id=df["patient_id"] + "s", prob=0.9)]), prob_is="short")
    assert r.median_long == r.median_short == 29.5


def test_labelled_curves_name_each_group_by_its_size_and_median_and_the_title_quotes_the_log_rank_test():
    r = km_by_prediction(_freireich(), prob_is="long")
    curves = r.labelled_curves()
    assert list(dict.fromkeys(curves["group"])) == [f"{GROUP_LONG} (n=21, median 23.0 months)",
                                                     f"{GROUP_SHORT} (n=21, median 8.0 months)"]
    assert curves.drop(columns="group").equals(r.curves().drop(columns="group"))
    assert r.logrank_text() == f"log-rank chi2 = {r.logrank_statistic:.2f}, p = {r.p_value:.3g}"


def test_cox_hr_by_group_recovers_a_known_hazard_ratio():
    rng = np.random.default_rng(1)
    n = 3000
    short = rng.binomial(1, 0.5, n)
    t = rng.exponential(1.0 / np.where(short == 1, 2.0, 1.0))  # hazard 2 vs 1
    df = pd.DataFrame({"prob": np.where(short == 1, 0.8, 0.2), "pfs_months": t, "event": 1})
    res = cox_hr_by_group(df, prob_is="short")
    assert res.ci[0] < 2.0 < res.ci[1] and abs(res.hazard_ratio - 2.0) < 0.15 and res.p_value < 1e-20
    assert res.n_short == short.sum()
    flipped = cox_hr_by_group(df.assign(prob=1 - df["prob"]), prob_is="long")
    assert flipped.hazard_ratio == pytest.approx(res.hazard_ratio)
    empty = cox_hr_by_group(df.assign(prob=0.1), prob_is="short")
    assert np.isnan(empty.hazard_ratio)
