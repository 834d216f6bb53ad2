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
# # Pretrained CT branch: model card
#
# ## Overview
#
# The paper's best model starts its CT branch from a MONAI CT segmentation network pretrained on
# whole-body anatomy and fine-tunes it. No machine this book runs on may download weights, so the
# seventh model's CT encoder is pretrained here, on a task that needs **no outcome**: segmenting
# anatomy (body, lungs, liver, spleen, kidneys, bladder, bone, lesions) on preprocessed CT volumes,
# supervised by label maps. A centre that already has a CT segmentation checkpoint loads it instead
# (papermill parameter `ct_init`, `prrt book --ct-init PATH`; the model's page reports which tensors
# were loaded).
#
# **Never on the study's own patients.** A hub model is trained on other people. Pretraining on
# this study's CT and label maps would let the encoder see every test patient's CT and, through the
# lesion class, their tumour burden, before the PFS models are tested on them. So the pretraining
# population is always separate from the study: for the synthetic cohort, an **independent
# synthetic population** drawn by the same generator with another seed (the cohort's seed + 1000,
# pseudonyms `ANAT-…`, no study patient), lesion labels included because none of these people is
# a study patient; for an own cohort, a separate set of patients outside the study given by the
# centre (`pretrain_data_dir`, `prrt book --pretrain-data DIR`: their CT and label maps, e.g.
# TotalSegmentator outputs). Without such a set, pretraining does not run and the branch is trained
# from scratch. The population is preprocessed with the study's own settings. A pretraining patient
# whose id is a study id stops the run. No outcome is read.
#
# This page shows the model card: data, settings, the loss per epoch and the Dice per class on
# patients held out of pretraining. The checkpoint is cached: it is retrained only when the CT
# volumes, the label maps or the settings change.

# %% tags=["parameters"]
work_dir = "work"
data_dir = "data/synthetic"
labels_dir = ""
pretrain_data_dir = ""  # a separate set of patients outside the study; empty: independent synthetic population
pretrain_patients = 0  # 0: the default size of the independent synthetic population
pretrain_epochs = 0  # 0: the default (PretrainConfig)
n_jobs = 2
ct_init = ""  # empty as the model declares, none from scratch, or a checkpoint path (route 2)
seed = 0
device = "auto"

# %%
from prrt_utils.report.notebook import setup_notebook

setup_notebook(data_dir)

# %%
from prrt_utils.models import pretrain
from prrt_utils.report.notebook import show

cfg = pretrain.PretrainConfig(labels_dir=labels_dir, population_dir=pretrain_data_dir, seed=seed, device=device,
                              **({"epochs": int(pretrain_epochs)} if pretrain_epochs else {}),
                              **({"population_size": int(pretrain_patients)} if pretrain_patients else {}))
page = pretrain.pretrain_page(work_dir, data_dir, cfg, ct_init, pretrain_data_dir, n_jobs=n_jobs)
show(page.statement())

# %% [markdown]
# ## Model card
#
# (Only when this run pretrained; otherwise the statement above says where the CT branch starts.)

# %%
show(page.card())

# %% [markdown]
# ## Loss per epoch
#
# Dice + cross-entropy on the training patients and on the held-out patients. A held-out loss that
# follows the training loss down means the encoder learns anatomy that generalises to unseen
# patients, which is what the fine-tuning is meant to start from.

# %%
show(page.losses())

# %% [markdown]
# ## Dice per class on held-out patients
#
# Dice between the predicted and the true label map on the 10 mm grid of the preprocessed volumes
# (1 = perfect overlap; empty where no held-out patient has the class). `dice_ceiling` is the best
# this training resolution allows: the true labels taken to the encoder's first-stage grid (30 mm)
# and back. Small structures (kidneys, bladder and, above all, lesions of one or two voxels) are the
# hardest; a class with Dice near 0 was not learned.

# %%
show(*page.dice())

# %% [markdown]
# ## What the seventh model loads
#
# The checkpoint holds the encoder's weights only. Loading it into a freshly built CT branch of the
# seventh model reports how many of its tensors were found; every one should be.

# %%
show(*page.load_check())

# %% [markdown]
# ## Summary
#
# When this run pretrained, the CT encoder learned anatomy without any outcome and without any
# study patient (the population above), its held-out Dice per
# class is above, and the seventh model's CT branch loads all of its tensors. Whether this starting
# point helps the PFS prediction is answered in the fusion chapter, which compares the seventh model
# with the same architecture trained from scratch on the same splits.
