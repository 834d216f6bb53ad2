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
# # 06 Explainability
#
# ## Overview
#
# What do the models look at? Following section 3.4 of the paper, this chapter explains the stored
# models (nothing is retrained):
#
# * **UMAP** of the embeddings each image and fusion model learned, coloured by outcome (Figure 6);
# * **permutation importance** of each laboratory value for the Random Forest and every fusion model:
#   how much the AUROC drops on held-out patients when that value is shuffled among them; AST and
#   ALT, two correlated liver enzymes, also together (Figure 7); and the **gradient** of the output
#   with respect to the laboratory inputs of the fusion layer, as the paper describes;
# * **saliency maps**: the gradient of the prediction with respect to every PET voxel, over the PET in
#   three planes, for PET only and PET fusion (Figure 9);
# * the **distribution of gradient magnitudes** of PET only vs PET fusion over all test patients of
#   one repeat, with six distances and how to read them (Figure 8);
# * on the synthetic cohort, where the true lesion and organ outlines are known, **how much of the
#   saliency falls on lesions** and how much on organs with physiological uptake (kidneys, spleen,
#   bladder), a check the paper could only make by eye.
#
# Expensive results are cached in `WORK/explain/`, keyed by the stored models, so a rebuild is fast.

# %% [markdown]
# ```{glue:md} key_findings
# :format: myst
# ```

# %% tags=["parameters"]
work_dir = "work"
data_dir = "data/synthetic"
cache_dir = ""
models = []
compare = ["pet_only", "pet_fusion"]
repeat = 0
umap_repeat = 0
umap_fold = 0
seed = 0
n_permutations = 10
saliency_patients = []
interactive = False

# %%
from prrt_utils.report.notebook import setup_notebook

setup_notebook(data_dir)

# %%
from pathlib import Path

import pandas as pd
from IPython.display import display

from prrt_utils.analysis import explain, explain_figures, families
from prrt_utils.report import chapters, notebook

models = list(models) or families.available_models(work_dir)
loaded = notebook.load_results(work_dir, data_dir, models, ceilings=False)
names, predictions = loaded.names, loaded.predictions
config = explain.ExplainConfig(repeat=repeat, umap_repeat=umap_repeat, umap_fold=umap_fold, seed=seed,
                               n_permutations=n_permutations)
ex = explain.Explainer(work_dir, data_dir, config, cache_dir=cache_dir or None)
fusion = families.fusion_models(models)
pet_models = families.image_models(models, "pet")
compare = [m for m in compare if m in pet_models]
has_truth = (Path(data_dir) / "ground_truth" / "labels").is_dir()
print("Models:", ", ".join(names.get(m, m) for m in models), "| PET models compared:",
      ", ".join(names.get(m, m) for m in compare) or "none")

# %% [markdown]
# ## Embeddings (UMAP)
#
# Each network turns a patient into a vector, the input of its final layers: image features, and
# for fusion models the four standardised laboratory values appended. UMAP (fixed seed) draws these
# vectors in two dimensions so that patients close in the model's feature space lie close on the
# page. We project the patients of **one fold** (repeat `umap_repeat`, fold `umap_fold`): its
# training patients (dots) and its test patients (crosses) all pass through the same network. The
# three test sets of a repeat would come from three different networks, whose features do not share
# axes, so they cannot be drawn on one map. Red is short PFS (≤ 12 months), blue long PFS. The
# silhouette in each title measures class separation in the full embedding (−1 to 1; 0 = none):
# distances on a UMAP are not to be read literally. As in the paper's Figure 6, the panel of PET CT
# fusion (pretrained CT) shows the features of the model whose CT branch started from the
# anatomy-pretrained encoder (see the CT pretraining page), beside the same network from scratch.

# %%
umap_frame = ex.umap(families.image_models(models))
explain_figures.umap_figure(umap_frame, names).show()

# %% [markdown]
# ## Laboratory values: permutation importance
#
# On every one of the 15 test folds, the values of one laboratory test are shuffled among the test
# patients (`n_permutations` times) while everything else about each patient stays in place, and the
# drop in AUROC is recorded: 0 means the model does not use the value; a negative drop means
# shuffling happened to help (noise). For the fusion models the patient's image features are held
# fixed, so this measures the laboratory value given the image. The permutations are scikit-learn's
# (`permutation_importance` with `scoring="roc_auc"`; our loop replays exactly the same shuffles so
# that AST and ALT can share one and all shuffles of a feature go through the model at once). Bars:
# mean over the 15 folds; error bars: standard error over folds. For fusion models the "image
# embedding" bar shuffles all image features together: how much the model relies on the image.

# %%
importance = ex.permutation_importance([m for m in models if m == "rf_labs" or m in fusion])
summary = explain.importance_summary(importance)
explain_figures.importance_figure(summary, names).show()
summary

# %% [markdown]
# **AST and ALT together.** The two enzymes are correlated, so when one is shuffled the other can
# stand in for it, and each single drop understates what the pair carries. Shuffling both with the
# same permutation removes them together; a group drop larger than the sum of the single drops is
# the sign of that substitution.

# %%
display(explain.group_vs_singles(summary))
cohort = pd.read_csv(Path(work_dir) / "cohort" / "cohort.csv")
print("Spearman correlation of AST and ALT in this cohort:",
      round(cohort["ast_u_l"].corr(cohort["alt_u_l"], method="spearman"), 2))

# %% [markdown]
# **Gradients in the fusion layer.** The paper measures the influence of each laboratory value by
# the gradient of the output with respect to it at the fusion layer. For every held-out patient we
# take the derivative of the logit of short PFS with respect to each standardised (log) laboratory
# value, the image features fixed (captum `Saliency`). Mean absolute value: how strongly the model
# reacts; mean signed value: in which direction (positive = a higher value pushes towards short PFS).

# %%
notebook.show(explain_figures.lab_gradient_table(ex, fusion))

# %% [markdown]
# ## PET saliency maps
#
# The saliency of a voxel is the gradient of the model's output with respect to that voxel of the PET
# (as the network sees it: log-SUV, standardised), computed with captum for each patient by the model
# of the fold in which the patient was a test patient. Magnitudes are divided by the patient's
# largest, so 1 is the most influential voxel; values below 0.3 are not drawn (as in the paper's
# Figure 9). Without chosen patients (`saliency_patients`), two typical test patients are shown: the
# patient with short PFS and the one with long PFS whose predicted probability by PET fusion is the
# median of their group. Slices pass through the voxel of highest saliency; on the synthetic cohort
# the true lesions are outlined in cyan. Planes: axial seen from the feet (patient's right on the
# left), coronal seen from the front, sagittal with anterior on the left; 10 mm voxels.
#
# Below each static figure, the same patient's PET can be scrolled through slice by slice in the
# page itself (no kernel needed): the slider moves through the slices, the buttons switch between
# axial, coronal and sagittal, and the menu lays the saliency of one model, or none, over the PET
# (shown as a nuclear-medicine reader would: SUVbw 0-10, dark = high uptake).

# %%
patients = (list(saliency_patients) or ex.pick_patients(predictions, compare[-1])) if compare else []
panels, checks = explain_figures.saliency_panels(ex, predictions, compare, patients, repeat, names, with_lesions=has_truth)
notebook.show(*checks, *panels)

# %% [markdown]
# In a live notebook (`interactive = True`) an ipywidgets viewer also moves the three planes of the
# static figure at once; the book has the viewers above.

# %%
notebook.show(panels[0].live_viewer() if interactive and panels else None)

# %% [markdown]
# ## Distribution of gradient magnitudes
#
# The paper compares the normalised gradient magnitudes of PET only and PET fusion over all test
# sets of one cross-validation (Figure 8). Here: every voxel of every test patient of repeat
# `repeat` (each patient once, by the model that held them out), each patient's magnitudes divided
# by their maximum. The histogram uses all voxels; the six distances use a seeded random subsample
# of one million voxels per model. With this many voxels, and voxels of one patient far from
# independent, the Kolmogorov-Smirnov p-value is tiny for any visible difference and says little;
# the distances themselves are the result. The paper's values (real cohort) are given beside ours.
# The paper's Jensen-Shannon value, 0.418, is a **distance** (scipy's `jensenshannon`, the square
# root of the divergence): read as a divergence it would exceed what its own Bhattacharyya distance
# of 0.207 allows (the divergence in bits is at most (1 − e^−0.207) / ln 2 ≈ 0.27). So it stands
# beside our distance; our divergence is given too, labelled.

# %%
notebook.show(*explain_figures.gradient_comparison(ex, compare, names))

# %% [markdown]
# ## Where the saliency falls (synthetic cohort)
#
# The synthetic cohort comes with the true label map of every patient on the original PET grid. It
# is resampled onto each patient's model grid with the geometry the preprocessing stored (the box's
# affine in `WORK/preprocessed/<patient>.npz`) by fractional occupancy, and each 10 mm voxel is given
# the region that fills most of it. The check above compares the preprocessed PET with the true SUV
# resampled the same way (r close to 1 means the outlines land where the PET is). For every PET
# model, each test patient's absolute saliency is scaled to sum 1 (every patient weighs the same) and
# pooled over the test patients of repeat `repeat`. `mass_fraction` is the share of saliency in the
# region; `enrichment` divides it by the region's share of the volume (> 1: the model looks there
# more than the region's size alone would explain).

# %%
saliency = chapters.saliency_mass_section(ex, pet_models, has_truth, data_dir)
notebook.show(*saliency.tables(names))

# %% [markdown]
# What the majority rule costs: each region's total volume over these patients from the occupancy
# fractions (exact) and from the majority labels used above. Lesions smaller than half a 10 mm voxel,
# or thin rims, are lost to their neighbours; a large gap would make the lesion share above an
# underestimate.

# %%
notebook.show(saliency.volumes)

# %% [markdown]
# ## Summary
#
# The UMAP panels and their silhouettes show whether a model's learned features separate short from
# long PFS, for one fold's network. Permutation importance and the fusion-layer gradients say which
# laboratory values the Random Forest and the fusion models rely on, with AST and ALT also assessed
# together because they are correlated. The saliency maps show, for two typical patients, which PET
# voxels move each model's prediction; the gradient-magnitude distributions and their six distances
# compare PET only with PET fusion over a whole repeat, beside the paper's values for its real
# cohort. On the synthetic cohort the true outlines turn the paper's visual impression into numbers:
# the share of saliency on lesions against that on kidneys, spleen, bladder and liver.

# %%
saliency.findings(names).glue()
