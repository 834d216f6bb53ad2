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
# # The positive control: does the pipeline learn what is there?
#
# ## Overview
#
# Every model page after this one reads AUROCs of networks trained on a cohort where the images
# carry only part of the prognosis. A low AUROC there could mean that the images say little, or
# that the pipeline cannot learn from images at all. This page tells the two apart before any model
# is read. It comes first in the Models part for that reason: if the pipeline fails its positive
# control, no result after it means anything.
#
# The **positive control** is a second synthetic cohort written by the same generator
# (`prrt synth --scenario positive-control`, in `data/synthetic-positive-control/`), with the same
# number of patients and the same seed as the book's cohort, in which progression within 12 months
# is decided by one quantity that the PET shows plainly: the tumour burden. Its Bayes ceiling (the
# AUROC of each patient's true probability) is close to 1. It passes through every real stage:
# DICOM export, cohort table, preprocessing, and the book's cross-validation (5 repeats of 3 folds).
#
# On it, with the training recipe of this book:
#
# 1. the **PET-only CNN** must reach a mean cross-validated AUROC of at least 0.80, every repeat at
#    least 0.75, and a training loss below 0.5 (it fits what it sees);
# 2. the **same network on shuffled labels** (the outcome permuted, and trained inside the same
#    folds) must score at chance, 0.50 ± 0.07: a pipeline that scored well here would be learning
#    from a leak, not from the images. Each repeat has its own permutation, fixed by the book's seed
#    and the repeat: the AUROC of a single permutation varies by chance about as much as the
#    tolerance (on the full-size control, one permutation gave the PET-only CNN 0.41, and the two
#    logistic regressions over six permutations ranged 0.39 to 0.62 on the same folds; this design
#    was changed to one permutation per repeat after that first run, and the page shows what it
#    gives now). The labels are permuted within each test fold, so that every fold keeps the
#    numbers of short and long PFS of the true run in its training and test parts;
# 3. two cheap references show what the inputs allow: a logistic regression on hand-made PET burden
#    features (`radiomics_lr`) and one on the four laboratory values (`lr_labs`).
#
# Each AUROC stands beside the ceiling of the inputs it sees (a logistic regression on their true
# values, fitted fold by fold) and the Bayes ceiling. The verdict at the end is computed from the
# stored numbers against these thresholds.

# %% tags=["parameters"]
work_dir = "work"
data_dir = "data/synthetic"
positive_control_data_dir = "data/synthetic-positive-control"  # empty: the control was not run
profile = "default"

# %%
from prrt_utils.report.notebook import setup_notebook

setup_notebook(data_dir)

# %%
from prrt_utils.analysis import metrics
from prrt_utils.report import positive_control
from prrt_utils.report.notebook import show

page = positive_control.positive_control_page(positive_control_data_dir, work_dir, profile, metrics.paper_reference()[0])
show(page.intro())

# %% [markdown]
# ## Verdict
#
# The thresholds, checked against the stored results. The thresholds are stated for the
# book's full size (116 patients, 5 × 3 cross-validation, the recipe's own number of epochs); a
# smaller run (such as the test suite's) is shown but not judged.

# %%
show(*page.verdict())

# %% [markdown]
# ## AUROC per repeat
#
# Each repeat's value is the mean AUROC over its 3 test folds; the last column is the mean and the
# standard error over the repeats. 0.5 is chance.

# %%
show(*page.per_repeat())

# %% [markdown]
# ## Against the ceilings
#
# "Ceiling of what it sees" is a logistic regression on the true values of the model's inputs (for
# the PET models: log tumour volume, lesion-to-liver ratio and hepatic fraction from the
# generator's ground truth; for the labs: the four recorded values), fitted on each fold's training
# part and scored on its test part. The Bayes ceiling scores each patient's true probability. The
# shuffled run has no ceiling: nothing links its labels to any input, so its ceiling is chance.

# %%
show(*page.ceilings())

# %%
show(page.metrics_figure())

# %% [markdown]
# ## Training loss
#
# Binary cross-entropy per epoch on the training part of each fold (thin lines), the mean over folds
# (bold), and on the validation split carved out of the training part (dotted), which chooses the
# epoch whose weights are kept. On the true labels the training loss must fall well below the grey
# line (ln 2, a constant prediction of 0.5); on shuffled labels a network can still memorise its
# training part, but its validation loss does not fall, and the epoch kept stays early.

# %%
show(*page.losses())

# %% [markdown]
# ## Shuffled labels
#
# The PET-only CNN trained and tested on the same folds and the same volumes, with the outcome
# permuted (one permutation per repeat). Its AUROC per fold: values spread around 0.5 by chance
# alone (about 39 test patients per fold), and their mean must stay within 0.50 ± 0.07. A mean above
# that band would point to a leak; below it is the known negative bias of cross-validation on
# labels unrelated to the inputs, together with the chance variation of the permutations.

# %%
show(*page.shuffled())

# %% [markdown]
# ## Summary
#
# The verdict above is computed from the stored predictions of the positive-control cohort; its
# files are in `work/positive-control/` (the shuffled run in `work/positive-control/shuffled/r<repeat>/`). A
# second `make book` reuses them without retraining.
