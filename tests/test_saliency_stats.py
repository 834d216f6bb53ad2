"""Tests of prrt_utils.analysis.saliency_stats: distances against closed forms and scipy, saliency mass per region."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sstats
from scipy.spatial.distance import jensenshannon

from prrt_utils.analysis.saliency_stats import distribution_distances, saliency_mass_fraction
from prrt_utils.analysis.stats import StatsError

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


def test_a_jensen_shannon_divergence_of_0418_is_impossible_beside_a_bhattacharyya_of_0207():
    # The bound the docstring states: JS divergence in bits <= (1 - BC) / ln 2. Checked on random histograms.
    rng = np.random.default_rng(5)
    for _ in range(2000):
        k = int(rng.integers(2, 8))
        p, q = rng.dirichlet(np.ones(k) * 0.5), rng.dirichlet(np.ones(k) * 0.5)
        assert jensenshannon(p, q, base=2) ** 2 <= (1 - np.sqrt(p * q).sum()) / math.log(2) + 1e-12
    assert (1 - math.exp(-0.207)) / math.log(2) < 0.418
