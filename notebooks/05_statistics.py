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
# # 05 Model comparison and statistics
#
# ## Overview
#
# This chapter sets the models side by side (every model with stored results; by default the paper's
# seven), from their stored cross-validated predictions (nothing is retrained), as in sections 2.6,
# 3.2 and 3.3 of the paper:
#
# * Table 2: AUROC, AUPRC and accuracy as mean ± standard error over the 5 repeats, beside the
#   paper's values for its real cohort, and the bar plot;
# * ROC and precision-recall curves of one representative fold (as the paper's Figure 4) and the
#   mean curves over all folds with a band, each against the curve of random predictions;
# * the comparison of model families (unimodal, one-image fusion, dual fusion): Mann-Whitney U,
#   Bonferroni adjustment and Cliff's delta as in the paper, and beside it the corrected resampled
#   t-test, which allows for the fact that cross-validation folds share training patients;
# * Kaplan-Meier curves of progression-free survival for the patients a model predicts to do well
#   or badly, with the log-rank test (the paper's Figure 5).
#
# The paper's numbers come from its real cohort of 116 patients; ours come from the cohort this book
# ran on (by default a synthetic one). Only the pattern can be compared, not the values.

# %% [markdown]
# ```{glue:md} key_findings
# :format: myst
# ```

# %% tags=["parameters"]
work_dir = "work"
data_dir = "data/synthetic"
models = []
km_model = ""
km_repeat = -1
threshold = 0.5
alpha = 0.05

# %%
from prrt_utils.report.notebook import setup_notebook

setup_notebook(data_dir)

# %%
import pandas as pd
from IPython.display import Markdown, display

from prrt_utils.analysis import families, kaplan_meier, metrics
from prrt_utils.data.cohort import PFS_THRESHOLD_MONTHS
from prrt_utils.data.paper import PAPER_KM
from prrt_utils.io import figures
from prrt_utils.report import findings, notebook

models = list(models) or families.available_models(work_dir)
loaded = notebook.load_results(work_dir, data_dir, models)
names, paper, predictions, results, ceiling = loaded.names, loaded.paper, loaded.predictions, loaded.results, loaded.ceiling
fold_metrics = results.fold_metrics
primary = families.primary_model(models)
display(Markdown(f"Models: {', '.join(names.get(m, m) for m in models)}. The single-model analyses below use "
                 f"**{names.get(primary, primary)}**, named before any result was seen (the paper's best model), "
                 "not the best scorer of these folds, whose numbers would be optimistic (winner's curse)."))

# %% [markdown]
# ## Table 2: all models
#
# Each repeat's value is the mean over its 3 test folds; the table gives the mean and the standard
# error (sd / √5) over the 5 repeats. AUROC 0.5 is chance. AUPRC (average precision) is given with
# short PFS positive (chance: the share of short PFS, about 0.36) and with long PFS positive (chance
# about 0.64; the paper's AUPRC is this one). Accuracy predicts long PFS when P(long) ≥ 0.5, a
# patient at exactly 0.5 included, the rule the Kaplan-Meier split below uses too; the paper reports
# accuracy for two models only.

# %%
families.table2(results, paper, names)

# %%
metrics.metrics_figure(results, ceiling, names=names, metrics=("auroc", "auprc", "auprc_long", "accuracy")).show()

# %%
notebook.show(loaded.versus_ceiling())

# %% [markdown]
# ## ROC and precision-recall curves
#
# **One representative fold.** The paper's Figure 4 shows a single cross-validation fold. We take
# the fold on which the pre-specified model's AUROC is the median of its 15 folds (a typical fold, not
# the best one) and draw every model's curves on that same fold, i.e. on the same test patients.
# The dashed lines are random predictions: the diagonal for ROC, the share of short PFS in the fold
# for precision-recall.

# %%
rep_repeat, rep_fold = families.representative_fold(fold_metrics, primary)
one = predictions[(predictions["repeat"] == rep_repeat) & (predictions["fold"] == rep_fold)]
fig = metrics.curves_figure(metrics.roc_curves(one), metrics.pr_curves(one), names=names, models=models)
fig.update_layout(title={"text": f"Repeat {rep_repeat}, fold {rep_fold} ({len(one) // len(models)} test patients)",
                         "font": {"size": 12}})
fig.show()
fold_metrics[(fold_metrics["repeat"] == rep_repeat) & (fold_metrics["fold"] == rep_fold)]

# %% [markdown]
# **All folds.** The mean curve over repeats (each repeat's curve is the mean of its 3 folds' curves)
# with a band of ± 1 standard error over repeats.

# %%
metrics.curves_figure(metrics.roc_curves(predictions), metrics.pr_curves(predictions), names=names,
                      models=models).show()

# %% [markdown]
# ## Model families
#
# The paper groups the models by the data they see: **unimodal** (Random Forest on labs, PET only,
# CT only), **one-image fusion** (PET + labs, CT + labs) and **dual fusion** (PET + CT + labs, with
# and without a pretrained CT branch), and compares each family with the one below it: two-sided
# Mann-Whitney U test, p-values Bonferroni-adjusted for the two comparisons, and Cliff's delta as the
# effect size (|δ| < 0.147 negligible, < 0.33 small, < 0.474 medium, else large). Positive δ means the
# family with more modalities tends to score higher.
#
# **Which samples.** The paper does not say whether it compared per-fold or per-repeat AUROCs. We
# show both. *Per fold* pools the 15 fold AUROCs of every model of a family (45 for unimodal, 30 for
# each fusion family): this is the most likely reading of the paper and gives the test the most
# values. *Per repeat* first averages the 3 folds of each repeat (15 and 10 values), matching how
# Table 2 summarises. Neither is a set of independent observations: the folds of one repeat partition
# the same patients, every fold's training set overlaps every other's by about half, and all models
# are scored on the same test patients. The Mann-Whitney test assumes independence, so its p-values
# are too small. The **corrected resampled t-test** (Nadeau and Bengio, 2003) pairs the two families
# fold by fold (the difference of the family means on each of the 15 folds) and inflates the variance
# of the mean difference by the test/train size ratio (1/2 for 3-fold cross-validation), which
# accounts for that overlap; it is shown beside the paper's test for the same pairs.

# %%
family_comparison = families.compare_model_families(fold_metrics, models)
comparisons = family_comparison.comparisons
print("Families:", family_comparison.members(names))
notebook.show(family_comparison.table())

# %% [markdown]
# Where the two tests disagree at the 5 % level (Bonferroni-adjusted p-values of both):

# %%
notebook.show(*family_comparison.disagreements(alpha))

# %% [markdown]
# ## Kaplan-Meier by predicted probability
#
# The paper's Figure 5 splits the patients of one cross-validation by the predicted probability of
# *long* PFS: ≥ 0.5 ("predicted long PFS", high response) and < 0.5 ("predicted short PFS"), and
# compares the two groups' PFS with the log-rank test. Our models store the probability of short
# PFS, so "predicted long" means P(short) ≤ 1 − threshold; a patient exactly at the threshold is
# predicted long, here, in the accuracy of Table 2 and in the hazard ratio alike (one rule,
# `prrt_utils.models.stored.predicted_long`). Within one repeat every patient is in
# exactly one test fold, so each appears once, scored by a model that never saw them. The model is
# a parameter (`km_model`); by default the pre-specified model named above. The repeat shown is the one whose mean
# AUROC is the median of the 5 (`km_repeat = -1`); the table below it gives every repeat, so that a
# single lucky split cannot pass for the rule.

# %%
km_name = km_model or primary
km_rep = km_repeat if km_repeat >= 0 else families.representative_repeat(fold_metrics, km_name)
survival = families.read_survival(work_dir)
km = kaplan_meier.km_by_prediction(families.survival_frame(predictions, survival, km_name, km_rep), threshold,
                                   prob_is="short")
print(km.rule)
notebook.show(families.km_note(km))
figures.km_figure(km.labelled_curves(), threshold=PFS_THRESHOLD_MONTHS,
                  title=f"{names.get(km_name, km_name)}, repeat {km_rep}: {km.logrank_text()}").show()
km.to_frame()

# %% [markdown]
# The log-rank test says whether the two groups differ; a Cox proportional-hazards model says by how
# much: the hazard ratio of progression of the predicted-short group against the predicted-long group,
# with its 95 % confidence interval (lifelines; NaN when a group is empty).

# %%
kaplan_meier.cox_hr_by_group(families.survival_frame(predictions, survival, km_name, km_rep), threshold,
                             prob_is="short").to_frame()

# %%
families.km_over_repeats(predictions, survival, km_name, threshold)

# %% [markdown]
# The paper's values for its real cohort (PET fusion, one cross-validation):

# %%
pd.DataFrame([dict(PAPER_KM["by_prediction"])])

# %% [markdown]
# ## Summary
#
# Table 2 and the bar plot give every model's AUROC, AUPRC and accuracy on this cohort as mean ±
# standard error over 5 repeats, next to the paper's real-cohort values and, on synthetic data, the
# best AUROC any model could reach. The curves show one typical fold and the average over all folds,
# always against random predictions. The family comparison reproduces the paper's test (Mann-Whitney
# U, Bonferroni, Cliff's delta) and sets the corrected resampled t-test beside it; because fold
# scores of repeated cross-validation are not independent, the corrected test is the one to trust
# where the two disagree, and the disagreements are listed above. The Kaplan-Meier curves show
# whether the chosen model's predicted groups differ in progression-free survival, for one typical
# repeat and, in the table, for every repeat.

# %%
fams = findings.family_findings(comparisons["fold"]) if comparisons else findings.KeyFindings(())
fams.plus(findings.km_finding(km, km_name, names)).glue()
