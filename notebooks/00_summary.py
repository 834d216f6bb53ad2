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
# # The answer first
#
# Can the pre-therapeutic PET, CT and four laboratory values tell which patients will progress
# within 12 months of PRRT, and do the images add anything to the laboratory values? This page
# gives this book's answer on the cohort it ran on, computed from the stored cross-validated
# predictions of every model (nothing is trained here). The chapters after it argue each point.
#
# ```{glue:md} answer
# :format: myst
# ```
#
# In the figure, each model's {term}`AUROC` on this cohort (blue: mean ± standard error over the 5
# repeats of 3-fold {term}`cross-validation`; pale band: 95 % interval over patients, from a bootstrap
# of each patient's prediction averaged over the repeats) stands beside the paper's value on its
# real cohort (red diamond). On the synthetic cohort, the green tick is the best AUROC any model
# could reach from the same inputs (a logistic regression on their true values) and the dashed line
# the {term}`Bayes ceiling`: the AUROC of every patient's true risk. 0.5 is chance.

# %% tags=["parameters"]
work_dir = "work"
data_dir = "data/synthetic"
seed = 0

# %%
from prrt_utils.report.notebook import setup_notebook

setup_notebook(data_dir)

# %%
from prrt_utils.report import findings

result = findings.answer(work_dir, data_dir, seed=seed)
result.findings.glue("answer")
result.figure().show()

# %%
result.table()

# %% [markdown]
# ## Where each claim is argued
#
# * The comparisons of the answer, fold by fold, and the pretrained CT branch: {doc}`04_fusion`.
# * The models that see one kind of data, and the two baselines (logistic regressions on the
#   laboratory values and on PET uptake features): {doc}`03_unimodal`.
# * Model families, Mann-Whitney vs the corrected resampled t-test, survival by predicted risk:
#   {doc}`05_statistics`.
# * Where the networks look (saliency on lesions vs normal organs) and which laboratory value
#   matters: {doc}`06_explainability`.
# * Censoring-aware survival models, calibration, decision curves and bootstrap intervals:
#   {doc}`07_survival`.
# * How the synthetic patients are made and what each ceiling means: {doc}`../synthetic_cohort`.
# * Every number here is recomputed on a reader's own cohort by the same code ({doc}`../own_cohort`);
#   a real cohort has no ceilings, so those columns are then absent.
