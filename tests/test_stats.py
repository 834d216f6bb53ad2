"""Tests of prrt_utils.analysis.stats: known answers, brute-force definitions and reference implementations."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sstats

from prrt_utils.analysis.stats import (
    FAMILY_ORDER,
    StatsError,
    bonferroni,
    cliffs_delta,
    cliffs_magnitude,
    compare_families,
    corrected_resampled_ttest,
    disagreements,
    mean_se,
    paired_model_test,
    paired_table,
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


def _paired_folds(diff_noise: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    idx = pd.MultiIndex.from_product([range(5), range(3)], names=["repeat", "fold"]).to_frame(index=False)
    base = rng.uniform(0.45, 0.85, len(idx))  # folds differ a lot: large SE of each model's mean
    a = idx.assign(model="fusion", auroc=base + 0.03 + rng.normal(0, diff_noise, len(idx)))
    b = idx.assign(model="forest", auroc=base)
    return pd.concat([a, b], ignore_index=True)


def test_paired_model_test_is_the_corrected_t_test_of_the_fold_differences():
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
    fm = _paired_folds(0.01)
    fm = fm[~((fm["model"] == "forest") & (fm["repeat"] == 4) & (fm["fold"] == 2))]
    with pytest.raises(StatsError, match="not both scored"):
        paired_model_test(fm, "fusion", "forest")
