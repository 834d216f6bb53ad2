"""Tests of prrt_utils.analysis.stats: known answers, brute-force definitions and reference implementations."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pandas as pd
import pytest
from lifelines.statistics import logrank_test
from scipy import stats as sstats
from scipy.spatial.distance import jensenshannon

from prrt_utils.analysis.stats import (
    FAMILY_ORDER,
    StatsError,
    bonferroni,
    cliffs_delta,
    cliffs_magnitude,
    compare_families,
    corrected_resampled_ttest,
    disagreements,
    distribution_distances,
    km_by_prediction,
    mean_se,
    saliency_mass_fraction,
)

# --------------------------------------------------------------------------- mean +- SE


def test_mean_se_uses_the_sample_standard_deviation_over_root_n():
    r = mean_se([0.5, 0.6, 0.7, 0.6])
    sd = math.sqrt(((0.1) ** 2 + 0 + 0.1**2 + 0) / 3)  # ddof=1 by hand
    assert r.mean == pytest.approx(0.6)
    assert r.sd == pytest.approx(sd)
    assert r.se == pytest.approx(sd / 2.0)
    assert r.n == 4
    assert r.format(2) == "0.60 ± 0.04"


def test_mean_se_of_a_single_repeat_has_no_standard_error():
    r = mean_se([0.7])
    assert r.mean == 0.7 and math.isnan(r.se) and r.n == 1


def test_mean_se_rejects_missing_values():
    with pytest.raises(StatsError, match="non-finite"):
        mean_se([0.5, float("nan")])


# --------------------------------------------------------------------------- Cliff's delta


def _cliffs_brute_force(x, y):
    return sum(np.sign(a - b) for a, b in itertools.product(x, y)) / (len(x) * len(y))


@pytest.mark.parametrize("seed", range(5))
def test_cliffs_delta_equals_the_all_pairs_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, size=rng.integers(3, 30))  # few distinct values: many ties
    y = rng.integers(1, 7, size=rng.integers(3, 30))
    assert cliffs_delta(x, y).delta == pytest.approx(_cliffs_brute_force(x, y), abs=1e-12)


def test_cliffs_delta_is_positive_when_x_tends_to_be_larger():
    r = cliffs_delta([0.7, 0.8, 0.9], [0.4, 0.5, 0.6])
    assert r.delta == 1.0 and r.magnitude == "large"
    assert cliffs_delta([0.4, 0.5], [0.7, 0.8]).delta == -1.0


def test_cliffs_delta_is_antisymmetric_and_matches_the_mann_whitney_u():
    rng = np.random.default_rng(1)
    x, y = rng.normal(0.3, 1, 40), rng.normal(0, 1, 25)
    u = sstats.mannwhitneyu(x, y).statistic
    assert cliffs_delta(x, y).delta == pytest.approx(2 * u / (40 * 25) - 1)
    assert cliffs_delta(y, x).delta == pytest.approx(-cliffs_delta(x, y).delta)


@pytest.mark.parametrize(
    ("delta", "label"),
    [
        (0.0, "negligible"),
        (0.146, "negligible"),
        (0.147, "small"),
        (-0.329, "small"),
        (0.33, "medium"),
        (0.473, "medium"),
        (0.474, "large"),
        (-0.9, "large"),
    ],
)
def test_cliffs_magnitude_uses_the_papers_thresholds(delta, label):
    assert cliffs_magnitude(delta) == label


# --------------------------------------------------------------------------- Bonferroni


def test_bonferroni_multiplies_by_the_number_of_tests_and_caps_at_one():
    np.testing.assert_allclose(bonferroni([0.01, 0.02, 0.5]), [0.03, 0.06, 1.0])
    np.testing.assert_allclose(bonferroni([0.004]), [0.004])


def test_bonferroni_counts_a_test_that_could_not_be_run():
    out = bonferroni([0.01, np.nan, 0.2])
    np.testing.assert_allclose(out[[0, 2]], [0.03, 0.6])
    assert np.isnan(out[1])


def test_bonferroni_rejects_values_that_are_not_probabilities():
    with pytest.raises(StatsError, match=r"\[0, 1\]"):
        bonferroni([0.2, 1.5])


# --------------------------------------------------------------------------- corrected resampled t-test


def test_corrected_ttest_matches_a_hand_computation():
    # mean 0.23/6, var (ddof=1) 8.5667e-4, (1/6 + 1/2) * var = 5.7111e-4 -> t = 0.038333 / 0.023898
    r = corrected_resampled_ttest([0.04, 0.07, -0.01, 0.05, 0.02, 0.06], n_train=2, n_test=1)
    assert r.mean_difference == pytest.approx(0.0383333, rel=1e-5)
    assert r.t_statistic == pytest.approx(1.604044, rel=1e-5)
    assert r.df == 5
    assert r.p_value == pytest.approx(0.169609, rel=1e-4)
    assert r.test_train_ratio == 0.5


def test_corrected_ttest_without_a_test_set_is_the_one_sample_ttest():
    d = np.random.default_rng(3).normal(0.02, 0.05, 15)
    ref = sstats.ttest_1samp(d, 0.0)
    r = corrected_resampled_ttest(d, n_train=77, n_test=0)
    assert r.t_statistic == pytest.approx(ref.statistic)
    assert r.p_value == pytest.approx(ref.pvalue)


def test_corrected_ttest_is_more_conservative_than_the_naive_one():
    d = np.random.default_rng(4).normal(0.03, 0.05, 15)
    assert corrected_resampled_ttest(d, 77, 39).p_value > corrected_resampled_ttest(d, 77, 0).p_value


def test_corrected_ttest_needs_two_differences():
    with pytest.raises(StatsError, match="at least 2"):
        corrected_resampled_ttest([0.1], 2, 1)


# --------------------------------------------------------------------------- family comparison

FAMILIES = {
    "rf": "unimodal", "pet": "unimodal", "ct": "unimodal",
    "pet_fusion": "one_image_fusion", "ct_fusion": "one_image_fusion",
    "petct_fusion": "dual_fusion", "petct_pretrained": "dual_fusion",
}  # fmt: skip
LEVEL = {"unimodal": 0.5, "one_image_fusion": 0.62, "dual_fusion": 0.7}


def _fold_metrics(seed=0, fold_sd=0.0, model_sd=0.03, shift=None):
    rng = np.random.default_rng(seed)
    fold_effect = {(r, f): rng.normal(0, fold_sd) for r in range(5) for f in range(3)}
    level = shift or LEVEL
    rows = [
        {
            "model": m,
            "repeat": r,
            "fold": f,
            "auroc": level[fam] + fold_effect[r, f] + rng.normal(0, model_sd),
        }
        for m, fam in FAMILIES.items()
        for r in range(5)
        for f in range(3)
    ]
    return pd.DataFrame(rows)


def test_compare_families_pools_fold_values_and_matches_scipy_and_the_brute_force_delta():
    fm = _fold_metrics()
    res = compare_families(fm, FAMILIES)
    assert [c.label for c in res.comparisons] == [
        "one_image_fusion vs unimodal",
        "dual_fusion vs one_image_fusion",
    ]
    first = res.comparisons[0]
    x = fm.loc[fm.model.isin(["pet_fusion", "ct_fusion"]), "auroc"].to_numpy()
    y = fm.loc[fm.model.isin(["rf", "pet", "ct"]), "auroc"].to_numpy()
    ref = sstats.mannwhitneyu(x, y, alternative="two-sided")
    assert (first.n_group, first.n_reference) == (30, 45)
    assert first.u_statistic == pytest.approx(ref.statistic)
    assert first.p_value == pytest.approx(ref.pvalue)
    assert first.p_adjusted == pytest.approx(min(1.0, 2 * ref.pvalue))
    assert first.cliffs_delta == pytest.approx(_cliffs_brute_force(x, y))
    assert first.cliffs_delta > 0.8 and first.magnitude == "large"  # fusion clearly better
    assert first.group_models == ("ct_fusion", "pet_fusion")
    frame = res.to_frame()
    assert list(frame["comparison"]) == [c.label for c in res.comparisons]
    assert {"p_bonferroni", "cliffs_delta", "magnitude", "corrected_t_p"} <= set(frame.columns)


def test_compare_families_t_test_pairs_family_means_by_fold_with_the_k_fold_ratio():
    fm = _fold_metrics(seed=1)
    res = compare_families(fm, FAMILIES)
    fam = (
        fm.assign(family=fm.model.map(FAMILIES))
        .groupby(["family", "repeat", "fold"])
        .auroc.mean()
        .unstack("family")
    )
    d = (fam["dual_fusion"] - fam["one_image_fusion"]).to_numpy()
    ref = corrected_resampled_ttest(d, n_train=2, n_test=1)  # 3 folds: test/train = 1/2
    second = res.comparisons[1]
    assert second.ttest.n == 15 and second.ttest.test_train_ratio == pytest.approx(0.5)
    assert second.ttest.t_statistic == pytest.approx(ref.t_statistic)
    assert second.ttest_p_adjusted == pytest.approx(min(1.0, 2 * ref.p_value))


def test_compare_families_by_repeat_uses_one_mean_per_model_and_repeat():
    fm = _fold_metrics(seed=2)
    res = compare_families(fm, FAMILIES, unit="repeat")
    first = res.comparisons[0]
    assert (first.n_group, first.n_reference) == (10, 15)
    means = fm.groupby(["model", "repeat"]).auroc.mean()
    x = means[means.index.get_level_values("model").isin(["pet_fusion", "ct_fusion"])]
    assert first.median_group == pytest.approx(np.median(x))
    assert "per-repeat" in first.samples


def test_compare_families_names_an_unmapped_model_and_a_model_with_missing_folds():
    fm = _fold_metrics()
    with pytest.raises(StatsError, match="oracle"):
        compare_families(pd.concat([fm, fm.head(1).assign(model="oracle")]), FAMILIES)
    with pytest.raises(StatsError, match="ct_fusion"):
        compare_families(fm[~((fm.model == "ct_fusion") & (fm.fold == 2))], FAMILIES)
    with pytest.raises(StatsError, match="model pet, repeat 0, fold 1"):
        bad = fm.copy()
        bad.loc[(bad.model == "pet") & (bad.repeat == 0) & (bad.fold == 1), "auroc"] = np.nan
        compare_families(bad, FAMILIES)


def test_disagreements_lists_a_significant_paired_difference_hidden_by_shared_fold_effects():
    # A large fold effect shared by every model makes the pooled samples overlap (Mann-Whitney
    # not significant) while every paired difference points the same way (t-test significant).
    shift = {"unimodal": 0.6, "one_image_fusion": 0.6, "dual_fusion": 0.62}
    res = compare_families(_fold_metrics(seed=5, fold_sd=0.1, model_sd=0.002, shift=shift), FAMILIES)
    table = disagreements(res)
    assert list(table["comparison"]) == ["dual_fusion vs one_image_fusion"]
    assert table["corrected_t_significant"].all() and not table["mann_whitney_significant"].any()


def test_disagreements_is_empty_when_the_tests_agree_and_reads_adjusted_p_values():
    res = compare_families(_fold_metrics(), FAMILIES)
    c = res.comparisons[0]
    agree = dataclasses.replace(
        res, comparisons=(dataclasses.replace(c, p_adjusted=0.01, ttest_p_adjusted=0.02),)
    )
    assert disagreements(agree).empty
    # Raw p: Mann-Whitney 0.01 (significant), t-test 0.1 (not); adjusted: neither is significant.
    t_raw = dataclasses.replace(c.ttest, p_value=0.1)
    raw_only = dataclasses.replace(c, p_value=0.01, p_adjusted=0.08, ttest=t_raw, ttest_p_adjusted=0.2)
    assert disagreements(dataclasses.replace(res, comparisons=(raw_only,))).empty
    assert len(disagreements(dataclasses.replace(res, comparisons=(raw_only,)), adjusted=False)) == 1


def test_family_order_goes_from_fewest_to_most_modalities():
    assert FAMILY_ORDER == ("unimodal", "one_image_fusion", "dual_fusion")


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


# --------------------------------------------------------------------------- distribution distances


def _quantiles(dist, n):
    """A noise-free 'sample' of a distribution: its quantiles at (i + 0.5) / n."""
    return dist.ppf((np.arange(n) + 0.5) / n)


def test_bhattacharyya_of_two_normals_matches_the_closed_form():
    m1, s1, m2, s2 = 0.0, 1.0, 1.0, 2.0
    expected = (m1 - m2) ** 2 / (4 * (s1**2 + s2**2)) + 0.5 * math.log((s1**2 + s2**2) / (2 * s1 * s2))
    a, b = _quantiles(sstats.norm(m1, s1), 100_000), _quantiles(sstats.norm(m2, s2), 100_000)
    assert distribution_distances(a, b, bins=200).bhattacharyya == pytest.approx(expected, abs=2e-3)


def test_overlap_of_two_half_shifted_uniforms_is_one_half():
    a, b = _quantiles(sstats.uniform(0, 1), 10_000), _quantiles(sstats.uniform(0.5, 1), 10_000)
    assert distribution_distances(a, b, bins=30).overlap == pytest.approx(0.5, abs=1e-9)


def test_identical_samples_are_at_distance_zero_with_full_overlap():
    x = np.random.default_rng(0).gamma(2.0, 0.1, 2000)
    r = distribution_distances(x, x.copy())
    for value in (r.wasserstein, r.ks_statistic, r.js_divergence, r.energy_distance, r.bhattacharyya):
        assert value == pytest.approx(0.0, abs=1e-7)
    assert r.overlap == pytest.approx(1.0) and r.ks_p_value == pytest.approx(1.0)


def test_disjoint_samples_have_no_overlap_and_maximal_jensen_shannon():
    a, b = np.linspace(0, 1, 500), np.linspace(2, 3, 700)
    r_e = distribution_distances(a, b, bins=30, js_base=math.e)
    assert r_e.overlap == 0.0 and math.isinf(r_e.bhattacharyya) and r_e.ks_statistic == 1.0
    assert r_e.js_divergence == pytest.approx(math.log(2))
    assert distribution_distances(a, b, bins=30).js_divergence == pytest.approx(1.0)  # base 2


def test_jensen_shannon_is_the_divergence_not_scipys_distance():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 3000), rng.normal(0.5, 1.5, 3000)
    edges = np.histogram_bin_edges(np.r_[a, b], bins=20)
    p = np.histogram(a, edges)[0] / a.size
    q = np.histogram(b, edges)[0] / b.size
    m = (p + q) / 2

    def kl(u, v):
        return sum(ui * math.log2(ui / vi) for ui, vi in zip(u, v, strict=True) if ui > 0)

    assert distribution_distances(a, b, bins=20).js_divergence == pytest.approx(
        0.5 * kl(p, m) + 0.5 * kl(q, m)
    )


def test_wasserstein_between_unit_normals_one_apart_is_one():
    rng = np.random.default_rng(0)
    r = distribution_distances(rng.normal(0, 1, 20_000), rng.normal(1, 1, 20_000))
    assert r.wasserstein == pytest.approx(1.0, abs=0.05)


def test_ks_and_energy_distance_match_scipy_and_the_energy_definition():
    rng = np.random.default_rng(5)
    a, b = rng.exponential(1.0, 80), rng.exponential(1.3, 60)
    r = distribution_distances(a, b)
    ks = sstats.ks_2samp(a, b)
    assert (r.ks_statistic, r.ks_p_value) == pytest.approx((ks.statistic, ks.pvalue))
    e_xy = np.abs(a[:, None] - b[None, :]).mean()
    e_xx = np.abs(a[:, None] - a[None, :]).mean()
    e_yy = np.abs(b[:, None] - b[None, :]).mean()
    assert r.energy_distance == pytest.approx(math.sqrt(2 * e_xy - e_xx - e_yy))


def test_distance_table_states_range_and_reading_of_every_metric():
    t = distribution_distances(np.linspace(0, 1, 50), np.linspace(0.2, 1.2, 50)).to_frame()
    assert len(t) == 7 and t["range"].notna().all() and t["reading"].str.contains("identical").all()
    assert t["p_value"].notna().sum() == 1  # only the KS test has a p-value


def test_distribution_distances_rejects_values_outside_the_given_range():
    with pytest.raises(StatsError, match="outside range"):
        distribution_distances([0.1, 0.5], [0.2, 1.5], range=(0.0, 1.0))


# --------------------------------------------------------------------------- saliency mass


def test_saliency_mass_fraction_adds_absolute_mass_per_named_region():
    labels = np.zeros((2, 3, 4), dtype=np.uint8)  # 24 voxels, background 0 (unnamed -> other)
    saliency = np.full(labels.shape, 0.1)
    labels[0, 0, :2] = 11  # two liver-lesion voxels
    labels[0, 0, 2] = 12  # one nodal-lesion voxel
    labels[1, 2, :] = 5  # four kidney voxels
    saliency[0, 0, :3] = [3.0, -3.0, 3.0]  # sign does not matter
    saliency[1, 2, :] = 1.0
    out = saliency_mass_fraction(saliency, labels, {11: "lesion", 12: "lesion", 5: "kidney", 4: "spleen"})
    out = out.set_index("region")
    total = 9.0 + 4.0 + 17 * 0.1
    assert list(out.index) == ["lesion", "kidney", "spleen", "other"]
    assert out.loc["lesion", "mass_fraction"] == pytest.approx(9.0 / total)
    assert out.loc["kidney", "mass_fraction"] == pytest.approx(4.0 / total)
    assert out.loc["spleen", "mass_fraction"] == 0.0 and out.loc["spleen", "n_voxels"] == 0
    assert out.loc["other", "n_voxels"] == 17
    assert out["mass_fraction"].sum() == pytest.approx(1.0)
    assert out.loc["lesion", "enrichment"] == pytest.approx((9.0 / total) / (3 / 24))


def test_saliency_mass_fraction_needs_matching_grids():
    with pytest.raises(StatsError, match="shape"):
        saliency_mass_fraction(np.ones((75, 50, 50)), np.zeros((75, 50, 49), dtype=int), {0: "background"})


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


def test_jensen_shannon_distance_is_scipys_and_the_paper_value_sits_beside_it():
    from prrt_utils.analysis.explain import distance_table

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


def test_a_jensen_shannon_divergence_of_0418_is_impossible_beside_a_bhattacharyya_of_0207():
    # The bound the docstring states: JS divergence in bits <= (1 - BC) / ln 2. Checked on random histograms.
    rng = np.random.default_rng(5)
    for _ in range(2000):
        k = int(rng.integers(2, 8))
        p, q = rng.dirichlet(np.ones(k) * 0.5), rng.dirichlet(np.ones(k) * 0.5)
        assert jensenshannon(p, q, base=2) ** 2 <= (1 - np.sqrt(p * q).sum()) / math.log(2) + 1e-12
    assert (1 - math.exp(-0.207)) / math.log(2) < 0.418


def _paired_folds(diff_noise: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    idx = pd.MultiIndex.from_product([range(5), range(3)], names=["repeat", "fold"]).to_frame(index=False)
    base = rng.uniform(0.45, 0.85, len(idx))  # folds differ a lot: large SE of each model's mean
    a = idx.assign(model="fusion", auroc=base + 0.03 + rng.normal(0, diff_noise, len(idx)))
    b = idx.assign(model="forest", auroc=base)
    return pd.concat([a, b], ignore_index=True)


def test_paired_model_test_is_the_corrected_t_test_of_the_fold_differences():
    from prrt_utils.analysis.stats import paired_model_test, paired_table

    fm = _paired_folds(0.01)
    r = paired_model_test(fm, "fusion", "forest")
    d = (fm[fm["model"] == "fusion"]["auroc"].to_numpy() - fm[fm["model"] == "forest"]["auroc"].to_numpy())
    t = d.mean() / math.sqrt((1 / 15 + 1 / 2) * d.var(ddof=1))  # 3 folds: n_test / n_train = 1 / 2
    assert r.t_statistic == pytest.approx(t) and r.df == 14 and r.mean_difference == pytest.approx(d.mean())
    assert r.p_value == pytest.approx(2 * sstats.t.sf(abs(t), 14))
    # Pairing matters: the gap (0.03) is far inside 2 SE of either mean over folds, yet consistent fold by fold.
    row = paired_table(fm, ["fusion"], "forest").iloc[0]
    assert row["verdict"].startswith("higher") and row["p"] < 0.01 and row["folds higher"].endswith("of 15")
    noisy = paired_table(_paired_folds(0.2), ["fusion"], "forest").iloc[0]
    assert noisy["verdict"].startswith("not significantly different")


def test_paired_model_test_refuses_models_not_scored_on_the_same_folds():
    from prrt_utils.analysis.stats import paired_model_test

    fm = _paired_folds(0.01)
    fm = fm[~((fm["model"] == "forest") & (fm["repeat"] == 4) & (fm["fold"] == 2))]
    with pytest.raises(StatsError, match="not both scored"):
        paired_model_test(fm, "fusion", "forest")
