"""The published numbers of Baur et al. 2025 (arXiv 2511.05169), as data.

Everything here was transcribed by hand from the paper text
(``seeds/001_*.txt``); each value names the table or section it comes from.
These are the numbers of the **real**, private Charité cohort (116 patients).
The book sets them beside the numbers of our synthetic cohort, which will
differ; they are a reference, never a target to fit.

Where the paper contradicts itself, the table is taken as the source and the
disagreement is listed in :data:`PAPER_DISCREPANCIES` so the book can say so.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any

import pandas as pd

__all__ = [
    "DISPLAY_NAMES",
    "FAMILIES",
    "FAMILY_ORDER",
    "MODEL_KEYS",
    "PAPER_DISCREPANCIES",
    "PAPER_KM",
    "PAPER_N",
    "PRIMARY_MODEL",
    "TABLE1_VARIABLES",
    "paper_table1",
    "paper_table2",
]

MODEL_KEYS: tuple[str, ...] = (
    "rf_labs",
    "pet_only",
    "ct_only",
    "pet_fusion",
    "ct_fusion",
    "petct_fusion",
    "petct_fusion_pretrained",
)
"""Registry keys (``models/<key>.yaml``) of the seven models, in the row order of Table 2."""

DISPLAY_NAMES: dict[str, str] = {
    "rf_labs": "Random Forest (labs)",
    "pet_only": "PET only",
    "ct_only": "CT only",
    "pet_fusion": "PET fusion",
    "ct_fusion": "CT fusion",
    "petct_fusion": "PET/CT fusion",
    "petct_fusion_pretrained": "PET/CT fusion (pretrained CT)",
}
"""Name of each model in the book's tables and figures."""

PRIMARY_MODEL = "petct_fusion_pretrained"
"""The model every single-model analysis uses (DeLong reference, Kaplan-Meier by prediction, hazard
ratio, the one-patient model), fixed before any result is seen: the paper's best model (abstract,
Table 2). Choosing the model with the best cross-validated AUROC and then testing or plotting that
same model on the same predictions would carry the winner's curse (an optimistic pick)."""

FAMILY_ORDER: tuple[str, ...] = ("unimodal", "one_image_fusion", "dual_fusion")
"""Model families from fewest to most modalities (paper 2.6); consecutive ones are compared."""

FAMILIES: dict[str, tuple[str, ...]] = {
    # Paper 2.6: "unimodal (PET-only, CT-only, or Random Forest on tabular data),
    # one-image fusion (PET or CT combined with clinical variables), and dual
    # fusion (both PET and CT combined, with or without pretraining)".
    "unimodal": ("rf_labs", "pet_only", "ct_only"),
    "one_image_fusion": ("pet_fusion", "ct_fusion"),
    "dual_fusion": ("petct_fusion", "petct_fusion_pretrained"),
}
"""Family -> model keys (paper 2.6); the families partition :data:`MODEL_KEYS`."""

PAPER_N: MappingProxyType = MappingProxyType({"total": 116, "pfs_short": 42, "pfs_long": 74})
"""Patients in the real cohort (abstract, 3.1, Table 1): 42 (36 %) with PFS <= 1 year."""

# Table 2 (AUROC, AUPRC: mean +- SE over 5 repeats of 3-fold CV) and section 3.3
# (accuracy, given in the text for two models only). Markers of Table 2: "*"
# p < 0.01 vs unimodal, "†" p < 0.01 vs one-image fusion (Cliff's delta > 0.8).
_TABLE2: tuple[tuple[Any, ...], ...] = (
    # key, auroc mean, se, auprc mean, se, accuracy mean, se, marker
    ("rf_labs", 0.59, 0.02, 0.67, 0.01, 0.61, 0.02, ""),  # accuracy: 3.3
    ("pet_only", 0.42, 0.03, 0.58, 0.03, math.nan, math.nan, ""),
    ("ct_only", 0.54, 0.01, 0.57, 0.03, math.nan, math.nan, ""),
    ("pet_fusion", 0.68, 0.01, 0.80, 0.01, 0.65, 0.01, "*"),  # accuracy: 3.3, "highest accuracy overall"
    ("ct_fusion", 0.62, 0.03, 0.72, 0.04, math.nan, math.nan, "*"),
    ("petct_fusion", 0.69, 0.01, 0.80, 0.01, math.nan, math.nan, "†"),
    ("petct_fusion_pretrained", 0.72, 0.01, 0.80, 0.02, math.nan, math.nan, "†"),  # abstract: AUPRC ± 0.01
)


def paper_table2() -> pd.DataFrame:
    """Table 2 of the paper: mean ± SE of AUROC, AUPRC (and accuracy where given), real cohort.

    Returns
    -------
    DataFrame, shape (7, 9)
        ``model`` (registry key, :data:`MODEL_KEYS` order), ``auroc_mean,
        auroc_se, auprc_mean, auprc_se, accuracy_mean, accuracy_se`` (accuracy
        is NaN except for the Random Forest and PET fusion, the only two the
        text of section 3.3 reports), ``marker`` (Table 2's significance mark:
        ``*`` better than the unimodal family, ``†`` better than the one-image
        fusion family, both p < 0.01) and ``name`` (:data:`DISPLAY_NAMES`).
    """
    columns = [
        "model",
        "auroc_mean",
        "auroc_se",
        "auprc_mean",
        "auprc_se",
        "accuracy_mean",
        "accuracy_se",
        "marker",
    ]
    table = pd.DataFrame(list(_TABLE2), columns=columns)
    table["name"] = table["model"].map(DISPLAY_NAMES)
    return table


# Table 1 (clinical characteristics by PFS <= 1 year / > 1 year). Categorical
# rows: counts (percent of the column); continuous rows: median (min–max).
# The p-value is as printed. Categorical p-values are per row: Fisher's exact
# test of "this level vs the rest" (2 x 2); recomputing them from the counts
# with scipy reproduces every printed value (tests/test_paper.py).
_N_ALL, _N_SHORT, _N_LONG = PAPER_N["total"], PAPER_N["pfs_short"], PAPER_N["pfs_long"]
_CAT = "n (%)"
_CONT = "median (min–max)"
_TABLE1_COUNTS: tuple[tuple[str, str, int, int, str], ...] = (
    # variable, level, n short, n long, p as printed
    ("Sex", "male", 23, 45, "0.560"),
    ("Sex", "female", 19, 29, "0.560"),
    ("Primary site", "small intestine", 19, 30, "0.697"),
    ("Primary site", "pancreas", 8, 26, "0.090"),
    ("Primary site", "colon/rectum", 4, 8, "1.000"),
    ("Primary site", "stomach", 0, 1, "1.000"),
    ("Primary site", "CUP", 11, 9, "0.073"),
    ("Metastatic sites", "hepatic", 28, 57, "0.276"),
    ("Metastatic sites", "lymphonodal", 26, 49, "0.689"),
    ("Metastatic sites", "osseous", 12, 23, "0.836"),
    ("Metastatic sites", "peritoneal", 6, 13, "0.796"),
    ("Metastatic sites", "pulmonal", 1, 4, "0.652"),
    ("Functional", "yes", 19, 21, "0.072"),
    ("Functional", "no", 22, 53, "0.045"),
    ("Functional", "unknown", 1, 0, "0.362"),
    ("Grade", "G1", 8, 15, "1.000"),
    ("Grade", "G2", 29, 53, "0.833"),
    ("Grade", "G3", 2, 4, "1.000"),
    ("Grade", "unknown", 3, 2, "0.351"),
)
_TABLE1_CONTINUOUS: tuple[tuple[str, str, str, str, str], ...] = (
    # variable, total, short, long, p as printed
    ("Age (years)", "66 (36–87)", "66 (36–87)", "66 (36–80)", "0.945"),
    ("Ki-67 (%)", "5 (1–40)", "5 (1–25)", "5 (1–40)", "0.501"),
    ("CgA (µg/l)", "419 (24–99590)", "821 (25–99590)", "262 (24–15100)", "0.001"),
    ("AST (U/l)", "28 (14–139)", "32 (14–123)", "28 (14–139)", "0.123"),
    ("ALT (U/l)", "28 (7–132)", "27 (7–96)", "28 (10–132)", "0.774"),
    ("γ-GT (U/l)", "61 (9–691)", "95 (21–688)", "50 (9–691)", "0.014"),
    ("De Ritis ratio (AST/ALT)", "1.12 (0.46–3.43)", "1.16 (0.46–3.43)", "1.07 (0.53–2.87)", "0.223"),
    ("PRRT cycles", "4 (1–7)", "2 (1–4)", "4 (1–7)", "< 0.001"),
)
# Row order of Table 1 (and of prrt_utils.data.cohort_stats.table1).
TABLE1_VARIABLES: tuple[str, ...] = (
    "Patients",
    "Age (years)",
    "Sex",
    "Primary site",
    "Metastatic sites",
    "Functional",
    "Grade",
    "Ki-67 (%)",
    "CgA (µg/l)",
    "AST (U/l)",
    "ALT (U/l)",
    "γ-GT (U/l)",
    "De Ritis ratio (AST/ALT)",
    "PRRT cycles",
)


def _n_pct(n: int, of: int) -> str:
    # half-up rounding, as a clinician would (Python's round() rounds half to even)
    return f"{n} ({math.floor(100 * n / of + 0.5)}%)"


def paper_table1() -> pd.DataFrame:
    """Table 1 of the paper (real cohort), tidy, one row per variable level.

    Returns
    -------
    DataFrame
        ``variable, level`` (the same vocabulary as
        :func:`prrt_utils.data.cohort_stats.table1`, so the two align), ``total,
        pfs_short, pfs_long`` (printed values: ``"23 (55%)"`` or
        ``"66 (36–87)"``; ``pfs_short`` is PFS <= 1 year), ``p`` (as printed,
        e.g. ``"< 0.001"``; empty for the patient count), and for categorical
        rows the counts ``n_total, n_short, n_long`` (nullable integers).
        Group sizes: 116 = 42 + 74.
    """
    rows: list[dict[str, Any]] = [
        {
            "variable": "Patients",
            "level": _CAT,
            "total": _n_pct(_N_ALL, _N_ALL),
            "pfs_short": _n_pct(_N_SHORT, _N_ALL),  # Table 1 prints the share of all patients here
            "pfs_long": _n_pct(_N_LONG, _N_ALL),
            "p": "",
            "n_total": _N_ALL,
            "n_short": _N_SHORT,
            "n_long": _N_LONG,
        }
    ]
    for variable, level, short, long, p in _TABLE1_COUNTS:
        rows.append(
            {
                "variable": variable,
                "level": level,
                "total": _n_pct(short + long, _N_ALL),
                "pfs_short": _n_pct(short, _N_SHORT),
                "pfs_long": _n_pct(long, _N_LONG),
                "p": p,
                "n_total": short + long,
                "n_short": short,
                "n_long": long,
            }
        )
    for variable, total, short, long, p in _TABLE1_CONTINUOUS:
        rows.append(
            {
                "variable": variable,
                "level": _CONT,
                "total": total,
                "pfs_short": short,
                "pfs_long": long,
                "p": p,
            }
        )
    table = pd.DataFrame(rows)
    for col in ("n_total", "n_short", "n_long"):
        table[col] = table[col].astype("Int64")
    order = {v: i for i, v in enumerate(TABLE1_VARIABLES)}
    table["_order"] = table["variable"].map(order)
    return table.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)


PAPER_KM: MappingProxyType = MappingProxyType(
    {
        # Section 2.4: PFS from the first PRRT cycle to progression or death;
        # patients without a progression event were not included; split at 1 year.
        "threshold_months": 12.0,
        "n": PAPER_N["total"],
        "events": PAPER_N["total"],
        "censored": 0,
        # Section 3.2 and Figure 2: Kaplan-Meier of the whole cohort.
        "median_pfs_months": 15.7,
        "iqr_months": (9.1, 26.7),
        # Section 3.3 and Figure 5: Kaplan-Meier stratified by the predicted
        # probability of LONG PFS (>= 0.5 "high response" vs < 0.5), one
        # representative cross-validation of the PET fusion model.
        "by_prediction": MappingProxyType(
            {
                "model": "pet_fusion",
                "probability_cut": 0.5,
                "median_long_months": 17.25,
                "median_short_months": 12.43,
                "logrank_statistic": 15.18,
                "p_value": 0.0001,
            }
        ),
    }
)
"""Survival facts the paper reports (sections 2.4, 3.2, 3.3; Figures 2 and 5)."""

PAPER_DISCREPANCIES: tuple[str, ...] = (
    "γ-GT p-value: 0.002 in the abstract, 0.02 in section 3.2, 0.014 in Table 1 (Table 1 used here).",
    "CgA p-value: 0.003 in the abstract and section 3.2, 0.001 in Table 1 (Table 1 used here).",
    "PRRT cycles p-value: < 0.001 in the abstract and Table 1, < 0.01 in section 3.2.",
    "Median PRRT cycles: 3 (range 1–7) in sections 2.3 and 3.1, 4 (1–7) in Table 1.",
    "AUPRC of PET/CT fusion (pretrained CT): 0.80 ± 0.01 in the abstract, 0.80 ± 0.02 in Table 2 (Table 2 used here).",
)
"""Places where the paper's text and tables disagree; the value used here is the table's."""
