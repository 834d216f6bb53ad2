# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 Cohort
#
# ## Overview
#
# Who are the patients, and how long did their disease stay under control after the first PRRT
# cycle? This chapter answers that before any model is trained (paper sections 2.1, 2.4, 3.1 and
# 3.2):
#
# 1. **Checking the data.** The clinical table (one row per patient) is read and checked cell by
#    cell against the folder of imaging studies. A patient with an unreadable or implausible value,
#    a missing laboratory value, a duplicated study id, or without images is not dropped silently:
#    the list at the end of this chapter names each one and the reason.
# 2. **The outcome.** Progression-free survival (PFS) counts the months from the first PRRT cycle
#    to documented progression or death. Like the paper, we split the patients at one year:
#    **short PFS** means progression within 12 months (12.0 months included), **long PFS** later.
#    Patients without a documented progression (censored) cannot be placed in either group with
#    certainty and are not classified, as in the paper.
# 3. **Table 1.** The patients' characteristics in the two groups, with the same tests as the
#    paper: Fisher's exact test for counts, the Mann-Whitney (Wilcoxon rank-sum) test for
#    measurements, and beside it the paper's own Table 1.
# 4. **The survival curve.** The Kaplan-Meier estimate of PFS for the whole cohort, with its
#    median and interquartile range.
#
# The cohort shown here is the **synthetic digital-twin cohort** unless `data_dir` points to a real
# export. The paper's numbers always describe the real Charité cohort of 116 patients; the two
# agree in their general shape by construction, not in every detail.

# %% [markdown]
# ```{glue:md} key_findings
# :format: myst
# ```

# %% tags=["parameters"]
data_dir = "data/synthetic"
work_dir = "work"
pfs_threshold_months = 12.0
on_error = "skip"

# %%
from prrt_utils.report.notebook import setup_notebook

setup_notebook(data_dir)

# %%
from IPython.display import Markdown, display

from prrt_utils.data import cohort, cohort_stats, paper
from prrt_utils.data.cohort import CohortConfig, build_cohort
from prrt_utils.io import figures
from prrt_utils.report import findings

cfg = CohortConfig(pfs_threshold_months=float(pfs_threshold_months), on_error=on_error)
thr = cfg.pfs_threshold_months

# %% [markdown]
# ## Building the cohort table
#
# The result is stored in `work/cohort/` (the cohort table, the exclusion list and the settings).
# Running the chapter again on unchanged data reuses it.

# %%
table = build_cohort(cfg, data_dir, work_dir)
cohort_stats.cohort_summary(table, thr)

# %%
classified = table[table["pfs_short"].notna()]
n_short = int(classified["pfs_short"].sum())
display(Markdown(
    f"Of **{len(classified)}** classified patients, **{n_short}** "
    f"({100 * n_short / max(len(classified), 1):.0f} %) progressed within {thr:g} months; in the paper "
    f"{paper.PAPER_N['pfs_short']} of {paper.PAPER_N['total']} "
    f"({100 * paper.PAPER_N['pfs_short'] / paper.PAPER_N['total']:.0f} %) did."
))

# %% [markdown]
# ## Table 1: patient characteristics by PFS group
#
# Counts are given with the percentage of their column; measurements as median (smallest –
# largest value). Each count row has its own Fisher test of "patients with this value vs all
# others" between the two groups, which is how the paper's p-values were obtained (we recomputed
# every one of them from its counts). A reviewer asks one question per variable instead ("does the
# primary site differ between the groups at all?"), so `p (variable)` adds that test on each
# variable's first row: the exact Fisher-Freeman-Halton test of all its levels for a categorical
# variable, the same Mann-Whitney U for a measurement. A p-value says how surprising a difference
# this large would be if the groups did not differ at all; with some 30 rows, a few values below
# 0.05 are expected by chance alone.

# %%
ours = cohort_stats.table1(classified, threshold=thr, p_as_text=True)
ours

# %% [markdown]
# **PRRT cycles are shown for description only and are never given to a model.** Treatment is
# stopped once the disease progresses, so patients with short PFS received fewer cycles almost by
# definition: the number of cycles is a consequence of the outcome, not a predictor known before
# therapy. For the same reason nothing measured after the start of PRRT enters a model; the models
# see only the four baseline laboratory values (AST, ALT, CgA, γ-GT) and the baseline PET/CT.

# %% [markdown]
# ## Our Table 1 beside the paper's
#
# The paper's columns describe the **real** cohort (116 patients, 42 with short PFS); ours
# describe the cohort loaded above. Rows are matched by variable and value.

# %%
cohort_stats.table1_side_by_side(ours)

# %% [markdown]
# The paper's text and tables disagree in a few places; where they do, the table's value is shown
# above:

# %%
display(Markdown("\n".join(f"* {d}" for d in paper.PAPER_DISCREPANCIES)))

# %% [markdown]
# ## Progression-free survival of the whole cohort
#
# The Kaplan-Meier curve gives, at each month, the share of patients still free of progression,
# with its 95 % confidence band. The dashed grey line marks the 12-month split; the numbers under
# the plot are the patients still at risk. The median and quartiles follow R's survival package:
# the first time the curve is at or below 0.5 (0.75, 0.25), or the middle of the stretch where it
# is flat at exactly that level, so that without censoring they are the usual sample median and
# quartiles (at 116 patients the median is the mean of the 58th and 59th shortest PFS). Circles mark our median and quartiles, grey crosses the
# paper's (real cohort).

# %%
km = cohort_stats.kaplan_meier(table)
ref_median, (ref_q1, ref_q3) = paper.PAPER_KM["median_pfs_months"], paper.PAPER_KM["iqr_months"]
figures.km_figure(
    km.curve().assign(group=f"ours (n={km.n})"), threshold=thr, title="Progression-free survival (Kaplan-Meier)",
    quartiles={f"ours: median {km.median:.1f} (IQR {km.q1:.1f}–{km.q3:.1f})": (km.q1, km.median, km.q3),
               f"paper (real cohort): median {ref_median:g} (IQR {ref_q1:g}–{ref_q3:g})": (ref_q1, ref_median, ref_q3)},
    at_risk=km.at_risk(range(0, int(km.curve()["time_months"].max()) + 1, 6)),
).show()

# %%
ref = paper.PAPER_KM
display(Markdown(
    f"Median PFS **{km.median:.1f} months** (95 % CI {km.median_ci[0]:.1f}–{km.median_ci[1]:.1f}; "
    f"IQR {km.q1:.1f}–{km.q3:.1f}) in {km.n} patients with {km.events} progression events. "
    f"The paper reports {ref['median_pfs_months']:g} months (IQR {ref['iqr_months'][0]:g}–"
    f"{ref['iqr_months'][1]:g}) for the real cohort, where every patient progressed."
))
km.to_frame().round(2)

# %% [markdown]
# ## Excluded patients
#
# Every patient who will not reach the models, with the reason: problems in the clinical table,
# missing images, image folders without a clinical row, and patients whose PFS group is undefined.
# Patients without images or without a PFS group still appear in the counts above but not in any
# model. With `on_error = "stop"` the chapter stops at the first problem instead.

# %%
exclusions = cohort.read_exclusions(work_dir)
exclusions if len(exclusions) else Markdown("No patient was excluded at this stage.")

# %% [markdown]
# ## Summary
#
# * The clinical table and the imaging folders were checked against each other; the cohort table
#   in `work/cohort/cohort.csv` adds the De Ritis ratio (AST/ALT), the PFS group and whether images
#   exist, and every exclusion is listed with its reason.
# * Table 1 follows the paper's layout and tests and sits beside the paper's own numbers, which
#   describe the real cohort, not this one.
# * The Kaplan-Meier curve gives the median PFS and its interquartile range beside the paper's
#   15.7 months (9.1–26.7).
# * The PFS group defined here (`pfs_short`) is the target of every model in the following
#   chapters; PRRT cycles and the outcome itself are never model inputs.

# %%
findings.cohort_findings(table, km, thr, len(exclusions)).glue()
