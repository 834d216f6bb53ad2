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
# # 04 Fusion models
#
# ## Overview
#
# Four models combine images with laboratory values (paper section 2.5): PET + labs, CT + labs,
# PET + CT + labs, and PET + CT + labs whose CT branch starts from a pretrained network. Each image
# branch becomes an embedding, the four standardised laboratory values are appended, and a 3-layer
# MLP, beside a direct linear path for the laboratory values, gives the probability of short PFS.
# The network starts as the logistic regression of the labs fitted on the training part, so what
# it learns beyond that is what the images add. This chapter reads their stored cross-validated
# predictions (it never trains) and shows
#
# * AUROC, AUPRC and accuracy per fold and as mean ± standard error over the 5 repeats;
# * mean ROC and precision-recall curves, beside the laboratory-only Random Forest;
# * the training loss;
# * whether the "pretrained" model's CT branch was actually pretrained in this run;
# * the paper's Table 2 (real cohort) beside our numbers (this cohort), and the Bayes ceiling.

# %% [markdown]
# ```{glue:md} key_findings
# :format: myst
# ```

# %% tags=["parameters"]
work_dir = "work"
data_dir = "data/synthetic"
models = ["pet_fusion", "ct_fusion", "petct_fusion", "petct_fusion_pretrained"]
baseline = "rf_labs"

# %%
from prrt_utils.report.notebook import setup_notebook

setup_notebook(data_dir)

# %%
import pandas as pd
from IPython.display import Markdown, display

from prrt_utils.analysis import metrics
from prrt_utils.models import stored
from prrt_utils.models.networks import get_spec
from prrt_utils.report import findings, notebook

loaded = notebook.load_results(work_dir, data_dir, [baseline, *models])
names, paper, with_baseline, ceiling = loaded.names, loaded.paper, loaded.results, loaded.ceiling
results = loaded.subset(models)

# %% [markdown]
# ## Was the CT branch pretrained?
#
# The paper initialises the CT branch of its best model with a pretrained MONAI CT network. Here the
# seventh model's CT encoder starts from the checkpoint of the CT pretraining page (anatomy
# segmentation, no outcome used) unless the run was told otherwise (`ct_init` in
# `models/petct_fusion_pretrained.yaml` or the book's `ct_init` parameter). The statement below comes
# from the model's declaration and from what every fold recorded when it was trained, including how
# many of the CT encoder's tensors were loaded from the checkpoint.

# %%
print("Declared in models/petct_fusion_pretrained.yaml:", get_spec("petct_fusion_pretrained").ct_init_note)
recorded = stored.fold_table(work_dir, ["petct_fusion_pretrained"])
pretrained_here = not recorded["ct_init_note"].str.contains("NOT pretrained").any()
print("What this run's folds recorded (this is what happened):", *recorded["ct_init_note"].unique())
print("CT-encoder tensors loaded per fold:", *(recorded["ct_tensors_loaded"].unique() if pretrained_here else ["none"]))

# %% [markdown]
# ## Results
#
# Mean ± standard error: each repeat's value is the mean over its 3 test folds; the table gives the
# mean and the standard error (sd / √5) over the 5 repeats. AUROC 0.5 is chance. AUPRC (average precision)
# depends on which class counts as positive, so both are given: with short PFS positive its chance
# level is the share of short PFS (about 0.36), with long PFS positive the share of long PFS (about
# 0.64). The paper's AUPRC can only be the second (its PET-only model has AUROC 0.42 but AUPRC 0.58),
# so the comparison with the paper sets it beside our AUPRC with long PFS positive.

# %%
results.table(names=names)

# %% [markdown]
# Did fusion help on this cohort? Each fusion model is compared with the laboratory-only Random Forest
# on the same 15 test folds, fold by fold, with the **corrected resampled t-test** (Nadeau and Bengio
# 2003): a plain comparison of the two means with their standard errors would ignore that both models
# were scored on the same patients and that the training parts of repeated cross-validation overlap.
# The sentence is about the model named before any result was seen, the paper's best (PET/CT fusion
# with a pretrained CT branch); the other rows are secondary, their p-values not adjusted for the
# four comparisons. On the paper's real cohort that model reached 0.72 ± 0.01 against the forest's
# 0.59 ± 0.02.

# %%
from prrt_utils.analysis import families, stats

primary = families.primary_model(models)
vs_baseline = stats.paired_table(with_baseline.fold_metrics, models, baseline)
row = vs_baseline.set_index("model").loc[primary]
display(Markdown(
    f"On this cohort the pre-specified fusion model, **{names.get(primary, primary)}** (AUROC "
    f"{with_baseline.get(primary).format()}), is **{row['verdict']}** against the laboratory-only "
    f"{names.get(baseline, baseline)} (AUROC {with_baseline.get(baseline).format()}): mean paired difference "
    f"{row['mean auroc difference']:+.3f}, higher on {row['folds higher']} test folds (corrected resampled t-test)."
    + ("" if ceiling is None else f" The Bayes ceiling on the same folds is {ceiling.get('bayes_ceiling').mean:.2f}.")
))
vs_baseline.assign(model=vs_baseline["model"].map(lambda m: names.get(m, m)),
                   reference=vs_baseline["reference"].map(lambda m: names.get(m, m))).round(3)

# %%
metrics.metrics_figure(with_baseline, ceiling, names=names).show()

# %% [markdown]
# ## How much can this cohort show?
#
# A comparison that is not significant says little unless a real difference could have been
# detected. On synthetic data the truth answers that: the first table compares, on this cohort's own
# folds, the logistic regression on the true values of labs and image together with the one on each
# family alone (what a perfect fusion model would gain over a perfect unimodal one). The second
# repeats this on 20 cohorts of the same size drawn from the same generator (tables only, no
# images): the share with p < 0.05 is an upper bound on how often a fusion model could be declared
# better at this size, since no model beats the ceiling of what it sees. A real cohort has no truth,
# so the section is then empty.

# %%
if ceiling is None:
    print(f"No ground truth in {data_dir}: the power of the comparison cannot be computed on a real cohort.")
else:
    display(pd.concat([stats.paired_table(ceiling.fold_metrics, [metrics.CEILING_MODELS["labs+image"]], reference)
                       for reference in (metrics.CEILING_MODELS["labs"], metrics.CEILING_MODELS["image"])], ignore_index=True))
    display(metrics.comparison_power(metrics.read_synth_config(data_dir)).table())

# %% [markdown]
# ## Pretrained against from scratch, on the same splits
#
# PET CT fusion and its pretrained twin differ only in where the CT branch starts; both were trained
# and tested on the same 15 folds. The test pairs them fold by fold: a positive difference means the
# pretrained start scored higher on that test fold. The paper found the pretrained model best
# (0.72 ± 0.01 against 0.68 ± 0.01 for PET CT fusion from scratch).

# %%
paired = stats.paired_table(results.fold_metrics, ["petct_fusion_pretrained"], "petct_fusion")
test = stats.paired_model_test(results.fold_metrics, "petct_fusion_pretrained", "petct_fusion")
display(Markdown(
    f"Pretrained minus from scratch, AUROC: **{test.mean_difference:+.3f}** (mean of {test.n} paired folds); the "
    f"pretrained start scored higher on {paired['folds higher'].iloc[0]} test folds; "
    f"corrected resampled t-test t = {test.t_statistic:.2f}, p = {test.p_value:.2g}. "
    + (f"On this cohort the pretrained CT branch is **{stats.verdict(test)}**." if pretrained_here else
       "**In this run both CT branches started from scratch** (no pretraining, see above): the difference is "
       "only that of another random initialisation.")))
paired.assign(model=paired["model"].map(lambda m: names.get(m, m)),
              reference=paired["reference"].map(lambda m: names.get(m, m))).round(3)

# %% [markdown]
# Every fold; `prob_sd` 0 marks a fold where the model gave every patient the same probability
# (AUROC exactly 0.5).

# %%
results.fold_metrics

# %% [markdown]
# ## Curves
#
# Mean ROC and precision-recall curves with a band of ± 1 standard error over repeats, the
# laboratory-only Random Forest included for reference (as in the paper's Figure 4).

# %%
both = loaded.predictions
metrics.curves_figure(metrics.roc_curves(both), metrics.pr_curves(both), names=names,
                      models=[baseline, *models]).show()

# %% [markdown]
# ## Training
#
# Training loss per epoch; thin lines are single folds. A loss that stays at ln 2 means the network
# predicts the same probability for everyone.

# %%
metrics.loss_figure(stored.load_histories(work_dir, models), names=names).show()

# %% [markdown]
# ## Beside the paper (real cohort) and the Bayes ceiling (this cohort)
#
# Left: the paper's Table 2, measured on its real cohort. Right: ours, measured on the cohort this
# book ran on. The cohorts are different patients (by default ours are synthetic), so only the
# pattern, not the numbers, can be compared.

# %%
display(metrics.side_by_side(with_baseline, paper, names=names))

# %%
if ceiling is None:
    print(f"No ground truth in {data_dir}: a real cohort has no Bayes ceiling.")
else:
    display(metrics.versus_ceiling(with_baseline, ceiling))
    display(Markdown("The ceilings, each a logistic regression on the true values of an input family fitted on "
                     "the training part of every fold (labs; image truth: log tumour volume, log receptor ratio, "
                     "hepatic fraction; both), and the true probability (Bayes):"))
    display(ceiling.table())

# %% [markdown]
# ## Summary
#
# The four fusion models were scored on the same 15 test folds as the unimodal ones. The tables
# give their AUROC and AUPRC as mean ± standard error over repeats, next to the laboratory-only
# Random Forest, the paper's real-cohort values and, on synthetic data, the best achievable AUROC.
# Where the "pretrained" model's CT branch started, and what pretraining changed against the same
# network from scratch on the same folds, are stated above. Chapter 05 tests whether the model
# families differ.

# %%
findings.model_findings(with_baseline, ceiling, names, comparisons=[(primary, baseline)]).glue()
