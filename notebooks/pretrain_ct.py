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
from prrt_utils.report import setup_notebook

setup_notebook(data_dir)

# %%
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from IPython.display import Markdown, display

from prrt_utils import pretrain
from prrt_utils.models import PRETRAIN_CT, ConvEncoder, get_spec, load_encoder_checkpoint

cfg = pretrain.PretrainConfig(labels_dir=labels_dir, population_dir=pretrain_data_dir, seed=seed, device=device,
                              **({"epochs": int(pretrain_epochs)} if pretrain_epochs else {}),
                              **({"population_size": int(pretrain_patients)} if pretrain_patients else {}))
spec = get_spec(cfg.model)
start = ct_init or ("none" if spec.ct_init is None else str(spec.ct_init))
result = None
if start == PRETRAIN_CT:
    result = pretrain.pretrain_ct(work_dir, data_dir, cfg, progress=False, n_jobs=n_jobs)
    print(cfg.to_yaml())
elif start == "none":
    found = pretrain.population_available(data_dir, pretrain_data_dir)
    display(Markdown(
        "**CT pretraining did not run, and the seventh model's CT branch is trained FROM SCRATCH in this run** "
        + ("(no pretraining population outside the study was given, and the study's own patients are never "
           "used: give a separate set with `--pretrain-data DIR`, or a checkpoint with `--ct-init PATH`). "
           if not found else "(`ct_init: none` was asked for). ")
        + "It then differs from PET CT fusion only by its random initialisation."))
else:
    display(Markdown(f"**CT pretraining did not run: the CT branch starts from the checkpoint `{Path(start).name}` "
                     "given by path (route 2).** What it holds for the CT encoder is reported on the model's page."))

# %% [markdown]
# ## Model card
#
# (Only when this run pretrained; otherwise the statement above says where the CT branch starts.)

# %%
if result is not None:
    card = result.card
    display(Markdown(
        f"- **Task**: {card['task']}; {len(card['classes']) - 1} classes plus background.\n"
        f"- **Population**: {card['population']['kind']} (`{card['population']['folder']}`"
        + (f", generator seed {card['population']['synthetic_seed']} against the cohort's "
           f"{card['population']['study_seed']}" if "synthetic_seed" in card["population"] else "")
        + f"), {card['population']['n_patients']} patients, **{card['population']['study_patients']} study "
        f"patients**; lesion class {card['population']['lesion_class']}. Generating and preprocessing it took "
        f"{card['population']['seconds_generate_and_preprocess']:.0f} s in the run that trained this checkpoint.\n"
        f"- **Labels**: {card['labels_source']}.\n"
        f"- **Data**: {card['n_train']} patients trained, {card['n_held_out']} held out (by patient, seed {seed}); "
        f"{card['n_skipped']} without a label map or preprocessed CT skipped.\n"
        f"- **Encoder**: the CT branch of `{card['created_for_model']}` "
        f"(channels {card['encoder']['channels']}, strides {card['encoder']['strides']}); decoder: one 1x1x1 "
        "convolution per stage, discarded after pretraining.\n"
        f"- **Training**: {cfg.epochs} epochs, AdamW, learning rate {cfg.lr}, Dice + cross-entropy "
        f"(MONAI `DiceCELoss`) at the resolution of the encoder's first stage, "
        f"{card['seconds']:.0f} s on {card['device']} with {card['threads']} thread(s)"
        f"{' (this run reused the cached checkpoint)' if result.reused else ''}.\n"
        f"- **Held-out Dice** (mean over foreground classes): {card['held_out_dice_mean_foreground']:.2f}.\n"
        f"- **Checkpoint**: `pretrained/ct_encoder.pt` in the work folder, SHA-256 "
        f"`{card['checkpoint_sha256'][:16]}…`."))

# %% [markdown]
# ## Loss per epoch
#
# Dice + cross-entropy on the training patients and on the held-out patients. A held-out loss that
# follows the training loss down means the encoder learns anatomy that generalises to unseen
# patients, which is what the fine-tuning is meant to start from.

# %%
if result is not None:
    fig = go.Figure()
    for col, name in (("train_loss", "training patients"), ("held_out_loss", "held-out patients")):
        fig.add_trace(go.Scatter(x=result.history["epoch"], y=result.history[col], mode="lines+markers", name=name))
    fig.update_layout(xaxis_title="epoch", yaxis_title="Dice + cross-entropy loss", height=360,
                      title="CT pretraining on anatomy")
    fig.show()

# %% [markdown]
# ## Dice per class on held-out patients
#
# Dice between the predicted and the true label map on the 10 mm grid of the preprocessed volumes
# (1 = perfect overlap; empty where no held-out patient has the class). `dice_ceiling` is the best
# this training resolution allows: the true labels taken to the encoder's first-stage grid (30 mm)
# and back. Small structures (kidneys, bladder and, above all, lesions of one or two voxels) are the
# hardest; a class with Dice near 0 was not learned.

# %%
if result is not None:
    dice = result.dice.round({"dice_mean": 3, "dice_sd": 3, "dice_ceiling": 3, "voxels_per_patient": 0})
    learned = dice.loc[dice["dice_mean"] >= 0.5, "class"].tolist()
    not_learned = dice.loc[dice["dice_mean"] < 0.1, "class"].tolist()
    display(dice)
    display(Markdown(
        f"Classes segmented with Dice ≥ 0.5 on held-out patients: **{', '.join(learned) or 'none'}**. "
        f"Not learned (Dice < 0.1): **{', '.join(not_learned) or 'none'}**."))

# %% [markdown]
# ## What the seventh model loads
#
# The checkpoint holds the encoder's weights only. Loading it into a freshly built CT branch of the
# seventh model reports how many of its tensors were found; every one should be.

# %%
if result is not None:
    fresh = ConvEncoder(3, 1, spec.channels, spec.strides, spec.kernel_size, spec.norm, 0.1, spec.pooling)
    report = load_encoder_checkpoint(fresh, result.checkpoint, model=spec.name)
    print(report.summary())
    display(pd.Series(report.loaded, name="loaded tensors").to_frame())

# %% [markdown]
# ## Summary
#
# When this run pretrained, the CT encoder learned anatomy without any outcome and without any
# study patient (the population above), its held-out Dice per
# class is above, and the seventh model's CT branch loads all of its tensors. Whether this starting
# point helps the PFS prediction is answered in the fusion chapter, which compares the seventh model
# with the same architecture trained from scratch on the same splits.
