"""Table 1 and Kaplan-Meier of the cohort (prrt_utils.data.cohort_stats) against references."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import fisher_exact, mannwhitneyu
from test_cohort import clinical

from prrt_utils.data import cohort as C
from prrt_utils.data import cohort_stats as S
from prrt_utils.data.paper import paper_table1

# --------------------------------------------------------------------------- Table 1


def paper_count_cohort(seed: int = 0) -> pd.DataFrame:
    """A cohort with exactly the categorical counts of the paper's Table 1 (42 short, 74 long)."""
    rng = np.random.default_rng(seed)
    t = paper_table1()
    codes = {
        "Sex": ("sex", {"male": "M", "female": "F"}),
        "Primary site": (
            "primary_site",
            {
                "small intestine": "small_intestine",
                "pancreas": "pancreas",
                "colon/rectum": "colon_rectum",
                "stomach": "stomach",
                "CUP": "cup",
            },
        ),
        "Functional": ("functional", {"yes": "yes", "no": "no", "unknown": "unknown"}),
        "Grade": ("grade", {"G1": "G1", "G2": "G2", "G3": "G3", "unknown": "unknown"}),
    }
    groups = {"n_short": 42, "n_long": 74}
    parts = []
    for key, n in groups.items():
        part = pd.DataFrame({"pfs_months": np.full(n, 6.0 if key == "n_short" else 24.0), "event": 1})
        for variable, (col, mapping) in codes.items():
            rows = t[t["variable"] == variable]
            part[col] = np.concatenate(
                [[mapping[lv]] * int(c) for lv, c in zip(rows["level"], rows[key], strict=True)]
            )
        mets = t[t["variable"] == "Metastatic sites"]
        for lv, c in zip(mets["level"], mets[key], strict=True):
            part[f"met_{lv}"] = rng.permutation([1] * int(c) + [0] * (n - int(c)))
        for col in ("age_years", "ki67_pct", "prrt_cycles", *C.LAB_COLUMNS):
            part[col] = rng.integers(1, 100, n).astype(float)
        parts.append(part)
    df = pd.concat(parts, ignore_index=True)
    df["patient_id"] = [f"PRRT-{i:03d}" for i in range(1, len(df) + 1)]
    df["pfs_short"] = (df["pfs_months"] <= 12).astype(int)
    return df.assign(de_ritis=df["ast_u_l"] / df["alt_u_l"])


def test_table1_reproduces_the_paper_categorical_rows_from_its_counts():
    ours = S.table1(paper_count_cohort(), p_as_text=True).set_index(["variable", "level"])
    ref = paper_table1().set_index(["variable", "level"])
    cat = ref[ref["n_short"].notna()].index
    assert ours.columns[:3].tolist() == ["Total (n=116)", "PFS <= 12 mo (n=42)", "PFS > 12 mo (n=74)"]
    assert ours.loc[cat, "PFS <= 12 mo (n=42)"].tolist() == ref.loc[cat, "pfs_short"].tolist()
    assert ours.loc[cat, "PFS > 12 mo (n=74)"].tolist() == ref.loc[cat, "pfs_long"].tolist()
    assert ours.loc[cat, "Total (n=116)"].tolist() == ref.loc[cat, "total"].tolist()
    assert ours.loc[cat, "p"].tolist() == ref.loc[cat, "p"].tolist()


def test_table1_p_values_equal_scipy_on_hand_made_groups():
    # short: 4 patients, 3 male; long: 6 patients, 1 male. CgA clearly higher in short.
    df = clinical(10).assign(
        pfs_months=[3.0, 6, 9, 12, 13, 20, 30, 40, 50, 60],
        sex=["M", "M", "M", "F", "M", "F", "F", "F", "F", "F"],
        cga_ug_l=[900.0, 500, 700, 650, 100, 120, 80, 60, 200, 90],
    )
    for col in C.LAB_COLUMNS[:2] + C.LAB_COLUMNS[3:] + ("age_years", "ki67_pct", "prrt_cycles"):
        df[col] = pd.to_numeric(df[col])
    df = df.assign(de_ritis=df["ast_u_l"] / df["alt_u_l"], event=1)
    t = S.table1(df).set_index(["variable", "level"])
    assert t.loc[("Sex", "male"), "p"] == pytest.approx(fisher_exact([[3, 1], [1, 5]]).pvalue)
    assert t.loc[("Sex", "male"), "PFS <= 12 mo (n=4)"] == "3 (75%)"
    assert t.loc[("Sex", "male"), "PFS > 12 mo (n=6)"] == "1 (17%)"
    assert t.loc[("CgA (µg/l)", "median (min–max)"), "p"] == pytest.approx(
        mannwhitneyu([900, 500, 700, 650], [100, 120, 80, 60, 200, 90], alternative="two-sided").pvalue
    )
    assert t.loc[("CgA (µg/l)", "median (min–max)"), "PFS <= 12 mo (n=4)"] == "675 (500–900)"
    assert t.loc[("Metastatic sites", "hepatic"), "p"] == pytest.approx(1.0)  # everyone has it


def test_fisher_freeman_halton_equals_exact_references():
    from scipy.stats import PermutationMethod

    # k = 2: scipy's two-sided Fisher exact test.
    assert S.fisher_freeman_halton([[3, 7], [9, 4]]) == pytest.approx(fisher_exact([[3, 7], [9, 4]]).pvalue, rel=1e-12)
    # Small k x 2 tables: scipy's exact permutation over every pairing of the patients (8 patients:
    # 8! pairings, seconds; the 9 and 10 patients used before cost 9! and 10!, minutes of the suite).
    for table in ([[2, 1], [0, 2], [2, 1]], [[1, 2], [2, 0], [0, 2], [1, 0]]):
        ref = fisher_exact(np.array(table), method=PermutationMethod(n_resamples=np.inf)).pvalue
        assert S.fisher_freeman_halton(table) == pytest.approx(ref, rel=1e-9)
    # Hand count: rows (1, 1), one short patient: two tables of probability 1/2 each.
    assert S.fisher_freeman_halton([[1, 0], [0, 1]]) == pytest.approx(1.0)
    assert S.fisher_freeman_halton([[0, 0], [2, 3]]) == 1.0  # one level: nothing to test


def test_table1_adds_one_test_per_variable_beside_the_papers_per_level_tests():
    df = paper_count_cohort()
    t = S.table1(df)
    site = t[t["variable"] == "Primary site"]
    counts = [[int(v) for v in (site.iloc[i, 3].split()[0], site.iloc[i, 4].split()[0])] for i in range(len(site))]
    assert site["p (variable)"].iloc[0] == pytest.approx(S.fisher_freeman_halton(counts))
    assert site["test (variable)"].iloc[0].startswith("Fisher-Freeman-Halton")
    assert site["p (variable)"].iloc[1:].isna().all()  # one test per variable, on its first row
    sex = t[t["variable"] == "Sex"]
    assert sex["p (variable)"].iloc[0] == pytest.approx(sex["p"].iloc[0])  # two levels: the 2 x 2 Fisher test
    cont = t[t["test"] == "Mann-Whitney U"]
    assert (cont["p (variable)"] == cont["p"]).all()
    both = S.table1_side_by_side(S.table1(df, p_as_text=True))
    assert "ours: p, one test per variable" in both.columns and "paper: p" in both.columns


def test_table1_leaves_out_unclassified_patients():
    df = paper_count_cohort()
    df.loc[:2, "pfs_short"] = np.nan
    t = S.table1(df)
    assert t.attrs["n_left_out"] == 3 and "Total (n=113)" in t.columns


def test_side_by_side_aligns_every_row_with_the_paper():
    both = S.table1_side_by_side(S.table1(paper_count_cohort()))
    assert len(both) == len(paper_table1())
    assert (both["paper: PFS <= 1 year (n=42)"] != "").all()
    row = both[(both["variable"] == "Grade") & (both["level"] == "unknown")].iloc[0]
    assert row["ours: PFS <= 12 mo (n=42)"] == row["paper: PFS <= 1 year (n=42)"] == "3 (7%)"


# --------------------------------------------------------------------------- Kaplan-Meier


def test_km_median_and_quartiles_by_hand_without_censoring():
    km = S.kaplan_meier(pd.DataFrame({"pfs_months": [5.0, 1, 4, 2, 3], "event": 1}))
    # S = 0.8, 0.6, 0.4, 0.2, 0 at 1..5: first time <= 0.75 is 2, <= 0.5 is 3, <= 0.25 is 4
    assert (km.q1, km.median, km.q3) == (2.0, 3.0, 4.0)
    assert (km.n, km.events, km.censored) == (5, 5, 0)


def test_km_quartiles_at_n116_without_censoring_are_the_hand_counted_order_statistics():
    # 116 patients, every one progresses (the paper's design): S = 0.75 exactly after the 29th
    # progression, 0.5 after the 58th, 0.25 after the 87th. The quantile is the middle of each flat
    # stretch (R survival's rule); lifelines' rounding (S = 0.7500000000000001) made it the next time.
    rng = np.random.default_rng(3)
    t = np.sort(rng.gamma(2.0, 8.0, 116))
    km = S.kaplan_meier(pd.DataFrame({"pfs_months": rng.permutation(t), "event": 1}))
    assert km.q1 == pytest.approx((t[28] + t[29]) / 2, abs=1e-12)
    assert km.median == pytest.approx((t[57] + t[58]) / 2, abs=1e-12)
    assert km.q3 == pytest.approx((t[86] + t[87]) / 2, abs=1e-12)
    assert km.median == pytest.approx(np.median(t))


def test_km_quantile_matches_r_survival_quantile_reference_values():
    # R survival tests/quantile.R: time (9,1,1,6,6,8,10), status (1,1,0,1,1,0,0); at survival levels
    # 13/14, 6/7, 2/3, 1/2, 9/35, 1/10 quantile.survfit gives 1, 3.5, 6, 9, 9.5, NA.
    from lifelines import KaplanMeierFitter

    kmf = KaplanMeierFitter().fit([9.0, 1, 1, 6, 6, 8, 10], [1, 1, 0, 1, 1, 0, 0])
    got = [S.km_quantile(kmf, q) for q in (13 / 14, 6 / 7, 2 / 3, 0.5, 9 / 35, 0.1)]
    assert got == pytest.approx([1.0, 3.5, 6.0, 9.0, 9.5, math.inf])


def test_km_median_by_hand_with_censoring():
    # S(1) = 5/6, censored at 2, S(3) = 5/6 * 3/4 = 0.625, S(4) = 0.625 * 2/3 = 0.417 -> median 4
    km = S.kaplan_meier(pd.DataFrame({"pfs_months": [1.0, 2, 3, 4, 5, 6], "event": [1, 0, 1, 1, 0, 1]}))
    assert km.median == 4.0 and km.censored == 2
    assert km.curve()["survival"].tolist()[:4] == pytest.approx([1.0, 5 / 6, 5 / 6, 0.625])


def test_km_equals_lifelines_on_the_waltons_data():
    from lifelines import KaplanMeierFitter
    from lifelines.datasets import load_waltons
    from lifelines.utils import qth_survival_time

    w = load_waltons()
    km = S.kaplan_meier(w, duration="T", event="E")
    ref = KaplanMeierFitter().fit(w["T"], w["E"])
    assert km.median == ref.median_survival_time_ == 56.0
    sf = ref.survival_function_
    assert km.q1 == qth_survival_time(0.75, sf) and km.q3 == qth_survival_time(0.25, sf)
    assert km.n == len(w) and km.events == int(w["E"].sum())


def test_cohort_summary_counts_short_and_long():
    df = paper_count_cohort().assign(has_imaging=True)
    s = S.cohort_summary(df).set_index("quantity")
    assert s.loc["PFS <= 12 months (short)", "ours (synthetic cohort)"] == 42
    assert (
        s.loc["share short", "ours (synthetic cohort)"]
        == s.loc["share short", "paper (real cohort)"]
        == "36.2%"
    )
