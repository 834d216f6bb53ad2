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
# # Train one model
#
# ## Overview
#
# This notebook is a template: papermill executes it once per model, with the model's key in the
# `model` parameter. It trains (or resumes) that model on every fold of the repeated stratified
# cross-validation of the paper (section 2.6: 3 folds, 5 repeats, the same splits for every model),
# then shows what the model achieved:
#
# 1. the model declaration and how its CT branch starts (pretrained or not);
# 2. AUROC, AUPRC (average precision) and accuracy on every test fold, and their mean ± standard
#    error over the repeats;
# 3. the mean ROC and precision-recall curves with a band of ± 1 standard error;
# 4. the training loss per epoch;
# 5. on the synthetic cohort, the Bayes ceiling: the AUROC of the generator's true probability on the
#    same test folds, the best any model could reach.
#
# Folds that were finished before are read from disk, not retrained.

# %% tags=["parameters"]
model = "pet_fusion"
n_repeats = 5
n_splits = 3
epochs = 0  # 0: the training default (TrainConfig)
seed = 0
device = "auto"
work_dir = "work"
data_dir = "data/synthetic"
n_jobs = 2
scheduler = ""
ct_init = ""  # pretrained CT branch: empty as declared, none from scratch, or a checkpoint path
profile = "default"  # training recipe: default (one that learns) or paper (the paper's literal recipe)

# %%
from prrt_utils.report.notebook import setup_notebook

setup_notebook(data_dir)

# %%
from IPython.display import display

from prrt_utils.analysis import metrics
from prrt_utils.data.folds import CVConfig
from prrt_utils.models import crossval, stored
from prrt_utils.models.networks import get_spec, override_ct_init
from prrt_utils.models.training import TrainConfig

spec = override_ct_init(get_spec(model), ct_init)
cv = CVConfig(n_splits=n_splits, n_repeats=n_repeats, seed=seed)
train_cfg = TrainConfig.profile(profile, seed=seed, device=device, **({"epochs": int(epochs)} if epochs else {}))
names, _ = metrics.paper_reference()
print(spec.to_yaml())
print(spec.ct_init_note or "No CT branch.")
if spec.pretrained:
    # what the CT branch actually took from the checkpoint (every fold loads the same file)
    from prrt_utils.models.networks import FusionNet, load_encoder_checkpoint, resolve_ct_init

    print(load_encoder_checkpoint(FusionNet(spec).encoders["ct"], resolve_ct_init(spec, work_dir).ct_init,
                                  prefix=spec.ct_init_prefix).summary())

# %% [markdown]
# ## Training
#
# Every fold fits its own laboratory scaling and image intensity normalisation on its training
# part, trains and predicts its test part. The default recipe is one that learns (the section's first page
# lists every setting and where it comes from): AdamW, learning rate 0.01, weight decay 0.01,
# dropout 0.1, binary cross-entropy, batch 16, at most 60 epochs with the stopping epoch chosen on
# a validation split inside the training part, random shifts, PET referenced to the liver with the
# physiological organs masked. The paper's literal recipe is the profile `paper`
# (`prrt book --profile paper`); the line below says which of the two this page ran. The table gives
# every setting of this run and where it comes from: the paper, fixed a priori, compared on the
# positive-control cohort only, or chosen inside the training part of every fold (the grid is
# named); nothing was chosen by looking at test folds.

# %%
from IPython.display import Markdown

from prrt_utils.models.training import recipe_table

display(Markdown(
    f"**Training profile of this run: `{train_cfg.profile_name}`** "
    + ("(the default recipe, one that learns)." if train_cfg.profile_name == "default" else
       "(the paper's literal recipe: Adam, learning rate 0.01, weight decay 0.2 as an L2 penalty, "
       f"{train_cfg.epochs} epochs, no early stopping, no augmentation, PET in SUV).")))
recipe_table(train_cfg)

# %%
# no progress bar: in a notebook it is an ipywidget, and a page with a widget makes the book load the
# widget manager from a CDN
predictions = crossval.run_grid([spec], work_dir, cv, train_cfg, n_jobs=n_jobs, scheduler=scheduler or None,
                            progress=False)
results = metrics.evaluate(predictions)
stored.fold_table(work_dir, [model])

# %% [markdown]
# ## Metrics per fold
#
# AUROC: 0.5 is what random predictions give. AUPRC is the average precision; random predictions
# give the prevalence of short PFS (`auprc`, short PFS positive) or of long PFS (`auprc_long`, the
# paper's reading). Accuracy predicts long PFS when P(long) >= 0.5 (a probability of exactly 0.5 is
# "long"), the rule every chapter uses.
# `prob_sd` is the spread of the predicted probabilities in the fold: 0 means the network gave every
# patient the same probability (its AUROC is then exactly 0.5), which happens when weight decay
# shrinks it to a constant.

# %%
results.fold_metrics

# %% [markdown]
# ## Mean ± standard error
#
# Each repeat's value is the mean over its folds; the table gives the mean over repeats and the
# standard error over repeats (sd / √repeats), as the paper reports its Table 2.

# %%
results.table(names=names)

# %% [markdown]
# ## ROC and precision-recall curves
#
# Thin lines are the single folds; the bold line is the mean curve on a common grid and the band
# ± 1 standard error over repeats. Dashed: chance.

# %%
metrics.curves_figure(metrics.roc_curves(predictions), metrics.pr_curves(predictions), names=names,
                      show_folds=True).show()

# %% [markdown]
# ## Training loss
#
# Binary cross-entropy per epoch on the training part of each fold (the Random Forest has none).
# The grey line at ln 2 is the loss of a constant prediction of 0.5.

# %%
metrics.loss_figure(stored.load_histories(work_dir, [model]), names=names).show()

# %% [markdown]
# ## The Bayes ceiling
#
# The synthetic cohort's generator knows each patient's true probability of progressing within
# 12 months. Scored on the same test folds like a model, it gives the highest AUROC that any model
# could reach here. "Share of achievable" is how far the model gets from chance (0) to that ceiling (1).
# A real cohort has no such file, and the cell says so.

# %%
truth = metrics.read_truth(data_dir)
if truth is None:
    print(f"No ground truth in {data_dir}: a real cohort has no Bayes ceiling.")
else:
    ceiling = metrics.bayes_ceiling(predictions, truth)
    display(metrics.versus_ceiling(results, ceiling))

# %% [markdown]
# ## Summary
#
# The model was trained and tested on every fold of the shared splits; its per-fold metrics, mean
# ± standard error over repeats, curves and training losses are above, and on the synthetic cohort
# its AUROC stands beside the best achievable one. All files of every fold are in
# `work/results/<model>/`, which the later chapters read without retraining.
