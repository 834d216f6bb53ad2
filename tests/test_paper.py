"""The paper's published numbers as data (prrt_utils.data.paper): shape, consistency, transcription."""

from __future__ import annotations

import math
import re

import pytest
from scipy.stats import fisher_exact

from prrt_utils.analysis.metrics import paper_reference
from prrt_utils.data import paper
from prrt_utils.models.networks import PAPER_MODEL_KEYS, load_registry


def test_model_keys_are_the_registry_keys_in_table_2_order():
    registry = load_registry()
    assert tuple(registry)[:7] == paper.MODEL_KEYS  # then the baselines, which the paper does not have
    assert paper.MODEL_KEYS == PAPER_MODEL_KEYS
    assert list(paper.DISPLAY_NAMES) == list(paper.MODEL_KEYS)


def test_families_partition_the_seven_models_in_family_order():
    assert tuple(paper.FAMILIES) == paper.FAMILY_ORDER
    members = [k for keys in paper.FAMILIES.values() for k in keys]
    assert sorted(members) == sorted(paper.MODEL_KEYS) and len(members) == len(set(members))
    assert paper.FAMILIES["unimodal"] == ("rf_labs", "pet_only", "ct_only")
    assert set(paper.FAMILIES["dual_fusion"]) == {"petct_fusion", "petct_fusion_pretrained"}


def test_table2_has_one_row_per_model_with_positive_standard_errors():
    t = paper.paper_table2()
    assert list(t["model"]) == list(paper.MODEL_KEYS)
    for metric in ("auroc", "auprc"):
        assert (t[f"{metric}_se"] > 0).all()
        assert t[f"{metric}_mean"].between(0, 1).all()
    acc = t.dropna(subset=["accuracy_mean"])
    assert list(acc["model"]) == ["rf_labs", "pet_fusion"]  # the only accuracies section 3.3 reports
    assert (acc["accuracy_se"] > 0).all()


def test_table2_values_as_published():
    t = paper.paper_table2().set_index("model")
    assert (t.loc["rf_labs", "auroc_mean"], t.loc["rf_labs", "auroc_se"]) == (0.59, 0.02)
    assert (t.loc["pet_only", "auroc_mean"], t.loc["pet_only", "auprc_mean"]) == (0.42, 0.58)
    assert (t.loc["ct_fusion", "auprc_mean"], t.loc["ct_fusion", "auprc_se"]) == (0.72, 0.04)
    assert (t.loc["petct_fusion_pretrained", "auroc_mean"], t.loc["petct_fusion_pretrained", "auprc_se"]) == (
        0.72,
        0.02,
    )
    assert t.loc["pet_fusion", "accuracy_mean"] == 0.65 and t.loc["rf_labs", "accuracy_mean"] == 0.61
    assert t["auroc_mean"].idxmax() == "petct_fusion_pretrained"
    assert list(t["marker"]) == ["", "", "", "*", "*", "†", "†"]


def test_metrics_paper_reference_reads_this_module():
    names, table = paper_reference()
    from prrt_utils.models.networks import BASELINE_NAMES

    assert names == {**paper.DISPLAY_NAMES, **BASELINE_NAMES}  # the baselines by name too, not by key
    assert list(table["model"]) == list(paper.MODEL_KEYS)
    assert table.set_index("model").loc["pet_fusion", "auroc_mean"] == 0.68


def _count(text: str) -> tuple[int, int]:
    n, pct = re.fullmatch(r"(\d+) \((\d+)%\)", text).groups()
    return int(n), int(pct)


def test_table1_counts_add_up_to_the_group_sizes():
    t = paper.paper_table1()
    assert tuple(t["variable"].drop_duplicates()) == paper.TABLE1_VARIABLES
    cat = t[t["n_short"].notna() & (t["variable"] != "Patients")]
    for variable in ("Sex", "Primary site", "Functional", "Grade"):
        rows = cat[cat["variable"] == variable]
        assert rows["n_short"].sum() == 42 and rows["n_long"].sum() == 74, variable
    assert (cat["n_total"] == cat["n_short"] + cat["n_long"]).all()


def test_table1_printed_strings_match_the_paper_text():
    t = paper.paper_table1().set_index(["variable", "level"])
    assert t.loc[("Patients", "n (%)"), "pfs_short"] == "42 (36%)"
    assert t.loc[("Sex", "female"), "total"] == "48 (41%)"
    assert t.loc[("Functional", "yes"), "total"] == "40 (34%)"
    assert t.loc[("Primary site", "colon/rectum"), "pfs_short"] == "4 (10%)"
    assert t.loc[("Grade", "unknown"), "pfs_long"] == "2 (3%)"
    assert t.loc[("CgA (µg/l)", "median (min–max)"), "pfs_short"] == "821 (25–99590)"
    assert t.loc[("PRRT cycles", "median (min–max)"), "p"] == "< 0.001"
    cat = t[t["n_short"].notna()].drop(index=("Patients", "n (%)"))
    for _, row in cat.iterrows():  # the printed percent is the count over its column, rounded half-up
        assert _count(row["pfs_short"]) == (row["n_short"], math.floor(100 * row["n_short"] / 42 + 0.5))
        assert _count(row["pfs_long"]) == (row["n_long"], math.floor(100 * row["n_long"] / 74 + 0.5))


def test_table1_categorical_p_values_are_fisher_level_vs_rest_of_the_printed_counts():
    # A transcription check: every printed categorical p is reproduced from the printed counts.
    t = paper.paper_table1()
    cat = t[t["n_short"].notna() & (t["variable"] != "Patients")]
    assert len(cat) == 19
    for _, row in cat.iterrows():
        a, b = int(row["n_short"]), int(row["n_long"])
        p = fisher_exact([[a, 42 - a], [b, 74 - b]]).pvalue
        assert f"{p:.3f}" == row["p"], (row["variable"], row["level"])


def test_km_facts_are_ordered_and_as_published():
    km = paper.PAPER_KM
    q1, q3 = km["iqr_months"]
    assert q1 < km["median_pfs_months"] < q3
    assert (km["median_pfs_months"], q1, q3) == (15.7, 9.1, 26.7)
    assert km["events"] == km["n"] == 116 and km["censored"] == 0
    bp = km["by_prediction"]
    assert bp["median_long_months"] > bp["median_short_months"]
    assert (bp["median_long_months"], bp["median_short_months"], bp["logrank_statistic"]) == (
        17.25,
        12.43,
        15.18,
    )
    assert bp["model"] in paper.MODEL_KEYS
    with pytest.raises(TypeError):
        km["median_pfs_months"] = 1.0  # read-only
