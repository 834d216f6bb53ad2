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
# # 03 Unimodal models
#
# ## Overview
#
# Three models of the paper each see one kind of data (section 2.5): a Random Forest on the four
# laboratory values (AST, ALT, chromogranin A, gamma-GT), a 3D convolutional network on the PET
# volume alone and one on the CT volume alone. Beside them stand two baselines the paper does not
# have: a logistic regression on the same laboratory values (`lr_labs`) and one on PET burden and
# uptake features (`radiomics_lr`), the standard a nuclear-medicine reader would ask a network to
# beat. This chapter reads their stored cross-validated predictions (it never trains) and shows
#
# * AUROC, AUPRC and accuracy per fold and as mean ± standard error over the 5 repeats;
# * mean ROC and precision-recall curves;
# * the training loss of the two networks;
# * the paper's Table 2 beside our numbers: **the paper's come from its real cohort of 116
#   patients, ours from the cohort this book was run on** (by default the synthetic one), so they
#   are expected to differ;
# * on the synthetic cohort, the ceiling of each model's inputs (a logistic regression on their true
#   values, fitted fold by fold) and the Bayes ceiling: the best AUROC any model could reach.

# %% [markdown]
# ```{glue:md} key_findings
# :format: myst
# ```

# %% tags=["parameters"]
work_dir = "work"
data_dir = "data/synthetic"
models = ["rf_labs", "pet_only", "ct_only", "lr_labs", "radiomics_lr"]

# %%
from prrt_utils.report.notebook import setup_notebook

setup_notebook(data_dir)

# %%
from prrt_utils.analysis import metrics
from prrt_utils.models import stored
from prrt_utils.report import findings, notebook

loaded = notebook.load_results(work_dir, data_dir, models)
names, paper, predictions, results, ceiling = loaded.names, loaded.paper, loaded.predictions, loaded.results, loaded.ceiling

# %% [markdown]
# ## Results
#
# Mean ± standard error: each repeat's value is the mean over its 3 test folds, and the table gives
# the mean and the standard error (sd / √5) over the 5 repeats. AUROC 0.5 is chance. AUPRC (average precision)
# depends on which class counts as positive, so both are given: with short PFS positive its chance
# level is the share of short PFS (about 0.36), with long PFS positive the share of long PFS (about
# 0.64). The paper's AUPRC can only be the second (its PET-only model has AUROC 0.42 but AUPRC 0.58),
# so the comparison with the paper sets it beside our AUPRC with long PFS positive.

# %%
results.table(names=names)

# %%
metrics.metrics_figure(results, ceiling, names=names).show()

# %% [markdown]
# Every fold, for a closer look (the test part of each fold holds about a third of the patients).
# `prob_sd` 0 marks a fold where the model gave every patient the same probability (AUROC exactly 0.5).

# %%
results.fold_metrics

# %% [markdown]
# ## Curves
#
# Mean ROC and precision-recall curves over all folds, with a band of ± 1 standard error over repeats.

# %%
metrics.curves_figure(metrics.roc_curves(predictions), metrics.pr_curves(predictions), names=names).show()

# %% [markdown]
# ## Training of the two networks
#
# Training loss per epoch; thin lines are single folds. A loss that stays at ln 2 means the network
# predicts the same probability for everyone.

# %%
metrics.loss_figure(stored.load_histories(work_dir, [m for m in models if m != "rf_labs"]), names=names).show()

# %% [markdown]
# ## Beside the paper (real cohort) and the Bayes ceiling (this cohort)
#
# Left: the paper's Table 2, measured on its real cohort. Right: ours, measured on the cohort this
# book ran on. The two cohorts are different patients (by default ours are synthetic), so only the
# pattern, not the numbers, can be compared.

# %%
metrics.side_by_side(results, paper, names=names)

# %% [markdown]
# On the synthetic cohort the generator knows every patient's true probability of short PFS. Scored
# on the same folds, it gives the ceiling; "share of achievable" is how far each model gets from
# chance (0) towards it (1).

# %%
notebook.show(loaded.versus_ceiling(missing=f"No ground truth in {data_dir}: a real cohort has no Bayes ceiling."))

# %% [markdown]
# ## Summary
#
# The unimodal models and the two baselines were scored on the same 15 test folds. The tables above
# give their AUROC and AUPRC as mean ± standard error over repeats, beside the paper's real-cohort
# values and, on synthetic data, beside the ceiling of what each model sees. In the synthetic
# cohort the laboratory values and the images each carry a different part of the prognosis (the
# synthetic-cohort page gives the equations); the next chapter fuses them.

# %%
findings.model_findings(results, ceiling, names).glue()
