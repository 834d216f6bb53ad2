"""Table 1 and the Kaplan-Meier estimate of the cohort (paper 3.1-3.2, Table 1, Figure 2).

:func:`table1` describes the cohort stage's patients (:func:`prrt_utils.data.cohort.read_cohort`)
by PFS group as the paper's Table 1 does, :func:`table1_side_by_side` sets it beside the
paper's, :func:`cohort_summary` counts it, and :func:`kaplan_meier` estimates PFS of the
whole cohort (median, its CI and the IQR by :func:`km_quantile`).

Statistics come from scipy (``fisher_exact``, ``mannwhitneyu``) and lifelines
(``KaplanMeierFitter``); nothing is hand-written except the table layout, the exact
Fisher-Freeman-Halton test (:func:`fisher_freeman_halton`) and R survival's quantile
rule (:func:`km_quantile`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import gammaln
from scipy.stats import fisher_exact, mannwhitneyu

from prrt_utils.data.cohort import MET_COLUMNS, PFS_THRESHOLD_MONTHS, CohortError
from prrt_utils.data.paper import PAPER_KM, PAPER_N, TABLE1_VARIABLES, paper_table1

__all__ = [
    "KMResult",
    "cohort_summary",
    "fisher_freeman_halton",
    "format_p",
    "kaplan_meier",
    "km_quantile",
    "table1",
    "table1_side_by_side",
]


# --------------------------------------------------------------------------- Table 1

_SEX = {"M": "male", "F": "female"}
_SITES = {
    "small_intestine": "small intestine",
    "pancreas": "pancreas",
    "colon_rectum": "colon/rectum",
    "stomach": "stomach",
    "cup": "CUP",
}
_METS = {c: c.removeprefix("met_") for c in MET_COLUMNS}
_CATEGORICAL_ROWS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("Sex", "sex", _SEX),
    ("Primary site", "primary_site", _SITES),
    ("Functional", "functional", {"yes": "yes", "no": "no", "unknown": "unknown"}),
    ("Grade", "grade", {"G1": "G1", "G2": "G2", "G3": "G3", "unknown": "unknown"}),
)
# variable -> (column, digits of the printed median/min/max; None: up to one decimal)
_CONTINUOUS_ROWS: dict[str, tuple[str, int | None]] = {
    "Age (years)": ("age_years", 0),
    "Ki-67 (%)": ("ki67_pct", None),
    "CgA (µg/l)": ("cga_ug_l", 0),
    "AST (U/l)": ("ast_u_l", 0),
    "ALT (U/l)": ("alt_u_l", 0),
    "γ-GT (U/l)": ("ggt_u_l", 0),
    "De Ritis ratio (AST/ALT)": ("de_ritis", 2),
    "PRRT cycles": ("prrt_cycles", 0),
}
CAT_LEVEL = "n (%)"
CONT_LEVEL = "median (min–max)"


def _pct(n: int, of: int) -> str:
    # half-up, as printed in clinical tables (Python's round() rounds half to even)
    return f"{n} ({math.floor(100 * n / of + 0.5)}%)" if of else f"{n} (–)"


def _num(x: float, digits: int | None) -> str:
    if not math.isfinite(x):
        return "–"
    if digits is None or (digits == 0 and x != round(x)):
        return f"{round(x, 1):g}"
    return f"{x:.{digits}f}"


def _median_range(values: pd.Series, digits: int | None) -> str:
    v = values.dropna().astype(float)
    if v.empty:
        return "–"
    return (
        f"{_num(float(v.median()), digits)} ({_num(float(v.min()), digits)}–{_num(float(v.max()), digits)})"
    )


def format_p(p: float) -> str:
    """A p-value as a clinical table prints it: ``"0.045"``, ``"< 0.001"``, empty if undefined."""
    if p is None or not math.isfinite(p):
        return ""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


FFH_MAX_TABLES = 20_000_000
"""Above this many tables with the observed margins, :func:`fisher_freeman_halton` refuses to enumerate."""


def fisher_freeman_halton(table: Any) -> float:
    """Exact Fisher-Freeman-Halton test of a k x 2 table (levels x short / long PFS): the p-value.

    Under independence with both margins fixed, the first column is
    multivariate hypergeometric: ``P(a) = prod_i C(r_i, a_i) / C(N, n_1)``.
    The p-value is the total probability of every table no more probable
    than the observed one (relative tolerance 1e-7, as R's ``fisher.test``).
    Every table is enumerated (row by row, vectorised); for k = 2 it equals
    scipy's two-sided Fisher exact test. Written by hand: scipy's
    ``fisher_exact`` gives r x c tables only by Monte Carlo or by permuting
    all N patients, and no maintained Python library gives the exact test.

    Parameters
    ----------
    table : array-like of int, shape (k, 2)
        Counts; rows with no patient are dropped.

    Returns
    -------
    float
        p in [0, 1]; 1.0 when fewer than two rows or one column total is 0.
    """
    t = np.asarray(table, dtype=np.int64)
    if t.ndim != 2 or t.shape[1] != 2 or (t < 0).any():
        raise CohortError(f"fisher_freeman_halton: needs a k x 2 table of non-negative counts, got {t.tolist()}")
    t = t[t.sum(axis=1) > 0]
    rows, n1 = t.sum(axis=1), int(t[:, 0].sum())
    if len(t) < 2 or n1 == 0 or n1 == int(rows.sum()):
        return 1.0
    if float(np.prod(np.minimum(rows, n1) + 1.0)) > FFH_MAX_TABLES:
        raise CohortError(f"fisher_freeman_halton: too many tables to enumerate for margins {rows.tolist()}")

    def log_choose(n: Any, k: Any) -> Any:
        return gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)

    total, logp = np.zeros(1, np.int64), np.zeros(1)
    remaining = int(rows.sum())
    for r in rows:
        remaining -= int(r)
        a = np.arange(int(r) + 1)
        total = (total[:, None] + a[None, :]).ravel()
        logp = (logp[:, None] + log_choose(int(r), a)[None, :]).ravel()
        ok = (total <= n1) & (total + remaining >= n1)  # the first column's total must stay reachable
        total, logp = total[ok], logp[ok]
    logp = logp - log_choose(int(rows.sum()), n1)
    observed = float(np.sum(log_choose(rows, t[:, 0])) - log_choose(int(rows.sum()), n1))
    p = float(np.exp(logp[logp <= observed + np.log1p(1e-7)]).sum())
    return min(p, 1.0)


def table1(cohort: pd.DataFrame, threshold: float = PFS_THRESHOLD_MONTHS, p_as_text: bool = False) -> pd.DataFrame:
    """Patient characteristics stratified by PFS <= / > ``threshold`` months (paper Table 1).

    Categorical rows: ``n (%)`` of the column's patients, and the two-sided
    Fisher exact test of the 2 x 2 table "this level vs every other patient"
    x "short vs long PFS" (``scipy.stats.fisher_exact``), one test per row as
    the paper does (its printed p-values are reproduced exactly by this rule
    from its counts). Binary metastasis flags count the patients with the flag.
    Continuous rows: median (min–max) and the two-sided Mann-Whitney U
    (Wilcoxon rank-sum) test (``scipy.stats.mannwhitneyu``, default method).
    Beside the paper's per-level tests, ``p (variable)`` holds the one test
    per variable a reviewer expects, on the variable's first row: for a
    categorical variable the exact Fisher-Freeman-Halton test of all its
    levels x short / long (:func:`fisher_freeman_halton`; the ``missing``
    level is left out), for a metastatic site its Fisher test, for a
    continuous variable its Mann-Whitney U.
    Missing values are left out of medians; a categorical variable with
    missing values gets a ``missing`` row.

    Parameters
    ----------
    cohort : DataFrame
        Cohort table (:func:`prrt_utils.data.cohort.read_cohort`); rows whose ``pfs_short`` is empty
        (PFS class undefined, e.g. censored) are left out.
    threshold : float
        PFS split in months; ``pfs_months <= threshold`` is short.
    p_as_text : bool
        Print ``p`` as the paper does (``"0.045"``, ``"< 0.001"``) instead of a float.

    Returns
    -------
    DataFrame
        ``variable, level, Total (n=N), PFS <= 12 mo (n=a), PFS > 12 mo (n=b),
        p, test, p (variable), test (variable)`` in the paper's row order; ``p``
        is a float (NaN where no test applies); print it with :func:`format_p`.
        ``attrs["n_left_out"]`` counts patients left out for an undefined class.
    """
    frame = cohort
    n_left_out = 0
    if "pfs_short" in frame.columns:
        keep = frame["pfs_short"].notna()
        n_left_out = int((~keep).sum())
        frame = frame[keep]
    frame = frame.assign(
        de_ritis=frame["de_ritis"] if "de_ritis" in frame.columns else frame["ast_u_l"] / frame["alt_u_l"]
    )
    is_short = (frame["pfs_months"].astype(float) <= threshold).to_numpy()
    n_all, n_s = len(frame), int(is_short.sum())
    n_l = n_all - n_s
    c_all, c_s, c_l = (
        f"Total (n={n_all})",
        f"PFS <= {threshold:g} mo (n={n_s})",
        f"PFS > {threshold:g} mo (n={n_l})",
    )
    rows: list[dict[str, Any]] = [
        {
            "variable": "Patients",
            "level": CAT_LEVEL,
            c_all: _pct(n_all, n_all),
            c_s: _pct(n_s, n_all),
            c_l: _pct(n_l, n_all),
            "p": math.nan,
            "test": "",
        }
    ]

    def categorical(variable: str, level: str, has: np.ndarray) -> None:
        a, b = int(has[is_short].sum()), int(has[~is_short].sum())
        p = math.nan
        if n_s and n_l:
            p = float(fisher_exact([[a, n_s - a], [b, n_l - b]], alternative="two-sided").pvalue)
        rows.append(
            {
                "variable": variable,
                "level": level,
                c_all: _pct(a + b, n_all),
                c_s: _pct(a, n_s),
                c_l: _pct(b, n_l),
                "p": p,
                "test": "Fisher exact (level vs rest)",
            }
        )

    def continuous(variable: str, column: str, digits: int | None) -> None:
        values = pd.to_numeric(frame[column], errors="coerce").astype(float)
        x, y = values[is_short].dropna(), values[~is_short].dropna()
        p = float(mannwhitneyu(x, y, alternative="two-sided").pvalue) if len(x) and len(y) else math.nan
        rows.append(
            {
                "variable": variable,
                "level": CONT_LEVEL,
                c_all: _median_range(values, digits),
                c_s: _median_range(x, digits),
                c_l: _median_range(y, digits),
                "p": p,
                "test": "Mann-Whitney U",
            }
        )

    cat_rows = {v: (col, levels) for v, col, levels in _CATEGORICAL_ROWS}
    for variable in TABLE1_VARIABLES[1:]:
        if variable in _CONTINUOUS_ROWS:
            continuous(variable, *_CONTINUOUS_ROWS[variable])
        elif variable == "Metastatic sites":
            for col, level in _METS.items():
                categorical(variable, level, (pd.to_numeric(frame[col]) == 1).fillna(False).to_numpy(bool))
        else:
            col, levels = cat_rows[variable]
            values = frame[col].astype(object)
            first = len(rows)
            codes = [*levels, *sorted(set(values.dropna()) - set(levels))]
            for code in codes:
                categorical(variable, levels.get(code, str(code)), (values == code).to_numpy(bool))
            if values.isna().any():
                categorical(variable, "missing", values.isna().to_numpy(bool))
            counts = [[int((values[is_short] == c).sum()), int((values[~is_short] == c).sum())] for c in codes]
            if n_s and n_l:
                rows[first]["p (variable)"] = fisher_freeman_halton(counts)
                rows[first]["test (variable)"] = f"Fisher-Freeman-Halton exact ({len(codes)} levels x PFS)"
    table = _table1_frame(rows, p_as_text)
    table.attrs["n_left_out"] = n_left_out
    return table


def _table1_frame(rows: list[dict[str, Any]], p_as_text: bool) -> pd.DataFrame:
    """Table 1's rows as a frame, with the one test per variable filled in.

    A continuous variable and a metastatic site (present or not) have one test already: their row's
    ``p`` and ``test`` are also the variable's. Missing ``p (variable)`` is NaN, missing ``test
    (variable)`` empty; with ``p_as_text`` both p columns are printed by :func:`format_p`.
    """
    for row in rows:
        if row["test"] == "Mann-Whitney U":
            row["p (variable)"], row["test (variable)"] = row["p"], row["test"]
        elif row["variable"] == "Metastatic sites":
            row["p (variable)"], row["test (variable)"] = row["p"], "Fisher exact (site present vs absent)"
    table = pd.DataFrame(rows)
    for col, empty in (("p (variable)", math.nan), ("test (variable)", "")):
        table[col] = table[col].fillna(empty) if col in table.columns else empty
    if p_as_text:
        table["p"] = table["p"].map(format_p)
        table["p (variable)"] = table["p (variable)"].map(format_p)
    return table


def table1_side_by_side(ours: pd.DataFrame, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Our Table 1 beside the paper's (real cohort), aligned on ``variable, level``.

    Parameters
    ----------
    ours : DataFrame
        :func:`table1` output.
    paper : DataFrame, optional
        :func:`prrt_utils.data.paper.paper_table1` (the default).

    Returns
    -------
    DataFrame
        ``variable, level``, our two group columns and p (prefixed ``ours:``,
        p printed with :func:`format_p`), then the paper's (prefixed ``paper:``).
        Rows in our order, then any row only the paper has.
    """
    paper = paper_table1() if paper is None else paper
    groups = [c for c in ours.columns if c.startswith("PFS ")]
    left = ours[["variable", "level", *groups]].rename(columns={c: f"ours: {c}" for c in groups})
    left["ours: p"] = ours["p"].map(lambda p: p if isinstance(p, str) else format_p(p))
    if "p (variable)" in ours.columns:
        left["ours: p, one test per variable"] = ours["p (variable)"].map(
            lambda p: p if isinstance(p, str) else format_p(p))
        left["ours: that test"] = ours["test (variable)"]
    n = PAPER_N
    right = paper[["variable", "level", "pfs_short", "pfs_long", "p"]].rename(
        columns={
            "pfs_short": f"paper: PFS <= 1 year (n={n['pfs_short']})",
            "pfs_long": f"paper: PFS > 1 year (n={n['pfs_long']})",
            "p": "paper: p",
        }
    )
    merged = left.merge(right, on=["variable", "level"], how="outer", sort=False, indicator=True)
    order = {(v, lv): i for i, (v, lv) in enumerate(zip(ours["variable"], ours["level"], strict=True))}
    merged["_o"] = [
        order.get((v, lv), len(order) + i)
        for i, (v, lv) in enumerate(zip(merged["variable"], merged["level"], strict=True))
    ]
    merged = merged.sort_values("_o", kind="stable").drop(columns=["_o", "_merge"]).reset_index(drop=True)
    return merged.fillna("")


def cohort_summary(cohort: pd.DataFrame, threshold: float = PFS_THRESHOLD_MONTHS) -> pd.DataFrame:
    """Counts of the cohort beside the paper's (116 patients, 42 short = 36 %).

    Returns
    -------
    DataFrame
        ``quantity, ours (synthetic cohort), paper (real cohort)``.
    """
    classified = cohort[cohort["pfs_short"].notna()] if "pfs_short" in cohort.columns else cohort
    short = int((classified["pfs_months"] <= threshold).sum())
    n_cls = len(classified)
    n = PAPER_N
    rows = [
        ("patients in the cohort table", len(cohort), n["total"]),
        (
            "with imaging",
            int(cohort["has_imaging"].sum()) if "has_imaging" in cohort.columns else len(cohort),
            n["total"],
        ),
        ("progression events", int(cohort["event"].sum()), PAPER_KM["events"]),
        ("with a PFS class (short/long)", n_cls, n["total"]),
        (f"PFS <= {threshold:g} months (short)", short, n["pfs_short"]),
        (f"PFS > {threshold:g} months (long)", n_cls - short, n["pfs_long"]),
        (
            "share short",
            f"{100 * short / n_cls:.1f}%" if n_cls else "–",
            f"{100 * n['pfs_short'] / n['total']:.1f}%",
        ),
    ]
    return pd.DataFrame(
        rows, columns=["quantity", "ours (synthetic cohort)", "paper (real cohort)"], dtype=object
    )


# --------------------------------------------------------------------------- Kaplan-Meier


@dataclasses.dataclass(frozen=True)
class KMResult:
    """Kaplan-Meier estimate of PFS of the whole cohort (paper 3.2, Figure 2).

    Attributes
    ----------
    n, events, censored : int
        Patients, progression events, censored patients.
    median : float
        Median PFS in months by :func:`km_quantile` (R survival's rule: the
        first time the curve is at or below 0.5, or the middle of the flat
        stretch where it equals 0.5 exactly); ``inf`` if it never reaches 0.5.
    median_ci : tuple of float
        95 % confidence interval of the median (lifelines, exponential Greenwood).
    q1, q3 : float
        Months at which the curve reaches 0.75 (a quarter have progressed)
        and 0.25 (three quarters have), by the same rule: the interquartile
        range of PFS. Without censoring they are the sample quartiles of R's
        survival package (at n = 116: the means of the 29th and 30th, and of
        the 87th and 88th, shortest PFS).
    method : str
        How the numbers were computed.
    fitter : lifelines.KaplanMeierFitter
        The fitted estimator (for curves; not compared).
    """

    n: int
    events: int
    censored: int
    median: float
    median_ci: tuple[float, float]
    q1: float
    q3: float
    method: str = (
        "Kaplan-Meier (lifelines.KaplanMeierFitter); median and quartiles by km_quantile "
        "(R survival's quantile.survfit rule, tolerance 1.5e-8)"
    )
    fitter: Any = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def iqr(self) -> tuple[float, float]:
        return (self.q1, self.q3)

    def to_frame(self) -> pd.DataFrame:
        """One row: n, events, censored, median PFS with its 95 % CI and the IQR, in months."""
        return pd.DataFrame(
            [
                {
                    "n": self.n,
                    "events": self.events,
                    "censored": self.censored,
                    "median_pfs_months": self.median,
                    "median_ci_lower": self.median_ci[0],
                    "median_ci_upper": self.median_ci[1],
                    "q1_months": self.q1,
                    "q3_months": self.q3,
                }
            ]
        )

    def curve(self) -> pd.DataFrame:
        """``time_months, survival, ci_lower, ci_upper`` of the step curve (starts at time 0, survival 1)."""
        sf = self.fitter.survival_function_.iloc[:, 0]
        ci = self.fitter.confidence_interval_survival_function_
        return pd.DataFrame(
            {
                "time_months": sf.index.to_numpy(float),
                "survival": sf.to_numpy(),
                "ci_lower": ci.iloc[:, 0].to_numpy(),
                "ci_upper": ci.iloc[:, 1].to_numpy(),
            }
        )

    def at_risk(self, times: Sequence[float]) -> pd.DataFrame:
        """Patients still at risk (no progression, not censored before) at each time: ``time_months, at_risk``."""
        durations = np.asarray(self.fitter.durations, dtype=float)
        return pd.DataFrame(
            {"time_months": list(times), "at_risk": [int((durations >= t).sum()) for t in times]}
        )


KM_TOLERANCE = math.sqrt(np.finfo(float).eps)
"""Survival values within this of a quantile count as equal to it (R survival's ``tolerance``)."""


def km_quantile(fitter: Any, p: float, tol: float = KM_TOLERANCE) -> float:
    """Time at which a Kaplan-Meier curve reaches survival ``p``, by R survival's rule.

    The first time the curve is at or below ``p``; where the curve is flat at
    exactly ``p`` (within ``tol``), the middle of that flat stretch, which ends
    at the next drop or, if there is none, at the last observed time
    (``quantile.survfit`` in R's survival package). Without the tolerance the
    rounding error of a product of fractions moves a quantile one event late:
    lifelines gives S = 0.7500000000000001 after 29 of 116 events, so its
    ``qth_survival_time(0.75)`` is the 30th time, where R reports the mean of
    the 29th and 30th. Without censoring this rule gives the usual sample
    median (the mean of the two middle values for an even n). Written by hand:
    lifelines has no tolerance and no flat-stretch rule.

    Parameters
    ----------
    fitter : lifelines.KaplanMeierFitter
        A fitted estimator.
    p : float
        Survival level in (0, 1): 0.5 for the median, 0.75 for the first quartile.

    Returns
    -------
    float
        Months (the fitter's time unit); ``inf`` if the curve never reaches ``p``.
    """
    sf = fitter.survival_function_
    times = sf.index.to_numpy(dtype=float)
    surv = sf.iloc[:, 0].to_numpy(dtype=float)
    reached = np.flatnonzero(surv <= p + tol)
    if reached.size == 0:
        return math.inf
    first = reached[0]
    if abs(surv[first] - p) > tol:
        return float(times[first])
    below = np.flatnonzero(surv < p - tol)
    end = times[below[0]] if below.size else float(np.max(fitter.durations))
    return float((times[first] + end) / 2.0)


def kaplan_meier(cohort: pd.DataFrame, duration: str = "pfs_months", event: str = "event") -> KMResult:
    """Kaplan-Meier estimate of PFS: median, its CI and the IQR (paper 3.2).

    Parameters
    ----------
    cohort : DataFrame
        One row per patient with ``duration`` (months) and ``event`` (1
        progression, 0 censored). Every row is used (the whole cohort, as in
        Figure 2), whatever its PFS class.

    Returns
    -------
    KMResult
        Median and quartiles by :func:`km_quantile`.
    """
    # lazy: lifelines is slow to import and only this function uses it
    from lifelines import KaplanMeierFitter
    from lifelines.utils import median_survival_times

    frame = cohort[[duration, event]].apply(pd.to_numeric, errors="coerce").dropna()
    if frame.empty:
        raise CohortError("kaplan_meier: no patient with a PFS and an event flag")
    kmf = KaplanMeierFitter(label="PFS").fit(frame[duration].astype(float), frame[event].astype(int))
    ci = median_survival_times(kmf.confidence_interval_).iloc[0]
    events = int(frame[event].sum())
    return KMResult(
        n=len(frame),
        events=events,
        censored=len(frame) - events,
        median=km_quantile(kmf, 0.5),
        median_ci=(float(ci.iloc[0]), float(ci.iloc[1])),
        q1=km_quantile(kmf, 0.75),
        q3=km_quantile(kmf, 0.25),
        fitter=kmf,
    )
